/*
 * test_module.c - the module (lm_attn_*) on the CPU against a float64
 * reference that projects, attends and out-projects: the shared case grid
 * (module_cases.c: self attention at ragged lengths in every dtype, weight
 * and input variants, cross attention, GQA and head dims, mixed cases,
 * hand-over between forwards and steps, save / restore / fork) on cpu_dev,
 * and the CPU's own tests of hybrid attention through the module (§9):
 * forwards, hand-over, its state blob, its refusals. Bound: ref_bound per
 * dtype (cpu_dev's out_bound).
 */
#include "module_cases.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const m_env cpu_env = {
    .dev = &cpu_dev,
    .base = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .E = 64, .Hq = 4, .Hkv = 4, .D = 16, .kdim = 64,
              .vdim = 64, .causal = 1, .packed = 1, .bias = 1 },
};

/* Grid entry _i (m_grids) on the CPU. */
START_TEST(test_grid)
{
    mgrid_run(_i, &cpu_env, 21);
}
END_TEST

/* ---- hybrid attention (docs/DESIGN.md §9) through the module ---- */

static mcase hybrid_base(void)
{
    mcase c = cpu_env.base;
    c.hybrid = 1, c.W = 16, c.s = 3, c.L = 150, c.Hkv = 2;
    return c;
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
        mcheck_forward(&cpu_env, &c);
    }
    /* Several slabs of the module's forward (about 1024 tokens each here). */
    mcase c = hybrid_base();
    c.L = 2500, c.mask = 1;
    mcheck_forward(&cpu_env, &c);
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
        mprob p;
        mprob_init(&p, &cpu_dev, &c);
        mrun r;
        mrun_new(&r, &p, &cpu_dev);
        const int64_t L1 = 70;
        ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
        ck_assert_msg(mforward(&p, &r, L1, c.L - L1, 1, 1, NULL) == LM_OK, "%s", lm_last_error());
        mcheck(&cpu_env, &p, &r, "hybrid: two forwards");
        if (!mask) { /* lm_attn_step takes no mask */
            for (int from = 0; from < 2; from++) {
                mrun_poison(&r, &p);
                ck_assert(lm_attn_reset(r.a) == LM_OK);
                if (from)
                    ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
                for (int64_t t = from ? L1 : 0; t < c.L; t++) {
                    lm_tensor x, o;
                    mstep_views(&p, &r, t, &x, &o);
                    ck_assert_msg(lm_attn_step(r.a, &x, &o, NULL) == LM_OK, "%s", lm_last_error());
                }
                mcheck(&cpu_env, &p, &r, from ? "hybrid: forward then steps" : "hybrid: steps");
            }
        }
        mrun_free(&r);
        mprob_free(&p);
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
    char *blob = msave_restore_fork(&cpu_env, &c, 33, L1, &bytes);
    const size_t floats = (size_t)(c.B * c.Hkv * (c.D * c.D + c.D + (c.W + c.s) * (2 * c.D + 1)));
    /* header of format 2 (8 + 9 x 8 bytes), the state, the 32-byte tag */
    ck_assert_uint_eq(bytes, 80 + floats * sizeof(float) + 32);
    ck_assert(!memcmp(blob, "LMSTATE2", 8));

    /* Another window, and linear mode, refuse it. */
    mcase c2 = c;
    c2.W = 8;
    mprob p2;
    mprob_init(&p2, &cpu_dev, &c2);
    mrun r2;
    mrun_new(&r2, &p2, &cpu_dev);
    EXPECT_ERR(lm_attn_set_state(r2.a, blob, bytes), LM_ERR_STATE, "W = 16, s = 3");
    mrun_free(&r2);
    mprob_free(&p2);
    mcase cl = c;
    cl.hybrid = 0;
    mprob pl;
    mprob_init(&pl, &cpu_dev, &cl);
    mrun lin;
    mrun_new(&lin, &pl, &cpu_dev);
    EXPECT_ERR(lm_attn_set_state(lin.a, blob, bytes), LM_ERR_STATE, "hybrid attention state");
    /* A linear blob (format 1) is refused by a hybrid handle, which keeps its state. */
    mprob p;
    mprob_init(&p, &cpu_dev, &c);
    mrun r;
    mrun_new(&r, &p, &cpu_dev);
    ck_assert(mforward(&p, &r, 0, L1, 0, 1, NULL) == LM_OK);
    ck_assert(mforward(&pl, &lin, 0, L1, 0, 1, NULL) == LM_OK);
    size_t lbytes;
    ck_assert(lm_attn_state_size(lin.a, &lbytes) == LM_OK);
    char *lblob = malloc(lbytes);
    ck_assert(lm_attn_get_state(lin.a, lblob, lbytes) == LM_OK);
    ck_assert(!memcmp(lblob, "LMSTATE1", 8));
    int64_t pos;
    EXPECT_ERR(lm_attn_set_state(r.a, lblob, lbytes), LM_ERR_STATE, "linear attention state");
    ck_assert(lm_attn_position(r.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, L1);
    /* The same linear state as format 2 (header grown by attention, W, s, reserved = 0). */
    const int64_t n = c.L - L1;
    char *l2 = calloc(1, lbytes + 32);
    memcpy(l2, lblob, 48);
    memcpy(l2, "LMSTATE2", 8);
    memcpy(l2 + 80, lblob + 48, lbytes - 48);
    ck_assert(mforward(&pl, &lin, L1, n, 1, 0, NULL) == LM_OK);
    tbuf first = mrun_out(&pl, &lin);
    ck_assert(lm_attn_reset(lin.a) == LM_OK);
    ck_assert_msg(lm_attn_set_state(lin.a, l2, lbytes + 32) == LM_OK, "%s", lm_last_error());
    mrun_poison(&lin, &pl);
    ck_assert(mforward(&pl, &lin, 0, L1, 0, 0, NULL) == LM_OK);
    ck_assert(mforward(&pl, &lin, L1, n, 1, 0, NULL) == LM_OK);
    tbuf again = mrun_out(&pl, &lin);
    ck_assert_msg(!memcmp(first.data, again.data, tbuf_bytes(&first)), "a linear blob of format 2 did not restore");
    tbuf_free(&first);
    tbuf_free(&again);
    free(l2);
    free(lblob);
    mrun_free(&lin);
    mprob_free(&pl);
    mrun_free(&r);
    mprob_free(&p);
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
    mprob p;
    mprob_init(&p, &cpu_dev, &mc);
    mrun r;
    mrun_new(&r, &p, &cpu_dev);
    p.c.causal = 0;
    EXPECT_ERR(mforward(&p, &r, 0, mc.L, 0, 1, NULL), LM_ERR_UNSUPPORTED, "hybrid attention is causal");
    int64_t pos;
    ck_assert(lm_attn_position(r.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, 0);
    int64_t s[3];
    ref_strides3(s, mc.B, mc.L, mc.E, 0);
    lm_tensor x = { .data = p.xq.data, .dtype = mc.dtype, .device = LM_CPU, .ndim = 3,
                    .shape = { mc.B, mc.L, mc.E }, .stride = { s[0], s[1], s[2] } };
    lm_tensor d = x;
    d.data = r.out;
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1 };
    lm_attn_grads g = { LM_SIZED(lm_attn_grads), .dout = &x, .dquery = &d };
    EXPECT_ERR(lm_attn_backward(r.a, &x, &x, &x, &o, &g, NULL), LM_ERR_UNSUPPORTED,
               "no backward in the C library");
    mrun_free(&r);
    mprob_free(&p);
}
END_TEST

Suite *module_suite(void)
{
    Suite *s = suite_create("module");
    TCase *tc = tcase_create("module");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_grid, 0, m_ngrids);
    tcase_add_test(tc, test_hybrid_forward);
    tcase_add_test(tc, test_hybrid_handover);
    tcase_add_test(tc, test_hybrid_state_blob);
    tcase_add_test(tc, test_hybrid_refusals);
    suite_add_tcase(s, tc);
    return s;
}
