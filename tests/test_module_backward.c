/*
 * test_module_backward.c - lm_attn_backward on the CPU. Every gradient (the
 * inputs, each projection's weight and bias) is checked by directional
 * derivatives of the float64 reference module (ref_module_forward): for a
 * random direction U, (loss(p + eps U) - loss(p - eps U)) / 2 eps against
 * <grad, U>, with loss = sum(dout * out), the difference relative to
 * sum |grad_j U_j| (bound: f32 5e-5, bf16 5e-3, whose gradients are rounded
 * to 8 bits). Also: several slabs, GQA, decay,
 * masks, cross-attention, one shared input gradient, accumulate, bad calls.
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Lk, E, Hq, Hkv, D, kdim, vdim;
    int causal, cross, packed, bias, decay, mask, shared;
} bcase;

static bcase base(void)
{
    bcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .E = 32, .Hq = 4, .Hkv = 4, .D = 8,
                .kdim = 32, .vdim = 32, .causal = 1, .packed = 1, .bias = 1 };
    return c;
}

/* A parameter: its values (shadow in float64) and the library's gradient. */
typedef struct param {
    const char *name;
    tbuf val, grad;
    double *ref; /* what the reference reads: val.ref, or a private copy */
} param;

enum { XQ, XK, XV, WQ, WK, WV, WO, BQ, BK, BV, BO, NPARAM };

typedef struct bprob {
    bcase c;
    lm_attn *a;
    param p[NPARAM];
    tbuf dout;
    uint8_t *mask;
    float decay[16];
} bprob;

static void param_init(param *p, const char *name, lm_dtype dt, int64_t n, double scale)
{
    p->name = name;
    p->val = tbuf_new(dt, n);
    p->grad = tbuf_new(dt, n);
    tbuf_random(&p->val, -scale, scale);
    p->ref = p->val.ref;
}

static ref_module reference(const bprob *b)
{
    const bcase *c = &b->c;
    const param *p = b->p;
    ref_module m = { .B = c->B, .Lq = c->L, .Lk = c->Lk, .E = c->E, .kdim = c->kdim,
                     .vdim = c->vdim, .Hq = c->Hq, .Hkv = c->Hkv, .D = c->D, .xq = p[XQ].ref,
                     .xk = p[XK].ref, .xv = p[XV].ref, .sq = { c->L * c->E, c->E, 1 },
                     .sk = { c->Lk * c->kdim, c->kdim, 1 }, .sv = { c->Lk * c->vdim, c->vdim, 1 },
                     .wq = p[WQ].ref, .wk = p[WK].ref, .wv = p[WV].ref, .wo = p[WO].ref,
                     .bq = c->bias ? p[BQ].ref : NULL, .bk = c->bias ? p[BK].ref : NULL,
                     .bv = c->bias ? p[BV].ref : NULL, .bo = c->bias ? p[BO].ref : NULL,
                     .mask = b->mask, .decay = c->decay ? b->decay : NULL, .causal = c->causal };
    return m;
}

static double loss(const bprob *b)
{
    const int64_t n = b->c.B * b->c.L * b->c.E;
    double *out = malloc((size_t)n * sizeof(double)), s = 0;
    ref_module m = reference(b);
    ref_module_forward(&m, out);
    for (int64_t i = 0; i < n; i++)
        s += out[i] * b->dout.ref[i];
    free(out);
    return s;
}

/* The library's view of the problem: packed weights are one buffer whose
 * rows q, k, v the params WQ, WK, WV point into (their .ref shadows are
 * private copies, so each can be perturbed alone). */
static tbuf packed_w, packed_b, packed_gw, packed_gb;

