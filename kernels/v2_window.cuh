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

template <class T> struct Fused {
    float o[T::D / 2]; /* m64nD: output rows of the chunk */
    float n[4];        /* m64n8: normaliser against z hi (column 0), lo (column 1) */
    float rs[2];       /* row sums of A and of the window's weights, rows g and g + 8 */

    /* The linear part: O, n, A from phi(Q) in registers; S freed; O += A V. */
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
            WgmmaRS<T::D, 1>::run(o, qf[kk], desc_mnmajor(sm.a + T::S_HI + kk * 2048, T::SBLOCK), kk > 0);
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaRS<8, 0>::run(n, qf[kk], desc_kstep(sm.a + T::ZT, 1024, kk), kk > 0);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaRS<64, 0>::run(a, qf[kk], desc_kstep(sm.a + sm.kphi(c), T::BLOCK, kk), kk > 0);
        wg_commit();
        wg_wait<1>();
        arrive(sm.s_free()); /* S, z read: the state may publish the next */
        wg_wait<0>();
        wg_hold(a);
        wg_hold(n);
        causal_mask(a, rs);
        pv_split<T, 4>(o, a, sm.a + sm.v(st), T::BLOCK);
    }

    /* The window part over chunk c's keys (stage st), chunk c + 1's (stage
     * sn) and the sinks (bits: the present ones; none: no product). */
    __device__ void window(const lmk_window &w, float gamma, uint32_t bits, const Smem<T> &sm, int st, int sn)
    {
        float lc[32], ln[32], ls[8] = {}; /* ls stays 0 (then -inf) without sinks */
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++) {
            const uint64_t qd = desc_kstep(sm.a + sm.q(st), T::BLOCK, kk);
            WgmmaSS<64, 0, 0>::run(lc, qd, desc_kstep(sm.a + sm.k(st), T::BLOCK, kk), kk > 0);
            WgmmaSS<64, 0, 0>::run(ln, qd, desc_kstep(sm.a + sm.k(sn), T::BLOCK, kk), kk > 0);
            if (bits)
                WgmmaSS<16, 0, 0>::run(ls, qd, desc_kstep(sm.a + T::SINK_K, T::SKBLOCK, kk), kk > 0);
        }
        wg_commit();
        wg_wait<0>();
        wg_hold(lc);
        wg_hold(ln);
        wg_hold(ls);

        /* Logits in log2 units, -inf outside the window; the row max. */
        const int lane = threadIdx.x & 31, wp = (threadIdx.x & (GROUP - 1)) >> 5;
        const int g = lane >> 2, t = lane & 3;
        const float s2 = w.scale * 1.44269504f, ninf = -INFINITY;
        float m[2] = { ninf, ninf };
#pragma unroll
        for (int r = 0; r < 32; r++) {
            const int i = 16 * wp + g + 8 * ((r >> 1) & 1), jj = 8 * (r >> 2) + 2 * t + (r & 1);
            lc[r] = jj > i && jj <= i + w.W ? lc[r] * s2 : ninf;
            ln[r] = jj <= i + w.W - C ? ln[r] * s2 : ninf;
            m[(r >> 1) & 1] = fmaxf(m[(r >> 1) & 1], fmaxf(lc[r], ln[r]));
        }
#pragma unroll
        for (int r = 0; r < 8; r++) {
            const int jj = 8 * (r >> 2) + 2 * t + (r & 1);
            ls[r] = (bits >> jj) & 1 ? ls[r] * s2 : ninf;
            m[(r >> 1) & 1] = fmaxf(m[(r >> 1) & 1], ls[r]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], 1));
            m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], 2));
            m[h] = m[h] == ninf ? 0.0f : m[h]; /* rows past the segment may see no key */
        }
        /* Weights gamma 2^(logit - m) (ex2_approx(-inf) = 0), their sums into rs. */
#pragma unroll
        for (int r = 0; r < 32; r++) {
            const int h = (r >> 1) & 1;
            lc[r] = gamma * ex2_approx(lc[r] - m[h]);
            ln[r] = gamma * ex2_approx(ln[r] - m[h]);
            rs[h] += lc[r] + ln[r];
        }
#pragma unroll
        for (int r = 0; r < 8; r++) {
            ls[r] = gamma * ex2_approx(ls[r] - m[(r >> 1) & 1]);
            rs[(r >> 1) & 1] += ls[r];
        }
        pv_split<T, 4>(o, lc, sm.a + sm.v(st), T::BLOCK);
        pv_split<T, 4>(o, ln, sm.a + sm.v(sn), T::BLOCK);
        if (bits)
            pv_split<T, 1>(o, ls, sm.a + T::SINK_V, T::SKBLOCK);
    }

    __device__ void run(const lmk_attend &p, const lmk_window &w, float gamma, uint32_t bits, const Smem<T> &sm, int c,
                        int st, int sn)
    {
        with_feature_map(p.feature_map, [&](auto fm) { linear<decltype(fm)::value>(sm, c, st); });
        window(w, gamma, bits, sm, st, sn);
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_WINDOW_CUH */
