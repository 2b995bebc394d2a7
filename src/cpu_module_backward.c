/*
 * cpu_module_backward.c - the module backward on the CPU: gradients of the
 * inputs and of the four projections (weights and biases), with the attention
 * core's backward (cpu_backward.c) in the middle. Like the forward it streams
 * through the sequence in slabs, so extra memory is O(slab) plus one state
 * per slab, never O(L E):
 *
 * causal         sweep 1 forwards: project k, v, advance the state; keep the
 *                state at the start of every slab (a checkpoint).
 *                sweep 2 backwards over slabs: project q, k, v again, rerun
 *                the slab's attention from its checkpoint (its output feeds
 *                the out-projection's weight gradient), then the core
 *                backward from the checkpoint, carrying the state gradient to
 *                the slab before, and the projections' gradients.
 * bidirectional  sweep 1: every key slab into the state S (the forward's).
 *                sweep 2 over query slabs: outputs from S, the out-projection
 *                and core backward (dq), summing the gradient of S.
 *                sweep 3 over key slabs: the core backward from that sum
 *                gives dk, dv, then the projections' gradients.
 * With y = x W^T + b: dW += dy^T x, db += sum of dy's rows, dx = dy W.
 * Weight gradients accumulate in fp32 and are written (or added) once.
 */
#include "cpu_rows.h"
#include "dtype.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* acc[N, K] += g[R, N]^T x[R, K] (g with row stride ldg); bias[N] += g's
 * column sums when bias is given. */
static void grad_weight(float *acc, float *bias, const float *g, int64_t ldg, const float *x,
                        int64_t R, int64_t N, int64_t K)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N, (int)K, (int)R, 1.0f, g,
                (int)ldg, x, (int)K, 1.0f, acc, (int)K);
    for (int64_t r = 0; bias && r < R; r++)
        for (int64_t c = 0; c < N; c++)
            bias[c] += g[r * ldg + c];
}

/* dx[R, K] = g[R, N] w[N, K] + beta dx. */
static void grad_input(float *dx, const float *g, int64_t ldg, const float *w, int64_t R,
                       int64_t N, int64_t K, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)K, (int)N, 1.0f, g,
                (int)ldg, w, (int)K, beta, dx, (int)K);
}

/* Writes (or adds, accumulate) n fp32 values to a gradient buffer of dtype. */
static void put_grad(void *dst, const float *src, int64_t n, int dtype, int accumulate,
                     float *tmp)
{
    if (!dst)
        return;
    if (accumulate) {
        lmi_load_row(tmp, dst, dtype, n, 1);
        for (int64_t i = 0; i < n; i++)
            tmp[i] += src[i];
        src = tmp;
    }
    lmi_store_row(dst, dtype, src, n, 1);
}

typedef struct bwd {
    lm_attn *a;
    const lmi_forward *f;
    const lm_attn_grads *g;
    lmi_cpu_weights cw;
    int64_t B, E, D, Dq, Dkv, ld, n, sf;
    int self, shared;              /* query == key == value; one input-gradient tensor */
    float *xq, *xk, *xv;           /* gathered inputs [R, E], [R, kdim], [R, vdim] */
    float *qkv, *o, *dy, *dO, *dqkv, *dx;
    float *dw;                     /* dWq dWk dWv (adjacent), dWo, dbq dbk dbv, dbo */
    float *tmp_state;
} bwd;

static float *dw_wq(const bwd *w) { return w->dw; }
static float *dw_wk(const bwd *w) { return w->dw + w->Dq * w->E; }
static float *dw_wv(const bwd *w) { return dw_wk(w) + w->Dkv * w->a->kdim; }
static float *dw_wo(const bwd *w) { return dw_wv(w) + w->Dkv * w->a->vdim; }
static float *dw_bq(const bwd *w) { return dw_wo(w) + w->E * w->Dq; }
static float *dw_bo(const bwd *w) { return dw_bq(w) + w->ld; }
static int64_t dw_floats(const bwd *w) { return dw_bo(w) + w->E - w->dw; }

