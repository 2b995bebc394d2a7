/*
 * v2_loads.cuh - the producer warpgroup of the v2 prefill: each chunk's raw
 * q, k, v rows by cp.async straight into their swizzled tiles (16 bytes per
 * copy: any token stride, negative ones included; zeros past the segment's
 * end and for masked keys), three stages deep; when a chunk has landed, phi
 * in place on the vectors this thread copied, then a proxy fence and one
 * arrival on the stage's full barrier. Thread t always owns the 16-byte
 * column t % VPR of rows t / VPR + RSTEP m, so it converts only what it
 * loaded itself (no barrier between its copies and its conversion), and the
 * eight threads of a quarter-warp touch eight pieces of one 128-byte row:
 * no bank conflicts.
 */
#ifndef LM_V2_LOADS_CUH
#define LM_V2_LOADS_CUH

#include "feature_map.cuh"
#include "v2_scheduler.cuh"

namespace lmk {
namespace v2 {

template <class T> struct Loads {
    const lmk_attend &p;
    const Job &j;
    const Smem<T> &sm;
    int t; /* 0 .. GROUP - 1 */

    __device__ int col() const { return t % T::VPR; }
    __device__ int row(int m) const { return t / T::VPR + m * T::RSTEP; }
    __device__ uint32_t off(int m) const { return T::at(T::BLOCK, row(m), col() * 8); }

    /* Rows m of the chunk at t0 inside the segment: bit m. */
    __device__ uint32_t live_rows(int64_t t0) const
    {
        uint32_t live = 0;
#pragma unroll
        for (int m = 0; m < T::VPT; m++)
            live |= (uint32_t)(t0 + row(m) < j.t_end) << m;
        return live;
    }

    /* Rows m of chunk ci that hold a key (in the segment, not masked): bit m. */
    __device__ uint32_t live_keys(int64_t t0) const
    {
        uint32_t live = 0;
#pragma unroll
        for (int m = 0; m < T::VPT; m++) {
            const int64_t tok = t0 + row(m);
            if (tok < j.t_end && !masked(p, j, tok))
                live |= 1u << m;
        }
        return live;
    }

    __device__ void copy_tile(uint32_t dst, const bf16 *base, int64_t stride, int64_t t0, uint32_t live) const
    {
#pragma unroll
        for (int m = 0; m < T::VPT; m++) {
            const bool ok = (live >> m) & 1;
            const bf16 *src = ok ? base + (t0 + row(m)) * stride + col() * 8 : base;
            cp_async16(sm.p + dst + off(m), src, ok ? 16 : 0);
        }
    }

    /* cp.async of chunk ci into stage st (one commit group per chunk). */
    __device__ void issue(int ci, int st) const
    {
        const int64_t t0 = j.t_begin + (int64_t)ci * C;
        if (j.causal)
            copy_tile(sm.q(st), j.q, p.sq[1], t0, live_rows(t0));
        const uint32_t keys = live_keys(t0);
        copy_tile(sm.k(st), j.k, p.sk[1], t0, keys);
        copy_tile(sm.v(st), j.v, p.sv[1], t0, keys);
    }

    template <int FM> __device__ void phi_tile(uint32_t tile, uint32_t live) const
    {
#pragma unroll
        for (int m = 0; m < T::VPT; m++) {
            if (!((live >> m) & 1)) /* zero-filled: phi(0) = 1 must not reach it */
                continue;
            uint4 *ptr = (uint4 *)(sm.p + tile + off(m));
            uint4 x = *ptr;
            __nv_bfloat162 *h = (__nv_bfloat162 *)&x;
#pragma unroll
            for (int e = 0; e < 4; e++)
                h[e] = phi_pair<FM>(h[e]);
            *ptr = x;
        }
    }

    template <int FM> __device__ void phi_chunk(int ci, int st) const
    {
        const int64_t t0 = j.t_begin + (int64_t)ci * C;
        if (j.causal)
            phi_tile<FM>(sm.q(st), live_rows(t0));
        phi_tile<FM>(sm.k(st), live_keys(t0));
    }

    /* The whole segment: loads two chunks ahead, converts, hands over. */
    __device__ void run() const
    {
        for (int c = 0; c < STAGES - 1; c++) {
            if (c < j.nch)
                issue(c, c);
            cp_async_commit();
        }
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            cp_async_wait<STAGES - 2>(); /* this thread's copies of chunk c */
            switch (p.feature_map) {
            case LM_FEATURE_ELU1: phi_chunk<LM_FEATURE_ELU1>(c, st); break;
            case LM_FEATURE_RELU: phi_chunk<LM_FEATURE_RELU>(c, st); break;
            default: break; /* identity: the rows as loaded */
            }
            to_async_proxy();
            arrive(sm.full(st));
            const int n = c + STAGES - 1;
            if (n < j.nch) {
                if (n >= STAGES) /* the stage's previous chunk consumed */
                    wait(sm.empty(n % STAGES), (uint32_t)((n / STAGES - 1) & 1));
                issue(n, n % STAGES);
            }
            cp_async_commit();
        }
        cp_async_wait<0>();
    }
};

} // namespace v2
} // namespace lmk

#endif /* LM_V2_LOADS_CUH */
