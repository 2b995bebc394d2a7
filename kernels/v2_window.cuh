/*
 * v2_window.cuh - the readout warpgroup of the v2 prefill with a hybrid
 * prefill's window fused in (docs/DESIGN.md §9.3; lmk_window): one 64-row
 * chunk c of body rows, whose queries are raw in the stage (the window's
 * logits need q itself), against
 *   the linear part over the delayed keys, as Intra (v2_intra.cuh) but with
 *     phi(Q) applied to register fragments (RS products) and S as bf16 hi:
 *     O = phi(Q) S, n = phi(Q) [z_hi z_lo], A = phi(Q) phi(K_c)^T (phi(k)
 *     from the ring), masked to j <= i, O += A V_c;
 *   the window: logits scale Q K^T against the raw keys of chunk c (kept
 *     where i < j <= i + W), of chunk c + 1 (j <= i + W - 64: its stage has
 *     landed, the readout reads it one chunk early) and of the sinks (their
 *     present bits), the row max m over all three, weights
 *     gamma exp(logit - m) (exact: the set is complete before any weight),
 *     their row sums added to A's (one denominator), O += P V per tile.
 * The epilogue (v2_epilogue.cuh) then divides by d + eps as for linear
 * attention. Every product waits before its registers are reused.
 */
#ifndef LM_V2_WINDOW_CUH
#define LM_V2_WINDOW_CUH

#include "feature_map.cuh"
#include "v2_intra.cuh"

namespace lmk {
namespace v2 {

/* phi in place on the bf16 pairs of a register fragment. */
template <int FM> __device__ __forceinline__ void phi_frag(uint32_t (&x)[4])
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __nv_bfloat162 h = *reinterpret_cast<const __nv_bfloat162 *>(&x[i]);
        h = phi_pair<FM>(h);
        x[i] = *reinterpret_cast<const uint32_t *>(&h);
    }
}

__device__ __forceinline__ float ex2(float x)
{
    float e;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x));
    return e;
}

template <class T> struct Fused {
    float o[T::D / 2]; /* m64nD: output rows of the chunk */
    float n[4];        /* m64n8: normaliser against z hi (column 0), lo (column 1) */
    float rs[2];       /* row sums of A and of the window's weights, rows g and g + 8 */

    static __device__ uint64_t kdesc(uint32_t tile, uint32_t block, int kk)
    {
        return desc_kmajor(tile + (kk >> 2) * block + (kk & 3) * 32);
    }

    /* The linear part, onto the window's O and rs: O += phi(Q) S, n, A from
     * phi(Q) in registers; S freed; O += A V, rs += rowsum(A). */
    template <int FM> __device__ void linear(const Smem<T> &sm, int c, int st)
    {
        uint32_t qf[T::KS][4];
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++) {
            ldsm_a_sw128(qf[kk], sm.p + sm.q(st), T::BLOCK, kk);
            phi_frag<FM>(qf[kk]);
        }
        float a[32];
        wg_fence();
        wg_hold(o);
        wg_hold(n);
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaRS<T::D, 1>::run(o, qf[kk], desc_mnmajor(sm.a + T::S_HI + kk * 2048, T::SBLOCK), 1);
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaRS<8, 0>::run(n, qf[kk], kdesc(sm.a + T::ZT, 1024, kk), kk > 0);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaRS<64, 0>::run(a, qf[kk], kdesc(sm.a + sm.kphi(c), T::BLOCK, kk), kk > 0);
        wg_commit();
        wg_wait<1>();
        arrive(sm.s_free()); /* S, z read: the state may publish the next */
        wg_wait<0>();
        wg_hold(a);
        wg_hold(n);
        const float wsum[2] = { rs[0], rs[1] };
        causal_mask(a, rs);
        rs[0] += wsum[0], rs[1] += wsum[1];
        pv_split<T, 4>(o, a, sm.a + sm.v(st), T::BLOCK);
    }

    /* One key tile of the window (KN 16-key steps, logits x already in log2
     * units, -inf outside the window): the online softmax of FlashAttention-2
     * over this CTA's rows, whose O and rs hold the window alone so far. The
     * running max m moves to this tile's; O and rs are rescaled by 2^(m_old -
     * m_new) (0 while nothing was seen: O, rs start at 0), the weights gamma
     * 2^(x - m_new) added to rs and, through pv_split, P V to O. Exact: the
     * final weights are gamma exp(logit - max over every tile). */
    template <int KN>
    __device__ void online(float (&x)[8 * KN], float (&m)[2], float gamma, uint32_t vt, uint32_t lbo)
    {
        float mt[2] = { m[0], m[1] };
#pragma unroll
        for (int r = 0; r < 8 * KN; r++)
            mt[(r >> 1) & 1] = fmaxf(mt[(r >> 1) & 1], x[r]);
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 1));
            mt[h] = fmaxf(mt[h], __shfl_xor_sync(0xffffffffu, mt[h], 2));
            ref[h] = mt[h] == -INFINITY ? 0.0f : mt[h]; /* no key yet: every weight 0 */
            alpha[h] = ex2(m[h] - ref[h]);               /* m = -inf: 0 */
            m[h] = mt[h];
            rs[h] *= alpha[h];
        }
