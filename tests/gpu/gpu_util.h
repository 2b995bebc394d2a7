/*
 * gpu_util.h - what the GPU suites share: device copies of test buffers,
 * NaN poisoning, the output-rounding floor and the error bounds, and a
 * summary of the worst errors seen.
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

/* Begins a capture on s, runs call (an lm_status expression that queues its
 * work on s), ends the capture and gives call's status. IN_CAPTURE drops the
 * graph (for calls that must refuse capture); IN_GRAPH, when call returned
 * LM_OK, first launches the graph once on s (a captured call run for real). */
#define CAPTURED(s, call, launch)                                                           \
    ({                                                                                      \
        cudaGraph_t g_;                                                                     \
        CUDA_OK(cudaStreamBeginCapture((s), cudaStreamCaptureModeThreadLocal));            \
        lm_status r_ = (call);                                                              \
        CUDA_OK(cudaStreamEndCapture((s), &g_));                                            \
        if ((launch) && r_ == LM_OK) {                                                      \
            cudaGraphExec_t x_;                                                             \
            CUDA_OK(cudaGraphInstantiate(&x_, g_, 0));                                      \
            CUDA_OK(cudaGraphLaunch(x_, (s)));                                              \
            CUDA_OK(cudaGraphExecDestroy(x_));                                              \
        }                                                                                   \
        CUDA_OK(cudaGraphDestroy(g_));                                                      \
        r_;                                                                                 \
    })
#define IN_CAPTURE(s, call) CAPTURED(s, call, 0)
#define IN_GRAPH(s, call) CAPTURED(s, call, 1)

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
