/*
 * test_attend.c - the attention core (lm_linear_attn_prefill / decode) on the
 * CPU against the float64 reference: every mode, ragged lengths, head dims,
 * GQA, dtypes, strides, state hand-over, precision and NaN containment.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct acase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv;
    int causal, fm, normalize, decay, mask, state_in, seq_first;
    lm_precision precision;
} acase;

static acase base_case(void)
{
    acase c = { .dtype = LM_F32, .B = 1, .L = 100, .Lk = 100, .Hq = 4, .Hkv = 2, .Dk = 32,
                .Dv = 32, .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 };
    return c;
}

/* The inputs, outputs and reference of one case. */
typedef struct problem {
    acase c;
    tbuf q, k, v, out;
    uint8_t *mask;
    float decay[64];
    float *S, *z;      /* state in, then out (fp32, as the library keeps it) */
    double *S0, *z0;   /* state in, float64 */
    double *want, *want_S, *want_z;
    int64_t sq[4], sk[4], sv[4]; /* strides */
} problem;

static void problem_init(problem *p, const acase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, Lk = c->causal ? c->L : c->Lk;
    p->c.Lk = Lk;
    /* relu and identity need inputs that keep the normaliser away from zero. */
    double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, B * c->L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dv);
    p->out = tbuf_new(c->dtype, B * c->L * c->Hq * c->Dv);
    tbuf_random(&p->q, lo, hi);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->sq, B, c->L, c->Hq, c->Dk, c->seq_first);
    ref_strides4(p->sk, B, Lk, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, Lk, c->Hkv, c->Dv, c->seq_first);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    const int64_t nS = B * c->Hkv * c->Dk * c->Dv, nz = B * c->Hkv * c->Dk;
    p->S = malloc((size_t)nS * sizeof(float));
    p->z = malloc((size_t)nz * sizeof(float));
    p->S0 = calloc((size_t)nS, sizeof(double));
    p->z0 = calloc((size_t)nz, sizeof(double));
    for (int64_t i = 0; c->state_in && i < nS; i++)
        p->S0[i] = (float)(ref_uniform() * 2 - 1);
    for (int64_t i = 0; c->state_in && i < nz; i++)
        p->z0[i] = (float)(1 + 4 * ref_uniform());
    for (int64_t i = 0; i < nS; i++)
        p->S[i] = (float)p->S0[i];
    for (int64_t i = 0; i < nz; i++)
        p->z[i] = (float)p->z0[i];

    p->want = malloc((size_t)p->out.n * sizeof(double));
    p->want_S = malloc((size_t)nS * sizeof(double));
    p->want_z = malloc((size_t)nz * sizeof(double));
    ref_problem r = { .B = B, .L = c->L, .Lk = Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk,
                      .Dv = c->Dv, .q = { p->q.ref, { p->sq[0], p->sq[1], p->sq[2], p->sq[3] } },
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .state = c->state_in ? p->S0 : NULL,
                      .normalizer = c->state_in ? p->z0 : NULL, .decay = c->decay ? p->decay : NULL,
                      .causal = c->causal, .feature_map = c->fm, .normalize = c->normalize,
                      .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_attend(&r, p->want, p->want_S, p->want_z);
}

static void problem_free(problem *p)
{
    tbuf_free(&p->q);
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    tbuf_free(&p->out);
    free(p->mask);
    free(p->S);
    free(p->z);
    free(p->S0);
    free(p->z0);
    free(p->want);
    free(p->want_S);
    free(p->want_z);
}

/* Core arguments over tokens [t0, t0+n) of the problem (whole: 0, L). */
typedef struct call {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} call;

