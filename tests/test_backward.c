/*
 * test_backward.c - the core backward (lm_linear_attn_backward) on the CPU
 * against float64 gradients: every mode, ragged lengths, GQA, head dims,
 * dtypes, layouts, multi-block checkpointing, compensated precision, state
 * gradients chained across a split, and bad arguments.
 *
 * The reference is ref_backward (ref_backward.c, shared with the GPU suite):
 * the quadratic form
 *   o_t = (g^(c_t) phi(q_t)S_0 + sum_{s<=t} g^(c_t-c_s) (phi q_t . phi k_s) v_s) / den_t
 * with c_t the unmasked keys among 0..t (t + 1 without a mask: a masked key
 * is no step of the recurrence, so it does not decay the state either)
 * differentiated by hand in float64, O(L^2), with no chunks. It is itself
 * checked against central differences of a float64 forward that runs the
 * recurrence of docs/DESIGN.md §2 directly (test_reference_fd).
 *
 * Inputs are multiples of 1/64 (q, k) or 1/128 (v, dout) small enough to be
 * exact in bf16, f16 and f32, so all dtypes see the same problem and the
 * error is the library's: fp32 arithmetic, then the rounding of the gradient
 * to its dtype.
 *
 * Error measure, per gradient tensor: ||got - want|| / ||mag||, where mag is
 * the reference run on absolute values (every factor |x|, every sum of
 * terms a sum of their magnitudes), the usual scale of rounding error in
 * sums. Plain ||got - want|| / ||want|| is meaningless where terms cancel:
 * with one key and no state, dq is ~eps/d^2 (o = a v / (a + eps) barely
 * depends on q), and fp32 leaves only noise of the size of its terms.
 * Since |want| <= mag, rounding the gradient to a dtype of unit roundoff u
 * adds at most u. Bounds:
 *   F32   BOUND_F32 = 2e-6 (fp32 sums; largest seen 1.2e-7)
 *   BF16  2^-8 + BOUND_F32  (2^-8: bf16's unit roundoff)
 *   F16   2^-11 + BOUND_F32
 * and BOUND_F32 for the fp32 state gradients.
 */
#include "ref.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOUND_F32 2e-6

static double bound(lm_dtype dt)
{
    return dt == LM_BF16 ? ldexp(1.0, -8) + BOUND_F32
         : dt == LM_F16  ? ldexp(1.0, -11) + BOUND_F32
                         : BOUND_F32;
}

/* Largest errors seen in this test, printed at its end. */
static double max_err[3];

static void note(lm_dtype dt, double e)
{
    if (e > max_err[dt])
        max_err[dt] = e;
}

static void print_max(const char *test)
{
    printf("backward %s: largest rel. error bf16 %.2e f16 %.2e f32 %.2e\n", test,
           max_err[LM_BF16], max_err[LM_F16], max_err[LM_F32]);
    memset(max_err, 0, sizeof max_err);
}

/* ---- random numbers and typed elements ---- */

static uint64_t rng_state;

static void seed(uint64_t s)
{
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * ldexp(1.0, -53);
}

/* Uniform in [lo, hi) rounded to a multiple of 1/q. */
static double quantised(double lo, double hi, double q)
{
    return nearbyint((lo + (hi - lo) * uniform()) * q) / q;
}

static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double s = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 31)
        return m ? NAN : s * INFINITY;
    return e ? s * ldexp(1024 + m, e - 25) : s * ldexp(m, -24);
}

/* x exactly as f16 (x must be representable, or NaN). */
static uint16_t f16_exact(double x)
{
    if (isnan(x))
        return 0x7e00;
    uint16_t sign = x < 0 ? 0x8000 : 0, h = 0;
    double a = fabs(x);
    if (a != 0.0) {
        int e;
        double m = frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
        h = (uint16_t)(((e + 14) << 10) | (uint16_t)(ldexp(m, 11) - 1024));
    }
    ck_assert_msg(f16_value((uint16_t)(sign | h)) == x, "%g is not exact in f16", x);
    return (uint16_t)(sign | h);
}

static void put(void *data, lm_dtype dt, int64_t i, double x)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    if (dt == LM_F32) {
        ((float *)data)[i] = f;
    } else if (dt == LM_BF16) {
        ck_assert_msg(isnan(x) || (u & 0xffff) == 0, "%g is not exact in bf16", x);
        ((uint16_t *)data)[i] = isnan(x) ? 0x7fc0 : (uint16_t)(u >> 16);
    } else {
        ((uint16_t *)data)[i] = f16_exact(x);
    }
}

