/*
 * ref.c - test buffers, random data, the float64 reference and the error
 * helper shared by the suites (see ref.h).
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- conversions, written independently of the library's ---- */

static double bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double s = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 31)
        return m ? NAN : s * INFINITY;
    if (e == 0)
        return s * ldexp(m, -24);
    return s * ldexp(1024 + m, e - 25);
}

/* v rounded to a float format with mant_bits stored mantissa bits and
 * smallest normal exponent emin, ties to even (the default rounding mode). */
static double round_to(double v, int mant_bits, int emin)
{
    if (v == 0 || !isfinite(v))
        return v;
    int e;
    frexp(v, &e);
    int lead = e - 1 < emin ? emin : e - 1;
    double q = ldexp(1.0, lead - mant_bits);
    return nearbyint(v / q) * q;
}

static uint16_t bf16_round(double v)
{
    float f = (float)round_to(v, 7, -126);
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static uint16_t f16_round(double v)
{
    double r = fabs(round_to(v, 10, -14));
    uint16_t sign = v < 0 ? 0x8000 : 0;
    if (r >= 65520.0)
        return sign | 0x7c00;
    if (r < ldexp(1.0, -14))
        return sign | (uint16_t)(r / ldexp(1.0, -24));
    int e;
    frexp(r, &e);
    int lead = e - 1;
    return sign | (uint16_t)((lead + 15) << 10) | (uint16_t)(r / ldexp(1.0, lead - 10) - 1024);
}

tbuf tbuf_new(lm_dtype dtype, int64_t n)
{
    tbuf b = { .dtype = dtype, .n = n };
    b.data = calloc((size_t)(n > 0 ? n : 1), lm_dtype_size(dtype));
    b.ref = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    ck_assert_ptr_nonnull(b.data);
    ck_assert_ptr_nonnull(b.ref);
    return b;
}

void tbuf_free(tbuf *b)
{
    free(b->data);
    free(b->ref);
    b->data = NULL;
    b->ref = NULL;
}

void tbuf_set(tbuf *b, int64_t i, double v)
{
    switch (b->dtype) {
    case LM_F32: {
        float f = (float)v;
        ((float *)b->data)[i] = f;
        b->ref[i] = f;
        break;
    }
    case LM_BF16: {
        uint16_t h = isnan(v) ? 0x7fc0 : bf16_round(v);
        ((uint16_t *)b->data)[i] = h;
        b->ref[i] = bf16_value(h);
        break;
    }
    case LM_F16: {
        uint16_t h = isnan(v) ? 0x7e00 : f16_round(v);
        ((uint16_t *)b->data)[i] = h;
        b->ref[i] = f16_value(h);
        break;
    }
    case LM_BOOL:
        ((uint8_t *)b->data)[i] = v != 0.0;
        b->ref[i] = v != 0.0;
        break;
    }
}

double tbuf_get(const tbuf *b, int64_t i)
{
    switch (b->dtype) {
    case LM_F32: return ((const float *)b->data)[i];
    case LM_BF16: return bf16_value(((const uint16_t *)b->data)[i]);
    case LM_F16: return f16_value(((const uint16_t *)b->data)[i]);
    case LM_BOOL: return ((const uint8_t *)b->data)[i];
    }
    return NAN;
}

static uint64_t rng_state = 88172645463325252ull;

void ref_seed(uint64_t seed)
{
    rng_state = seed * 2654435761ull + 88172645463325252ull;
}

double ref_uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

void tbuf_random(tbuf *b, double lo, double hi)
{
    for (int64_t i = 0; i < b->n; i++)
        tbuf_set(b, i, lo + (hi - lo) * ref_uniform());
}

void tbuf_poison(tbuf *b)
{
    if (b->dtype == LM_F32) {
        for (int64_t i = 0; i < b->n; i++)
            ((float *)b->data)[i] = NAN;
    } else {
        uint16_t nan16 = b->dtype == LM_BF16 ? 0x7fc0 : 0x7e00;
        for (int64_t i = 0; i < b->n; i++)
            ((uint16_t *)b->data)[i] = nan16;
    }
}

/* ---- the float64 reference ---- */

double ref_phi(double x, int fm)
{
    if (fm == LM_FEATURE_ELU1)
        return x > 0 ? x + 1 : exp(x);
    if (fm == LM_FEATURE_RELU)
        return x > 0 ? x : 0;
    return x;
}

static double at(const ref_view *v, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    return v->p[i0 * v->s[0] + i1 * v->s[1] + i2 * v->s[2] + i3 * v->s[3]];
}

/* o for query (b, t, h) from state S (Dk x Dv), z (Dk). */
static void read_out(const ref_problem *p, const double *S, const double *z, int64_t b,
                     int64_t t, int64_t h, double *o)
{
    double den = 0;
    for (int64_t j = 0; j < p->Dv; j++)
        o[j] = 0;
    for (int64_t d = 0; d < p->Dk; d++) {
        double fq = ref_phi(at(&p->q, b, t, h, d), p->feature_map);
        den += fq * z[d];
        for (int64_t j = 0; j < p->Dv; j++)
            o[j] += fq * S[d * p->Dv + j];
    }
    for (int64_t j = 0; j < p->Dv; j++)
        o[j] = p->normalize ? o[j] / (den + p->eps) : o[j] * p->scale;
}

/* S = g S + phi(k_s) v_s^T, z = g z + phi(k_s); a masked key leaves S, z
 * exactly as they were (no decay either: it is no step of the sequence). */
static void absorb(const ref_problem *p, double *S, double *z, int64_t b, int64_t s,
                   int64_t hk, double g)
{
    if (p->mask && p->mask[b * p->Lk + s])
        return;
    for (int64_t i = 0; i < p->Dk * p->Dv; i++)
        S[i] *= g;
    for (int64_t d = 0; d < p->Dk; d++)
        z[d] *= g;
    for (int64_t d = 0; d < p->Dk; d++) {
        double fk = ref_phi(at(&p->k, b, s, hk, d), p->feature_map);
        z[d] += fk;
        for (int64_t j = 0; j < p->Dv; j++)
            S[d * p->Dv + j] += fk * at(&p->v, b, s, hk, j);
    }
}

void ref_attend(const ref_problem *p, double *out, double *state_out, double *normalizer_out)
{
    const int64_t G = p->Hq / p->Hkv, SS = p->Dk * p->Dv;
    double *S = malloc((size_t)SS * sizeof(double));
    double *z = malloc((size_t)p->Dk * sizeof(double));
    ck_assert_ptr_nonnull(S);
    ck_assert_ptr_nonnull(z);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++) {
            const int64_t hk = h / G;
            const double g = p->decay ? p->decay[hk] : 1.0;
            for (int64_t i = 0; i < SS; i++)
                S[i] = p->state ? p->state[(b * p->Hkv + hk) * SS + i] : 0;
            for (int64_t d = 0; d < p->Dk; d++)
                z[d] = p->normalizer ? p->normalizer[(b * p->Hkv + hk) * p->Dk + d] : 0;
            double *o = out + (b * p->L * p->Hq + h) * p->Dv;
            if (p->causal) {
                for (int64_t t = 0; t < p->L; t++) {
                    absorb(p, S, z, b, t, hk, g);
                    read_out(p, S, z, b, t, h, o + t * p->Hq * p->Dv);
                }
            } else {
                for (int64_t s = 0; s < p->Lk; s++)
                    absorb(p, S, z, b, s, hk, 1.0);
                for (int64_t t = 0; t < p->L; t++)
                    read_out(p, S, z, b, t, h, o + t * p->Hq * p->Dv);
            }
            if (h % G == 0 && state_out) {
                memcpy(state_out + (b * p->Hkv + hk) * SS, S, (size_t)SS * sizeof(double));
                memcpy(normalizer_out + (b * p->Hkv + hk) * p->Dk, z,
                       (size_t)p->Dk * sizeof(double));
            }
        }
    free(S);
    free(z);
}

