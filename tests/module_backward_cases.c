/*
 * module_backward_cases.c - the module backward's problems, checks and case
 * grid (module_backward_cases.h), for any backend.
 *
 * Inputs and weights as the forward's (module_cases.c); dout uniform in
 * [-1, 1). Gradient buffers start as NaN before every call and must all be
 * written. Directional derivatives: central differences of the float64
 * module with eps 1e-4 (good to ~1e-8), U uniform in [-1, 1) per element.
 *
 * The grid is the union of what the CPU and GPU suites ran when each had
 * its own copy; the comment of each family says where its values come from.
 */
#include "module_backward_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void mbprob_init(mbprob *b, const test_dev *dev, const mbcase *c)
{
    memset(b, 0, sizeof *b);
    ck_assert_msg(!c->m.hybrid, "hybrid attention has no module backward");
    ck_assert(!c->shared || !c->m.cross);
    mprob_inputs(&b->p, dev, &c->m);
    b->c = *c;
    b->c.m = b->p.c;
    const mcase *m = &b->p.c;
    const int64_t nx = m->B * m->L * m->E;
    b->dout = tbuf_new(m->dtype, nx);
    tbuf_random(&b->dout, -1, 1);
    b->ddout = test_dev_input(dev, b->dout.data, tbuf_bytes(&b->dout));
    for (int s = 0; s < MS_NSLOTS; s++)
        b->ng[s] = mprob_slot(&b->p, s)->n;
    if (!m->cross) /* one input: three gradients of it, or one for all */
        b->ng[MS_XK] = b->ng[MS_XV] = c->shared ? 0 : nx;
    if (!m->bias)
        b->ng[MS_BIN] = b->ng[MS_BO] = 0;
}

void mbprob_free(mbprob *b)
{
    test_dev_drop(b->p.dev, b->ddout);
    tbuf_free(&b->dout);
    mprob_free(&b->p);
}

/* ---- gradients on a backend ---- */

void mbrun_new(mbrun *r, const mbprob *b, const test_dev *dev)
{
    memset(r, 0, sizeof *r);
    mrun_new(&r->r, &b->p, dev);
    for (int s = 0; s < MS_NSLOTS; s++)
        if (b->ng[s])
            r->g[s] = dev->alloc((size_t)b->ng[s] * lm_dtype_size(b->c.m.dtype));
    mbrun_poison(r, b);
}

void mbrun_poison(mbrun *r, const mbprob *b)
{
    for (int s = 0; s < MS_NSLOTS; s++)
        if (b->ng[s]) {
            tbuf nan = tbuf_new(b->c.m.dtype, b->ng[s]);
            tbuf_poison(&nan);
            r->r.dev->upload(r->g[s], nan.data, tbuf_bytes(&nan));
            tbuf_free(&nan);
        }
}

void mbrun_free(mbrun *r)
{
    for (int s = 0; s < MS_NSLOTS; s++)
        if (r->g[s])
            r->r.dev->release(r->g[s]);
    mrun_free(&r->r);
}

void mbgrads_read(mbgrads *out, const mbprob *b, const mbrun *r)
{
    memset(out, 0, sizeof *out);
    for (int s = 0; s < MS_NSLOTS; s++)
        if (b->ng[s]) {
            out->g[s] = tbuf_new(b->c.m.dtype, b->ng[s]);
            r->r.dev->download(out->g[s].data, r->g[s], tbuf_bytes(&out->g[s]));
        }
}

void mbgrads_free(mbgrads *g)
{
    for (int s = 0; s < MS_NSLOTS; s++)
        if (g->g[s].data)
            tbuf_free(&g->g[s]);
}

/* ---- calls ---- */

