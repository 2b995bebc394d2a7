/*
 * attend.cuh - the chunked linear-attention kernel (device code), included
 * by the per-dtype instance files attend_{bf16,f16,f32}.cu.
 *
 * One CTA = one head x NV value columns x one segment of the sequence, eight
 * warps. Per 64-token chunk (i, j local; p = decay powers), warps 0-3:
 *   (a) A = phi(Q) phi(K)^T masked to j <= i, times p^(i-j)     warp r: rows 16r..
 *   (c) O = p^(i+1) phi(Q) S,  den = p^(i+1) phi(Q).z           (S as bf16 in sb)
 *   (b) O += A V, den += rowsum(A)       A split into bf16 hi + lo: A is the one
 *       product whose rounding shows in the output (1.23x the bf16 floor if
 *       rounded to bf16, measured in a float64 simulation at L = 8K)
 * and meanwhile warps 4-7:
 *   (e) S = p^n S + (p^(n-1-j) phi(k_j))^T V, z likewise, fp32 in their
 *       registers (Kahan when compensated), then S as bf16 into the buffer
 *       the next chunk's readout reads (two buffers, alternating).
 * With a key padding mask and a decay, the powers count unmasked keys only
 * (a masked key is no step of the recurrence, so it does not decay the
 * state either): p^(i-j) is p to the number of unmasked rows in (j, i],
 * read off a bit mask of the chunk's unmasked rows (Chunk::mark_rows).
 * Three kinds share this: CAUSAL (all of it), ABSORB (keys only: (e)) and
 * READOUT (queries only against a fixed state: (c)). Loads of bf16 inputs
 * run 2-3 chunks ahead with cp.async and are converted in place; f16/f32
 * inputs are split into bf16 hi + lo pairs on load (3 products each).
 * On sm_90 the CTAs of one head (its value blocks) form a cluster: each loads
 * and converts 1/n of the q, k rows and stores them into its peers' shared
 * memory (st.async, counted on the peer's mbarrier), instead of all n doing
 * all of it (v2, 8K: 3.4K instructions per warp per chunk, 40% of them
 * loading and converting; clusters of 4: 35% fewer instructions, see
 * attend_launch.cuh for the cluster size).
 * Measured: see bench/NOTES.md.
 */
#ifndef LM_ATTEND_CUH
#define LM_ATTEND_CUH

#include "attend_traits.cuh"
#include "feature_map.cuh"
#include "mma.cuh"

#include <cooperative_groups.h>
#include <cuda_fp16.h>

