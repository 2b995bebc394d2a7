/*
 * attend_cases.h - the attention core's problems (lm_linear_attn_prefill /
 * decode, docs/DESIGN.md §2) and its case grid for every backend: random
 * inputs with the float64 reference (ref_attend: outputs and the final
 * state), outputs and state on a backend, the core arguments of a call over
 * a token range, a run of the sequence in prefill parts and decode steps,
 * the checks against float64 within the backend's bounds, and the one case
 * list both suites run (lengths around the chunk size 64, head dims, GQA,
 * every mode, dtypes, cross-attention, layouts and segments, precision,
 * state hand-over, decode). The CPU suite (test_attend.c) and the GPU suite
 * (gpu/test_gpu_core.c) each give an attend_env (their test_dev, base case,
 * reduced grid, check of their own) and keep their backend-only tests.
 */
#ifndef LM_ATTEND_CASES_H
#define LM_ATTEND_CASES_H

#include "ref.h"

typedef struct atcase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv; /* Lk: keys when bidirectional (causal: L) */
    int causal, fm, normalize, decay, mask, state_in, seq_first; /* state_in: a random initial state */
    lm_precision precision;
} atcase;

/* A case's inputs (host, with float64 shadows, and on the backend), its
 * initial state, sizes and reference. */
typedef struct atprob {
    const test_dev *dev;
    atcase c; /* c.Lk = L when causal */
    tbuf q, k, v;
    uint8_t *mask; /* [B, Lk] or NULL */
    float decay[64];
    float *S0, *z0; /* the initial state (host, fp32) */
    double *want, *want_S, *want_z;
    int64_t sq[4], sk[4], sv[4], so[4]; /* out: batch-first, contiguous */
    int64_t nout, nS, nz;
    void *dq, *dk, *dv; /* on the backend (the host's buffers on the CPU) */
    uint8_t *dmask;
} atprob;

void atprob_init(atprob *p, const test_dev *dev, const atcase *c);
void atprob_free(atprob *p);

/* The outputs [B, L, Hq, Dv] and the fp32 state of runs on dev (p->dev, or
 * &cpu_dev with the host's inputs): new with out NaN and the initial state;
 * reset to that; freed; read back (tbuf_free the outputs; S, z host buffers
 * of nS, nz floats). */
typedef struct atrun {
    const test_dev *dev;
    void *out;
    float *S, *z;
} atrun;
void atrun_new(atrun *r, const atprob *p, const test_dev *dev);
void atrun_reset(atrun *r, const atprob *p);
void atrun_free(atrun *r);
tbuf atrun_out(const atprob *p, const atrun *r);
void atrun_state(const atprob *p, const atrun *r, float *S, float *z);

/* The core arguments of tokens [t0, t0 + n) on r's backend (its inputs, out
 * and state, at position t0). */
typedef struct atcall {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} atcall;
void atcall_init(atcall *k, const atprob *p, const atrun *r, int64_t t0, int64_t n);

/* From r reset: prefills of the parts ending at cuts[0 .. n-1], then a
 * decode step per token from cuts[n-1] (0 when n = 0) to end (L: the whole
 * sequence; cuts[n-1]: no decode steps). */
void attend_run(const atprob *p, atrun *r, const int64_t *cuts, int n, int64_t end);

/* ||out - want|| / ||want|| of r's outputs (every one written). */
double attend_out_err(const atprob *p, const atrun *r);

/* r's outputs within r->dev->out_bound (noted) and its state within
 * r->dev->state_bound of float64; returns the outputs' error. */
double attend_check(const atprob *p, const atrun *r, const char *what);

/* The case in words, for messages. */
void attend_describe(char *s, size_t n, const atcase *c);

/* A suite's run of the grid: its backend, its base case (dtype, dims and
 * sizes a grid does not set), the reduced grid (small: the GPU's
 * compute-sanitizer pass), and a check of its own after each whole
 * prefill (err: the outputs' error; NULL: none). */
typedef struct attend_env {
    const test_dev *dev;
    atcase base;
    int small;
    void (*also)(const atprob *p, double err);
} attend_env;

/* The grid, one entry a family of cases; attend_grid_run seeds the random
 * stream with seed + i and runs entry i on env (a Check loop test). */
typedef struct attend_grid {
    const char *name;
    void (*run)(const attend_env *e);
} attend_grid;
extern const attend_grid attend_grids[];
extern const int attend_ngrids;
void attend_grid_run(int i, const attend_env *e, uint64_t seed);

/* Case i (from 0) of the decode grid on e (a prefill of *L0 tokens, then
 * decode steps to L); 0 past the last. */
int attend_decode_case(const attend_env *e, int i, atcase *c, int64_t *L0);

#endif /* LM_ATTEND_CASES_H */
