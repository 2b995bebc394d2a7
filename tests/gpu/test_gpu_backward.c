/*
 * test_gpu_backward.c - the core backward (lm_linear_attn_backward) on CUDA
 * against a float64 reference where it is cheap and against the CPU backend
 * always: ragged lengths, every mode of docs/DESIGN.md section 2, GQA, head dims
 * (Dk != Dv), dtypes, sequence-first strides, many segments, compensated
 * precision, state gradients chained across a split, determinism. Gradient
 * buffers are NaN-poisoned before each call and must be fully written.
 *
 * Reference: ref_backward (tests/ref_backward.c, the CPU suite's, which
 * test_backward.c checks by central differences), the quadratic form
 * differentiated by hand in float64, O(L Lk); run when one (batch, kv head)
 * costs at most REF_COST, in parallel over them.
 *
 * Error measure, per gradient: ||got - want|| / ||mag||, where mag is the
 * reference run on absolute values (every factor |x|): the scale of rounding
 * error in sums, meaningful also where terms cancel (with one key and no
 * state, dq is ~eps / d^2 of noise in fp32). Bounds:
 *   vs float64: floor (1.1 + 3/sqrt(n)) + 1e-5, floor = ||round(want) - want||
 *     / ||mag||, the rounding of a perfect gradient to its dtype (the kernels
 *     compute in fp32, so only the output rounding shows: ratios ~1.0);
 *     1e-5 for fp32 sums over thousands of terms (fp32 state gradients: 1e-5);
 *   vs the CPU backend: 2.2 floor + 1e-5 (each rounds once), and without a
 *     reference, relative to ||cpu||: the dtype's unit roundoff (2^-8 bf16,
 *     2^-11 f16) + 1e-5, state gradients 1e-4.
 * The tensor-core backward (bf16, causal, Hq == Hkv, no mask, no decay, not
 * LM_PRECISION_ON: src/cuda_backward_tc.c) rounds its operands a, b, g to
 * bf16 (2^-9 relative each) before the products, so its bound is
 *   vs float64: 3 floor (1.1 + 3/sqrt(n)) + 2^-8 (bf16's unit roundoff, relative
 *   to the magnitudes of the terms), vs the CPU that + 2.2 floor;
 * its worst ratios are printed apart ("bf16 tensor cores").
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_COST 1.5e9

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv;
    int causal, fm, normalize, decay, mask, state, seq_first;
    lm_precision precision;
} bcase;

static bcase base_case(void)
{
    bcase c = { .dtype = LM_BF16, .B = 2, .L = 130, .Lk = 130, .Hq = 4, .Hkv = 2, .Dk = 64, .Dv = 64,
                .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 };
    return c;
}

static void describe(char *s, size_t n, const bcase *c)
{
    snprintf(s, n, "dt %d B %lld L %lld/%lld H %lld/%lld D %lld/%lld c%d fm%d n%d dec%d m%d st%d sf%d pr%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->Hq,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal, c->fm, c->normalize,
             c->decay, c->mask, c->state, c->seq_first, (int)c->precision);
}

/* Worst ratios to the floor, printed last. */
static struct {
    double ratio, err;
    char what[200];
} worst[4][5];

/* Slot of worst[] for the tensor-core backward. */
#define TC 3

/* Whether the GPU runs case c on the tensor-core backward. */
static int uses_tc(const bcase *c)
{
    return c->dtype == LM_BF16 && c->causal && c->Hq == c->Hkv && !c->mask && !c->decay &&
           c->precision != LM_PRECISION_ON;
}

/* ---- one problem ---- */

enum { GQ, GK, GV, GS, GZ };
static const char *const grad_names[] = { "dq", "dk", "dv", "dS_in", "dz_in" };

typedef struct grads {
    tbuf g[3];      /* dq, dk, dv in the inputs' layout */
    float *S, *z;   /* dS_in, dz_in (state cases) */
} grads;

