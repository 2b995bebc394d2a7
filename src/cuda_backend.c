/*
 * cuda_backend.c - the CUDA backend table: device discovery, per-handle
 * resources (cuBLASLt handle and workspace, an event that orders work across
 * the caller's streams), device memory for states, and the core entry points
 * (prefill with stream-ordered scratch, decode with none, backward in
 * cuda_backward.c; the module's forward and backward are cuda_module*.c).
 */
#include "cuda_impl.h"

#include <stdlib.h>
#include <string.h>

/* cuBLASLt workspace per handle: enough for its best kernels at E = 4096. */
#define LT_WORKSPACE (32u << 20)

static lmi_cuda_ctx *ctx_of(const lm_attn *a)
{
    return (lmi_cuda_ctx *)a->be_ctx;
}

lm_status lmi_cuda_use_stream(lmi_cuda_ctx *ctx, cudaStream_t stream)
{
    if (stream == ctx->stream)
        return LM_OK;
    /* A stream being captured into a graph may not wait on outside work: the
     * caller ran the handle on that stream (or synchronised) before capturing. */
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    LMI_CUDA_TRY(cudaStreamIsCapturing(stream, &cs));
    if (cs == cudaStreamCaptureStatusNone) {
        LMI_CUDA_TRY(cudaEventRecord(ctx->order, ctx->stream));
        LMI_CUDA_TRY(cudaStreamWaitEvent(stream, ctx->order, 0));
    }
    ctx->stream = stream;
    return LM_OK;
}

static void release(lmi_cuda_ctx *ctx)
{
    lmi_cuda_gemm_release(ctx);
    if (ctx->lt)
        cublasLtDestroy(ctx->lt);
    if (ctx->order)
        cudaEventDestroy(ctx->order);
    cudaFree(ctx->lt_ws);
    cudaFree(ctx->buf);
    cudaFree(ctx->step_buf);
    free(ctx);
}

static lm_status setup(lmi_cuda_ctx *ctx)
{
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&ctx->sms, cudaDevAttrMultiProcessorCount, ctx->device));
    LMI_CUBLAS_TRY(cublasLtCreate(&ctx->lt));
    LMI_CUDA_TRY(cudaEventCreateWithFlags(&ctx->order, cudaEventDisableTiming));
    ctx->lt_ws_bytes = LT_WORKSPACE;
    LMI_CUDA_TRY(cudaMalloc(&ctx->lt_ws, ctx->lt_ws_bytes));
    return LM_OK;
}

static lm_status init(lm_attn *a)
{
    lmi_cuda_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda: cannot allocate the handle's context");
    ctx->device = a->cfg.cuda_device;
    int prev;
    lm_status st = LM_OK;
    if (ctx->device < 0 && cudaGetDevice(&ctx->device) != cudaSuccess)
        st = lmi_error(LM_ERR_NO_DEVICE, "cuda: no current device");
    if (st || (st = lmi_cuda_enter(ctx->device, &prev))) {
        free(ctx);
        return st;
    }
    st = setup(ctx);
    lmi_cuda_leave(ctx->device, prev);
    if (st) {
        release(ctx);
        return st;
    }
    a->be_ctx = ctx;
    return LM_OK;
}

static void fini(lm_attn *a)
{
    lmi_cuda_ctx *ctx = ctx_of(a);
    if (!ctx)
        return;
    const int device = ctx->device;
    int prev;
    const int entered = lmi_cuda_enter(device, &prev) == LM_OK;
    release(ctx);
    if (entered)
        lmi_cuda_leave(device, prev);
    a->be_ctx = NULL;
}

static lm_status dev_alloc(lm_attn *a, size_t bytes, void **ptr)
{
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(a)->device, &prev);
    if (st)
        return st;
    cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
    lmi_cuda_leave(ctx_of(a)->device, prev);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it */
        *ptr = NULL;
        return lmi_cuda_fail(e, "cudaMalloc of the state", __FILE__, __LINE__);
    }
    return LM_OK;
}

static void dev_free(lm_attn *a, void *ptr)
{
    int prev;
    const int entered = lmi_cuda_enter(ctx_of(a)->device, &prev) == LM_OK;
    cudaFree(ptr);
    if (entered)
        lmi_cuda_leave(ctx_of(a)->device, prev);
}

/* Device copies and zeroing are queued on the handle's stream, so they stay
 * ordered with its forward/step; copies that involve the host wait. */
static lm_status copy_on(lmi_cuda_ctx *ctx, void *dst, const void *src, size_t bytes, int dir)
{
    static const enum cudaMemcpyKind kinds[] = { cudaMemcpyDeviceToDevice, cudaMemcpyHostToDevice,
                                                 cudaMemcpyDeviceToHost };
    LMI_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kinds[dir], ctx->stream));
    if (dir != 0)
        LMI_CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return LM_OK;
}

static lm_status dev_copy(lm_attn *a, void *dst, const void *src, size_t bytes, int dir)
{
    if (dir < 0 || dir > 2)
        return lmi_error(LM_ERR_INTERNAL, "cuda: copy direction %d", dir);
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(a)->device, &prev);
    if (st)
        return st;
    st = copy_on(ctx_of(a), dst, src, bytes, dir);
    lmi_cuda_leave(ctx_of(a)->device, prev);
    return st;
}

