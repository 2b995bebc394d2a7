/*
 * gpu_util.h - what the GPU suites share: device copies of test buffers,
 * NaN poisoning, tensor descriptors and module handles over test data, the
 * output-rounding floor and the error bounds, and a summary of the worst
 * errors seen.
 */
#ifndef LM_GPU_UTIL_H
#define LM_GPU_UTIL_H

#include "ref.h"

#include <cuda_runtime_api.h>
#include <stdio.h>

/* 1 when the suites run on their reduced grid (the compute-sanitizer pass). */
extern int gpu_small;

#define CUDA_OK(call)                                                                       \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));          \
    } while (0)

/* Device memory of n bytes (at least 1). */
void *dmalloc(size_t n);
/* Device copy of a test buffer / of host bytes. */
void *dupload(const tbuf *b);
void *dupload_bytes(const void *p, size_t n);
/* Reads device memory back into a test buffer / host bytes. */
void ddownload(tbuf *b, const void *d);
void ddownload_bytes(void *p, const void *d, size_t n);
/* Fills n bytes with 0xff: NaN in bf16, f16 and f32. */
void dpoison(void *d, size_t n);

/* A descriptor of [B, L, W] memory with strides s (elements); [B, L, H, D]
 * views are ref_tensor4 (tests/ref.h). */
lm_tensor view3(void *data, lm_dtype dt, lm_device dev, const int64_t *s, int64_t B, int64_t L, int64_t W);

/* What a module handle is made from: the lm_attn_config fields the suites
 * set (the others keep lm_attn_config_default's values) and the weights on
 * `device` (host pointers for LM_CPU). packed: wq is the packed
 * in_proj_weight and wk, wv are not used; NULL biases: none. */
typedef struct gpu_attn_spec {
    lm_dtype dtype;
    lm_device device;
    int64_t E, Hq, Hkv, D, kdim, vdim;
    lm_feature_map feature_map;
    int normalize;
    const float *decay; /* NULL: no decay */
    int packed;
    const void *wq, *wk, *wv, *bin, *wo, *bo;
} gpu_attn_spec;

/* A handle with the spec's config and weights; asserts both calls succeed. */
lm_attn *gpu_attn_new(const gpu_attn_spec *s);

/* ||round_to_dtype(want) - want|| / ||want||: the error of a perfect result
 * rounded to the output dtype, the floor every bound is stated against. */
double out_floor(lm_dtype dtype, const double *want, int64_t n);

/* Bound on the output error against float64: bf16/f16 1.2 x the floor (the
 * product's precision target), plus sampling slack 3/sqrt(n) x floor for small
 * outputs, plus the kernels' own roundings (phi(k) and the state as bf16 in
 * the readout: ~2^-9 / sqrt(Dk), 1-3e-4 measured at L = 1; f16 operands are
 * hi + lo pairs: ~1e-5), which only show where the floor vanishes because
 * the exact output is representable (L = 1: o = v). f32: 3e-5 (hi + lo
 * pairs carry ~16 bits). */
double out_bound(lm_dtype dtype, double floor, int64_t n);

/* Bound on the final fp32 state: phi(k) is rounded to bf16 for bf16 inputs. */
double state_bound(lm_dtype dtype);

/* The GPU as a test_dev (ref.h): device memory, out_bound over out_floor,
 * state_bound, gpu_note. */
extern const test_dev gpu_dev;

/* Failures are counted and printed, so one run shows all of them; each test
 * asserts none at its end with gpu_end_test(). */
extern int gpu_fails;
#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            gpu_fails++;                                                                    \
            printf("FAIL %s: ", __func__);                                                  \
            printf(__VA_ARGS__);                                                            \
            printf("\n");                                                                   \
        }                                                                                   \
    } while (0)
void gpu_end_test(void);

/* Records err / floor per dtype for the summary printed at the end. */
void gpu_note(const char *what, lm_dtype dtype, double err, double floor);
void gpu_print_summary(void);

#endif /* LM_GPU_UTIL_H */