void ref_absorb(const ref_problem *p, double *state_out, double *normalizer_out)
{
    ref_problem r = *p; /* the keys as queries: one query head per kv head */
    r.q = p->k, r.L = p->Lk, r.Hq = p->Hkv, r.causal = 1;
    double *out = malloc((size_t)(r.B * r.L * r.Hq * r.Dv) * sizeof(double) + 1);
    ck_assert_ptr_nonnull(out);
    ref_attend(&r, out, state_out, normalizer_out);
    free(out);
}

static int masked(const ref_problem *p, int64_t b, int64_t j)
{
    return p->mask && p->mask[b * p->Lk + j];
}

/* The window part of query t: adds sum a_j v_j to o, returns sum a_j. */
static double window_part(const ref_problem *p, int64_t b, int64_t t, int64_t h, int64_t hk,
                          int64_t W, int64_t s, double gamma, double *o)
{
    /* The window's positions: the sinks j < min(s, t + 1), then (t - W, t] above them. */
    const int64_t ns = s < t + 1 ? s : t + 1, lo = t - W + 1 > ns ? t - W + 1 : ns;
    double m = -INFINITY;
    for (int pass = 0; pass < 2; pass++) {
        double sum = 0;
        /* j runs over [0, ns) then [lo, t]. */
        for (int64_t j = ns > 0 ? 0 : lo; j <= t; j = j + 1 == ns ? lo : j + 1) {
            if (masked(p, b, j))
                continue;
            double l = 0;
            for (int64_t d = 0; d < p->Dk; d++)
                l += at(&p->q, b, t, h, d) * at(&p->k, b, j, hk, d);
            l *= p->scale;
            if (pass == 0) {
                m = l > m ? l : m;
                continue;
            }
            const double a = gamma * exp(l - m);
            sum += a;
            for (int64_t e = 0; e < p->Dv; e++)
                o[e] += a * at(&p->v, b, j, hk, e);
        }
        if (pass == 1)
            return sum;
        if (m == -INFINITY)
            return 0; /* no key in the window */
    }
    return 0;
}