static void bprob_init(bprob *b, const bcase *c)
{
    memset(b, 0, sizeof *b);
    b->c = *c;
    bcase *k = &b->c;
    if (!c->cross)
        k->Lk = c->L, k->kdim = k->vdim = c->E;
    const int64_t B = k->B, E = k->E, Dq = k->Hq * k->D, Dkv = k->Hkv * k->D;
    const lm_dtype dt = k->dtype;
    const double ws = 2.0 / sqrt((double)E);
    param *p = b->p;
    param_init(&p[XQ], "query", dt, B * k->L * E, 1.0);
    param_init(&p[XK], "key", dt, B * k->Lk * k->kdim, 1.0);
    param_init(&p[XV], "value", dt, B * k->Lk * k->vdim, 1.0);
    if (!c->cross) { /* one input tensor: key and value shadows are copies of it */
        memcpy(p[XK].val.data, p[XQ].val.data, (size_t)p[XQ].val.n * lm_dtype_size(dt));
        memcpy(p[XV].val.data, p[XQ].val.data, (size_t)p[XQ].val.n * lm_dtype_size(dt));
        memcpy(p[XK].val.ref, p[XQ].val.ref, (size_t)p[XQ].val.n * sizeof(double));
        memcpy(p[XV].val.ref, p[XQ].val.ref, (size_t)p[XQ].val.n * sizeof(double));
    }
    param_init(&p[WQ], "q weight", dt, Dq * E, ws);
    param_init(&p[WK], "k weight", dt, Dkv * k->kdim, ws);
    param_init(&p[WV], "v weight", dt, Dkv * k->vdim, ws);
    param_init(&p[WO], "out weight", dt, E * Dq, ws);
    param_init(&p[BQ], "q bias", dt, Dq, 0.3);
    param_init(&p[BK], "k bias", dt, Dkv, 0.3);
    param_init(&p[BV], "v bias", dt, Dkv, 0.3);
    param_init(&p[BO], "out bias", dt, E, 0.3);
    b->dout = tbuf_new(dt, B * k->L * E);
    tbuf_random(&b->dout, -1, 1);
    if (c->mask) {
        b->mask = malloc((size_t)(B * k->Lk));
        for (int64_t i = 0; i < B * k->Lk; i++)
            b->mask[i] = ref_uniform() < 0.3;
    }
    for (int h = 0; h < 16; h++)
        b->decay[h] = (float)(1.0 - ldexp(1.0, -3 - h % 4));

    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, (int)E, (int)k->Hq), LM_OK);
    cfg.num_kv_heads = (int)k->Hkv;
    cfg.head_dim = (int)k->D;
    cfg.kdim = (int)k->kdim, cfg.vdim = (int)k->vdim;
    cfg.dtype = dt;
    cfg.decay = c->decay ? b->decay : NULL;
    ck_assert_msg(lm_attn_create(&cfg, &b->a) == LM_OK, "%s", lm_last_error());
    lm_weights w = { LM_SIZED(lm_weights), .out_proj_weight = p[WO].val.data,
                     .out_proj_bias = c->bias ? p[BO].val.data : NULL };
    if (c->packed) {
        const size_t es = lm_dtype_size(dt);
        packed_w = tbuf_new(dt, (Dq + 2 * Dkv) * E);
        packed_b = tbuf_new(dt, Dq + 2 * Dkv);
        char *pw = packed_w.data, *pb = packed_b.data;
        memcpy(pw, p[WQ].val.data, (size_t)(Dq * E) * es);
        memcpy(pw + (size_t)(Dq * E) * es, p[WK].val.data, (size_t)(Dkv * E) * es);
        memcpy(pw + (size_t)((Dq + Dkv) * E) * es, p[WV].val.data, (size_t)(Dkv * E) * es);
        memcpy(pb, p[BQ].val.data, (size_t)Dq * es);
        memcpy(pb + (size_t)Dq * es, p[BK].val.data, (size_t)Dkv * es);
        memcpy(pb + (size_t)(Dq + Dkv) * es, p[BV].val.data, (size_t)Dkv * es);
        w.in_proj_weight = packed_w.data;
        packed_gw = tbuf_new(dt, packed_w.n);
        packed_gb = tbuf_new(dt, packed_b.n);
    } else {
        w.q_proj_weight = p[WQ].val.data;
        w.k_proj_weight = p[WK].val.data;
        w.v_proj_weight = p[WV].val.data;
        packed_b = tbuf_new(dt, Dq + 2 * Dkv);
        const size_t es = lm_dtype_size(dt);
        char *pb = packed_b.data;
        memcpy(pb, p[BQ].val.data, (size_t)Dq * es);
        memcpy(pb + (size_t)Dq * es, p[BK].val.data, (size_t)Dkv * es);
        memcpy(pb + (size_t)(Dq + Dkv) * es, p[BV].val.data, (size_t)Dkv * es);
        packed_gb = tbuf_new(dt, packed_b.n);
    }
    if (c->bias)
        w.in_proj_bias = packed_b.data;
    ck_assert_msg(lm_attn_set_weights(b->a, &w) == LM_OK, "%s", lm_last_error());
}

static void bprob_free(bprob *b)
{
    for (int i = 0; i < NPARAM; i++) {
        tbuf_free(&b->p[i].val);
        tbuf_free(&b->p[i].grad);
    }
    tbuf_free(&b->dout);
    tbuf *pk[] = { &packed_w, &packed_b, &packed_gw, &packed_gb };
    for (int i = 0; i < 4; i++)
        if (pk[i]->data)
            tbuf_free(pk[i]);
    free(b->mask);
    lm_attn_destroy(b->a);
}

