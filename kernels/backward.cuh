/*
 * backward.cuh - the core backward's device code (kernel and launch in
 * backward.cu): dq, dk, dv and the initial state's gradient, per CTA one
 * (batch row, kv head, segment of the sequence) covering the G query heads
 * of the group, 256 threads, all arithmetic in fp32 on CUDA cores.
 *
 * Math (as src/cpu_backward.c, whose top comment derives it), per chunk of n
 * tokens (local i, j; p = decay powers; Q = phi(q), K = phi(k), masked keys
 * K = V = 0; S, z the state before the chunk, R, r the adjoint after it):
 *   den_i = p^(i+1) Q_i.z + sum_{j<=i} A_ij,  A_ij = p^(i-j) Q_i.K_j
 *   num_i = p^(i+1) Q_i S + sum_{j<=i} A_ij V_j
 *   1/d_i = 1/(den_i + eps), dd_i = -(do_i.num_i) / d_i^2, dn_i = do_i / d_i
 *          (unnormalised: 1/d_i = scale, dd_i = 0)
 *   dQ_i = p^(i+1) (S dn_i + dd_i z) + sum_{j<=i} B_ij K_j,  B_ij = p^(i-j) (V_j.dn_i + dd_i)
 *   dK_j = p^(n-1-j) (R V_j + r) + sum_heads sum_{i>=j} B_ij Q_i
 *   dV_j = p^(n-1-j) R^T K_j + sum_heads sum_{i>=j} A_ij dn_i
 *   S <- p^n S + sum_j p^(n-1-j) K_j V_j^T,  R <- p^n R + sum_heads sum_i p^(i+1) Q_i dn_i^T
 * Bidirectional: S, z and R, r are totals, p = 1, no intra-chunk terms.
 * With a key padding mask, exponents count unmasked keys only (a masked key
 * is no step of the recurrence): p^(i-j) is p^(ex[i+1] - ex[j+1]), ex[i] the
 * unmasked keys among the chunk's rows 0..i-1 (Cta::exponents).
 *
 * Memory: the forward's state is needed at every chunk (dq, and d_t, do.o_t
 * of every token for dk, dv), and the adjoint too. Keeping fp32 states of
 * every 64-token chunk would cost Dk Dv / 16 bytes per token and kv head,
 * 4x the bytes of q, k, v and o together at Dk = Dv = 128; recomputing them
 * from one state per segment costs one extra pass of state updates per
 * direction (ABSORB kinds) and O(segments) states. So: a state per segment
 * start and an adjoint per segment end (segments sized to fill the GPU, not
 * by L: 2 x ~2 waves of CTAs x 66 KB at Dk = Dv = 128), S and R carried in
 * place in their segment's slot, and two floats per token and query head
 * (1/d, dd) that QUERIES writes for KEYS. Extra memory is O(B Hq L), far
 * under O(L E).
 *
 * Tiles: the chunk's rows live in shared memory as fp32 (q, k, v, do, two
 * accumulators, the C x C matrices A, B), pitches odd so that column walks
 * do not conflict; S or R stays in global memory (L2) and is read through a
 * staging tile of TK rows. Every product is one generic register-tiled
 * loop (mm) with its epilogue, each output element owned by one thread.
 * The chunk is 32 tokens (16 when Dk + Dv > 256, to fit 227 KB).
 * Measured: bench/NOTES.md (backward).
 */
#ifndef LM_BACKWARD_CUH
#define LM_BACKWARD_CUH

