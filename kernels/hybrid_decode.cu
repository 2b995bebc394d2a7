/*
 * hybrid_decode.cu - one hybrid attention decode step (docs/DESIGN.md
 * §9.2) for every (batch row, kv head), in place on the state:
 *   t = the row's position, the largest |window_pos| of its slots (read on the
 *       device: a replayed CUDA graph continues where the state is);
 *   the ring slot s + t % W, when it holds position t - W, leaves the window:
 *       folded into S, z (fp32, in the same pass that reads S out);
 *   the token goes to sink slot t (t < s) or to that ring slot;
 *   each query head of the group: softmax over the slots that hold keys (the
 *       new token included), phi(q) S and phi(q).z, one division.
 * The step's latency is its chain of memory round trips, so everything it
 * reads whatever the position is goes out at once: the positions, z, the
 * window's keys and this CTA's value columns to shared memory by cp.async,
 * the first state rows, q, k and v to registers; the leaving slot is then
 * read from the staged copy. Two block barriers follow (logits with phi(q) S;
 * numerators). A window wider than one tile of shared memory (SMEM_BUDGET)
 * is read tile by tile with the softmax's max running.
 * As kernels/decode.cu: on sm_90, while (row, kv head) pairs are fewer than
 * 4 x SMs, the value columns of a head are spread over a cluster of up to 8
 * CTAs (else one CTA per pair); every CTA reads z, the positions and the
 * keys, arrives at the cluster barrier once it has, and rank 0 waits on it
 * only to write them back at the end (each CTA writes its own columns of S
 * and of the slot's value). Query heads go in blocks of 4. Where the window
 * fits one tile and a pass takes every query head of the group, the step is
 * split over the cluster instead (hdecode_split_kernel): each CTA stages and
 * scores a quarter of the slots and pushes its logits into every CTA's shared
 * memory. No allocation, no host sync: graph-capturable.
 * Pool rows (lm_pool_decode on a hybrid pool): row b continues the slot named
 * in device memory, or in a table passed by value (the length-1 sequences of
 * a hybrid pool's varlen prefill: token, slot, fresh), whose five parts sit
 * at their own slot strides; a padding row leaves at once, and the row's
 * admission (range, license limit, the slot's position counted in) is
 * decode.cu's (pool_row.cuh). One kernel body for both (Row, row_of below).
 * Measured (H100, 32 heads of 128, W = 64, s = 4, in a graph; bench/NOTES.md):
 * 35-37 us a step with one slot per warp round; 19.3 us with rounds of slots;
 * 12.6-13.1 us with a chain of five round trips behind nine barriers
 * (positions, leaving slot, keys, S rows, values); staged at once 14.1 us
 * (6,100 instructions a warp: the staging's index arithmetic, a warp's five
 * shuffles a slot); with the logits 8 lanes a slot, ex2 and the geometry from
 * the host 11.4 us; staging without per-piece arithmetic 11.3 us (12.97 us
 * before the rewrite, same run). A graph of one trivial kernel replays in
 * 3.6-4.6 us on that machine. 512 threads with TMA bulk copies measured 18.3
 * us (ncu: SMs active 16.4K of 38.7K cycles): not kept. Split over the
 * cluster: 9.8-10.1 us against 11.2-11.5 for the tiled step in the same call,
 * 9.7 / 9.9 us at 4K / 128K contexts in hybrid_bench.py (2026-12-07). Target
 * <= 10 us.
 */
#include "cluster_launch.cuh"
#include "hybrid.cuh"
#include "pool_row.cuh"

#include <cooperative_groups.h>
#include <cstdlib>

