/*
 * test_hybrid.c - hybrid attention in the core (lm_linear_attn_prefill /
 * decode with LM_ATTENTION_HYBRID) on the CPU against the float64 reference
 * of docs/DESIGN.md §9 (ref_hybrid): ragged lengths around W and s, several
 * (W, s) with s = 0 and W = 1, dtypes, layouts, GQA, gates, masks, the
 * final state (S, z and every window slot), prefill == split prefill ==
 * decode steps, and bad arguments refused with nothing changed. Problems,
 * reference, checks and the scenarios both backends run are hybrid_cases.c's
 * (bounds of cpu_dev: ref_bound, the state 2e-5).
 */
#include "hybrid_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hcase base_case(void)
{
    hcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Hq = 4, .Hkv = 2, .Dk = 32, .Dv = 32,
                .W = 16, .s = 4, .fm = LM_FEATURE_ELU1, .gate = 1 };
    return c;
}

/* The whole sequence in one prefill, with a state and without one. */
static void check_case(const hcase *c)
{
    hprob p;
    hprob_init(&p, &cpu_dev, c);
    hybrid_check_whole(&p);
    hprob_free(&p);
}

START_TEST(test_lengths)
{
    ref_seed(101);
    const hcase base = base_case();
    hybrid_case_lengths(&base, 6, 7, check_case);
}
END_TEST

START_TEST(test_shapes)
{
    static const int64_t shapes[][4] = { /* Hq, Hkv, Dk, Dv */
        { 1, 1, 32, 32 }, { 8, 8, 16, 16 }, { 8, 2, 32, 32 }, { 4, 1, 24, 40 }, { 2, 2, 64, 8 },
        { 2, 1, 128, 128 } };
    ref_seed(102);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        hcase c = base_case();
        c.Hq = shapes[i][0], c.Hkv = shapes[i][1], c.Dk = shapes[i][2], c.Dv = shapes[i][3];
        c.L = 150;
        c.W = 20, c.s = 3;
        check_case(&c);
    }
}
END_TEST

START_TEST(test_dtypes_layouts)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16, LM_F16 };
    ref_seed(103);
    for (int d = 0; d < 3; d++)
        for (int seq_first = 0; seq_first < 2; seq_first++)
            for (int fm = 0; fm < 2; fm++) {
                hcase c = base_case();
                c.dtype = dts[d], c.seq_first = seq_first, c.fm = fm;
                c.L = 301, c.W = 32, c.s = 2, c.B = 3;
                check_case(&c);
            }
}
END_TEST

