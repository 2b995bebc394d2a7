/*
 * hybrid_decode.cu - one hybrid attention decode step (docs/DESIGN.md
 * §9.2) for every (batch row, kv head), in place on the state:
 *   t = the row's position, the largest |window_pos| of its slots (read on the
 *       device: a replayed CUDA graph continues where the state is);
 *   the ring slot s + t % W, when it holds position t - W, leaves the window:
 *       folded into S, z (fp32, in the same pass that reads S out);
 *   the token goes to sink slot t (t < s) or to that ring slot;
 *   each query head of the group: softmax over the slots that hold keys (the
 *       new token included), phi(q) S and phi(q).z, one division.
 * As kernels/decode.cu: on sm_90, while (row, kv head) pairs are fewer than
 * 4 x SMs, the value columns of a head are spread over a cluster of up to 8
 * CTAs (else one CTA per pair); every CTA reads z, the positions and the evicted
 * key, and only after the cluster barrier does rank 0 write them back (each
 * CTA writes its own columns of S and of the slot's value). Query heads go in
 * blocks of 4. No allocation, no host sync: graph-capturable.
 * Pool rows (lm_pool_decode on a hybrid pool): row b continues the slot named
 * in device memory, or in a table passed by value (the length-1 sequences of
 * a hybrid pool's varlen prefill: token, slot, fresh), whose five parts sit
 * at their own slot strides; a padding row leaves at once, and the row's
 * admission (range, license limit, the slot's position counted in) is
 * decode.cu's (pool_row.cuh). One kernel body for both (Row, row_of below).
 * Measured (H100, 32 heads of 128, W = 64, s = 4): 35-37 us a step with one
 * slot per warp round and one thread per column summing every slot's value in
 * turn; 19.3 us with the rounds of U slots and the (slot group, column)
 * numerators (bench/NOTES.md's "Hybrid decode, round 2"); loads of k, v, z,
 * q and the first state rows issued at the start, with the positions, cost
 * 1.3 us (17.9 us without them: removed); 12.6-13.1 us with one query head a pass
 * without GQA, the 68 slots' logits in one round, S rows loaded NR at a time
 * before the fold's stores and q loaded beside k (18.1 us before, same run). A
 * variant with the linear part and the window on separate warp groups measured
 * 21.4 us (each half then did its part with half the warps): not kept.
 * Target <= 10 us.
 */
#include "cluster_launch.cuh"
#include "hybrid.cuh"
#include "pool_row.cuh"

#include <cooperative_groups.h>