namespace {

using lmk::ex2_approx;
using lmk::hload;
using lmk::hstore;
using lmk::phi_precise;

constexpr int THREADS = 256;
constexpr int LPS = 8;               /* lanes a slot in the logits (a quarter-warp: 128 bytes of key a read) */
constexpr int SPR = THREADS / LPS;   /* slots a round of the logits */
constexpr int NR = 4;                /* rows of S whose loads are in flight before any is used */
constexpr float LOG2E = 1.44269504f; /* logits are kept in log2 units: weights by ex2 */
/* Query heads per pass: GB = 4, or 1 when a kv head serves one query head
 * (no GQA: four passes' worth of registers and reductions would be idle). */
inline int heads_per_pass(const lmk_hybrid_decode &p) { return p.Hq == p.Hkv ? 1 : 4; }
/* Shared memory a CTA may take (the window's slots in tiles of as many as fit):
 * two CTAs a Hopper SM when the step has one CTA per (row, kv head). */
constexpr size_t SMEM_BUDGET = 112 * 1024;

/* The launch's geometry, sized on the host (plan) so that the kernel divides
 * by little of it: CTAs a (row, kv head) and this CTA's value columns, the
 * thread groups (phi(q) S: CG groups of 4 columns by RG groups of rows; the
 * numerators: SG groups of slots by cols columns), the staged keys' pitch
 * (Dk rounded up to 16 bytes), and where shared memory holds what (floats
 * from its start, every part 16-byte aligned). */
struct Geo {
    int nvb, NT, ntiles, cols, CG, RG, SG, KP, G;
    int keys, vals, zs, zn, knew, vnew, qr, phq, lg, red, red2, pos, mx, total;
    int split, share, fk, cf; /* split: hdecode_split_kernel runs; the split step's (split_geometry): slots a CTA, phi(k_r), phi(q).phi(k_r) */
};

inline int up4(int x) { return (x + 3) / 4 * 4; }

Geo geometry(const lmk_hybrid_decode &p, int GB, int nvb, int NT)
{
    Geo g;
    const int ns = p.s + p.W;
    g.split = 0, g.share = g.fk = g.cf = -1;
    g.nvb = nvb, g.NT = NT, g.ntiles = (ns + NT - 1) / NT, g.cols = (p.Dv + nvb - 1) / nvb, g.CG = (g.cols + 3) / 4;
    g.RG = THREADS / g.CG, g.SG = g.cols < THREADS ? THREADS / g.cols : 1, g.KP = up4(p.Dk), g.G = p.Hq / p.Hkv;
    const int C1 = g.cols + 1;
    g.keys = 0, g.vals = g.keys + up4(NT * g.KP), g.zs = g.vals + up4(NT * g.cols), g.zn = g.zs + up4(p.Dk);
    g.knew = g.zn + up4(p.Dk), g.vnew = g.knew + g.KP, g.qr = g.vnew + up4(g.cols), g.phq = g.qr + GB * g.KP;
    g.lg = g.phq + up4(GB * p.Dk), g.red = g.lg + up4(GB * NT), g.red2 = g.red + up4(g.RG * GB * C1);
    g.pos = g.red2 + up4(g.SG * C1 * GB), g.mx = g.pos + up4(ns), g.total = g.mx + up4(GB);
    return g;
}

/* The split step's layout (hdecode_split_kernel): this CTA's share of the
 * keys, every slot's value (this CTA's columns), the logits of every slot
 * (each written by the CTA whose share holds it), phi(k_r) and the scalars
 * phi(q).phi(k_r) sent by the leaving slot's owner. */
Geo split_geometry(const lmk_hybrid_decode &p, int GB, int nvb)
{
    const int ns = p.s + p.W;
    Geo g = geometry(p, GB, nvb, ns);
    const int C1 = g.cols + 1;
    g.share = (ns + nvb - 1) / nvb;
    g.keys = 0, g.vals = up4(g.share * g.KP), g.zs = g.vals + up4(ns * g.cols), g.knew = g.zs + up4(p.Dk);
    g.vnew = g.knew + g.KP, g.qr = g.vnew + up4(g.cols), g.phq = g.qr + GB * g.KP, g.lg = g.phq + up4(GB * p.Dk);
    g.fk = g.lg + up4(GB * ns), g.cf = g.fk + up4(p.Dk), g.red = g.cf + up4(GB), g.red2 = g.red + up4(g.RG * GB * C1);
    g.pos = g.red2 + up4(g.SG * C1 * GB), g.total = g.pos + up4(ns);
    g.zn = g.mx = -1, g.split = 1; /* zn, mx: the tiled step's only */
    return g;
}

/* The 4 floats at x, those of them below n (n >= 1; zeros past it). */
__device__ __forceinline__ float4 row4(const float *x, int n)
{
    return make_float4(x[0], 1 < n ? x[1] : 0.0f, 2 < n ? x[2] : 0.0f, 3 < n ? x[3] : 0.0f);
}

/* The 4 floats at x as one 16-byte load when they are there and aligned. */
__device__ __forceinline__ float4 row4v(const float *x, int n)
{
    return n >= 4 && ((uintptr_t)x & 15) == 0 ? *(const float4 *)x : row4(x, n);
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc)
{
    return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}

/* rows x n 4-byte words from global (row pitch sp words) to shared (pitch dp),
 * issued by the block and in flight until cp_async_wait: 16-byte pieces where
 * every row allows them, else words. */
__device__ __forceinline__ void stage(void *dst, int dp, const void *src, int64_t sp, int rows, int n)
{
    if (dp == n && sp == n) /* contiguous on both sides: one row */
        n *= rows, rows = 1;
    uint32_t *d = (uint32_t *)dst;
    const uint32_t *s = (const uint32_t *)src;
    const bool v16 = n % 4 == 0 && dp % 4 == 0 && sp % 4 == 0 && ((lmk::smem_addr(dst) | (uintptr_t)src) & 15) == 0;
    const int per = v16 ? n >> 2 : n; /* pieces a row */
    if (rows == 1) { /* no index arithmetic a piece: the pointers step */
        const int w = v16 ? 4 : 1;
        d += w * threadIdx.x, s += w * threadIdx.x;
        for (int x = threadIdx.x; x < per; x += THREADS, d += w * THREADS, s += w * THREADS)
            if (v16)
                lmk::cp_async16(d, s, 16);
            else
                lmk::cp_async4(d, s);
        return;
    }
    for (int x = threadIdx.x; x < rows * per; x += THREADS) {
        const int i = x / per, j = x - i * per;
        if (v16)
            lmk::cp_async16(d + i * dp + 4 * j, s + i * sp + 4 * j, 16);
        else
            lmk::cp_async4(d + i * dp + j, s + i * sp + j);
    }
}

/* The dot products of the GB query rows (qr, pitch KP) with the key at kk
 * (Dk floats), over a slot's LPS lanes (lane c reads 16 bytes at a time: a
 * quarter-warp reads 128 contiguous bytes) and summed over them: every lane
 * of the group gets them. Zeros where the slot holds no key (the shuffles
 * run regardless: every lane of the warp takes part). */
template <int GB>
__device__ __forceinline__ void slot_dots(const float *qr, int KP, const float *kk, int Dk, bool there, int c,
                                          float (&dot)[GB])
{
    const int Dk4 = Dk & ~3;
#pragma unroll
    for (int gi = 0; gi < GB; gi++)
        dot[gi] = 0.0f;
    if (there) {
        for (int c4 = 4 * c; c4 < Dk4; c4 += 4 * LPS) {
            const float4 kv = *(const float4 *)(kk + c4);
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
                dot[gi] = dot4(*(const float4 *)(qr + gi * KP + c4), kv, dot[gi]);
        }
        if (Dk4 + c < Dk)
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
                dot[gi] = fmaf(qr[gi * KP + Dk4 + c], kk[Dk4 + c], dot[gi]);
    }
#pragma unroll
    for (int gi = 0; gi < GB; gi++)
#pragma unroll
        for (int o = 1; o < LPS; o *= 2)
            dot[gi] += __shfl_xor_sync(0xffffffffu, dot[gi], o);
}

/* This thread's phi(q) S partials (columns e .. e + 3 of the CTA's, those
 * below Dv) and, from column group 0, phi(q).z as column cols: row group
 * rg's row of red, for the numerators to sum. */
template <int GB>
__device__ __forceinline__ void put_partials(float *red, int rg, int cols, int e, int Dv, bool z,
                                             const float (&acc)[GB][4], const float (&accz)[GB])
{
#pragma unroll
    for (int gi = 0; gi < GB; gi++) {
        float *o = red + ((size_t)rg * GB + gi) * (cols + 1);
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (e + u < Dv)
                o[e + u] = acc[gi][u];
        if (z)
            o[cols] = accz[gi];
    }
}

/* The row's position: the largest |code| of its ns slots' positions (each
 * warp reduces them itself: no barrier; codes are int32). */
__device__ __forceinline__ int row_position(const int *pos, int ns)
{
    int tmax = 0;
    for (int x = threadIdx.x % 32; x < ns; x += 32)
        tmax = max(tmax, abs(pos[x]));
    return (int)__reduce_max_sync(0xffffffffu, (unsigned)tmax);
}

/* The new token's key (all Dk) and value (this CTA's Dv columns from e0; zeros
 * when masked) into shared memory. */
__device__ __forceinline__ void load_token(const lmk_hybrid_decode &p, int64_t x0, int hk, int e0, int Dv, bool masked,
                                           float *knew, float *vnew)
{
    for (int d = threadIdx.x; d < p.Dk; d += THREADS)
        knew[d] = hload(p.k, p.dtype, x0 * p.sk[0] + hk * p.sk[1] + d);
    for (int c = threadIdx.x; c < Dv; c += THREADS)
        vnew[c] = masked ? 0.0f : hload(p.v, p.dtype, x0 * p.sv[0] + hk * p.sv[1] + e0 + c);
}

/* Numerator item (slot group sg, column ve)'s window sums over slots sg,
 * sg + SG, .. below n: w += gamma 2^(l - m) v and dn += the weights, l the
 * slot's logit (lg, pitch lp a head; -inf: no key), v its value (vals, pitch
 * cols; the new token's, vnew, at slot tj). */
template <int GB>
__device__ __forceinline__ void window_sums(const float *lg, int lp, const float *vals, int cols, const float *vnew,
                                            int tj, int ve, int Dv, int sg, int SG, int n, const float (&gam)[GB],
                                            const float (&m)[GB], float (&w)[GB], float (&dn)[GB])
{
#pragma unroll(GB == 1 ? 4 : 1) /* independent slots in flight; GB = 4 has four heads' */
    for (int j = sg; j < n; j += SG) {
        const float vv = ve >= Dv ? 0.0f : j == tj ? vnew[ve] : vals[j * cols + ve];
#pragma unroll
        for (int gi = 0; gi < GB; gi++) {
            const float l = lg[gi * lp + j];
            const float a = l > -INFINITY ? gam[gi] * ex2_approx(l - m[gi]) : 0.0f;
            w[gi] += a != 0.0f ? a * vv : 0.0f; /* a slot never written may hold anything */
            dn[gi] += a;
        }
    }
}

/* Item (sg, column ve)'s share of the linear part: the phi(q) S partials
 * (red's column ve) and phi(q).z (column cols) of row groups sg, sg + SG, ..
 * below RG (put_partials' rows, pitch C1 = cols + 1), added to w and dn. */
template <int GB>
__device__ __forceinline__ void add_partials(const float *red, int cols, int C1, int ve, int sg, int SG, int RG,
                                             float (&w)[GB], float (&dn)[GB])
{
    for (int gr = sg; gr < RG; gr += SG)
#pragma unroll
        for (int gi = 0; gi < GB; gi++) {
            w[gi] += red[((size_t)gr * GB + gi) * C1 + ve];
            dn[gi] += red[((size_t)gr * GB + gi) * C1 + cols];
        }
}

/* The outputs of query heads gb .. gb + GB - 1 (those below G) over this
 * CTA's Dv columns from e0: the SG slot groups' numerators and weight sums
 * (red2: item (sg, column) a GB-vector, then the SG weight sums) added up. */
template <int GB>
__device__ __forceinline__ void store_out(const lmk_hybrid_decode &p, const float *red2, int SG, int cols, int Dv,
                                          int G, int gb, int64_t x0, int hk, int e0)
{
#pragma unroll
    for (int gi = 0; gi < GB; gi++)
        for (int ee = threadIdx.x; ee < Dv && gb + gi < G; ee += THREADS) {
            float num = 0.0f, den = 0.0f;
            for (int sg = 0; sg < SG; sg++) {
                num += red2[(size_t)(sg * cols + ee) * GB + gi];
                den += red2[(size_t)(SG * cols + sg) * GB + gi];
            }
            hstore(p.out, p.dtype, x0 * p.so[0] + (hk * G + gb + gi) * p.so[1] + e0 + ee, num / (den + p.eps));
        }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* v into float at of every CTA's shared memory in the cluster (peers: each
 * rank's mapping of it, the first nvb of them used; the split step's). */
__device__ __forceinline__ void to_cluster(float *const (&peers)[8], int nvb, int at, float v)
{
#pragma unroll
    for (int k = 0; k < 8; k++)
        if (k < nvb)
            peers[k][at] = v;
}
#endif

/* Floats ordered as ints (for atomicMax on shared memory), and back. */
__device__ __forceinline__ int ordered(float x)
{
    const int i = __float_as_int(x);
    return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float unordered(int i)
{
    return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff);
}

/* What a CTA's row is: its token (row of q, k, v, out), its slot (or batch
 * row of contiguous buffers), whether that slot starts empty (its parts
 * emptied by the caller first: only its position restarts), whether it is a
 * pool's slot. */
struct Row {
    int64_t tok;
    int slot;
    bool fresh, pool;
};

__host__ __device__ __forceinline__ const lmk_hybrid_decode &base(const lmk_hybrid_decode &p) { return p; }
__host__ __device__ __forceinline__ const lmk_hybrid_decode &base(const lmk_hybrid_decode_table &p) { return p.d; }

__device__ __forceinline__ Row row_of(const lmk_hybrid_decode &p, int b)
{
    return Row{ b, p.slots ? p.slots[b] : b, false, p.slots != nullptr };
}

__device__ __forceinline__ Row row_of(const lmk_hybrid_decode_table &p, int b)
{
    return Row{ p.row[b].tok, p.row[b].slot, p.row[b].fresh != 0, true };
}

/* Whether the step runs row b (CTA vb of kv head hk): always for contiguous
 * buffers; a pool's row not when it is padding or refused (decode.cu's
 * admission, pool_row.cuh: range, license limit, the slot's position). */
__device__ __forceinline__ bool admitted(const lmk_hybrid_decode &p, const Row &row, int b, int vb, int hk, int nvb)
{
    const lmk::PoolRows pr{ p.nslots, p.pos, p.arrive, p.limit, p.status };
    return !row.pool || (!lmk::pool_padding(pr, row.slot, b, vb == 0 && hk == 0) &&
                         lmk::pool_admit(pr, row.slot, row.fresh, b, vb == 0 && hk == 0, p.Hkv * nvb));
}

/* Where (row, kv head hk)'s state parts start: batch row row.slot of the
 * contiguous buffers, or a pool's slot at its slot strides. */
struct Parts {
    float *S, *z, *wk, *wv;
    int32_t *wp;
};

__device__ __forceinline__ Parts parts_of(const lmk_hybrid_decode &p, const Row &row, int hk)
{
    const int64_t at = row.slot, Dk = p.Dk, Dv = p.Dv, ns = p.s + p.W;
    return Parts{ p.S + (row.pool ? at * p.S_slot : at * p.Hkv * Dk * Dv) + hk * Dk * Dv,
                  p.z + (row.pool ? at * p.z_slot : at * p.Hkv * Dk) + hk * Dk,
                  p.win_k + (row.pool ? at * p.wk_slot : at * p.Hkv * ns * Dk) + hk * ns * Dk,
                  p.win_v + (row.pool ? at * p.wv_slot : at * p.Hkv * ns * Dv) + hk * ns * Dv,
                  p.win_pos + (row.pool ? at * p.wp_slot : at * p.Hkv * ns) + hk * ns };
}

/* Query heads gb .. gb + GB - 1 of kv head hk (zeros past the G of its
 * group): raw at the keys' pitch KP (the logits read 16 bytes at a time) and
 * through phi. */
template <int GB>
__device__ __forceinline__ void load_queries(const lmk_hybrid_decode &p, int64_t x0, int hk, int G, int gb, int KP,
                                             float *qr, float *phq)
{
#pragma unroll
    for (int gi = 0; gi < GB; gi++)
        for (int d = threadIdx.x; d < p.Dk; d += THREADS) {
            const float x = gb + gi < G ? hload(p.q, p.dtype, x0 * p.sq[0] + (hk * G + gb + gi) * p.sq[1] + d) : 0.0f;
            qr[gi * KP + d] = x;
            phq[gi * p.Dk + d] = phi_precise(x, p.feature_map);
        }
}

template <bool CLUSTER, int GB, class P>
__global__ void __launch_bounds__(THREADS, 2) hdecode_kernel(const __grid_constant__ P pp, const __grid_constant__ Geo g)
{
    extern __shared__ __align__(16) float sm[];
    const lmk_hybrid_decode &p = base(pp);
    const int Dk = p.Dk, G = g.G, ns = p.s + p.W, tid = threadIdx.x, nvb = g.nvb, NT = g.NT, KP = g.KP;
    const int cols = g.cols, CG = g.CG, RG = g.RG, SG = g.SG, C1 = cols + 1;
    const int vb = blockIdx.x % nvb, b = blockIdx.x / nvb / p.Hkv, hk = blockIdx.x / nvb % p.Hkv;
    /* The row's state: batch row b of contiguous buffers, or a pool's slot. */
    const Row row = row_of(pp, b);
    if (!admitted(p, row, b, vb, hk, nvb))
        return; /* the same for every CTA of the row: no CTA of a cluster reaches its barrier */
    const int64_t x0 = row.tok; /* which token (row of q, k, v, out) */
    const Parts pt = parts_of(p, row, hk);
    float *const Sh = pt.S, *const zh = pt.z, *const wk = pt.wk, *const wv = pt.wv;
    int32_t *const wp = pt.wp;
    const int e0 = vb * cols, Dv = cols < p.Dv - e0 ? cols : p.Dv - e0; /* this CTA's columns [e0, e0 + Dv) */
    float *const keys = sm + g.keys, *const vals = sm + g.vals, *const zs = sm + g.zs, *const zn = sm + g.zn;
    float *const vnew = sm + g.vnew, *const qr = sm + g.qr, *const phq = sm + g.phq;
    float *const lg = sm + g.lg, *const red = sm + g.red, *const red2 = sm + g.red2;
    int *const pos = (int *)(sm + g.pos), *const mx = (int *)(sm + g.mx);
    const int cg = tid % CG, rg = tid / CG, e = 4 * cg;
    const bool srows = rg < RG && e < Dv; /* a thread of phi(q) S */
    float *const S = Sh + e0;

    /* Everything the step reads whatever the position is, in flight at once:
     * the positions, z, the first tile of the window's keys and of its values
     * (this CTA's columns) by cp.async; the first NR state rows of this
     * thread, the query rows of the first pass, the new key and value into
     * registers (and from them to shared memory). */
    const int nt0 = ns < NT ? ns : NT;
    stage(pos, ns, wp, ns, 1, ns);
    stage(zs, Dk, zh, Dk, 1, Dk);
    stage(keys, KP, wk, Dk, nt0, Dk);
    stage(vals, cols, wv + e0, p.Dv, nt0, Dv);
    lmk::cp_async_commit();
    float4 rows[NR];
    auto load_rows = [&](int d0) {
#pragma unroll
        for (int u = 0; u < NR; u++) {
            const int d = d0 + u * RG;
            rows[u] = srows && d < Dk ? row4v(S + (int64_t)d * p.Dv + e, Dv - e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    };
    load_rows(rg);
    const bool masked = p.mask && p.mask[x0 * p.mask_s0];
    /* Query rows at the keys' pitch (the logits read them 16 bytes at a time). */
    auto load_q = [&](int gb) {
        load_queries<GB>(p, x0, hk, G, gb, KP, qr, phq);
        if (tid < GB)
            mx[tid] = ordered(-INFINITY);
    };
    load_q(0);
    load_token(p, x0, hk, e0, Dv, masked, sm + g.knew, vnew);
    lmk::cp_async_wait<0>();
    __syncthreads();

    /* The position (row_position); the ring slot s + t % W, when it holds
     * position t - W, leaves the window (folded into S and z). Its key and
     * value are in the staged tile when it is the first one's (every pass
     * starts at tile 0), else read from the state. */
    const int t = row_position(pos, ns);
    const int r = p.s + t % p.W, target = t < p.s ? t : r;
    const bool fold = t - p.W >= p.s && pos[r] == t - p.W + 1;
    const float *const kr = r < NT ? keys + r * KP : wk + (int64_t)r * Dk;
    const float *const vr = r < NT ? vals + r * cols : wv + (int64_t)r * p.Dv + e0;
    const int ntiles = g.ntiles;
    const float scale2 = p.scale * LOG2E;

    for (int gb = 0; gb < G; gb += GB) {
        if (gb) {
            load_q(gb);
            __syncthreads();
        }
        float gam[GB], mprev[GB];
#pragma unroll
        for (int gi = 0; gi < GB; gi++)
            gam[gi] = gb + gi < G ? p.gamma[hk * G + gb + gi] : 0.0f, mprev[gi] = -INFINITY;
        for (int t0 = 0; t0 < ns; t0 += NT) {
            const int nt = ns - t0 < NT ? ns - t0 : NT;
            const bool last = t0 + NT >= ns;
            if (ntiles > 1 && (gb || t0)) { /* the tile replaces the last one (the first is staged) */
                stage(keys, KP, wk + (int64_t)t0 * Dk, Dk, nt, Dk);
                stage(vals, cols, wv + (int64_t)t0 * p.Dv + e0, p.Dv, nt, Dv);
                lmk::cp_async_commit();
                lmk::cp_async_wait<0>();
                __syncthreads();
            }
            /* phi(q) S_new over this CTA's columns (S_new = S + phi(k_r) v_r^T
             * with the fold, stored in the first pass), and phi(q) z_new as
             * column cols, into red for the numerators to sum; first, while
             * the rows staged in registers hold them (before the logits'
             * registers are live). */
            if (t0 == 0 && srows) {
                float acc[GB][4] = {}, accz[GB] = {};
                float4 vo = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (fold)
                    vo = row4(vr + e, Dv - e);
                if (gb)
                    load_rows(rg);
                for (int d0 = rg; d0 < Dk; d0 += NR * RG) {
#pragma unroll
                    for (int u = 0; u < NR; u++) {
                        const int d = d0 + u * RG;
                        if (d >= Dk)
                            break;
                        float4 sv = rows[u];
                        const float fk = fold ? phi_precise(kr[d], p.feature_map) : 0.0f;
                        if (gb == 0 && fold) {
                            float *row = S + (int64_t)d * p.Dv + e;
                            sv.x += fk * vo.x, sv.y += fk * vo.y, sv.z += fk * vo.z, sv.w += fk * vo.w;
                            row[0] = sv.x;
                            if (e + 1 < Dv) row[1] = sv.y;
                            if (e + 2 < Dv) row[2] = sv.z;
                            if (e + 3 < Dv) row[3] = sv.w;
                        }
                        const float znd = zs[d] + fk;
                        if (gb == 0 && cg == 0)
                            zn[d] = znd; /* z_new, written back after the cluster's barrier */
#pragma unroll
                        for (int gi = 0; gi < GB; gi++) {
                            const float qd = phq[gi * Dk + d];
                            acc[gi][0] += qd * sv.x, acc[gi][1] += qd * sv.y;
                            acc[gi][2] += qd * sv.z, acc[gi][3] += qd * sv.w;
                            accz[gi] += qd * znd;
                        }
                    }
                    if (d0 + NR * RG < Dk)
                        load_rows(d0 + NR * RG);
                }
                put_partials<GB>(red, rg, cols, e, Dv, cg == 0, acc, accz);
            }
            /* Logits (log2 units) of the tile's slots that hold a key: LPS
             * lanes a slot, each 16 bytes of the key at a time (a quarter-warp
             * reads 128 contiguous bytes), the GB query heads from one read;
             * the target slot is the new token. Each head's running max on mx. */
            for (int j0 = 0; j0 < nt; j0 += SPR) {
                const int j = j0 + tid / LPS, c = tid % LPS, sl = t0 + j;
                const bool there = j < nt && (sl == target ? !masked : pos[sl] > 0);
                float dot[GB];
                slot_dots<GB>(qr, KP, sm + (sl == target ? g.knew : g.keys + j * KP), Dk, there, c, dot);
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    const float l = there && gb + gi < G ? dot[gi] * scale2 : -INFINITY;
                    if (c == 0 && j < nt) {
                        lg[gi * NT + j] = l;
                        if (l > -INFINITY)
                            atomicMax(&mx[gi], ordered(l));
                    }
                }
            }
            __syncthreads();
            if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                /* This CTA has read (and consumed) the positions, keys and z
                 * that rank 0 rewrites at the end: relaxed, as nothing of its
                 * own needs ordering before the barrier. */
                if (gb + GB >= G && last)
                    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
            }
            /* The numerators of the tile: item (sg, column) sums slots sg,
             * sg + SG, .. of the tile (weights gamma 2^(l - m), m the running
             * max: the sums so far rescaled to it; column 0 also sums the
             * weights) and, after the last tile, the phi(q) S partials of row
             * groups sg, sg + SG, ... */
            float m[GB], f[GB];
#pragma unroll
            for (int gi = 0; gi < GB; gi++) {
                m[gi] = unordered(mx[gi]);
                f[gi] = mprev[gi] > -INFINITY ? ex2_approx(mprev[gi] - m[gi]) : 0.0f;
                mprev[gi] = m[gi];
            }
            for (int x = tid; x < SG * cols; x += THREADS) {
                const int sg = x / cols, ve = x - sg * cols;
                float w[GB], dn[GB];
                float *const wden = red2 + (size_t)(SG * cols + sg) * GB;
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    w[gi] = t0 ? red2[x * GB + gi] * f[gi] : 0.0f;
                    dn[gi] = t0 && ve == 0 ? wden[gi] * f[gi] : 0.0f;
                }
                /* target - t0: the new token's slot in the tile */
                window_sums<GB>(lg, NT, vals, cols, vnew, target - t0, ve, Dv, sg, SG, nt, gam, m, w, dn);
                if (last)
                    add_partials<GB>(red, cols, C1, ve, sg, SG, RG, w, dn);
#pragma unroll
                for (int gi = 0; gi < GB; gi++) {
                    red2[x * GB + gi] = w[gi];
                    if (ve == 0)
                        wden[gi] = dn[gi];
                }
            }
            __syncthreads();
        }
        store_out<GB>(p, red2, SG, cols, Dv, G, gb, x0, hk, e0);
    }

