/*
 * cpu_module.c - the module on the CPU: q/k/v/out projections through
 * OpenBLAS sgemm around the attention core (cpu_attend.c), streamed through
 * the sequence in slabs so that extra memory is O(slab), not O(L).
 * Causal: project, attend, out-project one slab at a time, the state carried
 * between slabs. Bidirectional: fold every key slab into the state first,
 * then read it out for every query slab.
 */
#include "lm_impl.h"
#include "dtype.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* Weights as fp32 row-major matrices; converted per call when the handle's
 * dtype is not F32, since the caller may change them between calls. */
typedef struct cpu_weights {
    const float *wq, *wk, *wv, *wo; /* [Dq,E] [Dkv,kdim] [Dkv,vdim] [E,Dq] */
    const float *bq, *bk, *bv, *bo; /* or NULL */
    int packed;                     /* wq, wk, wv (and biases) adjacent */
} cpu_weights;

/* Per-handle scratch memory kept between calls: fresh pages on every call
 * (page faults, zeroing) cost more than the projections at small sizes. */
typedef struct cpu_ctx {
    float *buf;
    size_t floats;
} cpu_ctx;

static float *scratch(lm_attn *a, size_t floats)
{
    cpu_ctx *c = a->be_ctx;
    if (c->floats < floats) {
        free(c->buf);
        c->buf = malloc(floats * sizeof(float));
        c->floats = c->buf ? floats : 0;
    }
    return c->buf;
}

/* Floats weights_get needs to convert the weights to fp32 (0 for F32). */
static int64_t conversion_floats(const lm_attn *a)
{
    const int64_t E = a->E, Dq = a->Hq * a->D, Dkv = a->Hkv * a->D;
    if (a->cfg.dtype == LM_F32)
        return 0;
    return Dq * E + Dkv * (a->kdim + a->vdim) + E * Dq + Dq + 2 * Dkv + E;
}

static const float *as_f32(const void *src, int64_t n, int dtype, float **cursor)
{
    if (!src || dtype == LM_F32)
        return src;
    float *dst = *cursor;
    lmi_load_row(dst, src, dtype, n, 1);
    *cursor += n;
    return dst;
}

/* Fills cw, converting into `conv` (conversion_floats(a) floats) when needed. */
static void weights_get(const lm_attn *a, cpu_weights *cw, float *conv)
{
    const int64_t E = a->E, Dq = a->Hq * a->D, Dkv = a->Hkv * a->D;
    const lm_weights *w = &a->w;
    const void *wq = w->q_proj_weight, *wk = w->k_proj_weight, *wv = w->v_proj_weight;
    const size_t es = lm_dtype_size(a->cfg.dtype);
    memset(cw, 0, sizeof *cw);
    if (w->in_proj_weight) {
        wq = w->in_proj_weight;
        wk = (const char *)wq + (size_t)(Dq * E) * es;
        wv = (const char *)wk + (size_t)(Dkv * E) * es;
        cw->packed = 1;
    }
    /* Converted q, k, v stay adjacent so the fused projection still applies. */
    float *cursor = conv;
    cw->wq = as_f32(wq, Dq * E, a->cfg.dtype, &cursor);
    cw->wk = as_f32(wk, Dkv * a->kdim, a->cfg.dtype, &cursor);
    cw->wv = as_f32(wv, Dkv * a->vdim, a->cfg.dtype, &cursor);
    cw->wo = as_f32(w->out_proj_weight, E * Dq, a->cfg.dtype, &cursor);
    if (w->in_proj_bias) {
        const char *b = w->in_proj_bias;
        cw->bq = as_f32(b, Dq, a->cfg.dtype, &cursor);
        cw->bk = as_f32(b + (size_t)Dq * es, Dkv, a->cfg.dtype, &cursor);
        cw->bv = as_f32(b + (size_t)(Dq + Dkv) * es, Dkv, a->cfg.dtype, &cursor);
    }
    cw->bo = as_f32(w->out_proj_bias, E, a->cfg.dtype, &cursor);
}

/* dst[b*n + i, :] = src[b, t0 + i, :] as fp32, for b < B, i < n. */
static void gather(float *dst, const lm_tensor *src, int64_t B, int64_t t0, int64_t n)
{
    const int64_t W = src->shape[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            int64_t off = b * src->stride[0] + (t0 + i) * src->stride[1];
            lmi_load_row(dst + (b * n + i) * W, lmi_elem(src->data, src->dtype, off),
                         src->dtype, W, src->stride[2]);
        }
}

static void scatter(lm_tensor *dst, const float *src, int64_t B, int64_t t0, int64_t n)
{
    const int64_t W = dst->shape[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            int64_t off = b * dst->stride[0] + (t0 + i) * dst->stride[1];
            lmi_store_row(lmi_elem(dst->data, dst->dtype, off), dst->dtype,
                          src + (b * n + i) * W, W, dst->stride[2]);
        }
}

