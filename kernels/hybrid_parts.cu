/*
 * hybrid_parts.cu - the small passes of the hybrid prefill (docs/DESIGN.md
 * §9.3; the order is src/cuda_hybrid.c's), plain fp32 CUDA cores:
 *   zsum: per 64-row chunk of the delayed keys (rows sh .. L - W - 1 of the
 *         call), the sum of phi(k) over its unmasked rows: with the chunk scan
 *         it gives the linear denominator's z before each chunk;
 *   fold: the ring slots whose positions leave the window during the call
 *         (P0 - W .. P0 - W + min(L, W) - 1, not sinks, present) into S, z;
 *   ring: the call's tokens into the window slots: sinks, and the last W;
 *   sinks: the s sinks as bf16 tiles for the window fused into the linear
 *         call (lmk_window): state slots rounded to bf16 (as the bodies'
 *         key lists do), rows of the call copied, zeros past s and where a
 *         sink is absent, and one word of present bits per head.
 * Each is bound by reading what it folds or copies once; none allocates.
 */
#include "hybrid.cuh"

namespace {

using lmk::HSrc;
using lmk::hload;
using lmk::hsrc;
using lmk::phi_precise;

constexpr int THREADS = 128;
constexpr int CHUNK = LMK_CHUNK;

/* Grid (chunks, B * Hkv); thread d sums column d. */
__global__ void __launch_bounds__(THREADS) zsum_kernel(const __grid_constant__ lmk_hybrid p, int64_t nch)
{
    const int64_t c = blockIdx.x, bh = blockIdx.y;
    const int b = (int)(bh / p.Hkv), hk = (int)(bh % p.Hkv);
    const int64_t end = p.L - p.W, r0 = p.sh + c * CHUNK;
    const int64_t r1 = r0 + CHUNK < end ? r0 + CHUNK : end;
    constexpr int R = 32; /* rows whose loads are in flight before they are summed (8: 461 us at 32K, bench/NOTES.md) */
    for (int d = threadIdx.x; d < p.Dk; d += THREADS) {
        float acc = 0.0f;
        for (int64_t r = r0; r < r1; r += R) {
            float kx[R];
            bool in[R];
#pragma unroll
            for (int u = 0; u < R; u++) {
                in[u] = r + u < r1 && !(p.mask && p.mask[b * p.mask_s[0] + (r + u) * p.mask_s[1]]);
                kx[u] = in[u] ? hload(p.k, p.dtype, b * p.sk[0] + (r + u) * p.sk[1] + hk * p.sk[2] + d * p.sk[3]) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < R; u++)
                if (in[u])
                    acc += phi_precise(kx[u], p.feature_map);
        }
        p.zs[(bh * nch + c) * p.Dk + d] = acc;
    }
}

/* Grid (ceil(Dk * Dv / THREADS), B * Hkv): thread i owns S[i / Dv][i % Dv]
 * (and z[i] for i < Dk), summing over the positions that leave the window. */
__global__ void __launch_bounds__(THREADS) fold_kernel(const __grid_constant__ lmk_hybrid p)
{
    const int64_t bh = blockIdx.y, i = (int64_t)blockIdx.x * THREADS + threadIdx.x;
    const int b = (int)(bh / p.Hkv), hk = (int)(bh % p.Hkv);
    const int64_t nf = p.L < p.W ? p.L : p.W, n = (int64_t)p.Dk * p.Dv;
    const int d = (int)(i / p.Dv), e = (int)(i % p.Dv);
    float dS = 0.0f, dz = 0.0f;
    for (int64_t f = 0; f < nf; f++) {
        const int64_t j = p.P0 - p.W + f;
        if (j < p.s || j < 0)
            continue;
        const HSrc r = hsrc(p, b, hk, j);
        if (!r.present)
            continue;
        const float *slot_k = p.win_k + (bh * (p.s + p.W) + r.at) * p.Dk;
        if (i < n) {
            const float fk = phi_precise(slot_k[d], p.feature_map);
            dS += fk * p.win_v[(bh * (p.s + p.W) + r.at) * p.Dv + e];
        }
        if (i < p.Dk)
            dz += phi_precise(slot_k[i], p.feature_map);
    }
    if (i < n)
        p.S[bh * n + i] += dS;
    if (i < p.Dk)
        p.z[bh * p.Dk + i] += dz;
}

/* Grid (new slots, B * Hkv): block x writes one token of the call into its
 * slot: the sinks P0 .. min(s, P0 + L) - 1 first, then the positions of the
 * last W that are not sinks. */
__global__ void __launch_bounds__(THREADS) ring_kernel(const __grid_constant__ lmk_hybrid p, int64_t n_sinks,
                                                       int64_t ring0)
{
    const int64_t bh = blockIdx.y, x = blockIdx.x;
    const int b = (int)(bh / p.Hkv), hk = (int)(bh % p.Hkv);
    const int64_t j = x < n_sinks ? p.P0 + x : ring0 + (x - n_sinks);
    const HSrc r = hsrc(p, b, hk, j); /* a row of the call */
    const int64_t slot = j < p.s ? j : p.s + j % p.W, base = bh * (p.s + p.W) + slot;
    for (int d = threadIdx.x; d < p.Dk; d += THREADS)
        p.win_k[base * p.Dk + d] = r.present ? lmk::hkey(p, r, b, hk, d) : 0.0f;
    for (int e = threadIdx.x; e < p.Dv; e += THREADS)
        p.win_v[base * p.Dv + e] = r.present ? lmk::hval(p, r, b, hk, e) : 0.0f;
    if (threadIdx.x == 0)
        p.win_pos[base] = (int32_t)(r.present ? j + 1 : -(j + 1));
}

/* Grid (B * Hkv): the LMK_WINDOW_SINKS rows of one head's sink tiles. */
__global__ void __launch_bounds__(THREADS) sinks_kernel(const __grid_constant__ lmk_hybrid p)
{
    const int64_t bh = blockIdx.x;
    const int b = (int)(bh / p.Hkv), hk = (int)(bh % p.Hkv);
    __nv_bfloat16 *K = (__nv_bfloat16 *)p.sink_k + bh * LMK_WINDOW_SINKS * p.Dk;
    __nv_bfloat16 *V = (__nv_bfloat16 *)p.sink_v + bh * LMK_WINDOW_SINKS * p.Dv;
    uint32_t bits = 0;
    for (int j = 0; j < LMK_WINDOW_SINKS; j++) {
        const bool sink = j < p.s;
        const HSrc r = sink ? hsrc(p, b, hk, j) : HSrc{ false, 0, false };
        for (int d = threadIdx.x; d < p.Dk; d += THREADS)
            K[j * p.Dk + d] = __float2bfloat16_rn(r.present ? lmk::hkey(p, r, b, hk, d) : 0.0f);
        for (int e = threadIdx.x; e < p.Dv; e += THREADS)
            V[j * p.Dv + e] = __float2bfloat16_rn(r.present ? lmk::hval(p, r, b, hk, e) : 0.0f);
        bits |= r.present ? 1u << j : 0u;
    }
    if (threadIdx.x == 0)
        p.sink_bits[bh] = bits;
}

} // namespace

