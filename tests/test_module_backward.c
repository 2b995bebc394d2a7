/*
 * test_module_backward.c - lm_attn_backward on the CPU: the shared case grid
 * (module_backward_cases.c: ragged lengths, several slabs, cross attention,
 * GQA, decay, masks, one shared input gradient, weight and input variants,
 * dtypes, accumulate, bad calls) on cpu_dev, every gradient (the inputs,
 * each projection's weight and bias) checked by directional derivatives of
 * the float64 reference module (ref_module_forward).
 *
 * Finite differences by cost (mb_ref_cost, multiply-adds of one float64
 * forward): up to EACH_COST (the CPU suite's own largest case, 2100 tokens
 * of E = 32), two random directions for each parameter alone; up to
 * ALL_COST, one direction over all parameters at once (2 forwards instead
 * of 4 per parameter), as for every case with one key, where o = v and the
 * q and k gradients vanish to fp32 noise that no check of them alone can
 * measure; beyond, and for feature maps the reference does not compute,
 * the case is left to the GPU suite, whose CPU backend it compares against
 * (the grid entry says how many). Bound on |fd - <grad, U>| / sum
 * |grad_j U_j|: f32 5e-5, bf16 5e-3 and f16 1e-3 (gradients rounded to 8
 * and 11 bits; seen here: f32 7.0e-6, bf16 4.3e-4, f16 8.2e-5, each alone).
 * accumulate: exactly twice one call (the same sums in the same order).
 */
#include "module_backward_cases.h"

#include <stdio.h>

#define EACH_COST 1.2e7
#define ALL_COST 5e8

static int fd(const mbcase *c)
{
    if (c->m.fm != LM_FEATURE_ELU1 || c->m.unnormalized)
        return MB_FD_NONE;
    const double cost = mb_ref_cost(c);
    const int64_t Lk = c->m.cross ? c->m.Lk : c->m.L;
    return cost <= EACH_COST && Lk > 1 ? MB_FD_EACH : cost <= ALL_COST ? MB_FD_ALL : MB_FD_NONE;
}

static double fd_bound(lm_dtype dt)
{
    return dt == LM_F32 ? 5e-5 : dt == LM_F16 ? 1e-3 : 5e-3;
}

static const mb_env cpu_env = {
    .dev = &cpu_dev,
    .base = { .m = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .E = 32, .Hq = 4, .Hkv = 4, .D = 8, .kdim = 32,
                     .vdim = 32, .causal = 1, .packed = 1, .bias = 1 } },
    .fd = fd,
    .fd_bound = fd_bound,
    .acc_bound = 0,
};

/* Grid entry _i (mb_grids) on the CPU. */
START_TEST(test_grid)
{
    mb_grid_run(_i, &cpu_env, 61);
}
END_TEST

/* The largest errors; that the grid checked every dtype. */
START_TEST(test_summary)
{
    ck_assert_int_eq(mb_print_worst(&cpu_env), 3);
}
END_TEST

Suite *module_backward_suite(void)
{
    Suite *s = suite_create("module_backward");
    TCase *tc = tcase_create("module_backward");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_grid, 0, mb_ngrids);
    tcase_add_test(tc, test_summary);
    suite_add_tcase(s, tc);
    return s;
}
