/*
 * decode.cu - one decode step for every (batch row, kv head), in place on the
 * fp32 state (S = g S + phi(k) v^T, z = g z + phi(k)) and read out for the
 * query heads of its group, in fp32 FMAs (no tensor cores: one token is a
 * rank-1 update, bound by reading and writing the state: 2 MiB each way at
 * 32 heads of 128 x 128, floor ~1.4 us). On sm_90, while (row, kv head)
 * pairs are few (lmk::decode_cluster), the value columns of a head are spread
 * over a cluster of up to 8 CTAs (32 heads: 128 CTAs instead of 32); every
 * CTA reads z, and rank 0 writes it back only after the cluster barrier.
 * Measured (H100, graph replay, B = 1): 1 CTA per head 7.6 us, clusters
 * 8.2-8.6 us (bench/NOTES.md).
 * No allocation, no host sync: graph-capturable. Query heads go in blocks of
 * 4 so registers and shared memory stay bounded for any GQA ratio.
 * Pool rows (lm_pool_decode): row b continues a slot named in device memory
 * (-1: a padding row, every CTA of it returns at once), or in a table passed
 * by value (the decode rows of a varlen prefill: token, slot, fresh). Every
 * CTA of a row decides alike whether it runs (slot in range, position under
 * the license's limit), since the row's last CTA to arrive, counted on the
 * slot's arrival counter, is the one that advances the slot's position.
 */
#include "cluster_launch.cuh"
#include "feature_map.cuh"
#include "lm_kernels.h"
#include "pool_row.cuh"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr int DEC_THREADS = 256;
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

/* What a CTA's row is: its token (row of q, k, v, out), its slot, whether
 * it starts from an empty state. */
struct Row {
    int64_t tok;
    int slot;
    bool fresh;
};

__host__ __device__ __forceinline__ const lmk_decode &base(const lmk_decode &p) { return p; }
__host__ __device__ __forceinline__ const lmk_decode &base(const lmk_decode_table &p) { return p.d; }

__device__ __forceinline__ Row row_of(const lmk_decode &p, int b)
{
    return Row{ b, p.slots ? p.slots[b] : b, false };
}

__device__ __forceinline__ Row row_of(const lmk_decode_table &p, int b)
{
    return Row{ p.row[b].tok, p.row[b].slot, p.row[b].fresh != 0 };
}

/* Whether this CTA's row runs (pool_row.cuh). */
__device__ __forceinline__ bool admit(const lmk_decode &p, const Row &r, int b, bool first, int ctas_per_row)
{
    const lmk::PoolRows pr{ p.nslots, p.pos, p.arrive, p.limit, p.status };
    return lmk::pool_admit(pr, r.slot, r.fresh, b, first, ctas_per_row);
}

