/*
 * attn_backward.c - lm_attn_backward: checks the forward's inputs (shared
 * with lm_attn_forward), the gradient buffers and their aliasing, then calls
 * the backend's module backward. Nothing on the handle changes.
 */
#include "lm_impl.h"

#include <string.h>

/* A span of bytes that a call reads or writes, for the aliasing checks. */
typedef struct span {
    const char *p;
    size_t n;
    const char *name;
} span;

static span tensor_span(const lm_tensor *t, const char *name)
{
    span s = { t ? t->data : NULL, 0, name };
    if (t)
        s.n = (size_t)(lmi_tensor_extent(t) + 1) * lm_dtype_size(t->dtype);
    return s;
}

static int spans_overlap(span a, span b)
{
    return a.p && b.p && a.p < b.p + b.n && b.p < a.p + a.n;
}

static int same_view(const lm_tensor *x, const lm_tensor *y)
{
    return x->data == y->data && x->dtype == y->dtype &&
           !memcmp(x->shape, y->shape, sizeof x->shape) &&
           !memcmp(x->stride, y->stride, sizeof x->stride);
}

/* dquery, dkey, dvalue: separate, or one tensor for all three when query,
 * key and value are one tensor. Returns 1 for the one-tensor case. */
static lm_status check_input_grads(const lm_attn_grads *g, const lmi_forward *f, int *shared)
{
    const lm_tensor *d[3] = { g->dquery, g->dkey, g->dvalue };
    const char *names[3] = { "dquery", "dkey", "dvalue" };
    *shared = d[0] && d[1] && d[2] && same_view(d[0], d[1]) && same_view(d[1], d[2]) &&
              same_view(f->query, f->key) && same_view(f->key, f->value);
    if (*shared)
        return LM_OK;
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (spans_overlap(tensor_span(d[i], names[i]), tensor_span(d[j], names[j])))
                return lmi_error(LM_ERR_INVALID_ARG,
                                 "%s overlaps %s: give separate tensors, or one tensor for all "
                                 "three when query, key and value are one tensor",
                                 names[i], names[j]);
    return LM_OK;
}

static lm_status check_weight_grads(const lm_attn *a, const lm_attn_grads *g)
{
    const int packed = a->w.in_proj_weight != NULL;
    if (g->in_proj_weight && !packed)
        return lmi_error(LM_ERR_INVALID_ARG, "grads->in_proj_weight given, but the weights were "
                                             "set as q/k/v_proj_weight");
    if ((g->q_proj_weight || g->k_proj_weight || g->v_proj_weight) && packed)
        return lmi_error(LM_ERR_INVALID_ARG, "grads->q/k/v_proj_weight given, but the weights "
                                             "were set packed as in_proj_weight");
    if (g->in_proj_bias && !a->w.in_proj_bias)
        return lmi_error(LM_ERR_INVALID_ARG, "grads->in_proj_bias given, but no in_proj_bias was set");
    if (g->out_proj_bias && !a->w.out_proj_bias)
        return lmi_error(LM_ERR_INVALID_ARG, "grads->out_proj_bias given, but no out_proj_bias was set");
    return LM_OK;
}

