/*
 * absorb_cases.h - lm_linear_attn_absorb's problems for every backend:
 * random keys and values with the float64 reference (ref_absorb: the final
 * state of a causal pass, from zero or from a given state), the core
 * arguments of a call over a token range, runs of the sequence cut into
 * parts, the check of the state they leave, and the scenario both suites
 * run. The CPU suite (test_absorb.c) and the GPU suite
 * (gpu/test_gpu_absorb.c) each give a test_dev (ref.h: memory, copies, the
 * state's bound) and their own tables and backend-only tests.
 */
#ifndef LM_ABSORB_CASES_H
#define LM_ABSORB_CASES_H

#include "ref.h"

typedef struct acase {
    lm_dtype dtype;
    int64_t B, L, Hkv, Dk, Dv;
    int fm, decay, mask, state_in, seq_first; /* state_in: a random initial state (else zero) */
    lm_precision precision;
} acase;

/* A case's inputs (host, with float64 shadows, and on the backend), its
 * initial state and the reference's final one. */
typedef struct aprob {
    const test_dev *dev;
    acase c;
    tbuf k, v;
    uint8_t *mask; /* [B, L] or NULL */
    float decay[64];
    float *S0, *z0;          /* the initial state (host) */
    double *want_S, *want_z; /* the reference's final state */
    int64_t sk[4], sv[4];
    int64_t nS, nz;
    void *dk, *dv; /* on the backend (the host's buffers on the CPU) */
    uint8_t *dmask;
} aprob;

void aprob_init(aprob *p, const test_dev *dev, const acase *c);
void aprob_free(aprob *p);

/* *S, *z = host copies of the initial state (malloc'd). */
void aprob_state0(const aprob *p, float **S, float **z);

/* The core arguments of an absorb of tokens [t0, t0 + n) on `where` (the
 * backend's device, or LM_CPU for the host's inputs) into S, z (memory on
 * `where`). */
typedef struct acall {
    lm_tensor k, v, mask;
    lm_core_args a;
} acall;
void acall_init(acall *k, const aprob *p, lm_device where, float *S, float *z, int64_t t0, int64_t n);

/* The sequence absorbed in parts ending at cuts[0 .. n-1] (the last = L),
 * one call each, from the initial state, on dev (p->dev, or &cpu_dev with
 * the host's inputs); *S, *z = host copies of the state left (malloc'd). */
void absorb_run(const aprob *p, const test_dev *dev, const int64_t *cuts, int n, float **S, float **z);

/* A host state against the reference's final one, within
 * p->dev->state_bound (every value written: none NaN). */
void absorb_check_state(const aprob *p, const float *S, const float *z, const char *what);

/* Feature maps x decay x mask x initial state on base (4 kv heads with
 * different decays), each case run by check; !full leaves out the initial
 * states and relu (the GPU's reduced grid). */
void absorb_case_modes(const acase *base, int full, void (*check)(const acase *c));

#endif /* LM_ABSORB_CASES_H */