typedef struct bprob {
    bcase c;
    tbuf q, k, v, dout;
    int64_t sq[4], sk[4], sv[4], so[4];
    uint8_t *mask;
    float decay[64];
    float *S0, *z0, *dSo, *dzo; /* NULL without a state */
    int64_t n[5];               /* elements of dq, dk, dv, dS, dz */
    void *dq, *dk, *dv, *ddo, *dmask;
    float *dS0, *dz0, *ddSo, *ddzo;
} bprob;

static float *randoms_f32(int64_t n, double lo, double hi)
{
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * ref_uniform());
    return x;
}

static void prob_init(bprob *p, const bcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    if (c->causal)
        p->c.Lk = c->L;
    const int64_t B = c->B, L = c->L, Lk = p->c.Lk;
    /* relu and identity: inputs that keep the normaliser away from zero */
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : c->fm == LM_FEATURE_RELU ? -0.5
                    : c->normalize ? 0.0 : -1.0;
    const double hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, B * L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dv);
    p->dout = tbuf_new(c->dtype, B * L * c->Hq * c->Dv);
    tbuf_random(&p->q, lo, hi);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    tbuf_random(&p->dout, -1.0, 1.0);
    ref_strides4(p->sq, B, L, c->Hq, c->Dk, c->seq_first);
    ref_strides4(p->sk, B, Lk, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, Lk, c->Hkv, c->Dv, c->seq_first);
    ref_strides4(p->so, B, L, c->Hq, c->Dv, c->seq_first);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk > 0 ? B * Lk : 1));
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.25;
        p->dmask = dupload_bytes(p->mask, (size_t)(B * Lk > 0 ? B * Lk : 1));
    }
    for (int64_t h = 0; h < c->Hkv && h < 64; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6)));
    p->n[GQ] = p->q.n, p->n[GK] = p->k.n, p->n[GV] = p->v.n;
    p->n[GS] = B * c->Hkv * c->Dk * c->Dv, p->n[GZ] = B * c->Hkv * c->Dk;
    if (c->state) {
        p->S0 = randoms_f32(p->n[GS], -1.0, 1.0);
        p->z0 = randoms_f32(p->n[GZ], 1.0, 5.0);
        p->dSo = randoms_f32(p->n[GS], -0.1, 0.1);
        p->dzo = randoms_f32(p->n[GZ], -0.1, 0.1);
        p->dS0 = dupload_bytes(p->S0, (size_t)p->n[GS] * 4);
        p->dz0 = dupload_bytes(p->z0, (size_t)p->n[GZ] * 4);
        p->ddSo = dupload_bytes(p->dSo, (size_t)p->n[GS] * 4);
        p->ddzo = dupload_bytes(p->dzo, (size_t)p->n[GZ] * 4);
    }
    p->dq = dupload(&p->q);
    p->dk = dupload(&p->k);
    p->dv = dupload(&p->v);
    p->ddo = dupload(&p->dout);
}

static void prob_free(bprob *p)
{
    tbuf_free(&p->q);
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    tbuf_free(&p->dout);
    free(p->mask);
    free(p->S0), free(p->z0), free(p->dSo), free(p->dzo);
    cudaFree(p->dq), cudaFree(p->dk), cudaFree(p->dv), cudaFree(p->ddo), cudaFree(p->dmask);
    cudaFree(p->dS0), cudaFree(p->dz0), cudaFree(p->ddSo), cudaFree(p->ddzo);
}

static void grads_new(grads *g, const bprob *p)
{
    for (int i = 0; i < 3; i++) {
        g->g[i] = tbuf_new(p->c.dtype, p->n[i]);
        tbuf_poison(&g->g[i]);
    }
    g->S = malloc((size_t)(p->n[GS] > 0 ? p->n[GS] : 1) * sizeof(float));
    g->z = malloc((size_t)(p->n[GZ] > 0 ? p->n[GZ] : 1) * sizeof(float));
    for (int64_t i = 0; i < p->n[GS]; i++)
        g->S[i] = NAN;
    for (int64_t i = 0; i < p->n[GZ]; i++)
        g->z[i] = NAN;
}

