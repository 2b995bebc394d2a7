/*
 * hybrid.c - hybrid attention (docs/DESIGN.md §9) on the host side: checks of
 * its options in configs and core arguments, the dispatch of core calls to
 * the backend's hybrid slots, the handle's gate and window buffers (the state
 * blob that covers them is state_blob.c).
 */
#include "lm_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sanity limit on W and s, so sizes of the window never overflow. */
#define LMI_MAX_WINDOW (1 << 20)

/* ---- options ---- */

/* The checks shared by configs and core arguments. */
static lm_status check_options(lm_attention attention, int window, int sinks, const float *gate,
                               lm_gate_form form, int64_t n_gate, int normalize, const float *decay)
{
    if (attention != LM_ATTENTION_HYBRID)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "attention %d is not one of LM_ATTENTION_LINEAR (0), LM_ATTENTION_HYBRID (1)",
                         (int)attention);
    if (window < 1 || window > LMI_MAX_WINDOW)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "hybrid attention: window must be in 1..%d (the last W tokens are exact), "
                         "not %d", LMI_MAX_WINDOW, window);
    if (sinks < 0 || sinks > LMI_MAX_WINDOW)
        return lmi_error(LM_ERR_INVALID_ARG, "hybrid attention: sinks must be in 0..%d, not %d",
                         LMI_MAX_WINDOW, sinks);
    if (!normalize)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "hybrid attention is normalised (softmax and linear weights share one "
                         "denominator): set normalize = 1");
    if (decay)
        return lmi_error(LM_ERR_UNSUPPORTED, "hybrid attention has no decay: pass decay = NULL");
    if (form != LM_GATE_SIGMOID && form != LM_GATE_EXP)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "hybrid attention: window_gate_form %d is not one of LM_GATE_SIGMOID (0), "
                         "LM_GATE_EXP (1)", (int)form);
    for (int64_t h = 0; gate && h < n_gate; h++) {
        if (!isfinite(gate[h]))
            return lmi_error(LM_ERR_INVALID_ARG, "hybrid attention: window_gate[%lld] = %g is not finite",
                             (long long)h, (double)gate[h]);
        /* exp(g) and the window's sums (at most (s + W) exp(g) |v|) stay far inside fp32. */
        if (form == LM_GATE_EXP && fabsf(gate[h]) > LM_HYBRID_GATE_EXP_MAX)
            return lmi_error(LM_ERR_INVALID_ARG,
                             "hybrid attention: window_gate[%lld] = %g is outside [-%g, %g], the "
                             "range of an LM_GATE_EXP gate (gamma = exp(g) must not overflow)",
                             (long long)h, (double)gate[h], (double)LM_HYBRID_GATE_EXP_MAX,
                             (double)LM_HYBRID_GATE_EXP_MAX);
    }
    return LM_OK;
}

static lm_status not_causal(void)
{
    return lmi_error(LM_ERR_UNSUPPORTED,
                     "hybrid attention is causal (its window is the last W tokens before each "
                     "query): pass is_causal = 1");
}

lm_status lmi_hybrid_check_config(const lm_attn_config *c)
{
    if (c->attention == LM_ATTENTION_LINEAR)
        return LM_OK;
    return check_options(c->attention, c->window, c->sinks, c->window_gate, c->window_gate_form,
                         c->num_heads, c->normalize, c->decay);
}

lm_status lmi_hybrid_check_core(const lm_core_args *a, int causal, int64_t Hq)
{
    lm_status st = check_options(a->attention, a->window, a->sinks, a->window_gate,
                                 a->window_gate_form, Hq, a->normalize, a->decay);
    if (st)
        return st;
    if (!causal)
        return not_causal();
    const int given = (a->window_keys != NULL) + (a->window_values != NULL) + (a->window_pos != NULL);
    if (given != (a->state ? 3 : 0))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "hybrid attention: window_keys, window_values and window_pos are given "
                         "exactly when state is (%s)", a->state ? "state given" : "state NULL");
    return LM_OK;
}

void lmi_hybrid_fill(const lm_core_args *a, lmi_core_params *p)
{
    p->hybrid = 1;
    p->window = a->window;
    p->sinks = a->sinks;
    p->position = a->state ? a->position : 0;
    p->gate = a->window_gate;
    p->gate_form = (int)a->window_gate_form;
    p->win_k = a->window_keys;
    p->win_v = a->window_values;
    p->win_pos = a->window_pos;
    /* The softmax scale: a->scale when given, else 1/sqrt(Dk) as lmi_core_fill set. */
}

lm_status lmi_hybrid_run(const lmi_backend *be, const lmi_core_params *p, int decode, void *stream)
{
    lm_status (*fn)(const lmi_core_params *, void *) = decode ? be->hybrid_decode : be->hybrid_prefill;
    if (!fn)
        return lmi_error(LM_ERR_UNSUPPORTED, "the %s backend has no hybrid attention", be->name);
    return fn(p, stream);
}

lm_status lmi_hybrid_check_forward(const lm_attn *a, int is_causal)
{
    return a->cfg.attention == LM_ATTENTION_HYBRID && !is_causal ? not_causal() : LM_OK;
}

lm_status lmi_hybrid_no_backward(int hybrid, const char *what)
{
    if (!hybrid)
        return LM_OK;
    return lmi_error(LM_ERR_UNSUPPORTED,
                     "%s: hybrid attention has no backward in the C library; train it through the "
                     "Python package (LiquidMemory(attention=\"hybrid\") composes it from "
                     "differentiable parts)", what);
}

lm_status lmi_hybrid_linear_only(int hybrid, const char *what, const char *why)
{
    if (!hybrid)
        return LM_OK;
    return lmi_error(LM_ERR_UNSUPPORTED, "%s runs linear attention only, not hybrid attention: %s",
                     what, why);
}

/* ---- the handle ---- */

lm_status lmi_hybrid_create(lm_attn *a)
{
    if (a->cfg.attention != LM_ATTENTION_HYBRID)
        return LM_OK;
    a->window_gate = calloc((size_t)a->Hq, sizeof(float));
    if (!a->window_gate)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cannot allocate the window gate");
    if (a->cfg.window_gate)
        memcpy(a->window_gate, a->cfg.window_gate, (size_t)a->Hq * sizeof(float));
    a->cfg.window_gate = a->window_gate;
    return LM_OK;
}

void lmi_hybrid_destroy(lm_attn *a)
{
    free(a->window_gate);
    a->window_gate = NULL;
}

