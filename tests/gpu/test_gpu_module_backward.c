/*
 * test_gpu_module_backward.c - lm_attn_backward on CUDA: the shared case
 * grid (module_backward_cases.c: ragged lengths, several slabs, cross
 * attention, GQA, decay, masks, one shared input gradient, weight and input
 * variants with sequence-first strides and a caller's stream, dtypes,
 * accumulate, bad calls) on gpu_dev, gradient buffers NaN-poisoned before
 * each call and fully written; every gradient (the inputs, each
 * projection's weight and bias) against the CPU backend's module backward
 * with the same weights and inputs (itself checked against float64 by
 * tests/test_module_backward.c), and, where the float64 reference module is
 * cheap (mb_ref_cost <= REF_COST: B x L = 600 tokens at E = 256; elu+1
 * normalised), against its directional derivative for one random direction
 * over all parameters at once. The GPU's own test: refusals of what only
 * the GPU refuses, the handle's state untouched. The reduced grid
 * (compute-sanitizer) is the grid's "everything on" entry alone.
 *
 * Bounds on RMS(gpu - cpu) / RMS(cpu) per gradient, the RMS of cpu taken as
 * the largest in the gradient's group (the q, k, v inputs; the q, k, v
 * weights): with one token o = v, so the q and k gradients vanish and both
 * backends give fp32 noise, whose difference is no error. The GPU rounds q,
 * k, v, the attention output, its gradient and dq, dk, dv to the dtype where
 * the CPU keeps fp32, so bf16 is several roundings of 2^-9 / sqrt(3) (bound
 * 1e-2; seen on the H100 <= 4.4e-3), f16 of 2^-12 / sqrt(3) (1.5e-3; seen
 * 4e-4); f32 is fp32 sums in other orders and the attention kernel's 16-bit
 * operand pairs (2e-5; seen 2.6e-6). Directional derivatives, where rounding
 * noise averages out and what remains is a missing or wrong term: bf16 / f16
 * 2e-4 (seen 1.6e-5), f32 2e-7 (seen 3.6e-9; central differences in float64
 * with eps 1e-4 are good to ~1e-8). accumulate: twice one call within 1e-6
 * (fp32 sums in another order); input gradients the same bits (the kernels
 * and cuBLASLt's plans are deterministic).
 */
#include "gpu_util.h"
#include "module_backward_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMP_BF16 1e-2
#define CMP_F16 1.5e-3
#define CMP_F32 2e-5
#define DIR_F32 2e-7
#define DIR_LOW 2e-4
#define REF_COST 1.5e8

static const char *const slot_names[MS_NSLOTS] = { "dquery", "dkey", "dvalue", "dWq / in_proj_weight", "dWk",
                                                   "dWv", "in_proj_bias", "out_proj_weight", "out_proj_bias" };

static int fd(const mbcase *c)
{
    return !c->m.fm && !c->m.unnormalized && mb_ref_cost(c) <= REF_COST ? MB_FD_ALL : MB_FD_NONE;
}

static double fd_bound(lm_dtype dt)
{
    return dt == LM_F32 ? DIR_F32 : DIR_LOW;
}

static double cmp_bound(lm_dtype dt)
{
    return dt == LM_BF16 ? CMP_BF16 : dt == LM_F16 ? CMP_F16 : CMP_F32;
}

/* The worst gradient against the CPU's per dtype, printed last. */
static struct {
    double err;
    char what[260];
} worst_cmp[3];

/* The in-projections' slots go together: q, k, v inputs; q, k, v weights. */
static int group_of(int slot)
{
    return slot <= MS_XV ? MS_XQ : slot <= MS_WV ? MS_WQ : slot;
}

/* The GPU's gradients against the CPU backend's on the same problem. */
static void vs_cpu(const mbprob *b, const mbgrads *got, const char *desc)
{
    mbrun r;
    mbrun_new(&r, b, &cpu_dev);
    mb_run(b, &r, NULL);
    mbgrads cpu;
    mbgrads_read(&cpu, b, &r);
    mbrun_free(&r);
    double num[MS_NSLOTS] = { 0 }, scale[MS_NSLOTS] = { 0 }, most = 0;
    for (int s = 0; s < MS_NSLOTS; s++) {
        double den = 0;
        for (int64_t j = 0; j < b->ng[s]; j++) {
            const double x = tbuf_get(&got->g[s], j), y = tbuf_get(&cpu.g[s], j);
            num[s] += (x - y) * (x - y), den += y * y;
        }
        const double rms = b->ng[s] ? sqrt(den / (double)b->ng[s]) : 0;
        scale[group_of(s)] = rms > scale[group_of(s)] ? rms : scale[group_of(s)];
    }
    const lm_dtype dt = b->c.m.dtype;
    for (int s = 0; s < MS_NSLOTS; s++) {
        if (!b->ng[s])
            continue;
        const double e = sqrt(num[s] / (double)b->ng[s]) / scale[group_of(s)];
        CHECK(e <= cmp_bound(dt), "%s vs cpu %.3g > %.3g (%s)", slot_names[s], e, cmp_bound(dt), desc);
        most = e > most ? e : most;
    }
    if (most > worst_cmp[dt].err) {
        worst_cmp[dt].err = most;
        snprintf(worst_cmp[dt].what, sizeof worst_cmp[dt].what, "%s", desc);
    }
    printf("  %s: vs cpu %.3g\n", desc, most);
    mbgrads_free(&cpu);
}