void mbcall_init(mbcall *k, const mbprob *b, const mbrun *r, int accumulate)
{
    const mprob *p = &b->p;
    const mcase *c = &p->c;
    const lm_device where = r->r.dev->device;
    const int host = where == LM_CPU;
    const lm_dtype dt = c->dtype;
    int64_t so[3];
    ref_strides3(so, c->B, c->L, c->E, 0);
    memset(k, 0, sizeof *k);
    k->q = ref_tensor3(host ? p->xq.data : p->dxq, dt, where, p->sx, c->B, c->L, c->E);
    k->k = k->v = k->q;
    if (c->cross) {
        k->k = ref_tensor3(host ? p->xk.data : p->dxk, dt, where, p->sk, c->B, c->Lk, c->kdim);
        k->v = ref_tensor3(host ? p->xv.data : p->dxv, dt, where, p->sv, c->B, c->Lk, c->vdim);
    }
    k->dout = ref_tensor3(host ? b->dout.data : b->ddout, dt, where, so, c->B, c->L, c->E);
    k->dq = ref_tensor3(r->g[MS_XQ], dt, where, p->sx, c->B, c->L, c->E);
    k->dk = ref_tensor3(r->g[MS_XK], dt, where, c->cross ? p->sk : p->sx, c->B, c->Lk, c->kdim);
    k->dv = ref_tensor3(r->g[MS_XV], dt, where, c->cross ? p->sv : p->sx, c->B, c->Lk, c->vdim);
    k->opts = (lm_forward_opts){ LM_SIZED(lm_forward_opts), .is_causal = c->causal };
    if (p->mask) {
        k->mask = lm_tensor_2d(host ? p->mask : p->dmask, LM_BOOL, where, c->B, c->Lk);
        k->opts.key_padding_mask = &k->mask;
    }
    lm_attn_grads *g = &k->g;
    *g = (lm_attn_grads){ LM_SIZED(lm_attn_grads), .dout = &k->dout, .dquery = &k->dq, .dkey = &k->dk,
                          .dvalue = &k->dv, .in_proj_bias = r->g[MS_BIN], .out_proj_weight = r->g[MS_WO],
                          .out_proj_bias = r->g[MS_BO], .accumulate = accumulate };
    if (b->c.shared)
        g->dkey = g->dvalue = &k->dq;
    if (c->packed)
        g->in_proj_weight = r->g[MS_WQ];
    else
        g->q_proj_weight = r->g[MS_WQ], g->k_proj_weight = r->g[MS_WK], g->v_proj_weight = r->g[MS_WV];
}

lm_status mbcall_run(const mbcall *k, const mbrun *r, void *stream)
{
    return lm_attn_backward(r->r.a, &k->q, &k->k, &k->v, &k->opts, &k->g, stream);
}

void mb_run(const mbprob *b, mbrun *r, void *stream)
{
    mbcall k;
    mbcall_init(&k, b, r, 0);
    ck_assert_msg(mbcall_run(&k, r, stream) == LM_OK, "backward on device %d: %s", (int)r->r.dev->device,
                  lm_last_error());
}

/* ---- checks ---- */

double mb_ref_cost(const mbcase *c)
{
    const mcase *m = &c->m;
    const double Lk = m->cross ? (double)m->Lk : (double)m->L, kd = m->cross ? (double)m->kdim : (double)m->E;
    const double vd = m->cross ? (double)m->vdim : (double)m->E, Dq = (double)(m->Hq * m->D);
    const double Dkv = (double)(m->Hkv * m->D), E = (double)m->E, L = (double)m->L;
    return (double)m->B * (2 * L * E * Dq + Lk * (kd + vd) * Dkv + (double)m->Hq * (L + Lk) * (double)(m->D * m->D));
}

void mb_describe(char *s, size_t n, const mbcase *c)
{
    char d[200];
    mdescribe(d, sizeof d, &c->m);
    snprintf(s, n, "%s sh%d st%d", d, c->shared, c->stream);
}

/* A parameter the finite differences perturb: elements [off, off + n) of
 * slot `slot`'s value, whose gradient is the same elements of the slot's
 * gradient. */
typedef struct piece {
    const char *name;
    int slot;
    int64_t off, n;
} piece;