static lm_tensor t3(const tbuf *t, int64_t B, int64_t L, int64_t W)
{
    return lm_tensor_3d(t->data, t->dtype, LM_CPU, B, L, W);
}

/* Runs lm_attn_backward into the params' grad buffers (NaN first). */
static lm_status run_backward(bprob *b, int accumulate)
{
    const bcase *c = &b->c;
    param *p = b->p;
    lm_tensor q = t3(&p[XQ].val, c->B, c->L, c->E), k = t3(&p[XK].val, c->B, c->Lk, c->kdim);
    lm_tensor v = t3(&p[XV].val, c->B, c->Lk, c->vdim), dout = t3(&b->dout, c->B, c->L, c->E);
    lm_tensor dq = t3(&p[XQ].grad, c->B, c->L, c->E), dk = t3(&p[XK].grad, c->B, c->Lk, c->kdim);
    lm_tensor dv = t3(&p[XV].grad, c->B, c->Lk, c->vdim), m;
    if (!accumulate)
        for (int i = 0; i < NPARAM; i++)
            tbuf_poison(&p[i].grad);
    lm_attn_grads g = { LM_SIZED(lm_attn_grads), .dout = &dout, .dquery = &dq, .dkey = &dk, .dvalue = &dv,
                        .out_proj_weight = p[WO].grad.data, .accumulate = accumulate };
    if (c->shared)
        g.dkey = g.dvalue = &dq;
    if (c->bias) {
        g.in_proj_bias = packed_gb.data;
        g.out_proj_bias = p[BO].grad.data;
    }
    if (c->packed) {
        g.in_proj_weight = packed_gw.data;
    } else {
        g.q_proj_weight = p[WQ].grad.data;
        g.k_proj_weight = p[WK].grad.data;
        g.v_proj_weight = p[WV].grad.data;
    }
    if (!accumulate) {
        tbuf_poison(&packed_gb);
        if (c->packed)
            tbuf_poison(&packed_gw);
    }
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = c->causal };
    if (b->mask) {
        m = lm_tensor_2d(b->mask, LM_BOOL, LM_CPU, c->B, c->Lk);
        o.key_padding_mask = &m;
    }
    lm_status st = c->cross ? lm_attn_backward(b->a, &q, &k, &v, &o, &g, NULL)
                            : lm_attn_backward(b->a, &q, &q, &q, &o, &g, NULL);
    if (st)
        return st;
    /* Split the packed gradients back into the params'. */
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D, es = (int64_t)lm_dtype_size(c->dtype);
    const char *gw = packed_gw.data, *gb = packed_gb.data;
    if (c->packed) {
        memcpy(p[WQ].grad.data, gw, (size_t)(Dq * c->E * es));
        memcpy(p[WK].grad.data, gw + Dq * c->E * es, (size_t)(Dkv * c->E * es));
        memcpy(p[WV].grad.data, gw + (Dq + Dkv) * c->E * es, (size_t)(Dkv * c->E * es));
    }
    if (c->bias) {
        memcpy(p[BQ].grad.data, gb, (size_t)(Dq * es));
        memcpy(p[BK].grad.data, gb + Dq * es, (size_t)(Dkv * es));
        memcpy(p[BV].grad.data, gb + (Dq + Dkv) * es, (size_t)(Dkv * es));
    }
    return LM_OK;
}

/* Directional derivatives of the reference against the library's gradient;
 * `tied` perturbs XQ, XK, XV together (one input tensor, one gradient). */
