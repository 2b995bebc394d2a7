/*
 * test_absorb.c - lm_linear_attn_absorb on the CPU against the float64
 * reference: the state it leaves is the final state of a causal pass over
 * the same keys (ref_attend), from zero and from a given state, over ragged
 * lengths, masks, decay, several kv heads, head dims, dtypes, feature maps,
 * precision and layouts; segments absorbed one after another equal one
 * call; it equals the prefill's final state bit for bit (same chunk code);
 * refusals name the problem and leave the state as it was.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The final state is fp32 arithmetic on exactly representable inputs (as in
 * test_attend's final-state check): norm-wise within 2e-5 of float64. */
#define STATE_BOUND 2e-5

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Hkv, Dk, Dv;
    int fm, decay, mask, state_in, seq_first;
    lm_precision precision;
} bcase;

static bcase base_case(void)
{
    bcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Hkv = 2, .Dk = 32, .Dv = 32,
                .fm = LM_FEATURE_ELU1 };
    return c;
}

typedef struct problem {
    bcase c;
    tbuf k, v;
    uint8_t *mask;
    float decay[64];
    float *S, *z;            /* the state the library updates */
    double *want_S, *want_z; /* the reference's final state */
    int64_t sk[4], sv[4];
    int64_t nS, nz;
} problem;

static void problem_init(problem *p, const bcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->sk, B, L, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, L, c->Hkv, c->Dv, c->seq_first);
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->S = malloc((size_t)p->nS * sizeof(float));
    p->z = malloc((size_t)p->nz * sizeof(float));
    double *S0 = calloc((size_t)p->nS, sizeof(double)), *z0 = calloc((size_t)p->nz, sizeof(double));
    for (int64_t i = 0; i < p->nS; i++)
        S0[i] = p->S[i] = c->state_in ? (float)(ref_uniform() * 2 - 1) : 0.0f;
    for (int64_t i = 0; i < p->nz; i++)
        z0[i] = p->z[i] = c->state_in ? (float)(1 + 4 * ref_uniform()) : 0.0f;
    p->want_S = malloc((size_t)p->nS * sizeof(double));
    p->want_z = malloc((size_t)p->nz * sizeof(double));
    ck_assert(S0 && z0 && p->S && p->z && p->want_S && p->want_z);
    ref_problem r = { .B = B, .Lk = L, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .state = S0, .normalizer = z0,
                      .decay = c->decay ? p->decay : NULL, .feature_map = c->fm };
    ref_absorb(&r, p->want_S, p->want_z);
    free(S0);
    free(z0);
}

static void problem_free(problem *p)
{
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    free(p->mask);
    free(p->S);
    free(p->z);
    free(p->want_S);
    free(p->want_z);
}

/* *S, *z = copies of the problem's state as it is now (malloc'd). */
static void state_copy(const problem *p, float **S, float **z)
{
    *S = malloc((size_t)p->nS * sizeof(float));
    *z = malloc((size_t)p->nz * sizeof(float));
    ck_assert(*S && *z);
    memcpy(*S, p->S, (size_t)p->nS * sizeof(float));
    memcpy(*z, p->z, (size_t)p->nz * sizeof(float));
}

typedef struct call {
    lm_tensor k, v, mask;
    lm_core_args a;
} call;

/* Absorb arguments over tokens [t0, t0 + n) into the problem's state. */
static void call_init(call *k, problem *p, int64_t t0, int64_t n)
{
    const bcase *c = &p->c;
    const size_t es = lm_dtype_size(c->dtype);
    k->k = (lm_tensor){ .data = (char *)p->k.data + t0 * p->sk[1] * (int64_t)es, .dtype = c->dtype,
                        .device = LM_CPU, .ndim = 4, .shape = { c->B, n, c->Hkv, c->Dk } };
    k->v = (lm_tensor){ .data = (char *)p->v.data + t0 * p->sv[1] * (int64_t)es, .dtype = c->dtype,
                        .device = LM_CPU, .ndim = 4, .shape = { c->B, n, c->Hkv, c->Dv } };
    memcpy(k->k.stride, p->sk, sizeof p->sk);
    memcpy(k->v.stride, p->sv, sizeof p->sv);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d(p->mask + t0, LM_BOOL, LM_CPU, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = p->S, k->a.normalizer = p->z;
    k->a.position = t0;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

static void check_state(const problem *p, const char *what)
{
    const bcase *c = &p->c;
    ref_err es = ref_compare_f32(p->S, p->want_S, p->nS), ez = ref_compare_f32(p->z, p->want_z, p->nz);
    REF_CHECK(es, STATE_BOUND, "(S, %s: dtype %d B %lld L %lld Hkv %lld D %lld/%lld fm %d decay %d mask %d state %d)",
              what, (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Hkv, (long long)c->Dk,
              (long long)c->Dv, c->fm, c->decay, c->mask, c->state_in);
    REF_CHECK(ez, STATE_BOUND, "(z, %s: L %lld)", what, (long long)c->L);
}

/* One call over the whole sequence. */
static void check_case(const bcase *c)
{
    problem p;
    problem_init(&p, c);
    call k;
    call_init(&k, &p, 0, c->L);
    ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "absorb: %s", lm_last_error());
    check_state(&p, "one call");
    problem_free(&p);
}

START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 2, 63, 64, 65, 127, 129, 1000, 4097 };
    ref_seed(101);
    for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++)
        for (int st = 0; st < 2; st++) {
            bcase c = base_case();
            c.L = Ls[i];
            c.B = 1 + 2 * st;
            c.state_in = st;
            check_case(&c);
        }
}
END_TEST