static double get(const void *data, lm_dtype dt, int64_t i)
{
    if (dt == LM_F32)
        return ((const float *)data)[i];
    uint16_t h = ((const uint16_t *)data)[i];
    if (dt == LM_F16)
        return f16_value(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- layouts of a logical [B, L, H, D] tensor ---- */

enum { LAY_BLHD, LAY_LBHD, LAY_BHLD, LAY_GAPPED, NLAYOUTS };

/* Strides of the layout; returns the elements its buffer needs. */
static int64_t layout(int64_t *s, int lay, int64_t B, int64_t L, int64_t H, int64_t D)
{
    const int64_t n = B * L * H * D;
    switch (lay) {
    case LAY_LBHD: s[3] = 1, s[2] = D, s[0] = H * D, s[1] = B * H * D; return n;
    case LAY_BHLD: s[3] = 1, s[1] = D, s[2] = L * D, s[0] = H * L * D; return n;
    case LAY_GAPPED: s[3] = 2, s[2] = 2 * D, s[1] = 2 * H * D, s[0] = 2 * L * H * D; return 2 * n;
    default: s[3] = 1, s[2] = D, s[1] = H * D, s[0] = L * H * D; return n;
    }
}

/* A typed tensor in some layout with its logical shape. */
typedef struct tens {
    lm_dtype dt;
    int64_t shape[4], s[4], n;
    void *data;
} tens;

static tens tens_new(lm_dtype dt, int lay, int64_t B, int64_t L, int64_t H, int64_t D)
{
    tens t = { .dt = dt, .shape = { B, L, H, D } };
    t.n = layout(t.s, lay, B, L, H, D);
    t.data = malloc((size_t)t.n * 4);
    for (int64_t i = 0; i < t.n; i++)
        put(t.data, dt, i, NAN);
    return t;
}

static int64_t offset(const tens *t, int64_t b, int64_t l, int64_t h, int64_t d)
{
    return b * t->s[0] + l * t->s[1] + h * t->s[2] + d * t->s[3];
}

/* Writes the logical contiguous array x into t. */
static void tens_fill(tens *t, const double *x)
{
    int64_t i = 0;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t l = 0; l < t->shape[1]; l++)
            for (int64_t h = 0; h < t->shape[2]; h++)
                for (int64_t d = 0; d < t->shape[3]; d++)
                    put(t->data, t->dt, offset(t, b, l, h, d), x[i++]);
}

static void tens_poison(tens *t)
{
    for (int64_t i = 0; i < t->n; i++)
        put(t->data, t->dt, i, NAN);
}

/* Descriptor of tokens [t0, t0 + n) of t. */
static lm_tensor tens_view(const tens *t, int64_t t0, int64_t n)
{
    lm_tensor v = { .data = (char *)t->data + t0 * t->s[1] * (int64_t)lm_dtype_size(t->dt),
                    .dtype = t->dt, .device = LM_CPU, .ndim = 4,
                    .shape = { t->shape[0], n, t->shape[2], t->shape[3] } };
    memcpy(v.stride, t->s, sizeof v.stride);
    return v;
}

/* ||got - want|| / ||mag|| over the logical elements; counts the NaNs left
 * where want is finite, and (gapped layout) checks the gaps stay poisoned. */
static double tens_error(const tens *t, const double *want, const double *mag,
                         int64_t *unwritten)
{
    double num = 0, den = 0;
    int64_t i = 0;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t l = 0; l < t->shape[1]; l++)
            for (int64_t h = 0; h < t->shape[2]; h++)
                for (int64_t d = 0; d < t->shape[3]; d++, i++) {
                    int64_t o = offset(t, b, l, h, d);
                    double g = get(t->data, t->dt, o);
                    if (isnan(g) && isfinite(want[i]))
                        (*unwritten)++;
                    else
                        num += (g - want[i]) * (g - want[i]);
                    den += mag[i] * mag[i];
                    if (t->s[3] == 2)
                        ck_assert_msg(isnan(get(t->data, t->dt, o + 1)), "a gap was written");
                }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double f32_error(const float *got, const double *want, const double *mag, int64_t n,
                        int64_t *unwritten)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) && isfinite(want[i]))
            (*unwritten)++;
        else
            num += (got[i] - want[i]) * (got[i] - want[i]);
        den += mag[i] * mag[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- one problem ---- */

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv;
    int causal, fm, normalize, decay, mask;
    int state_in;   /* an initial state */
    int dstate_out; /* a gradient of the final state */
    int dstate_in;  /* ask for the initial state's gradient */
    int lay, glay;  /* layouts of the inputs (and dout), of dq, dk, dv */
    lm_precision precision;
} bcase;

static bcase base(void)
{
    bcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .Hq = 4, .Hkv = 2, .Dk = 16,
                .Dv = 24, .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1, .dstate_in = 1 };
    return c;
}

static void describe(char *buf, size_t n, const bcase *c)
{
    snprintf(buf, n,
             "dtype %d B %lld L %lld Lk %lld H %lld/%lld D %lld/%lld causal %d fm %d norm %d "
             "decay %d mask %d state %d/%d/%d layout %d/%d precision %d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->Hq,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal, c->fm,
             c->normalize, c->decay, c->mask, c->state_in, c->dstate_out, c->dstate_in, c->lay,
             c->glay, (int)c->precision);
}

