/*
 * backward_cases.c - the core backward's problems, checks and case grid
 * (backward_cases.h), for any backend.
 *
 * Inputs: q, k uniform in [-2, 2) for elu+1, [-0.5, 1.5) for relu, [0, 1.5)
 * for normalised identity (its normaliser keeps a sign) and [-1, 1.5)
 * unnormalised; v and dout in [-1, 1), rounded to the dtype with the
 * rounded values as the reference's inputs; a mask of 25% of the keys;
 * decays 1 - 2^-(2 + h % 6) per kv head (down to 0.75); an initial state S
 * in [-1, 1), z in [1, 5); gradients of the final state in [-0.1, 0.1).
 * Gradient buffers start as NaN before every call and must all be written.
 *
 * The grid is the union of what the CPU and GPU suites ran when each had
 * its own copy; the comment of each family says where its values come from.
 */
#include "backward_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

const char *const bw_grad_names[BW_NGRADS] = { "dq", "dk", "dv", "dS_in", "dz_in" };

/* Strides of layout lay; returns the elements its buffer needs. */
static int64_t layout(int64_t *s, int lay, int64_t B, int64_t L, int64_t H, int64_t D)
{
    const int64_t n = B * L * H * D;
    switch (lay) {
    case BW_LBHD: ref_strides4(s, B, L, H, D, 1); return n;
    case BW_BHLD: s[3] = 1, s[1] = D, s[2] = L * D, s[0] = H * L * D; return n;
    case BW_GAPPED: s[3] = 2, s[2] = 2 * D, s[1] = 2 * H * D, s[0] = 2 * L * H * D; return 2 * n;
    default: ref_strides4(s, B, L, H, D, 0); return n;
    }
}

/* The logical shape of gradient which < 3. */
static void shape_of(const bwprob *p, int which, int64_t *sh)
{
    const bwcase *c = &p->c;
    const int64_t ls[3] = { c->L, c->Lk, c->Lk }, hs[3] = { c->Hq, c->Hkv, c->Hkv }, ds[3] = { c->Dk, c->Dk, c->Dv };
    sh[0] = c->B, sh[1] = ls[which], sh[2] = hs[which], sh[3] = ds[which];
}

/* The strides of gradient which < 3 in the inputs' layout (in) or its own. */
static const int64_t *strides_of(const bwprob *p, int which, int in)
{
    return which == BW_DQ ? (in ? p->sq : p->gq) : which == BW_DK ? (in ? p->sk : p->gk) : in ? p->sv : p->gv;
}

static int64_t at(const int64_t *s, int64_t b, int64_t l, int64_t h, int64_t d)
{
    return b * s[0] + l * s[1] + h * s[2] + d * s[3];
}

static float *f32_randoms(int64_t n, double lo, double hi, double *shadow)
{
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(x);
    for (int64_t i = 0; i < n; i++)
        shadow[i] = x[i] = (float)(lo + (hi - lo) * ref_uniform());
    return x;
}

static double *zeros(int64_t n)
{
    double *x = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    ck_assert_ptr_nonnull(x);
    return x;
}