    /* The state's new token, and z_new: rank 0 of a cluster writes what every
     * CTA of it read, once all have arrived. */
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
    }
    if (vb == 0) {
        for (int d = tid; d < Dk; d += THREADS) {
            wk[(int64_t)target * Dk + d] = masked ? 0.0f : sm[g.knew + d];
            zh[d] = zn[d];
        }
        if (tid == 0)
            wp[target] = masked ? -(t + 1) : t + 1;
    }
    for (int c = tid; c < Dv; c += THREADS)
        wv[(int64_t)target * p.Dv + e0 + c] = vnew[c];
}

/* The step split over its cluster (sm_90; every slot's value rows and the
 * whole window in one tile, all query heads in one pass, this thread's state
 * rows in registers): each CTA stages and scores only its share of the
 * slots and sends the logits to every CTA of the cluster (distributed shared
 * memory), so the four CTAs of a head no longer each read all 68 keys and
 * compute all 68 logits. The fold needs no S_new before the output:
 * phi(q) S_new = phi(q) S + (phi(q).phi(k_r)) v_r, so the leaving slot's owner
 * sends phi(k_r) and the scalar phi(q).phi(k_r) with its logits, the others
 * add it times v_r (staged: every slot's value rows are), and S_new = S +
 * phi(k_r) v_r^T is stored after the one cluster barrier from the rows still
 * in registers. Nothing is read from another CTA after that barrier, and
 * every read of the keys, positions and z comes before it: it is the step's
 * only cluster barrier. */
