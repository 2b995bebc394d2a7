/*
 * cuda_module_backward.c - the module backward on the GPU (lm_attn_backward
 * on a CUDA handle): the gradients of the inputs and of the four projections
 * (weights and biases), with the core backward of cuda_backward.c in the
 * middle. The design is the CPU's (cpu_module_backward.c): it streams through
 * the sequence in slabs, so extra device memory is O(slab) plus one state per
 * slab, never O(L E):
 *
 * causal         sweep 1 forwards over slabs: project q, k, v and attend from
 *                the slab's checkpoint (the state it starts from, kept) into
 *                the next slab's; the attention output o gives the
 *                out-projection's dWo += dy^T o and dbo here already (the GPU's
 *                causal attend has no keys-only form, so o comes free).
 *                sweep 2 backwards over slabs: project again, dO = dy Wo, the
 *                core backward from the checkpoint, carrying the state
 *                gradient to the slab before, then the in-projections'
 *                gradients.
 * bidirectional  sweep 1: every key slab into the state S (the forward's).
 *                sweep 2 over query slabs: o from S, dWo, dbo, dO, the core
 *                backward for dq and the gradient of S, summed over the slabs
 *                by chaining it through dS_out -> dS_in.
 *                sweep 3 over key slabs: the core backward from that sum
 *                gives dk, dv, then the projections' gradients.
 * The core backward takes at least one query and one key, so sweep 2 gives it
 * one masked key (it then sees exactly S) and sweep 3 one query whose output
 * gradient is zero: neither contributes anything.
 *
 * Only cuBLASLt, copies and the core's kernels, all queued on the caller's
 * stream, no host sync. A slab's rows are gathered into contiguous buffers
 * (one cudaMemcpy2DAsync per batch row), so that with y = x W^T + b each
 * weight gradient dW += dy^T x is one GEMM over batch x slab rows into an fp32
 * accumulator; db += the column sums of dy is a GEMM with a vector u of c's
 * (a byte memset makes it: c is the dtype's value of the bytes 0x3F, alpha =
 * 1/c undoes it); dx = dy W goes straight into the caller's tensors. The fp32
 * weight gradients are converted to the dtype once at the end (with
 * accumulate, the caller's values are converted into the accumulators
 * first). Workspace: one cudaMallocAsync per call, zeroed (compute-sanitizer's
 * initcheck does not see cuBLASLt's bulk-copy stores).
 *
 * UNSUPPORTED, as in the forward: tensors without stride 1 on their last
 * dimension, or whose rows overlap (row stride below the width); head dims
 * over 256.
 */
#include "cuda_impl.h"
#include "dtype.h"

#include <string.h>

/* Slab: about this many rows (batch x tokens) per GEMM and core call, and at
 * most this many bytes of slab buffers. 8192 rows keep cuBLASLt and the core
 * backward busy, so the ~25 launches of a slab cost little beside its work. */
#define SLAB_ROWS 8192
#define SLAB_BYTES ((int64_t)256 << 20)
/* The byte u is filled with: a normal number in every dtype. */
#define U_BYTE 0x3F

enum { PQ, PK, PV, NPART }; /* the in-projections */

typedef struct mbwd {
    lm_attn *a;
    lmi_cuda_ctx *ctx;
    const lmi_forward *f;
    const lm_attn_grads *g;
    cudaStream_t s;
    lmi_cuda_weights w;
    int dt;
    int self, shared;           /* query == key == value; one input-gradient tensor */
    int64_t B, E, D, Dq, Dkv, ld, es, sf;
    int64_t n, nstates;         /* slab tokens; states kept */
    int64_t col[NPART + 1];     /* first column of q, k, v in rows of qkv / dqkv; ld */
    int64_t width[NPART];       /* input widths: E, kdim, vdim */
    const lm_tensor *in[NPART]; /* query, key, value */
    lm_tensor *dx[NPART];       /* dquery, dkey, dvalue (or NULL) */
    float inv_c;                /* 1 / the value of u's elements */
    /* the workspace */
    float *acc;                 /* fp32: dWq dWk dWv dWo (rows adjacent), db_in, dbo */
    float *states;              /* checkpoints or S, then two state-gradient carries */
    char *x[NPART];             /* gathered inputs [B n, width] (self: one buffer) */
    char *qkv, *dqkv;           /* [B n, ld] */
    char *o, *dO;               /* [B n, Dq] */
    char *dy, *u;               /* [B n, E], [B n] */
    char *zq, *zk;              /* zeros: the dummy token's q and dout [B, Dq], k and v [B, Dkv] */
    char *sq, *sk, *sv;         /* where the core writes the dummy token's gradients */
    uint8_t *ones;              /* [B]: the dummy key is masked */
} mbwd;