/* Feature maps x decay x mask x initial state, several kv heads with
 * different decays. */
START_TEST(test_modes)
{
    ref_seed(102);
    for (int fm = 0; fm < 3; fm++)
        for (int decay = 0; decay < 2; decay++)
            for (int mask = 0; mask < 2; mask++)
                for (int st = 0; st < 2; st++) {
                    bcase c = base_case();
                    c.fm = fm, c.decay = decay, c.mask = mask, c.state_in = st;
                    c.Hkv = 4;
                    c.L = 150;
                    check_case(&c);
                }
}
END_TEST

START_TEST(test_shapes)
{
    static const int64_t dims[][3] = { { 1, 32, 32 }, { 3, 64, 64 }, { 2, 128, 128 }, { 1, 256, 256 },
                                       { 2, 64, 32 }, { 5, 32, 128 }, { 2, 59, 111 } };
    ref_seed(103);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (int sf = 0; sf < 2; sf++) {
            bcase c = base_case();
            c.Hkv = dims[i][0], c.Dk = dims[i][1], c.Dv = dims[i][2];
            c.L = 97;
            c.decay = 1, c.mask = 1, c.seq_first = sf;
            check_case(&c);
        }
}
END_TEST

START_TEST(test_dtypes)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    ref_seed(104);
    for (int i = 0; i < 3; i++)
        for (int mode = 0; mode < 2; mode++) {
            bcase c = base_case();
            c.dtype = dts[i];
            c.L = 333;
            c.Dk = c.Dv = 64;
            c.decay = c.mask = c.state_in = mode;
            check_case(&c);
        }
}
END_TEST

/* Compensated accumulation on and off, and auto past 65536 tokens. */
START_TEST(test_precision)
{
    static const lm_precision modes[] = { LM_PRECISION_OFF, LM_PRECISION_ON, LM_PRECISION_AUTO };
    ref_seed(105);
    for (int i = 0; i < 3; i++) {
        bcase c = base_case();
        c.B = 1, c.Hkv = 1, c.Dk = c.Dv = 16;
        c.L = i == 2 ? 70000 : 4097;
        c.precision = modes[i];
        c.decay = i == 1;
        check_case(&c);
    }
}
END_TEST

/* Segments absorbed one after another (ragged cuts, one of them a single
 * token) leave the state of one call over the whole sequence. */
START_TEST(test_segments)
{
    static const int64_t cuts[][3] = { { 1, 2, 200 }, { 63, 64, 200 }, { 65, 130, 200 }, { 100, 199, 200 } };
    ref_seed(106);
    for (int mode = 0; mode < 2; mode++) {
        bcase c = base_case();
        c.L = 200;
        c.Hkv = 3;
        c.decay = c.mask = c.state_in = mode;
        problem p;
        problem_init(&p, &c);
        float *S0, *z0;
        state_copy(&p, &S0, &z0);
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            memcpy(p.S, S0, (size_t)p.nS * sizeof(float));
            memcpy(p.z, z0, (size_t)p.nz * sizeof(float));
            for (int s = 0; s < 3; s++) {
                const int64_t t0 = s ? cuts[i][s - 1] : 0;
                call k;
                call_init(&k, &p, t0, cuts[i][s] - t0);
                ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "%s", lm_last_error());
            }
            check_state(&p, "three segments");
        }
        free(S0);
        free(z0);
        problem_free(&p);
    }
}
END_TEST