template <int GB, class P>
__global__ void __launch_bounds__(THREADS, 2) hdecode_split_kernel(const __grid_constant__ P pp, const __grid_constant__ Geo g)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) float sm[];
    const lmk_hybrid_decode &p = base(pp);
    const int Dk = p.Dk, G = g.G, ns = p.s + p.W, tid = threadIdx.x, nvb = g.nvb, KP = g.KP;
    const int cols = g.cols, CG = g.CG, RG = g.RG, SG = g.SG, C1 = cols + 1;
    const int vb = blockIdx.x % nvb, b = blockIdx.x / nvb / p.Hkv, hk = blockIdx.x / nvb % p.Hkv;
    const Row row = row_of(pp, b);
    if (!admitted(p, row, b, vb, hk, nvb))
        return; /* the same for every CTA of the row: no CTA of the cluster reaches its barrier */
    /* Another CTA's shared memory may be written only once it runs: this
     * CTA's arrival says so, waited for before the first logit is sent. */
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    const int64_t x0 = row.tok;
    const Parts pt = parts_of(p, row, hk);
    float *const Sh = pt.S, *const zh = pt.z, *const wk = pt.wk, *const wv = pt.wv;
    int32_t *const wp = pt.wp;
    const int e0 = vb * cols, Dv = cols < p.Dv - e0 ? cols : p.Dv - e0;
    const int j0 = vb * g.share, nj = ns - j0 < g.share ? ns - j0 : g.share; /* this CTA's slots [j0, j0 + nj) */
    float *const keys = sm + g.keys, *const vals = sm + g.vals, *const zs = sm + g.zs, *const knew = sm + g.knew;
    float *const vnew = sm + g.vnew, *const qr = sm + g.qr, *const phq = sm + g.phq, *const lg = sm + g.lg;
    float *const fk = sm + g.fk, *const cf = sm + g.cf, *const red = sm + g.red, *const red2 = sm + g.red2;
    int *const pos = (int *)(sm + g.pos);
    const int cg = tid % CG, rg = tid / CG, e = 4 * cg;
    const bool srows = rg < RG && e < Dv;
    float *const S = Sh + e0;

    /* Staged at once: positions, z, this CTA's keys, every slot's values
     * (this CTA's columns) by cp.async; the state rows, q, k and v. */
    stage(pos, ns, wp, ns, 1, ns);
    stage(zs, Dk, zh, Dk, 1, Dk);
    if (nj > 0)
        stage(keys, KP, wk + (int64_t)j0 * Dk, Dk, nj, Dk);
    stage(vals, cols, wv + e0, p.Dv, ns, Dv);
    lmk::cp_async_commit();
    float4 rows[NR];
