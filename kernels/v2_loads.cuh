/*
 * v2_loads.cuh - the producer warpgroup of the v2 prefill: each chunk's raw
 * q, k, v rows by cp.async straight into their swizzled tiles (16 bytes per
 * copy: any token stride, negative ones included; zeros past the segment's
 * end and for masked keys), three stages deep, and phi in place on q and k.
 *
 * The warpgroup splits by warps (produce): loader warps issue chunk n's
 * copies as soon as its stage is free (empty) and let each copy's landing
 * count on the stage's landed mbarrier (cp.async.mbarrier.arrive.noinc);
 * converter warps wait for landed, apply phi, fence to the async proxy and
 * arrive on full. So no load waits for an earlier chunk's landing or
 * conversion (bench/NOTES.md, "Kernel v2, loads decoupled from conversion").
 * A thread of either kind owns the 16-byte column u % VPR of rows
 * u / VPR + m (n / VPR) of a tile (u its index among the n threads of its
 * kind): the eight threads of a quarter-warp touch eight pieces of one
 * 128-byte row, no bank conflicts.
 * Unmasked calls with positive 16-byte strides load by TMA instead (Tma,
 * TmaLoader): one lane of the loader warp issues each chunk's tiles as
 * 64 x 64 boxes in the same 128-byte swizzle, onto landed with expect_tx;
 * the copy zero-fills rows past L itself. The host encodes the maps
 * (attend_v2.cu, tma_maps) and leaves Tma::on 0 where cp.async stays.
 * With the hybrid window fused (T::HYB; TMA only), the loader also brings
 * the k and v tiles of the chunk after the segment's last (the last queries'
 * window), the converters keep q and k raw and write phi(k) into the ring
 * tile of its chunk (zeros for rows past the segment: the window's rows there
 * are real keys), once the chunk two before has left it, and first copy the
 * sinks' 16-row tiles in.
 * One loader warp and three converter warps: a piece's conversion costs ~5x
 * its copy. Measured against the serial producer it replaced (each thread
 * converting its own copies after cp.async.wait_group, then issuing the
 * chunk two ahead) and against 2 + 2 warps, H100, core prefill 8K / 32K /
 * 128K: 0.286 / 0.815 / 3.28 ms, serial 0.429 / 1.17 / 4.30, 2 + 2 0.354 /
 * 1.00 / 3.55 (bench/results/gpu-h100-20261206i-2c36278/).
 */
#ifndef LM_V2_LOADS_CUH
#define LM_V2_LOADS_CUH

#include "feature_map.cuh"
#include "v2_scheduler.cuh"

#include <cuda.h>