typedef struct prob {
    bcase c;
    int64_t G, nS, nz;
    double *q, *k, *v, *dout;        /* logical [B, L|Lk, H, D] */
    uint8_t *mask;                   /* [B, Lk] */
    float decay[16];
    float *S0, *z0, *dSo, *dzo;      /* fp32 as the library takes them, or NULL */
    double *S0d, *z0d, *dSod, *dzod; /* the same in float64 (zeros when absent) */
    tens tq, tk, tv, tdo, dq, dk, dv, out;
    float *dSi, *dzi;
    double *wq, *wk, *wv, *wS, *wz; /* reference gradients */
    double *mq, *mk, *mv, *mS, *mz; /* their magnitudes (the error scale) */
} prob;

static double *randoms(int64_t n, double lo, double hi, double q)
{
    double *x = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        x[i] = quantised(lo, hi, q);
    return x;
}

static double eps_of(void)
{
    return (double)1e-6f;
}

static double scale_of(const bcase *c)
{
    return (double)(1.0f / sqrtf((float)c->Dk));
}

static double gamma_of(const prob *p, int64_t hk)
{
    return p->c.decay ? (double)p->decay[hk] : 1.0;
}

/* The reference gradients (ref_backward) into p->w*, or with `mag` their
 * magnitudes into p->m* (the normaliser is a sum of non-negative terms in the
 * normalised tests). */
static void reference(prob *p, int mag)
{
    const bcase *c = &p->c;
    ref_problem r = { .B = c->B, .L = c->L, .Lk = c->Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk,
                      .Dv = c->Dv, .q.p = p->q, .k.p = p->k, .v.p = p->v, .mask = p->mask,
                      .state = p->S0d, .normalizer = p->z0d, .decay = c->decay ? p->decay : NULL,
                      .causal = c->causal, .feature_map = c->fm, .normalize = c->normalize,
                      .eps = eps_of(), .scale = scale_of(c) };
    ref_grads g = { .dout.p = p->dout, .dstate_out = p->dSod, .dnormalizer_out = p->dzod,
                    .dq = mag ? p->mq : p->wq, .dk = mag ? p->mk : p->wk, .dv = mag ? p->mv : p->wv,
                    .dstate_in = mag ? p->mS : p->wS, .dnormalizer_in = mag ? p->mz : p->wz };
    ref_strides4(r.q.s, c->B, c->L, c->Hq, c->Dk, 0); /* the logical arrays, contiguous */
    ref_strides4(r.k.s, c->B, c->Lk, c->Hkv, c->Dk, 0);
    ref_strides4(r.v.s, c->B, c->Lk, c->Hkv, c->Dv, 0);
    ref_strides4(g.dout.s, c->B, c->L, c->Hq, c->Dv, 0);
    ref_backward(&r, &g, mag);
}

static void prob_init(prob *p, const bcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    if (c->causal)
        p->c.Lk = c->L;
    const int64_t B = c->B, L = c->L, Lk = p->c.Lk, Hq = c->Hq, Hkv = c->Hkv, Dk = c->Dk,
                  Dv = c->Dv;
    p->G = Hq / Hkv;
    p->nS = B * Hkv * Dk * Dv, p->nz = B * Hkv * Dk;
    /* relu and identity: inputs that keep the normaliser away from zero */
    double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : c->fm == LM_FEATURE_RELU ? -0.5
              : c->normalize ? 0.0 : -1.0;
    double hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = randoms(B * L * Hq * Dk, lo, hi, 64);
    p->k = randoms(B * Lk * Hkv * Dk, lo, hi, 64);
    p->v = randoms(B * Lk * Hkv * Dv, -1, 1, 128);
    p->dout = randoms(B * L * Hq * Dv, -1, 1, 128);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = uniform() < 0.25;
    }
    for (int64_t h = 0; h < Hkv && h < 16; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -2 - (int)(h % 6)));
    p->S0d = calloc((size_t)p->nS, sizeof(double));
    p->z0d = calloc((size_t)p->nz, sizeof(double));
    p->dSod = calloc((size_t)p->nS, sizeof(double));
    p->dzod = calloc((size_t)p->nz, sizeof(double));
    if (c->state_in) {
        p->S0 = malloc((size_t)p->nS * sizeof(float));
        p->z0 = malloc((size_t)p->nz * sizeof(float));
        for (int64_t i = 0; i < p->nS; i++)
            p->S0d[i] = p->S0[i] = (float)(2 * uniform() - 1);
        for (int64_t i = 0; i < p->nz; i++)
            p->z0d[i] = p->z0[i] = (float)(1 + 4 * uniform());
    }
    if (c->dstate_out) {
        p->dSo = malloc((size_t)p->nS * sizeof(float));
        p->dzo = malloc((size_t)p->nz * sizeof(float));
        for (int64_t i = 0; i < p->nS; i++)
            p->dSod[i] = p->dSo[i] = (float)(0.1 * (2 * uniform() - 1));
        for (int64_t i = 0; i < p->nz; i++)
            p->dzod[i] = p->dzo[i] = (float)(0.1 * (2 * uniform() - 1));
    }
    p->tq = tens_new(c->dtype, c->lay, B, L, Hq, Dk);
    p->tk = tens_new(c->dtype, c->lay, B, Lk, Hkv, Dk);
    p->tv = tens_new(c->dtype, c->lay, B, Lk, Hkv, Dv);
    p->tdo = tens_new(c->dtype, c->lay, B, L, Hq, Dv);
    p->out = tens_new(c->dtype, LAY_BLHD, B, L, Hq, Dv);
    tens_fill(&p->tq, p->q);
    tens_fill(&p->tk, p->k);
    tens_fill(&p->tv, p->v);
    tens_fill(&p->tdo, p->dout);
    p->dq = tens_new(c->dtype, c->glay, B, L, Hq, Dk);
    p->dk = tens_new(c->dtype, c->glay, B, Lk, Hkv, Dk);
    p->dv = tens_new(c->dtype, c->glay, B, Lk, Hkv, Dv);
    p->dSi = malloc((size_t)p->nS * sizeof(float));
    p->dzi = malloc((size_t)p->nz * sizeof(float));
    p->wq = malloc((size_t)(B * L * Hq * Dk) * sizeof(double));
    p->wk = malloc((size_t)(B * Lk * Hkv * Dk) * sizeof(double));
    p->wv = malloc((size_t)(B * Lk * Hkv * Dv) * sizeof(double));
    p->wS = malloc((size_t)p->nS * sizeof(double));
    p->wz = malloc((size_t)p->nz * sizeof(double));
    p->mq = malloc((size_t)(B * L * Hq * Dk) * sizeof(double));
    p->mk = malloc((size_t)(B * Lk * Hkv * Dk) * sizeof(double));
    p->mv = malloc((size_t)(B * Lk * Hkv * Dv) * sizeof(double));
    p->mS = malloc((size_t)p->nS * sizeof(double));
    p->mz = malloc((size_t)p->nz * sizeof(double));
    reference(p, 0);
    reference(p, 1);
}