namespace lmk {

typedef __nv_bfloat16 bf16;

template <int DT> struct Elem;
template <> struct Elem<LM_BF16> {
    typedef __nv_bfloat16 T;
    static __device__ __forceinline__ float load(const T *p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ T from(float x) { return __float2bfloat16_rn(x); }
};
template <> struct Elem<LM_F16> {
    typedef __half T;
    static __device__ __forceinline__ float load(const T *p) { return __half2float(*p); }
    static __device__ __forceinline__ T from(float x) { return __float2half_rn(x); }
};
template <> struct Elem<LM_F32> {
    typedef float T;
    static __device__ __forceinline__ float load(const T *p) { return *p; }
    static __device__ __forceinline__ T from(float x) { return x; }
};

__device__ __forceinline__ float phi(float x, int fm)
{
    return fm == LM_FEATURE_ELU1 ? phi_fm<LM_FEATURE_ELU1>(x)
           : fm == LM_FEATURE_RELU ? phi_fm<LM_FEATURE_RELU>(x) : x;
}

__device__ __forceinline__ float quad_sum(float x)
{
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

/* Where everything lives in shared memory. */
template <class T> struct Layout {
    unsigned char *base;
    __device__ bf16 *q(int st, int pl) const
    {
        return (bf16 *)(base + st * T::STAGE_BYTES + pl * (2 * T::Q_BYTES + T::V_BYTES));
    }
    __device__ bf16 *k(int st, int pl) const { return (bf16 *)((unsigned char *)q(st, pl) + T::Q_BYTES); }
    __device__ bf16 *v(int st, int pl) const { return (bf16 *)((unsigned char *)q(st, pl) + 2 * T::Q_BYTES); }
    __device__ unsigned char *rest() const { return base + T::STAGES * T::STAGE_BYTES; }
    __device__ bf16 *sb(int buf, int pl) const
    {
        return (bf16 *)(rest() + buf * T::SB_BYTES) + pl * T::DK * T::VP;
    }
    __device__ float *zs(int buf) const { return (float *)(rest() + 2 * T::SB_BYTES) + buf * T::DK; }
    __device__ float *pw() const { return (float *)(rest() + 2 * T::SB_BYTES + align128(2 * (size_t)T::DK * 4)); }
    __device__ unsigned char *ostage() const { return (unsigned char *)pw() + align128((C + 1) * 4); }
    /* Per stage: completes when the peers' converted rows have landed. */
    __device__ uint64_t *full(int st) const
    {
        return (uint64_t *)(ostage() + align128((size_t)C * T::OP * T::OUT_BYTES)) + st;
    }
    /* Per stage, with a mask and a decay: bit r set when row r is an unmasked key. */
    __device__ uint64_t *rows(int st) const { return full(3) + st; }
};

/* Bits [a, b) of a 64-bit row mask (0 <= a <= b <= 64). */
__device__ __forceinline__ uint64_t bit_range(int a, int b)
{
    const uint64_t hi = b >= 64 ? ~0ull : (1ull << b) - 1, lo = a >= 64 ? ~0ull : (1ull << a) - 1;
    return hi & ~lo;
}

/* Which head, columns and tokens this CTA owns; which q, k rows of each
 * chunk it loads for its cluster (all of them without one). */
struct Job {
    int b, h, hk, vb, seg, e0;
    int64_t t_begin, t_end;
    int rank, ranks, r0, r1;
    const void *qb, *kb, *vb_; /* token 0 of this head (and columns) */
};

/* Barriers of the CTA and of the cluster that warps may reach from different
 * code (the readout's loop and the update's): not the .aligned forms that
 * __syncthreads and cooperative_groups emit, which require every thread to
 * execute the same instruction (synccheck flags it). */
__device__ __forceinline__ void cta_sync()
{
    asm volatile("barrier.sync 0;\n" ::: "memory");
}

__device__ __forceinline__ void cluster_sync()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}

/* The same shared-memory address in CTA `rank` of the cluster. */
template <class X> __device__ __forceinline__ X *peer(X *ptr, int rank)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().map_shared_rank(ptr, rank);
#else
    (void)rank;
    return ptr;
#endif
}

template <class T> __device__ __forceinline__ Job job_of(const lmk_attend &p, int kind)
{
    Job j;
    const int nvb = (p.Dv + T::NV - 1) / T::NV;
    int64_t x = blockIdx.x;
    j.vb = (int)(x % nvb), x /= nvb;
    j.seg = (int)(x % p.nseg), x /= p.nseg;
    const int H = kind == LMK_ABSORB ? p.Hkv : p.Hq;
    j.h = (int)(x % H);
    j.b = (int)(x / H);
    j.hk = kind == LMK_ABSORB ? j.h : j.h / (p.Hq / p.Hkv);
    j.e0 = j.vb * T::NV;
    j.t_begin = (int64_t)j.seg * p.seg_len;
    j.t_end = min(p.L, j.t_begin + p.seg_len);
    j.rank = 0, j.ranks = 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (p.cluster > 1) {
        j.rank = (int)cooperative_groups::this_cluster().block_rank();
        j.ranks = p.cluster;
    }
#endif
    j.r0 = j.rank * (C / j.ranks), j.r1 = j.r0 + C / j.ranks;
    typedef typename Elem<T::DT>::T E;
    j.qb = p.q ? (const E *)p.q + j.b * p.sq[0] + j.h * p.sq[2] : nullptr;
    j.kb = p.k ? (const E *)p.k + j.b * p.sk[0] + j.hk * p.sk[2] : nullptr;
    j.vb_ = p.v ? (const E *)p.v + j.b * p.sv[0] + j.hk * p.sv[2] + j.e0 : nullptr;
    return j;
}

/* Address of element [b, t, h, d] of a strided view. */
template <class E>
__device__ __forceinline__ const E *at(const void *base, const int64_t *s, int64_t b, int64_t t,
                                       int64_t h, int64_t d)
{
    return (const E *)base + b * s[0] + t * s[1] + h * s[2] + d;
}

template <class T> struct Chunk {
    const lmk_attend &p;
    const Layout<T> &sm;
    const Job &j;
    int kind;
    typedef typename Elem<T::DT>::T E;

    __device__ bool masked(int64_t t) const
    {
        return p.mask && p.mask[j.b * p.mask_s[0] + t * p.mask_s[1]];
    }

    /* With a mask and a decay: which of the chunk's n rows from t0 are
     * unmasked keys, as bits, for the decay powers (warp 0; read after the
     * step's next barrier). */
    __device__ void mark_rows(int st, int64_t t0, int n) const
    {
        if (!(p.mask && p.has_decay) || threadIdx.x >= 32)
            return;
        const int r = threadIdx.x;
        const uint32_t lo = __ballot_sync(0xffffffffu, r < n && !masked(t0 + r));
        const uint32_t hi = __ballot_sync(0xffffffffu, r + 32 < n && !masked(t0 + r + 32));
        if (r == 0)
            *sm.rows(st) = (uint64_t)hi << 32 | lo;
    }

    /* cp.async of one chunk's raw bf16 rows into stage st (zeros past the
     * ends): this CTA's share of the q, k rows, all rows of its v columns. */
    __device__ void issue(int64_t t0, int st, bool use_q, bool use_kv) const
    {
        constexpr int QV = T::DK / 8, VV = T::NV / 8;
        const int nq = (j.r1 - j.r0) * QV;
        if (use_q) {
            bf16 *dq = sm.q(st, 0);
            for (int i = threadIdx.x; i < nq; i += THREADS) {
                const int r = j.r0 + i / QV, d = (i % QV) * 8;
                const bool ok = t0 + r < j.t_end && d < p.Dk;
                const E *src = (const E *)j.qb + (t0 + r) * p.sq[1] + d;
                cp_async16(dq + r * T::QP + d, ok ? src : p.q, ok ? 16 : 0);
            }
        }
        if (use_kv) {
            bf16 *dk = sm.k(st, 0), *dv = sm.v(st, 0);
            for (int i = threadIdx.x; i < nq; i += THREADS) {
                const int r = j.r0 + i / QV, d = (i % QV) * 8;
                const bool ok = t0 + r < j.t_end && d < p.Dk;
                const E *src = (const E *)j.kb + (t0 + r) * p.sk[1] + d;
                cp_async16(dk + r * T::QP + d, ok ? src : p.k, ok ? 16 : 0);
            }
            for (int i = threadIdx.x; i < C * VV; i += THREADS) {
                const int r = i / VV, e = (i % VV) * 8;
                const bool ok = t0 + r < j.t_end && j.e0 + e < p.Dv;
                const E *src = (const E *)j.vb_ + (t0 + r) * p.sv[1] + e;
                cp_async16(dv + r * T::VP + e, ok ? src : p.v, ok ? 16 : 0);
            }
        }
    }

    /* bf16 rows already in stage st: apply phi and the masks in place (q, k:
     * this CTA's rows, stored to its peers too; v: all rows of its columns). */
    __device__ void convert(int st, int64_t t0, int n, bool use_q, bool use_kv) const
    {
        switch (p.feature_map) {
        case LM_FEATURE_ELU1: convert_fm<LM_FEATURE_ELU1>(st, t0, n, use_q, use_kv); break;
        case LM_FEATURE_RELU: convert_fm<LM_FEATURE_RELU>(st, t0, n, use_q, use_kv); break;
        default: convert_fm<LM_FEATURE_IDENTITY>(st, t0, n, use_q, use_kv); break;
        }
    }

    template <int FM> __device__ void convert_fm(int st, int64_t t0, int n, bool use_q, bool use_kv) const
    {
        constexpr int QV = T::DK / 8, VV = T::NV / 8;
        const int nq = (j.r1 - j.r0) * QV;
        /* Two vectors at a time: both loads, then phi, then the stores (more
         * in flight spills: the update warps hold the state meanwhile). */
        for (int pass = use_q ? 0 : 1; pass < (use_kv ? 2 : 1); pass++) {
            bf16 *x0 = pass ? sm.k(st, 0) : sm.q(st, 0);
            for (int i0 = threadIdx.x; i0 < nq; i0 += 2 * THREADS) {
                uint4 x[2];
                bool in[2];
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    const int i = i0 + u * THREADS, r = j.r0 + i / QV, d = (i % QV) * 8;
                    /* Dk is a multiple of 8 here (the cp.async path needs 16-byte
                     * rows): a vector is all in or all out. */
                    in[u] = i < nq && r < n && d < p.Dk && !(pass && masked(t0 + r));
                    x[u] = in[u] ? *(const uint4 *)(x0 + r * T::QP + d) : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    __nv_bfloat162 *h = (__nv_bfloat162 *)&x[u];
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        h[e] = phi_pair<FM>(h[e]);
                    if (!in[u]) /* phi(0) = 1: padding must stay 0 */
                        x[u] = make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    const int i = i0 + u * THREADS;
                    if (i >= nq)
                        break;
                    uint4 *ptr = (uint4 *)(x0 + (j.r0 + i / QV) * T::QP + (i % QV) * 8);
                    *ptr = x[u];
                    for (int pr = 0; pr < j.ranks; pr++)
                        if (pr != j.rank)
                            st_async16(cluster_addr(ptr, pr), x[u], cluster_addr(sm.full(st), pr));
                }
            }
        }
        if (!use_kv)
            return;
        bf16 *v = sm.v(st, 0);
        for (int i = threadIdx.x; i < C * VV; i += THREADS) {
            const int r = i / VV, e = (i % VV) * 8;
            if (r >= n || masked(t0 + r))
                *(uint4 *)(v + r * T::VP + e) = make_uint4(0, 0, 0, 0);
        }
    }

