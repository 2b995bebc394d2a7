/*
 * backward_cases.h - the core backward's problems (lm_linear_attn_backward,
 * docs/DESIGN.md §2) and its case grid for every backend: random inputs in
 * any of four layouts with the float64 reference gradients (ref_backward)
 * and their magnitudes, gradient buffers on a backend (NaN-poisoned before
 * each call), the arguments of a call over a token range, the checks
 * against float64 within the suite's bounds, and the one case list both
 * suites run (lengths around the chunk size 64, every mode, GQA, head dims,
 * dtypes, layouts, long sequences in blocks and segments, the tensor-core
 * backward's cases, gradients chained across a split, masked keys holding
 * NaN). The CPU suite (test_backward.c) and the GPU suite
 * (gpu/test_gpu_backward.c) each give a bw_env (their test_dev, base case,
 * bounds, reduced grid, check of their own) and keep their backend-only
 * tests.
 *
 * Error measure, per gradient tensor: ||got - want|| / ||mag||, where mag is
 * the reference run on absolute values (every factor |x|, every sum of terms
 * a sum of their magnitudes), the usual scale of rounding error in sums.
 * Plain ||got - want|| / ||want|| is meaningless where terms cancel: with
 * one key and no state, dq is ~eps/d^2 (o = a v / (a + eps) barely depends
 * on q), and fp32 leaves only noise of the size of its terms. The floor of
 * a gradient is ||round(want) - want|| / ||mag||: a perfect gradient
 * rounded to its dtype.
 */
#ifndef LM_BACKWARD_CASES_H
#define LM_BACKWARD_CASES_H

#include "ref.h"

/* Memory layouts of a logical [B, L, H, D] tensor: batch-first,
 * sequence-first, head-major, and batch-first with a stride of 2 on the
 * last dimension (gaps that must stay untouched). */
enum { BW_BLHD, BW_LBHD, BW_BHLD, BW_GAPPED, BW_NLAYOUTS };

typedef struct bwcase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv; /* Lk: keys when bidirectional (causal: L) */
    int causal, fm, normalize, decay, mask;
    int state_in;   /* a random initial state */
    int dstate_out; /* a random gradient of the final state */
    int dstate_in;  /* ask for the initial state's gradient */
    int lay, glay;  /* layouts of q, k, v, dout / of dq, dk, dv */
    lm_precision precision;
} bwcase;

/* The gradients, in the order of the arrays below. */
enum { BW_DQ, BW_DK, BW_DV, BW_DS, BW_DZ, BW_NGRADS };
extern const char *const bw_grad_names[BW_NGRADS];

/* A case's inputs (host, with float64 shadows, and on the backend) and, when
 * computed, its reference gradients. */
typedef struct bwprob {
    const test_dev *dev;
    bwcase c; /* c.Lk = L when causal */
    tbuf q, k, v, dout; /* in layout c.lay */
    int64_t sq[4], sk[4], sv[4], so[4]; /* their strides (elements) */
    int64_t gq[4], gk[4], gv[4];        /* the strides of dq, dk, dv (c.glay) */
    int64_t ng[3];                      /* elements of the dq, dk, dv buffers */
    int64_t n[BW_NGRADS];               /* logical elements of each gradient */
    uint8_t *mask;                      /* [B, Lk] or NULL */
    float decay[64];
    float *S0, *z0, *dSo, *dzo;      /* fp32 as the library takes them, or NULL */
    double *S0d, *z0d, *dSod, *dzod; /* the same in float64 (zeros when absent) */
    /* The reference gradients and their magnitudes, logical [B, L|Lk, H, D]
     * contiguous (dq, dk, dv) and [B, Hkv, Dk(, Dv)]; NULL when not computed. */
    double *want[BW_NGRADS], *mag[BW_NGRADS];
    void *dq, *dk, *dv, *ddo; /* the inputs on the backend (the host's on the CPU) */
    uint8_t *dmask;
    float *dS0, *dz0, *ddSo, *ddzo;
} bwprob;

/* Inputs of case c on dev (no reference yet). */
void bwprob_init(bwprob *p, const test_dev *dev, const bwcase *c);
void bwprob_free(bwprob *p);
/* (Re)computes the reference gradients and magnitudes from the shadows (and
 * S0d .. dzod): ref_backward twice. */