static void prob_free(prob *p)
{
    void *ptrs[] = { p->q, p->k, p->v, p->dout, p->mask, p->S0, p->z0, p->dSo, p->dzo,
                     p->S0d, p->z0d, p->dSod, p->dzod, p->tq.data, p->tk.data, p->tv.data,
                     p->tdo.data, p->out.data, p->dq.data, p->dk.data, p->dv.data, p->dSi,
                     p->dzi, p->wq, p->wk, p->wv, p->wS, p->wz, p->mq, p->mk, p->mv,
                     p->mS, p->mz };
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        free(ptrs[i]);
}

static void poison(prob *p)
{
    tens_poison(&p->dq);
    tens_poison(&p->dk);
    tens_poison(&p->dv);
    for (int64_t i = 0; i < p->nS; i++)
        p->dSi[i] = NAN;
    for (int64_t i = 0; i < p->nz; i++)
        p->dzi[i] = NAN;
}

/* Arguments of a call over query tokens [t0, t0 + n) (causal: keys too). */
typedef struct call {
    lm_tensor q, k, v, out, dout, dq, dk, dv, mask;
    lm_core_args a;
    lm_core_grads g;
} call;

static void call_init(call *k, prob *p, int64_t t0, int64_t n)
{
    const bcase *c = &p->c;
    const int64_t k0 = c->causal ? t0 : 0, nk = c->causal ? n : p->c.Lk;
    k->q = tens_view(&p->tq, t0, n);
    k->k = tens_view(&p->tk, k0, nk);
    k->v = tens_view(&p->tv, k0, nk);
    k->out = tens_view(&p->out, t0, n);
    k->dout = tens_view(&p->tdo, t0, n);
    k->dq = tens_view(&p->dq, t0, n);
    k->dk = tens_view(&p->dk, k0, nk);
    k->dv = tens_view(&p->dv, k0, nk);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d(p->mask + k0, LM_BOOL, LM_CPU, c->B, nk);
        k->mask.stride[0] = p->c.Lk;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = p->S0, k->a.normalizer = p->z0;
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
    memset(&k->g, 0, sizeof k->g);
    k->g.struct_size = sizeof k->g;
    k->g.dout = &k->dout, k->g.dq = &k->dq, k->g.dk = &k->dk, k->g.dv = &k->dv;
    k->g.dstate_out = p->dSo, k->g.dnormalizer_out = p->dzo;
    if (c->dstate_in)
        k->g.dstate_in = p->dSi, k->g.dnormalizer_in = p->dzi;
}

/* Checks every gradient of p against the reference; returns the largest error. */
static double check_grads(prob *p, const char *what)
{
    const bcase *c = &p->c;
    char desc[256];
    describe(desc, sizeof desc, c);
    const char *names[] = { "dq", "dk", "dv", "dstate_in", "dnormalizer_in" };
    int64_t unwritten[5] = { 0 };
    double e[5] = { 0 };
    e[0] = tens_error(&p->dq, p->wq, p->mq, &unwritten[0]);
    e[1] = tens_error(&p->dk, p->wk, p->mk, &unwritten[1]);
    e[2] = tens_error(&p->dv, p->wv, p->mv, &unwritten[2]);
    if (c->dstate_in) {
        e[3] = f32_error(p->dSi, p->wS, p->mS, p->nS, &unwritten[3]);
        e[4] = f32_error(p->dzi, p->wz, p->mz, p->nz, &unwritten[4]);
    }
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        const double bnd = i < 3 ? bound(c->dtype) : BOUND_F32;
        ck_assert_msg(unwritten[i] == 0, "%s %s: %lld elements not written (%s)", what, names[i],
                      (long long)unwritten[i], desc);
        ck_assert_msg(e[i] <= bnd, "%s %s: rel. error %.3g > %.3g (%s)", what, names[i], e[i],
                      bnd, desc);
        note(i < 3 ? c->dtype : LM_F32, e[i]);
        worst = e[i] > worst ? e[i] : worst;
    }
    return worst;
}

