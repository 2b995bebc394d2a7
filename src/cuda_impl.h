/*
 * cuda_impl.h - what the CUDA host sources (cuda_*.c) share: the per-handle
 * context, the cuBLASLt calls, the prefill orchestration and the module's
 * helpers.
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

/* ceil(a / b) for a >= 0, b > 0. */
static inline int64_t lmi_cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* Length of the segments of whole chunks (LMK_CHUNK tokens) that cut n > 0
 * tokens into about `want` of them (clamped to 1 .. the chunks there are). */
static inline int64_t lmi_segment_len(int64_t n, int64_t want)
{
    const int64_t chunks = lmi_cdiv(n, LMK_CHUNK);
    return lmi_cdiv(chunks, want < 1 ? 1 : want > chunks ? chunks : want) * LMK_CHUNK;
}

/* The backend table for cuda_device (-1: current), handed to the core
 * through plugin.h; NO_DEVICE / UNSUPPORTED when the GPU cannot serve. */
lm_status lmi_cuda_open_backend(int cuda_device, const lmi_backend **out);

/* Makes `device` current for the duration of a call; *prev restores it. */
lm_status lmi_cuda_enter(int device, int *prev);
void lmi_cuda_leave(int device, int prev);

/* Y[b] = alpha X[b] W^T + beta Y[b] + bias for b < batch; row-major, strides
 * in elements. X is [rows, K], or stored as its transpose [K, rows] when x_t;
 * W is [N, K], or stored as [K, N] when w_t, and the same for every b. With
 * these the module's backward is GEMMs too: dx = dy W (w_t), dW += dy^T x
 * (x_t, w_t). X and W are in dtype; Y too, or fp32 when y_f32 (fp32
 * accumulators of weight gradients). */
typedef struct lmi_gemm {
    int64_t rows, N, K, batch;
    const void *X;
    int64_t ldx, sx; /* row stride, batch stride */
    const void *W;
    int64_t ldw;     /* row stride */
    const void *bias; /* [N] in dtype, or NULL */
    void *Y;
    int64_t ldy, sy;
    int dtype;
    int x_t, w_t, y_f32;
    float alpha, beta;
} lmi_gemm;

/* Plans kept per handle: the module backward uses about 10 shapes per slab
 * length, and a call has two lengths (the last slab is ragged). */
#define LMI_GEMM_CACHE 32
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
/* dst = src, a row-major rows x cols matrix converted between dtypes (lm_dtype;
 * LM_F32 for fp32), through cublasLtMatrixTransform. */
lm_status lmi_cuda_convert(lmi_cuda_ctx *ctx, void *dst, int dst_dtype, const void *src, int src_dtype,
                           int64_t rows, int64_t cols, cudaStream_t stream);

/* Orders the handle's work on `stream` after everything it queued before
 * (on another stream), then makes `stream` the handle's stream. */
lm_status lmi_cuda_use_stream(lmi_cuda_ctx *ctx, cudaStream_t stream);

/* Core prefill on device tensors: scratch bytes it needs, and the call
 * itself with that scratch (device memory, ws_bytes of it). */
size_t lmi_cuda_attend_ws(const lmi_core_params *p, int sms);
lm_status lmi_cuda_attend(const lmi_core_params *p, int sms, void *ws, cudaStream_t stream);
/* The attention kernels' parameters of p (views, sizes, options, v2 unless
 * LM_ATTEND_KERNEL=v1); L, segments and states are the caller's to set. */
void lmi_cuda_attend_params(const lmi_core_params *p, lmk_attend *k);
/* Whether the prefill of p (causal, L > 0) runs its CAUSAL launch on the v2
 * kernel, so that it can write p->den; asked before anything is queued. */
int lmi_cuda_prefill_den(const lmi_core_params *p);
/* out[(b * Hkv + h) * nseg + s] = decay over segment s of batch row b with
 * p's mask (a masked key does not decay the state), segments of seg_len of L. */
lm_status lmi_cuda_seg_decay(const lmi_core_params *p, int64_t L, int64_t seg_len, int64_t nseg, float *out,
                             cudaStream_t stream);
/* The same after lmi_cuda_check_core, with stream-ordered scratch
 * (cuda_backend.c). */
lm_status lmi_cuda_prefill(const lmi_core_params *p, cudaStream_t stream);
/* Core decode step (in place on p->state). */
lm_status lmi_cuda_decode(const lmi_core_params *p, cudaStream_t stream);
/* Core backward (cuda_backward.c), stream-ordered scratch: the tensor-core
 * one of cuda_backward_tc.c where lmi_cuda_backward_tc_ok, else fp32 kernels. */
