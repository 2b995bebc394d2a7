/*
 * module_cases.h - the module's forward (lm_attn_forward / lm_attn_step,
 * docs/DESIGN.md §2) and its case grid for every backend: random inputs and
 * weights with the float64 reference (ref_module_forward: project, attend,
 * out-project), a handle and its output on a backend (NaN before each run),
 * forward calls over token ranges and decode steps, the check against
 * float64 within the suite's bound, and the one case list both suites run
 * (self attention at ragged lengths in every dtype, weight and input
 * variants, cross attention, GQA and head dims, mixed cases at the GPU's
 * sizes, hand-over between forwards and steps, save / restore / fork). The
 * CPU suite (test_module.c) and the GPU suite (gpu/test_gpu_module.c) each
 * give an m_env (their test_dev, base case, bound, reduced grid, check of
 * their own) and keep their backend-only tests. The backward's grid
 * (module_backward_cases.h) runs on these problems and handles.
 */
#ifndef LM_MODULE_CASES_H
#define LM_MODULE_CASES_H

#include "ref.h"

typedef struct mcase {
    lm_dtype dtype;
    int64_t B, L, Lk, E, Hq, Hkv, D, kdim, vdim; /* Lk, kdim, vdim: cross attention's (self: L, E, E) */
    int causal, cross, packed, bias, decay, mask, seq_first;
    int hybrid; /* hybrid attention with window W, sinks s and random gates */
    int64_t W, s;
    lm_gate_form gate_form; /* the hybrid's gamma: sigmoid (default) or exp of the gates */
    int fm, unnormalized;   /* feature map, normalisation (0, 0: elu+1 normalised, the config's
                               defaults and the only ones ref_module computes) */
} mcase;

/* A case's inputs and weights (host, with float64 shadows, and on the
 * backend) and the reference output [B, L, E] contiguous. */
typedef struct mprob {
    const test_dev *dev;
    mcase c; /* Lk, kdim, vdim resolved */
    float decay[16], gate[16];
    tbuf xq, xk, xv, wq, wk, wv, wo, bin, bo; /* xk, xv, wk, wv: empty when unused */
    uint8_t *mask;                            /* [B, Lk] or NULL */
    double *want;
    int64_t sx[3], sk[3], sv[3];
    void *dxq, *dxk, *dxv, *dwq, *dwk, *dwv, *dwo, *dbin, *dbo; /* on the backend (the host's on the CPU) */
    uint8_t *dmask;
} mprob;

void mprob_init(mprob *p, const test_dev *dev, const mcase *c);
/* The same without the reference (want NULL), for problems that need none. */
void mprob_inputs(mprob *p, const test_dev *dev, const mcase *c);
void mprob_free(mprob *p);

/* A problem's inputs and weights by slot: query, key, value (cross
 * attention's; empty in self attention), the q (packed: in_proj) weight, k
 * and v weights (empty when packed), in_proj_bias, out weight and bias. */
enum { MS_XQ, MS_XK, MS_XV, MS_WQ, MS_WK, MS_WV, MS_BIN, MS_WO, MS_BO, MS_NSLOTS };
const tbuf *mprob_slot(const mprob *p, int s);
/* The float64 module of case p->c over values v[MS_NSLOTS] laid out as the
 * slots (NULL, or a NULL entry: the slot's shadow; self attention reads key
 * and value from the query's unless v gives them). */
ref_module mprob_module(const mprob *p, const double *const *v);

/* A handle on dev (p->dev, or &cpu_dev with the host's weights) with p's
 * config and weights, and its output [B, L, E] contiguous, all NaN. */
typedef struct mrun {
    const test_dev *dev;
    lm_attn *a;
    void *out;
} mrun;
void mrun_new(mrun *r, const mprob *p, const test_dev *dev);
/* The output back to NaN (the handle keeps its state). */
void mrun_poison(mrun *r, const mprob *p);
void mrun_free(mrun *r);
/* The output read back (tbuf_free it). */
tbuf mrun_out(const mprob *p, const mrun *r);

/* lm_attn_forward over query tokens [t0, t0 + n) (keys too when causal)
 * into r's output; returns its status. */
lm_status mforward(const mprob *p, mrun *r, int64_t t0, int64_t n, int use_state, int keep_state, void *stream);
/* The [B, E] views of token t of the input and of r's output (a step's x
 * and out). */
void mstep_views(const mprob *p, const mrun *r, int64_t t, lm_tensor *x, lm_tensor *out);

/* The case in words, for messages. */
void mdescribe(char *s, size_t n, const mcase *c);

/* A suite's run of the grid: its backend, its base case (sizes a grid does
 * not set), the bound of a forward's outputs against float64 (want: its n
 * values), the reduced grid (small: the GPU's compute-sanitizer pass, which
 * runs only the entries marked for it), and a check of its own after each
 * whole forward (NULL: none). */
typedef struct m_env {
    const test_dev *dev;
    mcase base;
    double (*bound)(lm_dtype dtype, const double *want, int64_t n); /* NULL: dev->out_bound */
    int small;
    void (*also)(const mprob *p, const mrun *r);
} m_env;

/* r's output within e->bound of float64 (noted through the device's note);
 * returns its error. */
double mcheck(const m_env *e, const mprob *p, const mrun *r, const char *what);

/* One forward of case c over its whole sequence on e's backend, checked,
 * then e's own check. */
void mcheck_forward(const m_env *e, const mcase *c);

/* get_state / set_state of case c (from random seed `seed`) on e's backend
 * after L1 tokens: restore replays the continuation bit for bit, a state
 * moved to a second handle (fork) continues there identically, and the
 * continuation is checked. Returns the blob (malloc'd, *bytes long). */
char *msave_restore_fork(const m_env *e, const mcase *c, uint64_t seed, int64_t L1, size_t *bytes);

/* The grid, one entry a family of cases; mgrid_run seeds the random stream
 * with seed + i and runs entry i on e (a Check loop test). */
typedef struct m_grid {
    const char *name;
    void (*run)(const m_env *e);
    int small; /* has a reduced grid */
} m_grid;
extern const m_grid m_grids[];
extern const int m_ngrids;
void mgrid_run(int i, const m_env *e, uint64_t seed);

#endif /* LM_MODULE_CASES_H */
