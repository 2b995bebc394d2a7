/*
 * v2_window.cuh - the readout warpgroup of the v2 prefill with a hybrid
 * prefill's window fused in (docs/DESIGN.md §9.3; lmk_window): one 64-row
 * chunk c of body rows, whose queries are raw in the stage (the window's
 * logits need q itself), against
 *   the linear part over the delayed keys, as Intra (v2_intra.cuh) but with
 *     S as bf16 hi and phi applied to q by the readout itself, in place,
 *     once the logits have read the raw tile (phi_tile): O = phi(Q) S,
 *     n = phi(Q) [z_hi z_lo], A = phi(Q) phi(K_c)^T (phi(k) from the ring),
 *     masked to j <= i, O += A V_c;
 *   the window: logits scale Q K^T against the raw keys of chunk c (kept
 *     where i < j <= i + W), of chunk c + 1 (j <= i + W - 64: its stage has
 *     landed, the readout reads it one chunk early) and of the sinks (their
 *     present bits), the row max m over all three, weights
 *     gamma exp(logit - m) (exact: the set is complete before any weight),
 *     their row sums added to A's (one denominator), O += P V per tile
 *     with P rounded to bf16 once (pv_chain).
 * Every product reads shared memory or the bf16 split of weights already in
 * registers, and none is issued inside a branch: ptxas then keeps them
 * pipelined (a feature-map switch around register-operand products made it
 * serialize every wgmma of the kernel, C7511: bench/NOTES.md, "Hybrid
 * prefill's products unserialized"). The softmax runs while the linear
 * products do. The epilogue (v2_epilogue.cuh) then divides by d + eps as
 * for linear attention.
 */
#ifndef LM_V2_WINDOW_CUH
#define LM_V2_WINDOW_CUH

#include "feature_map.cuh"
#include "v2_intra.cuh"

