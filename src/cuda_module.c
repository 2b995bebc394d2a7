/*
 * cuda_module.c - the module on the GPU: q/k/v/out projections through
 * cuBLASLt (bias in the epilogue) around the attention core, streamed
 * through the sequence in slabs so that extra device memory is O(slab):
 * project a slab, attend (state carried on the device), out-project straight
 * into the caller's output. Bidirectional: keys into the state slab by slab,
 * then queries out. The step projects one token, runs the decode kernel and
 * out-projects, with buffers that exist before it is called: no allocation,
 * no sync, so it can be captured in a CUDA graph.
 */
#include "cuda_impl.h"

#include <string.h>

/* Slab size: projections of this many bytes at most (B x tokens x (q, k, v, o)). */
#define SLAB_BYTES ((int64_t)256 << 20)

/* ---- helpers the backward (cuda_module_backward.c) shares ---- */

lmi_cuda_weights lmi_cuda_weights_of(const lm_attn *a)
{
    const int64_t es = (int64_t)lmi_dtype_bytes(a->cfg.dtype), E = a->E;
    const int64_t Dq = a->Hq * a->D, Dkv = a->Hkv * a->D;
    const lm_weights *w = &a->w;
    lmi_cuda_weights r = { .w = { w->q_proj_weight, w->k_proj_weight, w->v_proj_weight } };
    if (w->in_proj_weight) {
        r.w[0] = w->in_proj_weight;
        r.w[1] = r.w[0] + Dq * E * es;
        r.w[2] = r.w[1] + Dkv * E * es;
        r.packed = 1;
    }
    if (w->in_proj_bias) {
        r.b[0] = w->in_proj_bias;
        r.b[1] = r.b[0] + Dq * es;
        r.b[2] = r.b[1] + Dkv * es;
    }
    return r;
}

int lmi_cuda_same_tensor(const lm_tensor *x, const lm_tensor *y)
{
    return x == y || (x->data == y->data && x->dtype == y->dtype &&
                      !memcmp(x->shape, y->shape, sizeof x->shape) &&
                      !memcmp(x->stride, y->stride, sizeof x->stride));
}

void *lmi_cuda_rows_of(const lm_tensor *t, int64_t t0, int64_t *ld, int64_t *sb)
{
    *ld = t->stride[1];
    *sb = t->stride[0];
    return (char *)t->data + t0 * t->stride[1] * (int64_t)lmi_dtype_bytes(t->dtype);
}

lm_status lmi_cuda_need_unit_stride(const lm_tensor *t, const char *what)
{
    if (t->stride[t->ndim - 1] != 1)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %s needs stride 1 on its last dimension", what);
    return LM_OK;
}

void lmi_cuda_core_base(const lm_attn *a, int64_t B, float *state, int compensated, lmi_core_params *p)
{
    memset(p, 0, sizeof *p);
    p->B = B, p->Hq = a->Hq, p->Hkv = a->Hkv, p->Dk = a->D, p->Dv = a->D;
    p->state = state;
    p->normalizer = state ? state + B * a->Hkv * a->D * a->D : NULL;
    p->decay = a->decay;
    p->feature_map = a->cfg.feature_map;
    p->normalize = a->cfg.normalize;
    p->compensated = compensated;
    p->exact = a->cfg.precision == LM_PRECISION_ON;
    p->eps = a->cfg.eps;
    p->scale = a->cfg.scale;
}

lmi_view lmi_cuda_view(void *base, int dtype, int64_t n, int64_t ld, int64_t D)
{
    lmi_view v = { .data = base, .dtype = dtype, .s = { n * ld, ld, D, 1 } };
    return v;
}

/* ---- the forward ---- */

static lm_status project(lmi_cuda_ctx *ctx, const lm_attn *a, const lm_tensor *x, int64_t t0,
                         int64_t m, int64_t B, const void *w, int64_t N, int64_t K, const void *bias,
                         void *y, int64_t ldy, cudaStream_t s)
{
    lmi_gemm g = { .rows = m, .N = N, .K = K, .batch = B, .W = w, .ldw = K, .bias = bias, .Y = y,
                   .ldy = ldy, .sy = m * ldy, .dtype = a->cfg.dtype, .alpha = 1 };
    g.X = lmi_cuda_rows_of(x, t0, &g.ldx, &g.sx);
    if (B == 1)
        g.sx = 0;
    return lmi_cuda_gemm(ctx, &g, s);
}

/* Makes ctx->buf hold `bytes`; growing frees first, so peak memory stays low.
 * Zeroed once: columns a pass does not project (bidirectional) are never
 * garbage, and compute-sanitizer's initcheck, which does not see cuBLASLt's
 * bulk-copy stores, stays quiet. */
static lm_status reserve(lmi_cuda_ctx *ctx, size_t bytes, cudaStream_t s)
{
    if (ctx->buf_bytes >= bytes)
        return LM_OK;
    cudaFree(ctx->buf);
    ctx->buf = NULL;
    ctx->buf_bytes = 0;
    LMI_CUDA_TRY(cudaMalloc(&ctx->buf, bytes));
    ctx->buf_bytes = bytes;
    LMI_CUDA_TRY(cudaMemsetAsync(ctx->buf, 0, bytes, s));
    return LM_OK;
}