/* The parameters of b, as the library's users name them; returns how many. */
static int pieces_of(const mbprob *b, piece *out)
{
    const mcase *c = &b->c.m;
    const int64_t E = c->E, Dq = c->Hq * c->D, Dkv = c->Hkv * c->D;
    int n = 0;
    out[n++] = (piece){ b->c.shared ? "query (= key = value)" : "query", MS_XQ, 0, b->ng[MS_XQ] };
    if (b->ng[MS_XK]) {
        out[n++] = (piece){ "key", MS_XK, 0, b->ng[MS_XK] };
        out[n++] = (piece){ "value", MS_XV, 0, b->ng[MS_XV] };
    }
    if (c->packed) {
        out[n++] = (piece){ "q weight", MS_WQ, 0, Dq * E };
        out[n++] = (piece){ "k weight", MS_WQ, Dq * E, Dkv * E };
        out[n++] = (piece){ "v weight", MS_WQ, (Dq + Dkv) * E, Dkv * E };
    } else {
        out[n++] = (piece){ "q weight", MS_WQ, 0, b->ng[MS_WQ] };
        out[n++] = (piece){ "k weight", MS_WK, 0, b->ng[MS_WK] };
        out[n++] = (piece){ "v weight", MS_WV, 0, b->ng[MS_WV] };
    }
    if (c->bias) {
        out[n++] = (piece){ "q bias", MS_BIN, 0, Dq };
        out[n++] = (piece){ "k bias", MS_BIN, Dq, Dkv };
        out[n++] = (piece){ "v bias", MS_BIN, Dq + Dkv, Dkv };
    }
    out[n++] = (piece){ "out weight", MS_WO, 0, b->ng[MS_WO] };
    if (c->bias)
        out[n++] = (piece){ "out bias", MS_BO, 0, b->ng[MS_BO] };
    return n;
}

/* The float64 values of slot s: its shadow, or in self attention the one
 * input's for the key and value (so each can be perturbed alone). */
static const double *value_of(const mbprob *b, int s)
{
    return (s == MS_XK || s == MS_XV) && !b->c.m.cross ? b->p.xq.ref : mprob_slot(&b->p, s)->ref;
}

/* loss = sum(dout * out) of the float64 module on the values v. */
static double loss(const mbprob *b, double *const *v)
{
    const ref_module m = mprob_module(&b->p, (const double *const *)v);
    const int64_t n = b->c.m.B * b->c.m.L * b->c.m.E;
    double *out = malloc((size_t)n * sizeof(double)), s = 0;
    ck_assert_ptr_nonnull(out);
    ref_module_forward(&m, out);
    for (int64_t i = 0; i < n; i++)
        s += out[i] * b->dout.ref[i];
    free(out);
    return s;
}

/* The error of one random direction U over pieces pc[0 .. np): |fd -
 * <grad, U>| / sum |grad_j U_j|; *fd and *an get the two. */
static double directional(const mbprob *b, const mbgrads *g, const piece *pc, int np, double *fd, double *an)
{
    const double eps = 1e-4;
    double *v[MS_NSLOTS] = { 0 }, *u[MS_NSLOTS] = { 0 }, mag = 0, l[2];
    *an = 0;
    /* Every value, perturbed or not: self attention's key and value are
     * copies of the query that stay put when it moves alone. */
    for (int s = 0; s < MS_NSLOTS; s++)
        if (b->ng[s]) {
            v[s] = malloc((size_t)b->ng[s] * sizeof(double));
            u[s] = calloc((size_t)b->ng[s], sizeof(double));
            ck_assert(v[s] && u[s]);
        }
    for (int i = 0; i < np; i++) {
        const int s = pc[i].slot;
        for (int64_t j = pc[i].off; j < pc[i].off + pc[i].n; j++) {
            u[s][j] = ref_uniform() * 2 - 1;
            const double gu = tbuf_get(&g->g[s], j) * u[s][j];
            *an += gu;
            mag += fabs(gu);
        }
    }
    for (int sg = 0; sg < 2; sg++) {
        for (int s = 0; s < MS_NSLOTS; s++) {
            const double *x = value_of(b, s);
            for (int64_t j = 0; v[s] && j < b->ng[s]; j++)
                v[s][j] = x[j] + (sg ? -eps : eps) * u[s][j];
        }
        l[sg] = loss(b, v);
    }
    for (int s = 0; s < MS_NSLOTS; s++)
        free(v[s]), free(u[s]);
    *fd = (l[0] - l[1]) / (2 * eps);
    /* Relative to the sum of magnitudes: <grad, U> cancels, fd does not. */
    return fabs(*fd - *an) / mag;
}

