/*
 * test_gpu_absorb.c - lm_linear_attn_absorb on CUDA (ABSORB over key
 * segments, folded into the state by the scan) against the float64
 * reference and the CPU backend: lengths around the chunk and segment sizes
 * (a ragged last segment of one token included), feature maps, decay, masks,
 * initial states, head dims, dtypes, compensated accumulation; segments
 * absorbed one after another equal one call. The state is read by the
 * call (it cannot be poisoned): a NaN left in it counts as unwritten. The
 * bound is state_bound (gpu_util.h: phi(k) rounded to bf16 for bf16
 * inputs). Problems, the reference, the run of a cut sequence, the state's
 * check and the modes' grid are absorb_cases.c's.
 */
#include "absorb_cases.h"
#include "gpu_util.h"

#include <stdio.h>
#include <stdlib.h>

static acase base_case(void)
{
    acase c = { .dtype = LM_BF16, .B = 2, .L = 300, .Hkv = 2, .Dk = 64, .Dv = 64, .fm = LM_FEATURE_ELU1 };
    return c;
}

/* Absorbs the sequence cut at cuts[0 .. ncut-1] (the last = L) on the GPU;
 * checks the state against float64 and the CPU backend's (one call). */
static void check_cuts(const acase *c, const int64_t *cuts, int ncut)
{
    aprob p;
    aprob_init(&p, &gpu_dev, c);
    float *S, *z;
    absorb_run(&p, &gpu_dev, cuts, ncut, &S, &z);
    char what[32];
    snprintf(what, sizeof what, "gpu, %d calls", ncut);
    absorb_check_state(&p, S, z, what);
    if (!gpu_small && c->L <= 5000) { /* the CPU backend (one call) agrees */
        float *cS, *cz;
        absorb_run(&p, &cpu_dev, &c->L, 1, &cS, &cz);
        double *cpu = malloc((size_t)p.nS * sizeof(double));
        ck_assert_ptr_nonnull(cpu);
        for (int64_t i = 0; i < p.nS; i++)
            cpu[i] = cS[i];
        const ref_err d = ref_compare_f32(S, cpu, p.nS);
        CHECK(d.rel <= state_bound(c->dtype), "gpu S vs cpu S %.3g > %.3g (%s, L %lld)", d.rel,
              state_bound(c->dtype), what, (long long)c->L);
        free(cpu);
        free(cS);
        free(cz);
    }
    free(S);
    free(z);
    aprob_free(&p);
}

static void check_case(const acase *c)
{
    check_cuts(c, &c->L, 1);
}

/* Around the chunk (64) and the segment sizes the planner picks; B = Hkv = 1
 * and Dv = 64 make it cut the keys into as many segments as it can, so the
 * last one is ragged (4097: 17 segments, the last of one token). */
START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 127, 257, 1000, 4097, 20000 };
    ref_seed(301);
    const int n = gpu_small ? 5 : 9;
    for (int i = 0; i < n; i++)
        for (int mode = 0; mode < 2; mode++) {
            acase c = base_case();
            c.L = Ls[i];
            c.B = c.Hkv = 1;
            c.decay = c.mask = c.state_in = mode;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_modes)
{
    ref_seed(302);
    const acase base = base_case();
    absorb_case_modes(&base, !gpu_small, check_case);
    gpu_end_test();
}
END_TEST

START_TEST(test_dtypes_dims)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 256, 256 }, { 64, 128 }, { 96, 40 } };
    ref_seed(303);
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < (gpu_small ? 2 : 5); d++) {
            acase c = base_case();
            c.dtype = dts[i];
            c.Dk = dims[d][0], c.Dv = dims[d][1];
            c.L = 1000;
            c.decay = c.mask = c.state_in = d & 1;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_precision)
{
    ref_seed(304);
    for (int on = 0; on < 2; on++) {
        acase c = base_case();
        c.B = c.Hkv = 1;
        c.L = gpu_small ? 5000 : 70000;
        c.precision = on ? LM_PRECISION_ON : LM_PRECISION_AUTO;
        c.decay = on;
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

/* Ragged segments one after another == one call (the context-parallel use). */
START_TEST(test_segments)
{
    static const int64_t cuts[][3] = { { 1, 2, 3000 }, { 65, 1000, 3000 }, { 1500, 2999, 3000 } }; /* segments of 1 token at either end; an empty one is refused (shapes are >= 1) */
    ref_seed(305);
    for (int i = 0; i < 3; i++) {
        acase c = base_case();
        c.L = 3000;
        c.decay = c.mask = c.state_in = 1;
        check_cuts(&c, cuts[i], 3);
    }
    gpu_end_test();
}
END_TEST

Suite *gpu_absorb_suite(void)
{
    Suite *s = suite_create("gpu_absorb");
    TCase *tc = tcase_create("absorb");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_dtypes_dims);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_segments);
    suite_add_tcase(s, tc);
    return s;
}
