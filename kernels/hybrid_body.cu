/*
 * hybrid_body.cu - the window part of hybrid attention's prefill for bf16
 * calls of 16-byte rows and head dims 64 or 128, in the FlashAttention-2 form
 * (docs/DESIGN.md §9.3): logits, the running max, the weights and the output
 * accumulator in registers (mma.sync fragments, mma.cuh), instead of
 * hybrid_window.cu's body_kernel, which keeps the logits and the weights in
 * shared memory (110 KB per CTA: 8 warps per SM, a scalar softmax pass over
 * shared memory between barriers; bench/NOTES.md, "Hybrid body v3").
 * hybrid_window.cu's launcher picks this kernel where it applies and its
 * shared memory fits, unless LM_HYBRID_BODY=wmma (src/cuda_hybrid.c).
 *
 * Same grid and rows as body_kernel: one CTA of 4 warps per (64 query rows of
 * [r0, r1), query head, batch row); warp w owns rows 16w .. 16w + 15. Same
 * key list: the sinks j < ns (below every row's window), then the positions
 * bl .. tb. In shared memory, as bf16 with row pitches of D + 8 elements (so
 * the 8 rows an ldmatrix reads sit in 8 bank groups): the query tile, the key
 * list and the value list, the sinks padded to 16 rows so that each warp's
 * window positions start on a 16-row block. Q and K arrive by cp.async first;
 * pass A (the denominator, hybrid.cuh, shared with body_kernel: read from
 * the linear call's den where it wrote one) runs in the value area, then V
 * arrives behind the first chunk's Q K^T.
 * Per warp, over the 16-key blocks that can hold a window pair of its rows,
 * up to 4 at a time (a chunk): S = scale Q K^T (m16n8k16, fp32), masked per
 * element to the window (sinks j <= t - W, positions t - W < j <= t, keys
 * present); an online softmax (running max m per row, the accumulator and the
 * running sum rescaled by exp(m_old - m_new)): exact in the maths, since the
 * final weights are gamma exp(l - m_final); the weights exp(l - m) in fp32
 * split into bf16 hi + lo as P V's A operand, two products (a's one-bf16
 * rounding showed in the error bound of body_kernel: kept). gamma multiplies
 * the accumulator and the sum at the end. Rows with no key in their window
 * get zero weights (the max's -inf guarded: no NaN). The accumulator goes
 * through shared memory (the key and value area) to the output pass
 * (hybrid.cuh), which adds the linear numerator from out and divides.
 * Measured (H100, 32 heads of 128, W = 64, s = 4, bf16, the same call as the
 * WMMA body): 128K prefill 26.9 ms (WMMA body 38.7), 32K 7.0 ms (10.4); with
 * the denominator from the linear call (den) 9.87 ms (WMMA body 19.1). ncu at
 * 32K then: the body 1.30 ms, 43 % of its stall samples in the key and value
 * list loads' per-piece tests, 12 % in the logits' window test, 16 % in the
 * output pass: hence the positions' plain loads, the unmasked middle blocks
 * and the output's index math by shifts (round 2: 0.95 ms at 32K, 128K 8.1-
 * 8.7 ms); then the output pass's wait for the numerators it read from out
 * (~17 %): they are now copied into the query area (free once every warp
 * holds its query fragments) while the loop runs (bench/NOTES.md, "Hybrid
 * body v3, round 2" and "round 3").
 */
#include "hybrid.cuh"
#include "mma.cuh"

#include <type_traits>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int THREADS = 128; /* 4 warps */
constexpr int QB = 64;       /* query rows per CTA */
constexpr int NB = 4;        /* 16-key blocks per chunk of the online softmax */

__host__ __device__ constexpr int r16(int64_t x)
{
    return (int)((x + 15) / 16 * 16);
}

/* Shared memory of the kernel, computed alike on host and device: rows of
 * the key and value lists for at most s sinks (padded to 16) and W + QB - 1
 * positions (padded to 16); the value area also holds pass A's z (QB x Dk
 * fp32), the key and value areas together the output (QB x (Dv + 8) fp32). */
struct Layout {
    int nrow;                     /* rows of the key and value lists */
    size_t q, k, v, st, total;    /* byte offsets: query, keys, values, row stats + presence */
};

/* Row pitch (elements) of the query area: the query tile, then the copy of
 * the linear numerators read from out (+8: the rows an ldmatrix reads in 8
 * bank groups). */
template <int DK, int DV> constexpr int QNP = (DK > DV ? DK : DV) + 8;

