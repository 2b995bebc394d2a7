/*
 * test_gpu_backward.c - the core backward (lm_linear_attn_backward) on CUDA
 * against float64 and the CPU backend: the shared case grid
 * (backward_cases.c: lengths, every mode, GQA, head dims, dtypes, layouts,
 * long sequences in many segments, the tensor-core backward's cases, state
 * gradients chained across a split, masked keys holding NaN) on gpu_dev,
 * gradient buffers NaN-poisoned before each call; and the GPU's own tests:
 * two runs bit-identical, head dims it does not hold refused, the worst
 * errors printed. The reduced grid (compute-sanitizer) is the grid's
 * "everything on" entry alone.
 *
 * Reference: ref_backward (tests/ref_backward.c, which test_backward.c
 * checks by central differences), O(L Lk) per (batch, kv head), run where a
 * case costs at most REF_COST (bw_ref_cost); beyond, the CPU backend stands
 * in for it.
 *
 * Error measure (backward_cases.h): ||got - want|| / ||mag||, mag the
 * reference on absolute values; floor = ||round(want) - want|| / ||mag||,
 * the rounding of a perfect gradient to its dtype. Bounds:
 *   vs float64: floor (1.1 + 3/sqrt(n)) + 1e-5 (the kernels compute in fp32,
 *     so only the output rounding shows: ratios ~1.0; 1e-5 for fp32 sums
 *     over thousands of terms, and the fp32 state gradients);
 *   the two calls of a split, whose middle state is the GPU forward's: that
 *     + 3e-4 (f32; it was 3e-4 against the whole backward on the GPU), bf16
 *     + 4e-3 (state_bound: the forward rounds phi(k) to bf16);
 *   vs the CPU backend: 2.2 floor + 1e-5 (each rounds once), and without a
 *     reference, relative to ||cpu||: the dtype's unit roundoff (2^-8 bf16,
 *     2^-11 f16) + 1e-5, state gradients 1e-4.
 * The tensor-core backward (bf16, causal, Hq == Hkv, no mask, no decay, unit
 * last strides, not LM_PRECISION_ON: src/cuda_backward_tc.c) rounds its
 * operands a, b, g to bf16 (2^-9 relative each) before the products, so its
 * bound is
 *   vs float64: 3 floor (1.1 + 3/sqrt(n)) + 2^-8 (bf16's unit roundoff,
 *   relative to the magnitudes of the terms), vs the CPU that + 2.2 floor;
 * its worst ratios are printed apart ("bf16 tensor cores").
 */
#include "backward_cases.h"
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_COST 1.5e9

/* Whether the GPU runs case c on the tensor-core backward. */
static int uses_tc(const bwcase *c)
{
    return c->dtype == LM_BF16 && c->causal && c->Hq == c->Hkv && !c->mask && !c->decay &&
           c->precision != LM_PRECISION_ON && c->lay != BW_GAPPED && c->glay != BW_GAPPED;
}

static int has_ref(const bwcase *c)
{
    return bw_ref_cost(c) <= REF_COST;
}

static double bound(const bwcase *c, int which, double floor, int64_t n, int chained)
{
    (void)which;
    const double grow = 1.1 + 3.0 / sqrt((double)(n > 0 ? n : 1));
    const double b = uses_tc(c) ? 3.0 * floor * grow + ldexp(1.0, -8) : floor * grow + 1e-5;
    return chained ? b + (c->dtype == LM_BF16 ? 4e-3 : 3e-4) : b;
}

/* Worst ratios to the floor per dtype (slot TC: the tensor-core backward)
 * and gradient, printed last. */
#define TC 3
static struct {
    double ratio, err;
    char what[240];
} worst[4][BW_NGRADS];

/* For bf16 / f16 as a multiple of the rounding floor (where it is not
 * vanishing: L = 1 gradients are fp32 noise far under it), for fp32 as
 * itself. */
static void note(const bwcase *c, int which, double err, double floor, const char *desc)
{
    const lm_dtype dt = which < 3 ? c->dtype : LM_F32;
    if (dt != LM_F32 && floor < 1e-4)
        return;
    const int slot = uses_tc(c) ? TC : (int)dt;
    const double ratio = dt == LM_F32 ? err : err / floor;
    if (ratio > worst[slot][which].ratio) {
        worst[slot][which].ratio = ratio;
        worst[slot][which].err = err;
        snprintf(worst[slot][which].what, sizeof worst[slot][which].what, "%s", desc);
    }
}

static double unit_roundoff(lm_dtype dt)
{
    return dt == LM_BF16 ? ldexp(1.0, -8) : dt == LM_F16 ? ldexp(1.0, -11) : 0.0;
}

