/*
 * hybrid_window.cu - the window part of hybrid attention's prefill
 * (docs/DESIGN.md §9.3), and the launcher of every hybrid prefill pass.
 *
 * body (rows >= W + sh of a call, where every window key is a row of the call
 * or a sink; bf16 calls of 16-byte rows and head dims 64 or 128 run
 * hybrid_body.cu's register-resident body instead where its shared memory
 * fits, unless LM_HYBRID_BODY=wmma): one CTA of 4 warps per (batch row, query head, qb query rows),
 * in passes over the CTA's key list (the sinks below its window, then the
 * positions (t_first - W, t_last]):
 *   A  den = phi(q).z of each row: from the linear call's v2 epilogue where
 *      it wrote one (lmk_hybrid.den), else z = the chunk's z from the scan
 *      plus phi(k) of the delayed keys up to the row (fp32 CUDA cores);
 *   C  logits of 16x16 blocks with WMMA (bf16, fp32 accumulate; f16 / f32
 *      inputs as bf16 hi + lo pairs, 3 products), blocks wholly outside every
 *      row's window skipped;
 *   D  per row (a warp): the window's max, a = gamma exp(l - max) in fp32,
 *      their sum; a kept as bf16 hi + lo (2 products: a's rounding would show);
 *   E  a V with WMMA over the same blocks, then o = (the linear numerator the
 *      linear kernel left in out + a V) / (den + sum a + eps).
 * Keys and values go through shared memory as bf16 tiles of 64 positions.
 * Two passes over the keys (logits kept for the row's max) instead of an
 * online softmax: the window is small, its logits fit (qb x (s + W + qb)).
 * head (the first rows of a call, whose evicted keys are the state's): one CTA
 * per row, fp32 CUDA cores, straight from the definition (window from the
 * call, the sink slots and the ring; linear part phi(q) S0, phi(q) z0 and the
 * ring slots that left the window). At most W + s rows per call: 109 us of a
 * 128K hybrid prefill (4.6 ms) with a thread a slot, 80 us with a warp a slot
 * (H100, same call, 2026-12-07).
 * Measured (H100, 32 heads of 128, W = 64, s = 4, bf16): 128K in 59.4 ms
 * (77.3 ms before the query and output rows moved 8 values a load), 36.9 ms
 * with the tiles' call rows by cp.async (same run: 59.8 before); ncu on a 32K
 * prefill put 87 % of it in this body, at 8 warps per SM, 0.2 instructions
 * issued per scheduler and cycle and 71 % of shared wavefronts replayed (tile
 * pitches of 256 / 512 bytes). With the pitches padded and the softmax pass's
 * int bounds: 38.5 ms (no gain over 36.9 visible, across two calls); what
 * holds it now is 2 CTAs per SM (the logits and weights in shared memory):
 * bench/NOTES.md, "Next session's GPU work".
 */
#include "hybrid.cuh"
#include "mma.cuh"

#include <mma.h>

