/*
 * cuda_impl.h - what the CUDA host sources (cuda_*.c) share: the per-handle
 * context, the cuBLASLt projection call and the prefill orchestration.
 */
#ifndef LM_CUDA_IMPL_H
#define LM_CUDA_IMPL_H

#include "lm_impl.h"
#include "lm_kernels.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

/* cuBLAS statuses become an lm_status naming the call (cuda_error.c). */
lm_status lmi_cublas_fail(int status, const char *what, const char *file, int line);
#define LMI_CUBLAS_TRY(call)                                                \
    do {                                                                    \
        int lmi_s_ = (int)(call);                                           \
        if (lmi_s_ != 0)                                                    \
            return lmi_cublas_fail(lmi_s_, #call, __FILE__, __LINE__);      \
    } while (0)

/* Makes `device` current for the duration of a call; *prev restores it. */
lm_status lmi_cuda_enter(int device, int *prev);
void lmi_cuda_leave(int device, int prev);

/* Y[b] = X[b] W^T + bias for b < batch; row-major, strides in elements. */
typedef struct lmi_gemm {
    int64_t rows, N, K, batch;
    const void *X;
    int64_t ldx, sx; /* row stride, batch stride */
    const void *W;   /* [N, K], row stride ldw */
    int64_t ldw;
    const void *bias; /* [N] or NULL */
    void *Y;
    int64_t ldy, sy;
    int dtype;
} lmi_gemm;

#define LMI_GEMM_CACHE 8
typedef struct lmi_gemm_plan {
    int used;
    int64_t key[12];
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} lmi_gemm_plan;

/* Per-handle resources (a->be_ctx). */
typedef struct lmi_cuda_ctx {
    int device, sms;
    cublasLtHandle_t lt;
    void *lt_ws;
    size_t lt_ws_bytes;
    cudaEvent_t order;    /* hands the handle's work over between streams */
    cudaStream_t stream;  /* stream of the latest call: copies and zeroing go there */
    void *buf;            /* forward slabs and prefill scratch, grown on demand */
    size_t buf_bytes;
    void *step_buf;       /* step: projections of one token, for step_batch rows */
    int64_t step_batch;
    lmi_gemm_plan plans[LMI_GEMM_CACHE];
    int next_plan;
} lmi_cuda_ctx;

lm_status lmi_cuda_gemm(lmi_cuda_ctx *ctx, const lmi_gemm *g, cudaStream_t stream);
void lmi_cuda_gemm_release(lmi_cuda_ctx *ctx);

/* Orders the handle's work on `stream` after everything it queued before
 * (on another stream), then makes `stream` the handle's stream. */
lm_status lmi_cuda_use_stream(lmi_cuda_ctx *ctx, cudaStream_t stream);

/* Core prefill on device tensors: scratch bytes it needs, and the call
 * itself with that scratch (device memory, ws_bytes of it). */
size_t lmi_cuda_attend_ws(const lmi_core_params *p, int sms);
lm_status lmi_cuda_attend(const lmi_core_params *p, int sms, void *ws, cudaStream_t stream);
/* Core decode step (in place on p->state). */
lm_status lmi_cuda_decode(const lmi_core_params *p, cudaStream_t stream);
/* Core backward (cuda_backward.c), stream-ordered scratch. */
lm_status lmi_cuda_backward(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream);
/* UNSUPPORTED unless the views suit the kernels (unit stride last, sizes). */
lm_status lmi_cuda_check_core(const lmi_core_params *p, int device);

/* Module entry points (cuda_module.c). */
lm_status lmi_cuda_forward(lm_attn *a, const lmi_forward *f, void *stream);
lm_status lmi_cuda_step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream);

#endif /* LM_CUDA_IMPL_H */
