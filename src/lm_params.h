/*
 * lm_params.h - the plain parameter struct of the attention core, filled by
 * the host after validation and read by every backend (C and CUDA). Sizes are
 * resolved, strides are in elements, the feature map and modes are plain ints.
 */
#ifndef LM_PARAMS_H
#define LM_PARAMS_H

#include <math.h>
#include <stdint.h>

/* A strided 4-d view: element [i0, i1, i2, i3] is at
 * data + i0*s[0] + i1*s[1] + i2*s[2] + i3*s[3] (elements of dtype). */
typedef struct lmi_view {
    void *data;
    int dtype; /* lm_dtype */
    int64_t s[4];
} lmi_view;

typedef struct lmi_core_params {
    int64_t B, L, Lk;     /* batch, query length, key length */
    int64_t Hq, Hkv;      /* query heads, key/value heads (Hq % Hkv == 0) */
    int64_t Dk, Dv;       /* head dims of q/k and of v/out */
    lmi_view q;           /* [B, L, Hq, Dk] */
    lmi_view k;           /* [B, Lk, Hkv, Dk] */
    lmi_view v;           /* [B, Lk, Hkv, Dv] */
    lmi_view out;         /* [B, L, Hq, Dv] */
    const uint8_t *mask;  /* [B, Lk] nonzero = ignore key, or NULL */
    int64_t mask_s[2];    /* its strides */
    float *state;         /* [B, Hkv, Dk, Dv] fp32 in/out, or NULL = empty, discard */
    float *normalizer;    /* [B, Hkv, Dk] fp32 in/out, NULL with state */
    const float *decay;   /* Hkv host values, or NULL = 1 */
    int causal;
    int feature_map;      /* lm_feature_map */
    int normalize;
    int compensated;      /* Kahan accumulation of the carried state */
    int exact;            /* LM_PRECISION_ON: the backward stays at the rounding floor
                             (CUDA: its fp32 kernel, not the tensor-core one) */
    float eps;
    float scale;          /* resolved: unnormalised output factor (hybrid: softmax scale) */
    int fresh;            /* state is written only: the call starts from an empty one */
    int num_threads;      /* CPU: OpenMP threads, 0 = the default */
    void *ws;             /* caller's scratch on the device, or NULL = allocate */
    size_t ws_bytes;
    /* Hybrid attention (docs/DESIGN.md §9), when hybrid != 0: causal, normalised, no decay. */
    int hybrid;
    int64_t window, sinks; /* W >= 1, s >= 0 */
    int64_t position;     /* prefill: tokens the state has seen (0 without a state);
                             decode reads each row's count from win_pos instead */
    const float *gate;    /* Hq host logits g_h, or NULL = 0 */
    int gate_form;        /* lm_gate_form: gamma = sigmoid(g) (0) or exp(g) (1) */
    float *win_k;         /* [B, Hkv, s + W, Dk] fp32 in/out, NULL with state */
    float *win_v;         /* [B, Hkv, s + W, Dv] */
    int32_t *win_pos;     /* [B, Hkv, s + W]: 0 empty, p + 1 position p, -(p + 1) masked */
    /* CUDA causal prefill, internal (the hybrid's body reads it): each query
     * row's normaliser phi(q_i) . z_i (no eps) as fp32 [B, Hq, L], L fastest;
     * only where lmi_cuda_prefill_den(p) says the kernel writes it; NULL = none. */
    float *den;
    /* CUDA causal prefill, internal: the hybrid window fused into the v2
     * launch (kernels/lm_kernels.h, lmk_window), or NULL. */
    const struct lmk_window *win;
} lmi_core_params;

/* The hybrid's gate gamma_h of query head h from p's logits and form
 * (docs/DESIGN.md §9.1); inline: the CUDA backend links to no core symbol. */
static inline float lmi_gate_gamma(const lmi_core_params *p, int64_t h)
{
    const float g = p->gate ? p->gate[h] : 0.0f;
    return p->gate_form == 1 ? expf(g) : 1.0f / (1.0f + expf(-g));
}

/* What the core backward adds to lmi_core_params (whose state / normalizer
 * then hold the initial state, read only). Views share the forward's dtype. */
typedef struct lmi_core_grad_params {
    lmi_view dout;                /* [B, L, Hq, Dv] */
    lmi_view dq;                  /* [B, L, Hq, Dk]   written */
    lmi_view dk;                  /* [B, Lk, Hkv, Dk] written */
    lmi_view dv;                  /* [B, Lk, Hkv, Dv] written */
    const float *dstate_out;      /* [B, Hkv, Dk, Dv] or NULL = 0 */
    const float *dnormalizer_out; /* [B, Hkv, Dk], NULL with dstate_out */
    float *dstate_in;             /* [B, Hkv, Dk, Dv] written, or NULL */
    float *dnormalizer_in;        /* [B, Hkv, Dk], NULL with dstate_in */
} lmi_core_grad_params;

#endif /* LM_PARAMS_H */