/* Tokens of the slab starting at t0 of a sequence of L. */
static int64_t slab_len(const mbwd *w, int64_t t0, int64_t L)
{
    return L - t0 < w->n ? L - t0 : w->n;
}

/* The part after i when parts i .. p1-1 go one at a time, or p1 when they
 * go in one call (merge). */
static int next_part(int i, int p1, int merge)
{
    return merge ? p1 : i + 1;
}

/* ---- the workspace ---- */

static float *acc_w(const mbwd *w, int part)
{
    const int64_t off[NPART] = { 0, w->Dq * w->E, w->Dq * w->E + w->Dkv * w->width[PK] };
    return w->acc + off[part];
}
static float *acc_wo(const mbwd *w) { return acc_w(w, PV) + w->Dkv * w->width[PV]; }
static float *acc_bin(const mbwd *w) { return acc_wo(w) + w->E * w->Dq; }
static float *acc_bo(const mbwd *w) { return acc_bin(w) + w->ld; }

/* Hands out 256-byte aligned pieces of base; with base NULL it only counts. */
typedef struct carver {
    char *base;
    size_t used;
} carver;

static void *carve(carver *c, int64_t bytes)
{
    char *p = c->base ? c->base + c->used : NULL;
    c->used += ((size_t)bytes + 255) & ~(size_t)255;
    return p;
}

static void lay_out(mbwd *w, carver *c)
{
    const int64_t R = w->B * w->n, es = w->es, B = w->B;
    const int64_t ndw = w->Dq * w->E + w->Dkv * (w->width[PK] + w->width[PV]) + w->E * w->Dq + w->ld + w->E;
    w->acc = carve(c, ndw * 4);
    w->states = carve(c, w->nstates * w->sf * 4);
    for (int i = 0; i < NPART; i++)
        w->x[i] = w->self && i ? w->x[0] : carve(c, R * w->width[i] * es);
    w->qkv = carve(c, R * w->ld * es);
    w->dqkv = carve(c, R * w->ld * es);
    w->o = carve(c, R * w->Dq * es);
    w->dO = carve(c, R * w->Dq * es);
    w->dy = carve(c, R * w->E * es);
    w->u = carve(c, R * es);
    w->zq = carve(c, B * w->Dq * es);
    w->zk = carve(c, B * w->Dkv * es);
    w->sq = carve(c, B * w->Dq * es);
    w->sk = carve(c, B * w->Dkv * es);
    w->sv = carve(c, B * w->Dkv * es);
    w->ones = carve(c, B);
}

/* Slab tokens: SLAB_ROWS rows, at most SLAB_BYTES of buffers, whole chunks. */
static int64_t slab_tokens(const mbwd *w)
{
    const int64_t in = w->self ? w->E : w->E + w->width[PK] + w->width[PV];
    const int64_t row_bytes = w->es * (in + 2 * w->ld + 2 * w->Dq + w->E + 1);
    const int64_t by_bytes = SLAB_BYTES / (w->B * row_bytes), by_rows = SLAB_ROWS / w->B;
    const int64_t L = w->f->Lq > w->f->Lk ? w->f->Lq : w->f->Lk;
    int64_t n = (by_bytes < by_rows ? by_bytes : by_rows) / LMK_CHUNK * LMK_CHUNK;
    n = n < LMK_CHUNK ? LMK_CHUNK : n;
    return n > L ? L : n;
}

/* ---- GEMMs ---- */

