/*
 * hybrid.cuh - what the hybrid attention kernels (hybrid_window.cu,
 * hybrid_body.cu, hybrid_parts.cu) share: elements of the call's tensors by
 * runtime dtype, where the key and value of a position live (a row of the
 * call, or a slot of the state's window), block-wide reductions, and the
 * parts both window bodies run alike: a key-list row's 16-byte piece into
 * shared memory, the denominator pass (A: read from the linear call's den,
 * or walked from the chunk scan) and the output pass.
 */
#ifndef LM_HYBRID_CUH
#define LM_HYBRID_CUH

#include "feature_map.cuh"
#include "lm_kernels.h"
#include "mma.cuh"

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

/* Where the value row at source r starts, as vrow_at reads it: an element
 * offset into the call's v (>= 0) or, as -1 - offset, into the state's win_v
 * (the head kernel keeps it a slot, to read the row column by column). */
__device__ __forceinline__ int64_t vrow(const lmk_hybrid &p, const HSrc &r, int b, int hk)
{
    if (r.call)
        return b * p.sv[0] + r.at * p.sv[1] + hk * p.sv[2];
    return -1 - (((int64_t)b * p.Hkv + hk) * (p.s + p.W) + r.at) * p.Dv;
}

__device__ __forceinline__ float vrow_at(const lmk_hybrid &p, int64_t o, int e)
{
    return o >= 0 ? hload(p.v, p.dtype, o + e * p.sv[3]) : p.win_v[-1 - o + e];
}

__device__ __forceinline__ float hval(const lmk_hybrid &p, const HSrc &r, int b, int hk, int e)
{
    return vrow_at(p, vrow(p, r, b, hk), e);
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

/* x rounded up to a multiple of 128 (the bodies' shared-memory regions start
 * 128-byte aligned). */
__host__ __device__ inline size_t al128(size_t x)
{
    return (x + 127) / 128 * 128;
}

/* Whether rows of D elements of x (strides st, in elements) can move as 16-byte
 * pieces: unit column stride, D and the other strides multiples of 8, x
 * 16-byte aligned (bf16: 8 values a piece). */
__host__ __device__ __forceinline__ bool rows16(const void *x, const int64_t *st, int D)
{
    return st[3] == 1 && D % 8 == 0 && (st[0] | st[1] | st[2]) % 8 == 0 && (uintptr_t)x % 16 == 0;
}

/* One 16-byte piece (elements 8 pc .. 8 pc + 7) of position j's key (or
 * value) into dst, bf16 call tensors of 16-byte rows: a row of the call by
 * cp.async (the caller commits and waits), a slot of the state (fp32)
 * converted here; zeros where j < 0 (no key), the key is absent or the piece
 * is past D. Returns whether a key is there. */
__device__ __forceinline__ bool hybrid_piece16(const lmk_hybrid &p, int b, int hk, int64_t j, bool values, int pc,
                                               __nv_bfloat16 *dst)
{
    const int D = values ? p.Dv : p.Dk;
    if (j >= 0 && j < p.P0) { /* a slot of the state */
        const HSrc r = hsrc(p, b, hk, j);
#pragma unroll
        for (int w = 0; w < 8; w++) {
            const int d = pc * 8 + w;
            dst[w] = __float2bfloat16_rn(r.present && d < D ? (values ? hval(p, r, b, hk, d) : hkey(p, r, b, hk, d)) : 0.0f);
        }
        return r.present;
    }
    const __nv_bfloat16 *src = (const __nv_bfloat16 *)(values ? p.v : p.k);
    const int64_t *st = values ? p.sv : p.sk;
    const bool present = j >= 0 && !(p.mask && p.mask[b * p.mask_s[0] + (j - p.P0) * p.mask_s[1]]);
    const bool ok = present && pc * 8 < D;
    cp_async16(dst, ok ? src + b * st[0] + (j - p.P0) * st[1] + hk * st[2] + pc * 8 : src, ok ? 16 : 0);
    return present;
}

/* Pass A of a window body: den[i] = phi(q_i) . z_i for the CTA's rows ra ..
 * ra + nr - 1 (i < nr). Where the linear call's v2 epilogue wrote it (p.den,
 * src/cuda_hybrid.c), a copy of nr floats. Else z_i = the chunk's z from the
 * scan (zc) plus phi(k) of the delayed keys of its chunk up to row i. Z: nr x
 * zp floats of scratch (zp >= Dk); qv(i, d): element d of row i's query as
 * fp32. A thread per column walks up to 64 + nr keys in order (a running
 * sum), RA keys' loads issued before they are added; then a warp per row.
 * Syncs between the two; the caller syncs before den is read or Z reused. */
template <class QV>
__device__ __forceinline__ void hybrid_den(const lmk_hybrid &p, int b, int h, int hk, int64_t ra, int nr, float *Z,
                                           int zp, float *den, QV qv)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int64_t a = ra - p.W - p.sh, nb = p.L - p.W - p.sh, nch = (nb + LMK_CHUNK - 1) / LMK_CHUNK;
    if (p.den) { /* the same for every thread of the block */
        const float *dg = p.den + ((int64_t)b * p.Hq + h) * nb + a;
        for (int i = threadIdx.x; i < nr; i += blockDim.x)
            den[i] = dg[i];
        return;
    }
    const int64_t c = a / LMK_CHUNK, bh = (int64_t)b * p.Hkv + hk;
    constexpr int RA = 32;
    const int64_t j1 = a + nr;
    for (int d = threadIdx.x; d < p.Dk; d += blockDim.x) {
        float acc = p.zc[(bh * nch + c) * p.Dk + d];
        for (int64_t j0 = c * LMK_CHUNK; j0 < j1; j0 += RA) {
            float kx[RA];
            bool in[RA];
#pragma unroll
            for (int u = 0; u < RA; u++) {
                const int64_t r = p.sh + j0 + u;
                in[u] = j0 + u < j1 && !(p.mask && p.mask[b * p.mask_s[0] + r * p.mask_s[1]]);
                kx[u] = in[u] ? hload(p.k, p.dtype, b * p.sk[0] + r * p.sk[1] + hk * p.sk[2] + d * p.sk[3]) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < RA; u++) {
                const int64_t jj = j0 + u;
                if (in[u])
                    acc += phi_precise(kx[u], p.feature_map);
                if (jj >= a && jj < j1)
                    Z[(jj - a) * zp + d] = acc;
            }
        }
    }
    __syncthreads();
    for (int i = warp; i < nr; i += nw) {
        float s = 0.0f;
        for (int d = lane; d < p.Dk; d += 32)
            s += phi_precise(qv(i, d), p.feature_map) * Z[i * zp + d];
        s = warp_sum(s);
        if (lane == 0)
            den[i] = s;
    }
}