void ref_hybrid(const ref_problem *p, int64_t W, int64_t s, const float *gate, lm_gate_form gate_form,
                double *out, const ref_hybrid_state *final)
{
    const int64_t G = p->Hq / p->Hkv, SS = p->Dk * p->Dv, ns = s + W;
    double *S = malloc((size_t)SS * sizeof(double));
    double *z = malloc((size_t)p->Dk * sizeof(double));
    ck_assert(S && z);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++) {
            const int64_t hk = h / G;
            const double g = gate ? (double)gate[h] : 0.0;
            const double gamma = gate_form == LM_GATE_EXP ? exp(g) : 1.0 / (1.0 + exp(-g));
            memset(S, 0, (size_t)SS * sizeof(double));
            memset(z, 0, (size_t)p->Dk * sizeof(double));
            for (int64_t t = 0; t < p->L; t++) {
                /* Ev_t = Ev_{t-1} plus position t - W when it is not a sink. */
                if (t - W >= s && !masked(p, b, t - W))
                    for (int64_t d = 0; d < p->Dk; d++) {
                        const double fk = ref_phi(at(&p->k, b, t - W, hk, d), p->feature_map);
                        z[d] += fk;
                        for (int64_t e = 0; e < p->Dv; e++)
                            S[d * p->Dv + e] += fk * at(&p->v, b, t - W, hk, e);
                    }
                double *o = out + ((b * p->L + t) * p->Hq + h) * p->Dv, den = 0;
                for (int64_t e = 0; e < p->Dv; e++)
                    o[e] = 0;
                for (int64_t d = 0; d < p->Dk; d++) {
                    const double fq = ref_phi(at(&p->q, b, t, h, d), p->feature_map);
                    den += fq * z[d];
                    for (int64_t e = 0; e < p->Dv; e++)
                        o[e] += fq * S[d * p->Dv + e];
                }
                den += window_part(p, b, t, h, hk, W, s, gamma, o);
                for (int64_t e = 0; e < p->Dv; e++)
                    o[e] /= den + p->eps;
            }
            if (!final || h % G)
                continue;
            const int64_t bh = b * p->Hkv + hk;
            memcpy(final->S + bh * SS, S, (size_t)SS * sizeof(double));
            memcpy(final->z + bh * p->Dk, z, (size_t)p->Dk * sizeof(double));
            double *keys = final->keys + bh * ns * p->Dk, *vals = final->values + bh * ns * p->Dv;
            double *pos = final->pos + bh * ns;
            memset(keys, 0, (size_t)(ns * p->Dk) * sizeof(double));
            memset(vals, 0, (size_t)(ns * p->Dv) * sizeof(double));
            memset(pos, 0, (size_t)ns * sizeof(double));
            for (int64_t j = 0; j < p->L; j++) {
                /* Sinks stay; of the rest, the last W positions are in the ring. */
                const int64_t slot = j < s ? j : j > p->L - 1 - W ? s + j % W : -1;
                if (slot < 0)
                    continue;
                pos[slot] = masked(p, b, j) ? -(double)(j + 1) : (double)(j + 1);
                if (masked(p, b, j))
                    continue;
                for (int64_t d = 0; d < p->Dk; d++)
                    keys[slot * p->Dk + d] = at(&p->k, b, j, hk, d);
                for (int64_t e = 0; e < p->Dv; e++)
                    vals[slot * p->Dv + e] = at(&p->v, b, j, hk, e);
            }
        }
    free(S);
    free(z);
}

