/*
 * bwd_parts.cu - the passes of the tensor-core core backward
 * (src/cuda_backward_tc.c) that are not attentions: the feature map and its
 * derivative, the normaliser's running sums, the per-token factors g and h,
 * and a transpose of fp32 states. Causal, one kv head per query head, bf16
 * tensors, fp32 arithmetic.
 *
 * One CTA of 128 threads per (head, 64-token chunk); thread j owns columns
 * j and j + 128 and walks the chunk's tokens in order, so its running sums
 * (z, the suffix of h phi(q)) need no communication; the sums over a row
 * (d = phi(q).z + eps, phi(q).da) are warp shuffles plus four partials in
 * shared memory. Running sums start from a chunk's prefix, which a scan over chunks
 * (lmk_chunk_scan_launch) makes from per-chunk sums.
 */
#include "feature_map.cuh"
#include "lm_kernels.h"

#include <cuda_bf16.h>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int C = LMK_CHUNK;
constexpr int THREADS = 128;
constexpr int COLS = LMK_MAX_DK / THREADS; /* columns per thread */
constexpr int WARPS = THREADS / 32;

using lmk::dphi_of_phi;
using lmk::phi_precise;

__device__ __forceinline__ float ld(const void *base, const int64_t *s, int b, int64_t t, int h, int j)
{
    return __bfloat162float(((const bf16 *)base)[b * s[0] + t * s[1] + h * s[2] + j]);
}

__device__ __forceinline__ void st(void *base, const int64_t *s, int b, int64_t t, int h, int j, float x)
{
    ((bf16 *)base)[b * s[0] + t * s[1] + h * s[2] + j] = __float2bfloat16_rn(x);
}

/* Element (b, t, h, j) of a contiguous [B, L, H, D] scratch tensor. */
__device__ __forceinline__ int64_t at(const lmk_bparts &p, int b, int64_t t, int h, int D, int j)
{
    return ((b * p.L + t) * p.H + h) * D + j;
}

/* Sum over the CTA of one value per thread, for token i: partials in red. */
__device__ __forceinline__ void row_sum(float x, float (*red)[WARPS], int i)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0)
        red[i][threadIdx.x >> 5] = x;
}

__device__ __forceinline__ float row_total(const float (*red)[WARPS], int i)
{
    float x = 0.0f;
    for (int w = 0; w < WARPS; w++)
        x += red[i][w];
    return x;
}

struct Tile {
    int b, h;
    int64_t head, c, t0;
    int n;
};

__device__ __forceinline__ Tile tile_of(const lmk_bparts &p)
{
    Tile x;
    x.c = blockIdx.x;
    x.head = blockIdx.y;
    x.b = (int)(x.head / p.H), x.h = (int)(x.head % p.H);
    x.t0 = x.c * C;
    x.n = (int)(p.L - x.t0 < C ? p.L - x.t0 : C);
    return x;
}

/* a = phi(q), b = phi(k) into bf16 scratch; zs[head][c] = sum of phi(k) over chunk c. */
__global__ void __launch_bounds__(THREADS) prep(const lmk_bparts p)
{
    const Tile x = tile_of(p);
    const int nch = gridDim.x;
    for (int u = 0; u < COLS; u++) {
        const int j = threadIdx.x + u * THREADS;
        if (j >= p.Dk)
            break;
        float zs = 0.0f;
        for (int i = 0; i < x.n; i++) {
            const int64_t t = x.t0 + i;
            const float a = phi_precise(ld(p.q, p.sq, x.b, t, x.h, j), p.feature_map);
            const float b = phi_precise(ld(p.k, p.sk, x.b, t, x.h, j), p.feature_map);
            ((bf16 *)p.a)[at(p, x.b, t, x.h, p.Dk, j)] = __float2bfloat16_rn(a);
            ((bf16 *)p.b)[at(p, x.b, t, x.h, p.Dk, j)] = __float2bfloat16_rn(b);
            zs += b;
        }
        p.zs[(x.head * nch + x.c) * p.Dk + j] = zs;
    }
}

/* g = dout / d as bf16 (unnormalised: scale dout, and h = 0, rs = 0); when
 * normalised, h holds 1 / d until LMK_BP_H. */