void bwprob_init(bwprob *p, const test_dev *dev, const bwcase *c)
{
    memset(p, 0, sizeof *p);
    p->dev = dev;
    p->c = *c;
    if (c->causal)
        p->c.Lk = c->L;
    const int64_t B = c->B, L = c->L, Lk = p->c.Lk, Hq = c->Hq, Hkv = c->Hkv, Dk = c->Dk, Dv = c->Dv;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : c->fm == LM_FEATURE_RELU ? -0.5 : c->normalize ? 0.0 : -1.0;
    const double hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, layout(p->sq, c->lay, B, L, Hq, Dk));
    p->k = tbuf_new(c->dtype, layout(p->sk, c->lay, B, Lk, Hkv, Dk));
    p->v = tbuf_new(c->dtype, layout(p->sv, c->lay, B, Lk, Hkv, Dv));
    p->dout = tbuf_new(c->dtype, layout(p->so, c->lay, B, L, Hq, Dv));
    tbuf_random(&p->q, lo, hi);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    tbuf_random(&p->dout, -1.0, 1.0);
    p->ng[BW_DQ] = layout(p->gq, c->glay, B, L, Hq, Dk);
    p->ng[BW_DK] = layout(p->gk, c->glay, B, Lk, Hkv, Dk);
    p->ng[BW_DV] = layout(p->gv, c->glay, B, Lk, Hkv, Dv);
    p->n[BW_DQ] = B * L * Hq * Dk, p->n[BW_DK] = B * Lk * Hkv * Dk, p->n[BW_DV] = B * Lk * Hkv * Dv;
    p->n[BW_DS] = B * Hkv * Dk * Dv, p->n[BW_DZ] = B * Hkv * Dk;
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk > 0 ? B * Lk : 1));
        ck_assert_ptr_nonnull(p->mask);
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    ck_assert(!c->decay || Hkv <= 64);
    for (int64_t h = 0; h < Hkv && h < 64; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -2 - (int)(h % 6)));
    const int64_t nS = p->n[BW_DS], nz = p->n[BW_DZ];
    p->S0d = zeros(nS), p->z0d = zeros(nz), p->dSod = zeros(nS), p->dzod = zeros(nz);
    if (c->state_in) {
        p->S0 = f32_randoms(nS, -1.0, 1.0, p->S0d);
        p->z0 = f32_randoms(nz, 1.0, 5.0, p->z0d);
    }
    if (c->dstate_out) {
        p->dSo = f32_randoms(nS, -0.1, 0.1, p->dSod);
        p->dzo = f32_randoms(nz, -0.1, 0.1, p->dzod);
    }
    p->dq = test_dev_input(dev, p->q.data, tbuf_bytes(&p->q));
    p->dk = test_dev_input(dev, p->k.data, tbuf_bytes(&p->k));
    p->dv = test_dev_input(dev, p->v.data, tbuf_bytes(&p->v));
    p->ddo = test_dev_input(dev, p->dout.data, tbuf_bytes(&p->dout));
    p->dmask = test_dev_input(dev, p->mask, (size_t)(B * Lk > 0 ? B * Lk : 1));
    p->dS0 = test_dev_input(dev, p->S0, (size_t)nS * sizeof(float));
    p->dz0 = test_dev_input(dev, p->z0, (size_t)nz * sizeof(float));
    p->ddSo = test_dev_input(dev, p->dSo, (size_t)nS * sizeof(float));
    p->ddzo = test_dev_input(dev, p->dzo, (size_t)nz * sizeof(float));
}

void bwprob_free(bwprob *p)
{
    void *dev[] = { p->dq, p->dk, p->dv, p->ddo, p->dmask, p->dS0, p->dz0, p->ddSo, p->ddzo };
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        test_dev_drop(p->dev, dev[i]);
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v), tbuf_free(&p->dout);
    void *host[] = { p->mask, p->S0, p->z0, p->dSo, p->dzo, p->S0d, p->z0d, p->dSod, p->dzod };
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
    for (int i = 0; i < BW_NGRADS; i++)
        free(p->want[i]), free(p->mag[i]);
}

void bwprob_reupload(bwprob *p)
{
    if (p->dev->device == LM_CPU)
        return;
    const tbuf *in[] = { &p->q, &p->k, &p->v, &p->dout };
    void *d[] = { p->dq, p->dk, p->dv, p->ddo };
    for (int i = 0; i < 4; i++)
        p->dev->upload(d[i], in[i]->data, tbuf_bytes(in[i]));
    if (p->mask)
        p->dev->upload(p->dmask, p->mask, (size_t)(p->c.B * p->c.Lk));
}

double bw_ref_cost(const bwcase *c)
{
    const double Lk = c->causal ? (double)c->L : (double)c->Lk;
    return (double)(c->Hq / c->Hkv) * (double)c->L * Lk * (double)(c->Dk + c->Dv);
}

/* ref_backward (magnitudes with mag) into w, logical order. */
static void reference(const bwprob *p, int mag, double **w)
{
    const bwcase *c = &p->c;
    ref_problem r = { .B = c->B, .L = c->L, .Lk = c->Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q.p = p->q.ref, .k.p = p->k.ref, .v.p = p->v.ref, .mask = p->mask,
                      .state = p->S0d, .normalizer = p->z0d, .decay = c->decay ? p->decay : NULL,
                      .causal = c->causal, .feature_map = c->fm, .normalize = c->normalize,
                      .eps = (double)1e-6f, .scale = (double)(1.0f / sqrtf((float)c->Dk)) };
    /* dq, dk, dv come at the inputs' offsets: buffers as large as theirs */
    double *in[3] = { zeros(p->q.n), zeros(p->k.n), zeros(p->v.n) };
    ref_grads g = { .dout.p = p->dout.ref, .dstate_out = p->dSod, .dnormalizer_out = p->dzod,
                    .dq = in[0], .dk = in[1], .dv = in[2], .dstate_in = w[BW_DS], .dnormalizer_in = w[BW_DZ] };
    memcpy(r.q.s, p->sq, sizeof r.q.s), memcpy(r.k.s, p->sk, sizeof r.k.s);
    memcpy(r.v.s, p->sv, sizeof r.v.s), memcpy(g.dout.s, p->so, sizeof g.dout.s);
    ref_backward(&r, &g, mag);
    for (int which = 0; which < 3; which++) {
        int64_t sh[4], i = 0;
        shape_of(p, which, sh);
        const int64_t *s = strides_of(p, which, 1);
        for (int64_t b = 0; b < sh[0]; b++)
            for (int64_t l = 0; l < sh[1]; l++)
                for (int64_t h = 0; h < sh[2]; h++)
                    for (int64_t d = 0; d < sh[3]; d++)
                        w[which][i++] = in[which][at(s, b, l, h, d)];
        free(in[which]);
    }
}

