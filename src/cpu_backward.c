/*
 * cpu_backward.c - the backward of the attention core on the CPU: dq, dk, dv
 * and the gradient of the initial state. Chunked like cpu_attend.c, fp32
 * throughout, one OpenMP task per (batch row, kv head) that covers the G
 * query heads sharing it, because dk and dv sum over those heads.
 *
 * Math, per kv head (decay g; Q = phi(q), K = phi(k), masked keys K = V = 0):
 *   forward   S_t = g S_{t-1} + K_t V_t^T, z_t likewise, n_t = S_t^T Q_t,
 *             d_t = Q_t.z_t + eps, o_t = n_t / d_t          (or scale n_t)
 *   given do: dn_t = do_t / d_t, dd_t = -(do_t . o_t) / d_t  (or scale do_t, 0)
 *             dQ_t = S_t dn_t + dd_t z_t                      needs the forward state
 *             P_t = g P_{t+1} + sum_heads Q_t dn_t^T, from dS_out at t = L; p_t
 *             likewise with dd_t Q_t, from dz_out
 *             dK_t = P_t V_t + p_t, dV_t = P_t^T K_t           needs the adjoint
 *             dS_0 = g P_1, dz_0 = g p_1; dq = dQ phi'(q), dk = dK phi'(k), dv = dV
 * Chunked, over a chunk of n tokens (local i, j; for j <= i
 * A[i][j] = g^(i-j) Q_i.K_j and B[i][j] = g^(i-j) (V_j.dn_i + dd_i)):
 *   dQ_i = g^(i+1) (S dn_i + dd_i z) + sum_{j<=i} B[i][j] K_j   S, z before the chunk
 *   dK_j = g^(n-1-j) (R V_j + r) + sum_heads sum_{i>=j} B[i][j] Q_i
 *   dV_j = g^(n-1-j) R^T K_j + sum_heads sum_{i>=j} A[i][j] dn_i
 *   R <- g^n R + sum_heads sum_i g^(i+1) Q_i dn_i^T, r likewise with dd_i Q_i
 * where R, r = g P, g p just after the chunk (dS_out, dz_out after the last
 * one, dS_0, dz_0 after the first). Cost O(L C (Dk + Dv) + L Dk Dv). With a
 * key padding mask, a masked key is no step of the recurrence (no decay
 * either): exponents count the unmasked keys (lmi_chunk_counts), so g^(i-j)
 * is g^(cnt[i+1] - cnt[j+1]), g^(i+1) is g^cnt[i+1], g^n is g^cnt[n].
 *
 * Memory. dQ is computed forwards and dK, dV backwards, and (normalised) both
 * need the forward's d_t and do_t.o_t, so the reverse sweep needs the state at
 * every chunk. Keeping all of them is O(L Dk Dv); "un-absorbing" them on the
 * way back (S_prev = (S - sum g^.. K V^T) / g^n) divides by g^n, unstable for
 * small g, and cancels badly over long sequences even without decay. So we
 * checkpoint: a first sweep keeps (S, z) at the start of every K-th chunk;
 * then, block of K chunks by block from the end, a forward pass from the
 * checkpoint writes the block's dq and keeps two floats per token and query
 * head (1/d_t, dd_t), and a backward pass over the block writes dk, dv from
 * them. Per task that is ceil(N/K) states plus 2 K C G floats for N chunks;
 * K = sqrt(N (Dk Dv + Dk) / (2 C G)) minimises it, so memory grows as
 * sqrt(L) (L = 128K, Dk = Dv = 64, G = 1: 8 checkpoints of 16 KB and 128 KB
 * of scalars), and there is one task buffer per thread, not per task.
 * Unnormalised, dn and dd need nothing from the forward: K = N, one block,
 * whose only checkpoint is the initial state. The price is one extra sweep of
 * state updates; the whole backward measures 2.0-2.9 forwards (2 cores,
 * L = 4096, 8 heads, D = 64 or 128, fp32).
 * Bidirectional needs no checkpoints: S, z are full sums; one pass over the
 * queries gives dq and the total P, p; one pass over the keys gives dk, dv.
 *
 * With compensated precision the carried S, z and R, r are Kahan sums (and
 * checkpoints keep the compensation too), as in the forward.
 */