    /* Bytes the peers store into this CTA's stage per chunk (convert_fm). */
    __device__ uint32_t peer_bytes(bool use_q, bool use_kv) const
    {
        return (uint32_t)((j.ranks - 1) * ((int)use_q + (int)use_kv) * (C / j.ranks) * T::DK * 2);
    }

    /* This CTA's q, k rows into the same place in its peers (load_direct's). */
    __device__ void share(int st, bool use_q, bool use_kv) const
    {
        constexpr int QV = T::DK / 8;
        const int nq = (j.r1 - j.r0) * QV;
        for (int pl = 0; pl < T::PLANES; pl++)
            for (int pass = use_q ? 0 : 1; pass < (use_kv ? 2 : 1); pass++) {
                bf16 *x0 = pass ? sm.k(st, pl) : sm.q(st, pl);
                for (int i = threadIdx.x; i < nq; i += THREADS) {
                    uint4 *ptr = (uint4 *)(x0 + (j.r0 + i / QV) * T::QP + (i % QV) * 8);
                    const uint4 val = *ptr;
                    for (int pr = 0; pr < j.ranks; pr++)
                        if (pr != j.rank)
                            *peer(ptr, pr) = val;
                }
            }
    }

    /* Element-wise load of one chunk into stage 0 (f16/f32, or unaligned bf16). */
    __device__ void load_direct(int64_t t0, int n, bool use_q, bool use_kv) const
    {
        const int nq = (j.r1 - j.r0) * T::DK;
        if (use_q) {
            bf16 *qh = sm.q(0, 0), *ql = sm.q(0, T::PLANES - 1);
            for (int i = threadIdx.x; i < nq; i += THREADS) {
                const int r = j.r0 + i / T::DK, d = i % T::DK;
                float x = 0.0f;
                if (r < n && d < p.Dk)
                    x = phi(Elem<T::DT>::load((const E *)j.qb + (t0 + r) * p.sq[1] + d), p.feature_map);
                store(qh, ql, r * T::QP + d, x);
            }
        }
        if (!use_kv)
            return;
        bf16 *kh = sm.k(0, 0), *kl = sm.k(0, T::PLANES - 1);
        for (int i = threadIdx.x; i < nq; i += THREADS) {
            const int r = j.r0 + i / T::DK, d = i % T::DK;
            float x = 0.0f;
            if (r < n && d < p.Dk && !masked(t0 + r))
                x = phi(Elem<T::DT>::load((const E *)j.kb + (t0 + r) * p.sk[1] + d), p.feature_map);
            store(kh, kl, r * T::QP + d, x);
        }
        bf16 *vh = sm.v(0, 0), *vl = sm.v(0, T::PLANES - 1);
        for (int i = threadIdx.x; i < C * T::NV; i += THREADS) {
            const int r = i / T::NV, e = i % T::NV;
            float x = 0.0f;
            if (r < n && j.e0 + e < p.Dv && !masked(t0 + r))
                x = Elem<T::DT>::load((const E *)j.vb_ + (t0 + r) * p.sv[1] + e);
            store(vh, vl, r * T::VP + e, x);
        }
    }

