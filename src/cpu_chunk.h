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

/* One task's chunk buffers (cpu_attend.c; the hybrid's linear part too). */
typedef struct lmi_cpu_task {
    float *q, *k, *v; /* chunk rows: [C][Dk], [C][Dk], [C][Dv] (phi applied to q, k) */
    float *a;         /* [C][C] */
    float *o;         /* [C][Dv] */
    float *S, *z;     /* running state [Dk][Dv], [Dk] */
    float *cS, *cz;   /* Kahan compensation, when compensated */
    float *dS, *dz;   /* chunk increment, when compensated */
    float pw[LMI_CPU_CHUNK + 1]; /* decay^i */
    int cnt[LMI_CPU_CHUNK + 1];  /* decay exponents of the chunk's rows (lmi_chunk_counts) */
} lmi_cpu_task;

/* Floats of one task's buffers for the head dims of p, and t's buffers
 * carved from c (that many floats). */
int64_t lmi_cpu_task_floats(const lmi_core_params *p, int compensated);
void lmi_cpu_task_carve(lmi_cpu_task *t, const lmi_core_params *p, int compensated, float *c);
/* t's S, z := the state of (batch row b, kv head hk), or zeros without one
 * (or a fresh call); the Kahan compensation zeroed. */
void lmi_cpu_task_start(lmi_cpu_task *t, const lmi_core_params *p, int64_t b, int64_t hk);
/* S <- p^n S + sum_j p^(n-1-j) k_j v_j^T over the chunk's n keys in t->k,
 * t->v; z likewise (Kahan compensated when p->compensated; pw and cnt
 * unread unless decayed). */
void lmi_cpu_absorb(lmi_cpu_task *t, const lmi_core_params *p, int64_t n, int decayed);

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