/* The largest directional error per dtype, and its case. */
static struct {
    double err;
    char what[260];
} worst[3];

/* The grid entry running now, named in messages, and the cases it left out. */
static const char *grid_name = "";
static int left_out;

double mb_check(const mb_env *e, const mbprob *b, const mbgrads *got)
{
    char d[240];
    mb_describe(d, sizeof d, &b->c);
    for (int s = 0; s < MS_NSLOTS; s++) {
        int64_t nan = 0;
        for (int64_t j = 0; j < b->ng[s]; j++)
            nan += isnan(tbuf_get(&got->g[s], j));
        ck_assert_msg(nan == 0, "%s: gradient of slot %d: %lld elements not written (%s)", grid_name, s,
                      (long long)nan, d);
    }
    const int how = e->fd(&b->c);
    if (how == MB_FD_NONE)
        return 0;
    piece pc[16];
    const int np = pieces_of(b, pc);
    const double bound = e->fd_bound(b->c.m.dtype);
    double most = 0, fd, an;
    for (int i = 0; i < (how == MB_FD_EACH ? np : 1); i++)
        for (int dir = 0; dir < (how == MB_FD_EACH ? 2 : 1); dir++) {
            const double err = how == MB_FD_EACH ? directional(b, got, &pc[i], 1, &fd, &an)
                                                 : directional(b, got, pc, np, &fd, &an);
            ck_assert_msg(err <= bound,
                          "%s: %s: directional derivative %.8g, gradient gives %.8g (error %.3g > %.3g) (%s)",
                          grid_name, how == MB_FD_EACH ? pc[i].name : "all parameters", fd, an, err, bound, d);
            most = err > most ? err : most;
        }
    const int dt = (int)b->c.m.dtype;
    if (most > worst[dt].err) {
        worst[dt].err = most;
        snprintf(worst[dt].what, sizeof worst[dt].what, "%s%s", how == MB_FD_EACH ? "each, " : "all, ", d);
    }
    return most;
}

int mb_print_worst(const mb_env *e)
{
    static const char *dts[] = { "bf16", "f16", "f32" };
    int n = 0;
    for (int dt = 0; dt < 3; dt++)
        if (worst[dt].err > 0) {
            printf("module backward on device %d: worst %s directional-derivative error vs float64 %.3g (bound "
                   "%.3g) (%s)\n",
                   (int)e->dev->device, dts[dt], worst[dt].err, e->fd_bound((lm_dtype)dt), worst[dt].what);
            n++;
        }
    return n;
}

/* ---- the grid ---- */

/* Case c's backward on e's backend, checked. */
static void check_case(const mb_env *e, const mbcase *c)
{
    if (e->fd(c) == MB_FD_NONE && !e->also) {
        left_out++;
        return;
    }
    mbprob b;
    mbprob_init(&b, e->dev, c);
    mbrun r;
    mbrun_new(&r, &b, e->dev);
    mb_run(&b, &r, c->stream && e->stream ? e->stream() : NULL);
    mbgrads got;
    mbgrads_read(&got, &b, &r);
    mbrun_free(&r);
    mb_check(e, &b, &got);
    if (e->also) {
        char d[240];
        mb_describe(d, sizeof d, &b.c);
        e->also(&b, &got, d);
    }
    mbgrads_free(&got);
    mbprob_free(&b);
}