/* y[rows, N] (row stride ldy) = x[rows, K] w[N, K]^T + bias. A few rows
 * (decode) go through sgemv: sgemm would first pack all of w. */
static void project(float *y, int64_t ldy, const float *x, int64_t rows, int64_t K,
                    const float *w, int64_t N, const float *bias)
{
    if (rows <= 4)
        for (int64_t r = 0; r < rows; r++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)N, (int)K, 1.0f, w, (int)K, x + r * K,
                        1, 0.0f, y + r * ldy, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)N, (int)K, 1.0f,
                    x, (int)K, w, (int)K, 0.0f, y, (int)ldy);
    if (bias)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < N; c++)
                y[r * ldy + c] += bias[c];
}

/* Core view of a [B*n, ld] row block as [B, n, H, D], starting at column col. */
static lmi_view rows_view(float *base, int64_t n, int64_t ld, int64_t col, int64_t D)
{
    lmi_view v = { .data = base + col, .dtype = LM_F32, .s = { n * ld, ld, D, 1 } };
    return v;
}

static int64_t max3(int64_t x, int64_t y, int64_t z)
{
    int64_t m = x > y ? x : y;
    return m > z ? m : z;
}

static int same_tensor(const lm_tensor *x, const lm_tensor *y)
{
    return x == y || (x->data == y->data && x->dtype == y->dtype &&
                      !memcmp(x->shape, y->shape, sizeof x->shape) &&
                      !memcmp(x->stride, y->stride, sizeof x->stride));
}

typedef struct slab_bufs {
    float *x, *qkv, *o, *y; /* inputs, projections, attention output, module output */
    int64_t ld;             /* row stride of qkv */
} slab_bufs;

static void core_params(const lm_attn *a, const lmi_forward *f, lmi_core_params *p)
{
    memset(p, 0, sizeof *p);
    p->B = f->B;
    p->Hq = a->Hq, p->Hkv = a->Hkv, p->Dk = a->D, p->Dv = a->D;
    p->state = f->state;
    p->normalizer = f->state + f->B * a->Hkv * a->D * a->D;
    p->decay = a->decay;
    p->feature_map = a->cfg.feature_map;
    p->normalize = a->cfg.normalize;
    p->compensated = f->compensated;
    p->eps = a->cfg.eps;
    p->scale = a->cfg.scale;
}

static lm_status forward(lm_attn *a, const lmi_forward *f, void *stream)
{
    (void)stream;
    const int64_t B = f->B, E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t conv = conversion_floats(a);
    const int64_t wmax = max3(E, a->kdim, a->vdim);
    const int64_t ld = Dq + 2 * Dkv;
    const int64_t per_row = wmax + ld + Dq + E;
    /* About 2048 rows per slab: sgemm is as fast as with more, and the
     * scratch stays a few tens of MB whatever L is. */
    int64_t rows = ((int64_t)1 << 23) / per_row;
    rows = rows < 64 ? 64 : rows > 2048 ? 2048 : rows;
    int64_t n = rows / B / LMI_CPU_CHUNK * LMI_CPU_CHUNK;
    if (n < LMI_CPU_CHUNK)
        n = LMI_CPU_CHUNK;
    const int64_t Lmax = f->Lq > f->Lk ? f->Lq : f->Lk;
    if (n > Lmax)
        n = Lmax;

    slab_bufs s = { .ld = ld };
    float *mem = scratch(a, (size_t)(conv + B * n * per_row));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a slab of %lld tokens",
                         (long long)n);
    cpu_weights cw;
    weights_get(a, &cw, mem);
    const int fused = cw.packed && same_tensor(f->query, f->key) && same_tensor(f->key, f->value);
    s.x = mem + conv, s.qkv = s.x + B * n * wmax, s.o = s.qkv + B * n * ld, s.y = s.o + B * n * Dq;
    lm_status st = LM_OK;

    lmi_core_params p;
    core_params(a, f, &p);
    for (int pass = f->causal ? 1 : 0; pass < 2 && st == LM_OK; pass++) {
        /* pass 0 (bidirectional): keys into the state; pass 1: queries out. */
        const int64_t L = pass == 0 ? f->Lk : f->Lq;
        for (int64_t t0 = 0; t0 < L && st == LM_OK; t0 += n) {
            const int64_t m = L - t0 < n ? L - t0 : n, R = B * m;
            p.causal = f->causal;
            p.L = pass == 1 ? m : 0;
            p.Lk = (pass == 0 || f->causal) ? m : 0;
            if (pass == 1 && f->causal && fused) {
                gather(s.x, f->query, B, t0, m);
                project(s.qkv, ld, s.x, R, E, cw.wq, ld, cw.bq);
            } else {
                if (pass == 1) {
                    gather(s.x, f->query, B, t0, m);
                    project(s.qkv, ld, s.x, R, E, cw.wq, Dq, cw.bq);
                }
                if (p.Lk) {
                    gather(s.x, f->key, B, t0, m);
                    project(s.qkv + Dq, ld, s.x, R, a->kdim, cw.wk, Dkv, cw.bk);
                    gather(s.x, f->value, B, t0, m);
                    project(s.qkv + Dq + Dkv, ld, s.x, R, a->vdim, cw.wv, Dkv, cw.bv);
                }
            }
            p.q = rows_view(s.qkv, m, ld, 0, D);
            p.k = rows_view(s.qkv, m, ld, Dq, D);
            p.v = rows_view(s.qkv, m, ld, Dq + Dkv, D);
            p.out = rows_view(s.o, m, Dq, 0, D);
            p.mask = NULL;
            if (f->key_padding_mask && p.Lk) {
                const lm_tensor *km = f->key_padding_mask;
                p.mask = (const uint8_t *)km->data + t0 * km->stride[1];
                p.mask_s[0] = km->stride[0], p.mask_s[1] = km->stride[1];
            }
            st = lmi_cpu_attend(&p);
            if (st == LM_OK && pass == 1) {
                project(s.y, E, s.o, R, Dq, cw.wo, E, cw.bo);
                scatter(f->out, s.y, B, t0, m);
            }
        }
    }
    return st;
}

