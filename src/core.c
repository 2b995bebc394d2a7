/*
 * core.c - the core API (lm_linear_attn_*): attention on already-projected
 * q, k, v. Checks the arguments, fills an lmi_core_params, dispatches to the
 * backend of the tensors' device.
 */
#include "lm_impl.h"

#include <math.h>
#include <string.h>

lm_status lm_core_args_init(lm_core_args *args, size_t size)
{
    const lm_core_args d = {
        LM_SIZED(lm_core_args),
        .is_causal = 1,
        .feature_map = LM_FEATURE_ELU1,
        .normalize = 1,
        .eps = 1e-6f,
        .precision = LM_PRECISION_AUTO,
        .window = LM_HYBRID_WINDOW_DEFAULT,
        .sinks = LM_HYBRID_SINKS_DEFAULT,
    };
    return LMI_SIZED_INIT(args, size, &d, lm_core_args, precision);
}

lm_status lmi_core_fill(const lm_core_args *args, lmi_core_call call, lm_core_args *full,
                        lmi_core_params *p, const lmi_backend **be)
{
    const int decode = call == LMI_CORE_DECODE, need_out = call != LMI_CORE_BACKWARD;
    if (!args)
        return lmi_error(LM_ERR_INVALID_ARG, "args is NULL");
    lm_status st = LMI_SIZED_IN(full, args, lm_core_args, precision);
    if (st)
        return st;
    const lm_core_args *a = full;
    if (!a->q)
        return lmi_error(LM_ERR_INVALID_ARG, "q is NULL");
    const lm_device dev = a->q->device;
    if ((st = lmi_check_tensor(a->q, "q", 4, dev)) || (st = lmi_check_tensor(a->k, "k", 4, dev)) ||
        (st = lmi_check_tensor(a->v, "v", 4, dev)) ||
        (need_out && (st = lmi_check_tensor(a->out, "out", 4, dev))))
        return st;
    const lm_dtype dt = a->q->dtype;
    if (dt == LM_BOOL)
        return lmi_error(LM_ERR_INVALID_ARG, "q must be BF16, F16 or F32");
    if (a->k->dtype != dt || a->v->dtype != dt || (need_out && a->out->dtype != dt))
        return lmi_error(LM_ERR_INVALID_ARG, "q, k, v and out must have the same dtype");
    const int64_t B = a->q->shape[0], L = a->q->shape[1], Hq = a->q->shape[2],
                  Dk = a->q->shape[3], Lk = a->k->shape[1], Hkv = a->k->shape[2],
                  Dv = a->v->shape[3];
    if (Hq > LMI_MAX_HEADS || Dk > LMI_MAX_HEAD_DIM || Dv > LMI_MAX_HEAD_DIM)
        return lmi_error(LM_ERR_INVALID_ARG, "at most %d heads of dimension %d", LMI_MAX_HEADS,
                         LMI_MAX_HEAD_DIM);
    if ((st = lmi_check_shape4(a->k, "k", (int64_t[]){ B, Lk, Hkv, Dk }, "[B, Lk, Hkv, Dk]")) ||
        (st = lmi_check_shape4(a->v, "v", (int64_t[]){ B, Lk, Hkv, Dv }, "[B, Lk, Hkv, Dv]")) ||
        (need_out &&
         (st = lmi_check_shape4(a->out, "out", (int64_t[]){ B, L, Hq, Dv }, "[B, L, Hq, Dv]"))))
        return st;
    if (Hq % Hkv)
        return lmi_error(LM_ERR_INVALID_ARG, "kv heads (%lld) must divide query heads (%lld)",
                         (long long)Hkv, (long long)Hq);
    const lm_tensor *ins[] = { a->q, a->k, a->v };
    const char *names[] = { "q", "k", "v" };
    if (need_out && (st = lmi_check_no_alias(a->out, ins, names, 3)))
        return st;
    if (a->key_padding_mask && (st = lmi_check_mask(a->key_padding_mask, dev, B, Lk)))
        return st;
    if (!a->state != !a->normalizer)
        return lmi_error(LM_ERR_INVALID_ARG, "state and normalizer go together: give both or neither");
    if (a->position < 0)
        return lmi_error(LM_ERR_INVALID_ARG, "position must be >= 0");
    const int causal = decode || a->is_causal;
    if (decode && (L != 1 || Lk != 1 || !a->state))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "decode takes one token (L = Lk = 1, got %lld, %lld) and a state",
                         (long long)L, (long long)Lk);
    if (causal && L != Lk)
        return lmi_error(LM_ERR_INVALID_ARG, "causal attention needs L == Lk (%lld != %lld)",
                         (long long)L, (long long)Lk);
    if ((st = lmi_check_options(a->feature_map, a->normalize, a->eps, a->scale, a->decay, Hkv,
                                a->precision)))
        return st;
    if (a->attention != LM_ATTENTION_LINEAR && (st = lmi_hybrid_check_core(a, causal, Hq)))
        return st;
    if (a->decay && !causal)
        return lmi_error(LM_ERR_UNSUPPORTED, "decay is defined for causal attention only");
    int64_t ctx;
    if ((st = lmi_context(a->state && !a->fresh_state ? a->position : 0, L > Lk ? L : Lk,
                          "the core call", &ctx)) ||
        (st = lmi_license_check(ctx)) || (st = lmi_core_entitle(a)))
        return st;
    *be = &lmi_cpu_backend;
    if (dev == LM_CUDA && (st = lmi_cuda_backend(-1, be)))
        return st;

    memset(p, 0, sizeof *p);
    p->B = B, p->L = L, p->Lk = Lk, p->Hq = Hq, p->Hkv = Hkv, p->Dk = Dk, p->Dv = Dv;
    p->q = lmi_view_of(a->q);
    p->k = lmi_view_of(a->k);
    p->v = lmi_view_of(a->v);
    if (need_out)
        p->out = lmi_view_of(a->out);
    if (a->key_padding_mask) {
        p->mask = a->key_padding_mask->data;
        p->mask_s[0] = a->key_padding_mask->stride[0];
        p->mask_s[1] = a->key_padding_mask->stride[1];
    }
    p->state = a->state;
    p->normalizer = a->normalizer;
    p->decay = a->decay;
    p->causal = causal;
    p->feature_map = a->feature_map;
    p->normalize = a->normalize;
    p->compensated = lmi_compensated(a->precision, ctx);
    p->exact = a->precision == LM_PRECISION_ON;
    p->eps = a->eps;
    p->scale = a->scale > 0.0f ? a->scale : 1.0f / sqrtf((float)Dk);
    if (a->attention != LM_ATTENTION_LINEAR)
        lmi_hybrid_fill(a, p);
    return LM_OK;
}