#include "cpu_chunk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define C LMI_CPU_CHUNK


/* A carried fp32 sum of m floats (S then z, or R then r) and its Kahan
 * compensation (NULL when not compensated). */
typedef struct carry {
    float *s, *c;
} carry;

typedef struct task {
    const lmi_core_params *p;
    const lmi_core_grad_params *g;
    int64_t b, hk, G, m; /* m = Dk Dv + Dk floats of a state */
    int64_t K, nck;      /* chunks per block, checkpoints */
    float pw[C + 1];     /* decay^i */
    int cnt[C + 1];      /* decay exponents of the loaded chunk (lmi_chunk_counts) */
    float wq[C];         /* g^cnt[i+1]: query row i's weight on the state before the chunk */
    float *q, *dq_phi;   /* [C][Dk] phi(q) and phi'(q) of one query head */
    float *k, *dk_phi;   /* [C][Dk] */
    float *v;            /* [C][Dv] */
    float *dn;           /* [C][Dv] do, then dn in place */
    float dd[C];
    float *gq, *num;     /* [Dk], [Dv]: one row of dQ, of n */
    float *gk, *gv;      /* [C][Dk], [C][Dv]: dK, dV of the key chunk */
    float *inc;          /* [m] increment of a carry over one chunk */
    carry st, adj;       /* state S|z, adjoint R|r */
    float *ck;           /* nck checkpoints of st (s, then c when compensated) */
    float *scal;         /* [K][G][C][2] 1/d and dd of a block (normalised causal) */
} task;

static int masked(const task *t, int64_t tok)
{
    const lmi_core_params *p = t->p;
    return p->mask && p->mask[t->b * p->mask_s[0] + tok * p->mask_s[1]];
}

/* Keys and values of a chunk: phi(k), phi'(k), v; masked keys zero rows. */
static void load_keys(task *t, int64_t t0, int64_t n)
{
    const lmi_core_params *p = t->p;
    lmi_chunk_load(t->k, &p->k, t->b, t0, n, t->hk, p->Dk);
    lmi_chunk_load(t->v, &p->v, t->b, t0, n, t->hk, p->Dv);
    lmi_phi(t->k, t->dk_phi, n * p->Dk, p->feature_map);
    lmi_chunk_counts(t->cnt, p, t->b, t0, n);
    for (int64_t j = 0; j < n; j++)
        t->wq[j] = t->pw[t->cnt[j + 1]];
    for (int64_t j = 0; j < n; j++) {
        if (masked(t, t0 + j)) {
            memset(t->k + j * p->Dk, 0, (size_t)p->Dk * sizeof(float));
            memset(t->v + j * p->Dv, 0, (size_t)p->Dv * sizeof(float));
        }
    }
}

/* phi(q) (and phi'(q) when with_dphi) and do of query head h. */
static void load_queries(task *t, int64_t h, int64_t t0, int64_t n, int with_dphi)
{
    const lmi_core_params *p = t->p;
    lmi_chunk_load(t->q, &p->q, t->b, t0, n, h, p->Dk);
    lmi_phi(t->q, with_dphi ? t->dq_phi : NULL, n * p->Dk, p->feature_map);
    lmi_chunk_load(t->dn, &t->g->dout, t->b, t0, n, h, p->Dv);
}

/* s <- gn s + inc over m floats, Kahan-compensated when c is not NULL. */
static void fold(carry *x, const float *inc, int64_t m, float gn)
{
    if (!x->c) {
        for (int64_t i = 0; i < m; i++)
            x->s[i] = gn * x->s[i] + inc[i];
        return;
    }
    for (int64_t i = 0; i < m; i++) {
        float base = x->s[i] * gn;
        float y = inc[i] - x->c[i] * gn;
        float sum = base + y;
        x->c[i] = (sum - base) - y;
        x->s[i] = sum;
    }
}

/* inc[d][e] += sum_i w_i x_i[d] y_i[e] and inc[Dk Dv + d] += sum_i w_i c_i x_i[d]
 * (c NULL = 1) over n rows: the rank-n update of a state or an adjoint. */
