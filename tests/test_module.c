/*
 * test_module.c - the module (lm_attn_*) on the CPU against a float64
 * reference that projects, attends (ref_attend) and out-projects: self and
 * cross attention, causal and not, GQA, layouts, biases, dtypes, and the
 * state: forward hand-over, decode steps, save / restore / fork.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct mcase {
    lm_dtype dtype;
    int64_t B, L, Lk, E, Hq, Hkv, D, kdim, vdim;
    int causal, cross, packed, bias, decay, mask, seq_first;
    int hybrid;      /* hybrid attention with window W, sinks s and random gates */
    int64_t W, s;
    lm_gate_form gate_form; /* the hybrid's gamma: sigmoid (default) or exp of the gates */
} mcase;

static mcase base(void)
{
    mcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .E = 64, .Hq = 4, .Hkv = 4,
                .D = 16, .kdim = 64, .vdim = 64, .causal = 1, .packed = 1, .bias = 1 };
    return c;
}

typedef struct mproblem {
    mcase c;
    lm_attn *a;
    float decay[16];
    float gate[16];
    tbuf xq, xk, xv, out, wq, wk, wv, wo, bin, bo;
    uint8_t *mask;
    double *want;
    int64_t sx[3], sk[3], sv[3];
} mproblem;

static lm_tensor view3(const tbuf *b, const int64_t *s, int64_t B, int64_t L, int64_t W)
{
    lm_tensor t = { .data = b->data, .dtype = b->dtype, .device = LM_CPU, .ndim = 3,
                    .shape = { B, L, W }, .stride = { s[0], s[1], s[2] } };
    return t;
}

static void mproblem_init(mproblem *p, const mcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L, Lk = c->cross ? c->Lk : c->L, E = c->E;
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D;
    const int64_t kdim = c->cross ? c->kdim : E, vdim = c->cross ? c->vdim : E;
    p->c.Lk = Lk, p->c.kdim = kdim, p->c.vdim = vdim;

    lm_attn_config cfg;
    ck_assert(lm_attn_config_default(&cfg, (int)E, (int)c->Hq) == LM_OK);
    cfg.num_kv_heads = (int)c->Hkv;
    cfg.head_dim = (int)c->D;
    cfg.kdim = (int)kdim, cfg.vdim = (int)vdim;
    cfg.dtype = c->dtype;
    for (int h = 0; h < c->Hkv; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -4 - h % 5));
    cfg.decay = c->decay ? p->decay : NULL;
    if (c->hybrid) {
        for (int h = 0; h < c->Hq; h++)
            p->gate[h] = (float)(4 * ref_uniform() - 2);
        cfg.attention = LM_ATTENTION_HYBRID;
        cfg.window = (int)c->W, cfg.sinks = (int)c->s, cfg.window_gate = p->gate;
        cfg.window_gate_form = c->gate_form;
    }
    ck_assert_msg(lm_attn_create(&cfg, &p->a) == LM_OK, "%s", lm_last_error());

    const double ws = 1.0 / sqrt((double)E);
    p->xq = tbuf_new(c->dtype, B * L * E);
    p->out = tbuf_new(c->dtype, B * L * E);
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
    lm_weights w = { LM_SIZED(lm_weights), .out_proj_weight = p->wo.data };
    if (c->packed) {
        w.in_proj_weight = p->wq.data;
    } else {
        w.q_proj_weight = p->wq.data;
        w.k_proj_weight = p->wk.data;
        w.v_proj_weight = p->wv.data;
    }
    if (c->bias) {
        w.in_proj_bias = p->bin.data;
        w.out_proj_bias = p->bo.data;
    }
    ck_assert_msg(lm_attn_set_weights(p->a, &w) == LM_OK, "%s", lm_last_error());
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.3;
    }
    ref_strides3(p->sx, B, L, E, c->seq_first);
    ref_strides3(p->sk, B, Lk, kdim, c->seq_first);
    ref_strides3(p->sv, B, Lk, vdim, c->seq_first);

    /* The reference: project, attend, out-project, all in float64. */
    const tbuf *xk = c->cross ? &p->xk : &p->xq, *xv = c->cross ? &p->xv : &p->xq;
    ref_module m = { .B = B, .Lq = L, .Lk = Lk, .E = E, .kdim = kdim, .vdim = vdim, .Hq = c->Hq,
                     .Hkv = c->Hkv, .D = c->D, .xq = p->xq.ref, .xk = xk->ref, .xv = xv->ref,
                     .wq = p->wq.ref, .wk = c->packed ? p->wq.ref + Dq * E : p->wk.ref,
                     .wv = c->packed ? p->wq.ref + (Dq + Dkv) * E : p->wv.ref, .wo = p->wo.ref,
                     .bq = c->bias ? p->bin.ref : NULL, .bk = c->bias ? p->bin.ref + Dq : NULL,
                     .bv = c->bias ? p->bin.ref + Dq + Dkv : NULL, .bo = c->bias ? p->bo.ref : NULL,
                     .mask = p->mask, .decay = c->decay ? p->decay : NULL, .causal = c->causal,
                     .hybrid = c->hybrid, .window = c->W, .sinks = c->s, .gate = p->gate,
                     .gate_form = c->gate_form };
    memcpy(m.sq, p->sx, sizeof m.sq);
    memcpy(m.sk, c->cross ? p->sk : p->sx, sizeof m.sk);
    memcpy(m.sv, c->cross ? p->sv : p->sx, sizeof m.sv);
    p->want = malloc((size_t)(B * L * E) * sizeof(double));
    ref_module_forward(&m, p->want);
}