void bwprob_reference(bwprob *p);
/* Copies the host inputs (data, mask) to the backend again, after a test
 * changed them. */
void bwprob_reupload(bwprob *p);
/* The reference's cost per (batch, kv head): G L Lk (Dk + Dv). */
double bw_ref_cost(const bwcase *c);

/* Gradient buffers on dev (p->dev, or &cpu_dev reading the host's inputs):
 * dq, dk, dv in layout c.glay and dS_in, dz_in fp32, all NaN. */
typedef struct bwrun {
    const test_dev *dev;
    void *g[3];
    float *S, *z;
} bwrun;
void bwrun_new(bwrun *r, const bwprob *p, const test_dev *dev);
/* Every gradient buffer back to NaN. */
void bwrun_poison(bwrun *r, const bwprob *p);
void bwrun_free(bwrun *r);

/* A run's gradients read back to the host. */
typedef struct bwgrads {
    tbuf g[3]; /* dq, dk, dv in layout c.glay */
    float *S, *z;
} bwgrads;
void bwgrads_read(bwgrads *out, const bwprob *p, const bwrun *r);
void bwgrads_free(bwgrads *g);
/* Gradient `which` as a logical contiguous float64 array (malloc'd). */
double *bwgrads_values(const bwgrads *g, const bwprob *p, int which);

/* The arguments of a backward over query tokens [t0, t0 + n) (causal: keys
 * too) on r's backend: the initial state S0 (when c.state_in), dS_out (when
 * c.dstate_out), dS_in into r (when c.dstate_in); out is left NULL. */
typedef struct bwcall {
    lm_tensor q, k, v, dout, dq, dk, dv, mask;
    lm_core_args a;
    lm_core_grads g;
} bwcall;
void bwcall_init(bwcall *k, const bwprob *p, const bwrun *r, int64_t t0, int64_t n);

/* From r poisoned: the backward over the whole sequence. */
void bw_run(const bwprob *p, bwrun *r);

/* ||got - want|| / ||scale|| of gradient `which` (want, scale: logical
 * arrays); NaNs where want is finite are counted as unwritten, and in the
 * gapped layout every gap must still be NaN. */
double bw_error(const bwgrads *got, const bwprob *p, int which, const double *want, const double *scale,
                int64_t *unwritten);
/* ||round(want) - want|| / ||mag|| of gradient `which`, rounded to dt. */
double bw_floor(lm_dtype dt, const double *want, const double *mag, int64_t n);

/* The case in words, for messages. */
void bw_describe(char *s, size_t n, const bwcase *c);

/* A suite's run of the grid: its backend; its base case (dtype, sizes and
 * dims a grid does not set); has_ref, whether it checks case c against
 * float64 (the reference's cost within its budget); bound (which gradient,
 * its floor and elements; chained: the two calls of a split, whose middle
 * state came from the backend's forward); note of each error (NULL: none);
 * also, a check of its own after each whole backward (with_ref: p->want is
 * set; NULL: none), which stands in for float64 where has_ref is 0. A case
 * with neither is not run on this backend, and the grid entry says how many
 * it left out. */
typedef struct bw_env {
    const test_dev *dev;
    bwcase base;
    int (*has_ref)(const bwcase *c);
    double (*bound)(const bwcase *c, int which, double floor, int64_t n, int chained);
    void (*note)(const bwcase *c, int which, double err, double floor, const char *desc);
    void (*also)(const bwprob *p, const bwgrads *got, int with_ref, const char *desc);
} bw_env;

/* The checks of a run's gradients against p's reference within e's bounds
 * (noted); what names the check in messages. */
void bw_check(const bw_env *e, const bwprob *p, const bwgrads *got, int chained, const char *what);

/* The grid, one entry a family of cases; bw_grid_run seeds the random
 * stream with seed + i and runs entry i on e (a Check loop test). Entries
 * with small set make the reduced grid. */
typedef struct bw_grid {
    const char *name;
    void (*run)(const bw_env *e);
    int small;
} bw_grid;
extern const bw_grid bw_grids[];
extern const int bw_ngrids;
void bw_grid_run(int i, const bw_env *e, uint64_t seed);

#endif /* LM_BACKWARD_CASES_H */
