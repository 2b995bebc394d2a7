/*
 * backward.c - the backward APIs. The core (lm_linear_attn_backward) checks
 * the forward's arguments through lmi_core_fill, then the gradient tensors,
 * and dispatches to the backend's optional `backward` slot. The module's
 * backward is attn_backward.c.
 */
#include "lm_impl.h"

/* Whether two fp32 buffers of na and nb floats share memory. */
static int floats_overlap(const float *a, int64_t na, const float *b, int64_t nb)
{
    return a && b && a < b + nb && b < a + na;
}

static lm_status check_grad(const lm_tensor *t, const char *what, const lm_tensor *like,
                            const int64_t *shape, const char *names)
{
    lm_status st = lmi_check_tensor(t, what, 4, like->device);
    if (st)
        return st;
    if (t->dtype != like->dtype)
        return lmi_error(LM_ERR_INVALID_ARG, "%s must have q's dtype", what);
    return lmi_check_shape4(t, what, shape, names);
}

/* The gradient tensors must not alias what is read, nor each other. */
static lm_status check_grad_aliasing(const lm_core_args *a, const lm_core_grads *g)
{
    const lm_tensor *outs[] = { g->dq, g->dk, g->dv };
    const char *out_names[] = { "dq", "dk", "dv" };
    const lm_tensor *others[] = { a->q, a->k, a->v, g->dout, a->key_padding_mask, g->dq, g->dk };
    const char *other_names[] = { "q", "k", "v", "dout", "key_padding_mask", "dq", "dk" };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5 + i; j++)
            if (others[j] && lmi_check_no_alias(outs[i], &others[j], &other_names[j], 1))
                return lmi_error(LM_ERR_INVALID_ARG,
                                 "%s overlaps %s: gradients must not alias the inputs or each other",
                                 out_names[i], other_names[j]);
    return LM_OK;
}

static lm_status check_state_grads(const lm_core_args *a, const lm_core_grads *g,
                                   const lmi_core_params *p)
{
    if (!g->dstate_out != !g->dnormalizer_out)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "dstate_out and dnormalizer_out go together: give both or neither");
    if (!g->dstate_in != !g->dnormalizer_in)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "dstate_in and dnormalizer_in go together: give both or neither");
    if (!g->dstate_in)
        return LM_OK;
    const int64_t nS = p->B * p->Hkv * p->Dk * p->Dv, nz = p->B * p->Hkv * p->Dk;
    const float *read[] = { a->state, a->normalizer, g->dstate_out, g->dnormalizer_out };
    const int64_t nread[] = { nS, nz, nS, nz };
    for (int i = 0; i < 4; i++)
        if (floats_overlap(g->dstate_in, nS, read[i], nread[i]) ||
            floats_overlap(g->dnormalizer_in, nz, read[i], nread[i]))
            return lmi_error(LM_ERR_INVALID_ARG,
                             "dstate_in / dnormalizer_in must not overlap the state or dstate_out");
    if (floats_overlap(g->dstate_in, nS, g->dnormalizer_in, nz))
        return lmi_error(LM_ERR_INVALID_ARG, "dstate_in and dnormalizer_in overlap");
    return LM_OK;
}

lm_status lm_linear_attn_backward(const lm_core_args *arguments, const lm_core_grads *gradients,
                                  void *stream)
{
    lm_core_args args_full;
    lm_core_grads grads_full;
    lmi_core_params p;
    const lmi_backend *be;
    lm_status st = lmi_core_fill(arguments, LMI_CORE_BACKWARD, &args_full, &p, &be);
    if (st || (st = lmi_hybrid_no_backward(p.hybrid, "lm_linear_attn_backward")))
        return st;
    if (!gradients)
        return lmi_error(LM_ERR_INVALID_ARG, "grads is NULL");
    if ((st = LMI_SIZED_IN(&grads_full, gradients, lm_core_grads, dnormalizer_in)))
        return st;
    const lm_core_args *args = &args_full;
    const lm_core_grads *grads = &grads_full;
    const lm_tensor *q = args->q;
    if ((st = check_grad(grads->dout, "dout", q, (int64_t[]){ p.B, p.L, p.Hq, p.Dv },
                         "[B, L, Hq, Dv]")) ||
        (st = check_grad(grads->dq, "dq", q, (int64_t[]){ p.B, p.L, p.Hq, p.Dk },
                         "[B, L, Hq, Dk]")) ||
        (st = check_grad(grads->dk, "dk", q, (int64_t[]){ p.B, p.Lk, p.Hkv, p.Dk },
                         "[B, Lk, Hkv, Dk]")) ||
        (st = check_grad(grads->dv, "dv", q, (int64_t[]){ p.B, p.Lk, p.Hkv, p.Dv },
                         "[B, Lk, Hkv, Dv]")) ||
        (st = check_grad_aliasing(args, grads)) || (st = check_state_grads(args, grads, &p)))
        return st;
    if (!be->backward)
        return lmi_error(LM_ERR_UNSUPPORTED, "the %s backend has no backward yet", be->name);

    lmi_core_grad_params g = {
        .dout = lmi_view_of(grads->dout),
        .dq = lmi_view_of(grads->dq),
        .dk = lmi_view_of(grads->dk),
        .dv = lmi_view_of(grads->dv),
        .dstate_out = grads->dstate_out,
        .dnormalizer_out = grads->dnormalizer_out,
        .dstate_in = grads->dstate_in,
        .dnormalizer_in = grads->dnormalizer_in,
    };
    return (st = lmi_core_fresh(&args_full, be, &p, stream)) ? st : be->backward(&p, &g, stream);
}