/* One backward over the whole sequence, checked. */
static void check_case(const bcase *c)
{
    prob p;
    prob_init(&p, c);
    call k;
    call_init(&k, &p, 0, c->L);
    poison(&p);
    ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "backward: %s",
                  lm_last_error());
    check_grads(&p, "backward");
    prob_free(&p);
}

/* ---- the reference against finite differences ---- */

/* f = sum dout . o + <dS_out, S_final> + <dz_out, z_final>, by the recurrence. */
static double direct_loss(const prob *p)
{
    const bcase *c = &p->c;
    const int64_t L = c->L, Lk = c->Lk, Hq = c->Hq, Hkv = c->Hkv, Dk = c->Dk, Dv = c->Dv;
    double f = 0, S[64], z[8];
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const double g = gamma_of(p, hk);
            const int64_t bh = b * Hkv + hk;
            memcpy(S, p->S0d + bh * Dk * Dv, (size_t)(Dk * Dv) * sizeof(double));
            memcpy(z, p->z0d + bh * Dk, (size_t)Dk * sizeof(double));
            /* absorbs key s into S, z; a masked key leaves them as they were */
#define ABSORB(s)                                                                          \
    do {                                                                                   \
        const int m_ = p->mask && p->mask[b * Lk + (s)];                                   \
        for (int64_t d = 0; d < Dk && !m_; d++) {                                          \
            double kd = ref_phi(p->k[((b * Lk + (s)) * Hkv + hk) * Dk + d], c->fm);        \
            z[d] = g * z[d] + kd;                                                          \
            for (int64_t e = 0; e < Dv; e++)                                               \
                S[d * Dv + e] = g * S[d * Dv + e] + kd * p->v[((b * Lk + (s)) * Hkv + hk) * Dv + e]; \
        }                                                                                  \
    } while (0)
            if (!c->causal)
                for (int64_t s = 0; s < Lk; s++)
                    ABSORB(s);
            for (int64_t t = 0; t < L; t++) {
                if (c->causal)
                    ABSORB(t);
                for (int64_t h = hk * p->G; h < (hk + 1) * p->G; h++) {
                    const double *qr = p->q + ((b * L + t) * Hq + h) * Dk;
                    double den = eps_of();
                    for (int64_t d = 0; d < Dk; d++)
                        den += ref_phi(qr[d], c->fm) * z[d];
                    for (int64_t e = 0; e < Dv; e++) {
                        double n = 0;
                        for (int64_t d = 0; d < Dk; d++)
                            n += ref_phi(qr[d], c->fm) * S[d * Dv + e];
                        double o = c->normalize ? n / den : scale_of(c) * n;
                        f += p->dout[((b * L + t) * Hq + h) * Dv + e] * o;
                    }
                }
            }
#undef ABSORB
            for (int64_t i = 0; i < Dk * Dv; i++)
                f += p->dSod[bh * Dk * Dv + i] * S[i];
            for (int64_t d = 0; d < Dk; d++)
                f += p->dzod[bh * Dk + d] * z[d];
        }
    return f;
}

/* Central differences of direct_loss over every element of x against want. */
static void fd_check(prob *p, double *x, int64_t n, const double *want, const char *what)
{
    char desc[256];
    describe(desc, sizeof desc, &p->c);
    for (int64_t i = 0; i < n; i++) {
        const double x0 = x[i], h = 1e-6;
        x[i] = x0 + h;
        double fp = direct_loss(p);
        x[i] = x0 - h;
        double fm = direct_loss(p);
        x[i] = x0;
        double fd = (fp - fm) / (2 * h);
        ck_assert_msg(fabs(fd - want[i]) <= 1e-6 * (1 + fabs(want[i])),
                      "%s[%lld]: reference %.9g, finite differences %.9g (%s)", what,
                      (long long)i, want[i], fd, desc);
    }
}