/* Ragged lengths 1, 65, 63, 1000, both directions, a mask from 63, decay
 * when causal at 65 and 1000, packed and separate weights alternating (the
 * GPU suite's). */
static void grid_lengths(const mb_env *e)
{
    static const int64_t Ls[] = { 1, 65, 63, 1000 };
    for (int i = 0; i < 4; i++)
        for (int causal = 1; causal >= 0; causal--) {
            mbcase c = e->base;
            c.m.L = Ls[i], c.m.causal = causal;
            c.m.mask = i >= 2, c.m.decay = causal && i % 2, c.m.packed = (i + causal) % 2;
            check_case(e, &c);
        }
}

/* Several slabs of the backward: one batch of 2100 tokens, two heads of 16
 * (the CPU's slabs, 1024 tokens here; the CPU suite's); B = 8, whose GPU
 * slabs (8192 rows) are 1024 tokens, so 3000 tokens are three (the last
 * ragged) and 2049 three with a last slab of one token, a mask, decay,
 * bf16 and f32, one shared input gradient (the GPU suite's). */
static void grid_slabs(const mb_env *e)
{
    mbcase c = e->base;
    c.m.B = 1, c.m.L = 2100, c.m.Hq = c.m.Hkv = 2, c.m.D = 16;
    check_case(e, &c);
    for (int i = 0; i < 4; i++) {
        c = e->base;
        c.m.B = 8, c.m.L = i < 2 ? 3000 : 2049;
        c.m.causal = i % 2 == 0;
        c.m.dtype = i == 1 || i == 2 ? LM_F32 : LM_BF16;
        c.m.mask = 1, c.m.decay = c.m.causal && i == 0, c.shared = i == 3;
        check_case(e, &c);
    }
}

/* Cross attention with separate weights and a mask: 50 queries on 2100 keys
 * (several key slabs), kdim 24, vdim 40, two heads of 16 on one kv head, B =
 * 1 (the CPU suite's); 50 queries on 2100 keys, B = 8, kdim 96, vdim 160, one
 * kv head; 40 queries on 90 keys in f32 (the GPU suite's). */
static void grid_cross(const mb_env *e)
{
    for (int i = 0; i < 3; i++) {
        mbcase c = e->base;
        c.m.cross = 1, c.m.causal = 0, c.m.packed = 0, c.m.mask = 1;
        c.m.L = i < 2 ? 50 : 40, c.m.Lk = i < 2 ? 2100 : 90;
        c.m.kdim = i ? 96 : 24, c.m.vdim = i ? 160 : 40;
        if (i == 0)
            c.m.B = 1, c.m.Hq = 2, c.m.Hkv = 1, c.m.D = 16;
        if (i == 1)
            c.m.B = 8, c.m.Hkv = 1;
        if (i == 2)
            c.m.dtype = LM_F32;
        check_case(e, &c);
    }
}

/* GQA with decay, a mask and one shared input gradient; bidirectional with a
 * mask at 130 tokens, without and with a shared gradient; no biases;
 * separate weights on one kv head; bf16 at 70 tokens (the CPU suite's); at
 * 130 tokens: shared with a mask and decay; shared, separate weights,
 * bidirectional; no biases on one kv head; sequence-first with a mask on the
 * suite's stream; sequence-first bidirectional shared in f32; f16 with
 * decay; relu unnormalised with a mask (no float64 reference); two heads of
 * 128 bidirectional in f32 (the GPU suite's). */