__global__ void __launch_bounds__(THREADS) g_rows(const lmk_bparts p)
{
    __shared__ float red[C][WARPS];
    __shared__ float inv[C];
    const Tile x = tile_of(p);
    const int nch = gridDim.x;
    float *h = p.h + x.head * p.L + x.t0;
    if (p.normalize) {
        float z[COLS];
        for (int u = 0; u < COLS; u++) {
            const int j = threadIdx.x + u * THREADS;
            z[u] = j < p.Dk ? p.zc[(x.head * nch + x.c) * p.Dk + j] : 0.0f;
        }
        for (int i = 0; i < x.n; i++) {
            float part = 0.0f;
            for (int u = 0; u < COLS; u++) {
                const int j = threadIdx.x + u * THREADS;
                if (j < p.Dk) {
                    z[u] += phi_precise(ld(p.k, p.sk, x.b, x.t0 + i, x.h, j), p.feature_map);
                    part += phi_precise(ld(p.q, p.sq, x.b, x.t0 + i, x.h, j), p.feature_map) * z[u];
                }
            }
            row_sum(part, red, i);
        }
        __syncthreads();
        if ((int)threadIdx.x < x.n)
            h[threadIdx.x] = inv[threadIdx.x] = 1.0f / (row_total(red, threadIdx.x) + p.eps);
        __syncthreads();
    } else {
        if ((int)threadIdx.x < x.n)
            h[threadIdx.x] = 0.0f;
        for (int j = threadIdx.x; j < p.Dk; j += THREADS)
            p.rs[(x.head * nch + x.c) * p.Dk + j] = 0.0f;
    }
    for (int i = 0; i < x.n; i++) {
        const float w = p.normalize ? inv[i] : p.scale;
        for (int j = threadIdx.x; j < p.Dv; j += THREADS)
            ((bf16 *)p.g)[at(p, x.b, x.t0 + i, x.h, p.Dv, j)] =
                __float2bfloat16_rn(ld(p.dout, p.sdo, x.b, x.t0 + i, x.h, j) * w);
    }
}

/* h = -(a . da) / d, with da = S g the causal attention's output before its
 * h z term: that is -(dout . o) / d (o = a S / d), with o and g exactly as
 * that attention saw them, so da + h z cancels where the true gradient does
 * and no forward is needed for o. rs[head][c] = sum of h phi(q) over chunk c.
 * Normalised only. */
__global__ void __launch_bounds__(THREADS) h_rows(const lmk_bparts p)
{
    __shared__ float red[C][WARPS];
    __shared__ float hh[C];
    const Tile x = tile_of(p);
    const int nch = gridDim.x;
    float *h = p.h + x.head * p.L + x.t0;
    for (int i = 0; i < x.n; i++) {
        float part = 0.0f;
        for (int j = threadIdx.x; j < p.Dk; j += THREADS)
            part += phi_precise(ld(p.q, p.sq, x.b, x.t0 + i, x.h, j), p.feature_map) *
                    __bfloat162float(((const bf16 *)p.da)[at(p, x.b, x.t0 + i, x.h, p.Dk, j)]);
        row_sum(part, red, i);
    }
    __syncthreads();
    if ((int)threadIdx.x < x.n)
        h[threadIdx.x] = hh[threadIdx.x] = -row_total(red, threadIdx.x) * h[threadIdx.x];
    __syncthreads();
    for (int j = threadIdx.x; j < p.Dk; j += THREADS) {
        float rs = 0.0f;
        for (int i = 0; i < x.n; i++)
            rs += hh[i] * phi_precise(ld(p.q, p.sq, x.b, x.t0 + i, x.h, j), p.feature_map);
        p.rs[(x.head * nch + x.c) * p.Dk + j] = rs;
    }
}

/* dq = (da + h z) phi'(q) with z inclusive of token t; dk = (db + r) phi'(k)
 * with r = the adjoint of z after token s: r_in + sum_{t >= s} h_t phi(q_t). */
__global__ void __launch_bounds__(THREADS) finish(const lmk_bparts p)
{
    const Tile x = tile_of(p);
    const int nch = gridDim.x;
    const float *h = p.h + x.head * p.L + x.t0;
    for (int u = 0; u < COLS; u++) {
        const int j = threadIdx.x + u * THREADS;
        if (j >= p.Dk)
            break;
        float z = p.zc[(x.head * nch + x.c) * p.Dk + j];
        for (int i = 0; i < x.n; i++) {
            const int64_t t = x.t0 + i;
            const float a = phi_precise(ld(p.q, p.sq, x.b, t, x.h, j), p.feature_map);
            z += phi_precise(ld(p.k, p.sk, x.b, t, x.h, j), p.feature_map);
            const float da = __bfloat162float(((const bf16 *)p.da)[at(p, x.b, t, x.h, p.Dk, j)]);
            st(p.dq, p.sdq, x.b, t, x.h, j, (da + h[i] * z) * dphi_of_phi(a, p.feature_map));
        }
        float r = p.rc[(x.head * nch + x.c) * p.Dk + j];
        for (int i = x.n - 1; i >= 0; i--) {
            const int64_t t = x.t0 + i;
            const float b = phi_precise(ld(p.k, p.sk, x.b, t, x.h, j), p.feature_map);
            r += h[i] * phi_precise(ld(p.q, p.sq, x.b, t, x.h, j), p.feature_map);
            const float db = __bfloat162float(((const bf16 *)p.db)[at(p, x.b, t, x.h, p.Dk, j)]);
            st(p.dk, p.sdk, x.b, t, x.h, j, (db + r) * dphi_of_phi(b, p.feature_map));
        }
    }
}