#include "feature_map.cuh"
#include "lm_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace lmk {
namespace bwd {

constexpr int THREADS = 256;
constexpr int TK = 32; /* state rows staged at once */

__host__ __device__ inline int round4(int x)
{
    return (x + 3) / 4 * 4;
}

__device__ inline int imin(int a, int b)
{
    return a < b ? a : b;
}

/* The shared-memory layout, in floats: chunk bc, head dims padded to 4. */
struct Shape {
    int bc, dk, dv, kp, vp, cp;
    int q, k, v, o, x1, x2, a, bm, t, z, zc, pw, ex, inv, dd, total;
};

__host__ __device__ inline Shape shape_of(int Dk, int Dv, int bc)
{
    Shape s;
    s.bc = bc, s.dk = round4(Dk), s.dv = round4(Dv);
    s.kp = s.dk + 1, s.vp = s.dv + 1, s.cp = bc + 1; /* odd pitches */
    int off = 0;
    s.q = off, off += bc * s.kp;  /* phi(q) of one query head */
    s.k = off, off += bc * s.kp;  /* phi(k), masked rows 0 */
    s.v = off, off += bc * s.vp;  /* v, masked rows 0 */
    s.o = off, off += bc * s.vp;  /* do, then dn */
    s.x1 = off, off += bc * s.vp; /* num (QUERIES), dV (KEYS) */
    s.x2 = off, off += bc * s.kp; /* S do (QUERIES), dK (KEYS) */
    s.a = off, off += bc * s.cp;
    s.bm = off, off += bc * s.cp;
    s.t = off, off += TK * s.vp;  /* staged rows of S or R */
    s.z = off, off += s.dk;       /* z or r */
    s.zc = off, off += s.dk;      /* its compensation */
    s.pw = off, off += bc + 1;    /* decay powers */
    s.ex = off, off += bc + 1;    /* decay exponents of the chunk's rows (ints) */
    s.inv = off, off += bc;
    s.dd = off, off += bc;
    s.total = off;
    return s;
}

__device__ inline float ld(const void *base, int64_t i, int dt)
{
    if (dt == LM_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    if (dt == LM_F16)
        return __half2float(((const __half *)base)[i]);
    return ((const float *)base)[i];
}

__device__ inline void st(void *base, int64_t i, int dt, float x)
{
    if (dt == LM_BF16)
        ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn(x);
    else if (dt == LM_F16)
        ((__half *)base)[i] = __float2half_rn(x);
    else
        ((float *)base)[i] = x;
}

/* s <- gn s + inc, Kahan-compensated when c is not NULL. */
__device__ inline void fold(float &s, float *c, float inc, float gn)
{
    if (!c) {
        s = s * gn + inc;
        return;
    }
    const float base = s * gn, y = inc - *c * gn, sum = base + y;
    *c = (sum - base) - y;
    s = sum;
}

/* epi(m, n, sum_k A(m, k) B(k, n)) for m < M, n < N, with A(m, k) =
 * A[m a0 + k a1], B(k, n) = B[k b0 + n b1]; a thread owns TM rows x TN
 * columns (m0 .. m0+TM-1 by n0, n0 + N/TN, ...), so neighbouring threads
 * read neighbouring columns of B and share the rows of A. */
template <int TM, int TN, class F>
__device__ inline void mm_tiles(int M, int N, int K, const float *A, int a0, int a1,
                                const float *B, int b0, int b1, F &epi)
{
    const int nt = N / TN, tiles = M / TM * nt;
    for (int t = threadIdx.x; t < tiles; t += THREADS) {
        const int m0 = t / nt * TM, n0 = t % nt;
        float acc[TM][TN];
        for (int r = 0; r < TM; r++)
            for (int c = 0; c < TN; c++)
                acc[r][c] = 0.0f;
        const float *ap = A + m0 * a0, *bp = B + n0 * b1;
        for (int k = 0; k < K; k++) {
            float a[TM], b[TN];
            for (int r = 0; r < TM; r++)
                a[r] = ap[r * a0 + k * a1];
            for (int c = 0; c < TN; c++)
                b[c] = bp[k * b0 + c * nt * b1];
            for (int r = 0; r < TM; r++)
                for (int c = 0; c < TN; c++)
                    acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        for (int r = 0; r < TM; r++)
            for (int c = 0; c < TN; c++)
                epi(m0 + r, n0 + c * nt, acc[r][c]);
    }
}

/* The same with the tile picked from the output size (M, N multiples of 4):
 * the same M, N always give the same owners. */
template <class F>
__device__ inline void mm(int M, int N, int K, const float *A, int a0, int a1, const float *B,
                          int b0, int b1, F epi)
{
    const int e = M * N;
    if (e >= 16 * THREADS)
        mm_tiles<4, 4>(M, N, K, A, a0, a1, B, b0, b1, epi);
    else if (e >= 8 * THREADS)
        mm_tiles<4, 2>(M, N, K, A, a0, a1, B, b0, b1, epi);
    else if (e >= 4 * THREADS)
        mm_tiles<2, 2>(M, N, K, A, a0, a1, B, b0, b1, epi);
    else
        mm_tiles<2, 1>(M, N, K, A, a0, a1, B, b0, b1, epi);
}

/* One CTA's job and its shared memory. */
struct Cta {
    const lmk_bwd &p;
    Shape s;
    int b, hk, seg, G;
    int64_t head, t_begin, t_end;
    float *S, *zg;    /* this segment's carry in global memory: [Dk][Dv], [Dk] */
    float *comp;      /* its compensation, or NULL */
    float *Q, *K, *V, *O, *X1, *X2, *A, *Bm, *T, *z, *zc, *pw, *inv, *dd;
    int *ex;

    __device__ Cta(const lmk_bwd &p_, int bc, float *sm) : p(p_), s(shape_of(p_.Dk, p_.Dv, bc))
    {
        const int64_t x = blockIdx.x;
        seg = p.seg0 + (int)(x % p.nseg);
        head = x / p.nseg;
        b = (int)(head / p.Hkv), hk = (int)(head % p.Hkv), G = p.Hq / p.Hkv;
        t_begin = (int64_t)seg * p.seg_len;
        t_end = t_begin + p.seg_len < p.L ? t_begin + p.seg_len : p.L;
        S = p.st.S + seg * p.st.seg_S + head * p.Dk * p.Dv;
        zg = p.st.z + seg * p.st.seg_z + head * p.Dk;
        comp = p.comp ? p.comp + x * p.Dk * p.Dv : nullptr;
        Q = sm + s.q, K = sm + s.k, V = sm + s.v, O = sm + s.o, X1 = sm + s.x1, X2 = sm + s.x2;
        A = sm + s.a, Bm = sm + s.bm, T = sm + s.t, z = sm + s.z, zc = sm + s.zc, pw = sm + s.pw;
        ex = (int *)(sm + s.ex);
        inv = sm + s.inv, dd = sm + s.dd;
    }

    __device__ bool masked(int64_t t) const
    {
        return p.mask && p.mask[b * p.mask_s[0] + t * p.mask_s[1]];
    }

    /* ex[i] = the unmasked keys among rows 0 .. i-1 of the chunk of n rows
     * from t0 (i without a mask or a decay); read after the caller's next
     * barrier. Only a decay reads the mask here: it is causal, so rows are
     * keys; a bidirectional query walk's rows are no keys (the module
     * backward's sweep 2 passes one masked key, a mask of B bytes). */
    __device__ void exponents(int64_t t0, int n) const
    {
        if (threadIdx.x != 0)
            return;
        int c = 0;
        for (int i = 0; i <= s.bc; i++) {
            ex[i] = c;
            c += i < n && !(p.has_decay && masked(t0 + i));
        }
    }

    /* Decay from after row j to after row i (j <= i; j = -1: the chunk's start). */
    __device__ float dec(int i, int j) const
    {
        return pw[ex[i + 1] - ex[j + 1]];
    }

    __device__ int chunk_len(int64_t t0) const
    {
        return t_end - t0 < s.bc ? (int)(t_end - t0) : s.bc;
    }

    /* Rows t0 .. t0+n-1 of head h of x (strides xs, D columns) into dst
     * (pitch, Dpad columns): phi applied when fm >= 0, zeros past n, past D
     * and for masked keys. */
    __device__ void load(float *dst, int pitch, int Dpad, const void *x, const int64_t *xs, int h,
                         int D, int64_t t0, int n, int fm, bool keys) const
    {
        for (int i = threadIdx.x; i < s.bc * Dpad; i += THREADS) {
            const int r = i / Dpad, d = i % Dpad;
            float val = 0.0f;
            if (r < n && d < D && !(keys && masked(t0 + r))) {
                val = ld(x, b * xs[0] + (t0 + r) * xs[1] + h * xs[2] + d * xs[3], p.dtype);
                if (fm >= 0)
                    val = phi_precise(val, fm);
            }
            dst[r * pitch + d] = val;
        }
    }

    __device__ void load_keys(int64_t t0, int n) const
    {
        exponents(t0, n);
        load(K, s.kp, s.dk, p.k, p.sk, hk, p.Dk, t0, n, p.feature_map, true);
        load(V, s.vp, s.dv, p.v, p.sv, hk, p.Dv, t0, n, -1, true);
    }

    __device__ void load_queries(int h, int64_t t0, int n) const
    {
        load(Q, s.kp, s.dk, p.q, p.sq, h, p.Dk, t0, n, p.feature_map, false);
        load(O, s.vp, s.dv, p.dout, p.sdo, h, p.Dv, t0, n, -1, false);
    }

    __device__ float *scalars(int h, int64_t t) const
    {
        return p.scal + (((int64_t)b * p.Hq + h) * p.L + t) * 2;
    }

    /* The carry: S from src (NULL = 0) into this segment's slot, z from
     * zsrc into shared memory; compensations zeroed. */
    __device__ void init_carry(const float *src, bool copy_S, const float *zsrc) const
    {
        const int64_t n = (int64_t)p.Dk * p.Dv;
        for (int64_t i = threadIdx.x; copy_S && i < n; i += THREADS)
            S[i] = src ? src[i] : 0.0f;
        for (int64_t i = threadIdx.x; comp && i < n; i += THREADS)
            comp[i] = 0.0f;
        for (int d = threadIdx.x; d < s.dk; d += THREADS) {
            z[d] = zsrc && d < p.Dk ? zsrc[d] : 0.0f;
            zc[d] = 0.0f;
        }
        __syncthreads();
    }

    __device__ void store_z(float *dst) const
    {
        for (int d = threadIdx.x; d < p.Dk; d += THREADS)
            dst[d] = z[d];
    }

    /* With the carry staged TK rows at a time:
     *   Y1[i][e] = sum_d X[i][d] S[d][e]   (when X is given)
     *   Y2[i][d] = sum_e W[i][e] S[d][e]                                    */
    __device__ void stream(const float *X, const float *W, float *Y1, float *Y2) const
    {
        for (int d0 = 0; d0 < s.dk; d0 += TK) {
            const int tk = imin(TK, s.dk - d0);
            __syncthreads(); /* T is free */
            for (int i = threadIdx.x; i < tk * s.dv; i += THREADS) {
                const int r = i / s.dv, e = i % s.dv;
                T[r * s.vp + e] = d0 + r < p.Dk && e < p.Dv ? S[(int64_t)(d0 + r) * p.Dv + e] : 0.0f;
            }
            __syncthreads();
            if (X)
                mm(s.bc, s.dv, tk, X + d0, s.kp, 1, T, s.vp, 1, [&](int i, int e, float v) {
                    float &y = Y1[i * s.vp + e];
                    y = d0 ? y + v : v;
                });
            mm(s.bc, tk, s.dv, W, s.vp, 1, T, 1, s.vp,
               [&](int i, int r, float v) { Y2[i * s.kp + d0 + r] = v; });
        }
        __syncthreads();
    }

    /* S <- gn S + sum_j X_j Y_j^T and z <- gn z + sum_j w_j X_j (w NULL: 1)
     * over the chunk's rows (rows past the chunk are zero). */
    __device__ void update(const float *X, const float *Y, const float *w, float gn) const
    {
        float *c = comp;
        float *Sg = S;
        const int Dk = p.Dk, Dv = p.Dv;
        mm(s.dk, s.dv, s.bc, X, 1, s.kp, Y, s.vp, 1, [&](int d, int e, float v) {
            if (d < Dk && e < Dv) {
                const int64_t i = (int64_t)d * Dv + e;
                fold(Sg[i], c ? c + i : nullptr, v, gn);
            }
        });
        for (int d = threadIdx.x; d < Dk; d += THREADS) {
            float acc = 0.0f;
            for (int j = 0; j < s.bc; j++)
                acc = fmaf(X[j * s.kp + d], w ? w[j] : 1.0f, acc);
            fold(z[d], c ? zc + d : nullptr, acc, gn);
        }
        __syncthreads();
    }

    /* Rows of X (pitch, D columns) times w(row) (row < n, else 0). */
    template <class W> __device__ void scale_rows(float *X, int pitch, int D, int n, W &&w) const
    {
        for (int i = threadIdx.x; i < s.bc * D; i += THREADS) {
            const int r = i / D, d = i % D;
            X[r * pitch + d] *= r < n ? w(r) : 0.0f;
        }
    }

    /* A = p^(i-j) Q_i.K_j and Bm = p^(i-j) (dn_i.V_j + dd_i) for j <= i, else 0. */
    __device__ void intra(bool want_a) const
    {
        const int cp = s.cp;
        const float *dd_ = dd;
        float *A_ = A, *Bm_ = Bm;
        if (want_a)
            mm(s.bc, s.bc, s.dk, Q, s.kp, 1, K, 1, s.kp, [&](int i, int j, float v) {
                A_[i * cp + j] = j <= i ? v * dec(i, j) : 0.0f;
            });
        mm(s.bc, s.bc, s.dv, O, s.vp, 1, V, 1, s.vp, [&](int i, int j, float v) {
            Bm_[i * cp + j] = j <= i ? (v + dd_[i]) * dec(i, j) : 0.0f;
        });
        __syncthreads();
    }
};

/* Per chunk and query head: 1/d, dd and dq; the state carried (causal). */
__device__ void queries(Cta &c)
{
    const lmk_bwd &p = c.p;
    const Shape &s = c.s;
    const bool causal = p.causal, norm = p.normalize;
    c.init_carry(nullptr, false, c.zg);
    for (int64_t t0 = c.t_begin; t0 < c.t_end; t0 += s.bc) {
        const int n = c.chunk_len(t0);
        if (causal)
            c.load_keys(t0, n);
        for (int gi = 0; gi < c.G; gi++) {
            const int h = c.hk * c.G + gi;
            c.load_queries(h, t0, n);
            __syncthreads();
            if (norm && causal) {
                mm(s.bc, s.bc, s.dk, c.Q, s.kp, 1, c.K, 1, s.kp, [&](int i, int j, float v) {
                    c.A[i * s.cp + j] = j <= i ? v * c.dec(i, j) : 0.0f;
                });
                __syncthreads();
            }
            for (int i = threadIdx.x; norm && i < s.bc; i += THREADS) {
                float qz = 0.0f, den;
                for (int d = 0; d < s.dk; d++)
                    qz = fmaf(c.Q[i * s.kp + d], c.z[d], qz);
                den = qz * c.dec(i, -1);
                for (int j = 0; causal && j <= i; j++)
                    den += c.A[i * s.cp + j];
                c.inv[i] = den; /* the denominator, for now */
            }
            c.stream(norm ? c.Q : nullptr, c.O, c.X1, c.X2); /* X1 = Q S, X2 = S do */
            if (norm && causal) {
                mm(s.bc, s.dv, s.bc, c.A, s.cp, 1, c.V, s.vp, 1, [&](int i, int e, float v) {
                    float &y = c.X1[i * s.vp + e];
                    y = y * c.dec(i, -1) + v;
                });
                __syncthreads();
            }
            for (int i = threadIdx.x; i < s.bc; i += THREADS) {
                float r = p.scale, g = 0.0f;
                if (norm) {
                    float dot = 0.0f;
                    for (int e = 0; e < s.dv; e++)
                        dot = fmaf(c.O[i * s.vp + e], c.X1[i * s.vp + e], dot);
                    r = 1.0f / (c.inv[i] + p.eps);
                    g = -dot * r * r;
                }
                c.inv[i] = i < n ? r : 0.0f;
                c.dd[i] = i < n ? g : 0.0f;
                if (i < n) {
                    float *sc = c.scalars(h, t0 + i);
                    sc[0] = r, sc[1] = g;
                }
            }
            __syncthreads();
            c.scale_rows(c.O, s.vp, s.dv, s.bc, [&](int i) { return c.inv[i]; }); /* dn */
            __syncthreads();
            if (causal)
                c.intra(false);
            auto out = [&](int i, int d, float v) {
                if (i < n && d < p.Dk) {
                    const float g = c.dec(i, -1) * (c.inv[i] * c.X2[i * s.kp + d] + c.dd[i] * c.z[d]) + v;
                    st(p.dq, c.b * p.sdq[0] + (t0 + i) * p.sdq[1] + h * p.sdq[2] + d * p.sdq[3], p.dtype,
                       g * dphi_of_phi(c.Q[i * s.kp + d], p.feature_map));
                }
            };
            if (causal)
                mm(s.bc, s.dk, s.bc, c.Bm, s.cp, 1, c.K, s.kp, 1, out);
            else
                for (int i = threadIdx.x; i < s.bc * s.dk; i += THREADS)
                    out(i / s.dk, i % s.dk, 0.0f);
            __syncthreads();
        }
        if (causal && t0 + s.bc < c.t_end) {
            c.scale_rows(c.K, s.kp, s.dk, n, [&](int j) { return c.dec(n - 1, j); }); /* p^(n-1-j) K_j */
            __syncthreads();
            c.update(c.K, c.V, nullptr, c.dec(n - 1, -1));
        }
    }
}

/* Keys only: the segment's increment of S, z. */
__device__ void absorb_keys(Cta &c)
{
    const Shape &s = c.s;
    c.init_carry(nullptr, true, nullptr);
    for (int64_t t0 = c.t_begin; t0 < c.t_end; t0 += s.bc) {
        const int n = c.chunk_len(t0);
        c.load_keys(t0, n);
        __syncthreads();
        c.scale_rows(c.K, s.kp, s.dk, n, [&](int j) { return c.dec(n - 1, j); });
        __syncthreads();
        c.update(c.K, c.V, nullptr, c.dec(n - 1, -1));
    }
    c.store_z(c.zg);
}

/* The queries of head h: Q_i p^(i+1) and dn_i in shared memory, 1/d and dd
 * from QUERIES. */
__device__ void load_adjoint_rows(Cta &c, int h, int64_t t0, int n)
{
    const Shape &s = c.s;
    c.load_queries(h, t0, n);
    for (int i = threadIdx.x; i < s.bc; i += THREADS) {
        const float *sc = i < n ? c.scalars(h, t0 + i) : nullptr;
        c.inv[i] = sc ? sc[0] : 0.0f;
        c.dd[i] = sc ? sc[1] : 0.0f;
    }
    __syncthreads();
    c.scale_rows(c.O, s.vp, s.dv, s.bc, [&](int i) { return c.inv[i]; });
    __syncthreads();
}

/* Queries only, backwards: the segment's increment of R, r. */
__device__ void absorb_queries(Cta &c)
{
    const lmk_bwd &p = c.p;
    const Shape &s = c.s;
    const bool from_last = p.causal && c.seg == p.last_seg;
    const int64_t head_S = c.head * p.Dk * p.Dv, head_z = c.head * p.Dk;
    c.init_carry(from_last && p.last_S ? p.last_S + head_S : nullptr, true,
                 from_last && p.last_z ? p.last_z + head_z : nullptr);
    const int64_t nch = (c.t_end - c.t_begin + s.bc - 1) / s.bc;
    for (int64_t ci = nch - 1; ci >= 0; ci--) {
        const int64_t t0 = c.t_begin + ci * s.bc;
        const int n = c.chunk_len(t0);
        c.exponents(t0, n); /* no keys loaded here; read after the next barrier */
        for (int gi = 0; gi < c.G; gi++) {
            load_adjoint_rows(c, c.hk * c.G + gi, t0, n);
            c.scale_rows(c.Q, s.kp, s.dk, n, [&](int i) { return c.dec(i, -1); });
            __syncthreads();
            c.update(c.Q, c.O, c.dd, gi == 0 ? c.dec(n - 1, -1) : 1.0f);
        }
    }
    c.store_z(c.zg);
}

/* Per chunk, backwards: dk, dv; the adjoint carried (causal). */
__device__ void keys(Cta &c)
{
    const lmk_bwd &p = c.p;
    const Shape &s = c.s;
    const bool causal = p.causal;
    const bool from_last = causal && c.seg == p.last_seg;
    const int64_t head_S = c.head * p.Dk * p.Dv, head_z = c.head * p.Dk;
    if (from_last)
        c.init_carry(p.last_S ? p.last_S + head_S : nullptr, true, p.last_z ? p.last_z + head_z : nullptr);
    else
        c.init_carry(nullptr, false, c.zg);
    const int64_t nch = (c.t_end - c.t_begin + s.bc - 1) / s.bc;
    for (int64_t ci = nch - 1; ci >= 0; ci--) {
        const int64_t t0 = c.t_begin + ci * s.bc;
        const int n = c.chunk_len(t0);
        c.load_keys(t0, n);
        c.stream(c.K, c.V, c.X1, c.X2); /* X1 = K R, X2 = V R^T */
        for (int i = threadIdx.x; i < s.bc * s.dv; i += THREADS) {
            const int j = i / s.dv;
            c.X1[j * s.vp + i % s.dv] *= j < n ? c.dec(n - 1, j) : 0.0f;
        }
        for (int i = threadIdx.x; i < s.bc * s.dk; i += THREADS) {
            const int j = i / s.dk, d = i % s.dk;
            float &y = c.X2[j * s.kp + d];
            y = j < n ? (y + c.z[d]) * c.dec(n - 1, j) : 0.0f;
        }
        __syncthreads();
        for (int gi = 0; causal && gi < c.G; gi++) {
            load_adjoint_rows(c, c.hk * c.G + gi, t0, n);
            c.intra(true);
            mm(s.bc, s.dk, s.bc, c.Bm, 1, s.cp, c.Q, s.kp, 1,
               [&](int j, int d, float v) { c.X2[j * s.kp + d] += v; });
            mm(s.bc, s.dv, s.bc, c.A, 1, s.cp, c.O, s.vp, 1,
               [&](int j, int e, float v) { c.X1[j * s.vp + e] += v; });
            __syncthreads();
            c.scale_rows(c.Q, s.kp, s.dk, n, [&](int i) { return c.dec(i, -1); });
            __syncthreads();
            c.update(c.Q, c.O, c.dd, gi == 0 ? c.dec(n - 1, -1) : 1.0f);
        }
        for (int i = threadIdx.x; i < s.bc * s.dk; i += THREADS) {
            const int j = i / s.dk, d = i % s.dk;
            if (j < n && d < p.Dk)
                st(p.dk, c.b * p.sdk[0] + (t0 + j) * p.sdk[1] + c.hk * p.sdk[2] + d * p.sdk[3], p.dtype,
                   c.masked(t0 + j) ? 0.0f : c.X2[j * s.kp + d] * dphi_of_phi(c.K[j * s.kp + d], p.feature_map));
        }
        for (int i = threadIdx.x; i < s.bc * s.dv; i += THREADS) {
            const int j = i / s.dv, e = i % s.dv;
            if (j < n && e < p.Dv)
                st(p.dv, c.b * p.sdv[0] + (t0 + j) * p.sdv[1] + c.hk * p.sdv[2] + e * p.sdv[3], p.dtype,
                   c.masked(t0 + j) ? 0.0f : c.X1[j * s.vp + e]);
        }
        __syncthreads();
    }
    if (causal && c.seg == 0 && p.fin_S) {
        for (int64_t i = threadIdx.x; i < (int64_t)p.Dk * p.Dv; i += THREADS)
            p.fin_S[head_S + i] = c.S[i];
        c.store_z(p.fin_z + head_z);
    }
}

__device__ inline void run(const lmk_bwd &p, int kind, int bc, float *smem)
{
    Cta c(p, bc, smem);
    if (threadIdx.x == 0) {
        const float g = p.has_decay ? p.decay[c.hk] : 1.0f;
        float a = 1.0f;
        c.pw[0] = a;
        for (int i = 1; i <= bc; i++) /* repeated products, as the forward */
            c.pw[i] = a *= g;
        for (int i = 0; i <= bc; i++) /* replaced per chunk where keys are loaded */
            c.ex[i] = i;
    }
    __syncthreads();
    switch (kind) {
    case LMK_BWD_ABSORB_KEYS: absorb_keys(c); break;
    case LMK_BWD_QUERIES: queries(c); break;
    case LMK_BWD_ABSORB_QUERIES: absorb_queries(c); break;
    default: keys(c); break;
    }
}

} // namespace bwd
} // namespace lmk

#endif /* LM_BACKWARD_CUH */