static lm_status forward_on(lmi_cuda_ctx *ctx, lm_attn *a, const lmi_forward *f, cudaStream_t s)
{
    const int64_t B = f->B, E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t es = (int64_t)lmi_dtype_bytes(a->cfg.dtype), ld = Dq + 2 * Dkv;
    const lmi_cuda_weights w = lmi_cuda_weights_of(a);
    const int fused = w.packed && lmi_cuda_same_tensor(f->query, f->key) &&
                      lmi_cuda_same_tensor(f->key, f->value);
    lm_status st;
    if ((st = lmi_cuda_need_unit_stride(f->query, "query")) ||
        (st = lmi_cuda_need_unit_stride(f->key, "key")) ||
        (st = lmi_cuda_need_unit_stride(f->value, "value")) ||
        (st = lmi_cuda_need_unit_stride(f->out, "out")))
        return st;

    /* Slab of n tokens (whole chunks): qkv [B, n, ld] and o [B, n, Dq]. */
    const int64_t Lmax = f->Lq > f->Lk ? f->Lq : f->Lk;
    int64_t n = SLAB_BYTES / (B * (ld + Dq) * es) / LMK_CHUNK * LMK_CHUNK;
    n = n < LMK_CHUNK ? LMK_CHUNK : n;
    n = n > Lmax ? Lmax : n;
    lmi_core_params p;
    lmi_cuda_core_base(a, B, f->state, f->compensated, &p);
    lmi_hybrid_module_params(a, f->state, B, f->position, &p);
    p.q.dtype = p.k.dtype = p.v.dtype = p.out.dtype = a->cfg.dtype;
    p.L = p.Lk = n, p.causal = f->causal;
    if ((st = lmi_cuda_check_core(&p, ctx->device)))
        return st;
    size_t ws = 0;
    for (int causal = 0; causal < 2; causal++) { /* scratch of the largest slab call */
        p.causal = causal;
        size_t b = lmi_cuda_attend_ws(&p, ctx->sms);
        ws = b > ws ? b : ws;
    }
    const size_t slab = (size_t)(B * n * (ld + Dq) * es);
    if ((st = reserve(ctx, slab + ws, s)))
        return st;
    char *qkv = ctx->buf, *o = qkv + B * n * ld * es;
    void *scratch = (char *)ctx->buf + slab;

    for (int pass = f->causal ? 1 : 0; pass < 2; pass++) {
        /* pass 0 (bidirectional): keys into the state; pass 1: queries out. */
        const int64_t L = pass == 0 ? f->Lk : f->Lq;
        for (int64_t t0 = 0; t0 < L; t0 += n) {
            const int64_t m = L - t0 < n ? L - t0 : n;
            const int keys = pass == 0 || f->causal;
            p.causal = f->causal;
            p.L = pass == 1 ? m : 0;
            p.Lk = keys ? m : 0;
            if (pass == 1 && f->causal && fused) {
                st = project(ctx, a, f->query, t0, m, B, w.w[0], ld, E, w.b[0], qkv, ld, s);
            } else {
                if (pass == 1)
                    st = project(ctx, a, f->query, t0, m, B, w.w[0], Dq, E, w.b[0], qkv, ld, s);
                if (st == LM_OK && keys)
                    st = project(ctx, a, f->key, t0, m, B, w.w[1], Dkv, a->kdim, w.b[1], qkv + Dq * es,
                                 ld, s);
                if (st == LM_OK && keys)
                    st = project(ctx, a, f->value, t0, m, B, w.w[2], Dkv, a->vdim, w.b[2],
                                 qkv + (Dq + Dkv) * es, ld, s);
            }
            if (st)
                return st;
            p.q = lmi_cuda_view(qkv, a->cfg.dtype, m, ld, D);
            p.k = lmi_cuda_view(qkv + Dq * es, a->cfg.dtype, m, ld, D);
            p.v = lmi_cuda_view(qkv + (Dq + Dkv) * es, a->cfg.dtype, m, ld, D);
            p.out = lmi_cuda_view(o, a->cfg.dtype, m, Dq, D);
            p.mask = NULL;
            if (f->key_padding_mask && keys) {
                const lm_tensor *km = f->key_padding_mask;
                p.mask = (const uint8_t *)km->data + t0 * km->stride[1];
                p.mask_s[0] = km->stride[0], p.mask_s[1] = km->stride[1];
            }
            p.position = f->position + t0; /* hybrid: where the slab starts */
            if ((st = p.hybrid ? lmi_cuda_hybrid_prefill(&p, s) : lmi_cuda_attend(&p, ctx->sms, scratch, s)))
                return st;
            if (pass == 1) {
                lmi_gemm g = { .rows = m, .N = E, .K = Dq, .batch = B, .X = o, .ldx = Dq,
                               .sx = B == 1 ? 0 : m * Dq, .W = a->w.out_proj_weight, .ldw = Dq,
                               .bias = a->w.out_proj_bias, .dtype = a->cfg.dtype, .alpha = 1 };
                g.Y = lmi_cuda_rows_of(f->out, t0, &g.ldy, &g.sy);
                if ((st = lmi_cuda_gemm(ctx, &g, s)))
                    return st;
            }
        }
    }
    return LM_OK;
}

