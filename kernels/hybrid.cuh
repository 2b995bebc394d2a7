/*
 * hybrid.cuh - what the hybrid attention kernels (hybrid_window.cu,
 * hybrid_parts.cu) share: elements of the call's tensors by runtime dtype,
 * where the key and value of a position live (a row of the call, or a slot
 * of the state's window), and block-wide reductions.
 */
#ifndef LM_HYBRID_CUH
#define LM_HYBRID_CUH

#include "feature_map.cuh"
#include "lm_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lmk {

/* Element i (in elements) of a tensor of runtime dtype, as fp32. */
__device__ __forceinline__ float hload(const void *base, int dtype, int64_t i)
{
    if (dtype == LM_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    if (dtype == LM_F16)
        return __half2float(((const __half *)base)[i]);
    return ((const float *)base)[i];
}

__device__ __forceinline__ void hstore(void *base, int dtype, int64_t i, float x)
{
    if (dtype == LM_BF16)
        ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn(x);
    else if (dtype == LM_F16)
        ((__half *)base)[i] = __float2half_rn(x);
    else
        ((float *)base)[i] = x;
}

/* Where position j's key and value are for batch row b, kv head hk: row j -
 * P0 of the call (j >= P0), else a slot of the window (sink j, or ring slot
 * s + j % W), which holds it only when its position code says j + 1. */
struct HSrc {
    bool call;    /* else a window slot */
    int64_t at;   /* call row, or slot index */
    bool present; /* a key is there (not masked, not empty) */
};

__device__ __forceinline__ HSrc hsrc(const lmk_hybrid &p, int b, int hk, int64_t j)
{
    HSrc r;
    if (j >= p.P0) {
        r.call = true;
        r.at = j - p.P0;
        r.present = !(p.mask && p.mask[b * p.mask_s[0] + r.at * p.mask_s[1]]);
        return r;
    }
    r.call = false;
    r.at = j < p.s ? j : p.s + j % p.W;
    r.present = p.win_pos && p.win_pos[((int64_t)b * p.Hkv + hk) * (p.s + p.W) + r.at] == (int32_t)(j + 1);
    return r;
}

/* Element d of the key (or, with value, of the value) at source r. */
__device__ __forceinline__ float hkey(const lmk_hybrid &p, const HSrc &r, int b, int hk, int d)
{
    if (r.call)
        return hload(p.k, p.dtype, b * p.sk[0] + r.at * p.sk[1] + hk * p.sk[2] + d * p.sk[3]);
    return p.win_k[(((int64_t)b * p.Hkv + hk) * (p.s + p.W) + r.at) * p.Dk + d];
}

__device__ __forceinline__ float hval(const lmk_hybrid &p, const HSrc &r, int b, int hk, int e)
{
    if (r.call)
        return hload(p.v, p.dtype, b * p.sv[0] + r.at * p.sv[1] + hk * p.sv[2] + e * p.sv[3]);
    return p.win_v[(((int64_t)b * p.Hkv + hk) * (p.s + p.W) + r.at) * p.Dv + e];
}

__device__ __forceinline__ float warp_sum(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* Sum (or max) of one value per thread over the block; red holds 32 floats.
 * Every thread gets the result. */
template <bool MAX> __device__ __forceinline__ float block_reduce(float x, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    x = MAX ? warp_max(x) : warp_sum(x);
    __syncthreads();
    if (lane == 0)
        red[warp] = x;
    __syncthreads();
    float r = MAX ? -INFINITY : 0.0f;
    for (int w = 0; w < nw; w++)
        r = MAX ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

/* The zsum, fold and ring passes (hybrid_parts.cu). */
lm_status hybrid_parts_launch(const lmk_hybrid &p, lmk_hybrid_kind kind, cudaStream_t s);

} // namespace lmk

#endif /* LM_HYBRID_CUH */