namespace {

using lmk::hload;
using lmk::hstore;
using lmk::phi_precise;

constexpr int THREADS = 256;
/* Query heads per pass: GB = 4, or 1 when a kv head serves one query head
 * (no GQA: four passes' worth of registers and reductions would be idle).
 * Window slots per warp and round of the logits: U(GB) (68 slots: 2 rounds of
 * 8 at GB = 4, one of 12 at GB = 1). */
template <int GB> struct Rounds { static constexpr int U = GB == 1 ? 12 : 8; };
inline int heads_per_pass(const lmk_hybrid_decode &p) { return p.Hq == p.Hkv ? 1 : 4; }
constexpr int NR = 4;    /* rows of S whose loads are in flight before any is used */

/* The 4 floats at x, those of them below n (n >= 1; zeros past it). */
__device__ __forceinline__ float4 row4(const float *x, int n)
{
    return make_float4(x[0], 1 < n ? x[1] : 0.0f, 2 < n ? x[2] : 0.0f, 3 < n ? x[3] : 0.0f);
}

/* What a CTA's row is: its token (row of q, k, v, out), its slot (or batch
 * row of contiguous buffers), whether that slot starts empty (its parts
 * emptied by the caller first: only its position restarts), whether it is a
 * pool's slot. */
struct Row {
    int64_t tok;
    int slot;
    bool fresh, pool;
};

__host__ __device__ __forceinline__ const lmk_hybrid_decode &base(const lmk_hybrid_decode &p) { return p; }
__host__ __device__ __forceinline__ const lmk_hybrid_decode &base(const lmk_hybrid_decode_table &p) { return p.d; }

__device__ __forceinline__ Row row_of(const lmk_hybrid_decode &p, int b)
{
    return Row{ b, p.slots ? p.slots[b] : b, false, p.slots != nullptr };
}

__device__ __forceinline__ Row row_of(const lmk_hybrid_decode_table &p, int b)
{
    return Row{ p.row[b].tok, p.row[b].slot, p.row[b].fresh != 0, true };
}

/* The 4 floats at x as one 16-byte load when they are there and aligned. */
__device__ __forceinline__ float4 row4v(const float *x, int n)
{
    return n >= 4 && ((uintptr_t)x & 15) == 0 ? *(const float4 *)x : row4(x, n);
}

template <bool CLUSTER, int GB, class P>
__global__ void __launch_bounds__(THREADS) hdecode_kernel(const __grid_constant__ P pp, int nvb)
{
    constexpr int U = Rounds<GB>::U;
    extern __shared__ float sm[];
    __shared__ int tmax;
    const lmk_hybrid_decode &p = base(pp);
    const int Dk = p.Dk, G = p.Hq / p.Hkv, ns = p.s + p.W, tid = threadIdx.x;
    const int vb = blockIdx.x % nvb, b = blockIdx.x / nvb / p.Hkv, hk = blockIdx.x / nvb % p.Hkv;
    /* The row's state: batch row b of contiguous buffers, or a pool's slot. */
    const Row row = row_of(pp, b);
    const lmk::PoolRows pr{ p.nslots, p.pos, p.arrive, p.limit, p.status };
    if (row.pool && (lmk::pool_padding(pr, row.slot, b, vb == 0 && hk == 0) ||
                     !lmk::pool_admit(pr, row.slot, row.fresh, b, vb == 0 && hk == 0, p.Hkv * nvb)))
        return; /* the same for every CTA of the row: no CTA of a cluster reaches its barrier */
    const int64_t at = row.slot, x0 = row.tok; /* which slot (or batch row) of the buffers; which token */
    float *const Sh = p.S + (row.pool ? at * p.S_slot : at * p.Hkv * Dk * p.Dv) + (int64_t)hk * Dk * p.Dv;
    float *const zh = p.z + (row.pool ? at * p.z_slot : at * p.Hkv * Dk) + (int64_t)hk * Dk;
    float *const wk = p.win_k + (row.pool ? at * p.wk_slot : at * p.Hkv * ns * Dk) + (int64_t)hk * ns * Dk;
    float *const wv = p.win_v + (row.pool ? at * p.wv_slot : at * p.Hkv * ns * p.Dv) + (int64_t)hk * ns * p.Dv;
    int32_t *const wp = p.win_pos + (row.pool ? at * p.wp_slot : at * p.Hkv * ns) + (int64_t)hk * ns;
    const int cols = (p.Dv + nvb - 1) / nvb, e0 = vb * cols;
    const int Dv = cols < p.Dv - e0 ? cols : p.Dv - e0; /* this CTA's columns [e0, e0 + Dv) */
    /* Column groups of 4 over cols (not Dv: red is sized for cols on the host, and a
     * last CTA with fewer columns would otherwise use more row groups). */
    const int CG = (cols + 3) / 4, RG = THREADS / CG; /* host: cols <= 4 * THREADS */
    float *knew = sm, *fk = knew + Dk, *zn = fk + Dk, *vnew = zn + Dk, *vold = vnew + cols;
    float *qr = vold + cols, *phq = qr + GB * Dk, *lg = phq + GB * Dk, *den = lg + GB * ns;
    float *red = den + GB;
    int *pos = (int *)(red + (size_t)GB * RG * cols);
    const int cg = tid % CG, rg = tid / CG, e = 4 * cg;
    float *S = Sh + e0;

    const bool masked = p.mask && p.mask[x0 * p.mask_s0];

    /* The position: the largest |code| of the row's slots. */
    if (tid == 0)
        tmax = 0;
    __syncthreads();
    int mine = 0;
    for (int x = tid; x < ns; x += THREADS) {
        const int c = wp[x];
        pos[x] = c;
        mine = max(mine, c < 0 ? -c : c);
    }
    atomicMax(&tmax, mine);
    __syncthreads();
    const int64_t t = tmax;
    const int r = p.s + (int)(t % p.W), target = t < p.s ? (int)t : r;
    const bool fold = t - p.W >= p.s && pos[r] == (int)(t - p.W + 1);
    /* The query rows of pass gb and their features (the first pass's loaded
     * beside the key's, their latencies overlapping). */
    auto load_q = [&](int gb) {
        for (int x = tid; x < GB * Dk; x += THREADS) {
            const int gi = x / Dk, d = x % Dk, hq = hk * G + gb + gi;
            qr[x] = gb + gi < G ? hload(p.q, p.dtype, x0 * p.sq[0] + hq * p.sq[1] + d) : 0.0f;
            phq[x] = phi_precise(qr[x], p.feature_map);
        }
    };
    load_q(0);
    for (int d = tid; d < Dk; d += THREADS) {
        knew[d] = hload(p.k, p.dtype, x0 * p.sk[0] + hk * p.sk[1] + d);
        fk[d] = fold ? phi_precise(wk[(int64_t)r * Dk + d], p.feature_map) : 0.0f;
        zn[d] = zh[d] + fk[d];
    }
    for (int c = tid; c < Dv; c += THREADS) {
        vnew[c] = masked ? 0.0f : hload(p.v, p.dtype, x0 * p.sv[0] + hk * p.sv[1] + e0 + c);
        vold[c] = fold ? wv[(int64_t)r * p.Dv + e0 + c] : 0.0f;
    }
    __syncthreads();
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        cooperative_groups::this_cluster().sync(); /* every CTA has read z, the slots, the evicted key */
#endif
    }
    if (vb == 0) {
        for (int d = tid; d < Dk; d += THREADS) {
            wk[(int64_t)target * Dk + d] = masked ? 0.0f : knew[d];
            zh[d] = zn[d];
        }
        if (tid == 0)
            wp[target] = (int32_t)(masked ? -(t + 1) : t + 1);
    }
    for (int c = tid; c < Dv; c += THREADS)
        wv[(int64_t)target * p.Dv + e0 + c] = vnew[c];

