/*
 * module_cases.c - the module forward's problems, checks and case grid
 * (module_cases.h), for any backend.
 *
 * Inputs uniform in [-1, 1), weights in +-2/sqrt(E), biases in +-0.5, a
 * mask of 30% of the keys, decays 1 - 2^-(4 + h % 5) per kv head, hybrid
 * gates in [-2, 2); elu+1, normalised (the config's defaults, as the
 * reference computes). Outputs start as NaN before every run and must all
 * be written.
 *
 * The grid is the union of what the CPU and GPU suites ran when each had
 * its own copy; the comment of each family says where its values come from.
 */
#include "module_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void *input(const test_dev *dev, tbuf *b)
{
    return b->data ? test_dev_input(dev, b->data, tbuf_bytes(b)) : NULL;
}

void mprob_inputs(mprob *p, const test_dev *dev, const mcase *c)
{
    memset(p, 0, sizeof *p);
    p->dev = dev;
    p->c = *c;
    const int64_t B = c->B, L = c->L, Lk = c->cross ? c->Lk : c->L, E = c->E;
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D;
    const int64_t kdim = c->cross ? c->kdim : E, vdim = c->cross ? c->vdim : E;
    p->c.Lk = Lk, p->c.kdim = kdim, p->c.vdim = vdim;
    ck_assert(c->Hq <= 16);
    for (int h = 0; h < c->Hkv; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -4 - h % 5));
    for (int h = 0; c->hybrid && h < c->Hq; h++)
        p->gate[h] = (float)(4 * ref_uniform() - 2);
    const double ws = 1.0 / sqrt((double)E);
    p->xq = tbuf_new(c->dtype, B * L * E);
    tbuf_random(&p->xq, -1, 1);
    if (c->cross) {
        p->xk = tbuf_new(c->dtype, B * Lk * kdim);
        p->xv = tbuf_new(c->dtype, B * Lk * vdim);
        tbuf_random(&p->xk, -1, 1);
        tbuf_random(&p->xv, -1, 1);
    }
    /* packed: one [Dq + 2 Dkv, E] matrix whose rows are q, k, v. */
    p->wq = tbuf_new(c->dtype, (Dq + (c->packed ? 2 * Dkv : 0)) * E);
    tbuf_random(&p->wq, -2 * ws, 2 * ws);
    if (!c->packed) {
        p->wk = tbuf_new(c->dtype, Dkv * kdim);
        p->wv = tbuf_new(c->dtype, Dkv * vdim);
        tbuf_random(&p->wk, -2 * ws, 2 * ws);
        tbuf_random(&p->wv, -2 * ws, 2 * ws);
    }
    p->wo = tbuf_new(c->dtype, E * Dq);
    tbuf_random(&p->wo, -2 * ws, 2 * ws);
    p->bin = tbuf_new(c->dtype, Dq + 2 * Dkv);
    p->bo = tbuf_new(c->dtype, E);
    tbuf_random(&p->bin, -0.5, 0.5);
    tbuf_random(&p->bo, -0.5, 0.5);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        ck_assert_ptr_nonnull(p->mask);
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.3;
    }
    ref_strides3(p->sx, B, L, E, c->seq_first);
    ref_strides3(p->sk, B, Lk, kdim, c->seq_first);
    ref_strides3(p->sv, B, Lk, vdim, c->seq_first);

    p->dxq = input(dev, &p->xq), p->dxk = input(dev, &p->xk), p->dxv = input(dev, &p->xv);
    p->dwq = input(dev, &p->wq), p->dwk = input(dev, &p->wk), p->dwv = input(dev, &p->wv);
    p->dwo = input(dev, &p->wo), p->dbin = input(dev, &p->bin), p->dbo = input(dev, &p->bo);
    p->dmask = test_dev_input(dev, p->mask, (size_t)(B * Lk));
}

const tbuf *mprob_slot(const mprob *p, int s)
{
    const tbuf *b[MS_NSLOTS] = { &p->xq, &p->xk, &p->xv, &p->wq, &p->wk, &p->wv, &p->bin, &p->wo, &p->bo };
    ck_assert(s >= 0 && s < MS_NSLOTS);
    return b[s];
}