static void grid_variants(const mb_env *e)
{
    for (int i = 0; i < 6; i++) {
        mbcase c = e->base;
        switch (i) {
        case 0: c.m.Hkv = c.m.Hq / 2, c.m.decay = 1, c.m.mask = 1, c.shared = 1; break;
        case 1:
        case 2: c.m.causal = 0, c.m.mask = 1, c.shared = i == 2, c.m.L = 130; break;
        case 3: c.m.bias = 0; break;
        case 4: c.m.packed = 0, c.m.Hkv = 1; break;
        case 5: c.m.dtype = LM_BF16, c.m.L = 70; break;
        }
        check_case(e, &c);
    }
    for (int i = 0; i < 8; i++) {
        mbcase c = e->base;
        c.m.L = 130;
        switch (i) {
        case 0: c.shared = 1, c.m.mask = 1, c.m.decay = 1; break;
        case 1: c.shared = 1, c.m.packed = 0, c.m.causal = 0; break;
        case 2: c.m.bias = 0, c.m.Hkv = 1; break;
        case 3: c.m.seq_first = 1, c.m.mask = 1, c.stream = 1; break;
        case 4: c.m.seq_first = 1, c.m.causal = 0, c.shared = 1, c.m.dtype = LM_F32; break;
        case 5: c.m.dtype = LM_F16, c.m.decay = 1; break;
        case 6: c.m.fm = LM_FEATURE_RELU, c.m.unnormalized = 1, c.m.mask = 1; break;
        case 7: c.m.Hq = c.m.Hkv = 2, c.m.D = 128, c.m.dtype = LM_F32, c.m.causal = 0; break;
        }
        check_case(e, &c);
    }
}

/* accumulate = 1 adds to the weight and bias buffers: two calls give twice
 * one within e->acc_bound; the input gradients are written anew, the same
 * bits. */
static void check_accumulate(const mb_env *e, const mbcase *c)
{
    mbprob b;
    mbprob_init(&b, e->dev, c);
    mbrun r;
    mbrun_new(&r, &b, e->dev);
    mbgrads once, twice;
    for (int round = 0; round < 2; round++) {
        mbcall k;
        mbcall_init(&k, &b, &r, round);
        ck_assert_msg(mbcall_run(&k, &r, NULL) == LM_OK, "%s", lm_last_error());
        mbgrads_read(round ? &twice : &once, &b, &r);
    }
    for (int s = 0; s < MS_NSLOTS; s++) {
        if (!b.ng[s])
            continue;
        if (s <= MS_XV) {
            ck_assert_msg(!memcmp(once.g[s].data, twice.g[s].data, tbuf_bytes(&once.g[s])),
                          "input gradient of slot %d changed in an accumulating call", s);
            continue;
        }
        double num = 0, den = 0;
        for (int64_t j = 0; j < b.ng[s]; j++) {
            const double want = 2 * tbuf_get(&once.g[s], j), y = tbuf_get(&twice.g[s], j);
            num += (y - want) * (y - want), den += want * want;
        }
        const double err = sqrt(num / den);
        ck_assert_msg(err <= e->acc_bound, "slot %d after the second call: %.3g from twice the first, > %.3g", s,
                      err, e->acc_bound);
    }
    mbgrads_free(&once);
    mbgrads_free(&twice);
    mbrun_free(&r);
    mbprob_free(&b);
}

/* The base case in f32 (the CPU suite's); f32, B = 8, 1500 tokens, a mask
 * (the GPU suite's). */
static void grid_accumulate(const mb_env *e)
{
    mbcase c = e->base;
    c.m.dtype = LM_F32;
    check_accumulate(e, &c);
    c.m.B = 8, c.m.L = 1500, c.m.mask = 1;
    check_accumulate(e, &c);
}

/* Bad calls: an error status and message, and the handle's state (from a
 * forward that kept it) untouched, by them and by a good call (the CPU
 * suite's). */
