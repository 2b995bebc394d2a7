/*
 * test_gpu_long.c - long sequences on CUDA (64K + 1 to 1M tokens, where
 * precision=auto turns compensated accumulation on and two heads are cut
 * into sequence segments), against a float64 recurrence that runs in
 * parallel over value columns, and the CPU backend. bf16, Dk = Dv = 128,
 * elu+1, normalised; the bound is 1.2 x the output-rounding floor.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { H = 2, D = 128, COLS = 8 };

static double phi(double x)
{
    return x > 0 ? x + 1 : exp(x);
}

/* out[t][h][e] for [1, L, H, D] contiguous inputs; causal or not. */
static void reference(const double *q, const double *k, const double *v, int64_t L, int causal, double *out)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int job = 0; job < H * (D / COLS); job++) {
        const int h = job / (D / COLS), e0 = (job % (D / COLS)) * COLS;
        double S[D][COLS] = { { 0 } }, z[D] = { 0 }, fk[D];
        for (int pass = causal ? 1 : 0; pass < 2; pass++)
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (t * H + h) * D;
                if (pass == 0 || causal) {
                    for (int d = 0; d < D; d++) {
                        fk[d] = phi(k[row + d]);
                        z[d] += fk[d];
                        for (int e = 0; e < COLS; e++)
                            S[d][e] += fk[d] * v[row + e0 + e];
                    }
                }
                if (pass == 0)
                    continue;
                double num[COLS] = { 0 }, den = 0;
                for (int d = 0; d < D; d++) {
                    const double fq = phi(q[row + d]);
                    den += fq * z[d];
                    for (int e = 0; e < COLS; e++)
                        num[e] += fq * S[d][e];
                }
                for (int e = 0; e < COLS; e++)
                    out[row + e0 + e] = num[e] / (den + 1e-6);
            }
    }
}

static void run_long(int64_t L, int causal)
{
    const int64_t n = L * H * D;
    tbuf q = tbuf_new(LM_BF16, n), k = tbuf_new(LM_BF16, n), v = tbuf_new(LM_BF16, n);
    tbuf_random(&q, -2, 2);
    tbuf_random(&k, -2, 2);
    tbuf_random(&v, -1, 1);
    double *want = malloc((size_t)n * sizeof(double));
    ck_assert_ptr_nonnull(want);
    reference(q.ref, k.ref, v.ref, L, causal, want);

    void *dq = dupload(&q), *dk = dupload(&k), *dv = dupload(&v), *dout = dmalloc((size_t)n * 2);
    dpoison(dout, (size_t)n * 2);
    lm_tensor tq = lm_tensor_4d(dq, LM_BF16, LM_CUDA, 1, L, H, D), tk = tq, tv = tq;
    tk.data = dk, tv.data = dv;
    lm_tensor to = tq;
    to.data = dout;
    float *dS = dmalloc(H * D * D * sizeof(float)), *dz = dmalloc(H * D * sizeof(float));
    CUDA_OK(cudaMemset(dS, 0, H * D * D * sizeof(float)));
    CUDA_OK(cudaMemset(dz, 0, H * D * sizeof(float)));
    lm_core_args a;
    ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
    a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to, a.state = dS, a.normalizer = dz;
    a.is_causal = causal;
    ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "prefill L %lld: %s", (long long)L, lm_last_error());
    tbuf got = tbuf_new(LM_BF16, n);
    ddownload(&got, dout);
    const ref_err e = ref_compare(&got, want, n);
    const double floor = out_floor(LM_BF16, want, n);

    /* The CPU backend on the same inputs, for the record. */
    tbuf cpu = tbuf_new(LM_BF16, n);
    lm_tensor hq = lm_tensor_4d(q.data, LM_BF16, LM_CPU, 1, L, H, D), hk = hq, hv = hq, ho = hq;
    hk.data = k.data, hv.data = v.data, ho.data = cpu.data;
    lm_core_args c = a;
    c.q = &hq, c.k = &hk, c.v = &hv, c.out = &ho, c.state = NULL, c.normalizer = NULL;
    ck_assert_msg(lm_linear_attn_prefill(&c, NULL) == LM_OK, "cpu: %s", lm_last_error());
    const double ecpu = ref_compare(&cpu, want, n).rel;

    char desc[96];
    snprintf(desc, sizeof desc, "long L %lld causal %d", (long long)L, causal);
    gpu_note(desc, LM_BF16, e.rel, floor);
    printf("  %s: gpu %.4g = %.3f x floor %.4g; cpu %.4g = %.3f x floor\n", desc, e.rel, e.rel / floor, floor,
           ecpu, ecpu / floor);
    ck_assert_msg(e.unwritten == 0, "%s: %lld outputs not written", desc, (long long)e.unwritten);
    ck_assert_msg(e.rel <= 1.2 * floor, "%s: error %.4g > 1.2 x floor %.4g", desc, e.rel, floor);
    tbuf_free(&got);
    tbuf_free(&cpu);
    tbuf_free(&q);
    tbuf_free(&k);
    tbuf_free(&v);
    free(want);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dS), cudaFree(dz);
}

START_TEST(test_long)
{
    static const int64_t Ls[] = { 65537, 262144, 1048576 };
    ref_seed(301);
    for (int i = 0; i < 3; i++)
        run_long(Ls[i], 1);
    run_long(262144, 0);
}
END_TEST

Suite *gpu_long_suite(void)
{
    Suite *s = suite_create("gpu_long");
    TCase *tc = tcase_create("long");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_long);
    suite_add_tcase(s, tc);
    return s;
}