void bwprob_reference(bwprob *p)
{
    for (int i = 0; i < BW_NGRADS; i++) {
        if (!p->want[i])
            p->want[i] = zeros(p->n[i]), p->mag[i] = zeros(p->n[i]);
    }
    reference(p, 0, p->want);
    reference(p, 1, p->mag);
}

/* ---- gradients on a backend ---- */

void bwrun_new(bwrun *r, const bwprob *p, const test_dev *dev)
{
    r->dev = dev;
    for (int i = 0; i < 3; i++)
        r->g[i] = dev->alloc((size_t)p->ng[i] * lm_dtype_size(p->c.dtype));
    r->S = dev->alloc((size_t)p->n[BW_DS] * sizeof(float));
    r->z = dev->alloc((size_t)p->n[BW_DZ] * sizeof(float));
    bwrun_poison(r, p);
}

void bwrun_poison(bwrun *r, const bwprob *p)
{
    for (int i = 0; i < 3; i++) {
        tbuf nan = tbuf_new(p->c.dtype, p->ng[i]);
        tbuf_poison(&nan);
        r->dev->upload(r->g[i], nan.data, tbuf_bytes(&nan));
        tbuf_free(&nan);
    }
    tbuf nan = tbuf_new(LM_F32, p->n[BW_DS]);
    tbuf_poison(&nan);
    r->dev->upload(r->S, nan.data, (size_t)p->n[BW_DS] * sizeof(float));
    r->dev->upload(r->z, nan.data, (size_t)p->n[BW_DZ] * sizeof(float));
    tbuf_free(&nan);
}

void bwrun_free(bwrun *r)
{
    for (int i = 0; i < 3; i++)
        r->dev->release(r->g[i]);
    r->dev->release(r->S), r->dev->release(r->z);
}

void bwgrads_read(bwgrads *out, const bwprob *p, const bwrun *r)
{
    for (int i = 0; i < 3; i++) {
        out->g[i] = tbuf_new(p->c.dtype, p->ng[i]);
        r->dev->download(out->g[i].data, r->g[i], tbuf_bytes(&out->g[i]));
    }
    out->S = malloc((size_t)(p->n[BW_DS] > 0 ? p->n[BW_DS] : 1) * sizeof(float));
    out->z = malloc((size_t)(p->n[BW_DZ] > 0 ? p->n[BW_DZ] : 1) * sizeof(float));
    ck_assert(out->S && out->z);
    r->dev->download(out->S, r->S, (size_t)p->n[BW_DS] * sizeof(float));
    r->dev->download(out->z, r->z, (size_t)p->n[BW_DZ] * sizeof(float));
}

void bwgrads_free(bwgrads *g)
{
    for (int i = 0; i < 3; i++)
        tbuf_free(&g->g[i]);
    free(g->S), free(g->z);
}

/* Logical element i of gradient which in got; *gap_ok: in the gapped
 * layout, the element after it is still NaN (else 1). */
static double grad_at(const bwgrads *got, const bwprob *p, int which, int64_t i, int *gap_ok)
{
    *gap_ok = 1;
    if (which >= 3)
        return which == BW_DS ? got->S[i] : got->z[i];
    int64_t sh[4], ix[4];
    shape_of(p, which, sh);
    for (int j = 3; j >= 0; j--)
        ix[j] = i % sh[j], i /= sh[j];
    const int64_t *s = strides_of(p, which, 0), o = at(s, ix[0], ix[1], ix[2], ix[3]);
    if (s[3] == 2)
        *gap_ok = isnan(tbuf_get(&got->g[which], o + 1));
    return tbuf_get(&got->g[which], o);
}

double *bwgrads_values(const bwgrads *g, const bwprob *p, int which)
{
    double *v = zeros(p->n[which]);
    int gap_ok;
    for (int64_t i = 0; i < p->n[which]; i++)
        v[i] = grad_at(g, p, which, i, &gap_ok);
    return v;
}

double bw_error(const bwgrads *got, const bwprob *p, int which, const double *want, const double *scale,
                int64_t *unwritten)
{
    double num = 0, den = 0;
    int64_t gaps = 0;
    for (int64_t i = 0; i < p->n[which]; i++) {
        int gap_ok;
        const double x = grad_at(got, p, which, i, &gap_ok);
        if (isnan(x) && isfinite(want[i]))
            (*unwritten)++;
        else
            num += (x - want[i]) * (x - want[i]);
        den += scale[i] * scale[i];
        gaps += !gap_ok;
    }
    ck_assert_msg(gaps == 0, "%s: %lld gaps of the gapped layout were written", bw_grad_names[which],
                  (long long)gaps);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double bw_floor(lm_dtype dt, const double *want, const double *mag, int64_t n)
{
    tbuf r = tbuf_new(dt, n);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        tbuf_set(&r, i, want[i]);
        num += (r.ref[i] - want[i]) * (r.ref[i] - want[i]);
        den += mag[i] * mag[i];
    }
    tbuf_free(&r);
    return den > 0 ? sqrt(num / den) : 0.0;
}

