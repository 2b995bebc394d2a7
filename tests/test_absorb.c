/*
 * test_absorb.c - lm_linear_attn_absorb on the CPU against the float64
 * reference: the state it leaves is the final state of a causal pass over
 * the same keys (ref_attend), from zero and from a given state, over ragged
 * lengths, masks, decay, several kv heads, head dims, dtypes, feature maps,
 * precision and layouts; segments absorbed one after another equal one
 * call; it equals the prefill's final state bit for bit (same chunk code);
 * refusals name the problem and leave the state as it was. Problems, the
 * reference, the run of a cut sequence and the state's check are
 * absorb_cases.c's; the bound is cpu_dev's state_bound: the final state is
 * fp32 arithmetic on exactly representable inputs (as in test_attend's
 * final-state check), norm-wise within 2e-5 of float64.
 */
#include "absorb_cases.h"

#include <stdlib.h>
#include <string.h>

static acase base_case(void)
{
    acase c = { .dtype = LM_F32, .B = 2, .L = 100, .Hkv = 2, .Dk = 32, .Dv = 32, .fm = LM_FEATURE_ELU1 };
    return c;
}

/* One call over the whole sequence. */
static void check_case(const acase *c)
{
    aprob p;
    aprob_init(&p, &cpu_dev, c);
    float *S, *z;
    absorb_run(&p, &cpu_dev, &c->L, 1, &S, &z);
    absorb_check_state(&p, S, z, "one call");
    free(S);
    free(z);
    aprob_free(&p);
}

START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 2, 63, 64, 65, 127, 129, 1000, 4097 };
    ref_seed(101);
    for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++)
        for (int st = 0; st < 2; st++) {
            acase c = base_case();
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
    acase base = base_case();
    base.L = 150;
    absorb_case_modes(&base, 1, check_case);
}
END_TEST

START_TEST(test_shapes)
{
    static const int64_t dims[][3] = { { 1, 32, 32 }, { 3, 64, 64 }, { 2, 128, 128 }, { 1, 256, 256 },
                                       { 2, 64, 32 }, { 5, 32, 128 }, { 2, 59, 111 } };
    ref_seed(103);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (int sf = 0; sf < 2; sf++) {
            acase c = base_case();
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
            acase c = base_case();
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
        acase c = base_case();
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
        acase c = base_case();
        c.L = 200;
        c.Hkv = 3;
        c.decay = c.mask = c.state_in = mode;
        aprob p;
        aprob_init(&p, &cpu_dev, &c);
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            float *S, *z;
            absorb_run(&p, &cpu_dev, cuts[i], 3, &S, &z);
            absorb_check_state(&p, S, z, "three segments");
            free(S);
            free(z);
        }
        aprob_free(&p);
    }
}
END_TEST

/* The same chunk code as the prefill's state update: its final state, bit for bit. */
START_TEST(test_same_as_prefill)
{
    ref_seed(107);
    for (int mode = 0; mode < 2; mode++) {
        acase c = base_case();
        c.L = 300;
        c.decay = c.mask = c.state_in = mode;
        aprob p;
        aprob_init(&p, &cpu_dev, &c);
        float *S, *z, *Sp, *zp;
        absorb_run(&p, &cpu_dev, &c.L, 1, &S, &z);
        aprob_state0(&p, &Sp, &zp);
        tbuf q = tbuf_new(c.dtype, c.B * c.L * 2 * c.Hkv * c.Dk), out = tbuf_new(c.dtype, c.B * c.L * 2 * c.Hkv * c.Dv);
        tbuf_random(&q, -1.0, 1.0);
        acall k;
        acall_init(&k, &p, LM_CPU, Sp, zp, 0, c.L);
        lm_tensor tq = lm_tensor_4d(q.data, c.dtype, LM_CPU, c.B, c.L, 2 * c.Hkv, c.Dk);
        lm_tensor to = lm_tensor_4d(out.data, c.dtype, LM_CPU, c.B, c.L, 2 * c.Hkv, c.Dv);
        k.a.q = &tq, k.a.out = &to; /* GQA: two query heads per kv head */
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        ck_assert_msg(memcmp(Sp, S, (size_t)p.nS * sizeof(float)) == 0, "S differs from the prefill's");
        ck_assert_msg(memcmp(zp, z, (size_t)p.nz * sizeof(float)) == 0, "z differs from the prefill's");
        absorb_check_state(&p, S, z, "against the prefill");
        tbuf_free(&q);
        tbuf_free(&out);
        free(S), free(z), free(Sp), free(zp);
        aprob_free(&p);
    }
}
END_TEST

/* q and out are not read: any descriptor (or none) gives the same state. */
START_TEST(test_q_out_unused)
{
    ref_seed(108);
    acase c = base_case();
    aprob p;
    aprob_init(&p, &cpu_dev, &c);
    float *S, *z;
    aprob_state0(&p, &S, &z);
    lm_tensor junk = { .data = NULL, .dtype = LM_BOOL, .ndim = 1 };
    acall k;
    acall_init(&k, &p, LM_CPU, S, z, 0, c.L);
    k.a.q = &junk, k.a.out = &junk, k.a.is_causal = 0;
    ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    absorb_check_state(&p, S, z, "junk q and out");
    free(S), free(z);
    aprob_free(&p);
}
END_TEST

/* Every refusal names the problem and leaves S and z as they were. */
START_TEST(test_refusals)
{
    ref_seed(109);
    acase c = base_case();
    c.state_in = 1;
    aprob p;
    aprob_init(&p, &cpu_dev, &c);
    float *S, *z;
    aprob_state0(&p, &S, &z);
    const float bad_decay[2] = { 0.5f, 1.5f };
    lm_tensor v_short, mask_bad, k_bool;
    for (int i = 0; i < 11; i++) {
        acall k;
        acall_init(&k, &p, LM_CPU, S, z, 0, c.L);
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
            mask_bad = lm_tensor_2d(S, LM_BOOL, LM_CPU, c.B, c.L + 1), k.a.key_padding_mask = &mask_bad;
            needle = "mask";
            break;
        case 7: k.a.decay = bad_decay, needle = "decay"; break;
        case 8: k.a.feature_map = (lm_feature_map)7, needle = "feature"; break;
        case 9: k_bool = k.k, k_bool.dtype = LM_BOOL, k.a.k = &k_bool, needle = "k must be"; break;
        case 10: k.a.position = -1, needle = "position"; break;
        }
        EXPECT_ERR(lm_linear_attn_absorb(&k.a, NULL), want, needle);
        ck_assert_msg(memcmp(S, p.S0, (size_t)p.nS * sizeof(float)) == 0, "case %d changed S", i);
        ck_assert_msg(memcmp(z, p.z0, (size_t)p.nz * sizeof(float)) == 0, "case %d changed z", i);
    }
    EXPECT_ERR(lm_linear_attn_absorb(NULL, NULL), LM_ERR_INVALID_ARG, "args");
    free(S);
    free(z);
    aprob_free(&p);
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