/* Gathers a slab's inputs and projects what is asked: q and/or k, v. */
static void project_slab(bwd *w, int64_t t0, int64_t m, int want_q, int want_kv)
{
    const int64_t R = w->B * m, Dq = w->Dq, Dkv = w->Dkv, ld = w->ld;
    const lmi_cpu_weights *cw = &w->cw;
    if (want_q) {
        lmi_cpu_gather(w->xq, w->f->query, w->B, t0, m);
        lmi_cpu_project(w->qkv, ld, w->xq, R, w->E, cw->wq, Dq, cw->bq);
    }
    if (!want_kv)
        return;
    if (!(w->self && want_q)) {
        lmi_cpu_gather(w->xk, w->f->key, w->B, t0, m);
        if (!w->self)
            lmi_cpu_gather(w->xv, w->f->value, w->B, t0, m);
    }
    lmi_cpu_project(w->qkv + Dq, ld, w->xk, R, w->a->kdim, cw->wk, Dkv, cw->bk);
    lmi_cpu_project(w->qkv + Dq + Dkv, ld, w->xv, R, w->a->vdim, cw->wv, Dkv, cw->bv);
}

static void slab_params(bwd *w, lmi_core_params *p, int64_t t0, int64_t m, int64_t L, int64_t Lk,
                        float *state)
{
    lmi_forward f = *w->f;
    f.state = state;
    lmi_cpu_core_params(w->a, &f, p);
    p->causal = w->f->causal;
    p->L = L, p->Lk = Lk;
    p->q = lmi_cpu_rows_view(w->qkv, m, w->ld, 0, w->D);
    p->k = lmi_cpu_rows_view(w->qkv, m, w->ld, w->Dq, w->D);
    p->v = lmi_cpu_rows_view(w->qkv, m, w->ld, w->Dq + w->Dkv, w->D);
    p->out = lmi_cpu_rows_view(w->o, m, w->Dq, 0, w->D);
    lmi_cpu_slab_mask(p, Lk ? w->f->key_padding_mask : NULL, t0);
}

/* The out-projection's part for a slab whose attention output is in o:
 * dWo, dbo, and dO = dy Wo. */
static void out_projection_grads(bwd *w, int64_t t0, int64_t m)
{
    const int64_t R = w->B * m;
    lmi_cpu_gather(w->dy, w->g->dout, w->B, t0, m);
    grad_weight(dw_wo(w), dw_bo(w), w->dy, w->E, w->o, R, w->E, w->Dq);
    grad_input(w->dO, w->dy, w->E, w->cw.wo, R, w->E, w->Dq, 0.0f);
}

/* The core backward of a slab from `state`; dS_out / dS_in as in the core. */
static lm_status core_backward(bwd *w, lmi_core_params *p, int64_t m, const float *dS_out,
                               float *dS_in)
{
    const int64_t zoff = w->B * w->a->Hkv * w->D * w->D;
    lmi_core_grad_params g = {
        .dout = lmi_cpu_rows_view(w->dO, m, w->Dq, 0, w->D),
        .dq = lmi_cpu_rows_view(w->dqkv, m, w->ld, 0, w->D),
        .dk = lmi_cpu_rows_view(w->dqkv, m, w->ld, w->Dq, w->D),
        .dv = lmi_cpu_rows_view(w->dqkv, m, w->ld, w->Dq + w->Dkv, w->D),
        .dstate_out = dS_out,
        .dnormalizer_out = dS_out ? dS_out + zoff : NULL,
        .dstate_in = dS_in,
        .dnormalizer_in = dS_in ? dS_in + zoff : NULL,
    };
    return lmi_cpu_backward(p, &g, NULL);
}

/* The in-projections' part of a slab: dW, db of q and/or k, v, and the input
 * gradients (dx = dq Wq + dk Wk + dv Wv into one tensor when shared). */