LMI_HOT static void outer_acc(task *t, const float *x, const float *w, const float *y, const float *c,
                      int64_t n)
{
    const int64_t Dk = t->p->Dk, Dv = t->p->Dv;
    float *z = t->inc + Dk * Dv;
    for (int64_t d = 0; d < Dk; d++) {
        float *row = t->inc + d * Dv, zs = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            float xw = x[i * Dk + d] * w[i];
            lmi_axpy(row, xw, y + i * Dv, Dv);
            zs += xw * (c ? c[i] : 1.0f);
        }
        z[d] += zs;
    }
}

/* S <- g^n S + sum_j g^(n-1-j) K_j V_j^T over the loaded chunk; z likewise. */
static void absorb(task *t, int64_t n)
{
    float w[C];
    for (int64_t j = 0; j < n; j++)
        w[j] = t->pw[t->cnt[n] - t->cnt[j + 1]];
    memset(t->inc, 0, (size_t)t->m * sizeof(float));
    outer_acc(t, t->k, w, t->v, NULL, n);
    fold(&t->st, t->inc, t->m, t->pw[t->cnt[n]]);
}

/* Turns do into dn in place and fills dd, reading the forward's n_i, d_i off
 * the state (and the chunk, causal); keeps 1/d, dd in scal when normalised. */
LMI_HOT static void readout_dn(task *t, int64_t n, int causal, float *scal)
{
    const lmi_core_params *p = t->p;
    const int64_t Dk = p->Dk, Dv = p->Dv;
    const float *S = t->st.s, *z = t->st.s + Dk * Dv;
    for (int64_t i = 0; i < n; i++) {
        float *dn = t->dn + i * Dv;
        if (!p->normalize) {
            lmi_scale(dn, p->scale, Dv);
            t->dd[i] = 0.0f;
            continue;
        }
        const float *qi = t->q + i * Dk;
        memset(t->num, 0, (size_t)Dv * sizeof(float));
        for (int64_t d = 0; d < Dk; d++)
            lmi_axpy(t->num, qi[d], S + d * Dv, Dv);
        lmi_scale(t->num, t->wq[i], Dv);
        float den = lmi_dot(qi, z, Dk) * t->wq[i];
        for (int64_t j = 0; causal && j <= i; j++) {
            float a = lmi_dot(qi, t->k + j * Dk, Dk) * t->pw[t->cnt[i + 1] - t->cnt[j + 1]];
            lmi_axpy(t->num, a, t->v + j * Dv, Dv);
            den += a;
        }
        const float inv = 1.0f / (den + p->eps);
        t->dd[i] = -lmi_dot(dn, t->num, Dv) * inv * inv;
        lmi_scale(dn, inv, Dv);
        scal[2 * i] = inv;
        scal[2 * i + 1] = t->dd[i];
    }
}

/* The same from the kept 1/d, dd (or the scale), in the backward pass. */
static void scalars_dn(task *t, int64_t n, const float *scal)
{
    const lmi_core_params *p = t->p;
    for (int64_t i = 0; i < n; i++) {
        lmi_scale(t->dn + i * p->Dv, p->normalize ? scal[2 * i] : p->scale, p->Dv);
        t->dd[i] = p->normalize ? scal[2 * i + 1] : 0.0f;
    }
}

/* dq rows of query head h: g^(i+1) (S dn_i + dd_i z) + sum_{j<=i} B[i][j] K_j. */
LMI_HOT static void dq_rows(task *t, int64_t h, int64_t t0, int64_t n, int causal)
{
    const lmi_core_params *p = t->p;
    const int64_t Dk = p->Dk, Dv = p->Dv;
    const float *S = t->st.s, *z = t->st.s + Dk * Dv;
    for (int64_t i = 0; i < n; i++) {
        const float *dn = t->dn + i * Dv;
        for (int64_t d = 0; d < Dk; d++)
            t->gq[d] = (lmi_dot(S + d * Dv, dn, Dv) + t->dd[i] * z[d]) * t->wq[i];
        for (int64_t j = 0; causal && j <= i; j++) {
            float bij = (lmi_dot(t->v + j * Dv, dn, Dv) + t->dd[i]) * t->pw[t->cnt[i + 1] - t->cnt[j + 1]];
            lmi_axpy(t->gq, bij, t->k + j * Dk, Dk);
        }
        const float *dphi = t->dq_phi + i * Dk;
        for (int64_t d = 0; d < Dk; d++)
            t->gq[d] *= dphi[d];
        lmi_chunk_store(&t->g->dq, t->gq, t->b, t0 + i, 1, h, Dk);
    }
}