/* The stream of the grid's cases that ask for one: a caller's non-blocking
 * stream, made for each grid entry. */
static cudaStream_t grid_stream;

static void *stream(void)
{
    return grid_stream;
}

static mb_env gpu_env(void)
{
    mb_env e = { .dev = &gpu_dev,
                 .base = { .m = { .dtype = LM_BF16, .B = 2, .L = 150, .Lk = 150, .E = 256, .Hq = 4, .Hkv = 2,
                                  .D = 64, .kdim = 256, .vdim = 256, .causal = 1, .packed = 1, .bias = 1 } },
                 .fd = fd, .fd_bound = fd_bound, .small = gpu_small, .stream = stream, .acc_bound = 1e-6,
                 .also = vs_cpu };
    return e;
}

/* Grid entry _i (mb_grids) on the GPU. */
START_TEST(test_grid)
{
    const mb_env e = gpu_env();
    CUDA_OK(cudaStreamCreateWithFlags(&grid_stream, cudaStreamNonBlocking));
    mb_grid_run(_i, &e, 301);
    CUDA_OK(cudaStreamDestroy(grid_stream));
    grid_stream = NULL;
    gpu_end_test();
}
END_TEST

/* What the GPU refuses where the CPU does not (gradients on the host,
 * without stride 1, rows closer than their width), the handle's state
 * untouched. */
START_TEST(test_mbwd_refusals)
{
    ref_seed(305);
    const mb_env e = gpu_env();
    mbcase c = e.base;
    c.m.L = 40;
    mbprob b;
    mbprob_init(&b, &gpu_dev, &c);
    mbrun r;
    mbrun_new(&r, &b, &gpu_dev);
    mbcall k, bad;
    mbcall_init(&k, &b, &r, 0);
    ck_assert_msg(mforward(&b.p, &r.r, 0, c.m.L, 0, 1, NULL) == LM_OK, "%s", lm_last_error());
    size_t sz;
    ck_assert(lm_attn_state_size(r.r.a, &sz) == LM_OK);
    char *before = malloc(sz), *after = malloc(sz);
    ck_assert(lm_attn_get_state(r.r.a, before, sz) == LM_OK);

    bad = k;
    bad.dq.device = LM_CPU;
    bad.g.dquery = &bad.dq;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_INVALID_ARG, "dquery is on");
    bad = k; /* every other element of a buffer twice the size */
    const size_t bytes = (size_t)b.ng[MS_XQ] * lm_dtype_size(c.m.dtype);
    void *wide = dmalloc(2 * bytes);
    bad.dq.data = wide, bad.dq.stride[0] *= 2, bad.dq.stride[1] *= 2, bad.dq.stride[2] = 2;
    bad.g.dquery = &bad.dq;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_UNSUPPORTED, "stride 1");
    bad = k; /* one row of dout for every token */
    bad.dout.stride[1] = 0;
    bad.g.dout = &bad.dout;
    EXPECT_ERR(mbcall_run(&bad, &r, NULL), LM_ERR_UNSUPPORTED, "width apart");
    ck_assert(lm_attn_get_state(r.r.a, after, sz) == LM_OK);
    ck_assert_msg(!memcmp(before, after, sz), "a failed backward changed the state");
    free(before), free(after);
    CUDA_OK(cudaFree(wide));
    mbrun_free(&r);
    mbprob_free(&b);
}
END_TEST

/* The worst errors; that float64 checked some case. */
START_TEST(test_mbwd_summary)
{
    static const char *dts[] = { "bf16", "f16", "f32" };
    for (int dt = 0; dt < 3; dt++)
        if (worst_cmp[dt].err > 0)
            printf("module backward: worst %s gradient vs cpu %.3g (bound %.3g) (%s)\n", dts[dt], worst_cmp[dt].err,
                   cmp_bound((lm_dtype)dt), worst_cmp[dt].what);
    const mb_env e = gpu_env();
    ck_assert_int_gt(mb_print_worst(&e), 0);
}
END_TEST

Suite *gpu_module_backward_suite(void)
{
    Suite *s = suite_create("gpu_module_backward");
    TCase *tc = tcase_create("module_backward");
    tcase_set_timeout(tc, 600);
    for (int i = 0; i < mb_ngrids; i++)
        if (!gpu_small || mb_grids[i].small)
            tcase_add_loop_test(tc, test_grid, i, i + 1);
    if (!gpu_small)
        tcase_add_test(tc, test_mbwd_refusals);
    tcase_add_test(tc, test_mbwd_summary);
    suite_add_tcase(s, tc);
    return s;
}