static void call_init(call *k, problem *p, int64_t t0, int64_t n, int with_state)
{
    const acase *c = &p->c;
    const int64_t nk = c->causal ? n : c->Lk;
    k->q = ref_tokens(ref_view4(&p->q, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_view4(&p->k, p->sk, c->B, c->Lk, c->Hkv, c->Dk), c->causal ? t0 : 0, nk);
    k->v = ref_tokens(ref_view4(&p->v, p->sv, c->B, c->Lk, c->Hkv, c->Dv), c->causal ? t0 : 0, nk);
    int64_t so[4];
    ref_strides4(so, c->B, c->L, c->Hq, c->Dv, 0);
    k->out = ref_tokens(ref_view4(&p->out, so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d(p->mask + (c->causal ? t0 : 0), LM_BOOL, LM_CPU, c->B, nk);
        k->mask.stride[0] = c->Lk;
        k->a.key_padding_mask = &k->mask;
    }
    if (with_state) {
        k->a.state = p->S;
        k->a.normalizer = p->z;
        k->a.position = t0;
    }
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

/* Runs the case in one prefill; checks output and final state. Returns the error. */
static double check_case(const acase *c)
{
    problem p;
    problem_init(&p, c);
    call k;
    call_init(&k, &p, 0, c->L, 1);
    tbuf_poison(&p.out);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill: %s", lm_last_error());
    ref_err e = ref_compare(&p.out, p.want, p.out.n);
    ref_note(c->dtype, e.rel);
    REF_CHECK(e, ref_bound(c->dtype),
              "(dtype %d B %lld L %lld Lk %lld H %lld/%lld D %lld/%lld causal %d fm %d norm %d "
              "decay %d mask %d state %d)",
              (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk,
              (long long)c->Hq, (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal,
              c->fm, c->normalize, c->decay, c->mask, c->state_in);
    const int64_t nS = c->B * c->Hkv * c->Dk * c->Dv, nz = c->B * c->Hkv * c->Dk;
    ref_err es = ref_compare_f32(p.S, p.want_S, nS), ez = ref_compare_f32(p.z, p.want_z, nz);
    REF_CHECK(es, 2e-5, "(final state S, L %lld)", (long long)c->L);
    REF_CHECK(ez, 2e-5, "(final normaliser z, L %lld)", (long long)c->L);
    problem_free(&p);
    return e.rel;
}

START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 2, 63, 64, 65, 127, 1000, 4097 };
    ref_seed(1);
    for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++)
        for (int64_t B = 1; B <= 3; B += 2) {
            acase c = base_case();
            c.L = c.Lk = Ls[i];
            c.B = B;
            check_case(&c);
        }
}
END_TEST

START_TEST(test_head_dims)
{
    static const int64_t dims[][2] = { { 32, 32 }, { 64, 64 }, { 128, 128 }, { 256, 256 },
                                       { 64, 32 }, { 32, 128 }, { 128, 64 } };
    ref_seed(2);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        acase c = base_case();
        c.Dk = dims[i][0], c.Dv = dims[i][1];
        c.L = c.Lk = 130;
        check_case(&c);
    }
}
END_TEST

START_TEST(test_heads)
{
    static const int64_t heads[][2] = { { 1, 1 }, { 4, 4 }, { 8, 8 }, { 8, 2 }, { 8, 1 } };
    ref_seed(3);
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            acase c = base_case();
            c.Hq = heads[i][0], c.Hkv = heads[i][1];
            c.causal = causal;
            c.B = 3;
            check_case(&c);
        }
}
END_TEST

/* Every combination of the modes of §2 (identity only unnormalised: its
 * normaliser has no sign). */
START_TEST(test_modes)
{
    ref_seed(4);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int st = 0; st < 2; st++) {
                            if (fm == LM_FEATURE_IDENTITY && norm)
                                continue;
                            acase c = base_case();
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask, c.state_in = st;
                            c.B = 2;
                            c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_case(&c);
                        }
}
END_TEST

START_TEST(test_dtypes)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t Ls[] = { 1, 65, 1000 };
    ref_seed(5);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int mode = 0; mode < 3; mode++) {
                acase c = base_case();
                c.dtype = dts[i];
                c.L = c.Lk = Ls[j];
                c.causal = mode != 2;
                c.decay = mode == 1;
                c.mask = mode == 2;
                c.Dk = c.Dv = 64;
                check_case(&c);
            }
}
END_TEST