    for (int gb = 0; gb < G; gb += GB) {
        if (gb) {
            load_q(gb);
            __syncthreads();
        }
        /* Logits of every slot that holds a key: a warp per slot, lanes over
         * the key, the GB query heads from one read of it, U slots per round
         * so that U keys' loads are in flight before the reductions (one slot
         * per round measured 35 us a step: a warp waited on every key's load in
         * turn). The target slot is the new token. */
        for (int base = tid / 32; base < ns; base += U * (THREADS / 32)) {
            const int lane = tid % 32;
            float dot[U][GB] = {};
            bool there[U];
            const float *key[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int sl = base + u * (THREADS / 32);
                there[u] = sl < ns && (sl == target ? !masked : pos[sl] > 0);
                key[u] = sl == target ? knew : wk + (int64_t)(sl < ns ? sl : 0) * Dk;
            }
            for (int d = lane; d < Dk; d += 32) {
                float kd[U];
#pragma unroll
                for (int u = 0; u < U; u++)
                    kd[u] = there[u] ? key[u][d] : 0.0f;
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    const float qd = qr[gi * Dk + d];
#pragma unroll
                    for (int u = 0; u < U; u++)
                        dot[u][gi] += qd * kd[u];
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int sl = base + u * (THREADS / 32);
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    const float sum = lmk::warp_sum(dot[u][gi]);
                    if (lane == 0 && sl < ns)
                        lg[gi * ns + sl] = there[u] && gb + gi < G ? sum * p.scale : -INFINITY;
                }
            }
        }
        __syncthreads();
        if (tid < GB * 32) { /* warp gi: the softmax weights and the denominator */
            const int gi = tid / 32, lane = tid % 32, hq = hk * G + gb + gi;
            const float gamma = gb + gi < G ? p.gamma[hq] : 0.0f;
            float m = -INFINITY;
            for (int x = lane; x < ns; x += 32)
                m = fmaxf(m, lg[gi * ns + x]);
            m = lmk::warp_max(m);
            float sum = 0.0f, zq = 0.0f;
            for (int x = lane; x < ns; x += 32) {
                const float l = lg[gi * ns + x];
                const float a = m > -INFINITY && l > -INFINITY ? gamma * expf(l - m) : 0.0f;
                lg[gi * ns + x] = a;
                sum += a;
            }
            for (int d = lane; d < Dk; d += 32)
                zq += phq[gi * Dk + d] * zn[d];
            sum = lmk::warp_sum(sum + zq);
            if (lane == 0)
                den[gi] = sum;
        }
        /* phi(q) S over this CTA's columns, the fold applied in the first pass. */
        float acc[GB][4] = {};
        if (rg < RG && e < Dv)
            for (int d0 = rg; d0 < Dk; d0 += NR * RG) {
                /* NR rows' loads in flight, then their use (the fold's stores
                 * to S would otherwise keep each row's load behind the last
                 * row's store: one latency a row) */
                float4 rows[NR];
#pragma unroll
                for (int u = 0; u < NR; u++) {
                    const int d = d0 + u * RG;
                    rows[u] = d < Dk ? row4v(S + (int64_t)d * p.Dv + e, Dv - e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int u = 0; u < NR; u++) {
                const int d = d0 + u * RG;
                if (d >= Dk)
                    break;
                float *row = S + (int64_t)d * p.Dv + e;
                float4 sv = rows[u];
                if (gb == 0 && fold) {
                    sv.x += fk[d] * vold[e];
                    sv.y += e + 1 < Dv ? fk[d] * vold[e + 1] : 0.0f;
                    sv.z += e + 2 < Dv ? fk[d] * vold[e + 2] : 0.0f;
                    sv.w += e + 3 < Dv ? fk[d] * vold[e + 3] : 0.0f;
                    row[0] = sv.x;
                    if (e + 1 < Dv) row[1] = sv.y;
                    if (e + 2 < Dv) row[2] = sv.z;
                    if (e + 3 < Dv) row[3] = sv.w;
                }
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    const float qd = phq[gi * Dk + d];
                    acc[gi][0] += qd * sv.x;
                    acc[gi][1] += qd * sv.y;
                    acc[gi][2] += qd * sv.z;
                    acc[gi][3] += qd * sv.w;
                }
                }
            }
        if (rg < RG && e < Dv)
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
#pragma unroll
                for (int u = 0; u < 4; u++)
                    if (e + u < Dv)
                        red[((size_t)rg * GB + gi) * cols + e + u] = acc[gi][u];
        __syncthreads();
        /* The numerators: thread (sg, column) sums rows sg, sg + SG, .. of the
         * phi(q) S partials and the window slots sg, sg + SG, .. (their values
         * read once for the GB heads, independent loads in flight); the SG
         * partials then meet in red. */
        const int SG = min(THREADS / Dv, RG), ve = tid % Dv, sg = tid / Dv;
        float part[GB] = {};
        if (sg < SG) {
            for (int g = sg; g < RG; g += SG)
#pragma unroll
                for (int gi = 0; gi < GB; gi++)
                    part[gi] += red[((size_t)g * GB + gi) * cols + ve];
#pragma unroll 8
            for (int sl = sg; sl < ns; sl += SG) {
                const float vv = sl == target ? vnew[ve] : wv[(int64_t)sl * p.Dv + e0 + ve];
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    const float a = lg[gi * ns + sl];
                    part[gi] += a != 0.0f ? a * vv : 0.0f; /* a slot never written may hold anything */
                }
            }
        }
        __syncthreads(); /* every partial of red is read */
        if (sg < SG)
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
                red[((size_t)sg * GB + gi) * cols + ve] = part[gi];
        __syncthreads();
        for (int x = tid; x < GB * Dv; x += THREADS) {
            const int gi = x / Dv, ee = x % Dv, hq = hk * G + gb + gi;
            if (gb + gi >= G)
                continue;
            float num = 0.0f;
            for (int g = 0; g < SG; g++)
                num += red[((size_t)g * GB + gi) * cols + ee];
            hstore(p.out, p.dtype, x0 * p.so[0] + hq * p.so[1] + e0 + ee, num / (den[gi] + p.eps));
        }
        __syncthreads();
    }
}

