/*
 * feature_map.cuh - phi and phi' in fp32 as the CPU backend computes them
 * (cpu_chunk.h, with expf), for the decode step and the backward kernels.
 * The prefill kernel keeps its own, cheaper phi (attend.cuh: ex2.approx,
 * in packed bf16 on sm_90): its values are stored as bf16, where the
 * approximate exponential's error hardly shows (1.02x the output floor).
 */
#ifndef LM_FEATURE_MAP_CUH
#define LM_FEATURE_MAP_CUH

#include "liquid_memory.h"

namespace lmk {

__device__ __forceinline__ float phi_precise(float x, int fm)
{
    if (fm == LM_FEATURE_ELU1)
        return x > 0.0f ? x + 1.0f : expf(x);
    if (fm == LM_FEATURE_RELU)
        return x < 0.0f ? 0.0f : x;
    return x;
}

/* phi'(x) from y = phi(x): elu+1 has y > 1 exactly where x > 0, else y =
 * exp(x) = phi'(x); relu passes NaN's gradient, as torch and the CPU do. */
__device__ __forceinline__ float dphi_of_phi(float y, int fm)
{
    if (fm == LM_FEATURE_ELU1)
        return y > 1.0f ? 1.0f : y;
    if (fm == LM_FEATURE_RELU)
        return y > 0.0f || y != y ? 1.0f : 0.0f;
    return 1.0f;
}

} // namespace lmk

#endif /* LM_FEATURE_MAP_CUH */