static void in_projection_grads(bwd *w, int64_t t0, int64_t m, int q, int kv, int add)
{
    const int64_t R = w->B * m, Dq = w->Dq, Dkv = w->Dkv, ld = w->ld;
    const lm_attn_grads *g = w->g;
    const lmi_cpu_weights *cw = &w->cw;
    float *db = w->a->w.in_proj_bias ? dw_bq(w) : NULL;
    if (q)
        grad_weight(dw_wq(w), db, w->dqkv, ld, w->xq, R, Dq, w->E);
    if (kv) {
        grad_weight(dw_wk(w), db ? db + Dq : NULL, w->dqkv + Dq, ld, w->xk, R, Dkv, w->a->kdim);
        grad_weight(dw_wv(w), db ? db + Dq + Dkv : NULL, w->dqkv + Dq + Dkv, ld, w->xv, R, Dkv,
                    w->a->vdim);
    }
    if (w->shared) {
        float beta = 0.0f;
        if (q)
            grad_input(w->dx, w->dqkv, ld, cw->wq, R, Dq, w->E, beta), beta = 1.0f;
        if (kv) {
            grad_input(w->dx, w->dqkv + Dq, ld, cw->wk, R, Dkv, w->E, beta);
            grad_input(w->dx, w->dqkv + Dq + Dkv, ld, cw->wv, R, Dkv, w->E, 1.0f);
        }
        lmi_cpu_scatter(g->dquery, w->dx, w->B, t0, m, add);
        return;
    }
    if (q && g->dquery) {
        grad_input(w->dx, w->dqkv, ld, cw->wq, R, Dq, w->E, 0.0f);
        lmi_cpu_scatter(g->dquery, w->dx, w->B, t0, m, 0);
    }
    if (kv && g->dkey) {
        grad_input(w->dx, w->dqkv + Dq, ld, cw->wk, R, Dkv, w->a->kdim, 0.0f);
        lmi_cpu_scatter(g->dkey, w->dx, w->B, t0, m, 0);
    }
    if (kv && g->dvalue) {
        grad_input(w->dx, w->dqkv + Dq + Dkv, ld, cw->wv, R, Dkv, w->a->vdim, 0.0f);
        lmi_cpu_scatter(g->dvalue, w->dx, w->B, t0, m, 0);
    }
}

static lm_status causal(bwd *w, float *ck, float *carry0, float *carry1)
{
    const int64_t L = w->f->Lq, n = w->n, ns = (L + n - 1) / n;
    const size_t sb = (size_t)w->sf * sizeof(float);
    lm_status st = LM_OK;
    lmi_core_params p;
    memset(ck, 0, sb);
    for (int64_t j = 0; j + 1 < ns && st == LM_OK; j++) {
        memcpy(ck + (j + 1) * w->sf, ck + j * w->sf, sb);
        project_slab(w, j * n, n, 0, 1);
        slab_params(w, &p, j * n, n, 0, n, ck + (j + 1) * w->sf);
        st = lmi_cpu_attend(&p);
    }
    float *dS_out = NULL, *dS_in = carry0;
    for (int64_t j = ns - 1; j >= 0 && st == LM_OK; j--) {
        const int64_t t0 = j * n, m = L - t0 < n ? L - t0 : n;
        project_slab(w, t0, m, 1, 1);
        memcpy(w->tmp_state, ck + j * w->sf, sb);
        slab_params(w, &p, t0, m, m, m, w->tmp_state);
        if ((st = lmi_cpu_attend(&p)))
            break;
        out_projection_grads(w, t0, m);
        p.state = ck + j * w->sf;
        p.normalizer = p.state + w->B * w->a->Hkv * w->D * w->D;
        if ((st = core_backward(w, &p, m, dS_out, j ? dS_in : NULL)))
            break;
        in_projection_grads(w, t0, m, 1, 1, 0);
        dS_out = dS_in;
        dS_in = dS_in == carry0 ? carry1 : carry0;
    }
    return st;
}

static lm_status bidirectional(bwd *w, float *S, float *dS, float *dS_slab)
{
    const int64_t n = w->n;
    lm_status st = LM_OK;
    lmi_core_params p;
    memset(S, 0, (size_t)w->sf * sizeof(float));
    memset(dS, 0, (size_t)w->sf * sizeof(float));
    for (int64_t t0 = 0; t0 < w->f->Lk && st == LM_OK; t0 += n) {
        const int64_t m = w->f->Lk - t0 < n ? w->f->Lk - t0 : n;
        project_slab(w, t0, m, 0, 1);
        slab_params(w, &p, t0, m, 0, m, S);
        st = lmi_cpu_attend(&p);
    }
    for (int64_t t0 = 0; t0 < w->f->Lq && st == LM_OK; t0 += n) {
        const int64_t m = w->f->Lq - t0 < n ? w->f->Lq - t0 : n;
        project_slab(w, t0, m, 1, 0);
        memcpy(w->tmp_state, S, (size_t)w->sf * sizeof(float));
        slab_params(w, &p, t0, m, m, 0, w->tmp_state);
        if ((st = lmi_cpu_attend(&p)))
            break;
        out_projection_grads(w, t0, m);
        p.state = S;
        p.normalizer = S + w->B * w->a->Hkv * w->D * w->D;
        if ((st = core_backward(w, &p, m, NULL, dS_slab)))
            break;
        for (int64_t i = 0; i < w->sf; i++)
            dS[i] += dS_slab[i];
        in_projection_grads(w, t0, m, 1, 0, 0);
    }
    for (int64_t t0 = 0; t0 < w->f->Lk && st == LM_OK; t0 += n) {
        const int64_t m = w->f->Lk - t0 < n ? w->f->Lk - t0 : n;
        project_slab(w, t0, m, 0, 1);
        slab_params(w, &p, t0, m, 0, m, S);
        if ((st = core_backward(w, &p, m, dS, NULL)))
            break;
        in_projection_grads(w, t0, m, 0, 1, 1);
    }
    return st;
}