/* A masked key leaves both sets; the window stays the positions (t-W, t]. */
START_TEST(test_masks)
{
    ref_seed(104);
    for (int w = 0; w < 6; w++) {
        hcase c = base_case();
        c.W = hybrid_windows[w][0], c.s = hybrid_windows[w][1];
        c.L = 500, c.mask = 1, c.B = 3;
        check_case(&c);
    }
    /* Every key of batch row 1 masked: its outputs are 0, no slot is valid. */
    hcase c = base_case();
    c.mask = 1, c.L = 90;
    hprob p;
    hprob_init(&p, &cpu_dev, &c);
    for (int64_t t = 0; t < c.L; t++)
        p.mask[c.L + t] = 1; /* the host's mask, which the CPU reads (p.want is not used) */
    void *out = hout_new(&p);
    hstate st;
    hstate_new(&st, &p);
    hcall k;
    hcall_init(&k, &p, LM_CPU, out, &st, 0, c.L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    tbuf got = hout_fetch(&p, out);
    const int64_t row = c.L * c.Hq * c.Dv;
    for (int64_t i = row; i < 2 * row; i++)
        ck_assert_msg(tbuf_get(&got, i) == 0.0, "output %lld of a fully masked row is %g",
                      (long long)i, tbuf_get(&got, i));
    for (int64_t i = c.Hkv * (c.s + c.W); i < 2 * c.Hkv * (c.s + c.W); i++)
        ck_assert_msg(st.pos[i] <= 0, "a fully masked row left a slot with a key");
    tbuf_free(&got);
    hstate_free(&st, &p);
    hout_free(&p, out);
    hprob_free(&p);
}
END_TEST

/* The exp gate form against the reference (hybrid_case_gate_exp). */
START_TEST(test_gate_exp)
{
    ref_seed(110);
    const hcase base = base_case();
    hybrid_case_gate_exp(&base, 3, check_case);
}
END_TEST

/* prefill == split prefill (hybrid_case_splits) == decode steps, with masks,
 * checked against the reference with the final state; the gate forms
 * alternate over the table. */
START_TEST(test_split_and_steps)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    ref_seed(105);
    for (int w = 0; w < 6; w++)
        for (int d = 0; d < 2; d++) {
            hcase c = base_case();
            c.W = hybrid_windows[w][0], c.s = hybrid_windows[w][1];
            c.dtype = dts[d];
            c.L = 260, c.mask = 1, c.Hq = 4, c.Hkv = 1;
            c.gate_form = (w + d) % 2 ? LM_GATE_EXP : LM_GATE_SIGMOID;
            hprob p;
            hprob_init(&p, &cpu_dev, &c);
            hybrid_case_splits(&p);
            void *out = hout_new(&p);
            hstate st;
            hstate_new(&st, &p);
            const int64_t all[] = { 0, c.L };
            hybrid_run_parts(&p, out, &st, all, 2, 1);
            hybrid_check_out(&p, out, "decode steps");
            hybrid_check_state(&p, &st, "decode steps");
            /* A prefill, steps, a prefill. */
            const int64_t mixed[] = { 0, 70, 75 + c.W, c.L };
            hybrid_run_parts(&p, out, &st, mixed, 2, 0);
            hcall k;
            for (int64_t t = mixed[1]; t < mixed[2]; t++) {
                hcall_init(&k, &p, LM_CPU, out, &st, t, 1);
                ck_assert(lm_linear_attn_decode(&k.a, NULL) == LM_OK);
            }
            hcall_init(&k, &p, LM_CPU, out, &st, mixed[2], c.L - mixed[2]);
            ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
            hybrid_check_out(&p, out, "prefill, steps, prefill");
            hybrid_check_state(&p, &st, "prefill, steps, prefill");
            hstate_free(&st, &p);
            hout_free(&p, out);
            hprob_free(&p);
        }
}
END_TEST

/* W >= L: every key is in the window, so the output is softmax attention
 * (gamma cancels); checked against a direct softmax. */
START_TEST(test_full_window_is_softmax)
{
    ref_seed(106);
    hcase c = base_case();
    c.L = 50, c.W = 64, c.s = 0, c.Hq = c.Hkv = 2;
    hprob p;
    hprob_init(&p, &cpu_dev, &c);
    void *out = hout_new(&p);
    hcall k;
    hcall_init(&k, &p, LM_CPU, out, NULL, 0, c.L);
    ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
    double *soft = calloc((size_t)p.nout, sizeof(double));
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t h = 0; h < c.Hq; h++)
            for (int64_t t = 0; t < c.L; t++) {
                double l[64], m = -INFINITY, sum = 0;
                for (int64_t j = 0; j <= t; j++) {
                    l[j] = 0;
                    for (int64_t x = 0; x < c.Dk; x++)
                        l[j] += p.q.ref[b * p.sq[0] + t * p.sq[1] + h * p.sq[2] + x] *
                                p.k.ref[b * p.sk[0] + j * p.sk[1] + h * p.sk[2] + x];
                    l[j] /= sqrt((double)c.Dk);
                    m = l[j] > m ? l[j] : m;
                }
                double *o = soft + ((b * c.L + t) * c.Hq + h) * c.Dv;
                for (int64_t j = 0; j <= t; j++) {
                    const double a = exp(l[j] - m);
                    sum += a;
                    for (int64_t e = 0; e < c.Dv; e++)
                        o[e] += a * p.v.ref[b * p.sv[0] + j * p.sv[1] + h * p.sv[2] + e];
                }
                for (int64_t e = 0; e < c.Dv; e++)
                    o[e] /= sum;
            }
    /* eps / (gamma sum) is below 1e-6 of the output here, well inside the bound. */
    tbuf got = hout_fetch(&p, out);
    ref_err e = ref_compare(&got, soft, p.nout);
    REF_CHECK(e, 1e-5, "(hybrid with W >= L vs softmax)");
    free(soft);
    tbuf_free(&got);
    hout_free(&p, out);
    hprob_free(&p);
}
END_TEST