START_TEST(test_cross_attention)
{
    ref_seed(6);
    static const int64_t sizes[][2] = { { 37, 300 }, { 300, 37 }, { 1, 65 }, { 64, 1 } };
    for (int i = 0; i < 4; i++) {
        acase c = base_case();
        c.causal = 0;
        c.L = sizes[i][0], c.Lk = sizes[i][1];
        c.mask = i & 1;
        c.Dk = 64, c.Dv = 32;
        check_case(&c);
    }
}
END_TEST

/* Sequence-first memory ([L, B, H, D]) read through strides, no copy. */
START_TEST(test_seq_first)
{
    ref_seed(7);
    for (int causal = 0; causal < 2; causal++) {
        acase c = base_case();
        c.seq_first = 1;
        c.causal = causal;
        c.B = 3;
        c.L = c.Lk = 97;
        check_case(&c);
    }
}
END_TEST

/* forward(L) == forward(L1) then forward(L - L1) with the state handed over
 * == L decode steps: all three against the reference. */
START_TEST(test_handover)
{
    static const int64_t splits[] = { 1, 64, 100, 199 };
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    ref_seed(8);
    for (int d = 0; d < 2; d++)
        for (int mode = 0; mode < 2; mode++) {
            acase c = base_case();
            c.dtype = dts[d];
            c.L = c.Lk = 200;
            c.B = 2, c.Hq = 8, c.Hkv = 2;
            c.decay = mode, c.mask = mode;
            problem p;
            problem_init(&p, &c);
            for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
                memset(p.S, 0, (size_t)(c.B * c.Hkv * c.Dk * c.Dv) * sizeof(float));
                memset(p.z, 0, (size_t)(c.B * c.Hkv * c.Dk) * sizeof(float));
                tbuf_poison(&p.out);
                for (int part = 0; part < 2; part++) {
                    int64_t t0 = part ? splits[s] : 0, n = part ? c.L - splits[s] : splits[s];
                    call k;
                    call_init(&k, &p, t0, n, 1);
                    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s",
                                  lm_last_error());
                }
                ref_err e = ref_compare(&p.out, p.want, p.out.n);
                ref_note(c.dtype, e.rel);
                REF_CHECK(e, ref_bound(c.dtype), "(split at %lld)", (long long)splits[s]);
            }
            memset(p.S, 0, (size_t)(c.B * c.Hkv * c.Dk * c.Dv) * sizeof(float));
            memset(p.z, 0, (size_t)(c.B * c.Hkv * c.Dk) * sizeof(float));
            tbuf_poison(&p.out);
            for (int64_t t = 0; t < c.L; t++) {
                call k;
                call_init(&k, &p, t, 1, 1);
                ck_assert_msg(lm_linear_attn_decode(&k.a, NULL) == LM_OK, "%s", lm_last_error());
            }
            ref_err e = ref_compare(&p.out, p.want, p.out.n);
            ref_note(c.dtype, e.rel);
            REF_CHECK(e, ref_bound(c.dtype), "(%lld decode steps)", (long long)c.L);
            problem_free(&p);
        }
}
END_TEST

/* Compensated accumulation on and off, and auto past 65536 tokens. */
START_TEST(test_precision)
{
    ref_seed(9);
    static const lm_precision modes[] = { LM_PRECISION_OFF, LM_PRECISION_ON, LM_PRECISION_AUTO };
    for (int i = 0; i < 3; i++) {
        acase c = base_case();
        c.Hq = c.Hkv = 1;
        c.L = c.Lk = i == 2 ? 70000 : 4097;
        c.precision = modes[i];
        c.decay = i == 1;
        check_case(&c);
    }
}
END_TEST