namespace lmk {
namespace v2 {

/* phi in place on the 8 bf16 of a 16-byte piece of shared memory. */
template <int FM> __device__ __forceinline__ void phi_vec(uint4 &x)
{
    __nv_bfloat162 *h = (__nv_bfloat162 *)&x;
#pragma unroll
    for (int e = 0; e < 4; e++)
        h[e] = phi_pair<FM>(h[e]);
}

/* Rows r of the chunk at t0 that hold data (keys: and are not masked):
 * bit r. With a mask the warp computes it together (lane l tests rows l
 * and l + 32; all 32 lanes must call). */
__device__ __forceinline__ uint64_t live_mask(const lmk_attend &p, const Job &j, int64_t t0, bool keys)
{
    static_assert(C == 64, "one bit per row of a chunk");
    const int64_t left = j.t_end - t0; /* >= 1 */
    const uint64_t rows = left >= C ? ~0ull : (1ull << left) - 1;
    if (!keys || !p.mask)
        return rows;
    const int l = threadIdx.x & 31;
    const uint64_t lo = __ballot_sync(~0u, l < left && !masked(p, j, t0 + l)),
                   hi = __ballot_sync(~0u, l + 32 < left && !masked(p, j, t0 + l + 32));
    return hi << 32 | lo;
}

/* The rows and column of a tile that thread u of n owns. */
template <class T, int N> struct Share {
    static_assert(N % 32 == 0 && N % T::VPR == 0, "whole warps, whole rows");
    static constexpr int STEP = N / T::VPR; /* rows between one thread's pieces */
    static constexpr int ROWS = (C + STEP - 1) / STEP; /* pieces per thread and tile, at most */
    int u;

    __device__ int col() const { return u % T::VPR; }
    __device__ int row(int m) const { return u / T::VPR + m * STEP; }
    __device__ uint32_t off(int m) const { return T::at(T::BLOCK, row(m), col() * 8); }
    /* Piece m exists (when C % STEP != 0 the last one only for some threads); and its row is live. */
    __device__ bool exists(int m) const { return m < ROWS && row(m) < C; }
    __device__ bool has(int m, uint64_t live) const { return exists(m) && ((live >> row(m)) & 1); }
};

template <class T, int N> struct Loader {
    const lmk_attend &p;
    const Job &j;
    const Smem<T> &sm;
    Share<T, N> s;
    static_assert(C % Share<T, N>::STEP == 0, "every loader thread copies the same number of rows");

    __device__ void tile(uint32_t dst, const bf16 *base, int64_t stride, int64_t t0, uint64_t live) const
    {
        const bf16 *src = base + (t0 + s.row(0)) * stride + s.col() * 8;
        const int64_t step = (int64_t)Share<T, N>::STEP * stride;
#pragma unroll 2 /* 4 spilled 4 bytes at D = 128 under 72 registers */
        for (int m = 0; m < Share<T, N>::ROWS; m++, src += step) {
            const bool ok = (live >> s.row(m)) & 1;
            cp_async16(sm.p + dst + s.off(m), ok ? src : base, ok ? 16 : 0);
        }
    }

    __device__ void run() const
    {
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            const int64_t t0 = j.t_begin + (int64_t)c * C;
            const uint64_t keys = live_mask(p, j, t0, true); /* its loads overlap the wait */
            if (c >= STAGES) /* the stage's previous chunk consumed */
                wait(sm.empty(st), (uint32_t)((c / STAGES - 1) & 1));
            if (j.causal)
                tile(sm.q(st), j.q, p.sq[1], t0, live_mask(p, j, t0, false));
            tile(sm.k(st), j.k, p.sk[1], t0, keys);
            tile(sm.v(st), j.v, p.sv[1], t0, keys);
            arrive_on_landing(sm.landed(st)); /* fires once they have landed */
        }
        cp_async_commit();
        cp_async_wait<0>();
    }
};

/* TMA maps of the call's q, k, v: rank 4 (D, L, H, B) bf16 views, boxes of
 * 64 columns x 64 rows, 128-byte swizzle. on = 0: the cp.async Loader runs. */
struct Tma {
    CUtensorMap q, k, v;
    int on;
};

template <class T> struct TmaLoader {
    const Tma &m;
    const Job &j;
    const Smem<T> &sm;

    /* The D / 64 boxes of a tile: rows t0 .. t0 + 63 of head h, batch row j.b. */
    __device__ void tile(uint32_t dst, const CUtensorMap &map, int64_t t0, int h, uint64_t *bar) const
    {
#pragma unroll
        for (int blk = 0; blk < T::D / 64; blk++) {
            const int32_t at[4] = { blk * 64, (int32_t)t0, h, j.b };
            cuda::ptx::cp_async_bulk_tensor(cuda::ptx::space_cluster, cuda::ptx::space_global,
                                            sm.p + dst + blk * T::BLOCK, &map, at, bar);
        }
    }

    /* One thread: chunk c's tiles once its stage is free (HYB: and the k, v
     * tiles of chunk nch, the window's last). */
    __device__ void run() const
    {
        for (int c = 0; c < j.nch + (T::HYB ? 1 : 0); c++) {
            const int st = c % STAGES;
            const int64_t t0 = j.t_begin + (int64_t)c * C;
            const bool q = j.causal && c < j.nch;
            if (c >= STAGES)
                wait(sm.empty(st), (uint32_t)((c / STAGES - 1) & 1));
            uint64_t *bar = sm.landed(st);
            (void)cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta,
                                                       cuda::ptx::space_shared, bar, (q ? 3 : 2) * T::TILE);
            if (q)
                tile(sm.q(st), m.q, t0, j.h, bar);
            tile(sm.k(st), m.k, t0, j.hk, bar);
            tile(sm.v(st), m.v, t0, j.hk, bar);
        }
    }
};