/* The same chunk code as the prefill's state update: its final state, bit for bit. */
START_TEST(test_same_as_prefill)
{
    ref_seed(107);
    for (int mode = 0; mode < 2; mode++) {
        bcase c = base_case();
        c.L = 300;
        c.decay = c.mask = c.state_in = mode;
        problem p;
        problem_init(&p, &c);
        float *S, *z;
        state_copy(&p, &S, &z);
        tbuf q = tbuf_new(c.dtype, c.B * c.L * 2 * c.Hkv * c.Dk), out = tbuf_new(c.dtype, c.B * c.L * 2 * c.Hkv * c.Dv);
        tbuf_random(&q, -1.0, 1.0);
        call k;
        call_init(&k, &p, 0, c.L);
        ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        lm_tensor tq = lm_tensor_4d(q.data, c.dtype, LM_CPU, c.B, c.L, 2 * c.Hkv, c.Dk);
        lm_tensor to = lm_tensor_4d(out.data, c.dtype, LM_CPU, c.B, c.L, 2 * c.Hkv, c.Dv);
        k.a.q = &tq, k.a.out = &to; /* GQA: two query heads per kv head */
        k.a.state = S, k.a.normalizer = z;
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        ck_assert_msg(memcmp(S, p.S, (size_t)p.nS * sizeof(float)) == 0, "S differs from the prefill's");
        ck_assert_msg(memcmp(z, p.z, (size_t)p.nz * sizeof(float)) == 0, "z differs from the prefill's");
        check_state(&p, "against the prefill");
        tbuf_free(&q);
        tbuf_free(&out);
        free(S);
        free(z);
        problem_free(&p);
    }
}
END_TEST

/* q and out are not read: any descriptor (or none) gives the same state. */
START_TEST(test_q_out_unused)
{
    ref_seed(108);
    bcase c = base_case();
    problem p;
    problem_init(&p, &c);
    lm_tensor junk = { .data = NULL, .dtype = LM_BOOL, .ndim = 1 };
    call k;
    call_init(&k, &p, 0, c.L);
    k.a.q = &junk, k.a.out = &junk, k.a.is_causal = 0;
    ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    check_state(&p, "junk q and out");
    problem_free(&p);
}
END_TEST

/* Every refusal names the problem and leaves S and z as they were. */
START_TEST(test_refusals)
{
    ref_seed(109);
    bcase c = base_case();
    c.state_in = 1;
    problem p;
    problem_init(&p, &c);
    float *S0, *z0;
    state_copy(&p, &S0, &z0);
    const float bad_decay[2] = { 0.5f, 1.5f };
    lm_tensor v_short, mask_bad, k_bool;
    for (int i = 0; i < 11; i++) {
        call k;
        call_init(&k, &p, 0, c.L);
        lm_status want = LM_ERR_INVALID_ARG;
        const char *needle = "";
        switch (i) {
        case 0: k.a.struct_size = 0, needle = "struct_size"; break;
        case 1: k.a.state = NULL, needle = "state"; break;
        case 2: k.a.normalizer = NULL, needle = "normalizer"; break;
        case 3: k.a.k = NULL, needle = "k and v"; break;
        case 4: k.a.v = NULL, needle = "k and v"; break;
        case 5:
            v_short = k.v, v_short.shape[1] = c.L - 1, k.a.v = &v_short, needle = "v";
            break;
        case 6:
            mask_bad = lm_tensor_2d(p.S, LM_BOOL, LM_CPU, c.B, c.L + 1), k.a.key_padding_mask = &mask_bad;
            needle = "mask";
            break;
        case 7: k.a.decay = bad_decay, needle = "decay"; break;
        case 8: k.a.feature_map = (lm_feature_map)7, needle = "feature"; break;
        case 9: k_bool = k.k, k_bool.dtype = LM_BOOL, k.a.k = &k_bool, needle = "k must be"; break;
        case 10: k.a.position = -1, needle = "position"; break;
        }
        EXPECT_ERR(lm_linear_attn_absorb(&k.a, NULL), want, needle);
        ck_assert_msg(memcmp(S0, p.S, (size_t)p.nS * sizeof(float)) == 0, "case %d changed S", i);
        ck_assert_msg(memcmp(z0, p.z, (size_t)p.nz * sizeof(float)) == 0, "case %d changed z", i);
    }
    EXPECT_ERR(lm_linear_attn_absorb(NULL, NULL), LM_ERR_INVALID_ARG, "args");
    free(S0);
    free(z0);
    problem_free(&p);
}
END_TEST

Suite *absorb_suite(void)
{
    Suite *s = suite_create("absorb");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_dtypes);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_segments);
    tcase_add_test(tc, test_same_as_prefill);
    tcase_add_test(tc, test_q_out_unused);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}
