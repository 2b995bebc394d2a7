/*
 * module_backward_cases.h - the module's backward (lm_attn_backward,
 * docs/DESIGN.md §2) and its case grid for every backend: a module problem
 * (module_cases.h: inputs, packed or separate weights, biases, with float64
 * shadows and backend copies) with a random dout, whose float64 reference is
 * the loss sum(dout * out) of the float64 module (ref_module_forward); the
 * gradient buffers on a backend (NaN-poisoned before each call); calls and
 * their descriptors; the checks within the suite's bounds: every gradient
 * written, and directional derivatives of the reference, (loss(p + eps U) -
 * loss(p - eps U)) / 2 eps against <grad, U>, relative to sum |grad_j U_j|,
 * either for each parameter alone (two directions each) or for one
 * direction over all parameters at once; and the one case list both suites
 * run (the CPU suite's: several slabs, GQA, decay, masks, bidirectional,
 * cross attention with several key slabs, one shared input gradient,
 * separate weights, no biases, bf16; the GPU suite's: ragged lengths to
 * 1000, slabs of B = 8, variants with sequence-first strides, a caller's
 * stream, f16, relu unnormalised, head dim 128, its reduced grid;
 * accumulate; bad calls that leave the handle's state alone).
 *
 * The CPU suite (test_module_backward.c) and the GPU suite
 * (gpu/test_gpu_module_backward.c) each give an mb_env (their test_dev,
 * base case, which finite differences each case gets, bounds, reduced grid,
 * a check of their own) and keep their backend-only tests.
 */
#ifndef LM_MODULE_BACKWARD_CASES_H
#define LM_MODULE_BACKWARD_CASES_H

#include "module_cases.h"

typedef struct mbcase {
    mcase m;    /* the module, its inputs and weights (not hybrid: it has no backward) */
    int shared; /* self attention with one gradient tensor for query, key and value */
    int stream; /* run on the suite's stream (mb_env.stream) */
} mbcase;

/* A case's problem: the module's (p.c: Lk, kdim, vdim resolved), dout
 * [B, L, E] contiguous, and the elements of each gradient buffer by slot
 * (MS_*, module_cases.h; 0: none): query, key and value (self attention:
 * three gradients of the one input, or only the query's when shared), and
 * the weights' and biases' (none for the biases without c.m.bias). */
typedef struct mbprob {
    mprob p;
    mbcase c;
    tbuf dout;
    void *ddout;
    int64_t ng[MS_NSLOTS];
} mbprob;

void mbprob_init(mbprob *b, const test_dev *dev, const mbcase *c);
void mbprob_free(mbprob *b);

/* A handle on dev (b's, or &cpu_dev reading the host's data) with b's
 * config and weights, and the gradient buffers (all NaN). */
typedef struct mbrun {
    mrun r;
    void *g[MS_NSLOTS];
} mbrun;
void mbrun_new(mbrun *r, const mbprob *b, const test_dev *dev);
void mbrun_poison(mbrun *r, const mbprob *b);
void mbrun_free(mbrun *r);

/* The gradients read back to the host, by slot (empty where none). */
typedef struct mbgrads {
    tbuf g[MS_NSLOTS];
} mbgrads;
void mbgrads_read(mbgrads *out, const mbprob *b, const mbrun *r);
void mbgrads_free(mbgrads *g);

/* The descriptors of one lm_attn_backward call on r's backend into r's
 * buffers (tests change them for bad calls), and its run. */
typedef struct mbcall {
    lm_tensor q, k, v, dout, dq, dk, dv, mask;
    lm_forward_opts opts;
    lm_attn_grads g;
} mbcall;
void mbcall_init(mbcall *k, const mbprob *b, const mbrun *r, int accumulate);
lm_status mbcall_run(const mbcall *k, const mbrun *r, void *stream);

/* From r poisoned: the backward over the whole sequence on stream. */
void mb_run(const mbprob *b, mbrun *r, void *stream);

/* How finite differences check a case: not at all, each parameter alone
 * (query, key, value, each projection's weight and bias), or one direction
 * over all of them. */
enum { MB_FD_NONE, MB_FD_EACH, MB_FD_ALL };

/* The float64 module's cost per forward (multiply-adds of its projections
 * and attention), for a suite's budget. */
double mb_ref_cost(const mbcase *c);

/* The case in words, for messages. */
void mb_describe(char *s, size_t n, const mbcase *c);

/* A suite's run of the grid: its backend; its base case (sizes a grid does
 * not set); fd, how finite differences check case c (the reference only
 * computes elu+1 normalised) and fd_bound their bound; small, the reduced
 * grid (the GPU's compute-sanitizer pass runs only the entries marked for
 * it); stream, the stream of cases with c.stream (NULL: none); acc_bound,
 * how far a weight gradient after two accumulating calls may be from twice
 * one (relative); also, a check of its own after each backward (NULL:
 * none). A case with neither finite differences nor also is not run on
 * this backend, and the grid entry says how many it left out. */
typedef struct mb_env {
    const test_dev *dev;
    mbcase base;
    int (*fd)(const mbcase *c);
    double (*fd_bound)(lm_dtype dtype);
    int small;
    void *(*stream)(void);
    double acc_bound;
    void (*also)(const mbprob *b, const mbgrads *got, const char *desc);
} mb_env;

/* Every gradient of got written (no NaN), then e->fd's directional
 * derivatives within e->fd_bound; returns the largest error. */
double mb_check(const mb_env *e, const mbprob *b, const mbgrads *got);

/* The grid, one entry a family of cases; mb_grid_run seeds the random
 * stream with seed + i and runs entry i on e (a Check loop test). */
typedef struct mb_grid {
    const char *name;
    void (*run)(const mb_env *e);
    int small; /* in the reduced grid */
} mb_grid;
extern const mb_grid mb_grids[];
extern const int mb_ngrids;
void mb_grid_run(int i, const mb_env *e, uint64_t seed);

/* Prints the largest directional-derivative error per dtype of the
 * checks so far with its case; returns how many dtypes had checks. */
int mb_print_worst(const mb_env *e);

#endif /* LM_MODULE_BACKWARD_CASES_H */
