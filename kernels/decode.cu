/*
 * decode.cu - one decode step for every (batch row, kv head): one CTA each
 * updates its fp32 state in place (S = g S + phi(k) v^T, z = g z + phi(k)) and
 * reads it out for the query heads of its group, all in fp32 FMAs (no
 * tensor cores: one token is a rank-1 update, bound by reading and writing
 * the state: 2 MiB each way at 32 heads of 128 x 128, floor ~1.4 us).
 * No allocation, no host sync: graph-capturable. Query heads go in blocks of
 * 4 so registers and shared memory stay bounded for any GQA ratio.
 */
#include "lm_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int DEC_THREADS = 512;
constexpr int GB = 4; /* query heads per pass */
constexpr int RB = 8; /* state rows per thread loaded at once */

template <int DT> __device__ __forceinline__ float ld(const void *p, int64_t i);
template <> __device__ __forceinline__ float ld<LM_BF16>(const void *p, int64_t i)
{
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}
template <> __device__ __forceinline__ float ld<LM_F16>(const void *p, int64_t i)
{
    return __half2float(((const __half *)p)[i]);
}
template <> __device__ __forceinline__ float ld<LM_F32>(const void *p, int64_t i)
{
    return ((const float *)p)[i];
}

template <int DT> __device__ __forceinline__ void st(void *p, int64_t i, float x);
template <> __device__ __forceinline__ void st<LM_BF16>(void *p, int64_t i, float x)
{
    ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ void st<LM_F16>(void *p, int64_t i, float x)
{
    ((__half *)p)[i] = __float2half_rn(x);
}
template <> __device__ __forceinline__ void st<LM_F32>(void *p, int64_t i, float x)
{
    ((float *)p)[i] = x;
}

__device__ __forceinline__ float phi(float x, int fm)
{
    if (fm == LM_FEATURE_ELU1)
        return x > 0.0f ? x + 1.0f : expf(x);
    if (fm == LM_FEATURE_RELU)
        return x < 0.0f ? 0.0f : x;
    return x;
}

/* Columns [4 cg, 4 cg + 4) of state row d: float4 when rows are 16-byte aligned. */
__device__ __forceinline__ float4 row4(const float *row, int e, int Dv, bool vec)
{
    if (vec)
        return *(const float4 *)(row + e);
    float4 r;
    r.x = e < Dv ? row[e] : 0.0f;
    r.y = e + 1 < Dv ? row[e + 1] : 0.0f;
    r.z = e + 2 < Dv ? row[e + 2] : 0.0f;
    r.w = e + 3 < Dv ? row[e + 3] : 0.0f;
    return r;
}

__device__ __forceinline__ void put4(float *row, int e, int Dv, bool vec, float4 x)
{
    if (vec) {
        *(float4 *)(row + e) = x;
        return;
    }
    if (e < Dv) row[e] = x.x;
    if (e + 1 < Dv) row[e + 1] = x.y;
    if (e + 2 < Dv) row[e + 2] = x.z;
    if (e + 3 < Dv) row[e + 3] = x.w;
}

template <int DT> __global__ void __launch_bounds__(DEC_THREADS) decode_kernel(const __grid_constant__ lmk_decode p)
{
    extern __shared__ float sm[];
    const int Dk = p.Dk, Dv = p.Dv, G = p.Hq / p.Hkv;
    float *phk = sm, *vv = phk + Dk, *zn = vv + Dv, *phq = zn + Dk, *den = phq + GB * Dk, *red = den + GB;
    const int head = blockIdx.x, b = head / p.Hkv, hk = head % p.Hkv, tid = threadIdx.x;
    const float g = p.has_decay ? p.decay[hk] : 1.0f;
    const bool off = p.mask && p.mask[b * p.mask_s0];

    for (int d = tid; d < Dk; d += DEC_THREADS)
        phk[d] = off ? 0.0f : phi(ld<DT>(p.k, b * p.sk[0] + hk * p.sk[1] + d), p.feature_map);
    for (int e = tid; e < Dv; e += DEC_THREADS)
        vv[e] = off ? 0.0f : ld<DT>(p.v, b * p.sv[0] + hk * p.sv[1] + e);
    __syncthreads();
    float *z = p.z + (int64_t)head * Dk;
    for (int d = tid; d < Dk; d += DEC_THREADS) {
        const float x = z[d] * g + phk[d];
        zn[d] = x;
        z[d] = x;
    }

    const int CG = (Dv + 3) / 4, RG = DEC_THREADS / CG; /* host: Dv <= 4 * DEC_THREADS */
    const int cg = tid % CG, rg = tid / CG, e = 4 * cg;
    const bool active = rg < RG, vec = Dv % 4 == 0;
    float *S = p.S + (int64_t)head * Dk * Dv;
    for (int gb = 0; gb < G; gb += GB) {
        for (int x = tid; x < GB * Dk; x += DEC_THREADS) {
            const int gi = x / Dk, d = x % Dk, hq = hk * G + gb + gi;
            phq[x] = gb + gi < G ? phi(ld<DT>(p.q, b * p.sq[0] + hq * p.sq[1] + d), p.feature_map) : 0.0f;
        }
        __syncthreads();
        if (tid < GB * 32) { /* warp gi: den[gi] = phi(q_gi) . z */
            const int gi = tid / 32, lane = tid % 32;
            float s = 0.0f;
            for (int d = lane; d < Dk; d += 32)
                s += phq[gi * Dk + d] * zn[d];
            for (int o = 16; o; o >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0)
                den[gi] = s;
        }
        float acc[GB][4] = {};
        if (active) {
            /* Rows in batches of RB: all loads in flight before the first use. */
            for (int d0 = rg; d0 < Dk; d0 += RB * RG) {
                float4 s[RB];
#pragma unroll
                for (int i = 0; i < RB; i++) {
                    const int d = d0 + i * RG;
                    s[i] = d < Dk ? row4(S + (int64_t)d * Dv, e, Dv, vec) : make_float4(0, 0, 0, 0);
                }
#pragma unroll
                for (int i = 0; i < RB; i++) {
                    const int d = d0 + i * RG;
                    if (d >= Dk)
                        continue;
                    if (gb == 0) { /* the update, once; later blocks re-read it */
                        const float k = phk[d];
                        s[i].x = fmaf(k, vv[e < Dv ? e : 0], s[i].x * g);
                        s[i].y = fmaf(k, vv[e + 1 < Dv ? e + 1 : 0], s[i].y * g);
                        s[i].z = fmaf(k, vv[e + 2 < Dv ? e + 2 : 0], s[i].z * g);
                        s[i].w = fmaf(k, vv[e + 3 < Dv ? e + 3 : 0], s[i].w * g);
                        put4(S + (int64_t)d * Dv, e, Dv, vec, s[i]);
                    }
#pragma unroll
                    for (int gi = 0; gi < GB; gi++) {
                        const float q = phq[gi * Dk + d];
                        acc[gi][0] += q * s[i].x;
                        acc[gi][1] += q * s[i].y;
                        acc[gi][2] += q * s[i].z;
                        acc[gi][3] += q * s[i].w;
                    }
                }
            }
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
#pragma unroll
                for (int u = 0; u < 4; u++)
                    if (e + u < Dv)
                        red[(rg * GB + gi) * Dv + e + u] = acc[gi][u];
        }
        __syncthreads();
        for (int x = tid; x < GB * Dv; x += DEC_THREADS) {
            const int gi = x / Dv, ee = x % Dv, hq = hk * G + gb + gi;
            if (gb + gi >= G)
                continue;
            float s = 0.0f;
            for (int r = 0; r < RG; r++)
                s += red[(r * GB + gi) * Dv + ee];
            const float o = p.normalize ? s * (1.0f / (den[gi] + p.eps)) : s * p.scale;
            st<DT>(p.out, b * p.so[0] + hq * p.so[1] + ee, o);
        }
        __syncthreads();
    }
}

} // namespace