template <bool CLUSTER, int GB, class P>
cudaError_t launch(const P &p, int nvb, size_t smem, cudaStream_t s)
{
    /* Only past the default 48 KB (W + s in the hundreds): inside a graph capture
     * the step then queues its launch and nothing else. */
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(hdecode_kernel<CLUSTER, GB, P>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return e;
    }
    const unsigned blocks = (unsigned)((int64_t)base(p).B * base(p).Hkv * nvb);
    if (!CLUSTER) {
        hdecode_kernel<false, GB, P><<<blocks, THREADS, smem, s>>>(p, 1);
        return cudaGetLastError();
    }
    return lmk::launch_clustered(hdecode_kernel<true, GB, P>, blocks, THREADS, smem, s, (unsigned)nvb, p, nvb);
}

/* The launch's CTAs per (row, kv head) and shared memory for p, or the
 * UNSUPPORTED status (with its reason) of sizes the kernel cannot run. */
lm_status plan(const lmk_hybrid_decode *p, int *nvb_out, size_t *smem_out)
{
    const int GB = heads_per_pass(*p);
    if (p->Hq > LMK_MAX_HYBRID_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: at most %d query heads (got %d)",
                         LMK_MAX_HYBRID_HEADS, p->Hq);
    lmk::DeviceCaps caps; /* cached per device: this is the decode step's hot path */
    LMI_CUDA_TRY(lmk::device_caps(&caps));
    const int nvb = lmk::decode_cluster(caps, (int64_t)p->B * p->Hkv, p->Dv); /* as the linear decode's */
    const int cols = (p->Dv + nvb - 1) / nvb, CG = (cols + 3) / 4;
    if (CG > THREADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: Dv %d too large", p->Dv);
    const int RG = THREADS / CG, ns = p->s + p->W;
    const size_t smem = sizeof(float) * ((size_t)3 * p->Dk + 2 * (size_t)cols + 2 * (size_t)GB * p->Dk +
                                         (size_t)GB * ns + GB + (size_t)GB * RG * cols) + sizeof(int) * (size_t)ns;
    int optin = 48 * 1024; /* every GPU gives this much; the opt-in limit asked only past it */
    if (smem > (size_t)optin) {
        int dev = 0;
        LMI_CUDA_TRY(cudaGetDevice(&dev));
        LMI_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    }
    if (smem > (size_t)optin)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: W = %d, s = %d and head dims %d x %d need "
                         "%zu bytes of shared memory, the GPU gives %d", p->W, p->s, p->Dk, p->Dv, smem, optin);
    *nvb_out = nvb, *smem_out = smem;
    return LM_OK;
}