static void mproblem_free(mproblem *p)
{
    lm_attn_destroy(p->a);
    tbuf *bs[] = { &p->xq, &p->xk, &p->xv, &p->out, &p->wq, &p->wk, &p->wv, &p->wo, &p->bin, &p->bo };
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
        if (bs[i]->data)
            tbuf_free(bs[i]);
    free(p->mask);
    free(p->want);
}

/* The want values of out are [B, L, E] contiguous; out is written contiguous. */
static lm_tensor out_view(mproblem *p)
{
    int64_t s[3];
    ref_strides3(s, p->c.B, p->c.L, p->c.E, 0);
    return view3(&p->out, s, p->c.B, p->c.L, p->c.E);
}

/* Forward over tokens [t0, t0 + n) (keys too when causal). */
static lm_status forward_part(mproblem *p, int64_t t0, int64_t n, int use_state, int keep_state)
{
    const mcase *c = &p->c;
    lm_tensor q = ref_tokens(view3(&p->xq, p->sx, c->B, c->L, c->E), t0, n);
    lm_tensor k = q, v = q, o = ref_tokens(out_view(p), t0, n), m;
    if (c->cross) {
        k = view3(&p->xk, p->sk, c->B, c->Lk, c->kdim);
        v = view3(&p->xv, p->sv, c->B, c->Lk, c->vdim);
    }
    lm_forward_opts opts = { LM_SIZED(lm_forward_opts), .is_causal = c->causal, .use_state = use_state,
                             .keep_state = keep_state };
    if (p->mask) {
        m = lm_tensor_2d(p->mask + (c->causal ? t0 : 0), LM_BOOL, LM_CPU, c->B,
                         c->causal ? n : c->Lk);
        m.stride[0] = c->Lk;
        opts.key_padding_mask = &m;
    }
    return lm_attn_forward(p->a, &q, c->cross ? &k : &q, c->cross ? &v : &q, &opts, &o, NULL);
}

static void check_out(mproblem *p, const char *what)
{
    ref_err e = ref_compare(&p->out, p->want, p->out.n);
    ref_note(p->c.dtype, e.rel);
    REF_CHECK(e, ref_bound(p->c.dtype),
              "(%s: dtype %d B %lld L %lld Lk %lld H %lld/%lld causal %d cross %d packed %d "
              "bias %d decay %d mask %d seq_first %d)",
              what, (int)p->c.dtype, (long long)p->c.B, (long long)p->c.L, (long long)p->c.Lk,
              (long long)p->c.Hq, (long long)p->c.Hkv, p->c.causal, p->c.cross, p->c.packed,
              p->c.bias, p->c.decay, p->c.mask, p->c.seq_first);
}