ref_module mprob_module(const mprob *p, const double *const *v)
{
    const mcase *c = &p->c;
    const double *x[MS_NSLOTS];
    for (int s = 0; s < MS_NSLOTS; s++)
        x[s] = v && v[s] ? v[s] : mprob_slot(p, s)->ref;
    if (!c->cross) {
        x[MS_XK] = v && v[MS_XK] ? v[MS_XK] : x[MS_XQ];
        x[MS_XV] = v && v[MS_XV] ? v[MS_XV] : x[MS_XQ];
    }
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D, E = c->E;
    ref_module m = { .B = c->B, .Lq = c->L, .Lk = c->Lk, .E = E, .kdim = c->kdim, .vdim = c->vdim, .Hq = c->Hq,
                     .Hkv = c->Hkv, .D = c->D, .xq = x[MS_XQ], .xk = x[MS_XK], .xv = x[MS_XV],
                     .wq = x[MS_WQ], .wk = c->packed ? x[MS_WQ] + Dq * E : x[MS_WK],
                     .wv = c->packed ? x[MS_WQ] + (Dq + Dkv) * E : x[MS_WV], .wo = x[MS_WO],
                     .bq = c->bias ? x[MS_BIN] : NULL, .bk = c->bias ? x[MS_BIN] + Dq : NULL,
                     .bv = c->bias ? x[MS_BIN] + Dq + Dkv : NULL, .bo = c->bias ? x[MS_BO] : NULL,
                     .mask = p->mask, .decay = c->decay ? p->decay : NULL, .causal = c->causal,
                     .hybrid = c->hybrid, .window = c->W, .sinks = c->s, .gate = p->gate,
                     .gate_form = c->gate_form };
    memcpy(m.sq, p->sx, sizeof m.sq);
    memcpy(m.sk, c->cross ? p->sk : p->sx, sizeof m.sk);
    memcpy(m.sv, c->cross ? p->sv : p->sx, sizeof m.sv);
    return m;
}

void mprob_init(mprob *p, const test_dev *dev, const mcase *c)
{
    mprob_inputs(p, dev, c);
    /* The reference: project, attend, out-project, all in float64. */
    ck_assert_msg(!c->fm && !c->unnormalized, "ref_module computes elu+1 normalised only");
    const ref_module m = mprob_module(p, NULL);
    p->want = malloc((size_t)(c->B * c->L * c->E) * sizeof(double));
    ck_assert_ptr_nonnull(p->want);
    ref_module_forward(&m, p->want);
}

void mprob_free(mprob *p)
{
    void *d[] = { p->dxq, p->dxk, p->dxv, p->dwq, p->dwk, p->dwv, p->dwo, p->dbin, p->dbo, p->dmask };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        test_dev_drop(p->dev, d[i]);
    tbuf *bs[] = { &p->xq, &p->xk, &p->xv, &p->wq, &p->wk, &p->wv, &p->wo, &p->bin, &p->bo };
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
        if (bs[i]->data)
            tbuf_free(bs[i]);
    free(p->mask);
    free(p->want);
}

/* ---- a handle and its output on a backend ---- */

void mrun_new(mrun *r, const mprob *p, const test_dev *dev)
{
    const mcase *c = &p->c;
    const int host = dev->device == LM_CPU;
    r->dev = dev;
    lm_attn_config cfg;
    ck_assert(lm_attn_config_default(&cfg, (int)c->E, (int)c->Hq) == LM_OK);
    cfg.num_kv_heads = (int)c->Hkv;
    cfg.head_dim = (int)c->D;
    cfg.kdim = (int)c->kdim, cfg.vdim = (int)c->vdim;
    cfg.dtype = c->dtype;
    cfg.device = dev->device;
    cfg.decay = c->decay ? p->decay : NULL;
    cfg.feature_map = (lm_feature_map)c->fm;
    cfg.normalize = !c->unnormalized;
    if (c->hybrid) {
        cfg.attention = LM_ATTENTION_HYBRID;
        cfg.window = (int)c->W, cfg.sinks = (int)c->s, cfg.window_gate = p->gate;
        cfg.window_gate_form = c->gate_form;
    }
    ck_assert_msg(lm_attn_create(&cfg, &r->a) == LM_OK, "create: %s", lm_last_error());
    lm_weights w = { LM_SIZED(lm_weights), .out_proj_weight = host ? p->wo.data : p->dwo };
    if (c->packed) {
        w.in_proj_weight = host ? p->wq.data : p->dwq;
    } else {
        w.q_proj_weight = host ? p->wq.data : p->dwq;
        w.k_proj_weight = host ? p->wk.data : p->dwk;
        w.v_proj_weight = host ? p->wv.data : p->dwv;
    }
    if (c->bias) {
        w.in_proj_bias = host ? p->bin.data : p->dbin;
        w.out_proj_bias = host ? p->bo.data : p->dbo;
    }
    ck_assert_msg(lm_attn_set_weights(r->a, &w) == LM_OK, "%s", lm_last_error());
    r->out = dev->alloc((size_t)(c->B * c->L * c->E) * lm_dtype_size(c->dtype));
    mrun_poison(r, p);
}