/* acc[N, K] (fp32) += d[R, N]^T x[R, K] (rows of d ldd apart, of x K apart). */
static lm_status grad_weight(const mbwd *w, float *acc, const void *d, int64_t ldd, const void *x,
                             int64_t R, int64_t N, int64_t K)
{
    const lmi_gemm gm = { .rows = N, .N = K, .K = R, .batch = 1, .X = d, .ldx = ldd, .x_t = 1, .W = x,
                          .ldw = K, .w_t = 1, .Y = acc, .ldy = K, .y_f32 = 1, .dtype = w->dt, .alpha = 1,
                          .beta = 1 };
    return lmi_cuda_gemm(w->ctx, &gm, w->s);
}

/* bias[N] (fp32) += the column sums of d[R, N] (rows ldd apart) = u^T d / c. */
static lm_status grad_bias(const mbwd *w, float *bias, const void *d, int64_t ldd, int64_t R, int64_t N)
{
    const lmi_gemm gm = { .rows = 1, .N = N, .K = R, .batch = 1, .X = w->u, .ldx = R, .W = d, .ldw = ldd,
                          .w_t = 1, .Y = bias, .ldy = N, .y_f32 = 1, .dtype = w->dt, .alpha = w->inv_c,
                          .beta = 1 };
    return lmi_cuda_gemm(w->ctx, &gm, w->s);
}

/* Rows [t0, t0 + m) of every batch row of t [B, L, W] into dst [B m, W]. */
static lm_status gather(const mbwd *w, const lm_tensor *t, int64_t t0, int64_t m, char *dst)
{
    const int64_t W = t->shape[2], es = w->es, sl = t->stride[1], sb = t->stride[0];
    const char *src = (const char *)t->data + t0 * sl * es;
    const int one = w->B == 1 || sb == m * sl; /* the batch's rows are evenly spaced */
    for (int64_t b = 0; b < (one ? 1 : w->B); b++)
        LMI_CUDA_TRY(cudaMemcpy2DAsync(dst + b * m * W * es, (size_t)(W * es), src + b * sb * es,
                                       (size_t)(sl * es), (size_t)(W * es), (size_t)(one ? w->B * m : m),
                                       cudaMemcpyDeviceToDevice, w->s));
    return LM_OK;
}

/* q, k and/or v (parts p0 .. p1-1) of a slab into qkv, from their gathered
 * inputs; one GEMM when one input meets the adjacent rows of in_proj_weight. */
static lm_status project(const mbwd *w, int64_t t0, int64_t m, int p0, int p1)
{
    const int merge = w->self && w->w.packed;
    lm_status st;
    for (int i = p0; i < p1; i++)
        if ((!w->self || i == p0) && (st = gather(w, w->in[i], t0, m, w->x[i])))
            return st;
    for (int i = p0; i < p1; i = next_part(i, p1, merge)) {
        const int j = next_part(i, p1, merge);
        const lmi_gemm gm = { .rows = w->B * m, .N = w->col[j] - w->col[i], .K = w->width[i], .batch = 1,
                              .X = w->x[i], .ldx = w->width[i], .W = w->w.w[i], .ldw = w->width[i],
                              .bias = w->w.b[i], .Y = w->qkv + w->col[i] * w->es, .ldy = w->ld,
                              .dtype = w->dt, .alpha = 1 };
        if ((st = lmi_cuda_gemm(w->ctx, &gm, w->s)))
            return st;
    }
    return LM_OK;
}

/* The out-projection's weight gradients from the slab's dy and o. */
static lm_status out_weight_grads(const mbwd *w, int64_t m)
{
    const int64_t R = w->B * m;
    lm_status st = grad_weight(w, acc_wo(w), w->dy, w->E, w->o, R, w->E, w->Dq);
    if (st == LM_OK && w->a->w.out_proj_bias)
        st = grad_bias(w, acc_bo(w), w->dy, w->E, R, w->E);
    return st;
}

/* dO = dy Wo: the gradient of the slab's attention output. */
static lm_status out_input_grad(const mbwd *w, int64_t m)
{
    const lmi_gemm gm = { .rows = w->B * m, .N = w->Dq, .K = w->E, .batch = 1, .X = w->dy, .ldx = w->E,
                          .W = w->a->w.out_proj_weight, .ldw = w->Dq, .w_t = 1, .Y = w->dO, .ldy = w->Dq,
                          .dtype = w->dt, .alpha = 1 };
    return lmi_cuda_gemm(w->ctx, &gm, w->s);
}

