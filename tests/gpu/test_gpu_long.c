/*
 * test_gpu_long.c - long sequences on CUDA, against a float64 recurrence that
 * runs in parallel over value columns. bf16, elu+1, normalised; the bound is
 * 1.2 x the output-rounding floor.
 *   long: 64K + 1 to 1M tokens, 2 heads of 128, where precision=auto turns
 *     compensated accumulation on and the heads are cut into sequence
 *     segments; the CPU backend on the same inputs for the record.
 *   comp: compensated prefills (precision=auto, more than 65536 tokens) at
 *     ragged lengths, with the final state checked too: 2 heads (many short
 *     segments), and 72 batch rows of one head that share their inputs
 *     (batch stride 0), so that the prefill cannot cut the sequence for
 *     parallelism and its segments are as long as compensation allows. Each
 *     case prints "comp <case>: err E floor F", which bench/gpu_run.sh's
 *     kern2 phase compares between LM_ATTEND_KERNEL=v1 and the default.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAXD = 128, COLS = 8 };

static double phi(double x)
{
    return x > 0 ? x + 1 : exp(x);
}

/* out[t][h][e] for [1, L, H, D] contiguous inputs; causal or not. With S, z:
 * the final state, S[h][d][e] and z[h][d]. */
static void reference(const double *q, const double *k, const double *v, int64_t L, int H, int D, int causal,
                      double *out, double *Sf, double *zf)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int job = 0; job < H * (D / COLS); job++) {
        const int h = job / (D / COLS), e0 = (job % (D / COLS)) * COLS;
        double S[MAXD][COLS] = { { 0 } }, z[MAXD] = { 0 }, fk[MAXD];
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
        if (Sf)
            for (int d = 0; d < D; d++) {
                for (int e = 0; e < COLS; e++)
                    Sf[((int64_t)h * D + d) * D + e0 + e] = S[d][e];
                if (e0 == 0)
                    zf[h * D + d] = z[d];
            }
    }
}

static void run_long(int64_t L, int causal)
{
    enum { H = 2, D = 128 };
    const int64_t n = L * H * D;
    tbuf q = tbuf_new(LM_BF16, n), k = tbuf_new(LM_BF16, n), v = tbuf_new(LM_BF16, n);
    tbuf_random(&q, -2, 2);
    tbuf_random(&k, -2, 2);
    tbuf_random(&v, -1, 1);
    double *want = malloc((size_t)n * sizeof(double));
    ck_assert_ptr_nonnull(want);
    reference(q.ref, k.ref, v.ref, L, H, D, causal, want, NULL, NULL);

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

/* Relative Frobenius error of n fp32 values against float64. */
static double rel_f32(const float *got, const double *want, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)got[i] - want[i];
        num += d * d, den += want[i] * want[i];
    }
    return sqrt(num / den);
}

/* A compensated causal prefill of B x [L, H, D] (B > 1: every batch row reads
 * the same inputs through batch stride 0), its output and final state
 * against float64. */