void ref_hybrid_state_alloc(ref_hybrid_state *st, int64_t heads, int64_t Dk, int64_t Dv, int64_t slots)
{
    st->S = malloc((size_t)(heads * Dk * Dv) * sizeof(double));
    st->z = malloc((size_t)(heads * Dk) * sizeof(double));
    st->keys = malloc((size_t)(heads * slots * Dk) * sizeof(double));
    st->values = malloc((size_t)(heads * slots * Dv) * sizeof(double));
    st->pos = malloc((size_t)(heads * slots) * sizeof(double));
    ck_assert(st->S && st->z && st->keys && st->values && st->pos);
}

void ref_hybrid_state_free(ref_hybrid_state *st)
{
    free(st->S), free(st->z), free(st->keys), free(st->values), free(st->pos);
}

/* y[r, :N] = x[r, :K] w[N, K]^T + b, x read through strides [B, L, K]. */
static void project(double *y, const double *x, const int64_t *sx, int64_t B, int64_t L,
                    int64_t K, const double *w, int64_t N, const double *bias)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < L; t++)
            for (int64_t n = 0; n < N; n++) {
                double acc = bias ? bias[n] : 0;
                for (int64_t k = 0; k < K; k++)
                    acc += x[b * sx[0] + t * sx[1] + k * sx[2]] * w[n * K + k];
                y[(b * L + t) * N + n] = acc;
            }
}

void ref_module_forward(const ref_module *m, double *out)
{
    const int64_t B = m->B, L = m->Lq, Lk = m->Lk, Dq = m->Hq * m->D, Dkv = m->Hkv * m->D;
    double *q = malloc((size_t)(B * L * Dq) * sizeof(double));
    double *k = malloc((size_t)(B * Lk * Dkv) * sizeof(double));
    double *v = malloc((size_t)(B * Lk * Dkv) * sizeof(double));
    double *o = malloc((size_t)(B * L * Dq) * sizeof(double));
    ck_assert(q && k && v && o);
    project(q, m->xq, m->sq, B, L, m->E, m->wq, Dq, m->bq);
    project(k, m->xk, m->sk, B, Lk, m->kdim, m->wk, Dkv, m->bk);
    project(v, m->xv, m->sv, B, Lk, m->vdim, m->wv, Dkv, m->bv);
    ref_problem r = { .B = B, .L = L, .Lk = Lk, .Hq = m->Hq, .Hkv = m->Hkv, .Dk = m->D,
                      .Dv = m->D, .q = { q, { L * Dq, Dq, m->D, 1 } },
                      .k = { k, { Lk * Dkv, Dkv, m->D, 1 } }, .v = { v, { Lk * Dkv, Dkv, m->D, 1 } },
                      .mask = m->mask, .decay = m->decay, .causal = m->causal,
                      .feature_map = LM_FEATURE_ELU1, .normalize = 1, .eps = 1e-6,
                      .scale = 1.0 / sqrt((double)m->D) };
    if (m->hybrid)
        ref_hybrid(&r, m->window, m->sinks, m->gate, m->gate_form, o, NULL);
    else
        ref_attend(&r, o, NULL, NULL);
    const int64_t so[3] = { L * Dq, Dq, 1 };
    project(out, o, so, B, L, Dq, m->wo, m->E, m->bo);
    free(q), free(k), free(v), free(o);
}

/* ---- errors ---- */

static ref_err compare(const tbuf *got, const float *gotf, const double *want, int64_t n)
{
    double num = 0, den = 0;
    ref_err e = { 0, 0 };
    for (int64_t i = 0; i < n; i++) {
        double g = got ? tbuf_get(got, i) : gotf[i];
        if (isnan(g) && isfinite(want[i])) {
            e.unwritten++;
            continue;
        }
        num += (g - want[i]) * (g - want[i]);
        den += want[i] * want[i];
    }
    e.rel = den > 0 ? sqrt(num / den) : sqrt(num);
    return e;
}