/* The in-projections' weight and bias gradients of parts p0 .. p1-1 from
 * dqkv; one weight GEMM when one input serves them all (self-attention: the
 * accumulators' rows are adjacent too). */
static lm_status in_weight_grads(const mbwd *w, int64_t m, int p0, int p1)
{
    const int64_t R = w->B * m, es = w->es;
    lm_status st = LM_OK;
    if (w->w.b[0])
        st = grad_bias(w, acc_bin(w) + w->col[p0], w->dqkv + w->col[p0] * es, w->ld, R,
                       w->col[p1] - w->col[p0]);
    for (int i = p0; i < p1 && st == LM_OK; i = next_part(i, p1, w->self)) {
        const int j = next_part(i, p1, w->self);
        st = grad_weight(w, acc_w(w, i), w->dqkv + w->col[i] * es, w->ld, w->x[i], R, w->col[j] - w->col[i],
                         w->width[i]);
    }
    return st;
}

/* dx = d W for parts p0 .. p1-1 into the caller's input gradients. One tensor
 * for all three (shared) gets the sum, added to what it holds when `add`; one
 * GEMM when in_proj_weight's rows are adjacent like dqkv's columns. */
static lm_status in_input_grads(const mbwd *w, int64_t t0, int64_t m, int p0, int p1, int add)
{
    const int merge = w->shared && w->w.packed;
    for (int i = p0; i < p1; i = next_part(i, p1, merge)) {
        const int j = next_part(i, p1, merge);
        if (!w->dx[i])
            continue;
        lmi_gemm gm = { .rows = m, .N = w->width[i], .K = w->col[j] - w->col[i], .batch = w->B,
                        .X = w->dqkv + w->col[i] * w->es, .ldx = w->ld, .sx = m * w->ld, .W = w->w.w[i],
                        .ldw = w->width[i], .w_t = 1, .dtype = w->dt, .alpha = 1,
                        .beta = w->shared && (add || i > p0) ? 1.0f : 0.0f };
        gm.Y = lmi_cuda_rows_of(w->dx[i], t0, &gm.ldy, &gm.sy);
        lm_status st = lmi_cuda_gemm(w->ctx, &gm, w->s);
        if (st)
            return st;
    }
    return LM_OK;
}

/* ---- the core on a slab ---- */

/* Core parameters of a slab's buffers: L queries and Lk keys (m or 0) of
 * tokens from t0, from `state` (NULL = empty). */
static void slab_core(const mbwd *w, lmi_core_params *p, int64_t t0, int64_t m, int64_t L, int64_t Lk,
                      float *state)
{
    lmi_cuda_core_base(w->a, w->B, state, w->f->compensated, p);
    p->causal = w->f->causal;
    p->L = L, p->Lk = Lk;
    p->q = lmi_cuda_view(w->qkv, w->dt, m, w->ld, w->D);
    p->k = lmi_cuda_view(w->qkv + w->col[PK] * w->es, w->dt, m, w->ld, w->D);
    p->v = lmi_cuda_view(w->qkv + w->col[PV] * w->es, w->dt, m, w->ld, w->D);
    p->out = lmi_cuda_view(w->o, w->dt, m, w->Dq, w->D);
    const lm_tensor *km = w->f->key_padding_mask;
    if (km && Lk) {
        p->mask = (const uint8_t *)km->data + t0 * km->stride[1];
        p->mask_s[0] = km->stride[0], p->mask_s[1] = km->stride[1];
    }
}

/* The core backward's gradients of a slab (dout = dO, dq, dk, dv in dqkv). */
static lmi_core_grad_params slab_grads(const mbwd *w, int64_t m, const float *dS_out, float *dS_in)
{
    const int64_t zoff = w->B * w->a->Hkv * w->D * w->D;
    const lmi_core_grad_params g = {
        .dout = lmi_cuda_view(w->dO, w->dt, m, w->Dq, w->D),
        .dq = lmi_cuda_view(w->dqkv, w->dt, m, w->ld, w->D),
        .dk = lmi_cuda_view(w->dqkv + w->col[PK] * w->es, w->dt, m, w->ld, w->D),
        .dv = lmi_cuda_view(w->dqkv + w->col[PV] * w->es, w->dt, m, w->ld, w->D),
        .dstate_out = dS_out,
        .dnormalizer_out = dS_out ? dS_out + zoff : NULL,
        .dstate_in = dS_in,
        .dnormalizer_in = dS_in ? dS_in + zoff : NULL,
    };
    return g;
}