static void grid_bad_calls(const mb_env *e)
{
    mbcase c = e->base;
    c.m.packed = 1, c.m.bias = 1;
    mbprob b;
    mbprob_init(&b, e->dev, &c);
    mbrun r;
    mbrun_new(&r, &b, e->dev);
    mbcall k, bad;
    mbcall_init(&k, &b, &r, 0);
    ck_assert(mforward(&b.p, &r.r, 0, c.m.L, 0, 1, NULL) == LM_OK);
    size_t bytes;
    ck_assert(lm_attn_state_size(r.r.a, &bytes) == LM_OK);
    char *before = malloc(bytes), *after = malloc(bytes);
    ck_assert(before && after);
    ck_assert(lm_attn_get_state(r.r.a, before, bytes) == LM_OK);

    EXPECT_ERR(lm_attn_backward(NULL, &k.q, &k.k, &k.v, &k.opts, &k.g, NULL), LM_ERR_INVALID_ARG, "attn");
    EXPECT_ERR(lm_attn_backward(r.r.a, &k.q, &k.k, &k.v, &k.opts, NULL, NULL), LM_ERR_INVALID_ARG, "grads");
    bad = k;
    bad.opts.use_state = 1;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_UNSUPPORTED, "use_state");
    bad = k;
    bad.g.dout = NULL;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "dout");
    bad = k;
    bad.dout.shape[1] = c.m.L - 1;
    bad.g.dout = &bad.dout;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "dout");
    bad = k;
    bad.g.in_proj_weight = NULL, bad.g.q_proj_weight = r.g[MS_WQ];
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "packed");
    bad = k;
    bad.g.dquery = &bad.q;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "overlaps");
    bad = k;
    bad.g.out_proj_weight = e->dev->device == LM_CPU ? b.p.wo.data : b.p.dwo;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "the out_proj_weight");
    bad = k;
    bad.g.dkey = &bad.dq; /* two of three share a tensor */
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "overlaps");
    ck_assert(lm_attn_get_state(r.r.a, after, bytes) == LM_OK);
    ck_assert_msg(!memcmp(before, after, bytes), "a failed backward changed the state");
    ck_assert_msg(mbcall_run(&k, &r, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert(lm_attn_get_state(r.r.a, after, bytes) == LM_OK);
    ck_assert_msg(!memcmp(before, after, bytes), "the backward changed the state");
    free(before), free(after);
    mbrun_free(&r);
    mbprob_free(&b);

    /* a bias gradient for a bias that was never set */
    c.m.bias = 0;
    mbprob_init(&b, e->dev, &c);
    mbrun_new(&r, &b, e->dev);
    mbcall_init(&k, &b, &r, 0);
    k.g.out_proj_bias = r.g[MS_WO];
    EXPECT_ERR(mbcall_run(&k, &r, NULL), LM_ERR_INVALID_ARG, "no out_proj_bias");
    mbrun_free(&r);
    mbprob_free(&b);
}

/* Everything on: B = 8 (two GPU slabs of 1030 tokens), E = 64, two heads of
 * 32 on one kv head, a mask, a shared input gradient, causal with decay and
 * bidirectional (the GPU suite's reduced grid, for compute-sanitizer). */
static void grid_everything(const mb_env *e)
{
    for (int causal = 1; causal >= 0; causal--) {
        mbcase c = e->base;
        c.m.B = 8, c.m.L = 1030, c.m.E = 64, c.m.Hq = 2, c.m.Hkv = 1, c.m.D = 32;
        c.m.causal = causal, c.m.decay = causal, c.m.mask = 1, c.shared = 1;
        check_case(e, &c);
    }
}

const mb_grid mb_grids[] = {
    { "lengths", grid_lengths, 0 },       { "slabs", grid_slabs, 0 },
    { "cross attention", grid_cross, 0 }, { "variants", grid_variants, 0 },
    { "accumulate", grid_accumulate, 0 }, { "bad calls", grid_bad_calls, 0 },
    { "everything on", grid_everything, 1 },
};
const int mb_ngrids = (int)(sizeof mb_grids / sizeof mb_grids[0]);

void mb_grid_run(int i, const mb_env *e, uint64_t seed)
{
    ck_assert(i >= 0 && i < mb_ngrids);
    ref_seed(seed + (uint64_t)i);
    grid_name = mb_grids[i].name;
    left_out = 0;
    mb_grids[i].run(e);
    if (left_out)
        printf("module backward %s: %d cases left out on device %d (no float64 reference within its budget, no "
               "other check)\n", grid_name, left_out, (int)e->dev->device);
    grid_name = "";
}