    /* x as bf16 (hi) and, for split dtypes, its remainder (lo). */
    __device__ static void store(bf16 *hi, bf16 *lo, int off, float x)
    {
        if constexpr (T::SPLIT) {
            split_bf16(x, hi[off], lo[off]);
        } else {
            (void)lo;
            hi[off] = __float2bfloat16_rn(x);
        }
    }

    /* The loads of the first chunks, ahead of the loop (cp.async path). */
    __device__ void start(int64_t nchunks, bool use_q, bool use_kv) const
    {
        if constexpr (!T::SPLIT) {
            if (p.aligned) {
                for (int s = 0; s < T::STAGES - 1; s++) {
                    if (s < nchunks)
                        issue(j.t_begin + (int64_t)s * C, s, use_q, use_kv);
                    cp_async_commit();
                }
            }
        }
    }

    /* Chunk ci in shared memory, converted, in every CTA of the cluster; its
     * stage. Every thread of the CTA calls this once per chunk, in order:
     * its barriers are the chunk loop's only ones. */
    __device__ int step(int64_t ci, int64_t nchunks, int n, bool use_q, bool use_kv) const
    {
        const int64_t t0 = j.t_begin + ci * C;
        if constexpr (!T::SPLIT) {
            if (p.aligned) {
                const int st = (int)(ci % T::STAGES);
                cp_async_wait<T::STAGES - 2>();
                cta_sync(); /* chunk ci landed; everyone is done with chunk ci - 1 */
                const int64_t next = ci + T::STAGES - 1;
                if (next < nchunks)
                    issue(j.t_begin + next * C, (int)(next % T::STAGES), use_q, use_kv);
                cp_async_commit();
                /* The peers' rows arrive by st.async on this stage's mbarrier,
                 * not behind a cluster barrier (0.73 us per chunk on its own:
                 * bench/results/ablation-h100-20261123-de15cc1). A peer writes
                 * chunk ci here only after it saw this CTA's rows of chunk ci - 1,
                 * converted after this CTA was done with ci - 2 (and ci - STAGES). */
                if (j.ranks > 1 && threadIdx.x == 0)
                    mbar_expect_tx(sm.full(st), peer_bytes(use_q, use_kv));
                mark_rows(st, t0, n);
                convert(st, t0, n, use_q, use_kv);
                cta_sync(); /* this CTA's rows */
                if (j.ranks > 1)
                    mbar_wait(sm.full(st), (uint32_t)((ci / T::STAGES) & 1)); /* the peers' rows */
                return st;
            }
        }
        /* One stage: the peers must be done with chunk ci - 1 before anyone
         * writes chunk ci into it. */
        if (j.ranks > 1)
            cluster_sync();
        else
            cta_sync();
        mark_rows(0, t0, n);
        load_direct(t0, n, use_q, use_kv);
        cta_sync(); /* this CTA's rows stored */
        if (j.ranks > 1) {
            share(0, use_q, use_kv);
            cluster_sync();
        }
        return 0;
    }

    /* Every chunk in order: its step, then f(ci, t0, n, stage), then the end
     * of the loads. Both role loops run this, so every thread meets every
     * barrier of the chunk loop. */
    template <class F> __device__ void each(int64_t nchunks, bool use_q, bool use_kv, F &&f) const
    {
        for (int64_t ci = 0; ci < nchunks; ci++) {
            const int64_t t0 = j.t_begin + ci * C;
            const int n = (int)min((int64_t)C, j.t_end - t0);
            f(ci, t0, n, step(ci, nchunks, n, use_q, use_kv));
        }
        if constexpr (!T::SPLIT)
            cp_async_wait<0>();
    }
};

/* Decay modes of the readout: none; powers of the row distance; powers of
 * the unmasked rows in between (a mask and a decay). */
enum { DECAY_NONE = 0, DECAY_PLAIN = 1, DECAY_MASKED = 2 };

/* Outputs of warp r's 16 rows of the chunk (kinds CAUSAL and READOUT).
 * DECAY: the intra-chunk weights p^(i-j) are read per element only when
 * there is a decay (32 shared loads per tile for warp 3's four tiles). */