static void run_comp(int64_t B, int H, int D, int64_t L)
{
    const int64_t n = L * H * D, ns = (int64_t)H * D * D;
    tbuf q = tbuf_new(LM_BF16, n), k = tbuf_new(LM_BF16, n), v = tbuf_new(LM_BF16, n);
    tbuf_random(&q, -2, 2);
    tbuf_random(&k, -2, 2);
    tbuf_random(&v, -1, 1);
    double *want = malloc((size_t)n * sizeof(double)), *wS = malloc((size_t)ns * sizeof(double)),
           *wz = malloc((size_t)H * D * sizeof(double));
    ck_assert(want && wS && wz);
    reference(q.ref, k.ref, v.ref, L, H, D, 1, want, wS, wz);

    void *dq = dupload(&q), *dk = dupload(&k), *dv = dupload(&v), *dout = dmalloc((size_t)(B * n) * 2);
    dpoison(dout, (size_t)(B * n) * 2);
    float *dS = dmalloc((size_t)(B * ns) * sizeof(float)), *dz = dmalloc((size_t)(B * H * D) * sizeof(float));
    CUDA_OK(cudaMemset(dS, 0, (size_t)(B * ns) * sizeof(float))); /* the state is read: empty */
    CUDA_OK(cudaMemset(dz, 0, (size_t)(B * H * D) * sizeof(float)));
    int64_t si[4], so[4];
    ref_strides4(si, 1, L, H, D, 0);
    ref_strides4(so, B, L, H, D, 0);
    si[0] = 0; /* every batch row reads the same tokens */
    lm_tensor tq = ref_tensor4(dq, LM_BF16, LM_CUDA, si, B, L, H, D), tk = ref_tensor4(dk, LM_BF16, LM_CUDA, si, B, L, H, D),
              tv = ref_tensor4(dv, LM_BF16, LM_CUDA, si, B, L, H, D), to = ref_tensor4(dout, LM_BF16, LM_CUDA, so, B, L, H, D);
    lm_core_args a;
    ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
    a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to, a.state = dS, a.normalizer = dz;
    a.is_causal = 1;
    ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "prefill L %lld: %s", (long long)L, lm_last_error());

    /* Every batch row against the one reference: the worst of them. */
    tbuf got = tbuf_new(LM_BF16, n);
    float *S = malloc((size_t)ns * sizeof(float)), *z = malloc((size_t)H * D * sizeof(float));
    ck_assert(S && z);
    double err = 0, eS = 0, ez = 0;
    int64_t unwritten = 0;
    for (int64_t b = 0; b < B; b++) {
        ddownload_bytes(got.data, (const char *)dout + b * n * 2, (size_t)n * 2);
        const ref_err e = ref_compare(&got, want, n);
        err = fmax(err, e.rel), unwritten += e.unwritten;
        ddownload_bytes(S, dS + b * ns, (size_t)ns * sizeof(float));
        ddownload_bytes(z, dz + b * H * D, (size_t)(H * D) * sizeof(float));
        eS = fmax(eS, rel_f32(S, wS, ns)), ez = fmax(ez, rel_f32(z, wz, (int64_t)H * D));
    }
    const double floor = out_floor(LM_BF16, want, n);

    char desc[96];
    snprintf(desc, sizeof desc, "L%lld-B%lld-H%d-D%d", (long long)L, (long long)B, H, D);
    gpu_note(desc, LM_BF16, err, floor);
    printf("comp %s: err %.6g floor %.6g = %.4f x floor; final S %.3g, z %.3g\n", desc, err, floor, err / floor,
           eS, ez);
    CHECK(unwritten == 0, "%s: %lld outputs not written", desc, (long long)unwritten);
    CHECK(err <= 1.2 * floor, "%s: error %.4g > 1.2 x floor %.4g", desc, err, floor);
    CHECK(eS <= state_bound(LM_BF16) && ez <= state_bound(LM_BF16), "%s: final state error S %.3g z %.3g > %.3g",
          desc, eS, ez, state_bound(LM_BF16));
    tbuf_free(&got);
    tbuf_free(&q);
    tbuf_free(&k);
    tbuf_free(&v);
    free(want), free(wS), free(wz), free(S), free(z);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dS), cudaFree(dz);
}

START_TEST(test_comp)
{
    static const struct {
        int64_t B;
        int H, D;
        int64_t L;
    } cases[] = {
        { 1, 2, 128, 65536 + 4097 },  /* many short segments (the scan's Kahan) */
        { 1, 2, 128, 131072 + 13 },
        { 72, 1, 64, 131072 + 13 },   /* segments of 44K tokens: 3 on v2, 1 on v1 */
        { 72, 1, 128, 65536 + 4097 }, /* 2 segments of 34K on v2 */
    };
    ref_seed(302);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_comp(cases[i].B, cases[i].H, cases[i].D, cases[i].L);
    gpu_end_test();
}
END_TEST

/* A suite of one test case holding one test. */
static Suite *one_test(const char *name, const TTest *test, int timeout)
{
    Suite *s = suite_create(name);
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
    return s;
}

Suite *gpu_comp_suite(void)
{
    return one_test("gpu_comp", test_comp, 600);
}

Suite *gpu_long_suite(void)
{
    return one_test("gpu_long", test_long, 900);
}