/* dK, dV of the loaded key chunk from the adjoint after it:
 * g^(n-1-j) (R V_j + r) and g^(n-1-j) R^T K_j. */
LMI_HOT static void key_grads_init(task *t, int64_t n)
{
    const int64_t Dk = t->p->Dk, Dv = t->p->Dv;
    const float *R = t->adj.s, *r = t->adj.s + Dk * Dv;
    for (int64_t j = 0; j < n; j++) {
        const float w = t->pw[t->cnt[n] - t->cnt[j + 1]];
        float *gk = t->gk + j * Dk, *gv = t->gv + j * Dv;
        const float *kj = t->k + j * Dk, *vj = t->v + j * Dv;
        memset(gv, 0, (size_t)Dv * sizeof(float));
        for (int64_t d = 0; d < Dk; d++) {
            gk[d] = (lmi_dot(R + d * Dv, vj, Dv) + r[d]) * w;
            lmi_axpy(gv, kj[d], R + d * Dv, Dv);
        }
        lmi_scale(gv, w, Dv);
    }
}

/* One query head's share of the chunk's backward: the intra-chunk terms of
 * dK, dV (causal) and its increment of the adjoint, sum_i g^(i+1) Q_i dn_i^T. */
LMI_HOT static void head_adjoint(task *t, int64_t n, int causal)
{
    const int64_t Dk = t->p->Dk, Dv = t->p->Dv;
    for (int64_t i = 0; causal && i < n; i++) {
        const float *qi = t->q + i * Dk, *dn = t->dn + i * Dv;
        for (int64_t j = 0; j <= i; j++) {
            const float w = t->pw[t->cnt[i + 1] - t->cnt[j + 1]];
            float aij = lmi_dot(qi, t->k + j * Dk, Dk) * w;
            float bij = (lmi_dot(t->v + j * Dv, dn, Dv) + t->dd[i]) * w;
            lmi_axpy(t->gk + j * Dk, bij, qi, Dk);
            lmi_axpy(t->gv + j * Dv, aij, dn, Dv);
        }
    }
    outer_acc(t, t->q, t->wq, t->dn, t->dd, n);
}

/* dk = dK phi'(k), dv = dV; zero for masked keys. */
static void store_keys(task *t, int64_t t0, int64_t n)
{
    const int64_t Dk = t->p->Dk, Dv = t->p->Dv;
    for (int64_t j = 0; j < n; j++) {
        float *gk = t->gk + j * Dk;
        if (masked(t, t0 + j)) { /* zeros even where the ignored k is NaN */
            memset(gk, 0, (size_t)Dk * sizeof(float));
            memset(t->gv + j * Dv, 0, (size_t)Dv * sizeof(float));
            continue;
        }
        for (int64_t d = 0; d < Dk; d++)
            gk[d] *= t->dk_phi[j * Dk + d];
    }
    lmi_chunk_store(&t->g->dk, t->gk, t->b, t0, n, t->hk, Dk);
    lmi_chunk_store(&t->g->dv, t->gv, t->b, t0, n, t->hk, Dv);
}

static void save_checkpoint(task *t, int64_t i)
{
    float *ck = t->ck + i * t->m * (t->st.c ? 2 : 1);
    memcpy(ck, t->st.s, (size_t)t->m * sizeof(float));
    if (t->st.c)
        memcpy(ck + t->m, t->st.c, (size_t)t->m * sizeof(float));
}

static void load_checkpoint(task *t, int64_t i)
{
    const float *ck = t->ck + i * t->m * (t->st.c ? 2 : 1);
    memcpy(t->st.s, ck, (size_t)t->m * sizeof(float));
    if (t->st.c)
        memcpy(t->st.c, ck + t->m, (size_t)t->m * sizeof(float));
}