template <class T, int DECAY>
__device__ void readout_rows(const lmk_attend &p, const Layout<T> &sm, const Job &j, int st, int buf,
                             int64_t t0, int n, bool causal)
{
    typedef typename Elem<T::DT>::T E;
    const int lane = threadIdx.x & 31, r = threadIdx.x >> 5;
    const int g8 = lane >> 2, t4 = lane & 3, row0 = 16 * r;
    if (row0 >= n)
        return;
    const bf16 *qh = sm.q(st, 0), *ql = sm.q(st, T::PLANES - 1);
    const bf16 *kh = sm.k(st, 0), *kl = sm.k(st, T::PLANES - 1);
    const bf16 *vh = sm.v(st, 0), *vl = sm.v(st, T::PLANES - 1);
    const bf16 *sbh = sm.sb(buf, 0), *sbl = sm.sb(buf, T::PLANES - 1);
    const float *zs = sm.zs(buf), *pw = sm.pw();
    const uint64_t unmasked = DECAY == DECAY_MASKED ? *sm.rows(st) : 0;

    float acc[ROW_WARPS][2][4] = {}; /* A tiles (c, key half) of rows 16r.. */
    float oi[T::NT][4] = {};      /* phi(q) S */
    float den[2] = { 0.0f, 0.0f }; /* phi(q).z, rows g8 and g8 + 8 */
    /* Fully unrolled unless split operands would not fit in registers. */
#pragma unroll(T::SPLIT && T::DK == 256 ? 4 : T::KT)
    for (int ks = 0; ks < T::KT; ks++) {
        uint32_t qa[4], qal[4];
        ldsm_x4(qa, qh + (row0 + (lane & 15)) * T::QP + ks * 16 + (lane >> 4) * 8);
        if constexpr (T::SPLIT)
            ldsm_x4(qal, ql + (row0 + (lane & 15)) * T::QP + ks * 16 + (lane >> 4) * 8);
        {
            const int c0 = ks * 16 + 2 * t4;
            const float2 za = *(const float2 *)(zs + c0), zb = *(const float2 *)(zs + c0 + 8);
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const __nv_bfloat162 x = *(const __nv_bfloat162 *)&qa[half];
                const __nv_bfloat162 y = *(const __nv_bfloat162 *)&qa[half + 2];
                float s = __low2float(x) * za.x + __high2float(x) * za.y + __low2float(y) * zb.x +
                          __high2float(y) * zb.y;
                if constexpr (T::SPLIT) {
                    const __nv_bfloat162 xl = *(const __nv_bfloat162 *)&qal[half];
                    const __nv_bfloat162 yl = *(const __nv_bfloat162 *)&qal[half + 2];
                    s += __low2float(xl) * za.x + __high2float(xl) * za.y + __low2float(yl) * zb.x +
                         __high2float(yl) * zb.y;
                }
                den[half] += s;
            }
        }
        if (causal) {
#pragma unroll
            for (int c = 0; c < ROW_WARPS; c++) {
                if (c > r)
                    continue;
                const int off = (c * 16 + (lane & 7) + (lane >> 4) * 8) * T::QP + ks * 16 + ((lane >> 3) & 1) * 8;
                uint32_t kb[4];
                ldsm_x4(kb, kh + off);
                mma(acc[c][0], qa, kb[0], kb[1]);
                mma(acc[c][1], qa, kb[2], kb[3]);
                if constexpr (T::SPLIT) {
                    uint32_t kbl[4];
                    ldsm_x4(kbl, kl + off);
                    mma(acc[c][0], qa, kbl[0], kbl[1]);
                    mma(acc[c][1], qa, kbl[2], kbl[3]);
                    mma(acc[c][0], qal, kb[0], kb[1]);
                    mma(acc[c][1], qal, kb[2], kb[3]);
                }
            }
        }
#pragma unroll
        for (int np = 0; np < T::NT / 2; np++) {
            const int off = (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * T::VP + np * 16 + (lane >> 4) * 8;
            uint32_t sf[4];
            ldsm_x4_t(sf, sbh + off);
            mma(oi[2 * np], qa, sf[0], sf[1]);
            mma(oi[2 * np + 1], qa, sf[2], sf[3]);
            if constexpr (T::SPLIT) {
                uint32_t sfl[4];
                ldsm_x4_t(sfl, sbl + off);
                mma(oi[2 * np], qa, sfl[0], sfl[1]);
                mma(oi[2 * np + 1], qa, sfl[2], sfl[3]);
                mma(oi[2 * np], qal, sf[0], sf[1]);
                mma(oi[2 * np + 1], qal, sf[2], sf[3]);
            }
        }
    }

    /* Causal mask and decay on A; its row sums join the normaliser. */
    float rs[2] = { 0.0f, 0.0f };
    float oa[T::NT][4] = {};
    if (causal) {
#pragma unroll
        for (int c = 0; c < ROW_WARPS; c++) {
            if (c > r)
                continue;
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int i = row0 + g8 + (q >> 1) * 8, jj = c * 16 + hf * 8 + 2 * t4 + (q & 1);
                    const float a = jj > i ? 0.0f
                                    : DECAY == DECAY_MASKED ? acc[c][hf][q] * pw[__popcll(unmasked & bit_range(jj + 1, i + 1))]
                                    : DECAY == DECAY_PLAIN ? acc[c][hf][q] * pw[i - jj] : acc[c][hf][q];
                    acc[c][hf][q] = a;
                    rs[q >> 1] += a;
                }
            /* (b): A (hi + lo) times v. */
            uint32_t ah[4], al[4];
            split_pack(acc[c][0][0], acc[c][0][1], ah[0], al[0]);
            split_pack(acc[c][0][2], acc[c][0][3], ah[1], al[1]);
            split_pack(acc[c][1][0], acc[c][1][1], ah[2], al[2]);
            split_pack(acc[c][1][2], acc[c][1][3], ah[3], al[3]);
#pragma unroll
            for (int np = 0; np < T::NT / 2; np++) {
                const int off = (c * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * T::VP + np * 16 + (lane >> 4) * 8;
                uint32_t vf[4];
                ldsm_x4_t(vf, vh + off);
                mma(oa[2 * np], ah, vf[0], vf[1]);
                mma(oa[2 * np + 1], ah, vf[2], vf[3]);
                mma(oa[2 * np], al, vf[0], vf[1]);
                mma(oa[2 * np + 1], al, vf[2], vf[3]);
                if constexpr (T::SPLIT) {
                    uint32_t vfl[4];
                    ldsm_x4_t(vfl, vl + off);
                    mma(oa[2 * np], ah, vfl[0], vfl[1]);
                    mma(oa[2 * np + 1], ah, vfl[2], vfl[3]);
                }
            }
        }
    }
    den[0] = quad_sum(den[0]);
    den[1] = quad_sum(den[1]);
    rs[0] = quad_sum(rs[0]);
    rs[1] = quad_sum(rs[1]);

    /* Combine, normalise, stage the warp's rows, then store 16-byte pieces. */
    E *os = (E *)sm.ostage();
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int i = row0 + g8 + hr * 8;
        const float gi = DECAY == DECAY_MASKED ? pw[__popcll(unmasked & bit_range(0, i + 1))] : pw[i + 1];
        const float dn = den[hr] * gi + rs[hr];
        const float f = p.normalize ? 1.0f / (dn + p.eps) : p.scale;
#pragma unroll
        for (int nt = 0; nt < T::NT; nt++)
#pragma unroll
            for (int u = 0; u < 2; u++)
                os[i * T::OP + nt * 8 + 2 * t4 + u] =
                    Elem<T::DT>::from((oi[nt][hr * 2 + u] * gi + oa[nt][hr * 2 + u]) * f);
    }
    __syncwarp();
    constexpr int EPV = 16 / sizeof(E), VPR = T::NV / EPV; /* elements per vector, vectors per row */
    if (p.aligned) {
        for (int x = lane; x < 16 * VPR; x += 32) {
            const int i = row0 + x / VPR, e = (x % VPR) * EPV;
            if (i < n && j.e0 + e < p.Dv)
                *(uint4 *)at<E>(p.out, p.so, j.b, t0 + i, j.h, j.e0 + e) = *(const uint4 *)(os + i * T::OP + e);
        }
    } else {
        for (int x = lane; x < 16 * T::NV; x += 32) {
            const int i = row0 + x / T::NV, e = x % T::NV;
            if (i < n && j.e0 + e < p.Dv)
                *(E *)at<E>(p.out, p.so, j.b, t0 + i, j.h, j.e0 + e) = os[i * T::OP + e];
        }
    }
}