template <int DT, bool CLUSTER, class P>
__global__ void __launch_bounds__(DEC_THREADS) decode_kernel(const __grid_constant__ P pp, int nvb)
{
    extern __shared__ float sm[];
    const lmk_decode &p = base(pp);
    const int Dk = p.Dk, G = p.Hq / p.Hkv;
    const int vb = blockIdx.x % nvb, b = blockIdx.x / nvb / p.Hkv, hk = blockIdx.x / nvb % p.Hkv;
    const Row r = row_of(pp, b);
    if (lmk::pool_padding(lmk::PoolRows{ 0, nullptr, nullptr, 0, p.status }, r.slot, b, vb == 0 && hk == 0))
        return; /* every CTA of a padding row (and of its cluster) leaves */
    if (!admit(p, r, b, vb == 0 && hk == 0, p.Hkv * nvb))
        return; /* the same for the whole cluster: no CTA of it reaches its barrier */
    const int64_t head = (int64_t)r.slot * p.Hkv + hk; /* of the contiguous S, z (no pool) */
    const int64_t tok = r.tok;
    const int cols = (p.Dv + nvb - 1) / nvb, e0 = vb * cols;
    const int Dv = min(cols, p.Dv - e0); /* this CTA's columns [e0, e0 + Dv) */
    float *phk = sm, *vv = phk + Dk, *zn = vv + cols, *phq = zn + Dk, *den = phq + GB * Dk, *red = den + GB;
    const int tid = threadIdx.x;
    const bool off = p.mask && p.mask[tok * p.mask_s0];
    /* A masked key leaves the state exactly as it was: no decay either. A
     * fresh row starts from zero whatever the slot held. */
    const float g = p.has_decay && !off ? p.decay[hk] : 1.0f;

    for (int d = tid; d < Dk; d += DEC_THREADS)
        phk[d] = off ? 0.0f : lmk::phi_precise(ld<DT>(p.k, tok * p.sk[0] + hk * p.sk[1] + d), p.feature_map);
    for (int e = tid; e < Dv; e += DEC_THREADS)
        vv[e] = off ? 0.0f : ld<DT>(p.v, tok * p.sv[0] + hk * p.sv[1] + e0 + e);
    __syncthreads();
    float *z = p.z + (p.S_slot ? r.slot * p.z_slot + hk * Dk : head * Dk);
    for (int d = tid; d < Dk; d += DEC_THREADS)
        zn[d] = (r.fresh ? 0.0f : z[d] * g) + phk[d];
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        cooperative_groups::this_cluster().sync(); /* every CTA has read z */
#endif
    }
    if (vb == 0)
        for (int d = tid; d < Dk; d += DEC_THREADS)
            z[d] = zn[d];

    const int CG = (Dv + 3) / 4, RG = DEC_THREADS / CG; /* host: cols <= 4 * DEC_THREADS */
    const int cg = tid % CG, rg = tid / CG, e = 4 * cg;
    /* float4 only where every row of every slot starts 16-byte aligned (a pool's
     * slots may sit at any float stride). */
    const bool vec = p.Dv % 4 == 0 && cols % 4 == 0 && p.S_slot % 4 == 0 &&
                     ((uintptr_t)p.S & 15) == 0;
    const bool active = rg < RG;
    const int64_t rs = p.Dv; /* row stride of the state */
    float *S = p.S + (p.S_slot ? r.slot * p.S_slot + hk * Dk * rs : head * Dk * rs) + e0;
    for (int gb = 0; gb < G; gb += GB) {
        for (int x = tid; x < GB * Dk; x += DEC_THREADS) {
            const int gi = x / Dk, d = x % Dk, hq = hk * G + gb + gi;
            phq[x] = gb + gi < G ? lmk::phi_precise(ld<DT>(p.q, tok * p.sq[0] + hq * p.sq[1] + d), p.feature_map) : 0.0f;
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
                    /* a fresh row starts from zero, but later passes read the row gb == 0 updated */
                    s[i] = d < Dk && (gb > 0 || !r.fresh) ? row4(S + (int64_t)d * rs, e, Dv, vec) : make_float4(0, 0, 0, 0);
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
                        put4(S + (int64_t)d * rs, e, Dv, vec, s[i]);
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
            st<DT>(p.out, tok * p.so[0] + hq * p.so[1] + e0 + ee, o);
        }
        __syncthreads();
    }
}

} // namespace

template <int DT, class P>
static void launch(const P &p, int nvb, size_t smem, cudaStream_t s, cudaError_t *err)
{
    const unsigned blocks = (unsigned)((int64_t)base(p).B * base(p).Hkv * nvb);
    if (nvb == 1) {
        decode_kernel<DT, false, P><<<blocks, DEC_THREADS, smem, s>>>(p, 1);
        *err = cudaGetLastError();
        return;
    }
    *err = lmk::launch_clustered(decode_kernel<DT, true, P>, blocks, DEC_THREADS, smem, s, (unsigned)nvb, p,
                                 nvb);
}

template <class P> static lm_status launch_any(const P &p, void *stream)
{
    const lmk_decode &d = base(p);
    if (d.Dk > 4096)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: Dk %d, at most 4096", d.Dk);
    if (d.has_decay && d.Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %d kv heads (at most %d)", d.Hkv,
                         LMK_MAX_DECAY_HEADS);
    if (d.B < 1)
        return LM_OK;
    if ((int64_t)d.B * d.Hkv * 8 > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: %d rows of %d kv heads", d.B, d.Hkv);
    lmk::DeviceCaps caps; /* cached per device: this is the decode step's hot path */
    LMI_CUDA_TRY(lmk::device_caps(&caps));
    const int nvb = lmk::decode_cluster(caps, (int64_t)d.B * d.Hkv, d.Dv);
    const int cols = (d.Dv + nvb - 1) / nvb;
    if (cols > 4 * DEC_THREADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: Dv %d too large", d.Dv);
    /* red holds RG x GB x Dv partial sums, RG x Dv <= 4 x DEC_THREADS. */
    const size_t smem = sizeof(float) * ((size_t)(2 + GB) * d.Dk + cols + GB + (size_t)GB * 4 * DEC_THREADS);
    if (smem > 48 * 1024)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda decode: head dims %d x %d too large", d.Dk, d.Dv);
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t err = cudaSuccess;
    switch (d.dtype) {
    case LM_BF16: launch<LM_BF16>(p, nvb, smem, s, &err); break;
    case LM_F16: launch<LM_F16>(p, nvb, smem, s, &err); break;
    case LM_F32: launch<LM_F32>(p, nvb, smem, s, &err); break;
    default: return lmi_error(LM_ERR_INVALID_ARG, "cuda: dtype %d", d.dtype);
    }
    LMI_CUDA_TRY(err);
    return LM_OK;
}

extern "C" lm_status lmk_decode_launch(const lmk_decode *p, void *stream)
{
    return launch_any(*p, stream);
}

extern "C" lm_status lmk_decode_table_launch(const lmk_decode_table *p, void *stream)
{
    return launch_any(*p, stream);
}