START_TEST(test_reference_fd)
{
    seed(1);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++) {
                    bcase c = base();
                    c.B = 2, c.L = 5, c.Lk = causal ? 5 : 3, c.Hq = 2, c.Hkv = 1, c.Dk = 3,
                    c.Dv = 2;
                    c.causal = causal, c.normalize = norm, c.fm = fm, c.decay = decay;
                    c.mask = 1, c.state_in = 1, c.dstate_out = 1;
                    prob p;
                    prob_init(&p, &c);
                    /* keep inputs off relu's kink */
                    for (int64_t i = 0; i < c.B * c.L * c.Hq * c.Dk; i++)
                        p.q[i] += fabs(p.q[i]) < 0.05 ? 0.1 : 0;
                    for (int64_t i = 0; i < c.B * p.c.Lk * c.Hkv * c.Dk; i++)
                        p.k[i] += fabs(p.k[i]) < 0.05 ? 0.1 : 0;
                    p.mask[1] = 1, p.mask[2] = 0;
                    reference(&p, 0);
                    const int64_t Lk = p.c.Lk;
                    fd_check(&p, p.q, c.B * c.L * c.Hq * c.Dk, p.wq, "dq");
                    fd_check(&p, p.k, c.B * Lk * c.Hkv * c.Dk, p.wk, "dk");
                    fd_check(&p, p.v, c.B * Lk * c.Hkv * c.Dv, p.wv, "dv");
                    fd_check(&p, p.S0d, p.nS, p.wS, "dstate_in");
                    fd_check(&p, p.z0d, p.nz, p.wz, "dnormalizer_in");
                    prob_free(&p);
                }
}
END_TEST

/* ---- the library against the reference ---- */

START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 2, 63, 64, 65, 127, 300 };
    seed(2);
    for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++)
        for (int64_t B = 1; B <= 3; B += 2)
            for (int causal = 0; causal < 2; causal++) {
                bcase c = base();
                c.L = c.Lk = Ls[i];
                c.B = B;
                c.causal = causal;
                c.decay = causal;
                check_case(&c);
            }
    print_max("lengths");
}
END_TEST

/* Every combination of the modes of §2. Identity is normalised only with
 * non-negative inputs (prob_init), where its normaliser keeps a sign. */
START_TEST(test_modes)
{
    seed(3);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int st = 0; st < 4; st++) {
                            bcase c = base();
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask;
                            c.state_in = st & 1, c.dstate_out = st >> 1;
                            c.dstate_in = st != 2;
                            c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_case(&c);
                        }
    print_max("modes");
}
END_TEST

START_TEST(test_gqa)
{
    static const int64_t heads[][2] = { { 4, 4 }, { 4, 2 }, { 4, 1 }, { 1, 1 }, { 8, 1 } };
    seed(4);
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            bcase c = base();
            c.Hq = heads[i][0], c.Hkv = heads[i][1];
            c.B = 3, c.L = 130, c.Lk = causal ? 130 : 70;
            c.causal = causal, c.decay = causal, c.mask = 1;
            c.state_in = c.dstate_out = 1;
            check_case(&c);
        }
    print_max("gqa");
}
END_TEST

START_TEST(test_head_dims)
{
    static const int64_t dims[][2] = { { 32, 32 }, { 64, 64 }, { 64, 16 }, { 16, 64 },
                                       { 3, 5 },   { 1, 1 },   { 128, 48 } };
    seed(5);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (int norm = 0; norm < 2; norm++) {
            bcase c = base();
            c.Dk = dims[i][0], c.Dv = dims[i][1];
            c.L = c.Lk = 140;
            c.normalize = norm;
            c.decay = c.state_in = c.dstate_out = 1;
            check_case(&c);
        }
    print_max("head_dims");
}
END_TEST

START_TEST(test_dtypes)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t Ls[] = { 1, 65, 300 };
    seed(6);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int mode = 0; mode < 4; mode++) {
                bcase c = base();
                c.dtype = dts[i];
                c.L = c.Lk = Ls[j];
                c.causal = mode < 2;
                c.decay = mode == 1;
                c.mask = mode >= 1;
                c.normalize = mode != 3;
                c.Lk = c.causal ? c.L : 90;
                c.state_in = c.dstate_out = mode & 1;
                check_case(&c);
            }
    print_max("dtypes");
}
END_TEST

/* Inputs and gradients in other layouts: sequence-first, head-major, and a
 * stride of 2 on the last dimension whose gaps must stay untouched. */
START_TEST(test_layouts)
{
    seed(7);
    for (int lay = 0; lay < NLAYOUTS; lay++)
        for (int glay = 0; glay < NLAYOUTS; glay++) {
            bcase c = base();
            c.lay = lay, c.glay = glay;
            c.B = 3, c.L = c.Lk = 97;
            c.causal = (lay + glay) % 2;
            c.mask = c.causal;
            c.Lk = c.causal ? c.L : 50;
            c.dtype = glay == LAY_GAPPED ? LM_BF16 : LM_F32;
            check_case(&c);
        }
    print_max("layouts");
}
END_TEST

/* Long sequences at small head dims: several checkpoint blocks (with
 * Dk = Dv = 16, G = 2 and 47 chunks the CPU picks 7 chunks a block), decay
 * down to 0.75, and compensated accumulation. */
START_TEST(test_blocks)
{
    static const lm_precision precs[] = { LM_PRECISION_OFF, LM_PRECISION_ON };
    seed(8);
    for (int i = 0; i < 2; i++)
        for (int decay = 0; decay < 2; decay++) {
            bcase c = base();
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 16;
            c.L = c.Lk = 3000;
            c.decay = decay, c.mask = 1, c.state_in = c.dstate_out = 1;
            c.precision = precs[i];
            check_case(&c);
        }
    {
        bcase c = base();
        c.Hq = 4, c.Hkv = 1, c.Dk = c.Dv = 4; /* one chunk a block */
        c.L = c.Lk = 700;
        c.decay = c.mask = c.state_in = c.dstate_out = 1;
        check_case(&c);
    }
    print_max("blocks");
}
END_TEST