template <int DK, int DV> __host__ __device__ inline Layout layout(int64_t W, int64_t s)
{
    Layout l;
    l.nrow = r16(s) + r16(W + QB - 1);
    l.q = 0; /* the query tile; later the copy of the linear numerators (pitch QNP) */
    l.k = lmk::al128((size_t)QB * QNP<DK, DV> * 2);
    const size_t vb = (size_t)l.nrow * (DV + 8) * 2, zb = (size_t)QB * DK * 4;
    l.v = lmk::al128(l.k + (size_t)l.nrow * (DK + 8) * 2);
    size_t end = l.v + (vb > zb ? vb : zb);
    const size_t ob = l.k + (size_t)QB * (DV + 8) * 4;
    end = end > ob ? end : ob;
    l.st = lmk::al128(end);
    l.total = lmk::al128(l.st + 2 * (size_t)QB * 4 + (size_t)l.nrow);
    return l;
}

template <int DK, int DV>
__global__ void __launch_bounds__(THREADS, 2) body_v3_kernel(const __grid_constant__ lmk_hybrid p)
{
    constexpr int QP = QNP<DK, DV>, KP = DK + 8, VP = DV + 8, OP = DV + 8;
    extern __shared__ __align__(128) unsigned char sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, hk = h / (p.Hq / p.Hkv);
    const int64_t ra = p.r0 + (int64_t)blockIdx.x * QB;
    const int nr = (int)(p.r1 - ra < QB ? p.r1 - ra : QB);
    const int64_t ta = p.P0 + ra, tb = ta + nr - 1;
    const int W = (int)p.W; /* the layout fitted shared memory: W is small */
    const Layout l = layout<DK, DV>(p.W, p.s);
    bf16 *Qs = (bf16 *)(sm + l.q), *Ks = (bf16 *)(sm + l.k), *Vs = (bf16 *)(sm + l.v);
    float *Z = (float *)(sm + l.v), *O = (float *)(sm + l.k);
    float *den = (float *)(sm + l.st), *lsum = den + QB;
    unsigned char *pres = (unsigned char *)(lsum + QB);

    /* The key list: sinks j < ns in rows [0, ns) (rows to nsp empty), then
     * positions bl + x in rows nsp + x, x < npos. */
    int64_t ns64 = tb - W + 1 < p.s ? tb - W + 1 : p.s;
    const int ns = (int)(ns64 > 0 ? ns64 : 0), nsp = r16(ns);
    const int64_t bl = ta - W + 1;
    const int npos = W + nr - 1, nrow = nsp + r16(npos);
    /* Row R of the list: the sinks by hybrid_piece16 (a slot of the state
     * when the call continues one); the positions are rows of the call (body
     * rows start at W + sh, so bl >= P0 + 1), contiguous at the token stride:
     * one cp.async a piece, tested only against the list's end and a mask
     * (the per-piece position and slot tests were 43 % of the body's stall
     * samples, bench/NOTES.md "Hybrid body v3, round 2"). */
    auto load_list = [&](bf16 *T, int pitch, bool values, auto per_c) {
        constexpr int per = decltype(per_c)::value;
        for (int x = threadIdx.x; x < nsp * per; x += THREADS) {
            const int R = x / per, pc = x % per;
            const bool present = lmk::hybrid_piece16(p, b, hk, R < ns ? R : -1, values, pc, T + R * pitch + pc * 8);
            if (!values && pc == 0)
                pres[R] = present;
        }
        const bf16 *src = (const bf16 *)(values ? p.v : p.k);
        const int64_t *st = values ? p.sv : p.sk;
        const int64_t c0 = bl - p.P0; /* the list's first position as a row of the call */
        src += b * st[0] + c0 * st[1] + hk * st[2];
        const uint8_t *mk = p.mask ? p.mask + b * p.mask_s[0] + c0 * p.mask_s[1] : nullptr;
        for (int x = threadIdx.x; x < (nrow - nsp) * per; x += THREADS) {
            const int i = x / per, pc = x % per;
            const bool present = i < npos && !(mk && mk[i * p.mask_s[1]]);
            lmk::cp_async16(T + (nsp + i) * pitch + pc * 8, present ? src + i * st[1] + pc * 8 : src, present ? 16 : 0);
            if (!values && pc == 0)
                pres[nsp + i] = present;
        }
    };

    /* Q and K (group 1), then pass A in the value area, then V (group 2). */
    {
        const bf16 *qg = (const bf16 *)p.q + b * p.sq[0] + ra * p.sq[1] + h * p.sq[2];
        constexpr int per = DK / 8;
        for (int x = threadIdx.x; x < QB * per; x += THREADS) {
            const int i = x / per, pc = x % per;
            lmk::cp_async16(Qs + i * QP + pc * 8, i < nr ? qg + i * p.sq[1] + pc * 8 : qg, i < nr ? 16 : 0);
        }
    }
    load_list(Ks, KP, false, std::integral_constant<int, DK / 8>());
    lmk::cp_async_commit();
    lmk::cp_async_wait<0>();
    __syncthreads();
    lmk::hybrid_den(p, b, h, hk, ra, nr, Z, DK, den,
                    [&](int i, int d) { return __bfloat162float(Qs[i * QP + d]); }); /* bf16 q: exact */
    __syncthreads(); /* z is dead: the value area is free */
    load_list(Vs, VP, true, std::integral_constant<int, DV / 8>());
    lmk::cp_async_commit();

    /* This warp's rows and the blocks that can hold a window pair of them. */
    const int wlo = 16 * warp, whi = 16 * warp + 15 < nr - 1 ? 16 * warp + 15 : nr - 1;
    const int nblk = nrow / 16;
    auto may = [&](int kb) -> bool {
        const int R0 = 16 * kb;
        if (wlo > whi)
            return false;
        if (R0 < nsp)
            return R0 < ns && R0 <= ta + whi - W;
        const int x0 = R0 - nsp;
        return x0 < npos && x0 <= whi + W - 1 && x0 + 15 >= wlo;
    };
    auto next = [&](int kb) {
        while (kb < nblk && !may(kb))
            kb++;
        return kb;
    };

    uint32_t qf[DK / 16][4];
#pragma unroll
    for (int ks = 0; ks < DK / 16; ks++)
        lmk::ldsm_a16(qf[ks], Qs + wlo * QP + 16 * ks, QP);
    /* Rows i0 = wlo + g and i0 + 8 of this thread; a sink R is in row i's
     * window when R <= ta + i - W (limits clamped to int). */
    const int i0 = wlo + g;
    int slim[2];
    for (int r = 0; r < 2; r++) {
        const int64_t x = ta + i0 + 8 * r - W;
        slim[r] = (int)(x < -1 ? -1 : x > (1 << 30) ? (1 << 30) : x);
    }
    const float sl2 = p.scale * 1.4426950408889634f; /* logits in log2 units: exp2 */

    /* S of 16-key block kb, scaled, -inf outside the window. */
    auto logits = [&](int kb, float (&c)[2][4]) {
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                c[n][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < DK / 16; ks++) {
            uint32_t kf[4];
            lmk::ldsm_b16_nmajor(kf, Ks + 16 * kb * KP + 16 * ks, KP);
            lmk::mma(c[0], qf[ks], kf[0], kf[1]);
            lmk::mma(c[1], qf[ks], kf[2], kf[3]);
        }
        /* Without a mask, a block of positions inside every window of the
         * warp's rows (the middle blocks of its band: 3 of 5 at W = 64) needs
         * no per-element test; rows past nr see zero queries and are not
         * written. */
        const int x0 = 16 * kb - nsp;
        if (!p.mask && x0 >= 0 && x0 >= whi && x0 + 15 <= wlo + W - 1) {
#pragma unroll
            for (int n = 0; n < 2; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    c[n][e] *= sl2;
            return;
        }
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int R = 16 * kb + 8 * n + 2 * t4 + (e & 1), r = e >> 1, i = i0 + 8 * r;
                const bool in = pres[R] && (R < nsp ? R <= slim[r] : R - nsp >= i && R - nsp - i < W);
                c[n][e] = in ? c[n][e] * sl2 : -INFINITY;
            }
    };

    float s[NB][2][4];
    int kbs[NB];
    int kb = next(0);
    auto gather = [&]() { /* the next chunk's blocks and their logits */
#pragma unroll
        for (int u = 0; u < NB; u++) {
            kbs[u] = kb < nblk ? kb : -1;
            if (kbs[u] >= 0) {
                logits(kb, s[u]);
                kb = next(kb + 1);
            }
        }
    };
    gather();
    lmk::cp_async_wait<0>();
    __syncthreads(); /* the values are in; every warp holds its query fragments */
    { /* the rows' linear numerators (from out) into the query area: they land during the loop */
        const bf16 *ng = (const bf16 *)p.out + b * p.so[0] + ra * p.so[1] + h * p.so[2];
        constexpr int per = DV / 8;
        for (int x = threadIdx.x; x < nr * per; x += THREADS) {
            const int i = x / per, pc = x % per;
            lmk::cp_async16(Qs + i * QP + pc * 8, ng + i * p.so[1] + pc * 8, 16);
        }
        lmk::cp_async_commit();
    }

    float acc[DV / 8][4];
#pragma unroll
    for (int n = 0; n < DV / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            acc[n][e] = 0.0f;
    float m[2] = { -INFINITY, -INFINITY }, sum[2] = { 0.0f, 0.0f };
    while (kbs[0] >= 0) {
        float mx[2] = { m[0], m[1] };
#pragma unroll
        for (int u = 0; u < NB; u++)
            if (kbs[u] >= 0)
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        mx[e >> 1] = fmaxf(mx[e >> 1], s[u][n][e]);
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.0f : mx[r]; /* no key yet: weights 0, no NaN */
            const float alpha = exp2f(m[r] - base[r]);   /* m = -inf: 0 (nothing accumulated) */
            m[r] = mx[r];
            sum[r] *= alpha;
#pragma unroll
            for (int n = 0; n < DV / 8; n++) {
                acc[n][2 * r] *= alpha;
                acc[n][2 * r + 1] *= alpha;
            }
        }
#pragma unroll
        for (int u = 0; u < NB; u++) {
            if (kbs[u] < 0)
                continue;
#pragma unroll
            for (int n = 0; n < 2; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[u][n][e] = exp2f(s[u][n][e] - base[e >> 1]);
                    sum[e >> 1] += s[u][n][e];
                }
            uint32_t ah[4], al[4];
            lmk::c_to_a_split(s[u][0], s[u][1], ah, al);
#pragma unroll
            for (int dp = 0; dp < DV / 16; dp++) {
                uint32_t vf[4];
                lmk::ldsm_b16_kmajor(vf, Vs + 16 * kbs[u] * VP + 16 * dp, VP);
                lmk::mma(acc[2 * dp], ah, vf[0], vf[1]);
                lmk::mma(acc[2 * dp], al, vf[0], vf[1]);
                lmk::mma(acc[2 * dp + 1], ah, vf[2], vf[3]);
                lmk::mma(acc[2 * dp + 1], al, vf[2], vf[3]);
            }
        }
        gather();
    }

    /* gamma, the row sums over the quad, the accumulator into O. */
    const float gamma = p.gamma[h];
    lmk::cp_async_wait<0>();
    __syncthreads(); /* every warp is done with the keys and values (O goes there); the numerators are in */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
        sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
        if (t4 == 0)
            lsum[i0 + 8 * r] = gamma * sum[r];
#pragma unroll
        for (int n = 0; n < DV / 8; n++)
            *(float2 *)(O + (i0 + 8 * r) * OP + 8 * n + 2 * t4) =
                make_float2(gamma * acc[n][2 * r], gamma * acc[n][2 * r + 1]);
    }
    __syncthreads();
    lmk::hybrid_out_vec<DV / 8>(p, b, h, ra, nr, O, OP, den, lsum, Qs, QP);
}

