/*
 * cpu_rows.h - what the CPU module's forward (cpu_module.c) and backward
 * (cpu_module_backward.c) share: per-handle scratch, fp32 weights, token rows
 * gathered from / scattered to strided tensors, sgemm projections, and views
 * of row blocks as [B, n, H, D] for the attention core.
 */
#ifndef LM_CPU_ROWS_H
#define LM_CPU_ROWS_H

#include "lm_impl.h"

/* Weights as fp32 row-major matrices; converted per call when the handle's
 * dtype is not F32, since the caller may change them between calls. */
typedef struct lmi_cpu_weights {
    const float *wq, *wk, *wv, *wo; /* [Dq,E] [Dkv,kdim] [Dkv,vdim] [E,Dq] */
    const float *bq, *bk, *bv, *bo; /* or NULL */
    int packed;                     /* wq, wk, wv (and biases) adjacent */
} lmi_cpu_weights;

/* The handle's scratch memory, grown to at least `floats`; NULL on failure. */
float *lmi_cpu_scratch(lm_attn *a, size_t floats);
/* Floats lmi_cpu_weights_get needs to convert the weights (0 for F32). */
int64_t lmi_cpu_conversion_floats(const lm_attn *a);
/* Fills cw, converting into conv (lmi_cpu_conversion_floats floats). */
void lmi_cpu_weights_get(const lm_attn *a, lmi_cpu_weights *cw, float *conv);

/* dst[b*n + i, :] = src[b, t0 + i, :] as fp32, for b < B, i < n. */
void lmi_cpu_gather(float *dst, const lm_tensor *src, int64_t B, int64_t t0, int64_t n);
/* dst[b, t0 + i, :] = src[b*n + i, :] (plus what dst held, when add). */
void lmi_cpu_scatter(lm_tensor *dst, const float *src, int64_t B, int64_t t0, int64_t n, int add);
/* y[rows, N] (row stride ldy) = x[rows, K] w[N, K]^T + bias. */
void lmi_cpu_project(float *y, int64_t ldy, const float *x, int64_t rows, int64_t K,
                     const float *w, int64_t N, const float *bias);
/* Core view of a [B*n, ld] row block as [B, n, H, D], starting at column col. */
lmi_view lmi_cpu_rows_view(float *base, int64_t n, int64_t ld, int64_t col, int64_t D);
/* Core parameters of the handle's options for batch f->B, state f->state. */
void lmi_cpu_core_params(const lm_attn *a, const lmi_forward *f, lmi_core_params *p);
/* Widest input row: max(E, kdim, vdim). */
int64_t lmi_cpu_max_width(const lm_attn *a);
/* Tokens per slab for batch B with per_row floats of scratch per row, for a
 * sequence of at most L tokens: about 2048 rows, whole chunks. */
int64_t lmi_cpu_slab_tokens(int64_t B, int64_t per_row, int64_t L);
/* Points p's mask at tokens t0.. of mask (NULL: no mask). */
void lmi_cpu_slab_mask(lmi_core_params *p, const lm_tensor *mask, int64_t t0);
/* Whether two descriptors are the same view (self-attention). */
int lmi_cpu_same_tensor(const lm_tensor *x, const lm_tensor *y);
/* The core p asks for: hybrid (cpu_hybrid.c; a decode step when decode) or
 * linear (cpu_attend.c). */
static inline lm_status lmi_cpu_core_run(const lmi_core_params *p, int decode)
{
    return p->hybrid ? lmi_cpu_hybrid(p, decode) : lmi_cpu_attend(p);
}

/* The handle's backend context. */
typedef struct lmi_cpu_ctx {
    float *buf;
    size_t floats;
} lmi_cpu_ctx;

#endif /* LM_CPU_ROWS_H */