/* A NaN in one batch row reaches that row's outputs only. */
START_TEST(test_nan_containment)
{
    ref_seed(10);
    for (int causal = 0; causal < 2; causal++) {
        acase c = base_case();
        c.causal = causal;
        c.B = 3;
        c.L = c.Lk = 90;
        problem p;
        problem_init(&p, &c);
        const int64_t t_nan = 40;
        tbuf_set(&p.k, 1 * p.sk[0] + t_nan * p.sk[1], NAN); /* batch 1, head 0, dim 0 */
        call k;
        call_init(&k, &p, 0, c.L, 0);
        tbuf_poison(&p.out);
        ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
        const int64_t row = c.L * c.Hq * c.Dv;
        for (int64_t b = 0; b < c.B; b++)
            for (int64_t t = 0; t < c.L; t++)
                for (int64_t h = 0; h < c.Hq; h++) {
                    const int hit = b == 1 && h / (c.Hq / c.Hkv) == 0 && (!causal || t >= t_nan);
                    int64_t i = b * row + (t * c.Hq + h) * c.Dv;
                    double got = tbuf_get(&p.out, i);
                    if (hit)
                        ck_assert_msg(isnan(got), "b %lld t %lld h %lld should be NaN",
                                      (long long)b, (long long)t, (long long)h);
                    else
                        ck_assert_msg(isfinite(got) && fabs(got - p.want[i]) <= 1e-4 * (1 + fabs(p.want[i])),
                                      "b %lld t %lld h %lld: %g vs %g", (long long)b, (long long)t,
                                      (long long)h, got, p.want[i]);
                }
        problem_free(&p);
    }
}
END_TEST

/* With decay, a masked (padding) key leaves the state exactly as it was:
 * a right-padded prefill ends in the state of the unpadded one, and a
 * masked decode step changes nothing. (It used to decay the state: 0.63
 * apart at L = 100.) */