lm_status lmi_cuda_backward(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream);
int lmi_cuda_backward_tc_ok(const lmi_core_params *p, const lmi_core_grad_params *g);
lm_status lmi_cuda_backward_tc(const lmi_core_params *p, const lmi_core_grad_params *g, cudaStream_t stream);
/* UNSUPPORTED unless the views suit the kernels (unit stride last, sizes). */
lm_status lmi_cuda_check_core(const lmi_core_params *p, int device);
/* Hybrid attention (cuda_hybrid.c): prefill (p->position places the tokens)
 * and decode step (positions from the state), queued on the stream. */
lm_status lmi_cuda_hybrid_prefill(const lmi_core_params *p, cudaStream_t stream);
/* UNSUPPORTED (with the reason) when that prefill would refuse p: its checks
 * alone, nothing queued (a pool checks every sequence before running any). */
lm_status lmi_cuda_hybrid_check(const lmi_core_params *p);
lm_status lmi_cuda_hybrid_decode(const lmi_core_params *p, cudaStream_t stream);
/* The decode kernel's parameters for p (checked; its pool fields zero), for
 * callers that add pool rows (cuda_pool.c). */
lm_status lmi_cuda_hybrid_decode_params(const lmi_core_params *p, lmk_hybrid_decode *d);

/* The engine pool on the GPU (cuda_pool.c). */
extern const lmi_pool_ops lmi_cuda_pool;

/* Module entry points (cuda_module.c, cuda_module_backward.c). */
lm_status lmi_cuda_forward(lm_attn *a, const lmi_forward *f, void *stream);
lm_status lmi_cuda_step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream);
lm_status lmi_cuda_attn_backward(lm_attn *a, const lmi_forward *f, const lm_attn_grads *g,
                                 void *stream);

/* What the module's forward and backward share (cuda_module.c). */
typedef struct lmi_cuda_weights {
    const char *w[3]; /* q, k, v projection weights [Dq, E], [Dkv, kdim], [Dkv, vdim] */
    const char *b[3]; /* their biases, or NULL */
    int packed;       /* in_proj_weight: w[0..2] adjacent rows of one matrix */
} lmi_cuda_weights;
lmi_cuda_weights lmi_cuda_weights_of(const lm_attn *a);
/* Whether two descriptors are the same view (self-attention). */
int lmi_cuda_same_tensor(const lm_tensor *x, const lm_tensor *y);
/* Rows [t0, ..) of every batch row of a [B, L, W] tensor: their address, row
 * and batch strides (elements). */
void *lmi_cuda_rows_of(const lm_tensor *t, int64_t t0, int64_t *ld, int64_t *sb);
/* UNSUPPORTED unless t has stride 1 on its last dimension. */
lm_status lmi_cuda_need_unit_stride(const lm_tensor *t, const char *what);
/* Core parameters of the handle's options for batch B and state (S then z,
 * or NULL = empty); sizes, views and lengths are left to the caller. */
void lmi_cuda_core_base(const lm_attn *a, int64_t B, float *state, int compensated, lmi_core_params *p);
/* A [B*n, ld] row block of dtype as a [B, n, H, D] core view. */
lmi_view lmi_cuda_view(void *base, int dtype, int64_t n, int64_t ld, int64_t D);

/* The fields a decode step's kernel parameters share (lmk_decode,
 * lmk_hybrid_decode: kernels/lm_kernels.h), set from core parameters p:
 * q, k, v and out as [B, 1, H, D] views without the token dimension (data,
 * batch and head strides), the mask, the state, dtype, sizes, feature map,
 * eps and scale. A macro, not a function: the two structs are different
 * types whose shared fields have the same names and types. */
#define LMI_DECODE_COMMON(d, p)                                                              \
    do {                                                                                     \
        (d).q = (p)->q.data, (d).k = (p)->k.data;                                            \
        (d).v = (p)->v.data, (d).out = (p)->out.data;                                        \
        (d).sq[0] = (p)->q.s[0], (d).sq[1] = (p)->q.s[2];                                    \
        (d).sk[0] = (p)->k.s[0], (d).sk[1] = (p)->k.s[2];                                    \
        (d).sv[0] = (p)->v.s[0], (d).sv[1] = (p)->v.s[2];                                    \
        (d).so[0] = (p)->out.s[0], (d).so[1] = (p)->out.s[2];                                \
        (d).mask = (p)->mask, (d).mask_s0 = (p)->mask_s[0];                                  \
        (d).S = (p)->state, (d).z = (p)->normalizer;                                         \
        (d).dtype = (p)->q.dtype;                                                            \
        (d).B = (int)(p)->B, (d).Hq = (int)(p)->Hq, (d).Hkv = (int)(p)->Hkv;                  \
        (d).Dk = (int)(p)->Dk, (d).Dv = (int)(p)->Dv;                                        \
        (d).feature_map = (p)->feature_map, (d).eps = (p)->eps, (d).scale = (p)->scale;      \
    } while (0)

#endif /* LM_CUDA_IMPL_H */