/* Sweep 2's key: one masked token of zeros. */
static void dummy_key(const mbwd *w, lmi_core_params *p, lmi_core_grad_params *g)
{
    p->Lk = 1;
    p->k = p->v = lmi_cuda_view(w->zk, w->dt, 1, w->Dkv, w->D);
    p->mask = w->ones;
    p->mask_s[0] = 1, p->mask_s[1] = 1;
    g->dk = lmi_cuda_view(w->sk, w->dt, 1, w->Dkv, w->D);
    g->dv = lmi_cuda_view(w->sv, w->dt, 1, w->Dkv, w->D);
}

/* Sweep 3's query: one token of zeros whose output gradient is zero. */
static void dummy_query(const mbwd *w, lmi_core_params *p, lmi_core_grad_params *g)
{
    p->L = 1;
    p->q = g->dout = lmi_cuda_view(w->zq, w->dt, 1, w->Dq, w->D);
    g->dq = lmi_cuda_view(w->sq, w->dt, 1, w->Dq, w->D);
}

/* ---- the sweeps ---- */

static lm_status causal(const mbwd *w)
{
    const int64_t L = w->f->Lq, n = w->n, ns = lmi_cdiv(L, n), sf = w->sf;
    float *ck = w->states, *carry[2] = { ck + (ns + 1) * sf, ck + (ns + 2) * sf };
    lmi_core_params p;
    lm_status st;
    for (int64_t j = 0; j < ns; j++) { /* ck[j + 1] = ck[j] advanced over slab j */
        const int64_t t0 = j * n, m = slab_len(w, t0, L);
        LMI_CUDA_TRY(cudaMemcpyAsync(ck + (j + 1) * sf, ck + j * sf, (size_t)sf * sizeof(float),
                                     cudaMemcpyDeviceToDevice, w->s));
        slab_core(w, &p, t0, m, m, m, ck + (j + 1) * sf);
        if ((st = project(w, t0, m, PQ, NPART)) || (st = lmi_cuda_prefill(&p, w->s)) ||
            (st = gather(w, w->g->dout, t0, m, w->dy)) || (st = out_weight_grads(w, m)))
            return st;
    }
    for (int64_t j = ns - 1; j >= 0; j--) { /* slab j's dS_in is slab j-1's dS_out */
        const int64_t t0 = j * n, m = slab_len(w, t0, L);
        slab_core(w, &p, t0, m, m, m, ck + j * sf);
        const lmi_core_grad_params g = slab_grads(w, m, j + 1 < ns ? carry[(j + 1) % 2] : NULL,
                                                  j ? carry[j % 2] : NULL);
        if ((st = project(w, t0, m, PQ, NPART)) || (st = gather(w, w->g->dout, t0, m, w->dy)) ||
            (st = out_input_grad(w, m)) || (st = lmi_cuda_backward(&p, &g, w->s)) ||
            (st = in_weight_grads(w, m, PQ, NPART)) || (st = in_input_grads(w, t0, m, PQ, NPART, 0)))
            return st;
    }
    return LM_OK;
}