static void check_module(const mcase *c)
{
    mproblem p;
    mproblem_init(&p, c);
    tbuf_poison(&p.out);
    ck_assert_msg(forward_part(&p, 0, c->L, 0, 0) == LM_OK, "%s", lm_last_error());
    check_out(&p, "forward");
    mproblem_free(&p);
}

START_TEST(test_self_attention)
{
    static const int64_t Ls[] = { 1, 2, 63, 65, 300 };
    static const lm_dtype dts[] = { LM_F32, LM_BF16, LM_F16 };
    ref_seed(21);
    for (int d = 0; d < 3; d++)
        for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++)
            for (int causal = 0; causal < 2; causal++) {
                mcase c = base();
                c.dtype = dts[d];
                c.L = Ls[i];
                c.causal = causal;
                check_module(&c);
            }
}
END_TEST

START_TEST(test_variants)
{
    ref_seed(22);
    for (int v = 0; v < 7; v++) {
        mcase c = base();
        c.packed = v != 1;
        c.bias = v != 2;
        c.decay = v == 3;
        c.mask = v == 4 || v == 6;
        c.seq_first = v == 5 || v == 6;
        c.causal = v != 6;
        check_module(&c);
    }
}
END_TEST

START_TEST(test_cross_attention)
{
    ref_seed(23);
    for (int v = 0; v < 4; v++) {
        mcase c = base();
        c.cross = 1, c.packed = 0, c.causal = 0;
        c.kdim = 48, c.vdim = 24;
        c.L = v & 1 ? 37 : 130, c.Lk = v & 1 ? 200 : 9;
        c.mask = v >= 2;
        c.seq_first = v == 3;
        check_module(&c);
    }
}
END_TEST

/* GQA, and a head_dim that does not come from embed_dim / num_heads. */
START_TEST(test_gqa_head_dim)
{
    static const int64_t hk[][3] = { { 8, 8, 8 }, { 8, 2, 8 }, { 8, 1, 8 }, { 4, 2, 24 } };
    ref_seed(24);
    for (int i = 0; i < 4; i++)
        for (int causal = 0; causal < 2; causal++) {
            mcase c = base();
            c.Hq = hk[i][0], c.Hkv = hk[i][1], c.D = hk[i][2];
            c.causal = causal;
            check_module(&c);
        }
}
END_TEST

/* forward(L) == forward(L1) + forward(L - L1) == forward(L1) + steps, and the
 * final state is the same after each. */
START_TEST(test_handover)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    ref_seed(25);
    for (int d = 0; d < 2; d++)
        for (int decay = 0; decay < 2; decay++) {
            mcase c = base();
            c.dtype = dts[d];
            c.L = 150;
            c.decay = decay;
            c.Hkv = 2;
            mproblem p;
            mproblem_init(&p, &c);
            const int64_t L1 = 70;
            tbuf_poison(&p.out);
            ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
            ck_assert_msg(forward_part(&p, L1, c.L - L1, 1, 1) == LM_OK, "%s", lm_last_error());
            check_out(&p, "two forwards");
            int64_t pos;
            ck_assert(lm_attn_position(p.a, &pos) == LM_OK);
            ck_assert_int_eq(pos, c.L);

            tbuf_poison(&p.out);
            ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
            for (int64_t t = L1; t < c.L; t++) {
                /* x_t is [B, E] with the batch stride of the [B, L, E] input. */
                lm_tensor x = ref_tokens(view3(&p.xq, p.sx, c.B, c.L, c.E), t, 1);
                lm_tensor o = ref_tokens(out_view(&p), t, 1);
                lm_tensor x2 = { .data = x.data, .dtype = x.dtype, .device = LM_CPU, .ndim = 2,
                                 .shape = { c.B, c.E }, .stride = { x.stride[0], x.stride[2] } };
                lm_tensor o2 = { .data = o.data, .dtype = o.dtype, .device = LM_CPU, .ndim = 2,
                                 .shape = { c.B, c.E }, .stride = { o.stride[0], o.stride[2] } };
                ck_assert_msg(lm_attn_step(p.a, &x2, &o2, NULL) == LM_OK, "%s", lm_last_error());
            }
            check_out(&p, "forward then steps");
            mproblem_free(&p);
        }
}
END_TEST

