/*
 * v2_state.cuh - the state warpgroup of the v2 prefill. S (D x D fp32) and z
 * live in wgmma accumulators for the whole segment, one m64 block per 64 rows
 * of d: S += phi(K)^T V with phi(K)^T the transposed k tile (MN-major A) and
 * V the v tile (MN-major B); z += phi(K)^T 1 against the ones tile, in
 * column 0 of an m64n8 accumulator. After each chunk, once the readout has
 * freed the buffer, it publishes S and z as bf16 hi + lo for the next
 * chunk's readout (the split keeps ~16 bits, as v1's; phi(k) from its stage
 * or, with the hybrid window, from the ring: Smem::kphi). Compensated calls
 * fold each chunk's increment from a fresh accumulator (fold_fresh).
 */
#ifndef LM_V2_STATE_CUH
#define LM_V2_STATE_CUH

#include "v2_scheduler.cuh"

namespace lmk {
namespace v2 {

template <class T, bool COMP> struct State {
    static constexpr int MB = T::D / 64; /* m64 blocks of d */
    static constexpr int NR = T::D / 2;  /* accumulator registers of one block */
    float s[MB][NR];
    float z[MB][4]; /* column 0 (lanes with t = 0, registers 0 and 2) is z */

    /* Row d of register r of block mb; column e of register r. */
    static __device__ int row(int mb, int r)
    {
        const int w = ((threadIdx.x & (GROUP - 1)) >> 5), g = (threadIdx.x & 31) >> 2;
        return 64 * mb + 16 * w + g + 8 * ((r >> 1) & 1);
    }
    static __device__ int col(int r) { return 8 * (r >> 2) + 2 * (threadIdx.x & 3) + (r & 1); }

    /* The state the segment starts from (io.S_in NULL: zero; ABSORB always).
     * 4-byte loads: a pool's slots may sit at any float stride. */
    __device__ void load(const StateIO &io)
    {
        const float *Si = io.S_in, *zi = io.z_in;
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
#pragma unroll
            for (int r = 0; r < NR; r++)
                s[mb][r] = Si ? Si[row(mb, r) * T::D + col(r)] : 0.0f;
            const bool t0 = (threadIdx.x & 3) == 0;
#pragma unroll
            for (int r = 0; r < 4; r++)
                z[mb][r] = zi && t0 && (r & 1) == 0 ? zi[row(mb, r)] : 0.0f;
        }
    }

    /* S += phi(K)^T V, z += phi(K)^T 1 for chunk c (in stage st). */
    __device__ void fold(const Smem<T> &sm, int st, int c)
    {
        wg_fence();
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
            wg_hold(s[mb]);
            wg_hold(z[mb]);
#pragma unroll
            for (int kk = 0; kk < C / 16; kk++) {
                const uint64_t kt = desc_mnmajor(sm.a + sm.kphi(c) + mb * T::BLOCK + kk * 2048, T::BLOCK);
                WgmmaSS<T::D, 1, 1>::run(s[mb], kt, desc_mnmajor(sm.a + sm.v(st) + kk * 2048, T::BLOCK), 1);
                WgmmaSS<8, 1, 0>::run(z[mb], kt, desc_kstep(sm.a + T::ONES, 1024, kk), 1);
            }
        }
        wg_commit();
        wg_wait<0>();
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
            wg_hold(s[mb]);
            wg_hold(z[mb]);
        }
    }

    /* Compensated calls: the same products, but each chunk's increment of S
     * in a fresh accumulator (64 rows x 64 columns at a time), added to S by
     * round-to-nearest fp32 adds; z's increment summed on the CUDA cores
     * from the same bf16 phi(k) (an m64n8 accumulator beside it made ptxas
     * spill). Accumulating into S inside the wgmma truncates every k-step
     * relative to all of S (one sign for z); this way the tensor core's
     * rounding is relative to one chunk (bench/NOTES.md, "Kernel v2
     * compensated"). */
    __device__ void fold_fresh(const Smem<T> &sm, int st, int c)
    {
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
#pragma unroll
            for (int nh = 0; nh < T::D / 64; nh++) {
                float inc[32] = {};
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < C / 16; kk++)
                    WgmmaSS<64, 1, 1>::run(inc, desc_mnmajor(sm.a + sm.kphi(c) + mb * T::BLOCK + kk * 2048, T::BLOCK),
                                           desc_mnmajor(sm.a + sm.v(st) + nh * T::BLOCK + kk * 2048, T::BLOCK), kk > 0);
                wg_commit();
                wg_wait<0>();
                wg_hold(inc);
#pragma unroll
                for (int r = 0; r < 32; r++)
                    s[mb][32 * nh + r] += inc[r];
            }
            /* z rows row(mb, 0) and row(mb, 2): lane t of a quad sums tokens
             * 16 t .. 16 t + 15, the quad adds the four. */
            const int t = threadIdx.x & 3;