/* Every buffer written must not overlap what is read, nor another one. */
static lm_status check_aliasing(const lm_attn *a, const lmi_forward *f, const lm_attn_grads *g,
                                int shared)
{
    const size_t es = lm_dtype_size(a->cfg.dtype);
    const size_t E = (size_t)a->E, Dq = (size_t)(a->Hq * a->D), Dkv = (size_t)(a->Hkv * a->D);
    const size_t kd = (size_t)a->kdim, vd = (size_t)a->vdim;
    const lm_weights *w = &a->w;
    span read[] = {
        tensor_span(f->query, "query"), tensor_span(f->key, "key"),
        tensor_span(f->value, "value"), tensor_span(g->dout, "dout"),
        tensor_span(f->key_padding_mask, "key_padding_mask"),
        { w->in_proj_weight, (Dq + 2 * Dkv) * E * es, "the in_proj_weight" },
        { w->q_proj_weight, Dq * E * es, "the q_proj_weight" },
        { w->k_proj_weight, Dkv * kd * es, "the k_proj_weight" },
        { w->v_proj_weight, Dkv * vd * es, "the v_proj_weight" },
        { w->in_proj_bias, (Dq + 2 * Dkv) * es, "the in_proj_bias" },
        { w->out_proj_weight, E * Dq * es, "the out_proj_weight" },
        { w->out_proj_bias, E * es, "the out_proj_bias" },
    };
    span written[] = {
        tensor_span(g->dquery, "dquery"),
        tensor_span(shared ? NULL : g->dkey, "dkey"),
        tensor_span(shared ? NULL : g->dvalue, "dvalue"),
        { g->in_proj_weight, (Dq + 2 * Dkv) * E * es, "grads->in_proj_weight" },
        { g->q_proj_weight, Dq * E * es, "grads->q_proj_weight" },
        { g->k_proj_weight, Dkv * kd * es, "grads->k_proj_weight" },
        { g->v_proj_weight, Dkv * vd * es, "grads->v_proj_weight" },
        { g->in_proj_bias, (Dq + 2 * Dkv) * es, "grads->in_proj_bias" },
        { g->out_proj_weight, E * Dq * es, "grads->out_proj_weight" },
        { g->out_proj_bias, E * es, "grads->out_proj_bias" },
    };
    const int nr = (int)(sizeof read / sizeof read[0]), nw = (int)(sizeof written / sizeof written[0]);
    for (int i = 0; i < nw; i++) {
        for (int j = 0; j < nr; j++)
            if (spans_overlap(written[i], read[j]))
                return lmi_error(LM_ERR_INVALID_ARG, "%s overlaps %s", written[i].name,
                                 read[j].name);
        for (int j = i + 1; j < nw; j++)
            if (spans_overlap(written[i], written[j]))
                return lmi_error(LM_ERR_INVALID_ARG, "%s overlaps %s", written[i].name,
                                 written[j].name);
    }
    return LM_OK;
}

lm_status lm_attn_backward(lm_attn *a, const lm_tensor *query, const lm_tensor *key,
                           const lm_tensor *value, const lm_forward_opts *options,
                           const lm_attn_grads *gradients, void *stream)
{
    lm_forward_opts opts_full;
    lm_attn_grads grads_full;
    lm_status st = lmi_forward_opts_in(&opts_full, options);
    if (st)
        return st;
    const lm_forward_opts *opts = &opts_full;
    lmi_forward f;
    if ((st = lmi_attn_check_inputs(a, query, key, value, opts, NULL, &f)) ||
        (st = lmi_hybrid_no_backward(a->cfg.attention == LM_ATTENTION_HYBRID, "lm_attn_backward")))
        return st;
    if (opts->use_state)
        return lmi_error(LM_ERR_UNSUPPORTED, "lm_attn_backward starts from an empty state: "
                                             "use_state is not supported (the state the forward "
                                             "continued from is gone)");
    if (!gradients)
        return lmi_error(LM_ERR_INVALID_ARG, "grads is NULL");
    if ((st = LMI_SIZED_IN(&grads_full, gradients, lm_attn_grads, accumulate)))
        return st;
    const lm_attn_grads *grads = &grads_full;
    if ((st = lmi_attn_check_io(a, grads->dout, "dout", 3, (int64_t[]){ f.B, f.Lq, a->E })))
        return st;
    if ((grads->dquery &&
         (st = lmi_attn_check_io(a, grads->dquery, "dquery", 3, (int64_t[]){ f.B, f.Lq, a->E }))) ||
        (grads->dkey &&
         (st = lmi_attn_check_io(a, grads->dkey, "dkey", 3, (int64_t[]){ f.B, f.Lk, a->kdim }))) ||
        (grads->dvalue &&
         (st = lmi_attn_check_io(a, grads->dvalue, "dvalue", 3, (int64_t[]){ f.B, f.Lk, a->vdim }))))
        return st;
    int shared;
    if ((st = check_input_grads(grads, &f, &shared)) || (st = check_weight_grads(a, grads)) ||
        (st = check_aliasing(a, &f, grads, shared)))
        return st;
    const int64_t ctx = f.Lq > f.Lk ? f.Lq : f.Lk;
    if ((st = lmi_license_check(ctx)))
        return st;
    if (!a->be->attn_backward)
        return lmi_error(LM_ERR_UNSUPPORTED, "the %s backend has no module backward yet; train "
                                             "through lm_linear_attn_backward with your own "
                                             "projections", a->be->name);
    f.compensated = lmi_compensated(a->cfg.precision, ctx);
    return a->be->attn_backward(a, &f, grads, stream);
}