namespace {

using namespace nvcuda;
using lmk::al128;
using lmk::HSrc;
using lmk::hkey;
using lmk::hload;
using lmk::hsrc;
using lmk::rows16;
using lmk::hstore;
using lmk::hval;
using lmk::phi_precise;
typedef __nv_bfloat16 bf16;

constexpr int THREADS = 128; /* both kernels: 4 warps */
constexpr int KT = 64;       /* positions per key / value tile */

/* The body kernel's shared memory, computed alike on host and device. */
struct BodyLayout {
    int dkp, dvp, nkp;     /* Dk, Dv and the key list padded to 16 */
    /* Row pitches (elements) of the query, key / value and weight tiles (bf16)
     * and of the logits and output (fp32): 16 bytes past a multiple of 128, so
     * that the 8 rows a WMMA load or store touches at once sit in 8 different
     * bank groups (pitches of 256 and 512 bytes put them all in one: 71 % of
     * the shared-memory wavefronts were replays, bench/NOTES.md). */
    int qp, kp, pp, lgp, op;
    size_t q, kv, lg, pw, st, total;
};

__host__ __device__ inline BodyLayout body_layout(int Dk, int Dv, int64_t W, int64_t s, int qb, int planes)
{
    BodyLayout l;
    l.dkp = (Dk + 15) / 16 * 16;
    l.dvp = (Dv + 15) / 16 * 16;
    l.nkp = (int)((s + W + qb - 1 + 15) / 16 * 16);
    l.qp = l.dkp + 8;
    l.kp = (l.dkp > l.dvp ? l.dkp : l.dvp) + 8;
    l.pp = l.nkp + 8;
    l.lgp = l.nkp + 4;
    l.op = l.dvp + 4;
    size_t lg = (size_t)qb * l.lgp * 4, z = (size_t)qb * l.dkp * 4, o = (size_t)qb * l.op * 4;
    lg = lg > z ? lg : z;
    lg = lg > o ? lg : o; /* logits, then z of the rows before, the output after */
    size_t off = 0;
    l.q = off, off = al128(off + (size_t)planes * qb * l.qp * 2);
    l.kv = off, off = al128(off + (size_t)planes * KT * l.kp * 2);
    l.lg = off, off = al128(off + lg);
    l.pw = off, off = al128(off + 2 * (size_t)qb * l.pp * 2);
    l.st = off, off = al128(off + 2 * (size_t)qb * 4 + (size_t)l.nkp);
    l.total = off;
    return l;
}

__device__ __forceinline__ void put_split(bf16 *hi, bf16 *lo, int64_t i, float x, bool split)
{
    const bf16 h = __float2bfloat16_rn(x);
    hi[i] = h;
    if (split)
        lo[i] = __float2bfloat16_rn(x - __bfloat162float(h));
}

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

template <int DVP>
__global__ void __launch_bounds__(THREADS, 2) body_kernel(const __grid_constant__ lmk_hybrid p)
{
    extern __shared__ __align__(128) unsigned char sm[];
    const int qb = p.qb, nwarp = qb / 16, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.z, h = blockIdx.y, hk = h / (p.Hq / p.Hkv);
    const int64_t ra = p.r0 + (int64_t)blockIdx.x * qb;
    const int nr = (int)(p.r1 - ra < qb ? p.r1 - ra : qb);
    const int64_t ta = p.P0 + ra, tb = ta + nr - 1, W = p.W;
    const bool split = p.dtype != LM_BF16;
    const BodyLayout l = body_layout(p.Dk, p.Dv, W, p.s, qb, split ? 2 : 1);
    bf16 *Qh = (bf16 *)(sm + l.q), *Ql = Qh + qb * l.qp;
    bf16 *Th = (bf16 *)(sm + l.kv), *Tl = Th + KT * l.kp;
    float *Lg = (float *)(sm + l.lg);
    bf16 *Ph = (bf16 *)(sm + l.pw), *Pl = Ph + qb * l.pp;
    float *den = (float *)(sm + l.st), *lsum = den + qb;
    unsigned char *pres = (unsigned char *)(lsum + qb);
    /* The key list: sinks j < ns (below every row's window), then positions bl.. */
    int64_t ns = tb - W + 1 < p.s ? tb - W + 1 : p.s;
    ns = ns > 0 ? ns : 0;
    const int64_t bl = ta - W + 1;
    const int nk = (int)(ns + tb - bl + 1);
    auto position = [&](int kx) -> int64_t { return kx < ns ? (int64_t)kx : bl + (kx - ns); };
    /* Whether a 16x16 block (rows 16 rb.., keys k0..) can hold a window pair. */
    auto block_may = [&](int rb, int k0) -> bool {
        const int64_t tlo = ta + 16 * rb, thi = tlo + 15 < tb ? tlo + 15 : tb;
        const int k1 = k0 + 16 < nk ? k0 + 16 : nk;
        if (tlo > tb)
            return false;
        if (k0 < ns && k0 <= thi - W)
            return true;
        const int kb0 = k0 > ns ? k0 : (int)ns;
        return kb0 < k1 && position(kb0) <= thi && position(k1 - 1) > tlo - W;
    };
    /* Rows [kt0, kt0 + KT) of the key list into the tile: a warp per row, R
     * rows per round with every load of the round issued before any is
     * converted (one row at a time, a warp waited on each row's loads in
     * turn: 16 latencies per tile and warp). */
    auto load_tile = [&](int kt0, bool values) {
        const int D = values ? p.Dv : p.Dk, DP = values ? l.dvp : l.dkp;
        constexpr int R = 8, NW = THREADS / 32;
        for (int rr0 = warp; rr0 < KT; rr0 += R * NW) {
            HSrc r[R];
#pragma unroll
            for (int u = 0; u < R; u++) {
                const int rr = rr0 + u * NW, kx = kt0 + rr;
                r[u] = HSrc{};
                if (rr < KT && kx < nk)
                    r[u] = hsrc(p, b, hk, position(kx));
            }
            for (int d = lane; d < DP; d += 32) {
                float x[R];
#pragma unroll
                for (int u = 0; u < R; u++)
                    x[u] = r[u].present && d < D ? (values ? hval(p, r[u], b, hk, d) : hkey(p, r[u], b, hk, d)) : 0.0f;
#pragma unroll
                for (int u = 0; u < R; u++)
                    if (rr0 + u * NW < KT)
                        put_split(Th, Tl, (int64_t)(rr0 + u * NW) * l.kp + d, x[u], split);
            }
#pragma unroll
            for (int u = 0; u < R; u++) {
                const int rr = rr0 + u * NW, kx = kt0 + rr;
                if (!values && lane == 0 && rr < KT && kx < l.nkp)
                    pres[kx] = r[u].present;
            }
        }
    };

    /* bf16 keys and values of unit column stride, 16-byte rows: the call's
     * rows of a tile go straight to shared memory, 16 bytes a cp.async, every
     * copy of the tile in flight at once (the loop above waits on its loads
     * in rounds); rows from the state's slots (fp32) and absent rows as there. */
    const bool fast = !split && rows16(p.k, p.sk, p.Dk) && rows16(p.v, p.sv, p.Dv);
    auto load_tile_fast = [&](int kt0, bool values) {
        const int per = (values ? l.dvp : l.dkp) / 8;
        for (int x = threadIdx.x; x < KT * per; x += THREADS) {
            const int rr = x / per, pc = x % per, kx = kt0 + rr;
            const bool present =
                lmk::hybrid_piece16(p, b, hk, kx < nk ? position(kx) : -1, values, pc, Th + (int64_t)rr * l.kp + pc * 8);
            if (!values && pc == 0 && kx < l.nkp)
                pres[kx] = present;
        }
        lmk::cp_async_commit();
        lmk::cp_async_wait<0>();
    };

    /* The key list tile by tile through shared memory (keys, or values); fn(kt0,
     * kb) for every 16-key block that can hold a window pair of this warp's rows. */
    auto over_blocks = [&](bool values, auto &&fn) {
        for (int kt0 = 0; kt0 < nk; kt0 += KT) {
            __syncthreads(); /* what came before is read, the previous tile consumed */
            if (fast)
                load_tile_fast(kt0, values);
            else
                load_tile(kt0, values);
            __syncthreads();
            if (warp < nwarp)
                for (int kb = 0; kb < KT / 16 && kt0 + 16 * kb < nk; kb++)
                    if (block_may(warp, kt0 + 16 * kb))
                        fn(kt0, kb);
        }
    };

    /* The query rows as bf16 (hi, lo): bf16 rows of unit column stride 8
     * values a load, every load of a thread issued before its stores. */
    const bool vec = !split && rows16(p.q, p.sq, p.Dk) && rows16(p.out, p.so, p.Dv);
    if (vec) {
        const bf16 *qg = (const bf16 *)p.q + b * p.sq[0] + ra * p.sq[1] + h * p.sq[2];
        const int per = l.dkp / 8, n8 = qb * per;
        for (int x0 = threadIdx.x; x0 < n8; x0 += 4 * THREADS) {
            uint4 r[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int x = x0 + u * THREADS, i = x / per, d = x % per * 8;
                r[u] = x < n8 && i < nr && d < p.Dk ? *(const uint4 *)(qg + i * p.sq[1] + d) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int x = x0 + u * THREADS;
                if (x < n8)
                    *(uint4 *)(Qh + (x / per) * l.qp + x % per * 8) = r[u];
            }
        }
    } else
        for (int x = threadIdx.x; x < qb * l.dkp; x += THREADS) {
            const int i = x / l.dkp, d = x % l.dkp;
            const float v = i < nr && d < p.Dk
                                ? hload(p.q, p.dtype, b * p.sq[0] + (ra + i) * p.sq[1] + h * p.sq[2] + d * p.sq[3])
                                : 0.0f;
            put_split(Qh, Ql, (int64_t)i * l.qp + d, v, split);
        }

    /* A: den = phi(q) . z (the linear call's, or z = the chunk's scan value + the delayed keys up to the row). */
    lmk::hybrid_den(p, b, h, hk, ra, nr, Lg, l.dkp, den, [&](int i, int d) {
        return split ? hload(p.q, p.dtype, b * p.sq[0] + (ra + i) * p.sq[1] + h * p.sq[2] + d * p.sq[3])
                     : __bfloat162float(Qh[i * l.qp + d]); /* bf16 q: Qh is exact */
    });

    /* C: logits (the first tile's barrier also ends A's use of Lg). */
    over_blocks(false, [&](int kt0, int kb) {
        FragC c;
        wmma::fill_fragment(c, 0.0f);
        for (int d0 = 0; d0 < l.dkp; d0 += 16) {
            FragA qa;
            FragBt kf;
            wmma::load_matrix_sync(qa, Qh + warp * 16 * l.qp + d0, l.qp);
            wmma::load_matrix_sync(kf, Th + kb * 16 * l.kp + d0, l.kp);
            wmma::mma_sync(c, qa, kf, c);
            if (split) {
                FragA ql;
                FragBt kl;
                wmma::load_matrix_sync(ql, Ql + warp * 16 * l.qp + d0, l.qp);
                wmma::load_matrix_sync(kl, Tl + kb * 16 * l.kp + d0, l.kp);
                wmma::mma_sync(c, ql, kf, c);
                wmma::mma_sync(c, qa, kl, c);
            }
        }
#pragma unroll
        for (int x = 0; x < c.num_elements; x++)
            c.x[x] *= p.scale;
        wmma::store_matrix_sync(Lg + warp * 16 * l.lgp + kt0 + 16 * kb, c, l.lgp, wmma::mem_row_major);
    });
    __syncthreads();

    /* D: the window's weights per row, a warp per row. Row i's window is
     * key-list entries [ns + i, ns + i + W) (positions t - W + 1 .. t) and the
     * sinks at positions <= t - W: int bounds per row, not per entry. */
    const float gamma = p.gamma[h];
    for (int i = warp; i < qb; i += THREADS / 32) {
        const int64_t sk = ta + i - W; /* sinks at positions <= sk */
        const int lo = (int)ns + i, hi = lo + (int)W - 1;
        auto ok = [&](int kx) { return pres[kx] && (kx < ns ? kx <= sk : kx >= lo && kx <= hi); };
        float m = -INFINITY;
        if (i < nr) {
            for (int kx = lane; kx < ns; kx += 32)
                if (ok(kx))
                    m = fmaxf(m, Lg[i * l.lgp + kx]);
            for (int kx = lo + lane; kx <= hi; kx += 32)
                if (pres[kx])
                    m = fmaxf(m, Lg[i * l.lgp + kx]);
        }
        m = lmk::warp_max(m);
        float sum = 0.0f;
        for (int kx = lane; kx < l.nkp; kx += 32) {
            float a = 0.0f;
            if (i < nr && kx < nk && m > -INFINITY && ok(kx))
                a = gamma * expf(Lg[i * l.lgp + kx] - m);
            sum += a;
            put_split(Ph, Pl, (int64_t)i * l.pp + kx, a, true);
        }
        sum = lmk::warp_sum(sum);
        if (lane == 0)
            lsum[i] = sum;
    }

    /* E: a V. */
    FragC acc[DVP / 16];
#pragma unroll
    for (int cb = 0; cb < DVP / 16; cb++)
        wmma::fill_fragment(acc[cb], 0.0f);
    over_blocks(true, [&](int kt0, int kb) {
        FragA ph, pl;
        wmma::load_matrix_sync(ph, Ph + warp * 16 * l.pp + kt0 + 16 * kb, l.pp);
        wmma::load_matrix_sync(pl, Pl + warp * 16 * l.pp + kt0 + 16 * kb, l.pp);
#pragma unroll
        for (int cb = 0; cb < DVP / 16; cb++) {
            if (16 * cb >= l.dvp)
                continue;
            FragB vh;
            wmma::load_matrix_sync(vh, Th + kb * 16 * l.kp + 16 * cb, l.kp);
            wmma::mma_sync(acc[cb], ph, vh, acc[cb]);
            wmma::mma_sync(acc[cb], pl, vh, acc[cb]);
            if (split) {
                FragB vl;
                wmma::load_matrix_sync(vl, Tl + kb * 16 * l.kp + 16 * cb, l.kp);
                wmma::mma_sync(acc[cb], ph, vl, acc[cb]);
            }
        }
    });
    __syncthreads(); /* the logits are dead: Lg holds the output */
    float *O = Lg;
    if (warp < nwarp)
#pragma unroll
        for (int cb = 0; cb < DVP / 16; cb++)
            if (16 * cb < l.dvp)
                wmma::store_matrix_sync(O + warp * 16 * l.op + 16 * cb, acc[cb], l.op, wmma::mem_row_major);
    __syncthreads();
    if (vec) /* 8 values a load and store */
        lmk::hybrid_out_vec(p, b, h, ra, nr, O, l.op, den, lsum);
    else
        for (int x = threadIdx.x; x < nr * p.Dv; x += THREADS) {
            const int i = x / p.Dv, e = x % p.Dv;
            const int64_t oi = b * p.so[0] + (ra + i) * p.so[1] + h * p.so[2] + e * p.so[3];
            const float num = hload(p.out, p.dtype, oi) + O[i * l.op + e];
            hstore(p.out, p.dtype, oi, num / (den[i] + lsum[i] + p.eps));
        }
}

/* The head kernel's shared memory: q, phi(q), 32 floats for reductions, the
 * window's logits and the evicted slots' weights (s + 2W), then (8-byte
 * aligned, at this many floats) each of those slots' value row. */
__host__ __device__ inline int64_t head_vs(int64_t Dk, int64_t s, int64_t W)
{
    return (2 * Dk + 32 + s + 2 * W + 1) / 2 * 2;
}

constexpr int64_t NO_ROW = INT64_MIN; /* the head kernel's vs: a slot without a key (read as zeros) */

/* num + the sum over n slots of w[x] times column e of the value row at
 * vs[x] (NO_ROW: zeros), in slot order; the loads of successive slots
 * overlap (each row read whether or not its weight is zero, selected after). */
__device__ __forceinline__ float add_weighted(const lmk_hybrid &p, const float *w, const int64_t *vs, int64_t n, int e,
                                              float num)
{
#pragma unroll 4
    for (int64_t x = 0; x < n; x++) {
        const float a = w[x], v = vs[x] == NO_ROW ? 0.0f : lmk::vrow_at(p, vs[x], e);
        num += a != 0.0f ? a * v : 0.0f; /* a slot never written may hold anything */
    }
    return num;
}

/* One CTA per row of the call's start: everything from the definition. The
 * logits and the evicted slots' weights a warp a slot (lanes over Dk, loads
 * of consecutive d); the numerators a thread a value column over the slots,
 * each slot's value row located once (vs; add_weighted). */
__global__ void __launch_bounds__(THREADS) head_kernel(const __grid_constant__ lmk_hybrid p)
{
    extern __shared__ float hs[];
    const int64_t i = p.r0 + blockIdx.x, t = p.P0 + i, W = p.W;
    const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t bh = (int64_t)b * p.Hkv + hk;
    float *q = hs, *fq = q + p.Dk, *red = fq + p.Dk, *lg = red + 32, *wb = lg + p.s + W;
    /* [s + 2W]: the window's slots' value rows (vrow), then the evicted ones'; NO_ROW where a slot holds no key */
    int64_t *vs = (int64_t *)(hs + head_vs(p.Dk, p.s, W));
    /* Window: x < ns is sink x, the rest positions lo..t; evicted ring slots e0..e1. */
    const int64_t ns = p.s < t + 1 ? p.s : t + 1;
    const int64_t lo = t - W + 1 > ns ? t - W + 1 : ns, nw = ns + t - lo + 1;
    const int64_t e0 = p.P0 - W > p.s ? p.P0 - W : p.s, e1 = p.P0 - 1 < t - W ? p.P0 - 1 : t - W;
    const int64_t ne = e1 >= e0 ? e1 - e0 + 1 : 0;
    for (int d = threadIdx.x; d < p.Dk; d += THREADS) {
        q[d] = hload(p.q, p.dtype, b * p.sq[0] + i * p.sq[1] + h * p.sq[2] + d * p.sq[3]);
        fq[d] = phi_precise(q[d], p.feature_map);
    }
    __syncthreads();
    float m = -INFINITY, bsum = 0.0f, zlin = 0.0f;
    for (int64_t x = warp; x < nw; x += THREADS / 32) {
        const HSrc r = hsrc(p, b, hk, x < ns ? x : lo + (x - ns));
        float s = 0.0f;
        for (int d = lane; r.present && d < p.Dk; d += 32)
            s += q[d] * hkey(p, r, b, hk, d);
        s = lmk::warp_sum(s);
        const float l = r.present ? s * p.scale : -INFINITY;
        m = fmaxf(m, l);
        if (lane == 0)
            lg[x] = l, vs[x] = r.present ? lmk::vrow(p, r, b, hk) : NO_ROW;
    }
    for (int64_t x = warp; x < ne; x += THREADS / 32) {
        const HSrc r = hsrc(p, b, hk, e0 + x);
        float w = 0.0f;
        for (int d = lane; r.present && d < p.Dk; d += 32)
            w += fq[d] * phi_precise(hkey(p, r, b, hk, d), p.feature_map);
        w = lmk::warp_sum(w);
        if (lane == 0)
            wb[x] = w, vs[p.s + W + x] = r.present ? lmk::vrow(p, r, b, hk) : NO_ROW, bsum += w; /* one lane's: the block sums it */
    }
    for (int d = threadIdx.x; p.z && d < p.Dk; d += THREADS)
        zlin += fq[d] * p.z[bh * p.Dk + d];
    m = lmk::block_reduce<true>(m, red); /* syncs: lg ready */
    float asum = 0.0f;
    for (int64_t x = threadIdx.x; x < nw; x += THREADS) {
        const float a = m > -INFINITY && lg[x] > -INFINITY ? p.gamma[h] * expf(lg[x] - m) : 0.0f;
        lg[x] = a;
        asum += a;
    }
    const float den = lmk::block_reduce<false>(asum + bsum + zlin, red); /* syncs: lg, wb, vs ready */
    for (int e = threadIdx.x; e < p.Dv; e += THREADS) {
        float num = add_weighted(p, wb, vs + p.s + W, ne, e, add_weighted(p, lg, vs, nw, e, 0.0f));
        for (int d = 0; p.S && d < p.Dk; d++)
            num += fq[d] * p.S[(bh * p.Dk + d) * p.Dv + e];
        hstore(p.out, p.dtype, b * p.so[0] + i * p.so[1] + h * p.so[2] + e * p.so[3], num / (den + p.eps));
    }
}

template <int DVP> lm_status launch_body(const lmk_hybrid &p, size_t smem, cudaStream_t s)
{
    LMI_CUDA_TRY(cudaFuncSetAttribute(body_kernel<DVP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((p.r1 - p.r0 + p.qb - 1) / p.qb), (unsigned)p.Hq, (unsigned)p.B);
    body_kernel<DVP><<<grid, THREADS, smem, s>>>(p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

int optin_smem()
{
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        return 48 * 1024;
    return optin;
}

} // namespace

extern "C" size_t lmk_hybrid_body_smem(const lmk_hybrid *p, int qb)
{
    return body_layout(p->Dk, p->Dv, p->W, p->s, qb, p->dtype == LM_BF16 ? 1 : 2).total;
}

static size_t head_smem(const lmk_hybrid *p)
{
    return sizeof(float) * head_vs(p->Dk, p->s, p->W) + sizeof(int64_t) * (size_t)(p->s + 2 * p->W);
}

/* The body's rows per CTA: 64, or fewer when the window's logits would not fit; 0: none fit. */
static int body_rows(const lmk_hybrid *p, size_t optin)
{
    for (int qb = 64; qb >= 16; qb /= 2)
        if (lmk_hybrid_body_smem(p, qb) <= optin)
            return qb;
    return 0;
}

extern "C" lm_status lmk_hybrid_check(const lmk_hybrid *p)
{
    if (p->Hq > LMK_MAX_HYBRID_HEADS || p->Hq > 65535 || p->B > 65535 || (int64_t)p->B * p->Hkv > 65535)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid: at most %d query heads, 65535 batch rows and "
                         "batch x kv heads (got %d, %d, %d)", LMK_MAX_HYBRID_HEADS, p->Hq, p->B, p->Hkv);
    if (p->Dk > 256 || p->Dv > 256)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid: head dims at most 256 (got %d, %d)", p->Dk, p->Dv);
    const size_t optin = (size_t)optin_smem();
    if (head_smem(p) > optin || !body_rows(p, optin))
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid: the window's logits (W = %lld, s = %lld) do not "
                         "fit the GPU's %zu bytes of shared memory even 16 queries at a time",
                         (long long)p->W, (long long)p->s, optin);
    return LM_OK;
}

extern "C" lm_status lmk_hybrid_launch(const lmk_hybrid *p, lmk_hybrid_kind kind, void *stream)
{
    cudaStream_t s = (cudaStream_t)stream;
    lm_status st = lmk_hybrid_check(p);
    if (st)
        return st;
    if (kind == LMK_HYBRID_ZSUM || kind == LMK_HYBRID_FOLD || kind == LMK_HYBRID_RING || kind == LMK_HYBRID_SINKS)
        return lmk::hybrid_parts_launch(*p, kind, s);
    if (p->r1 <= p->r0)
        return LM_OK;
    if (kind == LMK_HYBRID_HEAD) {
        const size_t smem = head_smem(p);
        LMI_CUDA_TRY(cudaFuncSetAttribute(head_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        head_kernel<<<dim3((unsigned)(p->r1 - p->r0), (unsigned)p->Hq, (unsigned)p->B), THREADS, smem, s>>>(*p);
        LMI_CUDA_TRY(cudaGetLastError());
        return LM_OK;
    }
    const size_t optin = (size_t)optin_smem();
    if (lmk::hybrid_body_takes(*p, optin)) /* registers (hybrid_body.cu) */
        return lmk::hybrid_body_launch(*p, s);
    lmk_hybrid q = *p;
    q.qb = body_rows(p, optin);
    const size_t smem = lmk_hybrid_body_smem(&q, q.qb);
    const int dvp = (p->Dv + 15) / 16 * 16;
    if (dvp <= 64)
        return launch_body<64>(q, smem, s);
    if (dvp <= 128)
        return launch_body<128>(q, smem, s);
    return launch_body<256>(q, smem, s);
}