static lm_status zero_on(lmi_cuda_ctx *ctx, void *ptr, size_t bytes)
{
    LMI_CUDA_TRY(cudaMemsetAsync(ptr, 0, bytes, ctx->stream));
    return LM_OK;
}

static lm_status dev_zero(lm_attn *a, void *ptr, size_t bytes)
{
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(a)->device, &prev);
    if (st)
        return st;
    st = zero_on(ctx_of(a), ptr, bytes);
    lmi_cuda_leave(ctx_of(a)->device, prev);
    return st;
}

lm_status lmi_cuda_prefill(const lmi_core_params *p, cudaStream_t s)
{
    int dev, sms;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    lm_status st = lmi_cuda_check_core(p, dev);
    if (st)
        return st;
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const size_t bytes = lmi_cuda_attend_ws(p, sms);
    if (p->ws) { /* the caller's: nothing allocated, capturable */
        if (p->ws_bytes < bytes)
            return lmi_ws_short(p->ws_bytes, bytes, NULL);
        return lmi_cuda_attend(p, sms, p->ws, s);
    }
    void *ws = NULL;
    if (bytes)
        LMI_CUDA_TRY(cudaMallocAsync(&ws, bytes, s));
    st = lmi_cuda_attend(p, sms, ws, s);
    if (ws) {
        cudaError_t e = cudaFreeAsync(ws, s);
        if (st == LM_OK && e != cudaSuccess)
            st = lmi_cuda_fail(e, "cudaFreeAsync(scratch)", __FILE__, __LINE__);
    }
    return st;
}

static lm_status core_prefill(const lmi_core_params *p, void *stream)
{
    return lmi_cuda_prefill(p, (cudaStream_t)stream);
}

static lm_status core_prefill_ws(const lmi_core_params *p, size_t *bytes)
{
    int dev, sms;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    *bytes = lmi_cuda_attend_ws(p, sms);
    return LM_OK;
}

static lm_status core_decode(const lmi_core_params *p, void *stream)
{
    const lmi_view *v[] = { &p->q, &p->k, &p->v, &p->out };
    for (int i = 0; i < 4; i++)
        if (v[i]->s[3] != 1)
            return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decode needs stride 1 on the last dimension");
    return lmi_cuda_decode(p, (cudaStream_t)stream);
}

static lm_status core_hybrid_prefill(const lmi_core_params *p, void *stream)
{
    return lmi_cuda_hybrid_prefill(p, (cudaStream_t)stream);
}

static lm_status core_hybrid_decode(const lmi_core_params *p, void *stream)
{
    const lmi_view *v[] = { &p->q, &p->k, &p->v, &p->out };
    for (int i = 0; i < 4; i++)
        if (v[i]->s[3] != 1)
            return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decode needs stride 1 on the last dimension");
    return lmi_cuda_hybrid_decode(p, (cudaStream_t)stream);
}

static lm_status core_capturing(void *stream, int *yes)
{
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    LMI_CUDA_TRY(cudaStreamIsCapturing((cudaStream_t)stream, &cs));
    *yes = cs != cudaStreamCaptureStatusNone;
    return LM_OK;
}

/* The core's fresh_state: on the current device, the caller's stream. */
static lm_status core_zero_async(void *ptr, size_t bytes, void *stream)
{
    LMI_CUDA_TRY(cudaMemsetAsync(ptr, 0, bytes, (cudaStream_t)stream));
    return LM_OK;
}

static const lmi_backend cuda_backend = {
    .name = "cuda",
    .init = init,
    .fini = fini,
    .alloc = dev_alloc,
    .free = dev_free,
    .copy = dev_copy,
    .zero = dev_zero,
    .forward = lmi_cuda_forward,
    .step = lmi_cuda_step,
    .prefill = core_prefill,
    .prefill_ws = core_prefill_ws,
    .decode = core_decode,
    .backward = lmi_cuda_backward,
    .attn_backward = lmi_cuda_attn_backward,
    .pool = &lmi_cuda_pool,
    .hybrid_prefill = core_hybrid_prefill,
    .hybrid_decode = core_hybrid_decode,
    .capturing = core_capturing,
    .zero_async = core_zero_async,
};

lm_status lmi_cuda_open_backend(int cuda_device, const lmi_backend **out)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return lmi_error(LM_ERR_NO_DEVICE, "no usable CUDA device: %s (%s)", cudaGetErrorString(e),
                         cudaGetErrorName(e));
    }
    if (n == 0)
        return lmi_error(LM_ERR_NO_DEVICE, "no CUDA device found");
    if (cuda_device < -1 || cuda_device >= n)
        return lmi_error(LM_ERR_NO_DEVICE, "CUDA device %d does not exist (%d found)", cuda_device, n);
    int dev = cuda_device;
    if (dev < 0)
        LMI_CUDA_TRY(cudaGetDevice(&dev));
    int major = 0;
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major < 8)
        return lmi_error(LM_ERR_UNSUPPORTED, "CUDA device %d has compute capability %d.x; Liquid "
                                             "Memory's kernels need 8.0 or newer", dev, major);
    *out = &cuda_backend;
    return LM_OK;
}
