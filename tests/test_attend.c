/*
 * test_attend.c - the attention core (lm_linear_attn_prefill / decode) on the
 * CPU against the float64 reference: the shared case grid (attend_cases.c:
 * lengths, head dims, GQA, every mode, dtypes, cross-attention, strides,
 * precision, state hand-over, decode steps) on cpu_dev, and the CPU's own
 * tests: NaN containment, masked keys keep the state, caller workspace.
 * Bounds are cpu_dev's (ref.h): the outputs ref_bound per dtype (f32 2e-6,
 * f16 5e-4, bf16 3e-3), the fp32 state 2e-5.
 */
#include "attend_cases.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const attend_env cpu_env = {
    .dev = &cpu_dev,
    .base = { .dtype = LM_F32, .B = 1, .L = 100, .Lk = 100, .Hq = 4, .Hkv = 2, .Dk = 32, .Dv = 32, .causal = 1,
              .fm = LM_FEATURE_ELU1, .normalize = 1 },
};

/* Grid entry _i (attend_grids) on the CPU. */
START_TEST(test_grid)
{
    attend_grid_run(_i, &cpu_env, 1);
}
END_TEST

/* A NaN in one batch row reaches that row's outputs only (no state). */
START_TEST(test_nan_containment)
{
    ref_seed(10);
    for (int causal = 0; causal < 2; causal++) {
        atcase c = cpu_env.base;
        c.causal = causal;
        c.B = 3;
        c.L = c.Lk = 90;
        atprob p;
        atprob_init(&p, &cpu_dev, &c);
        const int64_t t_nan = 40;
        tbuf_set(&p.k, 1 * p.sk[0] + t_nan * p.sk[1], NAN); /* batch 1, head 0, dim 0 */
        atrun r;
        atrun_new(&r, &p, &cpu_dev);
        atcall k;
        atcall_init(&k, &p, &r, 0, c.L);
        k.a.state = k.a.normalizer = NULL;
        ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
        tbuf out = atrun_out(&p, &r);
        const int64_t row = c.L * c.Hq * c.Dv;
        for (int64_t b = 0; b < c.B; b++)
            for (int64_t t = 0; t < c.L; t++)
                for (int64_t h = 0; h < c.Hq; h++) {
                    const int hit = b == 1 && h / (c.Hq / c.Hkv) == 0 && (!causal || t >= t_nan);
                    int64_t i = b * row + (t * c.Hq + h) * c.Dv;
                    double got = tbuf_get(&out, i);
                    if (hit)
                        ck_assert_msg(isnan(got), "b %lld t %lld h %lld should be NaN",
                                      (long long)b, (long long)t, (long long)h);
                    else
                        ck_assert_msg(isfinite(got) && fabs(got - p.want[i]) <= 1e-4 * (1 + fabs(p.want[i])),
                                      "b %lld t %lld h %lld: %g vs %g", (long long)b, (long long)t,
                                      (long long)h, got, p.want[i]);
                }
        tbuf_free(&out);
        atrun_free(&r);
        atprob_free(&p);
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
    atcase c = cpu_env.base;
    c.B = 2, c.L = c.Lk = 100, c.decay = 1;
    atprob p;
    atprob_init(&p, &cpu_dev, &c);
    atrun r;
    atrun_new(&r, &p, &cpu_dev);
    const int64_t keep = 60, nS = c.Hkv * c.Dk * c.Dv, nz = c.Hkv * c.Dk;
    uint8_t mask[200] = { 0 };
    for (int64_t t = keep; t < c.L; t++)
        mask[c.L + t] = 1; /* row 1 padded after `keep` tokens */
    atcall k;
    atcall_init(&k, &p, &r, 0, c.L);
    lm_tensor m = lm_tensor_2d(mask, LM_BOOL, LM_CPU, c.B, c.L);
    k.a.key_padding_mask = &m;
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    float *S1 = malloc((size_t)nS * sizeof(float)), *z1 = malloc((size_t)nz * sizeof(float));
    memcpy(S1, r.S + nS, (size_t)nS * sizeof(float));
    memcpy(z1, r.z + nz, (size_t)nz * sizeof(float));

    /* Row 1 alone, its `keep` tokens only, from the same initial state (0). */
    lm_tensor q1 = ref_tokens(ref_view4(&p.q, p.sq, c.B, c.L, c.Hq, c.Dk), 0, keep), k1, v1, o1;
    k1 = ref_tokens(ref_view4(&p.k, p.sk, c.B, c.L, c.Hkv, c.Dk), 0, keep);
    v1 = ref_tokens(ref_view4(&p.v, p.sv, c.B, c.L, c.Hkv, c.Dv), 0, keep);
    o1 = ref_tokens(ref_tensor4(r.out, c.dtype, LM_CPU, p.so, c.B, c.L, c.Hq, c.Dv), 0, keep);
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
    atrun_free(&r);
    atprob_free(&p);
}
END_TEST

/* lm_linear_attn_prefill_ws with a workspace of the queried size gives the
 * allocating call's outputs and state bit for bit; one byte less is refused
 * with nothing written. */
START_TEST(test_caller_workspace)
{
    ref_seed(12);
    atcase c = cpu_env.base;
    c.B = 2, c.L = c.Lk = 300, c.decay = 1, c.state_in = 1;
    atprob p;
    atprob_init(&p, &cpu_dev, &c);
    atrun r;
    atrun_new(&r, &p, &cpu_dev);
    const size_t bout = (size_t)p.nout * lm_dtype_size(c.dtype), bS = (size_t)p.nS * sizeof(float);
    atcall k;
    atcall_init(&k, &p, &r, 0, c.L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    void *want = malloc(bout);
    float *wS = malloc(bS);
    memcpy(want, r.out, bout);
    memcpy(wS, r.S, bS);

    atrun_reset(&r, &p);
    size_t bytes = 0;
    ck_assert_int_eq(lm_linear_attn_prefill_workspace(&k.a, &bytes), LM_OK);
    ck_assert_uint_gt(bytes, 0);
    void *ws = malloc(bytes);
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, ws, bytes - 1, NULL), LM_ERR_INVALID_ARG, "workspace has");
    ck_assert(isnan(((float *)r.out)[0]) && !memcmp(r.S, p.S0, bS));
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, NULL, bytes, NULL), LM_ERR_INVALID_ARG, "workspace is NULL");
    ck_assert_msg(lm_linear_attn_prefill_ws(&k.a, ws, bytes, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert(!memcmp(want, r.out, bout));
    ck_assert(!memcmp(wS, r.S, bS));
    free(ws), free(wS), free(want);
    atrun_free(&r);
    atprob_free(&p);
}
END_TEST

Suite *attend_suite(void)
{
    Suite *s = suite_create("attend");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_grid, 0, attend_ngrids);
    tcase_add_test(tc, test_nan_containment);
    tcase_add_test(tc, test_masked_keys_keep_state);
    tcase_add_test(tc, test_caller_workspace);
    suite_add_tcase(s, tc);
    return s;
}
