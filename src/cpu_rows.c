/*
 * cpu_rows.c - row-block helpers of the CPU module (see cpu_rows.h).
 */
#include "cpu_rows.h"
#include "dtype.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* Kept between calls: fresh pages on every call (page faults, zeroing) cost
 * more than the projections at small sizes. */
float *lmi_cpu_scratch(lm_attn *a, size_t floats)
{
    lmi_cpu_ctx *c = a->be_ctx;
    if (c->floats < floats) {
        free(c->buf);
        c->buf = malloc(floats * sizeof(float));
        c->floats = c->buf ? floats : 0;
    }
    return c->buf;
}

int64_t lmi_cpu_conversion_floats(const lm_attn *a)
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

void lmi_cpu_weights_get(const lm_attn *a, lmi_cpu_weights *cw, float *conv)
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

void lmi_cpu_gather(float *dst, const lm_tensor *src, int64_t B, int64_t t0, int64_t n)
{
    const int64_t W = src->shape[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            int64_t off = b * src->stride[0] + (t0 + i) * src->stride[1];
            lmi_load_row(dst + (b * n + i) * W, lmi_elem(src->data, src->dtype, off),
                         src->dtype, W, src->stride[2]);
        }
}

void lmi_cpu_scatter(lm_tensor *dst, const float *src, int64_t B, int64_t t0, int64_t n, int add)
{
    const int64_t W = dst->shape[2];
    float *row = add ? malloc((size_t)W * sizeof(float)) : NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++) {
            int64_t off = b * dst->stride[0] + (t0 + i) * dst->stride[1];
            void *d = lmi_elem(dst->data, dst->dtype, off);
            const float *s = src + (b * n + i) * W;
            if (row) {
                lmi_load_row(row, d, dst->dtype, W, dst->stride[2]);
                for (int64_t c = 0; c < W; c++)
                    row[c] += s[c];
                s = row;
            }
            lmi_store_row(d, dst->dtype, s, W, dst->stride[2]);
        }
    free(row);
}

/* A few rows (decode) go through sgemv: sgemm would first pack all of w. */
void lmi_cpu_project(float *y, int64_t ldy, const float *x, int64_t rows, int64_t K,
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

lmi_view lmi_cpu_rows_view(float *base, int64_t n, int64_t ld, int64_t col, int64_t D)
{
    lmi_view v = { .data = base + col, .dtype = LM_F32, .s = { n * ld, ld, D, 1 } };
    return v;
}

void lmi_cpu_core_params(const lm_attn *a, const lmi_forward *f, lmi_core_params *p)
{
    memset(p, 0, sizeof *p);
    p->B = f->B;
    p->Hq = a->Hq, p->Hkv = a->Hkv, p->Dk = a->D, p->Dv = a->D;
    p->state = f->state;
    p->normalizer = f->state ? f->state + f->B * a->Hkv * a->D * a->D : NULL;
    p->decay = a->decay;
    p->feature_map = a->cfg.feature_map;
    p->normalize = a->cfg.normalize;
    p->compensated = f->compensated;
    p->eps = a->cfg.eps;
    p->scale = a->cfg.scale;
    lmi_hybrid_module_params(a, f->state, f->B, f->position, p);
}

int lmi_cpu_same_tensor(const lm_tensor *x, const lm_tensor *y)
{
    return x == y || (x->data == y->data && x->dtype == y->dtype && x->ndim == y->ndim &&
                      !memcmp(x->shape, y->shape, sizeof x->shape) &&
                      !memcmp(x->stride, y->stride, sizeof x->stride));
}

int64_t lmi_cpu_max_width(const lm_attn *a)
{
    int64_t m = a->E > a->kdim ? a->E : a->kdim;
    return m > a->vdim ? m : a->vdim;
}

/* About 2048 rows per slab: sgemm is as fast as with more, and the scratch
 * stays a few tens of MB whatever L is. */
int64_t lmi_cpu_slab_tokens(int64_t B, int64_t per_row, int64_t L)
{
    int64_t rows = ((int64_t)1 << 23) / per_row;
    rows = rows < 64 ? 64 : rows > 2048 ? 2048 : rows;
    int64_t n = rows / B / LMI_CPU_CHUNK * LMI_CPU_CHUNK;
    if (n < LMI_CPU_CHUNK)
        n = LMI_CPU_CHUNK;
    return n < L ? n : L;
}

void lmi_cpu_slab_mask(lmi_core_params *p, const lm_tensor *mask, int64_t t0)
{
    p->mask = NULL;
    if (!mask)
        return;
    p->mask = (const uint8_t *)mask->data + t0 * mask->stride[1];
    p->mask_s[0] = mask->stride[0];
    p->mask_s[1] = mask->stride[1];
}