#pragma unroll
        for (int r = 0; r < T::D / 2; r++)
            o[r] *= alpha[(r >> 1) & 1];
#pragma unroll
        for (int r = 0; r < 8 * KN; r++) {
            x[r] = gamma * ex2(x[r] - ref[(r >> 1) & 1]);
            rs[(r >> 1) & 1] += x[r];
        }
        pv_split<T, KN>(o, x, vt, lbo);
    }

    /* The window part, first in the chunk (O and rs start from 0): chunk c's
     * keys (stage st), chunk c + 1's (stage sn), the sinks (bits: the present
     * ones; none: no product), one tile at a time so that one tile's logits
     * are live at once (all three together made ptxas serialise the kernel's
     * wgmma for want of registers, C7511). */
    __device__ void window(const lmk_window &w, float gamma, uint32_t bits, const Smem<T> &sm, int st, int sn)
    {
        const int lane = threadIdx.x & 31, wp = (threadIdx.x & (GROUP - 1)) >> 5;
        const int g = lane >> 2, t = lane & 3;
        const float s2 = w.scale * 1.44269504f, ninf = -INFINITY;
        float m[2] = { ninf, ninf };
        rs[0] = rs[1] = 0.0f;
#pragma unroll
        for (int r = 0; r < T::D / 2; r++)
            o[r] = 0.0f;
#pragma unroll 1
        for (int tile = 0; tile < 2; tile++) { /* chunk c, then c + 1 */
            const uint32_t kt = sm.a + sm.k(tile ? sn : st);
            float x[32];
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < T::KS; kk++)
                WgmmaSS<64, 0, 0>::run(x, kdesc(sm.a + sm.q(st), T::BLOCK, kk), kdesc(kt, T::BLOCK, kk), kk > 0);
            wg_commit();
            wg_wait<0>();
            wg_hold(x);
            /* chunk c: i < j <= i + W; chunk c + 1: j <= i + W - 64 */
            const int lo = tile ? -1 - C : 0, hi = tile ? w.W - C : w.W;
#pragma unroll
            for (int r = 0; r < 32; r++) {
                const int i = 16 * wp + g + 8 * ((r >> 1) & 1), jj = 8 * (r >> 2) + 2 * t + (r & 1);
                x[r] = jj - i > lo && jj - i <= hi ? x[r] * s2 : ninf;
            }
            online<4>(x, m, gamma, sm.a + sm.v(tile ? sn : st), T::BLOCK);
        }
        if (bits) {
            float x[8];
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < T::KS; kk++)
                WgmmaSS<16, 0, 0>::run(x, kdesc(sm.a + sm.q(st), T::BLOCK, kk), kdesc(sm.a + T::SINK_K, T::SKBLOCK, kk),
                                       kk > 0);
            wg_commit();
            wg_wait<0>();
            wg_hold(x);
#pragma unroll
            for (int r = 0; r < 8; r++)
                x[r] = (bits >> (8 * (r >> 2) + 2 * t + (r & 1))) & 1 ? x[r] * s2 : ninf;
            online<1>(x, m, gamma, sm.a + T::SINK_V, T::SKBLOCK);
        }
    }

    /* The window (raw tiles: stage st and sn landed), then, once phi(k) is in
     * the ring (full) and S is published (s_full), the linear part. */
    __device__ void run(const lmk_attend &p, const lmk_window &w, float gamma, uint32_t bits, const Smem<T> &sm, int c,
                        int st, int sn)
    {
        window(w, gamma, bits, sm, st, sn);
        wait(sm.full(st), (uint32_t)((c / STAGES) & 1));
        wait(sm.s_full(), (uint32_t)(c & 1));
        switch (p.feature_map) {
        case LM_FEATURE_ELU1: linear<LM_FEATURE_ELU1>(sm, c, st); break;
        case LM_FEATURE_RELU: linear<LM_FEATURE_RELU>(sm, c, st); break;
        default: linear<LM_FEATURE_IDENTITY>(sm, c, st); break;
        }
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_WINDOW_CUH */