/* The weight gradients, converted to the handle's dtype, into the buffers. */
static void write_weight_grads(bwd *w, float *tmp)
{
    const lm_attn_grads *g = w->g;
    const int dt = w->a->cfg.dtype, acc = g->accumulate;
    const int64_t Dq = w->Dq, Dkv = w->Dkv, E = w->E;
    put_grad(g->in_proj_weight, dw_wq(w), w->ld * E, dt, acc, tmp);
    put_grad(g->q_proj_weight, dw_wq(w), Dq * E, dt, acc, tmp);
    put_grad(g->k_proj_weight, dw_wk(w), Dkv * w->a->kdim, dt, acc, tmp);
    put_grad(g->v_proj_weight, dw_wv(w), Dkv * w->a->vdim, dt, acc, tmp);
    put_grad(g->in_proj_bias, dw_bq(w), w->ld, dt, acc, tmp);
    put_grad(g->out_proj_weight, dw_wo(w), E * Dq, dt, acc, tmp);
    put_grad(g->out_proj_bias, dw_bo(w), E, dt, acc, tmp);
}

lm_status lmi_cpu_attn_backward(lm_attn *a, const lmi_forward *f, const lm_attn_grads *g,
                                void *stream)
{
    (void)stream;
    bwd w = { .a = a, .f = f, .g = g, .B = f->B, .E = a->E, .D = a->D };
    w.Dq = a->Hq * a->D, w.Dkv = a->Hkv * a->D, w.ld = w.Dq + 2 * w.Dkv;
    w.sf = lmi_state_floats(a, f->B);
    w.self = lmi_cpu_same_tensor(f->query, f->key) && lmi_cpu_same_tensor(f->key, f->value);
    w.shared = g->dquery && g->dkey && g->dvalue && lmi_cpu_same_tensor(g->dquery, g->dkey) &&
               lmi_cpu_same_tensor(g->dkey, g->dvalue);
    const int64_t wmax = lmi_cpu_max_width(a), E = a->E, kd = a->kdim, vd = a->vdim;
    const int64_t per_row = E + kd + vd + 2 * w.ld + 2 * w.Dq + E + wmax;
    const int64_t Lmax = f->Lq > f->Lk ? f->Lq : f->Lk;
    w.n = lmi_cpu_slab_tokens(w.B, per_row, Lmax);
    const int64_t R = w.B * w.n, ns = (Lmax + w.n - 1) / w.n;
    const int64_t conv = lmi_cpu_conversion_floats(a);
    const int64_t ndw = w.Dq * E + w.Dkv * (kd + vd) + E * w.Dq + w.ld + E;
    const int64_t nstates = f->causal ? ns + 3 : 4;
    const int64_t tmp = ndw > wmax ? ndw : wmax;
    float *mem = lmi_cpu_scratch(a, (size_t)(conv + ndw + R * per_row + nstates * w.sf + tmp));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for the backward of a slab of "
                                               "%lld tokens", (long long)w.n);
    lmi_cpu_weights_get(a, &w.cw, mem);
    float *c = mem + conv;
    w.dw = c, c += ndw;
    w.xq = c, c += R * E;
    w.xk = c, c += R * kd;
    w.xv = c, c += R * vd;
    if (w.self)
        w.xk = w.xv = w.xq;
    w.qkv = c, c += R * w.ld;
    w.dqkv = c, c += R * w.ld;
    w.o = c, c += R * w.Dq;
    w.dO = c, c += R * w.Dq;
    w.dy = c, c += R * E;
    w.dx = c, c += R * wmax;
    w.tmp_state = c, c += w.sf;
    float *states = c, *scratch_end = c + (nstates - 1) * w.sf;
    memset(w.dw, 0, (size_t)dw_floats(&w) * sizeof(float));

    lm_status st = f->causal ? causal(&w, states + 2 * w.sf, states, states + w.sf)
                             : bidirectional(&w, states, states + w.sf, states + 2 * w.sf);
    if (st == LM_OK)
        write_weight_grads(&w, scratch_end);
    return st;
}