/* The GPU's gradients against the CPU backend's on the same problem. */
static void vs_cpu(const bwprob *p, const bwgrads *got, int with_ref, const char *desc)
{
    const bwcase *c = &p->c;
    ck_assert_msg(with_ref || !uses_tc(c), "tensor-core cases are checked against float64 (%s)", desc);
    bwrun r;
    bwrun_new(&r, p, &cpu_dev);
    bw_run(p, &r);
    bwgrads cpu;
    bwgrads_read(&cpu, p, &r);
    for (int i = 0; i < (c->dstate_in ? BW_NGRADS : 3); i++) {
        const lm_dtype dt = i < 3 ? c->dtype : LM_F32;
        double *cv = bwgrads_values(&cpu, p, i);
        int64_t unwritten = 0;
        double d, b;
        if (with_ref) {
            const double fl = bw_floor(dt, p->want[i], p->mag[i], p->n[i]);
            d = bw_error(got, p, i, cv, p->mag[i], &unwritten);
            b = uses_tc(c) ? bound(c, i, fl, p->n[i], 0) + 2.2 * fl : 2.2 * fl + 1e-5;
        } else {
            d = bw_error(got, p, i, cv, cv, &unwritten);
            b = i < 3 ? unit_roundoff(dt) + 1e-5 : 1e-4;
        }
        ck_assert_msg(unwritten == 0, "%s: %lld elements not written (%s)", bw_grad_names[i], (long long)unwritten,
                      desc);
        ck_assert_msg(d <= b, "%s vs cpu %.3g > %.3g (%s)", bw_grad_names[i], d, b, desc);
        free(cv);
    }
    bwgrads_free(&cpu);
    bwrun_free(&r);
}

static bw_env gpu_env(void)
{
    bw_env e = { .dev = &gpu_dev,
                 .base = { .dtype = LM_BF16, .B = 2, .L = 130, .Lk = 130, .Hq = 4, .Hkv = 2, .Dk = 64, .Dv = 64,
                           .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 },
                 .has_ref = has_ref, .bound = bound, .note = note, .also = vs_cpu };
    return e;
}

/* Grid entry _i (bw_grids) on the GPU. */
START_TEST(test_grid)
{
    const bw_env e = gpu_env();
    bw_grid_run(_i, &e, 201);
}
END_TEST

/* The same call twice gives the same bits (no atomics, fixed orders). */
START_TEST(test_bwd_deterministic)
{
    ref_seed(208);
    for (int causal = 1; causal >= 0; causal--) {
        bwcase c = gpu_env().base;
        c.causal = causal, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128;
        c.L = c.Lk = 5000, c.mask = 1, c.decay = causal;
        c.state_in = c.dstate_out = c.dstate_in = 1;
        bwprob p;
        bwprob_init(&p, &gpu_dev, &c);
        bwrun r;
        bwrun_new(&r, &p, &gpu_dev);
        bwgrads a, b;
        bw_run(&p, &r);
        bwgrads_read(&a, &p, &r);
        bwrun_poison(&r, &p);
        bw_run(&p, &r);
        bwgrads_read(&b, &p, &r);
        for (int i = 0; i < 3; i++)
            ck_assert_msg(!memcmp(a.g[i].data, b.g[i].data, tbuf_bytes(&a.g[i])), "%s differs between runs (causal %d)",
                          bw_grad_names[i], causal);
        ck_assert_msg(!memcmp(a.S, b.S, (size_t)p.n[BW_DS] * 4) && !memcmp(a.z, b.z, (size_t)p.n[BW_DZ] * 4),
                      "dS_in differs between runs (causal %d)", causal);
        bwgrads_free(&a);
        bwgrads_free(&b);
        bwrun_free(&r);
        bwprob_free(&p);
    }
}
END_TEST

/* Head dims the kernels do not hold: UNSUPPORTED with a message. */
START_TEST(test_bwd_unsupported)
{
    ref_seed(209);
    bwcase c = gpu_env().base;
    c.B = 1, c.L = c.Lk = 10, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 320;
    bwprob p;
    bwprob_init(&p, &gpu_dev, &c);
    bwrun r;
    bwrun_new(&r, &p, &gpu_dev);
    bwcall k;
    bwcall_init(&k, &p, &r, 0, c.L);
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_UNSUPPORTED, "head dims");
    bwrun_free(&r);
    bwprob_free(&p);
}
END_TEST

START_TEST(test_bwd_summary)
{
    static const char *dts[] = { "bf16", "f16", "f32", "bf16 tensor cores" };
    for (int dt = 0; dt < 4; dt++)
        for (int i = 0; i < BW_NGRADS; i++) {
            if (worst[dt][i].ratio <= 0)
                continue;
            if (dt == LM_F32 || i >= 3) /* fp32 values: the error itself */
                printf("backward: worst %s %s error vs float64 %.3g (%s)\n", dts[dt], bw_grad_names[i],
                       worst[dt][i].err, worst[dt][i].what);
            else
                printf("backward: worst %s %s error vs float64 %.3g = %.3f x the rounding floor (%s)\n", dts[dt],
                       bw_grad_names[i], worst[dt][i].err, worst[dt][i].ratio, worst[dt][i].what);
        }
}
END_TEST

Suite *gpu_backward_suite(void)
{
    Suite *s = suite_create("gpu_backward");
    TCase *tc = tcase_create("backward");
    tcase_set_timeout(tc, 600);
    for (int i = 0; i < bw_ngrids; i++)
        if (!gpu_small || bw_grids[i].small)
            tcase_add_loop_test(tc, test_grid, i, i + 1);
    if (!gpu_small) {
        tcase_add_test(tc, test_bwd_deterministic);
        tcase_add_test(tc, test_bwd_unsupported);
        tcase_add_test(tc, test_bwd_summary);
    }
    suite_add_tcase(s, tc);
    return s;
}