/* backward(L) == backward(L - L1 tokens from the state after L1) then
 * backward(L1), with dstate_in of the first call as dstate_out of the second. */
START_TEST(test_chaining)
{
    static const int64_t splits[] = { 1, 64, 100, 150, 199 };
    seed(9);
    for (int mode = 0; mode < 3; mode++) {
        bcase c = base();
        c.L = c.Lk = 200;
        c.B = 2, c.Hq = 4, c.Hkv = 2;
        c.decay = mode >= 1, c.mask = mode >= 1;
        c.normalize = mode != 2;
        c.state_in = c.dstate_out = mode >= 1;
        c.dtype = mode == 1 ? LM_BF16 : LM_F32;
        prob p;
        prob_init(&p, &c);
        float *S = malloc((size_t)p.nS * sizeof(float));
        float *z = malloc((size_t)p.nz * sizeof(float));
        float *dSm = malloc((size_t)p.nS * sizeof(float));
        float *dzm = malloc((size_t)p.nz * sizeof(float));
        for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
            const int64_t L1 = splits[s];
            poison(&p);
            /* the state after L1 tokens, by the forward */
            for (int64_t i = 0; i < p.nS; i++)
                S[i] = p.S0 ? p.S0[i] : 0.0f;
            for (int64_t i = 0; i < p.nz; i++)
                z[i] = p.z0 ? p.z0[i] : 0.0f;
            call k;
            call_init(&k, &p, 0, L1);
            k.a.out = &k.out;
            k.a.state = S, k.a.normalizer = z;
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
            /* the second part from that state, then the first with its dstate */
            call_init(&k, &p, L1, c.L - L1);
            k.a.state = S, k.a.normalizer = z, k.a.position = L1;
            k.g.dstate_in = dSm, k.g.dnormalizer_in = dzm;
            ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s",
                          lm_last_error());
            call_init(&k, &p, 0, L1);
            k.g.dstate_out = dSm, k.g.dnormalizer_out = dzm;
            ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s",
                          lm_last_error());
            char what[64];
            snprintf(what, sizeof what, "split at %lld", (long long)L1);
            check_grads(&p, what);
        }
        free(S), free(z), free(dSm), free(dzm);
        prob_free(&p);
    }
    print_max("chaining");
}
END_TEST

/* A masked key is ignored even when it holds NaN: its dk, dv are 0 and no
 * other gradient sees it. */
START_TEST(test_masked_nan)
{
    seed(10);
    for (int causal = 0; causal < 2; causal++) {
        bcase c = base();
        c.causal = causal, c.mask = 1, c.L = c.Lk = 90;
        prob p;
        prob_init(&p, &c);
        const int64_t t = 40; /* batch 1, kv head 0 */
        p.mask[1 * c.L + t] = 1;
        reference(&p, 0);
        reference(&p, 1);
        put(p.tk.data, c.dtype, offset(&p.tk, 1, t, 0, 0), NAN);
        put(p.tv.data, c.dtype, offset(&p.tv, 1, t, 0, 1), NAN);
        call k;
        call_init(&k, &p, 0, c.L);
        poison(&p);
        ck_assert(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK);
        check_grads(&p, "masked NaN");
        prob_free(&p);
    }
}
END_TEST

/* A NaN in one batch row's keys reaches that row's gradients only; the
 * other rows stay exact. */
START_TEST(test_nan_containment)
{
    seed(12);
    for (int causal = 0; causal < 2; causal++) {
        bcase c = base();
        c.causal = causal, c.B = 3, c.L = c.Lk = 90, c.dstate_in = 0;
        prob p;
        prob_init(&p, &c);
        put(p.tk.data, c.dtype, offset(&p.tk, 1, 40, 0, 0), NAN);
        call k;
        call_init(&k, &p, 0, c.L);
        poison(&p);
        ck_assert(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK);
        const tens *ts[] = { &p.dq, &p.dk, &p.dv };
        const double *want[] = { p.wq, p.wk, p.wv }, *mag[] = { p.mq, p.mk, p.mv };
        for (int i = 0; i < 3; i++) {
            const tens *t = ts[i];
            int64_t nan_row1 = 0, j = 0;
            for (int64_t b = 0; b < c.B; b++)
                for (int64_t l = 0; l < t->shape[1]; l++)
                    for (int64_t h = 0; h < t->shape[2]; h++)
                        for (int64_t d = 0; d < t->shape[3]; d++, j++) {
                            double g = get(t->data, t->dt, offset(t, b, l, h, d));
                            if (b == 1) {
                                nan_row1 += isnan(g);
                                continue;
                            }
                            ck_assert_msg(fabs(g - want[i][j]) <= 1e-5 * (mag[i][j] + 1e-3),
                                          "gradient %d of row %lld: %g, want %g", i,
                                          (long long)b, g, want[i][j]);
                        }
            ck_assert_msg(nan_row1 > 0, "gradient %d of row 1 has no NaN", i);
        }
        prob_free(&p);
    }
}
END_TEST