namespace lmk {

lm_status hybrid_parts_launch(const lmk_hybrid &p, lmk_hybrid_kind kind, cudaStream_t s)
{
    const unsigned heads = (unsigned)((int64_t)p.B * p.Hkv);
    if (kind == LMK_HYBRID_ZSUM) {
        const int64_t nch = (p.L - p.W - p.sh + CHUNK - 1) / CHUNK;
        if (nch <= 0)
            return LM_OK;
        zsum_kernel<<<dim3((unsigned)nch, heads), THREADS, 0, s>>>(p, nch);
    } else if (kind == LMK_HYBRID_SINKS) {
        sinks_kernel<<<heads, THREADS, 0, s>>>(p);
    } else if (kind == LMK_HYBRID_FOLD) {
        /* Positions P0 - W .. P0 - W + min(L, W) - 1 leave the window; none
         * at or past the sinks (a call from position 0): nothing to fold. */
        const int64_t last = p.P0 - p.W + (p.L < p.W ? p.L : p.W) - 1;
        if (last < (p.s > 0 ? p.s : 0))
            return LM_OK;
        const int64_t n = (int64_t)p.Dk * p.Dv;
        fold_kernel<<<dim3((unsigned)((n + THREADS - 1) / THREADS), heads), THREADS, 0, s>>>(p);
    } else {
        const int64_t end = p.P0 + p.L;
        const int64_t n_sinks = p.P0 < p.s ? (end < p.s ? end : p.s) - p.P0 : 0;
        int64_t ring0 = end - p.W;
        ring0 = ring0 > p.P0 ? ring0 : p.P0;
        ring0 = ring0 > p.s ? ring0 : p.s;
        const int64_t n = n_sinks + (end > ring0 ? end - ring0 : 0);
        if (n == 0)
            return LM_OK;
        ring_kernel<<<dim3((unsigned)n, heads), THREADS, 0, s>>>(p, n_sinks, ring0);
    }
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

} // namespace lmk