/* Exclusive scan over chunks, one thread per (head, column): out[c] = init +
 * the sums of the chunks before c (reverse: after c); total = init + all.
 * Eight chunks' sums are loaded before any is added, so the loads overlap. */
__global__ void chunk_scan(const float *__restrict__ sums, float *__restrict__ out,
                           const float *__restrict__ init, float *__restrict__ total, int64_t n,
                           int64_t nch, int D, int reverse)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * D)
        return;
    const int64_t head = i / D, j = i % D;
    const float *s = sums + head * nch * D + j;
    float *o = out + head * nch * D + j;
    float acc = init ? init[i] : 0.0f;
    for (int64_t c0 = 0; c0 < nch; c0 += 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int64_t c = reverse ? nch - 1 - (c0 + u) : c0 + u;
            v[u] = c0 + u < nch ? s[c * D] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int64_t c = reverse ? nch - 1 - (c0 + u) : c0 + u;
            if (c0 + u < nch)
                o[c * D] = acc;
            acc += v[u];
        }
    }
    if (total)
        total[i] = acc;
}

__global__ void transpose(const float *__restrict__ src, float *__restrict__ dst, int64_t n, int rows,
                          int cols)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * rows * cols)
        return;
    const int64_t m = i / ((int64_t)rows * cols), rc = i % ((int64_t)rows * cols);
    const int r = (int)(rc / cols), c = (int)(rc % cols);
    dst[(m * cols + c) * rows + r] = src[i];
}

} // namespace

extern "C" lm_status lmk_bparts_launch(const lmk_bparts *p, lmk_bp_kind kind, void *stream)
{
    if (p->Dk < 1 || p->Dk > LMK_MAX_DK || p->Dv < 1 || p->Dv > LMK_MAX_DK || p->L < 1)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: backward parts with Dk %d, Dv %d, L %lld", p->Dk,
                         p->Dv, (long long)p->L);
    const int64_t nch = (p->L + C - 1) / C, heads = (int64_t)p->B * p->H;
    if (nch > INT32_MAX || heads > 65535)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: backward parts grid %lld x %lld", (long long)nch,
                         (long long)heads);
    const dim3 grid((unsigned)nch, (unsigned)heads);
    cudaStream_t s = (cudaStream_t)stream;
    switch (kind) {
    case LMK_BP_PREP: prep<<<grid, THREADS, 0, s>>>(*p); break;
    case LMK_BP_G: g_rows<<<grid, THREADS, 0, s>>>(*p); break;
    case LMK_BP_H: h_rows<<<grid, THREADS, 0, s>>>(*p); break;
    case LMK_BP_FINISH: finish<<<grid, THREADS, 0, s>>>(*p); break;
    default: return lmi_error(LM_ERR_INVALID_ARG, "cuda: backward part %d", (int)kind);
    }
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

extern "C" lm_status lmk_chunk_scan_launch(const float *sums, float *out, const float *init, float *total,
                                           int64_t n, int64_t nch, int D, int reverse, void *stream)
{
    const int64_t threads = n * D;
    if (threads < 1)
        return LM_OK;
    chunk_scan<<<(unsigned)((threads + 255) / 256), 256, 0, (cudaStream_t)stream>>>(sums, out, init, total, n,
                                                                                  nch, D, reverse);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

extern "C" lm_status lmk_transpose_launch(const float *src, float *dst, int64_t n, int rows, int cols,
                                          void *stream)
{
    const int64_t total = n * rows * cols;
    if (total < 1)
        return LM_OK;
    transpose<<<(unsigned)((total + 255) / 256), 256, 0, (cudaStream_t)stream>>>(src, dst, n, rows, cols);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