/* x = g x + dx, Kahan-compensated (c) when asked. */
__device__ __forceinline__ void fold1(float &x, float &c, float dx, float g, bool compensated)
{
    if (compensated) {
        const float base = x * g, y = dx - c * g, sum = base + y;
        c = (sum - base) - y;
        x = sum;
    } else {
        x = x * g + dx;
    }
}

/* (e): the part of the fp32 state that update warp wi of nw owns, held in
 * registers for the whole segment: units [u0, u0 + nu) of (16 rows of d) x
 * (16 columns) as mma accumulator fragments (row d = 16m + g8 + 8h, column
 * e = 16np + 8hf + 2t4 + (q & 1)), and z for the rows of its units with
 * np = 0, summed by the same mma against a B of ones. (v4 kept S and z in
 * shared memory: the update warps, not the readout, set the chunk's pace,
 * and a third of their time went to a scalar loop for z; ncu, 8K.) */
template <class T> struct State {
    static constexpr int NP = T::NV / 16;
    float s[T::MAX_UNITS][2][4], sc[T::MAX_UNITS][2][4]; /* S, Kahan c */
    float z[T::MAX_UNITS][2], zc[T::MAX_UNITS][2];       /* z at rows g8, g8 + 8 */
    int u0, nu;

    __device__ int row(int k, int h) const { return (u0 + k) / NP * 16 + ((threadIdx.x & 31) >> 2) + 8 * h; }
    __device__ int col(int k, int hf, int q) const
    {
        return ((u0 + k) % NP * 2 + hf) * 8 + 2 * (threadIdx.x & 3) + (q & 1);
    }

    /* The state the segment starts from (zero for ABSORB's increments). */
    __device__ void load(const lmk_attend &p, const Job &j, int64_t head, int kind, int wi, int nw)
    {
        u0 = wi * T::UNITS / nw;
        nu = (wi + 1) * T::UNITS / nw - u0;
        const float *Si = kind == LMK_ABSORB || !p.in.S ? nullptr : p.in.S + j.seg * p.in.seg_S + head * p.Dk * p.Dv;
        const float *zi = Si ? p.in.z + j.seg * p.in.seg_z + head * p.Dk : nullptr;
#pragma unroll
        for (int k = 0; k < T::MAX_UNITS; k++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int d = row(k, h);
                const bool in = Si && k < nu && d < p.Dk;
#pragma unroll
                for (int hf = 0; hf < 2; hf++)
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const int e = j.e0 + col(k, hf, q);
                        s[k][hf][2 * h + q] = in && e < p.Dv ? Si[(int64_t)d * p.Dv + e] : 0.0f;
                        sc[k][hf][2 * h + q] = 0.0f;
                    }
                z[k][h] = in && (u0 + k) % NP == 0 ? zi[d] : 0.0f;
                zc[k][h] = 0.0f;
            }
    }

    /* S = g^n S + (p^(n-1-j) phi(k_j))^T V, z likewise, for chunk stage st. */
    __device__ void fold(const lmk_attend &p, const Layout<T> &sm, int st, int n)
    {
        const int lane = threadIdx.x & 31, t4 = lane & 3;
        const bf16 *kh = sm.k(st, 0), *kl = sm.k(st, T::PLANES - 1);
        const bf16 *vh = sm.v(st, 0), *vl = sm.v(st, T::PLANES - 1);
        const float *pw = sm.pw();
        /* With a mask: key j weighs p^(unmasked rows after it), the chunk p^(unmasked rows). */
        const bool by_rows = p.mask && p.has_decay;
        const uint64_t unmasked = by_rows ? *sm.rows(st) : 0;
        const float gn = by_rows ? pw[__popcll(unmasked)] : pw[n];
        const uint32_t ones = 0x3f803f80u; /* bf16 1.0, twice */
#pragma unroll
        for (int k = 0; k < T::MAX_UNITS; k++) {
            if (k >= nu)
                break;
            const int m = (u0 + k) / NP, np = (u0 + k) % NP;
            float ds[2][4] = {}, dz[4] = {};
            /* Unrolled by 2, not 4: fully unrolled, with every unit's loads
             * in flight at once, ptxas spilled (80 bytes, Dk = 128). */
#pragma unroll 2
            for (int ks = 0; ks < C / 16; ks++) {
                const int ko = (ks * 16 + (lane & 7) + (lane >> 4) * 8) * T::QP + m * 16 + ((lane >> 3) & 1) * 8;
                const int vo = (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * T::VP + np * 16 + (lane >> 4) * 8;
                uint32_t ka[4], vf[4], kal[4];
                ldsm_x4_t(ka, kh + ko);
                ldsm_x4_t(vf, vh + vo);
                if constexpr (T::SPLIT)
                    ldsm_x4_t(kal, kl + ko);
                if (p.has_decay) {
                    /* Key j weighs p^(n-1-j): scaling phi(k) (not v) spreads the
                     * rounding over d, where the readout averages it away. */
                    const int j0 = n - 1 - (ks * 16 + 2 * t4), k0 = ks * 16 + 2 * t4 + 1;
                    float w[4];
                    if (by_rows) {
                        w[0] = pw[__popcll(unmasked & bit_range(k0, 64))];
                        w[1] = pw[__popcll(unmasked & bit_range(k0 + 1, 64))];
                        w[2] = pw[__popcll(unmasked & bit_range(k0 + 8, 64))];
                        w[3] = pw[__popcll(unmasked & bit_range(k0 + 9, 64))];
                    } else {
                        w[0] = pw[max(j0, 0)], w[1] = pw[max(j0 - 1, 0)];
                        w[2] = pw[max(j0 - 8, 0)], w[3] = pw[max(j0 - 9, 0)];
                    }
#pragma unroll
                    for (int x = 0; x < 4; x++) {
                        const float2 h = __bfloat1622float2(*(const __nv_bfloat162 *)&ka[x]);
                        float2 l = make_float2(0.0f, 0.0f);
                        if constexpr (T::SPLIT)
                            l = __bfloat1622float2(*(const __nv_bfloat162 *)&kal[x]);
                        const float w0 = w[(x >> 1) * 2], w1 = w[(x >> 1) * 2 + 1];
                        if constexpr (T::SPLIT)
                            split_pack((h.x + l.x) * w0, (h.y + l.y) * w1, ka[x], kal[x]);
                        else
                            ka[x] = pack_bf16(h.x * w0, h.y * w1);
                    }
                }
                mma(ds[0], ka, vf[0], vf[1]);
                mma(ds[1], ka, vf[2], vf[3]);
                if (np == 0)
                    mma(dz, ka, ones, ones);
                if constexpr (T::SPLIT) {
                    uint32_t vfl[4];
                    ldsm_x4_t(vfl, vl + vo);
                    mma(ds[0], kal, vf[0], vf[1]);
                    mma(ds[1], kal, vf[2], vf[3]);
                    mma(ds[0], ka, vfl[0], vfl[1]);
                    mma(ds[1], ka, vfl[2], vfl[3]);
                    if (np == 0)
                        mma(dz, kal, ones, ones);
                }
            }
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    fold1(s[k][hf][q], sc[k][hf][q], ds[hf][q], gn, p.compensated);
            if (np == 0)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    fold1(z[k][h], zc[k][h], dz[2 * h], gn, p.compensated);
        }
    }

    /* f(k, h, d) for the rows d this thread holds: units k < nu, halves h. */
    template <class F> __device__ void each_row(F &&f) const
    {
#pragma unroll
        for (int k = 0; k < T::MAX_UNITS; k++) {
            if (k >= nu)
                break;
#pragma unroll
            for (int h = 0; h < 2; h++)
                f(k, h, row(k, h));
        }
    }

    /* S as bf16 (+ lo) and z into the readout's buffer buf. */
    __device__ void publish(const Layout<T> &sm, int buf) const
    {
        bf16 *hi = sm.sb(buf, 0), *lo = sm.sb(buf, T::PLANES - 1);
        each_row([&](int k, int h, int d) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int off = d * T::VP + col(k, hf, 0);
                const float x0 = s[k][hf][2 * h], x1 = s[k][hf][2 * h + 1];
                if constexpr (T::SPLIT) {
                    uint32_t xh, xl;
                    split_pack(x0, x1, xh, xl);
                    *(uint32_t *)(hi + off) = xh;
                    *(uint32_t *)(lo + off) = xl;
                } else {
                    (void)lo;
                    *(uint32_t *)(hi + off) = pack_bf16(x0, x1);
                }
            }
            if ((u0 + k) % NP == 0 && (threadIdx.x & 3) == 0)
                sm.zs(buf)[d] = z[k][h];
        });
    }

    /* The final state (CAUSAL) or the segment's increment (ABSORB). */
    __device__ void store(const lmk_attend &p, const Job &j, int64_t head, int kind) const
    {
        const int64_t so = kind == LMK_ABSORB ? j.seg * p.out_state.seg_S : 0;
        const int64_t zo = kind == LMK_ABSORB ? j.seg * p.out_state.seg_z : 0;
        float *S = p.out_state.S + so + head * p.Dk * p.Dv;
        each_row([&](int k, int h, int d) {
            if (d >= p.Dk)
                return;
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const int e = j.e0 + col(k, hf, q);
                    if (e < p.Dv)
                        S[(int64_t)d * p.Dv + e] = s[k][hf][2 * h + q];
                }
            if (j.vb == 0 && (u0 + k) % NP == 0 && (threadIdx.x & 3) == 0)
                p.out_state.z[zo + head * p.Dk + d] = z[k][h];
        });
    }
};