namespace lmk {
namespace v2 {

/* phi in place on the readout's q tile at p (every element: rows past the
 * segment are never stored), each thread 16-byte pieces: loaded and
 * converted while the logits' group reads the raw tile, written once it is
 * done (the only group in flight), then made visible to the next products.
 * The feature map's switch holds no product: a product in a branch would
 * make ptxas serialize them all (C7511). */
template <class T> __device__ __forceinline__ void phi_tile(unsigned char *p, int feature_map)
{
    constexpr int N = (int)(T::TILE / 16 / GROUP);
    const int tt = threadIdx.x & (GROUP - 1);
    uint4 x[N];
#pragma unroll
    for (int m = 0; m < N; m++)
        x[m] = *(const uint4 *)(p + (m * GROUP + tt) * 16);
    with_feature_map(feature_map, [&](auto fm) {
#pragma unroll
        for (int m = 0; m < N; m++)
            phi_vec<decltype(fm)::value>(x[m]);
    });
    wg_wait<0>();
#pragma unroll
    for (int m = 0; m < N; m++)
        *(uint4 *)(p + (m * GROUP + tt) * 16) = x[m];
    to_async_proxy();
    readout_sync();
}

/* O += A V_c (stage st) with A as bf16 hi + lo (its rounding shows in the
 * output: v2_intra.cuh), then the window's P V: chunk c's weights (V_c),
 * chunk c + 1's (stage sn), the sinks' (bits), each rounded to bf16 once, as
 * FlashAttention rounds P (weights in [0, gamma]; the output stayed at
 * 1.012x its rounding floor at 8K and 1.014x at 128K, the GPU suite's worst
 * case unchanged, and the launch 0.4 ms faster at 128K: bench/NOTES.md).
 * Each group is issued while the one before runs. */
template <class T>
__device__ __forceinline__ void pv_chain(float (&o)[T::D / 2], const float (&a)[32], const float (&lc)[32],
                                         const float (&ln)[32], const float (&ls)[8], uint32_t bits,
                                         const Smem<T> &sm, int st, int sn)
{
    uint32_t ahi[4][4], alo[4][4], chi[4][4], clo[4][4];
    pv_issue<T, 4>(o, a, ahi, alo, sm.a + sm.v(st), T::BLOCK);
    pv_issue<T, 4, false>(o, lc, chi, clo, sm.a + sm.v(st), T::BLOCK);
    wg_wait<1>();
    pv_issue<T, 4, false>(o, ln, ahi, alo, sm.a + sm.v(sn), T::BLOCK);
    if (bits) {
        wg_wait<1>();
        uint32_t shi[1][4], slo[1][4];
        pv_issue<T, 1, false>(o, ls, shi, slo, sm.a + T::SINK_V, T::SKBLOCK);
    }
    wg_wait<0>();
    wg_hold(o);
}

template <class T> struct Fused {
    float o[T::D / 2]; /* m64nD: output rows of the chunk */
    float n[4];        /* m64n8: normaliser against z hi (column 0), lo (column 1) */
    float rs[2];       /* row sums of A and of the window's weights, rows g and g + 8 */

    /* Logits in log2 units, -inf outside the window (lc: chunk c's keys, kept
     * where i < j <= i + W; ln: chunk c + 1's, j <= i + W - 64; ls: the
     * present sinks), then weights gamma 2^(logit - m) with m the row max
     * (ex2_approx(-inf) = 0), their sums into rs. */
    __device__ void weights(const lmk_window &w, float gamma, uint32_t bits, float (&lc)[32], float (&ln)[32],
                            float (&ls)[8])
    {
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
    }

    /* One chunk: G1 the logits from the raw q tile; phi(q) loaded and
     * converted meanwhile, and written over q once G1 has read it; G2 the
     * linear products from shared memory (O = phi(Q) S_hi, n, A = phi(Q)
     * phi(K_c)^T: no register operand, so ptxas keeps the products
     * pipelined), while the weights are computed from G1; then A masked and
     * the P V products, each tile's weights split while the previous tile's
     * product runs. O accumulates in the order of before (S, A V, chunk c,
     * c + 1, sinks). */
    __device__ void run(const lmk_attend &p, const lmk_window &w, float gamma, uint32_t bits, const Smem<T> &sm, int c,
                        int st, int sn)
    {
        float a[32], lc[32], ln[32], ls[8] = {}; /* ls stays 0 (then -inf) without sinks */
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
        phi_tile<T>(sm.p + sm.q(st), p.feature_map); /* waits for G1 before it writes */
        wg_hold(lc);
        wg_hold(ln);
        wg_hold(ls);
        wg_fresh(o); /* the first k-steps overwrite o, n and a */
        wg_fresh(n);
        wg_fresh(a);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++) {
            const uint64_t qd = desc_kstep(sm.a + sm.q(st), T::BLOCK, kk);
            WgmmaSS<T::D, 0, 1>::run(o, qd, desc_mnmajor(sm.a + T::S_HI + kk * 2048, T::SBLOCK), kk > 0);
        }
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaSS<8, 0, 0>::run(n, desc_kstep(sm.a + sm.q(st), T::BLOCK, kk), desc_kstep(sm.a + T::ZT, 1024, kk),
                                  kk > 0);
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < T::KS; kk++)
            WgmmaSS<64, 0, 0>::run(a, desc_kstep(sm.a + sm.q(st), T::BLOCK, kk),
                                   desc_kstep(sm.a + sm.kphi(c), T::BLOCK, kk), kk > 0);
        wg_commit();
        rs[0] = rs[1] = 0.0f;
        weights(w, gamma, bits, lc, ln, ls);
        wg_wait<1>();
        arrive(sm.s_free()); /* S, z read: the state may publish the next */
        wg_wait<0>();
        wg_hold(o);
        wg_hold(n);
        wg_hold(a);
        float ra[2];
        causal_mask(a, ra); /* A's row sums, after the window's */
        rs[0] += ra[0], rs[1] += ra[1];
        pv_chain<T>(o, a, lc, ln, ls, bits, sm, st, sn);
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_WINDOW_CUH */