static double check_param(bprob *b, int i, int tied, double bound)
{
    param *p = &b->p[i];
    const int64_t n = p->val.n;
    const double eps = 1e-4;
    double *u = malloc((size_t)n * sizeof(double)), worst = 0;
    double *save[3];
    const int ids[3] = { XQ, XK, XV }, nt = tied ? 3 : 1;
    for (int t = 0; t < nt; t++) {
        save[t] = malloc((size_t)n * sizeof(double));
        memcpy(save[t], b->p[tied ? ids[t] : i].ref, (size_t)n * sizeof(double));
    }
    for (int dir = 0; dir < 2; dir++) {
        double an = 0, mag = 0;
        for (int64_t j = 0; j < n; j++) {
            u[j] = ref_uniform() * 2 - 1;
            double gj = tbuf_get(&p->grad, j);
            ck_assert_msg(!isnan(gj), "%s gradient [%lld] not written", p->name, (long long)j);
            an += gj * u[j];
            mag += fabs(gj * u[j]);
        }
        double l[2];
        for (int s = 0; s < 2; s++) {
            for (int t = 0; t < nt; t++) {
                double *r = b->p[tied ? ids[t] : i].ref;
                for (int64_t j = 0; j < n; j++)
                    r[j] = save[t][j] + (s ? -eps : eps) * u[j];
            }
            l[s] = loss(b);
        }
        for (int t = 0; t < nt; t++)
            memcpy(b->p[tied ? ids[t] : i].ref, save[t], (size_t)n * sizeof(double));
        /* Relative to the sum of magnitudes: <grad, U> cancels, fd does not. */
        double fd = (l[0] - l[1]) / (2 * eps), err = fabs(fd - an) / mag;
        ck_assert_msg(err <= bound, "%s: directional derivative %.8g, gradient gives %.8g "
                                    "(error %.3g of %.3g > %.3g)", p->name, fd, an, err, mag, bound);
        worst = err > worst ? err : worst;
    }
    for (int t = 0; t < nt; t++)
        free(save[t]);
    free(u);
    return worst;
}

static double worst_seen[2]; /* bf16, f32 */

static void check_case(const bcase *c)
{
    bprob b;
    bprob_init(&b, c);
    ck_assert_msg(run_backward(&b, 0) == LM_OK, "%s", lm_last_error());
    const double bound = c->dtype == LM_F32 ? 5e-5 : 5e-3;
    double worst = 0;
    for (int i = 0; i < NPARAM; i++) {
        if (!c->bias && i >= BQ)
            continue;
        if (c->shared && (i == XK || i == XV))
            continue;
        double e = check_param(&b, i, c->shared && i == XQ, bound);
        worst = e > worst ? e : worst;
    }
    if (worst > worst_seen[c->dtype == LM_F32])
        worst_seen[c->dtype == LM_F32] = worst;
    bprob_free(&b);
}

START_TEST(test_causal_slabs)
{
    ref_seed(61);
    bcase c = base();
    c.B = 1, c.L = 2100, c.Hq = c.Hkv = 2, c.D = 16; /* two slabs of the backward */
    check_case(&c);
}
END_TEST

START_TEST(test_causal_gqa_decay_mask_shared)
{
    ref_seed(62);
    bcase c = base();
    c.Hkv = 2, c.decay = 1, c.mask = 1, c.shared = 1;
    check_case(&c);
}
END_TEST

START_TEST(test_bidirectional)
{
    ref_seed(63);
    for (int shared = 0; shared < 2; shared++) {
        bcase c = base();
        c.causal = 0, c.mask = 1, c.shared = shared, c.L = 130;
        check_case(&c);
    }
}
END_TEST

START_TEST(test_cross_attention)
{
    ref_seed(64);
    bcase c = base();
    c.cross = 1, c.causal = 0, c.packed = 0, c.mask = 1;
    c.B = 1, c.L = 50, c.Lk = 2100, c.kdim = 24, c.vdim = 40, c.Hq = 2, c.Hkv = 1, c.D = 16;
    check_case(&c);
}
END_TEST

START_TEST(test_variants)
{
    ref_seed(65);
    bcase c = base();
    c.bias = 0;
    check_case(&c);
    c = base();
    c.packed = 0, c.Hkv = 1;
    check_case(&c);
    c = base();
    c.dtype = LM_BF16, c.L = 70;
    check_case(&c);
}
END_TEST

/* accumulate adds to the buffers: two calls give twice one call. */
START_TEST(test_accumulate)
{
    ref_seed(66);
    bcase c = base();
    bprob b;
    bprob_init(&b, &c);
    ck_assert(run_backward(&b, 0) == LM_OK);
    double once[3];
    for (int i = 0; i < 3; i++)
        once[i] = tbuf_get(i == 0 ? &packed_gw : i == 1 ? &packed_gb : &b.p[WO].grad, 7);
    ck_assert(run_backward(&b, 1) == LM_OK);
    for (int i = 0; i < 3; i++) {
        double twice = tbuf_get(i == 0 ? &packed_gw : i == 1 ? &packed_gb : &b.p[WO].grad, 7);
        ck_assert_msg(twice == 2 * once[i], "accumulate: %g is not 2 x %g", twice, once[i]);
    }
    bprob_free(&b);
}
END_TEST