#pragma unroll
    for (int u = 0; u < NR; u++) {
        const int d = rg + u * RG;
        rows[u] = srows && d < Dk ? row4v(S + (int64_t)d * p.Dv + e, Dv - e) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    const bool masked = p.mask && p.mask[x0 * p.mask_s0];
    load_queries<GB>(p, x0, hk, G, 0, KP, qr, phq);
    load_token(p, x0, hk, e0, Dv, masked, knew, vnew);
    lmk::cp_async_wait<0>();
    __syncthreads();

    const int t = row_position(pos, ns);
    const int r = p.s + t % p.W, target = t < p.s ? t : r;
    const bool fold = t - p.W >= p.s && pos[r] == t - p.W + 1;
    const float scale2 = p.scale * LOG2E;
    float *peers[8]; /* this CTA's shared memory as each CTA of the cluster maps it (nvb <= 8) */
#pragma unroll
    for (int k = 0; k < 8; k++)
        peers[k] = cooperative_groups::this_cluster().map_shared_rank(sm, k < nvb ? k : 0);

    /* phi(q) S and phi(q).z (the state before the fold) over this CTA's columns, into red. */
    if (srows) {
        float acc[GB][4] = {}, accz[GB] = {};
#pragma unroll
        for (int u = 0; u < NR; u++) {
            const int d = rg + u * RG;
            if (d >= Dk)
                break;
            const float4 sv = rows[u];
            const float zd = zs[d];
#pragma unroll
            for (int gi = 0; gi < GB; gi++) {
                const float qd = phq[gi * Dk + d];
                acc[gi][0] += qd * sv.x, acc[gi][1] += qd * sv.y, acc[gi][2] += qd * sv.z, acc[gi][3] += qd * sv.w;
                accz[gi] += qd * zd;
            }
        }
        put_partials<GB>(red, rg, cols, e, Dv, cg == 0, acc, accz);
    }
    /* The logits (log2 units) of this CTA's slots, LPS lanes a slot, sent to every CTA. */
    __syncwarp(); /* the .aligned wait: each warp converged after the rows' branch */
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
    for (int jj = 0; jj < nj; jj += SPR) {
        const int j = jj + tid / LPS, c = tid % LPS, sl = j0 + j;
        const bool there = j < nj && (sl == target ? !masked : pos[sl] > 0);
        float dot[GB];
        slot_dots<GB>(qr, KP, sl == target ? knew : keys + j * KP, Dk, there, c, dot);
#pragma unroll
        for (int gi = 0; gi < GB; gi++) {
            if (c == 0 && j < nj)
                to_cluster(peers, nvb, g.lg + gi * ns + sl, there && gi < G ? dot[gi] * scale2 : -INFINITY);
        }
    }
    /* The leaving slot's owner: phi(k_r) to every CTA, and phi(q).phi(k_r) a head (warp 0). */
    if (fold && r >= j0 && r < j0 + nj) {
        const float *kr = keys + (r - j0) * KP;
        for (int d = tid; d < Dk; d += THREADS)
            to_cluster(peers, nvb, g.fk + d, phi_precise(kr[d], p.feature_map));
        if (tid < 32) {
            float cd[GB] = {};
            for (int d = tid; d < Dk; d += 32) {
                const float f = phi_precise(kr[d], p.feature_map);
#pragma unroll
                for (int gi = 0; gi < GB; gi++)
                    cd[gi] = fmaf(phq[gi * Dk + d], f, cd[gi]);
            }
#pragma unroll
            for (int gi = 0; gi < GB; gi++) {
#pragma unroll
                for (int o = 16; o; o /= 2)
                    cd[gi] += __shfl_xor_sync(0xffffffffu, cd[gi], o);
                if (tid == 0)
                    to_cluster(peers, nvb, g.cf + gi, cd[gi]);
            }
        }
    }
    __syncwarp(); /* the barrier's .aligned form: each warp converged (warp 0 may have folded) */
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");

    /* Each head's max over every slot's logit (each warp for itself), then the
     * numerators as the tiled step's (item (sg, column)), with the linear
     * part's partials and the fold's (phi(q).phi(k_r)) v_r. */
    float m[GB], gam[GB], cfo[GB];
#pragma unroll
    for (int gi = 0; gi < GB; gi++) {
        float mm = -INFINITY;
        for (int x = tid % 32; x < ns; x += 32)
            mm = fmaxf(mm, lg[gi * ns + x]);
#pragma unroll
        for (int o = 16; o; o /= 2)
            mm = fmaxf(mm, __shfl_xor_sync(0xffffffffu, mm, o));
        m[gi] = mm, gam[gi] = gi < G ? p.gamma[hk * G + gi] : 0.0f, cfo[gi] = fold ? cf[gi] : 0.0f;
    }
    for (int x = tid; x < SG * cols; x += THREADS) {
        const int sg = x / cols, ve = x - sg * cols;
        float w[GB] = {}, dn[GB] = {};
        window_sums<GB>(lg, ns, vals, cols, vnew, target, ve, Dv, sg, SG, ns, gam, m, w, dn);
        add_partials<GB>(red, cols, C1, ve, sg, SG, RG, w, dn);
        if (sg == 0 && fold && ve < Dv)
#pragma unroll
            for (int gi = 0; gi < GB; gi++)
                w[gi] += cfo[gi] * vals[r * cols + ve], dn[gi] += cfo[gi];
#pragma unroll
        for (int gi = 0; gi < GB; gi++) {
            red2[x * GB + gi] = w[gi];
            if (ve == 0)
                red2[(size_t)(SG * cols + sg) * GB + gi] = dn[gi];
        }
    }
    __syncthreads();
    store_out<GB>(p, red2, SG, cols, Dv, G, 0, x0, hk, e0);

    /* The state: S_new = S + phi(k_r) v_r^T from the rows in registers (this
     * CTA's columns), z_new, the new token's key and position (rank 0) and
     * its value (this CTA's columns). */
    if (fold && srows) {
        const float4 vo = row4(vals + r * cols + e, Dv - e);
#pragma unroll
        for (int u = 0; u < NR; u++) {
            const int d = rg + u * RG;
            if (d >= Dk)
                break;
            const float f = fk[d];
            float *o = S + (int64_t)d * p.Dv + e;
            o[0] = rows[u].x + f * vo.x;
            if (e + 1 < Dv) o[1] = rows[u].y + f * vo.y;
            if (e + 2 < Dv) o[2] = rows[u].z + f * vo.z;
            if (e + 3 < Dv) o[3] = rows[u].w + f * vo.w;
        }
    }
    if (vb == 0) {
        for (int d = tid; d < Dk; d += THREADS) {
            wk[(int64_t)target * Dk + d] = masked ? 0.0f : knew[d];
            if (fold)
                zh[d] = zs[d] + fk[d];
        }
        if (tid == 0)
            wp[target] = masked ? -(t + 1) : t + 1;
    }
    for (int c = tid; c < Dv; c += THREADS)
        wv[(int64_t)target * p.Dv + e0 + c] = vnew[c];
#else
    (void)pp, (void)g;
#endif
}