static lm_status bidirectional(const mbwd *w)
{
    const int64_t Lq = w->f->Lq, Lk = w->f->Lk, n = w->n, sf = w->sf;
    float *S = w->states, *carry[2] = { S + sf, S + 2 * sf };
    lmi_core_params p;
    lmi_core_grad_params g;
    lm_status st;
    for (int64_t t0 = 0; t0 < Lk; t0 += n) {
        const int64_t m = slab_len(w, t0, Lk);
        slab_core(w, &p, t0, m, 0, m, S);
        if ((st = project(w, t0, m, PK, NPART)) || (st = lmi_cuda_prefill(&p, w->s)))
            return st;
    }
    int64_t j = 0; /* query slab j adds its part to carry[(j + 1) % 2] into carry[j % 2] */
    for (int64_t t0 = 0; t0 < Lq; t0 += n, j++) {
        const int64_t m = slab_len(w, t0, Lq);
        slab_core(w, &p, t0, m, m, 0, S);
        if ((st = project(w, t0, m, PQ, PK)) || (st = lmi_cuda_prefill(&p, w->s)) ||
            (st = gather(w, w->g->dout, t0, m, w->dy)) || (st = out_weight_grads(w, m)) ||
            (st = out_input_grad(w, m)))
            return st;
        g = slab_grads(w, m, j ? carry[(j + 1) % 2] : NULL, carry[j % 2]);
        dummy_key(w, &p, &g);
        if ((st = lmi_cuda_backward(&p, &g, w->s)) || (st = in_weight_grads(w, m, PQ, PK)) ||
            (st = in_input_grads(w, t0, m, PQ, PK, 0)))
            return st;
    }
    const float *dS = carry[(j + 1) % 2]; /* the last one written: the gradient of S */
    for (int64_t t0 = 0; t0 < Lk; t0 += n) {
        const int64_t m = slab_len(w, t0, Lk);
        slab_core(w, &p, t0, m, 0, m, NULL);
        g = slab_grads(w, m, dS, NULL);
        dummy_query(w, &p, &g);
        if ((st = project(w, t0, m, PK, NPART)) || (st = lmi_cuda_backward(&p, &g, w->s)) ||
            (st = in_weight_grads(w, m, PK, NPART)) || (st = in_input_grads(w, t0, m, PK, NPART, 1)))
            return st;
    }
    return LM_OK;
}

/* ---- weight gradients in and out ---- */

typedef struct wgrad {
    void *dst;
    float *acc;
    int64_t rows, cols;
} wgrad;

/* The weight-gradient buffers the caller gave, with their accumulators. */
static int wanted_weight_grads(const mbwd *w, wgrad *out)
{
    const lm_attn_grads *g = w->g;
    const int64_t E = w->E, Dq = w->Dq, Dkv = w->Dkv;
    const wgrad all[] = {
        { g->in_proj_weight, acc_w(w, PQ), w->ld, E },
        { g->q_proj_weight, acc_w(w, PQ), Dq, E },
        { g->k_proj_weight, acc_w(w, PK), Dkv, w->width[PK] },
        { g->v_proj_weight, acc_w(w, PV), Dkv, w->width[PV] },
        { g->in_proj_bias, acc_bin(w), 1, w->ld },
        { g->out_proj_weight, acc_wo(w), E, Dq },
        { g->out_proj_bias, acc_bo(w), 1, E },
    };
    int n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i].dst)
            out[n++] = all[i];
    return n;
}

/* to_caller = 0: the caller's gradients into the accumulators (accumulate);
 * 1: the accumulators into the caller's buffers, in the dtype. */
static lm_status move_weight_grads(const mbwd *w, int to_caller)
{
    wgrad list[7];
    const int n = wanted_weight_grads(w, list);
    for (int i = 0; i < n; i++) {
        const wgrad *x = &list[i];
        lm_status st = to_caller
                           ? lmi_cuda_convert(w->ctx, x->dst, w->dt, x->acc, LM_F32, x->rows, x->cols, w->s)
                           : lmi_cuda_convert(w->ctx, x->acc, LM_F32, x->dst, w->dt, x->rows, x->cols, w->s);
        if (st)
            return st;
    }
    return LM_OK;
}

/* ---- the call ---- */

/* The slab copies and GEMMs read and write rows of stride 1 that do not overlap. */
static lm_status check_rows(const lm_tensor *t, const char *what)
{
    if (!t)
        return LM_OK;
    lm_status st = lmi_cuda_need_unit_stride(t, what);
    if (st == LM_OK && t->stride[1] < t->shape[2])
        st = lmi_error(LM_ERR_UNSUPPORTED,
                       "cuda: the backward needs the rows of %s at least their width apart "
                       "(row stride %lld, width %lld)", what, (long long)t->stride[1],
                       (long long)t->shape[2]);
    return st;
}

static lm_status check_call(const mbwd *w)
{
    const lm_tensor *t[] = { w->in[PQ], w->in[PK], w->in[PV], w->g->dout, w->dx[PQ], w->dx[PK], w->dx[PV] };
    const char *names[] = { "query", "key", "value", "dout", "dquery", "dkey", "dvalue" };
    lm_status st;
    for (int i = 0; i < 7; i++)
        if ((st = check_rows(t[i], names[i])))
            return st;
    lmi_core_params p; /* head dims, decay heads, shared memory: as the forward checks them */
    lmi_cuda_core_base(w->a, w->B, NULL, 0, &p);
    p.q.dtype = w->dt;
    return lmi_cuda_check_core(&p, w->ctx->device);
}