START_TEST(test_errors)
{
    ref_seed(67);
    bcase c = base();
    bprob b;
    bprob_init(&b, &c);
    param *p = b.p;
    lm_tensor x = t3(&p[XQ].val, c.B, c.L, c.E), dout = t3(&b.dout, c.B, c.L, c.E);
    lm_tensor dx = t3(&p[XQ].grad, c.B, c.L, c.E), dk = t3(&p[XK].grad, c.B, c.L, c.E);
    lm_forward_opts causal = { LM_SIZED(lm_forward_opts), .is_causal = 1 }, cont = { LM_SIZED(lm_forward_opts), .is_causal = 1, .use_state = 1 };
    /* a state on the handle, which the backward must leave alone */
    lm_forward_opts keep = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    tbuf y = tbuf_new(c.dtype, x.shape[0] * x.shape[1] * x.shape[2]);
    lm_tensor ty = t3(&y, c.B, c.L, c.E);
    ck_assert(lm_attn_forward(b.a, &x, &x, &x, &keep, &ty, NULL) == LM_OK);
    size_t bytes;
    ck_assert(lm_attn_state_size(b.a, &bytes) == LM_OK);
    char *before = malloc(bytes), *after = malloc(bytes);
    ck_assert(lm_attn_get_state(b.a, before, bytes) == LM_OK);

    lm_attn_grads g = { LM_SIZED(lm_attn_grads), .dout = &dout, .dquery = &dx };
    EXPECT_ERR(lm_attn_backward(NULL, &x, &x, &x, &causal, &g, NULL), LM_ERR_INVALID_ARG, "attn");
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, NULL, NULL), LM_ERR_INVALID_ARG, "grads");
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &cont, &g, NULL), LM_ERR_UNSUPPORTED, "use_state");
    lm_attn_grads bad = g;
    bad.dout = NULL;
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG, "dout");
    lm_tensor short_dout = dout;
    short_dout.shape[1] = c.L - 1;
    bad.dout = &short_dout;
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG, "dout");
    bad = g;
    bad.q_proj_weight = p[WQ].grad.data;
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG, "packed");
    bad = g;
    bad.dquery = &x;
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG, "overlaps");
    bad = g;
    bad.out_proj_weight = p[WO].val.data;
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG,
           "the out_proj_weight");
    bad = g;
    bad.dkey = &dx, bad.dvalue = &dk; /* two of three share a tensor */
    EXPECT_ERR(lm_attn_backward(b.a, &x, &x, &x, &causal, &bad, NULL), LM_ERR_INVALID_ARG, "overlaps");
    ck_assert(lm_attn_get_state(b.a, after, bytes) == LM_OK);
    ck_assert_msg(!memcmp(before, after, bytes), "the state changed");
    ck_assert_msg(lm_attn_backward(b.a, &x, &x, &x, &causal, &g, NULL) == LM_OK, "%s",
                  lm_last_error());
    ck_assert(lm_attn_get_state(b.a, after, bytes) == LM_OK);
    ck_assert_msg(!memcmp(before, after, bytes), "the backward changed the state");
    free(before), free(after);
    tbuf_free(&y);
    bprob_free(&b);

    /* a bias gradient for a bias that was never set */
    c.bias = 0;
    bprob_init(&b, &c);
    lm_tensor x2 = t3(&b.p[XQ].val, c.B, c.L, c.E), d2 = t3(&b.dout, c.B, c.L, c.E);
    lm_attn_grads g2 = { LM_SIZED(lm_attn_grads), .dout = &d2, .out_proj_bias = b.p[BO].grad.data };
    EXPECT_ERR(lm_attn_backward(b.a, &x2, &x2, &x2, &causal, &g2, NULL), LM_ERR_INVALID_ARG,
           "no out_proj_bias");
    bprob_free(&b);
}
END_TEST

START_TEST(test_summary)
{
    printf("module backward: largest directional-derivative error f32 %.2g (bound 5e-5), "
           "bf16 %.2g (bound 5e-3)\n", worst_seen[1], worst_seen[0]);
    ck_assert(worst_seen[1] > 0 && worst_seen[0] > 0); /* the checks above ran */
}
END_TEST

Suite *module_backward_suite(void)
{
    Suite *s = suite_create("module_backward");
    TCase *tc = tcase_create("module_backward");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_causal_slabs);
    tcase_add_test(tc, test_causal_gqa_decay_mask_shared);
    tcase_add_test(tc, test_bidirectional);
    tcase_add_test(tc, test_cross_attention);
    tcase_add_test(tc, test_variants);
    tcase_add_test(tc, test_accumulate);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_summary);
    suite_add_tcase(s, tc);
    return s;
}