START_TEST(test_masked_keys_keep_state)
{
    ref_seed(11);
    acase c = base_case();
    c.B = 2, c.L = c.Lk = 100, c.decay = 1;
    problem p;
    problem_init(&p, &c);
    const int64_t keep = 60, nS = c.Hkv * c.Dk * c.Dv, nz = c.Hkv * c.Dk;
    uint8_t mask[200] = { 0 };
    for (int64_t t = keep; t < c.L; t++)
        mask[c.L + t] = 1; /* row 1 padded after `keep` tokens */
    call k;
    call_init(&k, &p, 0, c.L, 1);
    lm_tensor m = lm_tensor_2d(mask, LM_BOOL, LM_CPU, c.B, c.L);
    k.a.key_padding_mask = &m;
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    float *S1 = malloc((size_t)nS * sizeof(float)), *z1 = malloc((size_t)nz * sizeof(float));
    memcpy(S1, p.S + nS, (size_t)nS * sizeof(float));
    memcpy(z1, p.z + nz, (size_t)nz * sizeof(float));

    /* Row 1 alone, its `keep` tokens only, from the same initial state (0). */
    lm_tensor q1 = ref_tokens(ref_view4(&p.q, p.sq, c.B, c.L, c.Hq, c.Dk), 0, keep), k1, v1, o1;
    k1 = ref_tokens(ref_view4(&p.k, p.sk, c.B, c.L, c.Hkv, c.Dk), 0, keep);
    v1 = ref_tokens(ref_view4(&p.v, p.sv, c.B, c.L, c.Hkv, c.Dv), 0, keep);
    int64_t so[4];
    ref_strides4(so, c.B, c.L, c.Hq, c.Dv, 0);
    o1 = ref_tokens(ref_view4(&p.out, so, c.B, c.L, c.Hq, c.Dv), 0, keep);
    lm_tensor *ts[] = { &q1, &k1, &v1, &o1 };
    for (int i = 0; i < 4; i++) {
        ts[i]->data = (char *)ts[i]->data + ts[i]->stride[0] * (int64_t)lm_dtype_size(ts[i]->dtype);
        ts[i]->shape[0] = 1;
    }
    float *S2 = calloc((size_t)nS, sizeof(float)), *z2 = calloc((size_t)nz, sizeof(float));
    lm_core_args a = k.a;
    a.q = &q1, a.k = &k1, a.v = &v1, a.out = &o1, a.key_padding_mask = NULL;
    a.state = S2, a.normalizer = z2;
    ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "%s", lm_last_error());
    double num = 0, den = 0;
    for (int64_t i = 0; i < nS; i++)
        num += (S1[i] - S2[i]) * (double)(S1[i] - S2[i]), den += (double)S2[i] * S2[i];
    for (int64_t i = 0; i < nz; i++)
        num += (z1[i] - z2[i]) * (double)(z1[i] - z2[i]), den += (double)z2[i] * z2[i];
    ck_assert_msg(sqrt(num / den) <= 1e-6, "padded and unpadded final states differ by %.3g",
                  sqrt(num / den));

    /* A masked decode step: the state stays bit for bit. */
    memcpy(S1, S2, (size_t)nS * sizeof(float));
    memcpy(z1, z2, (size_t)nz * sizeof(float));
    uint8_t one = 1;
    lm_tensor m1 = lm_tensor_2d(&one, LM_BOOL, LM_CPU, 1, 1);
    q1.shape[1] = k1.shape[1] = v1.shape[1] = o1.shape[1] = 1;
    a.key_padding_mask = &m1;
    ck_assert_msg(lm_linear_attn_decode(&a, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert_msg(!memcmp(S1, S2, (size_t)nS * sizeof(float)) && !memcmp(z1, z2, (size_t)nz * sizeof(float)),
                  "a masked decode step changed the state");
    free(S1), free(z1), free(S2), free(z2);
    problem_free(&p);
}
END_TEST

/* lm_linear_attn_prefill_ws with a workspace of the queried size gives the
 * allocating call's outputs and state bit for bit; one byte less is refused
 * with nothing written. */
START_TEST(test_caller_workspace)
{
    ref_seed(12);
    acase c = base_case();
    c.B = 2, c.L = c.Lk = 300, c.decay = 1, c.state_in = 1;
    problem p;
    problem_init(&p, &c);
    const int64_t nS = c.B * c.Hkv * c.Dk * c.Dv, nz = c.B * c.Hkv * c.Dk;
    float *S0 = malloc((size_t)nS * sizeof(float)), *z0 = malloc((size_t)nz * sizeof(float));
    memcpy(S0, p.S, (size_t)nS * sizeof(float)), memcpy(z0, p.z, (size_t)nz * sizeof(float));
    call k;
    call_init(&k, &p, 0, c.L, 1);
    tbuf_poison(&p.out);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    tbuf want = tbuf_new(c.dtype, p.out.n);
    memcpy(want.data, p.out.data, (size_t)p.out.n * sizeof(float));
    float *wS = malloc((size_t)nS * sizeof(float));
    memcpy(wS, p.S, (size_t)nS * sizeof(float));

    memcpy(p.S, S0, (size_t)nS * sizeof(float)), memcpy(p.z, z0, (size_t)nz * sizeof(float));
    tbuf_poison(&p.out);
    size_t bytes = 0;
    ck_assert_int_eq(lm_linear_attn_prefill_workspace(&k.a, &bytes), LM_OK);
    ck_assert_uint_gt(bytes, 0);
    void *ws = malloc(bytes);
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, ws, bytes - 1, NULL), LM_ERR_INVALID_ARG, "workspace has");
    ck_assert(isnan(tbuf_get(&p.out, 0)) && !memcmp(p.S, S0, (size_t)nS * sizeof(float)));
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, NULL, bytes, NULL), LM_ERR_INVALID_ARG, "workspace is NULL");
    ck_assert_msg(lm_linear_attn_prefill_ws(&k.a, ws, bytes, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert(!memcmp(want.data, p.out.data, (size_t)p.out.n * sizeof(float)));
    ck_assert(!memcmp(wS, p.S, (size_t)nS * sizeof(float)));
    free(ws), free(wS), free(S0), free(z0);
    tbuf_free(&want);
    problem_free(&p);
}
END_TEST

Suite *attend_suite(void)
{
    Suite *s = suite_create("attend");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_head_dims);
    tcase_add_test(tc, test_heads);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_dtypes);
    tcase_add_test(tc, test_cross_attention);
    tcase_add_test(tc, test_seq_first);
    tcase_add_test(tc, test_handover);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_nan_containment);
    tcase_add_test(tc, test_masked_keys_keep_state);
    tcase_add_test(tc, test_caller_workspace);
    suite_add_tcase(s, tc);
    return s;
}
