/*
 * test_gpu_core.c - the attention core on CUDA against the float64 reference
 * and the CPU backend: the shared case grid (attend_cases.c: lengths around
 * the chunk size, head dims, GQA, every mode of docs/DESIGN.md section 2,
 * dtypes, cross-attention, layouts and segments, compensated accumulation,
 * state hand-over, prefill then decode steps) on gpu_dev, outputs
 * NaN-poisoned before each run; and the GPU's own tests: 10 runs
 * bit-identical, decode steps replayed from CUDA graphs (not in the reduced
 * grid: the compute-sanitizer pass runs near its time limit and had no
 * graphs before either). Bounds are gpu_dev's (gpu_util.h): the outputs
 * out_bound over the output-rounding floor, the state state_bound; and each
 * whole prefill up to 1000 tokens within out_bound of the CPU backend's
 * error on the same problem.
 */
#include "attend_cases.h"
#include "gpu_util.h"

#include <stdlib.h>
#include <string.h>

/* The GPU within reach of the CPU backend's error (the reference the GPU is
 * held to), off in the reduced grid. */
static void vs_cpu(const atprob *p, double err)
{
    if (gpu_small || p->c.L > 1000)
        return;
    atrun r;
    atrun_new(&r, p, &cpu_dev);
    attend_run(p, &r, &p->c.L, 1, p->c.L);
    const double ec = attend_out_err(p, &r);
    atrun_free(&r);
    ck_assert_msg(err <= out_bound(p->c.dtype, ec, p->nout), "gpu error %.3g vs cpu %.3g", err, ec);
}

static attend_env gpu_env(void)
{
    attend_env e = { .dev = &gpu_dev,
                     .base = { .dtype = LM_BF16, .B = 2, .L = 130, .Lk = 130, .Hq = 4, .Hkv = 2, .Dk = 64, .Dv = 64,
                               .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 },
                     .small = gpu_small, .also = vs_cpu };
    return e;
}

/* Grid entry _i (attend_grids) on the GPU. */
START_TEST(test_grid)
{
    const attend_env e = gpu_env();
    attend_grid_run(_i, &e, 101);
}
END_TEST

/* 10 runs of the same call give the same bits (no atomics, fixed orders). */
START_TEST(test_deterministic)
{
    ref_seed(107);
    for (int causal = 1; causal >= 0; causal--) {
        atcase c = gpu_env().base;
        c.causal = causal, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128;
        c.L = c.Lk = gpu_small ? 300 : 5000;
        c.mask = 1, c.state_in = 1, c.decay = causal;
        atprob p;
        atprob_init(&p, &gpu_dev, &c);
        atrun r;
        atrun_new(&r, &p, &gpu_dev);
        const size_t bytes = (size_t)p.nout * lm_dtype_size(c.dtype), nS = (size_t)p.nS, nz = (size_t)p.nz;
        unsigned char *first = malloc(bytes + (nS + nz) * 4), *again = malloc(bytes + (nS + nz) * 4);
        ck_assert(first && again);
        for (int run = 0; run < (gpu_small ? 2 : 10); run++) {
            attend_run(&p, &r, &c.L, 1, c.L);
            unsigned char *dst = run ? again : first;
            ddownload_bytes(dst, r.out, bytes);
            ddownload_bytes(dst + bytes, r.S, nS * 4);
            ddownload_bytes(dst + bytes + nS * 4, r.z, nz * 4);
            ck_assert_msg(!run || !memcmp(first, again, bytes + (nS + nz) * 4),
                          "run %d differs from run 0 (causal %d)", run, causal);
        }
        free(first);
        free(again);
        atrun_free(&r);
        atprob_free(&p);
    }
}
END_TEST

/* The decode grid's cases (attend_decode_case), their steps each captured in
 * a CUDA graph on a non-blocking stream and replayed from it. */
START_TEST(test_decode_graph)
{
    ref_seed(109);
    const attend_env e = gpu_env();
    atcase c;
    int64_t L0;
    for (int i = 0; attend_decode_case(&e, i, &c, &L0); i++) {
        atprob p;
        atprob_init(&p, &gpu_dev, &c);
        atrun r;
        atrun_new(&r, &p, &gpu_dev);
        attend_run(&p, &r, &L0, L0 > 0, L0); /* the prefill of L0 tokens, if any */
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        CUDA_OK(cudaDeviceSynchronize());
        for (int64_t t = L0; t < c.L; t++) {
            atcall k;
            atcall_init(&k, &p, &r, t, 1);
            ck_assert_msg(IN_GRAPH(s, lm_linear_attn_decode(&k.a, s)) == LM_OK, "decode in capture: %s",
                          lm_last_error());
        }
        CUDA_OK(cudaStreamSynchronize(s));
        CUDA_OK(cudaStreamDestroy(s));
        attend_check(&p, &r, "prefill + decode (graph)");
        atrun_free(&r);
        atprob_free(&p);
    }
}
END_TEST

Suite *gpu_core_suite(void)
{
    Suite *s = suite_create("gpu_core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_grid, 0, attend_ngrids);
    tcase_add_test(tc, test_deterministic);
    if (!gpu_small) /* the compute-sanitizer pass (small) is near its time limit */
        tcase_add_test(tc, test_decode_graph);
    suite_add_tcase(s, tc);
    return s;
}