template <int DK, int DT>
__global__ void __launch_bounds__(THREADS, 1) attend_kernel(const __grid_constant__ lmk_attend p, int kind)
{
    typedef Traits<DK, DT> T;
    extern __shared__ __align__(128) unsigned char smem[];
    const Layout<T> sm = { smem };
    const Job j = job_of<T>(p, kind);
    if (j.ranks > 1) {
        if (threadIdx.x == 0) {
            for (int st = 0; st < T::STAGES; st++)
                mbar_init(sm.full(st), 1);
            mbar_init_fence();
        }
        cluster_sync(); /* peers' shared memory and barriers exist before anyone writes to them */
    }
    const Chunk<T> ck = { p, sm, j, kind };
    const bool causal = kind == LMK_CAUSAL, use_q = kind != LMK_ABSORB, use_kv = kind != LMK_READOUT;
    const int64_t head = (int64_t)j.b * p.Hkv + j.hk;

    if (threadIdx.x == 0) { /* read after the first chunk's barrier */
        const float g = p.has_decay ? p.decay[j.hk] : 1.0f;
        float a = 1.0f;
        sm.pw()[0] = a;
        for (int i = 1; i <= C; i++) /* repeated products, as the CPU backend */
            sm.pw()[i] = a *= g;
    }
    const int64_t nchunks = (j.t_end - j.t_begin + C - 1) / C;
    ck.start(nchunks, use_q, use_kv);
    const int warp = threadIdx.x >> 5;
    /* Two loops, one per role, so that the readout's registers and the state's
     * are not live at once; each runs every chunk's step (and its barriers). */
    if (kind != LMK_ABSORB && warp < ROW_WARPS) {
        ck.each(nchunks, use_q, use_kv, [&](int64_t ci, int64_t t0, int n, int st) {
            const int buf = causal ? (int)(ci & 1) : 0;
            if (p.has_decay && p.mask)
                readout_rows<T, DECAY_MASKED>(p, sm, j, st, buf, t0, n, causal);
            else if (p.has_decay)
                readout_rows<T, DECAY_PLAIN>(p, sm, j, st, buf, t0, n, causal);
            else
                readout_rows<T, DECAY_NONE>(p, sm, j, st, buf, t0, n, causal);
        });
        return;
    }
    const int wi = kind == LMK_ABSORB ? warp : warp - ROW_WARPS;
    State<T> s;
    s.load(p, j, head, kind, wi, kind == LMK_ABSORB ? WARPS : WARPS - ROW_WARPS);
    if (kind != LMK_ABSORB)
        s.publish(sm, 0);
    ck.each(nchunks, use_q, use_kv, [&](int64_t ci, int64_t, int n, int st) {
        if (kind == LMK_READOUT)
            return;
        s.fold(p, sm, st, n);
        if (causal)
            s.publish(sm, (int)((ci + 1) & 1));
    });
    /* The final state (CAUSAL, last segment, first query head of its group) or
     * the segment's increment (ABSORB). */
    if (kind == LMK_ABSORB ||
        (causal && p.out_state.S && j.seg == p.nseg - 1 && j.h % (p.Hq / p.Hkv) == 0))
        s.store(p, j, head, kind);
}

} // namespace lmk

#endif /* LM_ATTEND_CUH */