lm_status lmi_cuda_forward(lm_attn *a, const lmi_forward *f, void *stream)
{
    lmi_cuda_ctx *ctx = a->be_ctx;
    int prev;
    lm_status st = lmi_cuda_enter(ctx->device, &prev);
    if (st)
        return st;
    if ((st = lmi_cuda_use_stream(ctx, (cudaStream_t)stream)) == LM_OK)
        st = forward_on(ctx, a, f, (cudaStream_t)stream);
    lmi_cuda_leave(ctx->device, prev);
    return st;
}

static lm_status step_on(lmi_cuda_ctx *ctx, lm_attn *a, const lm_tensor *x, lm_tensor *out,
                         cudaStream_t s)
{
    const int64_t B = x->shape[0], E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t es = (int64_t)lmi_dtype_bytes(a->cfg.dtype), ld = Dq + 2 * Dkv;
    lm_status st;
    if ((st = lmi_cuda_need_unit_stride(x, "x")) || (st = lmi_cuda_need_unit_stride(out, "out")))
        return st;
    if (ctx->step_batch < B) {
        enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        LMI_CUDA_TRY(cudaStreamIsCapturing(s, &cs));
        if (cs != cudaStreamCaptureStatusNone)
            return lmi_error(LM_ERR_INVALID_ARG,
                             "cuda: the step's buffers for batch %lld do not exist yet: run one step "
                             "(or create with max_batch) before capturing a graph", (long long)B);
        cudaFree(ctx->step_buf);
        ctx->step_buf = NULL;
        ctx->step_batch = 0;
        LMI_CUDA_TRY(cudaMalloc(&ctx->step_buf, (size_t)(B * (ld + Dq) * es)));
        ctx->step_batch = B;
        LMI_CUDA_TRY(cudaMemsetAsync(ctx->step_buf, 0, (size_t)(B * (ld + Dq) * es), s));
    }
    char *qkv = ctx->step_buf, *o = qkv + ctx->step_batch * ld * es;
    const lmi_cuda_weights w = lmi_cuda_weights_of(a);
    lmi_gemm g = { .rows = B, .K = E, .batch = 1, .X = x->data, .ldx = x->stride[0], .ldw = E,
                   .ldy = ld, .dtype = a->cfg.dtype, .alpha = 1 };
    if (w.packed) {
        g.N = ld, g.W = w.w[0], g.bias = w.b[0], g.Y = qkv;
        st = lmi_cuda_gemm(ctx, &g, s);
    } else {
        const int64_t Ns[3] = { Dq, Dkv, Dkv }, offs[3] = { 0, Dq, Dq + Dkv };
        for (int i = 0; i < 3 && st == LM_OK; i++) {
            g.N = Ns[i], g.W = w.w[i], g.bias = w.b[i], g.Y = qkv + offs[i] * es;
            st = lmi_cuda_gemm(ctx, &g, s);
        }
    }
    if (st)
        return st;
    lmi_core_params p;
    lmi_cuda_core_base(a, B, a->state, 0, &p);
    lmi_hybrid_module_params(a, a->state, B, a->position, &p);
    p.L = p.Lk = 1, p.causal = 1;
    p.q = lmi_cuda_view(qkv, a->cfg.dtype, 1, ld, D);
    p.k = lmi_cuda_view(qkv + Dq * es, a->cfg.dtype, 1, ld, D);
    p.v = lmi_cuda_view(qkv + (Dq + Dkv) * es, a->cfg.dtype, 1, ld, D);
    p.out = lmi_cuda_view(o, a->cfg.dtype, 1, Dq, D);
    if ((st = p.hybrid ? lmi_cuda_hybrid_decode(&p, s) : lmi_cuda_decode(&p, s)))
        return st;
    lmi_gemm y = { .rows = B, .N = E, .K = Dq, .batch = 1, .X = o, .ldx = Dq, .W = a->w.out_proj_weight,
                   .ldw = Dq, .bias = a->w.out_proj_bias, .Y = out->data, .ldy = out->stride[0],
                   .dtype = a->cfg.dtype, .alpha = 1 };
    return lmi_cuda_gemm(ctx, &y, s);
}

lm_status lmi_cuda_step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream)
{
    lmi_cuda_ctx *ctx = a->be_ctx;
    int prev;
    lm_status st = lmi_cuda_enter(ctx->device, &prev);
    if (st)
        return st;
    if ((st = lmi_cuda_use_stream(ctx, (cudaStream_t)stream)) == LM_OK)
        st = step_on(ctx, a, x, out, (cudaStream_t)stream);
    lmi_cuda_leave(ctx->device, prev);
    return st;
}