lm_status lm_linear_attn_prefill(const lm_core_args *args, void *stream)
{
    lm_core_args full;
    lmi_core_params p;
    const lmi_backend *be;
    lm_status st = lmi_core_fill(args, LMI_CORE_PREFILL, &full, &p, &be);
    if (st || (st = lmi_core_fresh(&full, be, &p, stream)))
        return st;
    return p.hybrid ? lmi_hybrid_run(be, &p, 0, stream) : be->prefill(&p, stream);
}

lm_status lm_linear_attn_prefill_ws(const lm_core_args *args, void *workspace, size_t workspace_bytes,
                                    void *stream)
{
    lm_core_args full;
    lmi_core_params p;
    const lmi_backend *be;
    lm_status st = lmi_core_fill(args, LMI_CORE_PREFILL, &full, &p, &be);
    if (st || (st = lmi_hybrid_linear_only(p.hybrid, "lm_linear_attn_prefill_ws",
                                           "a hybrid prefill allocates its own scratch")))
        return st;
    if (!workspace)
        return lmi_error(LM_ERR_INVALID_ARG, "workspace is NULL (lm_linear_attn_prefill allocates its own)");
    p.ws = workspace;
    p.ws_bytes = workspace_bytes;
    return (st = lmi_core_fresh(&full, be, &p, stream)) ? st : be->prefill(&p, stream);
}

lm_status lm_linear_attn_prefill_workspace(const lm_core_args *args, size_t *bytes)
{
    if (!bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "bytes is NULL");
    lm_core_args full;
    lmi_core_params p;
    const lmi_backend *be;
    lm_status st = lmi_core_fill(args, LMI_CORE_PREFILL, &full, &p, &be);
    if (st || (st = lmi_hybrid_linear_only(p.hybrid, "lm_linear_attn_prefill_workspace",
                                           "a hybrid prefill allocates its own scratch")))
        return st;
    return be->prefill_ws(&p, bytes);
}

lm_status lm_linear_attn_decode(const lm_core_args *args, void *stream)
{
    lm_core_args full;
    lmi_core_params p;
    const lmi_backend *be;
    lm_status st = lmi_core_fill(args, LMI_CORE_DECODE, &full, &p, &be);
    if (st || (st = lmi_core_fresh(&full, be, &p, stream)))
        return st;
    return p.hybrid ? lmi_hybrid_run(be, &p, 1, stream) : be->decode(&p, stream);
}