void mrun_poison(mrun *r, const mprob *p)
{
    tbuf nan = tbuf_new(p->c.dtype, p->c.B * p->c.L * p->c.E);
    tbuf_poison(&nan);
    r->dev->upload(r->out, nan.data, tbuf_bytes(&nan));
    tbuf_free(&nan);
}

void mrun_free(mrun *r)
{
    lm_attn_destroy(r->a);
    r->dev->release(r->out);
}

tbuf mrun_out(const mprob *p, const mrun *r)
{
    tbuf got = tbuf_new(p->c.dtype, p->c.B * p->c.L * p->c.E);
    r->dev->download(got.data, r->out, tbuf_bytes(&got));
    return got;
}

/* ---- calls ---- */

lm_status mforward(const mprob *p, mrun *r, int64_t t0, int64_t n, int use_state, int keep_state, void *stream)
{
    const mcase *c = &p->c;
    const lm_device where = r->dev->device;
    const int host = where == LM_CPU;
    int64_t so[3];
    ref_strides3(so, c->B, c->L, c->E, 0);
    lm_tensor q = ref_tokens(ref_tensor3(host ? p->xq.data : p->dxq, c->dtype, where, p->sx, c->B, c->L, c->E), t0, n);
    lm_tensor k = q, v = q, o = ref_tokens(ref_tensor3(r->out, c->dtype, where, so, c->B, c->L, c->E), t0, n), m;
    if (c->cross) {
        k = ref_tensor3(host ? p->xk.data : p->dxk, c->dtype, where, p->sk, c->B, c->Lk, c->kdim);
        v = ref_tensor3(host ? p->xv.data : p->dxv, c->dtype, where, p->sv, c->B, c->Lk, c->vdim);
    }
    lm_forward_opts opts = { LM_SIZED(lm_forward_opts), .is_causal = c->causal, .use_state = use_state,
                             .keep_state = keep_state };
    if (p->mask) {
        m = lm_tensor_2d((host ? p->mask : p->dmask) + (c->causal ? t0 : 0), LM_BOOL, where, c->B,
                         c->causal ? n : c->Lk);
        m.stride[0] = c->Lk;
        opts.key_padding_mask = &m;
    }
    return lm_attn_forward(r->a, &q, &k, &v, &opts, &o, stream);
}

void mstep_views(const mprob *p, const mrun *r, int64_t t, lm_tensor *x, lm_tensor *out)
{
    const mcase *c = &p->c;
    const lm_device where = r->dev->device;
    const size_t es = lm_dtype_size(c->dtype);
    *x = lm_tensor_2d((char *)(where == LM_CPU ? p->xq.data : p->dxq) + t * p->sx[1] * (int64_t)es, c->dtype,
                      where, c->B, c->E);
    x->stride[0] = p->sx[0], x->stride[1] = p->sx[2];
    *out = lm_tensor_2d((char *)r->out + t * c->E * (int64_t)es, c->dtype, where, c->B, c->E);
    out->stride[0] = c->L * c->E;
}

/* ---- checks ---- */

void mdescribe(char *s, size_t n, const mcase *c)
{
    snprintf(s, n, "dt %d B %lld L %lld/%lld E %lld H %lld/%lld D %lld c%d x%d p%d b%d d%d m%d sf%d hy%d fm%d un%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->E,
             (long long)c->Hq, (long long)c->Hkv, (long long)c->D, c->causal, c->cross, c->packed, c->bias,
             c->decay, c->mask, c->seq_first, c->hybrid, c->fm, c->unnormalized);
}

/* The grid entry running now, named in messages. */
static const char *grid_name = "";

double mcheck(const m_env *e, const mprob *p, const mrun *r, const char *what)
{
    const mcase *c = &p->c;
    char d[200], note[240];
    mdescribe(d, sizeof d, c);
    tbuf got = mrun_out(p, r);
    const ref_err err = ref_compare(&got, p->want, got.n);
    snprintf(note, sizeof note, "module %s: %s", what, d);
    if (r->dev->note)
        r->dev->note(note, c->dtype, p->want, got.n, err.rel);
    REF_CHECK(err, (e->bound ? e->bound : r->dev->out_bound)(c->dtype, p->want, got.n), "(%s, %s: %s)", grid_name, what, d);
    tbuf_free(&got);
    return err.rel;
}

