/*
 * hybrid_cases.h - hybrid attention's problems (docs/DESIGN.md §9) for every
 * backend: random inputs with the float64 reference (ref_hybrid: outputs and
 * the final state), the state a sequence carries, the core arguments of a
 * call over a token range, the checks of outputs and state, and the
 * scenarios both suites run. The CPU suite (test_hybrid.c) and the GPU suite
 * (gpu/test_gpu_hybrid.c) each give a test_dev (ref.h: memory, copies,
 * bounds) and their own tables and backend-only tests.
 */
#ifndef LM_HYBRID_CASES_H
#define LM_HYBRID_CASES_H

#include "ref.h"

typedef struct hcase {
    lm_dtype dtype;
    int64_t B, L, Hq, Hkv, Dk, Dv, W, s;
    int fm, mask, gate, seq_first; /* gate: random per-head gates (else none) */
    lm_precision precision;
    lm_gate_form gate_form;        /* gamma = sigmoid(g) (default) or exp(g) */
    double gate_max;               /* the gates are uniform in [-gate_max, gate_max]; 0 = 2 */
} hcase;

/* A case's inputs (host, with float64 shadows, and on the backend), sizes,
 * and its reference. */
typedef struct hprob {
    const test_dev *dev;
    hcase c;
    tbuf q, k, v;
    uint8_t *mask; /* [B, L] or NULL */
    float gate[64];
    int64_t sq[4], sk[4], sv[4], so[4]; /* out: batch-first, contiguous */
    int64_t nS, nz, nwk, nwv, npos, nout;
    double *want;         /* [B, L, Hq, Dv] */
    ref_hybrid_state fin; /* the state after the L tokens */
    void *dq, *dk, *dv;   /* on the backend (the host's buffers on the CPU) */
    uint8_t *dmask;
} hprob;

void hprob_init(hprob *p, const test_dev *dev, const hcase *c);
void hprob_free(hprob *p);

/* The carried state (S, z, the window's keys, values and position codes):
 * on the backend, or its host copy (hstate_fetch). */
typedef struct hstate {
    float *S, *z, *wk, *wv;
    int32_t *pos;
} hstate;

/* An empty state on the backend (nothing seen yet); emptied again; freed. */
void hstate_new(hstate *st, const hprob *p);
void hstate_clear(hstate *st, const hprob *p);
void hstate_free(hstate *st, const hprob *p);
/* A host copy of st (host: malloc'd), and its release. */
void hstate_fetch(hstate *host, const hstate *st, const hprob *p);
void hstate_free_host(hstate *host);

/* An output buffer [B, L, Hq, Dv] on the backend, NaN; NaN again; freed;
 * read back into a host buffer (tbuf_free it). */
void *hout_new(const hprob *p);
void hout_poison(const hprob *p, void *out);
void hout_free(const hprob *p, void *out);
tbuf hout_fetch(const hprob *p, const void *out);

/* The core arguments of tokens [t0, t0 + n) on `where` (the backend's
 * device, or LM_CPU for the host's inputs), writing out, carrying st (at
 * position t0) or no state. */
typedef struct hcall {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} hcall;
void hcall_init(hcall *k, const hprob *p, lm_device where, void *out, const hstate *st, int64_t t0,
                int64_t n);

/* The outputs against the reference within dev->out_bound (noted); returns
 * the error. The carried state against the reference's final one: S and z
 * within dev->state_bound, the window exactly (fp32 copies of the inputs,
 * the positions). */
double hybrid_check_out(const hprob *p, const void *out, const char *what);
void hybrid_check_state(const hprob *p, const hstate *st, const char *what);

/* The sequence in parts [cuts[i], cuts[i+1]) carrying st from empty, out
 * poisoned first: each part a prefill, or with steps a decode step per
 * token (whose position comes from the window, not from the call). */
void hybrid_run_parts(const hprob *p, void *out, hstate *st, const int64_t *cuts, int n, int steps);

/* The whole sequence in one prefill on the backend, with a state (outputs
 * and final state checked) and without one (outputs checked); returns the
 * first's error. */
double hybrid_check_whole(const hprob *p);

/* The (W, s) both suites run: s = 0, W = 1, W past the lengths. */
extern const int64_t hybrid_windows[6][2];

/* Lengths around W and s (1, W - 1, W, W + 1, s + W + 1, 1000, 4097; B = 1
 * past 1000) at the first nw windows and the first nl lengths, each case
 * from base run by check. */
void hybrid_case_lengths(const hcase *base, int nw, int nl, void (*check)(const hcase *c));

/* The exp gate (LM_GATE_EXP, docs/DESIGN.md §9.1) from base, each case run
 * by check: lengths at the first nw windows with gates in [-2, 2], gates at
 * the form's bound +-LM_HYBRID_GATE_EXP_MAX (gamma from 4e-18 to 2e17: the
 * window vanishes or takes over), no gates (gamma = 1, not 1/2), and a
 * bf16 case with a mask. */
void hybrid_case_gate_exp(const hcase *base, int nw, void (*check)(const hcase *c));

/* prefill == split prefill (cuts around 1, W, s + W and the chunk) against
 * the reference with the final state, on a case with a mask. */
void hybrid_case_splits(const hprob *p);

#endif /* LM_HYBRID_CASES_H */
