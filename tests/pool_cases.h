/*
 * pool_cases.h - the engine pool's scenarios, run on every backend against
 * the float64 reference: the CPU suite (test_pool.c) and the GPU suite
 * (gpu/test_gpu_pool.c) each give a test_dev (where memory lives, how it is
 * copied, the error bounds) and run the same cases.
 */
#ifndef LM_POOL_CASES_H
#define LM_POOL_CASES_H

#include "ref.h"

typedef struct pcase {
    lm_dtype dtype;
    int64_t N, Hq, Hkv, Dk, Dv;
    int decay, num_threads;
    int64_t W, s; /* W > 0: a hybrid pool of window W and s sinks (no decay) */
    int gate;     /* hybrid: random per-head gates (the pool's num_heads = Hq) */
    lm_gate_form gate_form; /* hybrid: gamma = sigmoid(g) (default) or exp(g) */
} pcase;

/* Ragged packed prefills (fresh and continued, slots in any order, decode
 * rows mixed in, continuing, joining and restarting a slot fresh, a call of
 * decode rows alone, an emptied slot, a joining slot; lengths around the
 * hybrid's W and s) and indexed decodes with padding rows, over a table of
 * shapes, dtypes and modes (linear, hybrid). */
void pool_case_batching(const test_dev *dev);
/* Fork (slot copy), blob export / import into another pool, zeroing, and
 * refused blobs; a linear and a hybrid pool. */
void pool_case_fork_blob(const test_dev *dev);
/* A hybrid pool: one sequence as one prefill, as a prefill then decode
 * steps, and through the core's hybrid prefill alone (equal to the first bit
 * for bit: the same core path on a slot view). */
void pool_case_hybrid_core(const test_dev *dev);
/* The caller's workspace of the queried size gives the allocating call's
 * results bit for bit; a workspace too small is refused. */
void pool_case_workspace(const test_dev *dev);

/* The ways a backend may run a varlen prefill, in one scenario: npools
 * pools, pool j created after select(j) (CUDA: LM_POOL_PREFILL=each or
 * packed), given the same calls, each checked against the float64 reference
 * and the others' outputs. Ragged lengths (1 .. 4097), fresh and continued
 * slots out of order, one slot never touched (NaN, checked unchanged),
 * decode rows, GQA and Hq == Hkv at Dk = Dv = 128 and 64 in bf16 (what the
 * CUDA v2 kernel takes), and a call mixing a compensated sequence (its slot
 * past LM_PRECISION_AUTO_TOKENS) with a fresh one and a decode row. small
 * (the sanitizers' pass): sequences of at most 1100 tokens, no compensated
 * call. */
void pool_case_paths(const test_dev *dev, int npools, void (*select)(int pool), int small);

#endif /* LM_POOL_CASES_H */
