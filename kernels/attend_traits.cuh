/*
 * attend_traits.cuh - tile sizes and the shared-memory layout of the chunked
 * attention kernels, per head dimension (DK, padded) and input dtype.
 *
 * A CTA owns one head and a block of NV value columns; 8 warps: warp r < 4
 * reads out query rows [16r, 16r+16) of each 64-token chunk while warps 4-7
 * fold the chunk into the state, which they hold in registers (ABSORB: all 8
 * do). Splitting Dv over CTAs (4 CTAs per head at Dv = 128) gives B = 1, 32
 * heads 128 CTAs on 132 SMs, and the sibling CTAs read the same q, k from L2.
 */
#ifndef LM_ATTEND_TRAITS_CUH
#define LM_ATTEND_TRAITS_CUH

#include "lm_kernels.h"

#include <cuda_bf16.h>
#include <stddef.h>

namespace lmk {

constexpr int C = LMK_CHUNK;
constexpr int ROW_WARPS = 4;            /* readout: warp r owns rows [16r, 16r + 16) */
constexpr int WARPS = 2 * ROW_WARPS;    /* the other four update the state meanwhile */
constexpr int THREADS = WARPS * 32;
constexpr size_t SMEM_LIMIT = 232448; /* 227 KiB, sm_90 */

__host__ __device__ constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }

template <int DK_, int DT_> struct Traits {
    static constexpr int DK = DK_;
    static constexpr int DT = DT_;
    /* f16 and f32 inputs are held as bf16 hi + lo pairs: products keep ~16 bits. */
    static constexpr bool SPLIT = DT != LM_BF16;
    static constexpr int NV = DK == 256 ? 16 : 32; /* value columns per CTA */
    static constexpr int NT = NV / 8;              /* n-tiles of 8 columns */
    static constexpr int KT = DK / 16;             /* k-steps over the head dim */
    static constexpr int QP = DK + 8;              /* pitches (elements), padded: */
    static constexpr int VP = NV + 8;              /* ldmatrix rows hit distinct banks */
    static constexpr int OP = NV + 8;              /* output staging rows */
    static constexpr int OUT_BYTES = DT == LM_F32 ? 4 : 2;
    static constexpr int PLANES = SPLIT ? 2 : 1;   /* hi (and lo) */

    /* One stage: q, k (C x QP) and v (C x VP) per plane. */
    static constexpr size_t Q_BYTES = (size_t)C * QP * 2;
    static constexpr size_t V_BYTES = (size_t)C * VP * 2;
    static constexpr size_t STAGE_BYTES = align128(PLANES * (2 * Q_BYTES + V_BYTES));
    /* The readout's copy of S as bf16 (+ lo), two buffers: chunk ci reads
     * buffer ci % 2 while the update warps write the next chunk's. */
    static constexpr size_t SB_BYTES = align128(PLANES * (size_t)DK * VP * 2);
    static constexpr size_t REST_BYTES =
        2 * SB_BYTES
        + align128(2 * (size_t)DK * 4)                 /* z, two buffers likewise */
        + align128((C + 1) * 4)                        /* decay powers */
        + align128((size_t)C * OP * OUT_BYTES)         /* output staging */
        + align128(6 * 8);                             /* an mbarrier and the unmasked
                                                          rows (a bit each) per stage */
    /* bf16 pipelines loads 2-3 chunks deep with cp.async; split dtypes load directly. */
    static constexpr int STAGES = SPLIT ? 1 : (3 * STAGE_BYTES + REST_BYTES <= SMEM_LIMIT ? 3 : 2);
    static constexpr size_t SMEM = STAGES * STAGE_BYTES + REST_BYTES;
    static_assert(SMEM <= SMEM_LIMIT, "shared memory over the sm_90 limit");

    /* Work units of the state update: (16 rows of d) x (16 columns); the most
     * one of the four update warps owns. */
    static constexpr int UNITS = KT * (NV / 16);
    static constexpr int MAX_UNITS = (UNITS + WARPS - ROW_WARPS - 1) / (WARPS - ROW_WARPS);
};

} // namespace lmk

#endif /* LM_ATTEND_TRAITS_CUH */