char *msave_restore_fork(const m_env *e, const mcase *c, uint64_t seed, int64_t L1, size_t *bytes)
{
    ref_seed(seed);
    mprob p;
    mprob_init(&p, e->dev, c);
    mrun r;
    mrun_new(&r, &p, e->dev);
    const int64_t n = c->L - L1;
    ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
    ck_assert(lm_attn_state_size(r.a, bytes) == LM_OK);
    char *blob = malloc(*bytes);
    ck_assert(lm_attn_get_state(r.a, blob, *bytes) == LM_OK);

    ck_assert(mforward(&p, &r, L1, n, 1, 1, NULL) == LM_OK);
    tbuf first = mrun_out(&p, &r);
    mcheck(e, &p, &r, "continuation");

    ck_assert(lm_attn_set_state(r.a, blob, *bytes) == LM_OK);
    int64_t pos;
    ck_assert(lm_attn_position(r.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, L1);
    mrun_poison(&r, &p);
    ck_assert(mforward(&p, &r, 0, L1, 0, 0, NULL) == LM_OK); /* rewrite the first part, state untouched */
    ck_assert(mforward(&p, &r, L1, n, 1, 0, NULL) == LM_OK);
    tbuf again = mrun_out(&p, &r);
    ck_assert_msg(!memcmp(first.data, again.data, tbuf_bytes(&first)), "restored state did not replay bit for bit");
    tbuf_free(&again);

    /* fork: a second handle with the same config and weights */
    mrun f;
    mrun_new(&f, &p, e->dev);
    ck_assert(lm_attn_set_state(f.a, blob, *bytes) == LM_OK);
    ck_assert(mforward(&p, &f, 0, L1, 0, 0, NULL) == LM_OK);
    ck_assert(mforward(&p, &f, L1, n, 1, 0, NULL) == LM_OK);
    again = mrun_out(&p, &f);
    ck_assert_msg(!memcmp(first.data, again.data, tbuf_bytes(&first)), "forked state did not continue identically");
    tbuf_free(&again);
    tbuf_free(&first);
    mrun_free(&f);
    mrun_free(&r);
    mprob_free(&p);
    return blob;
}

/* ---- the grid ---- */

void mcheck_forward(const m_env *e, const mcase *c)
{
    mprob p;
    mprob_init(&p, e->dev, c);
    mrun r;
    mrun_new(&r, &p, e->dev);
    ck_assert_msg(mforward(&p, &r, 0, c->L, 0, 0, NULL) == LM_OK, "forward: %s", lm_last_error());
    mcheck(e, &p, &r, "forward");
    if (e->also)
        e->also(&p, &r);
    mrun_free(&r);
    mprob_free(&p);
}

/* Self attention in f32, bf16, f16 at 1, 2, 63, 65, 300 tokens, both
 * directions (the CPU suite's). */
static void grid_self(const m_env *e)
{
    static const int64_t Ls[] = { 1, 2, 63, 65, 300 };
    static const lm_dtype dts[] = { LM_F32, LM_BF16, LM_F16 };
    for (int d = 0; d < 3; d++)
        for (int i = 0; i < 5; i++)
            for (int causal = 0; causal < 2; causal++) {
                mcase c = e->base;
                c.dtype = dts[d];
                c.L = Ls[i];
                c.causal = causal;
                mcheck_forward(e, &c);
            }
}

/* Separate weights, no biases, decay, a mask, sequence-first inputs, and
 * bidirectional sequence-first with a mask (the CPU suite's). */
static void grid_variants(const m_env *e)
{
    for (int v = 0; v < 7; v++) {
        mcase c = e->base;
        c.packed = v != 1;
        c.bias = v != 2;
        c.decay = v == 3;
        c.mask = v == 4 || v == 6;
        c.seq_first = v == 5 || v == 6;
        c.causal = v != 6;
        mcheck_forward(e, &c);
    }
}

/* Cross attention: kdim 48, vdim 24, few and many keys, with a mask,
 * sequence-first (the CPU suite's). */
static void grid_cross(const m_env *e)
{
    for (int v = 0; v < 4; v++) {
        mcase c = e->base;
        c.cross = 1, c.packed = 0, c.causal = 0;
        c.kdim = 48, c.vdim = 24;
        c.L = v & 1 ? 37 : 130, c.Lk = v & 1 ? 200 : 9;
        c.mask = v >= 2;
        c.seq_first = v == 3;
        mcheck_forward(e, &c);
    }
}

/* GQA, and a head_dim that does not come from embed_dim / num_heads, both
 * directions (the CPU suite's). */
static void grid_heads(const m_env *e)
{
    static const int64_t hk[][3] = { { 8, 8, 8 }, { 8, 2, 8 }, { 8, 1, 8 }, { 4, 2, 24 } };
    for (int i = 0; i < 4; i++)
        for (int causal = 0; causal < 2; causal++) {
            mcase c = e->base;
            c.Hq = hk[i][0], c.Hkv = hk[i][1], c.D = hk[i][2];
            c.causal = causal;
            mcheck_forward(e, &c);
        }
}

/* Twelve cases mixing directions, cross attention (90 keys, kdim 96, vdim
 * 160), packed and separate weights, biases, GQA, decay, masks,
 * sequence-first, dtypes, 1 and 1300 tokens (the GPU suite's; small: the
 * first three). */
static void grid_mixed(const m_env *e)
{
    for (int i = 0; i < (e->small ? 3 : 12); i++) {
        mcase c = e->base;
        c.causal = i % 2 == 0;
        c.cross = i % 4 == 1;
        c.packed = !c.cross && i % 3 != 2;
        c.bias = i % 5 != 4;
        c.Hkv = i % 3 == 1 ? c.Hq / 2 : c.Hq;
        c.decay = c.causal && i % 4 == 2;
        c.mask = i % 3 == 0;
        c.seq_first = i % 4 == 3;
        c.dtype = i >= 10 ? LM_F32 : i == 9 ? LM_F16 : LM_BF16;
        if (c.cross)
            c.Lk = 90, c.kdim = 96, c.vdim = 160;
        c.L = i == 5 ? 1 : i == 7 ? 1300 : 150;
        mcheck_forward(e, &c);
    }
}

/* forward(L) == forward(L1) + forward(L - L1) == forward(L1) + steps, and
 * the position after each: f32 and bf16, with and without decay, 150
 * tokens cut at 70, two kv heads (the CPU suite's; not in small); and 700
 * tokens with a mask cut at 129 (the GPU suite's; small: 200). */
static void grid_handover(const m_env *e)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    for (int d = 0; d < (e->small ? 0 : 2); d++)
        for (int decay = 0; decay < 2; decay++) {
            mcase c = e->base;
            c.dtype = dts[d];
            c.L = 150, c.decay = decay, c.Hkv = 2;
            mprob p;
            mprob_init(&p, e->dev, &c);
            mrun r;
            mrun_new(&r, &p, e->dev);
            const int64_t L1 = 70;
            ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
            ck_assert_msg(mforward(&p, &r, L1, c.L - L1, 1, 1, NULL) == LM_OK, "%s", lm_last_error());
            mcheck(e, &p, &r, "two forwards");
            int64_t pos;
            ck_assert(lm_attn_position(r.a, &pos) == LM_OK);
            ck_assert_int_eq(pos, c.L);

            mrun_poison(&r, &p);
            ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
            for (int64_t t = L1; t < c.L; t++) {
                lm_tensor x, o;
                mstep_views(&p, &r, t, &x, &o);
                ck_assert_msg(lm_attn_step(r.a, &x, &o, NULL) == LM_OK, "step: %s", lm_last_error());
            }
            mcheck(e, &p, &r, "forward then steps");
            mrun_free(&r);
            mprob_free(&p);
        }
    mcase c = e->base;
    c.L = e->small ? 200 : 700, c.mask = 1, c.Hkv = 2;
    mprob p;
    mprob_init(&p, e->dev, &c);
    mrun r;
    mrun_new(&r, &p, e->dev);
    ck_assert(mforward(&p, &r, 0, 129, 0, 1, NULL) == LM_OK);
    ck_assert_msg(mforward(&p, &r, 129, c.L - 129, 1, 1, NULL) == LM_OK, "%s", lm_last_error());
    mcheck(e, &p, &r, "two forwards");
    mrun_free(&r);
    mprob_free(&p);
}

/* Save after 80 of 120 tokens, restore, fork (the CPU suite's). */
static void grid_save_restore(const m_env *e)
{
    mcase c = e->base;
    c.L = 120, c.Hkv = 2;
    size_t bytes;
    free(msave_restore_fork(e, &c, 26, 80, &bytes));
}

const m_grid m_grids[] = {
    { "self attention", grid_self, 0 }, { "variants", grid_variants, 0 }, { "cross attention", grid_cross, 0 },
    { "heads", grid_heads, 0 },         { "mixed", grid_mixed, 1 },       { "handover", grid_handover, 1 },
    { "save restore fork", grid_save_restore, 0 },
};
const int m_ngrids = (int)(sizeof m_grids / sizeof m_grids[0]);

void mgrid_run(int i, const m_env *e, uint64_t seed)
{
    ck_assert(i >= 0 && i < m_ngrids);
    ref_seed(seed + (uint64_t)i);
    grid_name = m_grids[i].name;
    m_grids[i].run(e);
    grid_name = "";
}
