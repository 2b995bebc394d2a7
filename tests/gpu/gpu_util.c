/* gpu_util.c - device buffers, floors, bounds and the summary (gpu_util.h). */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int gpu_small;

void *dmalloc(size_t n)
{
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, n ? n : 1));
    return d;
}

void *dupload_bytes(const void *p, size_t n)
{
    void *d = dmalloc(n);
    CUDA_OK(cudaMemcpy(d, p, n, cudaMemcpyHostToDevice));
    return d;
}

void *dupload(const tbuf *b)
{
    return dupload_bytes(b->data, (size_t)b->n * lm_dtype_size(b->dtype));
}

void ddownload_bytes(void *p, const void *d, size_t n)
{
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(p, d, n, cudaMemcpyDeviceToHost));
}

void ddownload(tbuf *b, const void *d)
{
    ddownload_bytes(b->data, d, (size_t)b->n * lm_dtype_size(b->dtype));
}

void dpoison(void *d, size_t n)
{
    CUDA_OK(cudaMemset(d, 0xff, n));
}

double out_floor(lm_dtype dtype, const double *want, int64_t n)
{
    tbuf r = tbuf_new(dtype, n);
    for (int64_t i = 0; i < n; i++)
        tbuf_set(&r, i, want[i]);
    ref_err e = ref_compare(&r, want, n);
    tbuf_free(&r);
    return e.rel;
}

double out_bound(lm_dtype dtype, double floor, int64_t n)
{
    if (dtype == LM_F32)
        return 3e-5;
    return floor * (1.2 + 3.0 / sqrt((double)n)) + (dtype == LM_BF16 ? 4e-4 : 3e-5);
}

double state_bound(lm_dtype dtype)
{
    return dtype == LM_BF16 ? 4e-3 : 5e-5;
}

static void *d_alloc(size_t n)
{
    return dmalloc(n);
}

static void d_release(void *p)
{
    CUDA_OK(cudaFree(p));
}

static void d_upload(void *dst, const void *src, size_t n)
{
    CUDA_OK(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
}

static double d_out_bound(lm_dtype dtype, const double *want, int64_t n)
{
    return out_bound(dtype, out_floor(dtype, want, n), n);
}

/* Hybrid outputs, bf16 / f16: twice out_bound (the linear part's numerator
 * is rounded to the output dtype once before the division and the output
 * once after it: at most sqrt(2) floors, plus slack); f32 1e-4 (q, k, v and
 * the weights as bf16 hi + lo: ~2^-17 per operand, which exp turns into a
 * relative error of the weights of that times the logits' size). */
static double d_hybrid_out_bound(lm_dtype dtype, const double *want, int64_t n)
{
    return dtype == LM_F32 ? 1e-4 : 2.0 * out_bound(dtype, out_floor(dtype, want, n), n);
}

static void d_note(const char *what, lm_dtype dtype, const double *want, int64_t n, double rel)
{
    gpu_note(what, dtype, rel, out_floor(dtype, want, n));
}

const test_dev gpu_dev = { LM_CUDA, d_alloc, d_release, d_upload, ddownload_bytes, d_out_bound, state_bound, d_note,
                           d_hybrid_out_bound };

static struct {
    double ratio, err;
    char what[96];
} worst[3];

void gpu_note(const char *what, lm_dtype dtype, double err, double floor)
{
    if ((int)dtype < 0 || (int)dtype > 2)
        return;
    const double r = floor > 0 ? err / floor : 0;
    if (r > worst[dtype].ratio) {
        worst[dtype].ratio = r;
        worst[dtype].err = err;
        snprintf(worst[dtype].what, sizeof worst[dtype].what, "%s", what);
    }
}

void gpu_print_summary(void)
{
    static const char *names[3] = { "bf16", "f16", "f32" };
    for (int i = 0; i < 3; i++)
        if (worst[i].ratio > 0)
            printf("worst %s error vs float64: %.3g = %.3f x the output-rounding floor (%s)\n",
                   names[i], worst[i].err, worst[i].ratio, worst[i].what);
}

int gpu_fails;

void gpu_end_test(void)
{
    const int f = gpu_fails;
    gpu_fails = 0;
    ck_assert_msg(f == 0, "%d checks failed (printed above)", f);
}