/* Compensated accumulation of the evicted tokens' state (precision on, and
 * auto past 65536 tokens) agrees with the reference. */
START_TEST(test_precision)
{
    ref_seed(107);
    static const lm_precision modes[] = { LM_PRECISION_ON, LM_PRECISION_AUTO };
    for (int i = 0; i < 2; i++) {
        hcase c = base_case();
        c.B = 1, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 16;
        c.L = i ? 70000 : 3000;
        c.precision = modes[i];
        check_case(&c);
    }
}
END_TEST

/* Every bad argument gets a clear status and message, and changes neither
 * the output nor any part of the state. */
START_TEST(test_bad_arguments)
{
    ref_seed(108);
    hcase c = base_case();
    c.L = 40;
    hprob p;
    hprob_init(&p, &cpu_dev, &c);
    void *out = hout_new(&p);
    hstate st;
    hstate_new(&st, &p);
    hcall k0;
    hcall_init(&k0, &p, LM_CPU, out, &st, 0, 20);
    ck_assert(lm_linear_attn_prefill(&k0.a, NULL) == LM_OK);
    /* A snapshot of everything a call may write (the CPU's buffers are host memory). */
    const size_t nb = (size_t)(p.nS + p.nz + p.nwk + p.nwv + p.npos) * 4;
    char *before = malloc(nb + (size_t)p.nout * sizeof(float));
    char *after = malloc(nb + (size_t)p.nout * sizeof(float));
    hout_poison(&p, out);
#define SNAP(dst)                                                                           \
    do {                                                                                    \
        char *d_ = (dst);                                                                   \
        memcpy(d_, st.S, (size_t)p.nS * 4), d_ += p.nS * 4;                                 \
        memcpy(d_, st.z, (size_t)p.nz * 4), d_ += p.nz * 4;                                 \
        memcpy(d_, st.wk, (size_t)p.nwk * 4), d_ += p.nwk * 4;                              \
        memcpy(d_, st.wv, (size_t)p.nwv * 4), d_ += p.nwv * 4;                              \
        memcpy(d_, st.pos, (size_t)p.npos * 4), d_ += p.npos * 4;                           \
        memcpy(d_, out, (size_t)p.nout * 4);                                                \
    } while (0)
    SNAP(before);
    const size_t all = nb + (size_t)p.nout * 4;
    float decay[8] = { 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f };
    float bad_gate[8] = { 0, 0, NAN, 0 }, big_gate[8] = { 0, 40.5f, 0, 0 }, bound[8] = { -40, 40, 0, 0 };
    for (int i = 0; i < 14; i++) {
        hcall k;
        hcall_init(&k, &p, LM_CPU, out, &st, 20, 20);
        lm_status want = LM_ERR_INVALID_ARG;
        const char *needle = "";
        switch (i) {
        case 0: k.a.window = 0, needle = "window must be in 1.."; break;
        case 1: k.a.window = -3, needle = "window must be in 1.."; break;
        case 2: k.a.sinks = -1, needle = "sinks must be in 0.."; break;
        case 3: k.a.is_causal = 0, want = LM_ERR_UNSUPPORTED, needle = "hybrid attention is causal"; break;
        case 4: k.a.normalize = 0, needle = "set normalize = 1"; break;
        case 5: k.a.decay = decay, want = LM_ERR_UNSUPPORTED, needle = "has no decay"; break;
        case 6: k.a.window_pos = NULL, needle = "exactly when state is"; break;
        case 7: k.a.state = k.a.normalizer = NULL, needle = "exactly when state is"; break;
        case 8: k.a.attention = (lm_attention)7, needle = "attention 7 is not one of"; break;
        case 9: k.a.window_gate = bad_gate, needle = "window_gate[2]"; break;
        case 10: k.a.sinks = (1 << 20) + 1, needle = "sinks must be in 0.."; break;
        case 11: k.a.window_gate_form = (lm_gate_form)2, needle = "window_gate_form 2 is not one of"; break;
        case 12:
            k.a.window_gate_form = LM_GATE_EXP, k.a.window_gate = big_gate;
            needle = "window_gate[1] = 40.5 is outside [-40, 40]";
            break;
        case 13: k.a.window_gate_form = LM_GATE_EXP, k.a.window_gate = bad_gate, needle = "window_gate[2]"; break;
        }
        EXPECT_ERR(lm_linear_attn_prefill(&k.a, NULL), want, needle);
        SNAP(after);
        ck_assert_msg(!memcmp(before, after, all), "case %d changed the state or the output", i);
    }
    /* The sigmoid form takes any finite logit, the exp form its bound. */
    {
        hcall k;
        hcall_init(&k, &p, LM_CPU, out, NULL, 20, 20);
        k.a.window_gate = big_gate;
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        k.a.window_gate_form = LM_GATE_EXP, k.a.window_gate = bound;
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    }
    /* Decode refuses a hybrid step without a state; the backward has no hybrid. */
    hcall k;
    hcall_init(&k, &p, LM_CPU, out, NULL, 20, 1);
    EXPECT_ERR(lm_linear_attn_decode(&k.a, NULL), LM_ERR_INVALID_ARG, "a state");
    hcall_init(&k, &p, LM_CPU, out, NULL, 0, 20);
    tbuf dq = tbuf_new(c.dtype, c.B * 20 * c.Hq * c.Dk), dk = tbuf_new(c.dtype, c.B * 20 * c.Hkv * c.Dk);
    tbuf dv = tbuf_new(c.dtype, c.B * 20 * c.Hkv * c.Dv), dout = tbuf_new(c.dtype, c.B * 20 * c.Hq * c.Dv);
    lm_tensor tq = lm_tensor_4d(dq.data, c.dtype, LM_CPU, c.B, 20, c.Hq, c.Dk);
    lm_tensor tk = lm_tensor_4d(dk.data, c.dtype, LM_CPU, c.B, 20, c.Hkv, c.Dk);
    lm_tensor tv = lm_tensor_4d(dv.data, c.dtype, LM_CPU, c.B, 20, c.Hkv, c.Dv);
    lm_tensor to = lm_tensor_4d(dout.data, c.dtype, LM_CPU, c.B, 20, c.Hq, c.Dv);
    lm_core_grads g = { LM_SIZED(lm_core_grads), .dout = &to, .dq = &tq, .dk = &tk, .dv = &tv };
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &g, NULL), LM_ERR_UNSUPPORTED, "no backward in the C library");
    hcall_init(&k, &p, LM_CPU, out, &st, 0, 20);
    EXPECT_ERR(lm_linear_attn_absorb(&k.a, NULL), LM_ERR_UNSUPPORTED, "hybrid attention's window");
    size_t wsb = 0;
    EXPECT_ERR(lm_linear_attn_prefill_workspace(&k.a, &wsb), LM_ERR_UNSUPPORTED, "allocates its own");
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, &wsb, sizeof wsb, NULL), LM_ERR_UNSUPPORTED,
               "allocates its own");
    tbuf_free(&dq), tbuf_free(&dk), tbuf_free(&dv), tbuf_free(&dout);