template <bool CLUSTER, int GB, class P>
cudaError_t launch(const P &p, const Geo &g, cudaStream_t s)
{
    /* The split step runs only in clusters (plan: nvb > 1). */
    void (*const kernel)(P, Geo) = g.split ? hdecode_split_kernel<GB, P> : hdecode_kernel<CLUSTER, GB, P>;
    const size_t smem = sizeof(float) * (size_t)g.total;
    /* Only past the default 48 KB: inside a graph capture the step then
     * queues its launch and nothing else. */
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return e;
    }
    const unsigned blocks = (unsigned)((int64_t)base(p).B * base(p).Hkv * g.nvb);
    if (!CLUSTER) {
        kernel<<<blocks, THREADS, smem, s>>>(p, g);
        return cudaGetLastError();
    }
    return lmk::launch_clustered(kernel, blocks, THREADS, smem, s, (unsigned)g.nvb, p, g);
}

/* The launch's geometry for p, or the UNSUPPORTED status (with its reason)
 * of sizes the kernel cannot run. */
lm_status plan(const lmk_hybrid_decode *p, Geo *out)
{
    const int GB = heads_per_pass(*p);
    if (p->Hq > LMK_MAX_HYBRID_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: at most %d query heads (got %d)",
                         LMK_MAX_HYBRID_HEADS, p->Hq);
    lmk::DeviceCaps caps; /* cached per device: this is the decode step's hot path */
    LMI_CUDA_TRY(lmk::device_caps(&caps));
    const int nvb = lmk::decode_cluster(caps, (int64_t)p->B * p->Hkv, p->Dv); /* as the linear decode's */
    if ((p->Dv + nvb - 1) / nvb > 4 * THREADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: Dv %d too large", p->Dv);
    const int ns = p->s + p->W;
    const Geo g1 = geometry(*p, GB, nvb, 1);
    const size_t one = sizeof(float) * (size_t)g1.total;
    if (one > (size_t)caps.smem_optin)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda hybrid decode: W = %d, s = %d and head dims %d x %d need "
                         "%zu bytes of shared memory, the GPU gives %d", p->W, p->s, p->Dk, p->Dv, one,
                         caps.smem_optin);
    /* As many slots a tile as the budget holds (all of them when they fit;
     * the 16-byte alignment of each part may take a few floats more). */
    const size_t cap = SMEM_BUDGET < (size_t)caps.smem_optin ? SMEM_BUDGET : (size_t)caps.smem_optin;
    const size_t per = sizeof(float) * ((size_t)g1.KP + g1.cols + GB), budget = cap > one + 64 ? cap - 64 : one;
    int64_t fit = 1 + (int64_t)((budget - one) / per);
    /* LM_HYBRID_DECODE_TILE=n: at most n slots a tile (the tests' way to the
     * tiled path at small windows; read at every step). */
    const char *cap_env = getenv("LM_HYBRID_DECODE_TILE");
    const int tile_cap = cap_env ? atoi(cap_env) : 0;
    if (tile_cap >= 1 && tile_cap < fit)
        fit = tile_cap;
    *out = geometry(*p, GB, nvb, fit < ns ? (int)fit : ns);
    /* The split step where it applies: clusters, the window in one tile, one
     * pass of query heads, this thread's state rows all in registers, its
     * layout within the budget. LM_HYBRID_DECODE_SPLIT=0: the tiled step
     * always (read at each step: to compare the two on one build). */
    const char *split_env = getenv("LM_HYBRID_DECODE_SPLIT");
    if (nvb > 1 && fit >= ns && p->Hq / p->Hkv <= GB && p->Dk <= NR * out->RG &&
        !(split_env && split_env[0] == '0')) {
        const Geo gs = split_geometry(*p, GB, nvb);
        if (sizeof(float) * (size_t)gs.total <= cap)
            *out = gs;
    }
    return LM_OK;
}