/* get_state / set_state of case c (built from random seed `seed`) after L1
 * tokens: restore replays a continuation bit for bit; a state moved to a
 * second handle (fork) continues there identically. Returns the blob
 * (malloc'd, *bytes long). */
static char *save_restore_fork(const mcase *c, uint64_t seed, int64_t L1, size_t *bytes)
{
    ref_seed(seed);
    mproblem p;
    mproblem_init(&p, c);
    const int64_t n = c->L - L1;
    ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
    ck_assert(lm_attn_state_size(p.a, bytes) == LM_OK);
    char *blob = malloc(*bytes);
    ck_assert(lm_attn_get_state(p.a, blob, *bytes) == LM_OK);

    ck_assert(forward_part(&p, L1, n, 1, 1) == LM_OK);
    const size_t ob = (size_t)p.out.n * lm_dtype_size(c->dtype);
    void *first = malloc(ob);
    memcpy(first, p.out.data, ob);
    check_out(&p, "continuation");

    ck_assert(lm_attn_set_state(p.a, blob, *bytes) == LM_OK);
    int64_t pos;
    ck_assert(lm_attn_position(p.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, L1);
    tbuf_poison(&p.out);
    ck_assert(forward_part(&p, 0, L1, 0, 0) == LM_OK); /* rewrite the first part, state untouched */
    ck_assert(forward_part(&p, L1, n, 1, 0) == LM_OK);
    ck_assert_msg(!memcmp(first, p.out.data, ob), "restored state did not replay bit for bit");

    /* fork: a second handle with the same config and weights */
    mproblem q;
    ref_seed(seed);
    mproblem_init(&q, c);
    ck_assert(lm_attn_set_state(q.a, blob, *bytes) == LM_OK);
    tbuf_poison(&q.out);
    ck_assert(forward_part(&q, 0, L1, 0, 0) == LM_OK);
    ck_assert(forward_part(&q, L1, n, 1, 0) == LM_OK);
    ck_assert_msg(!memcmp(first, q.out.data, ob), "forked state did not continue identically");
    mproblem_free(&q);
    free(first);
    mproblem_free(&p);
    return blob;
}

START_TEST(test_save_restore_fork)
{
    mcase c = base();
    c.L = 120;
    c.Hkv = 2;
    size_t bytes;
    free(save_restore_fork(&c, 26, 80, &bytes));
}
END_TEST

/* ---- hybrid attention (docs/DESIGN.md §9) through the module ---- */

static mcase hybrid_base(void)
{
    mcase c = base();
    c.hybrid = 1, c.W = 16, c.s = 3, c.L = 150, c.Hkv = 2;
    return c;
}

/* x_t and out_t as [B, E] views of the [B, L, E] buffers. */
static void step_views(mproblem *p, int64_t t, lm_tensor *x2, lm_tensor *o2)
{
    const mcase *c = &p->c;
    lm_tensor x = ref_tokens(view3(&p->xq, p->sx, c->B, c->L, c->E), t, 1);
    lm_tensor o = ref_tokens(out_view(p), t, 1);
    *x2 = (lm_tensor){ .data = x.data, .dtype = x.dtype, .device = LM_CPU, .ndim = 2,
                       .shape = { c->B, c->E }, .stride = { x.stride[0], x.stride[2] } };
    *o2 = (lm_tensor){ .data = o.data, .dtype = o.dtype, .device = LM_CPU, .ndim = 2,
                       .shape = { c->B, c->E }, .stride = { o.stride[0], o.stride[2] } };
}

START_TEST(test_hybrid_forward)
{
    ref_seed(31);
    for (int v = 0; v < 6; v++) {
        mcase c = hybrid_base();
        c.dtype = v == 1 ? LM_BF16 : v == 2 ? LM_F16 : LM_F32;
        c.mask = v == 3 || v == 5;
        c.seq_first = v == 4 || v == 5;
        c.packed = v != 4;
        c.Hq = v == 5 ? 8 : 4, c.Hkv = v == 5 ? 1 : 2;
        c.W = v == 2 ? 1 : 16, c.s = v == 3 ? 0 : 3;
        c.gate_form = v % 2 ? LM_GATE_EXP : LM_GATE_SIGMOID;
        check_module(&c);
    }
    /* Several slabs of the module's forward (about 1024 tokens each here). */
    mcase c = hybrid_base();
    c.L = 2500, c.mask = 1;
    check_module(&c);
}
END_TEST

/* forward(L) == forward(L1) + forward(L - L1) == forward(L1) + steps ==
 * steps alone, against the reference. */
START_TEST(test_hybrid_handover)
{
    ref_seed(32);
    for (int mask = 0; mask < 2; mask++) {
        mcase c = hybrid_base();
        c.mask = mask;
        c.gate_form = mask ? LM_GATE_SIGMOID : LM_GATE_EXP; /* steps (no mask) with exp */
        mproblem p;
        mproblem_init(&p, &c);
        const int64_t L1 = 70;
        tbuf_poison(&p.out);
        ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
        ck_assert_msg(forward_part(&p, L1, c.L - L1, 1, 1) == LM_OK, "%s", lm_last_error());
        check_out(&p, "hybrid: two forwards");
        if (!mask) { /* lm_attn_step takes no mask */
            for (int from = 0; from < 2; from++) {
                tbuf_poison(&p.out);
                ck_assert(lm_attn_reset(p.a) == LM_OK);
                if (from)
                    ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
                for (int64_t t = from ? L1 : 0; t < c.L; t++) {
                    lm_tensor x, o;
                    step_views(&p, t, &x, &o);
                    ck_assert_msg(lm_attn_step(p.a, &x, &o, NULL) == LM_OK, "%s", lm_last_error());
                }
                check_out(&p, from ? "hybrid: forward then steps" : "hybrid: steps");
            }
        }
        mproblem_free(&p);
    }
}
END_TEST

/* The state blob (format 2) restores and forks a hybrid conversation bit for
 * bit; blobs of the other mode or another window are refused; a linear
 * handle still reads format 1 and reads a linear blob of format 2. */
START_TEST(test_hybrid_state_blob)
{
    mcase c = hybrid_base();
    c.L = 120;
    const int64_t L1 = 80;
    size_t bytes;
    char *blob = save_restore_fork(&c, 33, L1, &bytes);
    const size_t floats = (size_t)(c.B * c.Hkv * (c.D * c.D + c.D + (c.W + c.s) * (2 * c.D + 1)));
    /* header of format 2 (8 + 9 x 8 bytes), the state, the 32-byte tag */
    ck_assert_uint_eq(bytes, 80 + floats * sizeof(float) + 32);
    ck_assert(!memcmp(blob, "LMSTATE2", 8));

    /* Another window, and linear mode, refuse it. */
    mcase c2 = c;
    c2.W = 8;
    mproblem r;
    mproblem_init(&r, &c2);
    EXPECT_ERR(lm_attn_set_state(r.a, blob, bytes), LM_ERR_STATE, "W = 16, s = 3");
    mproblem_free(&r);
    mcase cl = c;
    cl.hybrid = 0;
    mproblem lin;
    mproblem_init(&lin, &cl);
    EXPECT_ERR(lm_attn_set_state(lin.a, blob, bytes), LM_ERR_STATE, "hybrid attention state");
    /* A linear blob (format 1) is refused by a hybrid handle, which keeps its state. */
    mproblem p;
    mproblem_init(&p, &c);
    ck_assert(forward_part(&p, 0, L1, 0, 1) == LM_OK);
    ck_assert(forward_part(&lin, 0, L1, 0, 1) == LM_OK);
    size_t lbytes;
    ck_assert(lm_attn_state_size(lin.a, &lbytes) == LM_OK);
    char *lblob = malloc(lbytes);
    ck_assert(lm_attn_get_state(lin.a, lblob, lbytes) == LM_OK);
    ck_assert(!memcmp(lblob, "LMSTATE1", 8));
    int64_t pos;
    EXPECT_ERR(lm_attn_set_state(p.a, lblob, lbytes), LM_ERR_STATE, "linear attention state");
    ck_assert(lm_attn_position(p.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, L1);
    /* The same linear state as format 2 (header grown by attention, W, s, reserved = 0). */
    const int64_t n = c.L - L1;
    const size_t ob = (size_t)lin.out.n * lm_dtype_size(c.dtype);
    char *l2 = calloc(1, lbytes + 32);
    memcpy(l2, lblob, 48);
    memcpy(l2, "LMSTATE2", 8);
    memcpy(l2 + 80, lblob + 48, lbytes - 48);
    ck_assert(forward_part(&lin, L1, n, 1, 0) == LM_OK);
    void *first = malloc(ob);
    memcpy(first, lin.out.data, ob);
    ck_assert(lm_attn_reset(lin.a) == LM_OK);
    ck_assert_msg(lm_attn_set_state(lin.a, l2, lbytes + 32) == LM_OK, "%s", lm_last_error());
    tbuf_poison(&lin.out);
    ck_assert(forward_part(&lin, 0, L1, 0, 0) == LM_OK);
    ck_assert(forward_part(&lin, L1, n, 1, 0) == LM_OK);
    ck_assert_msg(!memcmp(first, lin.out.data, ob), "a linear blob of format 2 did not restore");
    free(first);
    free(l2);
    free(lblob);
    mproblem_free(&lin);
    mproblem_free(&p);
    free(blob);
}
END_TEST

/* What hybrid mode refuses, with a message, changing nothing. */
START_TEST(test_hybrid_refusals)
{
    lm_attn_config cfg;
    ck_assert(lm_attn_config_default(&cfg, 64, 4) == LM_OK);
    cfg.attention = LM_ATTENTION_HYBRID;
    lm_attn *a = NULL;
    float decay[4] = { 0.9f, 0.9f, 0.9f, 0.9f }, gate[4] = { 0, INFINITY, 0, 0 };
    float big[4] = { 0, 0, -41, 0 };
    for (int i = 0; i < 7; i++) {
        lm_attn_config c = cfg;
        lm_status want = LM_ERR_INVALID_ARG;
        const char *needle = "";
        switch (i) {
        case 0: c.window = 0, needle = "window must be in 1.."; break;
        case 1: c.sinks = -2, needle = "sinks must be in 0.."; break;
        case 2: c.normalize = 0, needle = "set normalize = 1"; break;
        case 3: c.decay = decay, want = LM_ERR_UNSUPPORTED, needle = "has no decay"; break;
        case 4: c.window_gate = gate, needle = "window_gate[1]"; break;
        case 5: c.window_gate_form = (lm_gate_form)-1, needle = "window_gate_form -1 is not one of"; break;
        case 6: c.window_gate_form = LM_GATE_EXP, c.window_gate = big, needle = "outside [-40, 40]"; break;
        }
        EXPECT_ERR(lm_attn_create(&c, &a), want, needle);
        ck_assert_ptr_null(a);
    }
    ref_seed(34);
    mcase mc = hybrid_base();
    mc.L = 40;
    mproblem p;
    mproblem_init(&p, &mc);
    p.c.causal = 0;
    EXPECT_ERR(forward_part(&p, 0, mc.L, 0, 1), LM_ERR_UNSUPPORTED, "hybrid attention is causal");
    int64_t pos;
    ck_assert(lm_attn_position(p.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, 0);
    p.c.causal = 1;
    lm_tensor x = view3(&p.xq, p.sx, mc.B, mc.L, mc.E), d = out_view(&p);
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1 };
    lm_attn_grads g = { LM_SIZED(lm_attn_grads), .dout = &x, .dquery = &d };
    EXPECT_ERR(lm_attn_backward(p.a, &x, &x, &x, &o, &g, NULL), LM_ERR_UNSUPPORTED,
               "no backward in the C library");
    mproblem_free(&p);
}
END_TEST

Suite *module_suite(void)
{
    Suite *s = suite_create("module");
    TCase *tc = tcase_create("module");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_self_attention);
    tcase_add_test(tc, test_variants);
    tcase_add_test(tc, test_cross_attention);
    tcase_add_test(tc, test_gqa_head_dim);
    tcase_add_test(tc, test_handover);
    tcase_add_test(tc, test_save_restore_fork);
    tcase_add_test(tc, test_hybrid_forward);
    tcase_add_test(tc, test_hybrid_handover);
    tcase_add_test(tc, test_hybrid_state_blob);
    tcase_add_test(tc, test_hybrid_refusals);
    suite_add_tcase(s, tc);
    return s;
}