template <int DK, int DV> lm_status launch(const lmk_hybrid &p, cudaStream_t s)
{
    const size_t smem = layout<DK, DV>(p.W, p.s).total;
    LMI_CUDA_TRY(cudaFuncSetAttribute(body_v3_kernel<DK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    LMI_CUDA_TRY(cudaFuncSetAttribute(body_v3_kernel<DK, DV>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared));
    const dim3 grid((unsigned)((p.r1 - p.r0 + QB - 1) / QB), (unsigned)p.Hq, (unsigned)p.B);
    body_v3_kernel<DK, DV><<<grid, THREADS, smem, s>>>(p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

bool dim_ok(int d)
{
    return d == 64 || d == 128;
}

/* f(Dk, Dv) with the call's head dims (dim_ok) as std::integral_constant: the
 * one place they become template arguments. */
template <class F> auto with_dims(const lmk_hybrid &p, F f)
{
    using D64 = std::integral_constant<int, 64>;
    using D128 = std::integral_constant<int, 128>;
    if (p.Dk == 64)
        return p.Dv == 64 ? f(D64{}, D64{}) : f(D64{}, D128{});
    return p.Dv == 64 ? f(D128{}, D64{}) : f(D128{}, D128{});
}

size_t smem_of(const lmk_hybrid &p)
{
    return with_dims(p, [&](auto dk, auto dv) { return layout<decltype(dk)::value, decltype(dv)::value>(p.W, p.s).total; });
}

} // namespace

namespace lmk {

bool hybrid_body_takes(const lmk_hybrid &p, size_t optin)
{
    if (p.body_wmma || p.dtype != LM_BF16 || !dim_ok(p.Dk) || !dim_ok(p.Dv) || p.W > (1 << 20) || p.s > (1 << 20))
        return false;
    if (!rows16(p.q, p.sq, p.Dk) || !rows16(p.k, p.sk, p.Dk) || !rows16(p.v, p.sv, p.Dv) ||
        !rows16(p.out, p.so, p.Dv))
        return false;
    return smem_of(p) <= optin;
}

lm_status hybrid_body_launch(const lmk_hybrid &p, cudaStream_t s)
{
    lmk_hybrid q = p;
    q.qb = QB;
    return with_dims(p, [&](auto dk, auto dv) { return launch<decltype(dk)::value, decltype(dv)::value>(q, s); });
}

} // namespace lmk