template <class T, int N> struct Converter {
    const lmk_attend &p;
    const Job &j;
    const Smem<T> &sm;
    Share<T, N> s;

    /* phi of the live rows of the tile at src into dst (dst = src: in place),
     * BATCH pieces loaded before any is converted: their shared loads in
     * flight together (the stores may alias the next loads for the compiler).
     * ZERO: the other rows of dst are written as zeros (a ring tile holds an
     * older chunk's), else left alone (in place they are the copy's zero
     * fill, and phi(0) = 1 must not reach them). */
    template <int FM, bool ZERO> __device__ void tile(uint32_t dst, uint32_t src, uint64_t live) const
    {
        constexpr int BATCH = 4;
#pragma unroll 1
        for (int m0 = 0; m0 < Share<T, N>::ROWS; m0 += BATCH) {
            uint4 x[BATCH];
#pragma unroll
            for (int b = 0; b < BATCH; b++)
                x[b] = s.has(m0 + b, live) ? *(const uint4 *)(sm.p + src + s.off(m0 + b)) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int b = 0; b < BATCH; b++)
                if (ZERO ? s.exists(m0 + b) : s.has(m0 + b, live)) {
                    if (s.has(m0 + b, live))
                        phi_vec<FM>(x[b]);
                    *(uint4 *)(sm.p + dst + s.off(m0 + b)) = x[b];
                }
        }
    }

    /* HYB: the sinks' keys and values (bf16 rows of D, contiguous) into their
     * 16-row tiles. */
    __device__ void sinks(const lmk_window &w) const
    {
        const int64_t base = j.head * LMK_WINDOW_SINKS * T::D;
        for (int x = s.u; x < 2 * LMK_WINDOW_SINKS * T::VPR; x += N) {
            const int vals = x >= LMK_WINDOW_SINKS * T::VPR, y = x % (LMK_WINDOW_SINKS * T::VPR);
            const int row = y / T::VPR, col = (y % T::VPR) * 8;
            const bf16 *src = (const bf16 *)(vals ? w.sink_v : w.sink_k) + base + row * T::D + col;
            *(uint4 *)(sm.p + (vals ? T::SINK_V : T::SINK_K) + T::at(T::SKBLOCK, row, col)) = *(const uint4 *)src;
        }
    }

    template <int FM> __device__ void run_hyb(const lmk_window &w) const
    {
        if (w.ns > 0)
            sinks(w);
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            const uint64_t keys = live_mask(p, j, j.t_begin + (int64_t)c * C, true);
            wait(sm.landed(st), (uint32_t)((c / STAGES) & 1));
            if (c >= 2) /* ring tile c % 2: chunk c - 2 read by the readout and the state */
                wait(sm.empty((c - 2) % STAGES), (uint32_t)(((c - 2) / STAGES) & 1));
            tile<FM, true>(sm.kphi(c), sm.k(st), keys);
            to_async_proxy();
            arrive(sm.full(st));
        }
    }

    template <int FM> __device__ void run() const
    {
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            const int64_t t0 = j.t_begin + (int64_t)c * C;
            uint64_t keys = 0, rows = 0;
            if (FM != LM_FEATURE_IDENTITY)
                keys = live_mask(p, j, t0, true), rows = live_mask(p, j, t0, false);
            wait(sm.landed(st), (uint32_t)((c / STAGES) & 1)); /* every loader's copies of chunk c */
            if constexpr (FM != LM_FEATURE_IDENTITY) {
                if (j.causal)
                    tile<FM, false>(sm.q(st), sm.q(st), rows);
                tile<FM, false>(sm.k(st), sm.k(st), keys);
            }
            to_async_proxy(); /* this warp's stores and the landed bytes, for the wgmma reads */
            arrive(sm.full(st));
        }
    }
};

/* The one loader warp's threads (landed(st) counts one arrival each, or
 * the one TMA thread's) and the converter threads (full(st) counts one each). */
constexpr int LOADERS = 32, CONVERTERS = GROUP - LOADERS;

__device__ __forceinline__ int landed_count(const Tma &m)
{
    return m.on ? 1 : LOADERS;
}

/* The split producer: the loader warp, and the other warps convert. w: the
 * fused hybrid window (T::HYB, with TMA), else NULL. */
template <class T>
__device__ void produce(const lmk_attend &p, const Tma &m, const Job &j, const Smem<T> &sm, const lmk_window *w)
{
    const int t = (int)threadIdx.x; /* 0 .. GROUP - 1 */
    if (t < LOADERS) {
        if (T::HYB || m.on) {
            if (t == 0) {
                const TmaLoader<T> ld = { m, j, sm };
                ld.run();
            }
            return;
        }
        const Loader<T, LOADERS> ld = { p, j, sm, { t } };
        ld.run();
        return;
    }
    const Converter<T, CONVERTERS> cv = { p, j, sm, { t - LOADERS } };
    with_feature_map(p.feature_map, [&](auto fm) {
        if constexpr (T::HYB)
            cv.template run_hyb<decltype(fm)::value>(*w);
        else
            cv.template run<decltype(fm)::value>();
    });
}

} // namespace v2
} // namespace lmk

#endif /* LM_V2_LOADS_CUH */
