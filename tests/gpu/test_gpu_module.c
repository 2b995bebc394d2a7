/*
 * test_gpu_module.c - the module (lm_attn_*) on CUDA against a float64
 * reference that projects, attends and out-projects: the shared case grid
 * (module_cases.c: self attention at ragged lengths in every dtype, weight
 * and input variants, cross attention, GQA and head dims, mixed cases at
 * the GPU's sizes, hand-over between forwards and steps, save / restore /
 * fork) on gpu_dev, outputs NaN-poisoned before each run, each whole
 * forward's error printed beside the CPU module's; and the GPU's own test:
 * a forward then steps on a caller's non-blocking stream, also replayed
 * from CUDA graphs, then the state saved, reset and restored. The reduced
 * grid (compute-sanitizer) runs the grid's "mixed" and "handover" entries
 * at their small sizes.
 *
 * Bound (module_bound): q, k, v and the attention output are rounded to the
 * dtype on their way through cuBLAS (~sqrt(3) x the output-rounding floor):
 * 2.2 x the floor + sampling slack 3/sqrt(n) x floor (fla's module is
 * 2.35 x); f32 3e-5.
 */
#include "gpu_util.h"
#include "module_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double module_bound(lm_dtype dt, const double *want, int64_t n)
{
    return dt == LM_F32 ? 3e-5 : out_floor(dt, want, n) * (2.2 + 3.0 / sqrt((double)n)) + 1e-6;
}

/* The CPU module's error on the same problem (fp32 throughout), printed
 * beside the GPU's; off in the reduced grid. */
static void vs_cpu(const mprob *p, const mrun *r)
{
    if (gpu_small)
        return;
    tbuf got = mrun_out(p, r);
    const double eg = ref_compare(&got, p->want, got.n).rel;
    tbuf_free(&got);
    mrun cr;
    mrun_new(&cr, p, &cpu_dev);
    ck_assert_msg(mforward(p, &cr, 0, p->c.L, 0, 0, NULL) == LM_OK, "cpu forward: %s", lm_last_error());
    got = mrun_out(p, &cr);
    const double ec = ref_compare(&got, p->want, got.n).rel;
    tbuf_free(&got);
    mrun_free(&cr);
    printf("  module dt %d c%d x%d: gpu %.3g, cpu %.3g vs float64\n", (int)p->c.dtype, p->c.causal, p->c.cross, eg,
           ec);
}

static m_env gpu_env(void)
{
    m_env e = { .dev = &gpu_dev,
                .base = { .dtype = LM_BF16, .B = 2, .L = 150, .Lk = 150, .E = 256, .Hq = 4, .Hkv = 4, .D = 64,
                          .kdim = 256, .vdim = 256, .causal = 1, .packed = 1, .bias = 1 },
                .bound = module_bound, .small = gpu_small, .also = vs_cpu };
    return e;
}

/* Grid entry _i (m_grids) on the GPU. */
START_TEST(test_grid)
{
    const m_env e = gpu_env();
    mgrid_run(_i, &e, 201);
}
END_TEST

/* A causal forward keeping its state, then steps on a non-blocking stream;
 * replayed from a graph; then the state saved, the handle reset and restored. */
START_TEST(test_forward_then_steps)
{
    ref_seed(202);
    const m_env e = gpu_env();
    for (int graph = 0; graph < 2; graph++) {
        mcase c = e.base;
        c.L = 80, c.Hkv = 2, c.decay = graph;
        mprob p;
        mprob_init(&p, &gpu_dev, &c);
        mrun r;
        mrun_new(&r, &p, &gpu_dev);
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        const int64_t L0 = 70;
        ck_assert_msg(mforward(&p, &r, 0, L0, 0, 1, s) == LM_OK, "forward: %s", lm_last_error());
        for (int64_t t = L0; t < c.L; t++) {
            lm_tensor x, y;
            mstep_views(&p, &r, t, &x, &y);
            if (!graph || t == L0) { /* the first step also makes the step's buffers */
                ck_assert_msg(lm_attn_step(r.a, &x, &y, s) == LM_OK, "step: %s", lm_last_error());
                continue;
            }
            ck_assert_msg(IN_GRAPH(s, lm_attn_step(r.a, &x, &y, s)) == LM_OK, "step in capture: %s",
                          lm_last_error());
        }
        CUDA_OK(cudaStreamSynchronize(s));
        mcheck(&e, &p, &r, graph ? "forward + steps in graphs" : "forward + steps");

        /* Save, reset, restore: the state reads back the same. */
        size_t sz;
        ck_assert(lm_attn_state_size(r.a, &sz) == LM_OK);
        void *blob = malloc(sz), *blob2 = malloc(sz);
        ck_assert_msg(lm_attn_get_state(r.a, blob, sz) == LM_OK, "%s", lm_last_error());
        ck_assert_int_eq(lm_attn_reset(r.a), LM_OK);
        ck_assert_msg(lm_attn_set_state(r.a, blob, sz) == LM_OK, "%s", lm_last_error());
        ck_assert_msg(lm_attn_get_state(r.a, blob2, sz) == LM_OK, "%s", lm_last_error());
        ck_assert(!memcmp(blob, blob2, sz));
        free(blob);
        free(blob2);
        CUDA_OK(cudaStreamDestroy(s));
        mrun_free(&r);
        mprob_free(&p);
    }
}
END_TEST

Suite *gpu_module_suite(void)
{
    Suite *s = suite_create("gpu_module");
    TCase *tc = tcase_create("module");
    tcase_set_timeout(tc, 600);
    for (int i = 0; i < m_ngrids; i++)
        if (!gpu_small || m_grids[i].small)
            tcase_add_loop_test(tc, test_grid, i, i + 1);
    tcase_add_test(tc, test_forward_then_steps);
    suite_add_tcase(s, tc);
    return s;
}