/* ---- bad arguments ---- */

static void expect(lm_status got, lm_status want, const char *text)
{
    ck_assert_msg(got == want, "status %d (%s), expected %d; message: %s", (int)got,
                  lm_status_string(got), (int)want, lm_last_error());
    ck_assert_msg(strstr(lm_last_error(), text), "message \"%s\" lacks \"%s\"", lm_last_error(),
                  text);
}

START_TEST(test_errors)
{
    seed(11);
    bcase c = base();
    c.L = c.Lk = 20;
    c.state_in = 1;
    prob p;
    prob_init(&p, &c);
    call k;
    poison(&p);

    call_init(&k, &p, 0, c.L);
    expect(lm_linear_attn_backward(NULL, &k.g, NULL), LM_ERR_INVALID_ARG, "args is NULL");
    expect(lm_linear_attn_backward(&k.a, NULL, NULL), LM_ERR_INVALID_ARG, "grads is NULL");
    k.g.dout = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dout is NULL");
    call_init(&k, &p, 0, c.L);
    k.g.dq = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq is NULL");
    call_init(&k, &p, 0, c.L);
    k.a.k = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "k is NULL");

    /* shapes */
    call_init(&k, &p, 0, c.L);
    k.dq.shape[3] = c.Dk + 1;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq is [");
    call_init(&k, &p, 0, c.L);
    k.dk.shape[2] = c.Hq;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "[B, Lk, Hkv, Dk]");
    call_init(&k, &p, 0, c.L);
    k.dout.shape[1] = c.L - 1;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dout is [");
    call_init(&k, &p, 0, c.L);
    k.dv.ndim = 3;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv has 3 dimensions");
    call_init(&k, &p, 0, c.L);
    k.k.shape[1] = c.L - 1, k.v.shape[1] = c.L - 1, k.dk.shape[1] = c.L - 1,
    k.dv.shape[1] = c.L - 1, k.a.key_padding_mask = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "L == Lk");

    /* dtypes and devices */
    call_init(&k, &p, 0, c.L);
    k.dk.dtype = LM_F16;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dk must have q's dtype");
    call_init(&k, &p, 0, c.L);
    k.dout.dtype = LM_BOOL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG,
           "dout must have q's dtype");
    call_init(&k, &p, 0, c.L);
    k.dv.device = LM_CUDA;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv is on cuda");

    /* state gradients in pairs, no overlaps */
    call_init(&k, &p, 0, c.L);
    k.g.dstate_out = p.dSi, k.g.dnormalizer_out = NULL, k.g.dstate_in = NULL,
    k.g.dnormalizer_in = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "go together");
    call_init(&k, &p, 0, c.L);
    k.g.dnormalizer_in = NULL;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "go together");
    call_init(&k, &p, 0, c.L);
    k.g.dstate_in = p.S0;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "must not overlap");
    call_init(&k, &p, 0, c.L);
    k.a.state = k.a.normalizer = NULL;
    k.g.dstate_out = k.g.dstate_in, k.g.dnormalizer_out = k.g.dnormalizer_in;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "must not overlap");

    /* aliasing */
    call_init(&k, &p, 0, c.L);
    k.dq.data = p.tq.data;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq overlaps q");
    call_init(&k, &p, 0, c.L);
    k.dv = k.dout;
    k.dv.shape[1] = c.L, k.dv.shape[2] = c.Hkv;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv overlaps dout");
    call_init(&k, &p, 0, c.L);
    k.dk.data = p.dq.data;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dk overlaps dq");

    /* options */
    call_init(&k, &p, 0, c.L);
    k.a.is_causal = 0, k.a.decay = p.decay;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_UNSUPPORTED, "decay");
    call_init(&k, &p, 0, c.L);
    k.a.feature_map = (lm_feature_map)7;
    expect(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "feature_map");

    /* nothing was written by the failed calls */
    int64_t untouched = 0;
    for (int64_t i = 0; i < p.dq.n; i++)
        untouched += isnan(get(p.dq.data, p.dq.dt, i));
    ck_assert_int_eq(untouched, p.dq.n);

    /* out is not needed, and may even be malformed */
    call_init(&k, &p, 0, c.L);
    lm_tensor bad = k.out;
    bad.shape[0] = 99;
    k.a.out = &bad;
    ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
    check_grads(&p, "out ignored");
    prob_free(&p);
}
END_TEST

Suite *backward_suite(void)
{
    Suite *s = suite_create("backward");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_reference_fd);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_gqa);
    tcase_add_test(tc, test_head_dims);
    tcase_add_test(tc, test_dtypes);
    tcase_add_test(tc, test_layouts);
    tcase_add_test(tc, test_blocks);
    tcase_add_test(tc, test_chaining);
    tcase_add_test(tc, test_masked_nan);
    tcase_add_test(tc, test_nan_containment);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return s;
}
