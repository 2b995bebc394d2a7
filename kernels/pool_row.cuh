/*
 * pool_row.cuh - how a CTA of an engine pool's decode row (lm_pool_decode:
 * decode.cu, hybrid_decode.cu) decides whether the row runs: a padding row
 * (slot -1) leaves at once; a slot out of range or at the license's limit is
 * refused (row status); otherwise every CTA of the row is counted on the
 * slot's arrival counter and the last to arrive advances the slot's
 * position. Every CTA of a row reads the position before it is counted, so
 * all take the same decision, with no extra launch.
 */
#ifndef LM_POOL_ROW_CUH
#define LM_POOL_ROW_CUH

#include "lm_kernels.h"

#include <cuda_runtime.h>

namespace lmk {

/* The pool's side of a decode row: slots out of range are >= nslots (0: not
 * checked); pos / arrive per slot (pos NULL: positions not kept); limit 0 =
 * none; status per row, or NULL. */
struct PoolRows {
    int nslots;
    int64_t *pos;
    int32_t *arrive;
    int64_t limit;
    int32_t *status;
};

/* A padding row (slot < 0): its first CTA marks it LM_OK; every CTA of it
 * (and of its cluster) must return. */
__device__ __forceinline__ bool pool_padding(const PoolRows &p, int slot, int b, bool first)
{
    if (slot >= 0)
        return false;
    if (first && threadIdx.x == 0 && p.status)
        p.status[b] = LM_OK;
    return true;
}

/* Whether this CTA's row runs (the same answer in every CTA of the row);
 * the row's status (from its first CTA) and, from its last CTA to arrive,
 * the slot's position (0 before the step when fresh). */
__device__ __forceinline__ bool pool_admit(const PoolRows &p, int slot, bool fresh, int b, bool first,
                                           int ctas_per_row)
{
    __shared__ int verdict;
    if (threadIdx.x == 0) {
        int st = LM_OK;
        if (p.nslots && slot >= p.nslots)
            st = LM_ERR_INVALID_ARG;
        else if (p.pos && p.limit && !fresh && p.pos[slot] + 1 > p.limit)
            st = LM_ERR_LICENSE;
        if (first && p.status)
            p.status[b] = st;
        if (st == LM_OK && p.pos) {
            const int64_t pos = fresh ? 0 : p.pos[slot];
            __threadfence(); /* the read above is done before this CTA is counted */
            if (atomicAdd(&p.arrive[slot], 1) == ctas_per_row - 1) {
                p.arrive[slot] = 0;
                p.pos[slot] = pos + 1;
            }
        }
        verdict = st;
    }
    __syncthreads();
    return verdict == LM_OK;
}

} // namespace lmk

#endif /* LM_POOL_ROW_CUH */
