/*
 * cpu_chunk.h - the small pieces the CPU attention core (cpu_attend.c) and
 * its backward (cpu_backward.c) are built from: chunk rows in and out of
 * strided views, the feature map (and its derivative), and the vector loops,
 * written so the compiler vectorises them (omp simd).
 */
#ifndef LM_CPU_CHUNK_H
#define LM_CPU_CHUNK_H

#include "lm_impl.h"
#include "dtype.h"

#include <math.h>
#include <omp.h>

/* The hot loops are also compiled for AVX2 + FMA, picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__)
#define LMI_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LMI_HOT
#endif

/* OpenMP threads of a call: num_threads, or the OpenMP default for 0. */
static inline int64_t lmi_cpu_threads(int num_threads)
{
    return num_threads > 0 ? num_threads : omp_get_max_threads();
}

/* dst[i][:D] = src[b, t0 + i, h, :] as fp32, for i < n ([B, L, H, D] view). */
static inline void lmi_chunk_load(float *dst, const lmi_view *src, int64_t b, int64_t t0,
                                  int64_t n, int64_t h, int64_t D)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t off = b * src->s[0] + (t0 + i) * src->s[1] + h * src->s[2];
        lmi_load_row(dst + i * D, lmi_elem(src->data, src->dtype, off), src->dtype, D,
                     src->s[3]);
    }
}

/* dst[b, t0 + i, h, :] = x[i][:D] in dst's dtype, for i < n. */
static inline void lmi_chunk_store(const lmi_view *dst, const float *x, int64_t b, int64_t t0,
                                   int64_t n, int64_t h, int64_t D)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t off = b * dst->s[0] + (t0 + i) * dst->s[1] + h * dst->s[2];
        lmi_store_row(lmi_elem(dst->data, dst->dtype, off), dst->dtype, x + i * D, D,
                      dst->s[3]);
    }
}

/* Decay exponents of a chunk of n keys from t0 in batch row b: cnt[i] = the
 * unmasked keys among its rows 0 .. i-1 (cnt[i] = i without a mask). A
 * masked key leaves the state exactly as it was, decay included, so the
 * decay between rows j < i is g^(cnt[i] - cnt[j]), not g^(i - j). */
static inline void lmi_chunk_counts(int *cnt, const lmi_core_params *p, int64_t b, int64_t t0,
                                    int64_t n)
{
    cnt[0] = 0;
    for (int64_t i = 0; i < n; i++)
        cnt[i + 1] = cnt[i] + !(p->mask && p->mask[b * p->mask_s[0] + (t0 + i) * p->mask_s[1]]);
}

/* x <- phi(x) in place; dphi (when given) <- phi'(x). NaN stays NaN. */
static inline void lmi_phi(float *x, float *dphi, int64_t n, int fm)
{
    for (int64_t i = 0; i < n; i++) {
        float y = x[i], d = 1.0f;
        if (fm == LM_FEATURE_ELU1) {
            y = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
            d = x[i] > 0.0f ? 1.0f : y;
        } else if (fm == LM_FEATURE_RELU) {
            y = x[i] < 0.0f ? 0.0f : x[i];
            d = x[i] <= 0.0f ? 0.0f : 1.0f;
        }
        x[i] = y;
        if (dphi)
            dphi[i] = d;
    }
}

static inline float lmi_dot(const float *restrict x, const float *restrict y, int64_t n)
{
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++)
        acc += x[i] * y[i];
    return acc;
}

static inline void lmi_axpy(float *restrict y, float a, const float *restrict x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static inline void lmi_scale(float *x, float a, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= a;
}

#endif /* LM_CPU_CHUNK_H */