/* ---- calls ---- */

void bwcall_init(bwcall *k, const bwprob *p, const bwrun *r, int64_t t0, int64_t n)
{
    const bwcase *c = &p->c;
    const lm_device where = r->dev->device;
    const int host = where == LM_CPU;
    const lm_dtype dt = c->dtype;
    const int64_t nk = c->causal ? n : c->Lk, k0 = c->causal ? t0 : 0;
    memset(k, 0, sizeof *k);
    k->q = ref_tokens(ref_tensor4(host ? p->q.data : p->dq, dt, where, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_tensor4(host ? p->k.data : p->dk, dt, where, p->sk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->v = ref_tokens(ref_tensor4(host ? p->v.data : p->dv, dt, where, p->sv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    k->dout = ref_tokens(ref_tensor4(host ? p->dout.data : p->ddo, dt, where, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    k->dq = ref_tokens(ref_tensor4(r->g[0], dt, where, p->gq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->dk = ref_tokens(ref_tensor4(r->g[1], dt, where, p->gk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->dv = ref_tokens(ref_tensor4(r->g[2], dt, where, p->gv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d((host ? p->mask : p->dmask) + k0, LM_BOOL, where, c->B, nk);
        k->mask.stride[0] = c->Lk;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = host ? p->S0 : p->dS0, k->a.normalizer = host ? p->z0 : p->dz0;
    k->a.position = t0;
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
    k->g.struct_size = sizeof k->g;
    k->g.dout = &k->dout, k->g.dq = &k->dq, k->g.dk = &k->dk, k->g.dv = &k->dv;
    k->g.dstate_out = host ? p->dSo : p->ddSo, k->g.dnormalizer_out = host ? p->dzo : p->ddzo;
    if (c->dstate_in)
        k->g.dstate_in = r->S, k->g.dnormalizer_in = r->z;
}

void bw_run(const bwprob *p, bwrun *r)
{
    bwcall k;
    bwcall_init(&k, p, r, 0, p->c.L);
    ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "backward on device %d: %s",
                  (int)r->dev->device, lm_last_error());
}

/* ---- checks ---- */

void bw_describe(char *s, size_t n, const bwcase *c)
{
    snprintf(s, n,
             "dt %d B %lld L %lld/%lld H %lld/%lld D %lld/%lld c%d fm%d n%d dec%d m%d st%d/%d/%d lay%d/%d pr%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->Hq,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal, c->fm, c->normalize, c->decay,
             c->mask, c->state_in, c->dstate_out, c->dstate_in, c->lay, c->glay, (int)c->precision);
}

/* The grid entry running now, named in messages, and the cases it left out. */
static const char *grid_name = "";
static int left_out;

void bw_check(const bw_env *e, const bwprob *p, const bwgrads *got, int chained, const char *what)
{
    char d[240];
    bw_describe(d, sizeof d, &p->c);
    ck_assert_msg(p->want[0], "no reference computed (%s)", d);
    for (int i = 0; i < (p->c.dstate_in ? BW_NGRADS : 3); i++) {
        const lm_dtype dt = i < 3 ? p->c.dtype : LM_F32;
        int64_t unwritten = 0;
        const double err = bw_error(got, p, i, p->want[i], p->mag[i], &unwritten);
        const double fl = bw_floor(dt, p->want[i], p->mag[i], p->n[i]);
        const double bound = e->bound(&p->c, i, fl, p->n[i], chained);
        if (e->note)
            e->note(&p->c, i, err, fl, d);
        ck_assert_msg(unwritten == 0, "%s, %s %s: %lld elements not written (%s)", grid_name, what,
                      bw_grad_names[i], (long long)unwritten, d);
        ck_assert_msg(err <= bound, "%s, %s %s: rel. error %.3g > %.3g (floor %.3g) (%s)", grid_name, what,
                      bw_grad_names[i], err, bound, fl, d);
    }
}

/* ---- the grid ---- */

/* One backward over the whole sequence of p on e's backend, checked against
 * float64 (with_ref) and by e->also. */
static void run_checked(const bw_env *e, const bwprob *p, int with_ref, const char *what)
{
    char d[240];
    bw_describe(d, sizeof d, &p->c);
    bwrun r;
    bwrun_new(&r, p, e->dev);
    bw_run(p, &r);
    bwgrads got;
    bwgrads_read(&got, p, &r);
    if (with_ref)
        bw_check(e, p, &got, 0, what);
    if (e->also)
        e->also(p, &got, with_ref, d);
    bwgrads_free(&got);
    bwrun_free(&r);
}

/* Case c on e's backend, with the float64 reference where e runs it. */
static void check_case(const bw_env *e, const bwcase *c)
{
    const int with_ref = e->has_ref(c);
    if (!with_ref && !e->also) {
        left_out++;
        return;
    }
    bwprob p;
    bwprob_init(&p, e->dev, c);
    if (with_ref)
        bwprob_reference(&p);
    run_checked(e, &p, with_ref, "backward");
    bwprob_free(&p);
}

static void set_state(bwcase *c, int in, int out, int ask)
{
    c->state_in = in, c->dstate_out = out, c->dstate_in = ask;
}

/* Ragged lengths around the chunk (64): B = 1 and 3, both directions, decay
 * when causal, dS_in asked without a state (the CPU suite's); and to 4097
 * tokens, B = 2 (1 past 1000), both directions, a state at every other
 * length, a mask from 1000 (the GPU suite's). */
static void grid_lengths(const bw_env *e)
{
    static const int64_t cpu_Ls[] = { 1, 2, 63, 64, 65, 127, 300 }, gpu_Ls[] = { 1, 63, 64, 65, 1000, 4097 };
    for (int i = 0; i < 7; i++)
        for (int64_t B = 1; B <= 3; B += 2)
            for (int causal = 0; causal < 2; causal++) {
                bwcase c = e->base;
                c.L = c.Lk = cpu_Ls[i];
                c.B = B, c.causal = causal, c.decay = causal;
                set_state(&c, 0, 0, 1);
                check_case(e, &c);
            }
    for (int i = 0; i < 6; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bwcase c = e->base;
            c.L = c.Lk = gpu_Ls[i];
            c.causal = causal;
            c.B = gpu_Ls[i] > 1000 ? 1 : 2;
            set_state(&c, i % 2, i % 2, i % 2);
            c.mask = i >= 4;
            check_case(e, &c);
        }
}

/* Every combination of the modes of docs/DESIGN.md §2 (decay only causal;
 * identity normalised on non-negative inputs), 77 keys for the
 * bidirectional ones, with five ways of the state: none; dS_in asked; an
 * initial state, dS_in asked; dS_out given, dS_in not; all three (the CPU
 * suite's four, and the GPU suite's none and all, which skipped normalised
 * identity). */
static void grid_modes(const bw_env *e)
{
    static const int st[5][3] = { { 0, 0, 0 }, { 0, 0, 1 }, { 1, 0, 1 }, { 0, 1, 0 }, { 1, 1, 1 } };
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int s = 0; s < 5; s++) {
                            bwcase c = e->base;
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask;
                            set_state(&c, st[s][0], st[s][1], st[s][2]);
                            c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_case(e, &c);
                        }
}

/* GQA, from MHA to one kv head, with a mask and all of the state: B = 3,
 * 130 tokens (70 keys bidirectional), decay when causal (the CPU suite's);
 * B = 2, 300 tokens, no decay (the GPU suite's). */
static void grid_heads(const bw_env *e)
{
    static const int64_t cpu_heads[][2] = { { 4, 4 }, { 4, 2 }, { 4, 1 }, { 1, 1 }, { 8, 1 } };
    static const int64_t gpu_heads[][2] = { { 8, 8 }, { 8, 2 }, { 8, 1 }, { 1, 1 } };
    for (int i = 0; i < 5; i++)
        for (int causal = 0; causal < 2; causal++) {
            bwcase c = e->base;
            c.Hq = cpu_heads[i][0], c.Hkv = cpu_heads[i][1];
            c.B = 3, c.L = 130, c.Lk = causal ? 130 : 70;
            c.causal = causal, c.decay = causal, c.mask = 1;
            set_state(&c, 1, 1, 1);
            check_case(e, &c);
        }
    for (int i = 0; i < 4; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bwcase c = e->base;
            c.Hq = gpu_heads[i][0], c.Hkv = gpu_heads[i][1];
            c.B = 2, c.L = c.Lk = 300;
            c.causal = causal, c.mask = 1;
            set_state(&c, 1, 1, 1);
            check_case(e, &c);
        }
}

/* Head dims Dk / Dv, equal and not, down to 1: normalised and not, causal
 * with decay, 140 tokens (the CPU suite's); powers of two to 256 and ragged,
 * both directions, decay when causal, B = 1, Hq 2 / Hkv 1, 200 tokens (the
 * GPU suite's). All with the whole state. */
static void grid_head_dims(const bw_env *e)
{
    static const int64_t cpu_dims[][2] = { { 32, 32 }, { 64, 64 }, { 64, 16 }, { 16, 64 },
                                           { 3, 5 },   { 1, 1 },   { 128, 48 } };
    static const int64_t gpu_dims[][2] = { { 64, 64 },  { 128, 128 }, { 256, 256 }, { 64, 128 }, { 128, 64 },
                                           { 256, 64 }, { 32, 32 },   { 96, 40 },   { 60, 44 } };
    for (int i = 0; i < 7; i++)
        for (int norm = 0; norm < 2; norm++) {
            bwcase c = e->base;
            c.Dk = cpu_dims[i][0], c.Dv = cpu_dims[i][1];
            c.L = c.Lk = 140;
            c.normalize = norm, c.decay = 1;
            set_state(&c, 1, 1, 1);
            check_case(e, &c);
        }
    for (int i = 0; i < 9; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bwcase c = e->base;
            c.B = 1, c.Hq = 2, c.Hkv = 1;
            c.Dk = gpu_dims[i][0], c.Dv = gpu_dims[i][1];
            c.causal = causal, c.decay = causal;
            set_state(&c, 1, 1, 1);
            c.L = c.Lk = 200;
            check_case(e, &c);
        }
}

/* bf16, f16, f32 at 1, 65, 300 tokens in four modes: causal; causal with
 * decay, a mask and the state; bidirectional (90 keys) with a mask;
 * unnormalised with a mask and the state (the CPU suite's); and at 1, 65,
 * 1000 tokens: causal (Dk 64); decay and the state (Dk 128);
 * bidirectional with a mask (the GPU suite's). */
static void grid_dtypes(const bw_env *e)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t cpu_Ls[] = { 1, 65, 300 }, gpu_Ls[] = { 1, 65, 1000 };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            for (int mode = 0; mode < 4; mode++) {
                bwcase c = e->base;
                c.dtype = dts[i];
                c.L = cpu_Ls[j];
                c.causal = mode < 2;
                c.Lk = c.causal ? c.L : 90;
                c.decay = mode == 1, c.mask = mode >= 1, c.normalize = mode != 3;
                set_state(&c, mode & 1, mode & 1, 1);
                check_case(e, &c);
            }
            for (int mode = 0; mode < 3; mode++) {
                bwcase c = e->base;
                c.dtype = dts[i];
                c.L = c.Lk = gpu_Ls[j];
                c.causal = mode != 2;
                c.decay = mode == 1, c.mask = mode == 2;
                set_state(&c, mode == 1, mode == 1, mode == 1);
                c.Dk = c.Dv = mode == 1 ? 128 : 64;
                check_case(e, &c);
            }
        }
}

/* Inputs (and dout) and gradients each in every layout: sequence-first,
 * head-major, and a stride of 2 on the last dimension whose gaps must stay
 * untouched; B = 3, 97 tokens (50 keys bidirectional), a mask when causal,
 * bf16 gradients in the gapped layout, else f32 (the CPU suite's). */
static void grid_layouts(const bw_env *e)
{
    for (int lay = 0; lay < BW_NLAYOUTS; lay++)
        for (int glay = 0; glay < BW_NLAYOUTS; glay++) {
            bwcase c = e->base;
            c.lay = lay, c.glay = glay;
            c.B = 3, c.L = 97;
            c.causal = (lay + glay) % 2;
            c.mask = c.causal;
            c.Lk = c.causal ? c.L : 50;
            c.dtype = glay == BW_GAPPED ? LM_BF16 : LM_F32;
            set_state(&c, 0, 0, 1);
            check_case(e, &c);
        }
}

/* Long sequences: several checkpoint blocks of the CPU (Dk = Dv = 16, G = 2
 * and 47 chunks: 7 chunks a block; Dk = Dv = 4: one chunk a block), decay,
 * compensated accumulation off and on (the CPU suite's); one kv head of
 * 128, 3000 tokens (3037 sequence-first): many segments of the GPU, their
 * scans forwards and backwards, a ragged last segment, compensated or auto
 * precision (the GPU suite's). All with a mask and the whole state. */
static void grid_long(const bw_env *e)
{
    static const lm_precision precs[] = { LM_PRECISION_OFF, LM_PRECISION_ON };
    for (int i = 0; i < 2; i++)
        for (int decay = 0; decay < 2; decay++) {
            bwcase c = e->base;
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 16;
            c.L = c.Lk = 3000;
            c.decay = decay, c.mask = 1, c.precision = precs[i];
            set_state(&c, 1, 1, 1);
            check_case(e, &c);
        }
    bwcase c = e->base;
    c.B = 2, c.Hq = 4, c.Hkv = 1, c.Dk = c.Dv = 4;
    c.L = c.Lk = 700;
    c.decay = c.mask = 1;
    set_state(&c, 1, 1, 1);
    check_case(e, &c);
    for (int sf = 0; sf < 2; sf++)
        for (int causal = 1; causal >= 0; causal--) {
            c = e->base;
            c.lay = c.glay = sf ? BW_LBHD : BW_BLHD;
            c.causal = causal;
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 128;
            c.L = c.Lk = 3000 + 37 * sf;
            c.mask = 1, c.decay = causal;
            set_state(&c, 1, 1, 1);
            c.precision = sf ? LM_PRECISION_ON : LM_PRECISION_AUTO;
            check_case(e, &c);
        }
}

/* The cases of the GPU's tensor-core backward (bf16, causal, Hq == Hkv, no
 * mask, no decay): ragged lengths to 4097 in four modes (elu+1, relu
 * normalised; identity, relu unnormalised sequence-first), the state at
 * every other one; head dims 64 to 256 and 96 / 40 at 777 tokens; one head
 * of 3000 tokens (segments) (the GPU suite's). */
static void grid_tensor_cores(const bw_env *e)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 1000, 4097 };
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 96, 40 }, { 256, 64 } };
    static const int fms[] = { LM_FEATURE_ELU1, LM_FEATURE_RELU, LM_FEATURE_IDENTITY, LM_FEATURE_RELU };
    for (int i = 0; i < 6; i++)
        for (int mode = 0; mode < 4; mode++) {
            bwcase c = e->base;
            c.dtype = LM_BF16;
            c.B = 2, c.Hq = c.Hkv = Ls[i] > 1000 ? 1 : 2;
            c.Dk = c.Dv = Ls[i] > 4000 ? 32 : 64; /* keeps the float64 reference cheap */
            c.L = c.Lk = Ls[i];
            c.normalize = mode < 2, c.fm = fms[mode];
            set_state(&c, (i + mode) % 2, (i + mode) % 2, (i + mode) % 2);
            c.lay = c.glay = mode == 3 ? BW_LBHD : BW_BLHD;
            check_case(e, &c);
        }
    for (int i = 0; i < 5; i++) {
        bwcase c = e->base;
        c.dtype = LM_BF16;
        c.B = 1, c.Hq = c.Hkv = i < 4 ? 3 : 1;
        c.Dk = i < 4 ? dims[i][0] : 64, c.Dv = i < 4 ? dims[i][1] : 64;
        c.L = c.Lk = i < 4 ? 777 : 3000;
        set_state(&c, 1, 1, 1);
        check_case(e, &c);
    }
}

/* The backward of [cut, L) from the forward's state at cut gives dS_in, the
 * dS_out of the backward of [0, cut): together the gradients of the whole.
 * Checked against float64 within e's chained bound (no reference: not run). */
static void check_chain(const bw_env *e, const bwcase *c, const int64_t *cuts, int ncuts)
{
    if (!e->has_ref(c)) {
        left_out++;
        return;
    }
    const test_dev *dev = e->dev;
    bwprob p;
    bwprob_init(&p, dev, c);
    bwprob_reference(&p);
    bwrun r;
    bwrun_new(&r, &p, dev);
    const int64_t nS = p.n[BW_DS], nz = p.n[BW_DZ], nout = c->B * c->L * c->Hq * c->Dv;
    int64_t so[4];
    ref_strides4(so, c->B, c->L, c->Hq, c->Dv, 0);
    float *S = dev->alloc((size_t)nS * 4), *z = dev->alloc((size_t)nz * 4);
    float *dSm = dev->alloc((size_t)nS * 4), *dzm = dev->alloc((size_t)nz * 4);
    void *out = dev->alloc((size_t)nout * lm_dtype_size(c->dtype));
    float *S0 = calloc((size_t)(nS + nz), sizeof(float));
    ck_assert_ptr_nonnull(S0);
    if (p.S0) {
        memcpy(S0, p.S0, (size_t)nS * 4);
        memcpy(S0 + nS, p.z0, (size_t)nz * 4);
    }
    for (int i = 0; i < ncuts; i++) {
        const int64_t cut = cuts[i];
        bwrun_poison(&r, &p);
        /* the state at cut: the forward of [0, cut) from the initial state */
        dev->upload(S, S0, (size_t)nS * 4);
        dev->upload(z, S0 + nS, (size_t)nz * 4);
        bwcall k;
        bwcall_init(&k, &p, &r, 0, cut);
        lm_tensor o = ref_tokens(ref_tensor4(out, c->dtype, dev->device, so, c->B, c->L, c->Hq, c->Dv), 0, cut);
        k.a.out = &o, k.a.state = S, k.a.normalizer = z;
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        /* the backward of [cut, L), then of [0, cut) with its dS_in */
        bwcall_init(&k, &p, &r, cut, c->L - cut);
        k.a.state = S, k.a.normalizer = z;
        k.g.dstate_in = dSm, k.g.dnormalizer_in = dzm;
        ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
        bwcall_init(&k, &p, &r, 0, cut);
        k.g.dstate_out = dSm, k.g.dnormalizer_out = dzm;
        ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
        bwgrads got;
        bwgrads_read(&got, &p, &r);
        char what[64];
        snprintf(what, sizeof what, "split at %lld", (long long)cut);
        bw_check(e, &p, &got, 1, what);
        bwgrads_free(&got);
    }
    free(S0);
    dev->release(S), dev->release(z), dev->release(dSm), dev->release(dzm), dev->release(out);
    bwrun_free(&r);
    bwprob_free(&p);
}

/* 200 tokens split at 1, 64, 100, 150, 199: f32; bf16 with decay, a mask
 * and the state; f32 unnormalised (the CPU suite's); 1000 tokens, f32, a
 * mask and the state, split at 64, 100, 777 without and with decay (the GPU
 * suite's). */
static void grid_chaining(const bw_env *e)
{
    static const int64_t splits[] = { 1, 64, 100, 150, 199 }, cuts[] = { 64, 100, 777 };
    for (int mode = 0; mode < 3; mode++) {
        bwcase c = e->base;
        c.L = c.Lk = 200;
        c.B = 2, c.Hq = 4, c.Hkv = 2;
        c.decay = c.mask = mode >= 1;
        c.normalize = mode != 2;
        set_state(&c, mode >= 1, mode >= 1, 1);
        c.dtype = mode == 1 ? LM_BF16 : LM_F32;
        check_chain(e, &c, splits, 5);
    }
    for (int i = 0; i < 3; i++) {
        bwcase c = e->base;
        c.dtype = LM_F32, c.L = c.Lk = 1000, c.decay = i % 2, c.mask = 1;
        set_state(&c, 1, 1, 1);
        check_chain(e, &c, &cuts[i], 1);
    }
}

/* A masked key is ignored even when it holds NaN: its dk, dv are 0 and no
 * other gradient sees it; both directions, 90 tokens (the CPU suite's). */
static void grid_masked_nan(const bw_env *e)
{
    for (int causal = 0; causal < 2; causal++) {
        bwcase c = e->base;
        c.causal = causal, c.mask = 1, c.L = c.Lk = 90;
        set_state(&c, 0, 0, 1);
        bwprob p;
        bwprob_init(&p, e->dev, &c);
        const int64_t t = 40; /* batch 1, kv head 0 */
        p.mask[1 * p.c.Lk + t] = 1;
        bwprob_reference(&p);
        tbuf_set(&p.k, at(p.sk, 1, t, 0, 0), NAN);
        tbuf_set(&p.v, at(p.sv, 1, t, 0, 1), NAN);
        bwprob_reupload(&p);
        run_checked(e, &p, 1, "masked NaN");
        bwprob_free(&p);
    }
}

/* Everything on: B = 1, both directions (45 keys), decay when causal, a
 * mask, the whole state, compensated, 70 tokens; and the tensor-core
 * backward's kernels, Hq = Hkv = 2 (the GPU suite's reduced grid, for
 * compute-sanitizer). */
static void grid_everything(const bw_env *e)
{
    for (int causal = 1; causal >= 0; causal--) {
        bwcase c = e->base;
        c.B = 1, c.causal = causal, c.decay = causal, c.mask = 1;
        set_state(&c, 1, 1, 1);
        c.L = 70, c.Lk = causal ? 70 : 45;
        c.precision = LM_PRECISION_ON;
        check_case(e, &c);
    }
    bwcase c = e->base;
    c.dtype = LM_BF16;
    c.B = 1, c.Hq = c.Hkv = 2, c.L = c.Lk = 70;
    set_state(&c, 1, 1, 1);
    check_case(e, &c);
}

const bw_grid bw_grids[] = {
    { "lengths", grid_lengths, 0 },   { "modes", grid_modes, 0 },
    { "heads", grid_heads, 0 },       { "head dims", grid_head_dims, 0 },
    { "dtypes", grid_dtypes, 0 },     { "layouts", grid_layouts, 0 },
    { "long", grid_long, 0 },         { "tensor cores", grid_tensor_cores, 0 },
    { "chaining", grid_chaining, 0 }, { "masked NaN", grid_masked_nan, 0 },
    { "everything on", grid_everything, 1 },
};
const int bw_ngrids = (int)(sizeof bw_grids / sizeof bw_grids[0]);

void bw_grid_run(int i, const bw_env *e, uint64_t seed)
{
    ck_assert(i >= 0 && i < bw_ngrids);
    ref_seed(seed + (uint64_t)i);
    grid_name = bw_grids[i].name;
    left_out = 0;
    bw_grids[i].run(e);
    if (left_out)
        printf("backward %s: %d cases left out on device %d (no float64 reference within its budget, no "
               "other check)\n", grid_name, left_out, (int)e->dev->device);
    grid_name = "";
}