/* The kept 1/d, dd of query head i of the block's chunk c (NULL unnormalised). */
static float *block_scalars(const task *t, int64_t c, int64_t i)
{
    return t->scal ? t->scal + (c * t->G + i) * 2 * C : NULL;
}

static int64_t chunk_len(int64_t L, int64_t c)
{
    return L - c * C < C ? L - c * C : C;
}

static void causal_task(task *t)
{
    const lmi_core_params *p = t->p;
    const int64_t N = (p->L + C - 1) / C, K = t->K, G = t->G;
    for (int64_t c = 0;; c++) { /* checkpoints at chunks 0, K, 2K, ... */
        if (c % K == 0)
            save_checkpoint(t, c / K);
        if (c == (t->nck - 1) * K)
            break;
        load_keys(t, c * C, chunk_len(p->L, c));
        absorb(t, chunk_len(p->L, c));
    }
    for (int64_t blk = t->nck - 1; blk >= 0; blk--) {
        const int64_t c0 = blk * K, c1 = c0 + K < N ? c0 + K : N;
        load_checkpoint(t, blk);
        for (int64_t c = c0; c < c1; c++) {
            const int64_t t0 = c * C, n = chunk_len(p->L, c);
            load_keys(t, t0, n);
            for (int64_t i = 0; i < G; i++) {
                const int64_t h = t->hk * G + i;
                load_queries(t, h, t0, n, 1);
                readout_dn(t, n, 1, block_scalars(t, c - c0, i));
                dq_rows(t, h, t0, n, 1);
            }
            if (c + 1 < c1)
                absorb(t, n);
        }
        for (int64_t c = c1 - 1; c >= c0; c--) {
            const int64_t t0 = c * C, n = chunk_len(p->L, c);
            load_keys(t, t0, n);
            key_grads_init(t, n);
            memset(t->inc, 0, (size_t)t->m * sizeof(float));
            for (int64_t i = 0; i < G; i++) {
                load_queries(t, t->hk * G + i, t0, n, 0);
                scalars_dn(t, n, block_scalars(t, c - c0, i));
                head_adjoint(t, n, 1);
            }
            fold(&t->adj, t->inc, t->m, t->pw[t->cnt[n]]);
            store_keys(t, t0, n);
        }
    }
}

/* Every query sees S_Lk, z_Lk (no decay): dS_total = dS_out + sum Q dn^T. */
static void bidirectional_task(task *t)
{
    const lmi_core_params *p = t->p;
    for (int64_t t0 = 0; t0 < p->Lk; t0 += C) {
        load_keys(t, t0, chunk_len(p->Lk, t0 / C));
        absorb(t, chunk_len(p->Lk, t0 / C));
    }
    for (int64_t t0 = 0; t0 < p->L; t0 += C) {
        const int64_t n = chunk_len(p->L, t0 / C);
        memset(t->inc, 0, (size_t)t->m * sizeof(float));
        for (int64_t i = 0; i < t->G; i++) {
            const int64_t h = t->hk * t->G + i;
            load_queries(t, h, t0, n, 1);
            readout_dn(t, n, 0, t->scal);
            dq_rows(t, h, t0, n, 0);
            head_adjoint(t, n, 0);
        }
        fold(&t->adj, t->inc, t->m, 1.0f);
    }
    for (int64_t t0 = 0; t0 < p->Lk; t0 += C) {
        const int64_t n = chunk_len(p->Lk, t0 / C);
        load_keys(t, t0, n);
        key_grads_init(t, n);
        store_keys(t, t0, n);
    }
}