ref_err ref_compare(const tbuf *got, const double *want, int64_t n)
{
    return compare(got, NULL, want, n);
}

ref_err ref_compare_f32(const float *got, const double *want, int64_t n)
{
    return compare(NULL, got, want, n);
}

double ref_bound(lm_dtype dtype)
{
    switch (dtype) {
    case LM_F32: return 2e-6;
    case LM_F16: return 5e-4;
    case LM_BF16: return 3e-3;
    default: return 0;
    }
}

static double worst[3];

void ref_note(lm_dtype dtype, double rel)
{
    if ((int)dtype >= 0 && (int)dtype < 3 && rel > worst[dtype])
        worst[dtype] = rel;
}

void ref_print_summary(void)
{
    printf("largest relative error vs float64: bf16 %.3g (bound %.0e), f16 %.3g (bound %.0e), "
           "f32 %.3g (bound %.0e)\n",
           worst[LM_BF16], ref_bound(LM_BF16), worst[LM_F16], ref_bound(LM_F16), worst[LM_F32],
           ref_bound(LM_F32));
}

static void *host_alloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void host_copy(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

static double cpu_out_bound(lm_dtype dtype, const double *want, int64_t n)
{
    (void)want, (void)n;
    return ref_bound(dtype);
}

static double cpu_state_bound(lm_dtype dtype)
{
    (void)dtype;
    return 2e-5;
}

static void cpu_note(const char *what, lm_dtype dtype, const double *want, int64_t n, double rel)
{
    (void)what, (void)want, (void)n;
    ref_note(dtype, rel);
}

const test_dev cpu_dev = { LM_CPU, host_alloc, free, host_copy, host_copy, cpu_out_bound, cpu_state_bound, cpu_note,
                           NULL };

size_t tbuf_bytes(const tbuf *b)
{
    return (size_t)b->n * lm_dtype_size(b->dtype);
}

void *test_dev_upload(const test_dev *dev, const void *src, size_t bytes)
{
    void *d = dev->alloc(bytes);
    dev->upload(d, src, bytes);
    return d;
}

void *test_dev_input(const test_dev *dev, void *host, size_t bytes)
{
    return dev->device == LM_CPU || !host ? host : test_dev_upload(dev, host, bytes);
}

void test_dev_drop(const test_dev *dev, void *d)
{
    if (dev->device != LM_CPU && d)
        dev->release(d);
}

void ref_strides4(int64_t *s, int64_t B, int64_t L, int64_t H, int64_t D, int seq_first)
{
    s[3] = 1, s[2] = D;
    if (seq_first)
        s[0] = H * D, s[1] = B * H * D; /* memory [L, B, H, D] */
    else
        s[1] = H * D, s[0] = L * H * D;
}

lm_tensor ref_tensor4(void *data, lm_dtype dtype, lm_device dev, const int64_t *s, int64_t B, int64_t L,
                      int64_t H, int64_t D)
{
    lm_tensor t = { .data = data, .dtype = dtype, .device = dev, .ndim = 4, .shape = { B, L, H, D } };
    memcpy(t.stride, s, sizeof t.stride);
    return t;
}

lm_tensor ref_tensor3(void *data, lm_dtype dtype, lm_device dev, const int64_t *s, int64_t B, int64_t L,
                      int64_t W)
{
    lm_tensor t = { .data = data, .dtype = dtype, .device = dev, .ndim = 3, .shape = { B, L, W },
                    .stride = { s[0], s[1], s[2] } };
    return t;
}

lm_tensor ref_view4(const tbuf *b, const int64_t *s, int64_t B, int64_t L, int64_t H, int64_t D)
{
    return ref_tensor4(b->data, b->dtype, LM_CPU, s, B, L, H, D);
}

lm_tensor ref_tokens(lm_tensor t, int64_t t0, int64_t n)
{
    t.data = (char *)t.data + t0 * t.stride[1] * (int64_t)lm_dtype_size(t.dtype);
    t.shape[1] = n;
    return t;
}

void ref_strides3(int64_t *s, int64_t B, int64_t L, int64_t W, int seq_first)
{
    s[2] = 1;
    if (seq_first)
        s[0] = W, s[1] = B * W;
    else
        s[0] = L * W, s[1] = W;
}