static lm_status step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream)
{
    (void)stream;
    const int64_t B = x->shape[0], E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t ld = Dq + 2 * Dkv;
    const int64_t conv = conversion_floats(a);
    float *mem = scratch(a, (size_t)(conv + B * (E + ld + Dq + E)));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a decode step");
    cpu_weights cw;
    weights_get(a, &cw, mem);
    float *xs = mem + conv, *qkv = xs + B * E, *o = qkv + B * ld, *y = o + B * Dq;
    for (int64_t b = 0; b < B; b++)
        lmi_load_row(xs + b * E, lmi_elem(x->data, x->dtype, b * x->stride[0]), x->dtype, E,
                     x->stride[1]);
    if (cw.packed) {
        project(qkv, ld, xs, B, E, cw.wq, ld, cw.bq);
    } else {
        project(qkv, ld, xs, B, E, cw.wq, Dq, cw.bq);
        project(qkv + Dq, ld, xs, B, E, cw.wk, Dkv, cw.bk);
        project(qkv + Dq + Dkv, ld, xs, B, E, cw.wv, Dkv, cw.bv);
    }
    lmi_forward f = { .B = B, .state = a->state };
    lmi_core_params p;
    core_params(a, &f, &p);
    p.L = p.Lk = 1;
    p.causal = 1;
    p.q = rows_view(qkv, 1, ld, 0, D);
    p.k = rows_view(qkv, 1, ld, Dq, D);
    p.v = rows_view(qkv, 1, ld, Dq + Dkv, D);
    p.out = rows_view(o, 1, Dq, 0, D);
    lm_status st = lmi_cpu_attend(&p);
    if (st == LM_OK) {
        project(y, E, o, B, Dq, cw.wo, E, cw.bo);
        for (int64_t b = 0; b < B; b++)
            lmi_store_row(lmi_elem(out->data, out->dtype, b * out->stride[0]), out->dtype,
                          y + b * E, E, out->stride[1]);
    }
    return st;
}

/* ---- the rest of the backend table: host memory ---- */

static lm_status cpu_init(lm_attn *a)
{
    a->be_ctx = calloc(1, sizeof(cpu_ctx));
    return a->be_ctx ? LM_OK : lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: cannot allocate a context");
}

static void cpu_fini(lm_attn *a)
{
    cpu_ctx *c = a->be_ctx;
    if (c)
        free(c->buf);
    free(c);
}

static lm_status cpu_alloc(lm_attn *a, size_t bytes, void **ptr)
{
    (void)a;
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? LM_OK : lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes", bytes);
}

static void cpu_free(lm_attn *a, void *ptr)
{
    (void)a;
    free(ptr);
}

static lm_status cpu_copy(lm_attn *a, void *dst, const void *src, size_t bytes, int dir)
{
    (void)a, (void)dir;
    memmove(dst, src, bytes);
    return LM_OK;
}

static lm_status cpu_zero(lm_attn *a, void *ptr, size_t bytes)
{
    (void)a;
    memset(ptr, 0, bytes);
    return LM_OK;
}

static lm_status cpu_core(const lmi_core_params *p, void *stream)
{
    (void)stream;
    return lmi_cpu_attend(p);
}

const lmi_backend lmi_cpu_backend = {
    .name = "cpu",
    .init = cpu_init,
    .fini = cpu_fini,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .forward = forward,
    .step = step,
    .prefill = cpu_core,
    .decode = cpu_core,
    .backward = lmi_cpu_backward,
};