/* With the workspace laid out and zeroed. */
static lm_status run(const mbwd *w)
{
    LMI_CUDA_TRY(cudaMemsetAsync(w->u, U_BYTE, (size_t)(w->B * w->n * w->es), w->s));
    LMI_CUDA_TRY(cudaMemsetAsync(w->ones, 1, (size_t)w->B, w->s));
    lm_status st;
    if (w->g->accumulate && (st = move_weight_grads(w, 0)))
        return st;
    if ((st = w->f->causal ? causal(w) : bidirectional(w)))
        return st;
    return move_weight_grads(w, 1);
}

static lm_status backward_on(mbwd *w)
{
    lm_status st = check_call(w);
    if (st)
        return st;
    carver c = { NULL, 0 };
    lay_out(w, &c);
    void *ws = NULL;
    LMI_CUDA_TRY(cudaMallocAsync(&ws, c.used, w->s));
    const size_t bytes = c.used;
    c = (carver){ ws, 0 };
    lay_out(w, &c);
    cudaError_t e = cudaMemsetAsync(ws, 0, bytes, w->s);
    st = e == cudaSuccess ? run(w) : lmi_cuda_fail(e, "cudaMemsetAsync(workspace)", __FILE__, __LINE__);
    e = cudaFreeAsync(ws, w->s);
    if (st == LM_OK && e != cudaSuccess)
        st = lmi_cuda_fail(e, "cudaFreeAsync(workspace)", __FILE__, __LINE__);
    return st;
}

/* The value of a dtype element whose bytes are all U_BYTE. */
static float u_value(int dtype)
{
    const uint8_t bytes[4] = { U_BYTE, U_BYTE, U_BYTE, U_BYTE };
    float c;
    lmi_load_row(&c, bytes, dtype, 1, 1);
    return c;
}

lm_status lmi_cuda_attn_backward(lm_attn *a, const lmi_forward *f, const lm_attn_grads *g, void *stream)
{
    mbwd w = { .a = a, .ctx = a->be_ctx, .f = f, .g = g, .s = (cudaStream_t)stream, .dt = a->cfg.dtype,
               .B = f->B, .E = a->E, .D = a->D, .Dq = a->Hq * a->D, .Dkv = a->Hkv * a->D };
    w.w = lmi_cuda_weights_of(a);
    w.ld = w.Dq + 2 * w.Dkv;
    w.es = (int64_t)lmi_dtype_bytes(a->cfg.dtype);
    w.sf = lmi_state_floats(a, f->B);
    w.col[PQ] = 0, w.col[PK] = w.Dq, w.col[PV] = w.Dq + w.Dkv, w.col[NPART] = w.ld;
    w.width[PQ] = a->E, w.width[PK] = a->kdim, w.width[PV] = a->vdim;
    w.in[PQ] = f->query, w.in[PK] = f->key, w.in[PV] = f->value;
    w.dx[PQ] = g->dquery, w.dx[PK] = g->dkey, w.dx[PV] = g->dvalue;
    w.self = lmi_cuda_same_tensor(f->query, f->key) && lmi_cuda_same_tensor(f->key, f->value);
    w.shared = g->dquery && g->dkey && g->dvalue && lmi_cuda_same_tensor(g->dquery, g->dkey) &&
               lmi_cuda_same_tensor(g->dkey, g->dvalue);
    w.inv_c = (float)(1.0 / u_value(w.dt));
    w.n = slab_tokens(&w);
    w.nstates = f->causal ? lmi_cdiv(f->Lq, w.n) + 3 : 3;

    lmi_cuda_ctx *ctx = a->be_ctx;
    int prev;
    lm_status st = lmi_cuda_enter(ctx->device, &prev);
    if (st)
        return st;
    if ((st = lmi_cuda_use_stream(ctx, w.s)) == LM_OK)
        st = backward_on(&w);
    lmi_cuda_leave(ctx->device, prev);
    return st;
}