#pragma unroll
            for (int r = 0; r < 4; r += 2) {
                const unsigned char *kc = sm.p + sm.kphi(c);
                float dz = 0.0f;
#pragma unroll 4
                for (int i = 0; i < 16; i++)
                    dz += __bfloat162float(*(const bf16 *)(kc + T::at(T::BLOCK, 16 * t + i, row(mb, r))));
                dz += __shfl_xor_sync(0xffffffffu, dz, 1);
                dz += __shfl_xor_sync(0xffffffffu, dz, 2);
                if (t == 0)
                    z[mb][r] += dz;
            }
        }
    }

    /* S and z as bf16 hi + lo into the readout's buffers (conflict-free:
     * the eight rows of a register sit in eight different pieces); S as hi
     * alone with the hybrid window (v2_layout.cuh). */
    __device__ void publish(const Smem<T> &sm) const
    {
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
#pragma unroll
            for (int r = 0; r < NR; r += 2) {
                uint32_t hi, lo;
                split_pack(s[mb][r], s[mb][r + 1], hi, lo);
                const uint32_t o = T::at(T::SBLOCK, row(mb, r), col(r));
                *(uint32_t *)(sm.p + T::S_HI + o) = hi;
                if constexpr (!T::HYB)
                    *(uint32_t *)(sm.p + T::S_LO + o) = lo;
            }
            if ((threadIdx.x & 3) == 0)
#pragma unroll
                for (int r = 0; r < 4; r += 2) {
                    bf16 hi, lo;
                    split_bf16(z[mb][r], hi, lo);
                    *(bf16 *)(sm.p + T::ZT + T::at(1024, 0, row(mb, r))) = hi;
                    *(bf16 *)(sm.p + T::ZT + T::at(1024, 1, row(mb, r))) = lo;
                }
        }
        to_async_proxy();
    }

    /* The final state (CAUSAL) or the segment's increment (ABSORB), with
     * 4-byte stores (any slot stride). Each thread writes exactly the
     * elements it loaded, so io.S_out may be io.S_in. */
    __device__ void store(const StateIO &io) const
    {
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
#pragma unroll
            for (int r = 0; r < NR; r++)
                io.S_out[row(mb, r) * T::D + col(r)] = s[mb][r];
            if ((threadIdx.x & 3) == 0)
#pragma unroll
                for (int r = 0; r < 4; r += 2)
                    io.z_out[row(mb, r)] = z[mb][r];
        }
    }

    /* The segment: publish S_0, then fold each chunk and publish the state
     * before the next one (CAUSAL), and store the result. */
    __device__ void run(const Job &j, const StateIO &io, const Smem<T> &sm)
    {
        load(io);
        if (j.causal) {
            publish(sm);
            arrive(sm.s_full());
        }
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            wait(sm.full(st), (uint32_t)((c / STAGES) & 1));
            if constexpr (COMP)
                fold_fresh(sm, st, c);
            else
                fold(sm, st, c);
            arrive(sm.empty(st));
            if (j.causal && c + 1 < j.nch) {
                wait(sm.s_free(), (uint32_t)(c & 1)); /* the readout is done with S_c */
                publish(sm);
                arrive(sm.s_full());
            }
        }
        if (io.S_out)
            store(io);
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_STATE_CUH */