static void grads_free(grads *g)
{
    for (int i = 0; i < 3; i++)
        tbuf_free(&g->g[i]);
    free(g->S), free(g->z);
}

/* Descriptors and arguments of one backward call on `dev` over query tokens
 * [t0, t0 + n) (keys likewise when causal, all of them otherwise). */
typedef struct call {
    lm_tensor q, k, v, dout, dq, dk, dv, mask;
    lm_core_args a;
    lm_core_grads g;
} call;

static void call_init(call *k, const bprob *p, lm_device dev, void *gq, void *gk, void *gv,
                      int64_t t0, int64_t n)
{
    const bcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    const int64_t nk = c->causal ? n : c->Lk, k0 = c->causal ? t0 : 0;
    memset(k, 0, sizeof *k);
    k->q = ref_tokens(ref_tensor4(gpu ? p->dq : p->q.data, c->dtype, dev, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_tensor4(gpu ? p->dk : p->k.data, c->dtype, dev, p->sk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->v = ref_tokens(ref_tensor4(gpu ? p->dv : p->v.data, c->dtype, dev, p->sv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    k->dout = ref_tokens(ref_tensor4(gpu ? p->ddo : p->dout.data, c->dtype, dev, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    k->dq = ref_tokens(ref_tensor4(gq, c->dtype, dev, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->dk = ref_tokens(ref_tensor4(gk, c->dtype, dev, p->sk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->dv = ref_tokens(ref_tensor4(gv, c->dtype, dev, p->sv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d((uint8_t *)(gpu ? p->dmask : p->mask) + k0, LM_BOOL, dev, c->B, nk);
        k->mask.stride[0] = c->Lk;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
    k->a.position = t0;
    k->g.struct_size = sizeof k->g;
    k->g.dout = &k->dout, k->g.dq = &k->dq, k->g.dk = &k->dk, k->g.dv = &k->dv;
}

/* The whole backward on `dev` (state cases: from S0, with dS_out, asking for dS_in). */
static void run_backward(const bprob *p, lm_device dev, grads *out)
{
    const bcase *c = &p->c;
    grads_new(out, p);
    call k;
    if (dev == LM_CPU) {
        call_init(&k, p, dev, out->g[0].data, out->g[1].data, out->g[2].data, 0, c->L);
        if (c->state) {
            k.a.state = p->S0, k.a.normalizer = p->z0;
            k.g.dstate_out = p->dSo, k.g.dnormalizer_out = p->dzo;
            k.g.dstate_in = out->S, k.g.dnormalizer_in = out->z;
        }
        ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "cpu: %s", lm_last_error());
        return;
    }
    void *d[3];
    for (int i = 0; i < 3; i++) {
        const size_t bytes = (size_t)p->n[i] * lm_dtype_size(c->dtype);
        d[i] = dmalloc(bytes);
        dpoison(d[i], bytes);
    }
    float *dS = dmalloc((size_t)p->n[GS] * 4), *dz = dmalloc((size_t)p->n[GZ] * 4);
    dpoison(dS, (size_t)p->n[GS] * 4);
    dpoison(dz, (size_t)p->n[GZ] * 4);
    call_init(&k, p, dev, d[0], d[1], d[2], 0, c->L);
    if (c->state) {
        k.a.state = p->dS0, k.a.normalizer = p->dz0;
        k.g.dstate_out = p->ddSo, k.g.dnormalizer_out = p->ddzo;
        k.g.dstate_in = dS, k.g.dnormalizer_in = dz;
    }
    ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "gpu: %s", lm_last_error());
    for (int i = 0; i < 3; i++) {
        ddownload(&out->g[i], d[i]);
        cudaFree(d[i]);
    }
    ddownload_bytes(out->S, dS, (size_t)p->n[GS] * 4);
    ddownload_bytes(out->z, dz, (size_t)p->n[GZ] * 4);
    cudaFree(dS);
    cudaFree(dz);
}

/* ---- float64 reference ---- */

static double ref_cost(const bcase *c)
{
    const double Lk = c->causal ? (double)c->L : (double)c->Lk;
    return (double)(c->Hq / c->Hkv) * (double)c->L * Lk * (double)(c->Dk + c->Dv);
}

/* x as float64, or NULL. */
static double *widened(const float *x, int64_t n)
{
    if (!x)
        return NULL;
    double *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        w[i] = x[i];
    return w;
}

/* Gradients in float64 (ref_backward) into w[GQ..GZ] (layout of the inputs),
 * or with mag their magnitudes (the normaliser is a sum of non-negative
 * terms in these tests). */
static void reference(const bprob *p, int mag, double **w)
{
    const bcase *c = &p->c;
    double *S0 = widened(p->S0, p->n[GS]), *z0 = widened(p->z0, p->n[GZ]);
    double *dSo = widened(p->dSo, p->n[GS]), *dzo = widened(p->dzo, p->n[GZ]);
    ref_problem r = { .B = c->B, .L = c->L, .Lk = c->Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q.p = p->q.ref, .k.p = p->k.ref, .v.p = p->v.ref, .mask = p->mask, .state = S0,
                      .normalizer = z0, .decay = c->decay ? p->decay : NULL, .causal = c->causal,
                      .feature_map = c->fm, .normalize = c->normalize, .eps = (double)1e-6f,
                      .scale = (double)(1.0f / sqrtf((float)c->Dk)) };
    ref_grads g = { .dout.p = p->dout.ref, .dstate_out = dSo, .dnormalizer_out = dzo, .dq = w[GQ], .dk = w[GK],
                    .dv = w[GV], .dstate_in = w[GS], .dnormalizer_in = w[GZ] };
    memcpy(r.q.s, p->sq, sizeof r.q.s), memcpy(r.k.s, p->sk, sizeof r.k.s);
    memcpy(r.v.s, p->sv, sizeof r.v.s), memcpy(g.dout.s, p->so, sizeof g.dout.s);
    ref_backward(&r, &g, mag);
    free(S0), free(z0), free(dSo), free(dzo);
}

/* ---- comparisons ---- */

/* Element i of a gradient: dtype buffer for dq, dk, dv, fp32 for the state's. */
static double grad_at(const grads *g, int which, int64_t i)
{
    return which < 3 ? tbuf_get(&g->g[which], i) : which == GS ? g->S[i] : g->z[i];
}

/* ||got - want|| / ||scale||; NaNs where want is finite count as unwritten. */
static double error_of(const grads *got, int which, const double *want, const double *scale, int64_t n,
                       int64_t *unwritten)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double x = grad_at(got, which, i);
        if (isnan(x) && isfinite(want[i]))
            (*unwritten)++;
        else
            num += (x - want[i]) * (x - want[i]);
        den += scale[i] * scale[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ||round(want) - want|| / ||mag||: rounding a perfect gradient to dt. */
static double floor_of(lm_dtype dt, const double *want, const double *mag, int64_t n)
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

static double unit_roundoff(lm_dtype dt)
{
    return dt == LM_BF16 ? ldexp(1.0, -8) : dt == LM_F16 ? ldexp(1.0, -11) : 0.0;
}

/* The worst error per dtype and gradient: for bf16 / f16 as a multiple of
 * the rounding floor (where it is not vanishing: L = 1 gradients are fp32
 * noise far under it), for fp32 as itself. */
static void note(lm_dtype dt, int slot, int which, double err, double floor, const char *desc)
{
    if (dt != LM_F32 && floor < 1e-4)
        return;
    const double ratio = dt == LM_F32 ? err : err / floor;
    if (ratio > worst[slot][which].ratio) {
        worst[slot][which].ratio = ratio;
        worst[slot][which].err = err;
        snprintf(worst[slot][which].what, sizeof worst[slot][which].what, "%s", desc);
    }
}

/* The GPU backward of case c against float64 (when cheap) and the CPU. */
static void check_case(const bcase *c)
{
    bprob p;
    prob_init(&p, c);
    char desc[200];
    describe(desc, sizeof desc, &p.c);
    grads gpu, cpu;
    run_backward(&p, LM_CUDA, &gpu);
    run_backward(&p, LM_CPU, &cpu);
    const int nt = c->state ? 5 : 3, with_ref = ref_cost(&p.c) <= REF_COST, tc = uses_tc(c);
    double *want[5] = { 0 }, *mag[5] = { 0 };
    if (with_ref) {
        for (int i = 0; i < 5; i++) {
            want[i] = calloc((size_t)(p.n[i] > 0 ? p.n[i] : 1), sizeof(double));
            mag[i] = calloc((size_t)(p.n[i] > 0 ? p.n[i] : 1), sizeof(double));
        }
        reference(&p, 0, want);
        reference(&p, 1, mag);
    }
    for (int i = 0; i < nt; i++) {
        const int64_t n = p.n[i];
        const lm_dtype dt = i < 3 ? p.c.dtype : LM_F32;
        double *cpu_v = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
        for (int64_t j = 0; j < n; j++)
            cpu_v[j] = grad_at(&cpu, i, j);
        int64_t unwritten = 0, cpu_unwritten = 0;
        if (with_ref) {
            const double fl = floor_of(dt, want[i], mag[i], n);
            const double e = error_of(&gpu, i, want[i], mag[i], n, &unwritten);
            const double grow = 1.1 + 3.0 / sqrt((double)(n > 0 ? n : 1));
            const double bound = tc ? 3.0 * fl * grow + ldexp(1.0, -8) : fl * grow + 1e-5;
            const double cbound = tc ? bound + 2.2 * fl : 2.2 * fl + 1e-5;
            const double d = error_of(&gpu, i, cpu_v, mag[i], n, &cpu_unwritten);
            note(dt, tc ? TC : dt, i, e, fl, desc);
            CHECK(e <= bound, "%s error %.3g > %.3g (floor %.3g) (%s)", grad_names[i], e, bound, fl, desc);
            CHECK(d <= cbound, "%s vs cpu %.3g > %.3g (%s)", grad_names[i], d, cbound, desc);
        } else {
            ck_assert_msg(!tc, "tensor-core cases are checked against float64 (%s)", desc);
            const double d = error_of(&gpu, i, cpu_v, cpu_v, n, &unwritten);
            const double bound = i < 3 ? unit_roundoff(dt) + 1e-5 : 1e-4;
            CHECK(d <= bound, "%s vs cpu %.3g > %.3g (%s)", grad_names[i], d, bound, desc);
        }
        CHECK(unwritten == 0, "%s: %lld elements not written (%s)", grad_names[i], (long long)unwritten, desc);
        free(cpu_v);
    }
    for (int i = 0; i < 5; i++)
        free(want[i]), free(mag[i]);
    grads_free(&gpu);
    grads_free(&cpu);
    prob_free(&p);
}

/* ---- tests ---- */

START_TEST(test_bwd_lengths)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 1000, 4097 };
    ref_seed(201);
    for (int i = 0; i < (gpu_small ? 3 : 6); i++)
        for (int causal = 1; causal >= 0; causal--) {
            bcase c = base_case();
            c.L = c.Lk = Ls[i];
            c.causal = causal;
            c.B = Ls[i] > 1000 ? 1 : 2;
            c.state = i % 2;
            c.mask = i >= 4;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

/* Every mode of docs/DESIGN.md §2 (identity only unnormalised, decay only causal),
 * cross-attention lengths for the bidirectional ones. */
START_TEST(test_bwd_modes)
{
    ref_seed(202);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int st = 0; st < 2; st++) {
                            if (fm == LM_FEATURE_IDENTITY && norm)
                                continue;
                            bcase c = base_case();
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask, c.state = st;
                            c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_case(&c);
                        }
    gpu_end_test();
}
END_TEST

START_TEST(test_bwd_heads)
{
    static const int64_t heads[][2] = { { 8, 8 }, { 8, 2 }, { 8, 1 }, { 1, 1 } };
    ref_seed(203);
    for (int i = 0; i < 4; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bcase c = base_case();
            c.Hq = heads[i][0], c.Hkv = heads[i][1];
            c.causal = causal, c.mask = 1, c.state = 1;
            c.L = c.Lk = 300;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_bwd_head_dims)
{
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 256, 256 }, { 64, 128 }, { 128, 64 },
                                       { 256, 64 }, { 32, 32 }, { 96, 40 }, { 60, 44 } };
    ref_seed(204);
    for (int i = 0; i < 9; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bcase c = base_case();
            c.B = 1, c.Hq = 2, c.Hkv = 1;
            c.Dk = dims[i][0], c.Dv = dims[i][1];
            c.causal = causal, c.decay = causal, c.state = 1;
            c.L = c.Lk = 200;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_bwd_dtypes)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t Ls[] = { 1, 65, 1000 };
    ref_seed(205);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int mode = 0; mode < 3; mode++) {
                bcase c = base_case();
                c.dtype = dts[i];
                c.L = c.Lk = Ls[j];
                c.causal = mode != 2;
                c.decay = mode == 1, c.state = mode == 1, c.mask = mode == 2;
                c.Dk = c.Dv = mode == 1 ? 128 : 64;
                check_case(&c);
            }
    gpu_end_test();
}
END_TEST

/* One kv head and long sequences: many segments (scans forwards and
 * backwards, ragged last segment), sequence-first strides, compensated. */
START_TEST(test_bwd_segments)
{
    ref_seed(206);
    for (int sf = 0; sf < 2; sf++)
        for (int causal = 1; causal >= 0; causal--) {
            bcase c = base_case();
            c.seq_first = sf, c.causal = causal;
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 128;
            c.L = c.Lk = 3000 + 37 * sf;
            c.mask = 1, c.decay = causal, c.state = 1;
            c.precision = sf ? LM_PRECISION_ON : LM_PRECISION_AUTO;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

/* The backward of [cut, L) from the forward's state at cut gives dS_in,
 * the dS_out of the backward of [0, cut): together they equal the backward
 * over [0, L). f32, where the forward's state is near exact (5e-5). */
START_TEST(test_bwd_chain)
{
    static const int64_t cuts[] = { 64, 100, 777 };
    ref_seed(207);
    for (int i = 0; i < 3; i++) {
        bcase c = base_case();
        c.dtype = LM_F32, c.L = c.Lk = 1000, c.decay = i % 2, c.mask = 1, c.state = 1;
        bprob p;
        prob_init(&p, &c);
        grads whole;
        run_backward(&p, LM_CUDA, &whole);
        const int64_t nS = p.n[GS], nz = p.n[GZ], cut = cuts[i];
        void *d[3];
        for (int j = 0; j < 3; j++) {
            d[j] = dmalloc((size_t)p.n[j] * 4);
            dpoison(d[j], (size_t)p.n[j] * 4);
        }
        /* the state at cut: prefill of [0, cut) from S0 */
        float *S = dupload_bytes(p.S0, (size_t)nS * 4), *z = dupload_bytes(p.z0, (size_t)nz * 4);
        void *out = dmalloc((size_t)(c.B * c.L * c.Hq * c.Dv) * 4);
        call k;
        call_init(&k, &p, LM_CUDA, d[0], d[1], d[2], 0, cut);
        lm_tensor o = ref_tokens(ref_tensor4(out, c.dtype, LM_CUDA, p.so, c.B, c.L, c.Hq, c.Dv), 0, cut);
        k.a.out = &o, k.a.state = S, k.a.normalizer = z;
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        /* backward of [cut, L), then of [0, cut) */
        float *dSm = dmalloc((size_t)nS * 4), *dzm = dmalloc((size_t)nz * 4);
        float *dS0 = dmalloc((size_t)nS * 4), *dz0 = dmalloc((size_t)nz * 4);
        call_init(&k, &p, LM_CUDA, d[0], d[1], d[2], cut, c.L - cut);
        k.a.state = S, k.a.normalizer = z;
        k.g.dstate_out = p.ddSo, k.g.dnormalizer_out = p.ddzo, k.g.dstate_in = dSm, k.g.dnormalizer_in = dzm;
        ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
        call_init(&k, &p, LM_CUDA, d[0], d[1], d[2], 0, cut);
        k.a.state = p.dS0, k.a.normalizer = p.dz0;
        k.g.dstate_out = dSm, k.g.dnormalizer_out = dzm, k.g.dstate_in = dS0, k.g.dnormalizer_in = dz0;
        ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
        grads chained;
        grads_new(&chained, &p);
        for (int j = 0; j < 3; j++)
            ddownload(&chained.g[j], d[j]);
        ddownload_bytes(chained.S, dS0, (size_t)nS * 4);
        ddownload_bytes(chained.z, dz0, (size_t)nz * 4);
        for (int j = 0; j < 5; j++) {
            double *w = malloc((size_t)p.n[j] * sizeof(double));
            for (int64_t x = 0; x < p.n[j]; x++)
                w[x] = grad_at(&whole, j, x);
            int64_t unwritten = 0;
            const double e = error_of(&chained, j, w, w, p.n[j], &unwritten);
            CHECK(e <= 3e-4 && unwritten == 0, "cut %lld: %s chained vs whole %.3g (%lld not written)",
                  (long long)cut, grad_names[j], e, (long long)unwritten);
            free(w);
        }
        grads_free(&chained);
        grads_free(&whole);
        for (int j = 0; j < 3; j++)
            cudaFree(d[j]);
        cudaFree(S), cudaFree(z), cudaFree(out), cudaFree(dSm), cudaFree(dzm), cudaFree(dS0), cudaFree(dz0);
        prob_free(&p);
    }
    gpu_end_test();
}
END_TEST

/* The same call twice gives the same bits (no atomics, fixed orders). */
START_TEST(test_bwd_deterministic)
{
    ref_seed(208);
    for (int causal = 1; causal >= 0; causal--) {
        bcase c = base_case();
        c.causal = causal, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128;
        c.L = c.Lk = 5000, c.mask = 1, c.state = 1, c.decay = causal;
        bprob p;
        prob_init(&p, &c);
        grads a, b;
        run_backward(&p, LM_CUDA, &a);
        run_backward(&p, LM_CUDA, &b);
        for (int i = 0; i < 3; i++)
            CHECK(!memcmp(a.g[i].data, b.g[i].data, (size_t)p.n[i] * lm_dtype_size(c.dtype)),
                  "%s differs between runs (causal %d)", grad_names[i], causal);
        CHECK(!memcmp(a.S, b.S, (size_t)p.n[GS] * 4) && !memcmp(a.z, b.z, (size_t)p.n[GZ] * 4),
              "dS_in differs between runs (causal %d)", causal);
        grads_free(&a);
        grads_free(&b);
        prob_free(&p);
    }
    gpu_end_test();
}
END_TEST

/* Head dims the kernels do not hold: UNSUPPORTED with a message. */
START_TEST(test_bwd_unsupported)
{
    ref_seed(209);
    bcase c = base_case();
    c.B = 1, c.L = c.Lk = 10, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 320;
    bprob p;
    prob_init(&p, &c);
    void *d[3];
    for (int i = 0; i < 3; i++)
        d[i] = dmalloc((size_t)p.n[i] * 2);
    call k;
    call_init(&k, &p, LM_CUDA, d[0], d[1], d[2], 0, c.L);
    ck_assert_int_eq(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(lm_last_error(), "head dims") != NULL, "message: %s", lm_last_error());
    for (int i = 0; i < 3; i++)
        cudaFree(d[i]);
    prob_free(&p);
}
END_TEST

/* The tensor-core backward: ragged lengths, modes, head dims, states in and
 * out, sequence-first strides, against float64 (every case has a reference). */
START_TEST(test_bwd_tensor_core)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 1000, 4097 };
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 96, 40 }, { 256, 64 } };
    ref_seed(211);
    for (int i = 0; i < 6; i++)
        for (int mode = 0; mode < 4; mode++) {
            bcase c = base_case();
            c.Hq = c.Hkv = Ls[i] > 1000 ? 1 : 2;
            c.Dk = c.Dv = Ls[i] > 4000 ? 32 : 64; /* keeps the float64 reference under REF_COST */
            c.L = c.Lk = Ls[i];
            static const int fms[] = { LM_FEATURE_ELU1, LM_FEATURE_RELU, LM_FEATURE_IDENTITY, LM_FEATURE_RELU };
            c.normalize = mode < 2, c.fm = fms[mode];
            c.state = (i + mode) % 2, c.seq_first = mode == 3;
            check_case(&c);
        }
    for (int i = 0; i < 4; i++) {
        bcase c = base_case();
        c.B = 1, c.Hq = c.Hkv = 3, c.Dk = dims[i][0], c.Dv = dims[i][1];
        c.L = c.Lk = 777, c.state = 1;
        check_case(&c);
    }
    bcase c = base_case(); /* one head: the attentions run in segments */
    c.B = 1, c.Hq = c.Hkv = 1, c.L = c.Lk = 3000, c.state = 1;
    check_case(&c);
    gpu_end_test();
}
END_TEST

/* The reduced grid of the compute-sanitizer pass: one causal and one
 * bidirectional case with everything on. */
START_TEST(test_bwd_small)
{
    ref_seed(210);
    for (int causal = 1; causal >= 0; causal--) {
        bcase c = base_case();
        c.B = 1, c.causal = causal, c.decay = causal, c.mask = 1, c.state = 1;
        c.L = 70, c.Lk = causal ? 70 : 45;
        c.precision = LM_PRECISION_ON;
        check_case(&c);
    }
    bcase c = base_case(); /* the tensor-core backward's kernels */
    c.B = 1, c.Hq = c.Hkv = 2, c.L = c.Lk = 70, c.state = 1;
    check_case(&c);
    gpu_end_test();
}
END_TEST

START_TEST(test_bwd_summary)
{
    static const char *dts[] = { "bf16", "f16", "f32", "bf16 tensor cores" };
    for (int dt = 0; dt < 4; dt++)
        for (int i = 0; i < 5; i++) {
            if (worst[dt][i].ratio <= 0)
                continue;
            if (dt == LM_F32 || i >= 3) /* fp32 values: the error itself */
                printf("backward: worst %s %s error vs float64 %.3g (%s)\n", dts[dt], grad_names[i],
                       worst[dt][i].err, worst[dt][i].what);
            else
                printf("backward: worst %s %s error vs float64 %.3g = %.3f x the rounding floor (%s)\n",
                       dts[dt], grad_names[i], worst[dt][i].err, worst[dt][i].ratio, worst[dt][i].what);
        }
}
END_TEST

Suite *gpu_backward_suite(void)
{
    Suite *s = suite_create("gpu_backward");
    TCase *tc = tcase_create("backward");
    tcase_set_timeout(tc, 600);
    if (gpu_small) {
        tcase_add_test(tc, test_bwd_small);
    } else {
        tcase_add_test(tc, test_bwd_lengths);
        tcase_add_test(tc, test_bwd_modes);
        tcase_add_test(tc, test_bwd_heads);
        tcase_add_test(tc, test_bwd_head_dims);
        tcase_add_test(tc, test_bwd_dtypes);
        tcase_add_test(tc, test_bwd_segments);
        tcase_add_test(tc, test_bwd_chain);
        tcase_add_test(tc, test_bwd_deterministic);
        tcase_add_test(tc, test_bwd_tensor_core);
        tcase_add_test(tc, test_bwd_unsupported);
        tcase_add_test(tc, test_bwd_summary);
    }
    suite_add_tcase(s, tc);
    return s;
}