extern "C" lm_status lmk_decode_launch(const lmk_decode *p, void *stream)
{
    if (p->Dv > 4 * DEC_THREADS || p->Dk > 4096)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: Dv %d (at most %d), Dk %d", p->Dv,
                         4 * DEC_THREADS, p->Dk);
    if (p->has_decay && p->Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %d kv heads (at most %d)", p->Hkv,
                         LMK_MAX_DECAY_HEADS);
    const int CG = (p->Dv + 3) / 4, RG = DEC_THREADS / CG;
    const size_t smem = sizeof(float) * ((size_t)(2 + GB) * p->Dk + p->Dv + GB + (size_t)RG * GB * p->Dv);
    const int64_t blocks = (int64_t)p->B * p->Hkv;
    cudaStream_t s = (cudaStream_t)stream;
    if (smem > 48 * 1024)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: head dims %d x %d too large", p->Dk, p->Dv);
    switch (p->dtype) {
    case LM_BF16: decode_kernel<LM_BF16><<<(unsigned)blocks, DEC_THREADS, smem, s>>>(*p); break;
    case LM_F16: decode_kernel<LM_F16><<<(unsigned)blocks, DEC_THREADS, smem, s>>>(*p); break;
    case LM_F32: decode_kernel<LM_F32><<<(unsigned)blocks, DEC_THREADS, smem, s>>>(*p); break;
    default: return lmi_error(LM_ERR_INVALID_ARG, "cuda: dtype %d", p->dtype);
    }
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
