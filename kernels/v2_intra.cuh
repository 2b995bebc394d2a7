/*
 * v2_intra.cuh - the readout warpgroup's products for one 64-token chunk of
 * the v2 prefill (rows i, keys j of the chunk; S, z the state before it):
 *   O = phi(Q) S_hi + phi(Q) S_lo                     m64nDk16, S MN-major
 *   n = phi(Q) [z_hi z_lo]                            m64n8k16, columns 0, 1
 *   A = phi(Q) phi(K)^T, masked to j <= i             m64n64k16
 *   O += A_hi V + A_lo V, r = rowsum(A) (fp32)        A from registers
 * (pv_issue, causal_mask: shared with the fused hybrid's v2_window.cuh)
 * all issued asynchronously; the S products are committed first so that the
 * S buffer is freed (s_free) while A is still in flight. A is split into
 * bf16 hi + lo because it is the one product whose rounding shows in the
 * output (1.23x the floor if rounded once, NOTES).
 */
#ifndef LM_V2_INTRA_CUH
#define LM_V2_INTRA_CUH

#include "v2_scheduler.cuh"

namespace lmk {
namespace v2 {

/* O += P V with P the fp32 weights of 16 KN keys in an m64n(16 KN)
 * accumulator, as bf16 hi + lo register fragments (k-step kk: registers 8 kk
 * .. 8 kk + 7, mma.cuh; the caller's hi, lo, which the products read until
 * they are waited for; LO false: hi alone, P rounded to bf16 once), and V
 * the MN-major tile at shared address vt (lbo bytes between its 64-column
 * blocks): issued and committed as one group. */
template <class T, int KN, bool LO = true>
__device__ __forceinline__ void pv_issue(float (&o)[T::D / 2], const float (&pw)[8 * KN], uint32_t (&hi)[KN][4],
                                         uint32_t (&lo)[KN][4], uint32_t vt, uint32_t lbo)
{
#pragma unroll
    for (int kk = 0; kk < KN; kk++)
#pragma unroll
        for (int f = 0; f < 4; f++) /* fragment f: (row half f % 2, column half f / 2) */
            split_pack(pw[8 * kk + 4 * (f >> 1) + 2 * (f & 1)], pw[8 * kk + 4 * (f >> 1) + 2 * (f & 1) + 1],
                       hi[kk][f], lo[kk][f]);
    wg_fence();
    wg_hold(o);
#pragma unroll
    for (int kk = 0; kk < KN; kk++) {
        const uint64_t vd = desc_mnmajor(vt + kk * 2048, lbo);
        WgmmaRS<T::D, 1>::run(o, hi[kk], vd, 1);
        if (LO)
            WgmmaRS<T::D, 1>::run(o, lo[kk], vd, 1);
    }
    wg_commit();
}

/* pv_issue, waited for. */
template <class T, int KN>
__device__ __forceinline__ void pv_split(float (&o)[T::D / 2], const float (&pw)[8 * KN], uint32_t vt, uint32_t lbo)
{
    uint32_t hi[KN][4], lo[KN][4];
    pv_issue<T, KN>(o, pw, hi, lo, vt, lbo);
    wg_wait<0>();
    wg_hold(o);
}

/* A masked to j <= i (row i = 16 w + g + 8 ((r >> 1) & 1) of register r,
 * column j = 8 (r >> 2) + 2 t + (r & 1)) and its row sums into rs. */
__device__ __forceinline__ void causal_mask(float (&a)[32], float (&rs)[2])
{
    const int lane = threadIdx.x & 31, w = (threadIdx.x & (GROUP - 1)) >> 5;
    const int g = lane >> 2, t = lane & 3;
    rs[0] = rs[1] = 0.0f;
#pragma unroll
    for (int r = 0; r < 32; r++) {
        const int i = 16 * w + g + 8 * ((r >> 1) & 1), jj = 8 * (r >> 2) + 2 * t + (r & 1);
        a[r] = jj > i ? 0.0f : a[r];
        rs[(r >> 1) & 1] += a[r];
    }
}

template <class T> struct Intra {
    float o[T::D / 2]; /* m64nD: output rows of the chunk */
    float n[4];        /* m64n8: normaliser against z hi (column 0), lo (column 1) */
    float a[32];       /* m64n64: A */
    float rs[2];       /* row sums of A, rows g and g + 8 (this thread's columns) */

    /* phi(Q) of k-step kk (K-major A). */
    static __device__ uint64_t q_desc(const Smem<T> &sm, int st, int kk)
    {
        return desc_kstep(sm.a + sm.q(st), T::BLOCK, kk);
    }

    __device__ void run(const Smem<T> &sm, int st)
    {
        wg_fence();
        wg_hold(o);
        wg_hold(n);
        wg_hold(a);
#pragma unroll
        for (int pl = 0; pl < 2; pl++)
#pragma unroll
            for (int kk = 0; kk < T::KS; kk++) {
                const uint64_t sd = desc_mnmajor(sm.a + (pl ? T::S_LO : T::S_HI) + kk * 2048, T::SBLOCK);
                WgmmaSS<T::D, 0, 1>::run(o, q_desc(sm, st, kk), sd, pl + kk > 0);
            }
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaSS<8, 0, 0>::run(n, q_desc(sm, st, kk), desc_kstep(sm.a + T::ZT, 1024, kk), kk > 0);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaSS<64, 0, 0>::run(a, q_desc(sm, st, kk), desc_kstep(sm.a + sm.k(st), T::BLOCK, kk), kk > 0);
        wg_commit();
        wg_wait<1>();
        arrive(sm.s_free()); /* S, z read: the state may publish the next */
        wg_wait<0>();
        wg_hold(a);
        causal_mask(a, rs);
        pv_split<T, 4>(o, a, sm.a + sm.v(st), T::BLOCK);
        wg_hold(n);
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_INTRA_CUH */