/* The output pass of a window body, bf16 q and out of 16-byte rows: o = (the
 * linear numerator the linear kernel left in out (or the caller's copy of it
 * in num) + O) / (den + lsum + eps)
 * for rows ra .. ra + nr - 1; O: the window's numerators, fp32, pitch op (a
 * multiple of 4, O 16-byte aligned). 8 values a load and store, a thread's
 * loads issued first; one reciprocal per 8 values instead of a division per
 * value (last-bit differences, measured: bench/NOTES.md, round 3). */
template <int PER = 0> /* Dv / 8 when the caller knows it (the index math by shifts), else 0 */
__device__ __forceinline__ void hybrid_out_vec(const lmk_hybrid &p, int b, int h, int64_t ra, int nr, const float *O,
                                               int op, const float *den, const float *lsum,
                                               const __nv_bfloat16 *num = nullptr, int num_pitch = 0)
{
    __nv_bfloat16 *og = (__nv_bfloat16 *)p.out + b * p.so[0] + ra * p.so[1] + h * p.so[2];
    const int per = PER ? PER : p.Dv / 8, n8 = nr * per, nt = blockDim.x;
    /* The numerators from num (a copy in shared memory, rows at num_pitch) or from out. */
    const __nv_bfloat16 *ng = num ? num : og;
    const int64_t np = num ? num_pitch : p.so[1];
    for (int x0 = threadIdx.x; x0 < n8; x0 += 4 * nt) {
        uint4 r[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int x = x0 + u * nt;
            r[u] = x < n8 ? *(const uint4 *)(ng + (x / per) * np + x % per * 8) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int x = x0 + u * nt, i = x / per, e = x % per * 8;
            if (x >= n8)
                continue;
            const float inv = 1.0f / (den[i] + lsum[i] + p.eps);
            const float4 o0 = *(const float4 *)(O + i * op + e), o1 = *(const float4 *)(O + i * op + e + 4);
            const float o8[8] = { o0.x, o0.y, o0.z, o0.w, o1.x, o1.y, o1.z, o1.w };
            __nv_bfloat16 *h8 = (__nv_bfloat16 *)&r[u];
#pragma unroll
            for (int w = 0; w < 8; w++)
                h8[w] = __float2bfloat16_rn((__bfloat162float(h8[w]) + o8[w]) * inv);
            *(uint4 *)(og + i * p.so[1] + e) = r[u];
        }
    }
}

/* The register-resident window body (hybrid_body.cu): whether it takes this
 * body launch (bf16, 16-byte rows, Dk and Dv 64 or 128, its shared memory
 * within optin, LM_HYBRID_BODY not "wmma"), and its launch. */
bool hybrid_body_takes(const lmk_hybrid &p, size_t optin);
lm_status hybrid_body_launch(const lmk_hybrid &p, cudaStream_t s);

/* The zsum, fold and ring passes (hybrid_parts.cu). */
lm_status hybrid_parts_launch(const lmk_hybrid &p, lmk_hybrid_kind kind, cudaStream_t s);

} // namespace lmk

#endif /* LM_HYBRID_CUH */