template <class P> lm_status launch_any(const P &p, void *stream)
{
    int nvb = 1;
    size_t smem = 0;
    const lm_status st = plan(&base(p), &nvb, &smem);
    if (st)
        return st;
    const cudaStream_t s = (cudaStream_t)stream;
    const bool one = heads_per_pass(base(p)) == 1; /* the GB plan() sized shared memory for */
    LMI_CUDA_TRY(nvb > 1 ? (one ? launch<true, 1>(p, nvb, smem, s) : launch<true, 4>(p, nvb, smem, s))
                         : (one ? launch<false, 1>(p, 1, smem, s) : launch<false, 4>(p, 1, smem, s)));
    return LM_OK;
}

/* The table travels in the kernel's parameters: within CUDA 12.1+'s limit. */
static_assert(sizeof(lmk_hybrid_decode_table) <= 32764, "lmk_hybrid_decode_table exceeds the 32 KB parameter limit");

} // namespace

extern "C" lm_status lmk_hybrid_decode_check(const lmk_hybrid_decode *p)
{
    int nvb = 1;
    size_t smem = 0;
    return plan(p, &nvb, &smem);
}

extern "C" lm_status lmk_hybrid_decode_launch(const lmk_hybrid_decode *p, void *stream)
{
    return launch_any(*p, stream);
}

extern "C" lm_status lmk_hybrid_decode_table_launch(const lmk_hybrid_decode_table *p, void *stream)
{
    return launch_any(*p, stream);
}