static void run_task(task *t, int64_t b, int64_t hk)
{
    const lmi_core_params *p = t->p;
    const lmi_core_grad_params *g = t->g;
    const int64_t Dk = p->Dk, Dv = p->Dv, m = t->m, bh = b * p->Hkv + hk;
    const float gam = p->decay ? p->decay[hk] : 1.0f;
    t->b = b, t->hk = hk;
    /* powf, not repeated products: g^L is the product of L / C of these,
     * and the state gradient's g^L dS_out term sees each one's error. */
    for (int i = 0; i <= C; i++)
        t->pw[i] = powf(gam, (float)i);
    for (int i = 0; i < C; i++) /* bidirectional queries: no keys loaded with them */
        t->wq[i] = t->pw[i + 1];

    /* The carries: the initial state, and the adjoint dS_out (or 0). */
    memset(t->st.s, 0, (size_t)m * sizeof(float));
    memset(t->adj.s, 0, (size_t)m * sizeof(float));
    if (p->state) {
        memcpy(t->st.s, p->state + bh * Dk * Dv, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(t->st.s + Dk * Dv, p->normalizer + bh * Dk, (size_t)Dk * sizeof(float));
    }
    if (g->dstate_out) {
        memcpy(t->adj.s, g->dstate_out + bh * Dk * Dv, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(t->adj.s + Dk * Dv, g->dnormalizer_out + bh * Dk, (size_t)Dk * sizeof(float));
    }
    if (p->compensated) {
        memset(t->st.c, 0, (size_t)m * sizeof(float));
        memset(t->adj.c, 0, (size_t)m * sizeof(float));
    }

    if (p->causal)
        causal_task(t);
    else
        bidirectional_task(t);

    if (g->dstate_in) {
        memcpy(g->dstate_in + bh * Dk * Dv, t->adj.s, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(g->dnormalizer_in + bh * Dk, t->adj.s + Dk * Dv, (size_t)Dk * sizeof(float));
    }
}

/* Chunks per block (see the top comment) and the number of checkpoints. */
static void plan_blocks(task *t)
{
    const lmi_core_params *p = t->p;
    const int64_t N = (p->L + C - 1) / C;
    t->K = N;
    if (p->causal && p->normalize) {
        const double state = (double)t->m * (p->compensated ? 2 : 1), scal = 2.0 * C * t->G;
        const double k = floor(sqrt((double)N * state / scal) + 0.5);
        t->K = k < 1.0 ? 1 : k > (double)N ? N : (int64_t)k;
    }
    t->nck = p->causal ? (N + t->K - 1) / t->K : 0;
}

static float *task_alloc(task *t, const lmi_core_params *p, const lmi_core_grad_params *g)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, m = Dk * Dv + Dk, nc = p->compensated ? 2 : 1;
    t->p = p, t->g = g, t->m = m, t->G = p->Hq / p->Hkv;
    plan_blocks(t);
    const int64_t nscal = p->normalize ? (p->causal ? t->K * t->G : 1) * 2 * C : 0;
    const int64_t n = 5 * C * Dk + 3 * C * Dv + Dk + Dv + m + 2 * nc * m + t->nck * nc * m +
                      nscal;
    float *mem = malloc((size_t)n * sizeof(float));
    if (!mem)
        return NULL;
    float *c = mem;
    t->q = c, c += C * Dk;
    t->dq_phi = c, c += C * Dk;
    t->k = c, c += C * Dk;
    t->dk_phi = c, c += C * Dk;
    t->v = c, c += C * Dv;
    t->dn = c, c += C * Dv;
    t->gk = c, c += C * Dk;
    t->gv = c, c += C * Dv;
    t->gq = c, c += Dk;
    t->num = c, c += Dv;
    t->inc = c, c += m;
    t->st.s = c, c += m;
    t->adj.s = c, c += m;
    t->st.c = t->adj.c = NULL;
    if (p->compensated) {
        t->st.c = c, c += m;
        t->adj.c = c, c += m;
    }
    t->ck = c, c += t->nck * nc * m;
    t->scal = nscal ? c : NULL;
    return mem;
}

lm_status lmi_cpu_backward(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream)
{
    (void)stream;
    const int64_t ntask = p->B * p->Hkv;
    const int64_t work = p->B * p->Hq * (p->L + p->Lk) * p->Dk * p->Dv;
    int failed = 0;
#pragma omp parallel if (ntask > 1 && work > (1 << 18)) reduction(| : failed)
    {
        task t;
        float *mem = task_alloc(&t, p, g);
        if (!mem)
            failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < ntask; i++)
            if (mem)
                run_task(&t, i / p->Hkv, i % p->Hkv);
        free(mem);
    }
    if (failed)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for the backward's buffers");
    return LM_OK;
}
