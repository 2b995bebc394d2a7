/*
 * v2_layout.cuh - the v2 prefill's constants, its shared-memory map and the
 * barriers that order its three warpgroups (device code, sm_90a).
 *
 * Per CTA, for head dim D (= Dk = Dv, 64 or 128):
 *   stages 0..2: the q, k, v tiles of one 64-token chunk (64 rows of D bf16,
 *     128-byte swizzled, D / 64 blocks of 64 columns); q's tile also stages
 *     the chunk's output once the readout is done with q;
 *   S as bf16 hi and lo (D x D each, the readout's B operand, MN-major);
 *   z tile: 8 rows x D, K-major, row 0 = z hi, row 1 = z lo, others 0;
 *   ones tile: 8 rows x 64 tokens, K-major, row 0 = 1 (z += phi(K)^T 1);
 *   mbarriers: full / empty per stage, S published / S free, landed per
 *     stage (the loader warps' copies, v2_loads.cuh).
 * With the hybrid window fused (HYB, lmk_window): q and k stay raw in their
 * stage (the window's logits read them), phi(k) goes to a ring of two tiles
 * (PHI; chunk c in tile c % 2), S is published as bf16 hi only (with the
 * window's output there is no rounding of N through a bf16 output to hide
 * behind, and the simulation put S hi alone at 1.007x the floor: NOTES,
 * "Hybrid prefill, the fused window worked through"), and two 16-row tiles
 * hold the sinks' keys (K-major) and values (MN-major). At D = 128: 144 KiB
 * of stages + 32 KiB ring + 32 KiB S + 11 KiB.
 */
#ifndef LM_V2_LAYOUT_CUH
#define LM_V2_LAYOUT_CUH

#include "lm_kernels.h"
#include "mma.cuh"

#include <cuda/ptx>
#include <cuda_bf16.h>

namespace lmk {
namespace v2 {

typedef __nv_bfloat16 bf16;

constexpr int C = LMK_CHUNK;
constexpr int STAGES = 3;
constexpr int GROUP = 128;               /* threads of a warpgroup */
constexpr int THREADS = 3 * GROUP;       /* producer, readout, state */
/* setmaxnreg per role: 72 + 200 + 232 = 504, the 3 x 168 per thread that
 * __launch_bounds__(384, 1) gives the CTA at launch (an increase beyond what
 * the decreases free would wait forever). ptxas spills in the producer below
 * 72; the readout fits in 184 and the state in 200 without spills. */
constexpr int REGS_LOAD = 72, REGS_READ = 200, REGS_STATE = 232;
constexpr int BAR_READOUT = 1;           /* named barrier of the readout warpgroup */

template <int D_, bool HYB_ = false> struct Shape {
    static constexpr int D = D_;
    static constexpr bool HYB = HYB_;
    static_assert(D == 64 || D == 128, "v2 runs head dims 64 and 128");
    static constexpr int KS = D / 16;             /* k-steps over the head dim */
    static constexpr int VPR = D / 8;             /* 16-byte vectors per row */
    static constexpr int RSTEP = GROUP / VPR;     /* rows between one thread's vectors */
    static constexpr int VPT = C / RSTEP;         /* vectors per thread and tile */
    static constexpr uint32_t BLOCK = C * 128;    /* 64 columns of a chunk tile */
    static constexpr uint32_t TILE = (D / 64) * BLOCK;
    static constexpr uint32_t SBLOCK = D * 128;   /* 64 columns of S */
    static constexpr uint32_t SKBLOCK = 16 * 128; /* 64 columns of a 16-row sink tile */
    static constexpr uint32_t STAGE = 3 * TILE;
    static constexpr uint32_t PHI = STAGES * STAGE; /* HYB: the phi(k) ring */
    static constexpr uint32_t S_HI = PHI + (HYB ? 2 * TILE : 0);
    static constexpr uint32_t S_LO = S_HI + (D / 64) * SBLOCK; /* not HYB */
    static constexpr uint32_t ZT = S_LO + (HYB ? 0 : (D / 64) * SBLOCK);
    static constexpr uint32_t ONES = ZT + (D / 64) * 1024;
    static constexpr uint32_t SINK_K = ONES + 1024; /* HYB */
    static constexpr uint32_t SINK_V = SINK_K + (D / 64) * SKBLOCK;
    static constexpr uint32_t BARS = HYB ? SINK_V + (D / 64) * SKBLOCK : SINK_K;
    static constexpr size_t SMEM = BARS + 128 + 1024; /* 11 mbarriers; + room to align the base to 1024 */
    static_assert(SMEM <= 232448, "shared memory over the sm_90 limit");

    /* Byte offset of element (row, col) in a tile with `block` bytes per 64 columns. */
    static __device__ __forceinline__ uint32_t at(uint32_t block, int row, int col)
    {
        return (uint32_t)(col >> 6) * block + sw128(row, (col & 63) >> 3) + (uint32_t)(col & 7) * 2;
    }
};

/* The CTA's shared memory: generic pointers and shared-window addresses. */
template <class T> struct Smem {
    unsigned char *p;
    uint32_t a;

    __device__ uint32_t q(int st) const { return (uint32_t)st * T::STAGE; }
    __device__ uint32_t k(int st) const { return (uint32_t)st * T::STAGE + T::TILE; }
    __device__ uint32_t v(int st) const { return (uint32_t)st * T::STAGE + 2 * T::TILE; }
    /* phi(k) of chunk c: in place in its stage, or (HYB) ring tile c % 2. */
    __device__ uint32_t kphi(int c) const
    {
        return T::HYB ? T::PHI + (uint32_t)(c & 1) * T::TILE : k(c % STAGES);
    }
    __device__ uint64_t *bar(int i) const { return (uint64_t *)(p + T::BARS) + i; }
    __device__ uint64_t *full(int st) const { return bar(st); }
    __device__ uint64_t *empty(int st) const { return bar(STAGES + st); }
    __device__ uint64_t *s_full() const { return bar(2 * STAGES); }
    __device__ uint64_t *s_free() const { return bar(2 * STAGES + 1); }
    __device__ uint64_t *landed(int st) const { return bar(2 * STAGES + 2 + st); }
};

__device__ __forceinline__ void wait(uint64_t *bar, uint32_t parity)
{
    while (!cuda::ptx::mbarrier_try_wait_parity(bar, parity)) {
    }
}

__device__ __forceinline__ void arrive(uint64_t *bar)
{
    (void)cuda::ptx::mbarrier_arrive(bar);
}

/* One arrival on bar once every cp.async this thread has issued so far has
 * landed; .noinc: the barrier's expected count must include it. (Written
 * out: CUDA 13.0's cuda::ptx version names no state space, i.e. generic
 * addressing, yet passes a 32-bit shared-window address.) */
__device__ __forceinline__ void arrive_on_landing(uint64_t *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

/* Generic-proxy writes to shared memory visible to the next wgmma reads. */
__device__ __forceinline__ void to_async_proxy()
{
    cuda::ptx::fence_proxy_async(cuda::ptx::space_shared);
}

__device__ __forceinline__ void readout_sync()
{
    asm volatile("bar.sync %0, %1;\n" ::"n"(BAR_READOUT), "n"(GROUP) : "memory");
}

} // namespace v2
} // namespace lmk

#endif /* LM_V2_LAYOUT_CUH */