template <class P> lm_status launch_any(const P &p, void *stream)
{
    Geo g;
    const lm_status st = plan(&base(p), &g);
    if (st)
        return st;
    const cudaStream_t s = (cudaStream_t)stream;
    const bool one = heads_per_pass(base(p)) == 1; /* the GB plan() sized shared memory for */
    LMI_CUDA_TRY(g.nvb > 1 ? (one ? launch<true, 1>(p, g, s) : launch<true, 4>(p, g, s))
                           : (one ? launch<false, 1>(p, g, s) : launch<false, 4>(p, g, s)));
    return LM_OK;
}

/* The table travels in the kernel's parameters: within CUDA 12.1+'s limit. */
static_assert(sizeof(lmk_hybrid_decode_table) + sizeof(Geo) <= 32764,
              "lmk_hybrid_decode_table exceeds the 32 KB parameter limit");

} // namespace

extern "C" lm_status lmk_hybrid_decode_check(const lmk_hybrid_decode *p)
{
    Geo g;
    return plan(p, &g);
}

extern "C" lm_status lmk_hybrid_decode_launch(const lmk_hybrid_decode *p, void *stream)
{
    return launch_any(*p, stream);
}

extern "C" lm_status lmk_hybrid_decode_table_launch(const lmk_hybrid_decode_table *p, void *stream)
{
    return launch_any(*p, stream);
}
