/*
 * feature_map.cuh - phi and phi' in fp32 as the CPU backend computes them
 * (cpu_chunk.h, with expf), for the decode step and the backward kernels.
 * The prefill kernels (attend.cuh, v2_loads.cuh) use the cheaper phi_fm and
 * phi_pair below (ex2.approx, in packed bf16 on sm_90): their values are
 * stored as bf16, where the approximate exponential's error hardly shows
 * (1.02x the output floor).
 */
#ifndef LM_FEATURE_MAP_CUH
#define LM_FEATURE_MAP_CUH

#include "liquid_memory.h"

#include <cuda_bf16.h>
#include <stdint.h>
#include <type_traits>

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

/* 2^x, approximate (2 ulp; ex2(-inf) = 0), without __expf's guard for
 * results below 2^-126 (flushed to 0 here). */
__device__ __forceinline__ float ex2_approx(float x)
{
    float e;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x));
    return e;
}

/* phi in fp32; an approximate ex2 (2 ulp) is plenty for a value stored as
 * bf16 or as a 16-bit hi + lo pair, and several times cheaper than expf.
 * Both sides of elu+1 are computed and one selected: no branch in the
 * per-element loops. */
template <int FM> __device__ __forceinline__ float phi_fm(float x)
{
    if constexpr (FM == LM_FEATURE_ELU1) {
        const float e = ex2_approx(x * 1.44269504f);
        return x > 0.0f ? x + 1.0f : e;
    } else if constexpr (FM == LM_FEATURE_RELU) {
        return x < 0.0f ? 0.0f : x; /* NaN stays NaN */
    } else {
        return x;
    }
}

/* phi of a bf16 pair, as bf16. elu+1 on sm_90 in packed bf16 arithmetic:
 * x log2(e) and its ex2 rounded to bf16 add 0.001-0.011 to the output's
 * error ratio (bench/phi_precision_sim.py, 8K) for half the instructions of
 * the fp32 path (unpack, scale, ex2, add, compare, select per element). */
template <int FM> __device__ __forceinline__ __nv_bfloat162 phi_pair(__nv_bfloat162 x)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (FM == LM_FEATURE_ELU1) {
        const __nv_bfloat162 a = __hmul2(x, __float2bfloat162_rn(1.44269504f));
        uint32_t e;
        asm("ex2.approx.ftz.bf16x2 %0, %1;" : "=r"(e) : "r"(*reinterpret_cast<const uint32_t *>(&a)));
        const __nv_bfloat162 p1 = __hadd2(x, __float2bfloat162_rn(1.0f));
        const uint32_t m = __hgt2_mask(x, __float2bfloat162_rn(0.0f)); /* NaN: 0, takes ex2(NaN) */
        const uint32_t r = (*reinterpret_cast<const uint32_t *>(&p1) & m) | (e & ~m);
        return *reinterpret_cast<const __nv_bfloat162 *>(&r);
    }
#endif
    const float2 f = __bfloat1622float2(x);
    return __floats2bfloat162_rn(phi_fm<FM>(f.x), phi_fm<FM>(f.y));
}

/* f(std::integral_constant<int, FM>()) for the feature map fm of a call: a
 * kernel's per-map instantiation picked once (identity for anything else). */
template <class F> __device__ __forceinline__ void with_feature_map(int fm, F &&f)
{
    switch (fm) {
    case LM_FEATURE_ELU1: f(std::integral_constant<int, LM_FEATURE_ELU1>()); break;
    case LM_FEATURE_RELU: f(std::integral_constant<int, LM_FEATURE_RELU>()); break;
    default: f(std::integral_constant<int, LM_FEATURE_IDENTITY>()); break;
    }
}

} // namespace lmk

#endif /* LM_FEATURE_MAP_CUH */