#undef SNAP
    free(before);
    free(after);
    hstate_free(&st, &p);
    hout_free(&p, out);
    hprob_free(&p);
}
END_TEST

/* An old caller's lm_core_args (no hybrid fields) runs linear attention, one
 * without the gate form the sigmoid gate, and the defaults set the hybrid's
 * W and s and the sigmoid gate. */
START_TEST(test_abi_defaults)
{
    lm_core_args a;
    ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
    ck_assert_int_eq(a.attention, LM_ATTENTION_LINEAR);
    ck_assert_int_eq(a.window, LM_HYBRID_WINDOW_DEFAULT);
    ck_assert_int_eq(a.sinks, LM_HYBRID_SINKS_DEFAULT);
    ck_assert_ptr_null(a.window_gate);
    ck_assert_int_eq(a.window_gate_form, LM_GATE_SIGMOID);
    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, 64, 4), LM_OK);
    ck_assert_int_eq(cfg.attention, LM_ATTENTION_LINEAR);
    ck_assert_int_eq(cfg.window, LM_HYBRID_WINDOW_DEFAULT);
    ck_assert_int_eq(cfg.sinks, LM_HYBRID_SINKS_DEFAULT);
    ck_assert_int_eq(cfg.window_gate_form, LM_GATE_SIGMOID);

    ref_seed(109);
    hcase c = base_case();
    c.L = 30;
    hprob p;
    hprob_init(&p, &cpu_dev, &c);
    void *out = hout_new(&p);
    hcall k;
    hcall_init(&k, &p, LM_CPU, out, NULL, 0, c.L);
    k.a.struct_size = (uint32_t)offsetof(lm_core_args, attention); /* the release before hybrid */
    k.a.attention = LM_ATTENTION_HYBRID;                            /* beyond it: not read */
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    double *lin = malloc((size_t)p.nout * sizeof(double));
    ref_problem r = { .B = c.B, .L = c.L, .Lk = c.L, .Hq = c.Hq, .Hkv = c.Hkv, .Dk = c.Dk, .Dv = c.Dv,
                      .q = { p.q.ref, { p.sq[0], p.sq[1], p.sq[2], p.sq[3] } },
                      .k = { p.k.ref, { p.sk[0], p.sk[1], p.sk[2], p.sk[3] } },
                      .v = { p.v.ref, { p.sv[0], p.sv[1], p.sv[2], p.sv[3] } },
                      .causal = 1, .feature_map = c.fm, .normalize = 1, .eps = 1e-6,
                      .scale = 1.0 / sqrt((double)c.Dk) };
    ref_attend(&r, lin, NULL, NULL);
    tbuf got = hout_fetch(&p, out);
    ref_err e = ref_compare(&got, lin, p.nout);
    REF_CHECK(e, ref_bound(c.dtype), "(a short lm_core_args is linear attention)");
    /* The release before the gate form: hybrid with the sigmoid gate (p's reference). */
    hout_poison(&p, out);
    hcall_init(&k, &p, LM_CPU, out, NULL, 0, c.L);
    k.a.struct_size = (uint32_t)offsetof(lm_core_args, window_gate_form);
    k.a.window_gate_form = LM_GATE_EXP; /* beyond it: not read */
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    hybrid_check_out(&p, out, "a short lm_core_args: the sigmoid gate");
    free(lin);
    tbuf_free(&got);
    hout_free(&p, out);
    hprob_free(&p);
}
END_TEST

Suite *hybrid_suite(void)
{
    Suite *s = suite_create("hybrid");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_dtypes_layouts);
    tcase_add_test(tc, test_masks);
    tcase_add_test(tc, test_gate_exp);
    tcase_add_test(tc, test_split_and_steps);
    tcase_add_test(tc, test_full_window_is_softmax);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_abi_defaults);
    suite_add_tcase(s, tc);
    return s;
}
