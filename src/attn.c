/*
 * attn.c - the module API (lm_attn_*): configuration, argument checks, state
 * bookkeeping, then a call through the backend table. Every check runs
 * before anything changes, and a forward works on a scratch state that is
 * committed only on success, so a failed call leaves the handle as it was.
 */
#include "lm_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

lm_status lm_attn_config_init(lm_attn_config *cfg, size_t size, int embed_dim, int num_heads)
{
    const lm_attn_config d = {
        LM_SIZED(lm_attn_config),
        .embed_dim = embed_dim,
        .num_heads = num_heads,
        .feature_map = LM_FEATURE_ELU1,
        .normalize = 1,
        .eps = 1e-6f,
        .precision = LM_PRECISION_AUTO,
        .dtype = LM_F32,
        .device = LM_CPU,
        .window = LM_HYBRID_WINDOW_DEFAULT,
        .sinks = LM_HYBRID_SINKS_DEFAULT,
    };
    return LMI_SIZED_INIT(cfg, size, &d, lm_attn_config, max_batch);
}

static lm_status check_config(const lm_attn_config *c)
{
    if (c->embed_dim <= 0 || c->embed_dim > LMI_MAX_WIDTH)
        return lmi_error(LM_ERR_INVALID_ARG, "embed_dim must be in 1..%d, not %d", LMI_MAX_WIDTH,
                         c->embed_dim);
    if (c->num_heads <= 0 || c->num_heads > LMI_MAX_HEADS)
        return lmi_error(LM_ERR_INVALID_ARG, "num_heads must be in 1..%d, not %d", LMI_MAX_HEADS,
                         c->num_heads);
    if (c->num_kv_heads < 0 || (c->num_kv_heads && c->num_heads % c->num_kv_heads))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "num_kv_heads (%d) must divide num_heads (%d), or be 0 for num_heads",
                         c->num_kv_heads, c->num_heads);
    if (c->head_dim < 0 || c->head_dim > LMI_MAX_HEAD_DIM)
        return lmi_error(LM_ERR_INVALID_ARG, "head_dim must be in 0..%d, not %d",
                         LMI_MAX_HEAD_DIM, c->head_dim);
    if (!c->head_dim && c->embed_dim % c->num_heads)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "num_heads (%d) does not divide embed_dim (%d); set head_dim or change them",
                         c->num_heads, c->embed_dim);
    if (!c->head_dim && c->embed_dim / c->num_heads > LMI_MAX_HEAD_DIM)
        return lmi_error(LM_ERR_INVALID_ARG, "head_dim embed_dim/num_heads = %d exceeds %d",
                         c->embed_dim / c->num_heads, LMI_MAX_HEAD_DIM);
    if (c->kdim < 0 || c->kdim > LMI_MAX_WIDTH || c->vdim < 0 || c->vdim > LMI_MAX_WIDTH)
        return lmi_error(LM_ERR_INVALID_ARG, "kdim (%d) and vdim (%d) must be in 0..%d", c->kdim,
                         c->vdim, LMI_MAX_WIDTH);
    if (c->dtype != LM_BF16 && c->dtype != LM_F16 && c->dtype != LM_F32)
        return lmi_error(LM_ERR_INVALID_ARG, "dtype must be LM_BF16, LM_F16 or LM_F32, not %d",
                         (int)c->dtype);
    if (c->device != LM_CPU && c->device != LM_CUDA)
        return lmi_error(LM_ERR_INVALID_ARG, "device must be LM_CPU or LM_CUDA, not %d",
                         (int)c->device);
    if (c->max_batch < 0)
        return lmi_error(LM_ERR_INVALID_ARG, "max_batch must be >= 0, not %d", c->max_batch);
    int hkv = c->num_kv_heads ? c->num_kv_heads : c->num_heads;
    lm_status st = lmi_check_options(c->feature_map, c->normalize, c->eps, c->scale, c->decay, hkv,
                                     c->precision);
    return st ? st : lmi_hybrid_check_config(c);
}

/* Makes *buf hold at least `batch` rows of state; keeps the old buffer on failure. */
static lm_status reserve(lm_attn *a, float **buf, int64_t *cap, int64_t batch)
{
    if (*cap >= batch)
        return LM_OK;
    void *p;
    lm_status st = a->be->alloc(a, (size_t)lmi_state_floats(a, batch) * sizeof(float), &p);
    if (st)
        return st;
    if (*buf)
        a->be->free(a, *buf);
    *buf = p;
    *cap = batch;
    return LM_OK;
}

lm_status lm_attn_create(const lm_attn_config *config, lm_attn **out)
{
    if (!config || !out)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", config ? "out" : "cfg");
    lm_attn_config full;
    lm_status st = LMI_SIZED_IN(&full, config, lm_attn_config, max_batch);
    if (st || (st = check_config(&full)))
        return st;
    const lm_attn_config *cfg = &full;
    const lmi_backend *be = &lmi_cpu_backend;
    if (cfg->device == LM_CUDA && (st = lmi_cuda_backend(cfg->cuda_device, &be)))
        return st;

    lm_attn *a = calloc(1, sizeof *a);
    if (!a)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cannot allocate a handle");
    a->cfg = *cfg;
    a->E = cfg->embed_dim;
    a->Hq = cfg->num_heads;
    a->Hkv = cfg->num_kv_heads ? cfg->num_kv_heads : cfg->num_heads;
    a->D = cfg->head_dim ? cfg->head_dim : cfg->embed_dim / cfg->num_heads;
    a->kdim = cfg->kdim ? cfg->kdim : cfg->embed_dim;
    a->vdim = cfg->vdim ? cfg->vdim : cfg->embed_dim;
    if (a->cfg.scale == 0.0f)
        a->cfg.scale = 1.0f / sqrtf((float)a->D);
    a->be = be;
    if (cfg->decay) {
        a->decay = malloc((size_t)a->Hkv * sizeof(float));
        if (!a->decay) {
            free(a);
            return lmi_error(LM_ERR_OUT_OF_MEMORY, "cannot allocate the decay table");
        }
        memcpy(a->decay, cfg->decay, (size_t)a->Hkv * sizeof(float));
    }
    a->cfg.decay = a->decay;
    if ((st = lmi_hybrid_create(a))) {
        free(a->decay);
        free(a);
        return st;
    }
    st = be->init(a);
    if (st == LM_OK && cfg->max_batch > 0) {
        st = reserve(a, &a->state, &a->state_cap, cfg->max_batch);
        if (st == LM_OK)
            st = reserve(a, &a->work, &a->work_cap, cfg->max_batch);
    }
    if (st) {
        lm_attn_destroy(a);
        return st;
    }
    *out = a;
    return LM_OK;
}

void lm_attn_destroy(lm_attn *a)
{
    if (!a)
        return;
    if (a->state)
        a->be->free(a, a->state);
    if (a->work)
        a->be->free(a, a->work);
    a->be->fini(a);
    free(a->decay);
    lmi_hybrid_destroy(a);
    free(a);
}

lm_status lm_attn_set_weights(lm_attn *a, const lm_weights *weights)
{
    if (!a || !weights)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", a ? "weights" : "attn");
    lm_weights full;
    lm_status st = LMI_SIZED_IN(&full, weights, lm_weights, out_proj_bias);
    if (st)
        return st;
    const lm_weights *w = &full;
    int separate = w->q_proj_weight || w->k_proj_weight || w->v_proj_weight;
    if (w->in_proj_weight && separate)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "give either in_proj_weight or q/k/v_proj_weight, not both");
    if (!w->in_proj_weight &&
        !(w->q_proj_weight && w->k_proj_weight && w->v_proj_weight))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "in_proj_weight, or all three of q/k/v_proj_weight, are required");
    if (w->in_proj_weight && (a->kdim != a->E || a->vdim != a->E))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "in_proj_weight needs kdim == vdim == embed_dim; use q/k/v_proj_weight");
    if (!w->out_proj_weight)
        return lmi_error(LM_ERR_INVALID_ARG, "out_proj_weight is required");
    a->w = *w;
    a->has_weights = 1;
    return LM_OK;
}

lm_status lmi_attn_check_io(const lm_attn *a, const lm_tensor *t, const char *what, int ndim,
                          const int64_t *shape)
{
    lm_status st = lmi_check_tensor(t, what, ndim, a->cfg.device);
    if (st)
        return st;
    if (t->dtype != a->cfg.dtype)
        return lmi_error(LM_ERR_INVALID_ARG, "%s has dtype %d, the handle was created for %d",
                         what, (int)t->dtype, (int)a->cfg.dtype);
    for (int i = 0; i < ndim; i++)
        if (shape[i] >= 0 && t->shape[i] != shape[i])
            return lmi_error(LM_ERR_INVALID_ARG, "%s: dimension %d is %lld, expected %lld", what,
                             i, (long long)t->shape[i], (long long)shape[i]);
    return LM_OK;
}

static lm_status check_batch(const lm_attn *a, int64_t B)
{
    if (a->cfg.max_batch > 0 && B > a->cfg.max_batch)
        return lmi_error(LM_ERR_INVALID_ARG, "batch %lld exceeds max_batch %d", (long long)B,
                         a->cfg.max_batch);
    return LM_OK;
}

lm_status lmi_forward_opts_in(lm_forward_opts *full, const lm_forward_opts *opts)
{
    if (!opts) {
        *full = (lm_forward_opts){ LM_SIZED(lm_forward_opts) };
        return LM_OK;
    }
    return LMI_SIZED_IN(full, opts, lm_forward_opts, keep_state);
}

lm_status lmi_attn_check_inputs(const lm_attn *a, const lm_tensor *query, const lm_tensor *key,
                                const lm_tensor *value, const lm_forward_opts *opts,
                                const lm_tensor *out, lmi_forward *f)
{
    if (!a)
        return lmi_error(LM_ERR_INVALID_ARG, "attn is NULL");
    if (!a->has_weights)
        return lmi_error(LM_ERR_INVALID_ARG, "no weights: call lm_attn_set_weights first");
    lm_status st = lmi_attn_check_io(a, query, "query", 3, (int64_t[]){ -1, -1, a->E });
    if (st)
        return st;
    const int64_t B = query->shape[0], Lq = query->shape[1];
    if ((st = lmi_attn_check_io(a, key, "key", 3, (int64_t[]){ B, -1, a->kdim })))
        return st;
    const int64_t Lk = key->shape[1];
    if ((st = lmi_attn_check_io(a, value, "value", 3, (int64_t[]){ B, Lk, a->vdim })))
        return st;
    const lm_tensor *ins[] = { query, key, value };
    const char *names[] = { "query", "key", "value" };
    if (out && ((st = lmi_attn_check_io(a, out, "out", 3, (int64_t[]){ B, Lq, a->E })) ||
                (st = lmi_check_no_alias(out, ins, names, 3))))
        return st;
    if ((st = check_batch(a, B)))
        return st;
    if (opts->key_padding_mask &&
        (st = lmi_check_mask(opts->key_padding_mask, a->cfg.device, B, Lk)))
        return st;
    if (opts->is_causal && Lq != Lk)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "is_causal needs as many queries as keys (%lld != %lld)",
                         (long long)Lq, (long long)Lk);
    if (a->decay && !opts->is_causal)
        return lmi_error(LM_ERR_UNSUPPORTED,
                         "decay is defined for causal attention only; pass is_causal = 1");
    if ((st = lmi_hybrid_check_forward(a, opts->is_causal)))
        return st;
    *f = (lmi_forward){ .query = query, .key = key, .value = value, .out = (lm_tensor *)out,
                        .key_padding_mask = opts->key_padding_mask, .B = B, .Lq = Lq, .Lk = Lk,
                        .causal = opts->is_causal != 0 };
    return LM_OK;
}

lm_status lm_attn_forward(lm_attn *a, const lm_tensor *query, const lm_tensor *key,
                          const lm_tensor *value, const lm_forward_opts *options, lm_tensor *out,
                          void *stream)
{
    lm_forward_opts full;
    lm_status st = lmi_forward_opts_in(&full, options);
    if (st)
        return st;
    const lm_forward_opts *opts = &full;
    if (!out)
        return lmi_error(LM_ERR_INVALID_ARG, "out is NULL");
    lmi_forward f;
    if ((st = lmi_attn_check_inputs(a, query, key, value, opts, out, &f)))
        return st;
    const int64_t B = f.B;
    const int use_state = opts->use_state && a->state_batch > 0;
    if (use_state && a->state_batch != B)
        return lmi_error(LM_ERR_STATE,
                         "the state holds batch %lld, this call has batch %lld: call lm_attn_reset first",
                         (long long)a->state_batch, (long long)B);
    int64_t ctx;
    if ((st = lmi_context(use_state ? a->position : 0, f.Lq > f.Lk ? f.Lq : f.Lk,
                          "lm_attn_forward", &ctx)) ||
        (st = lmi_license_check(ctx)) ||
        (st = lmi_capture_check(a->be, stream, !use_state, "lm_attn_forward")))
        return st;

    if ((st = reserve(a, &a->work, &a->work_cap, B)))
        return st;
    const size_t bytes = (size_t)lmi_state_floats(a, B) * sizeof(float);
    st = use_state ? a->be->copy(a, a->work, a->state, bytes, 0) : a->be->zero(a, a->work, bytes);
    if (st)
        return st;
    f.compensated = lmi_compensated(a->cfg.precision, ctx);
    f.state = a->work;
    f.position = use_state ? a->position : 0;
    if ((st = a->be->forward(a, &f, stream)))
        return st;
    if (!opts->keep_state)
        return LM_OK;
    if ((st = reserve(a, &a->state, &a->state_cap, B)))
        return st;
    if ((st = a->be->copy(a, a->state, a->work, bytes, 0))) {
        a->state_batch = 0; /* the copy failed half-way: no state is better than a torn one */
        return st;
    }
    a->state_batch = B;
    a->position = ctx;
    return LM_OK;
}

lm_status lm_attn_step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream)
{
    if (!a)
        return lmi_error(LM_ERR_INVALID_ARG, "attn is NULL");
    if (!a->has_weights)
        return lmi_error(LM_ERR_INVALID_ARG, "no weights: call lm_attn_set_weights first");
    if (a->kdim != a->E || a->vdim != a->E)
        return lmi_error(LM_ERR_UNSUPPORTED,
                         "step is causal self-attention and needs kdim == vdim == embed_dim");
    lm_status st = lmi_attn_check_io(a, x, "x", 2, (int64_t[]){ -1, a->E });
    if (st)
        return st;
    const int64_t B = x->shape[0];
    const lm_tensor *ins[] = { x };
    const char *names[] = { "x" };
    if ((st = lmi_attn_check_io(a, out, "out", 2, (int64_t[]){ B, a->E })) ||
        (st = lmi_check_no_alias(out, ins, names, 1)) || (st = check_batch(a, B)))
        return st;
    if (a->state_batch && a->state_batch != B)
        return lmi_error(LM_ERR_STATE,
                         "the state holds batch %lld, this step has batch %lld: call lm_attn_reset first",
                         (long long)a->state_batch, (long long)B);
    const int64_t pos = a->state_batch ? a->position : 0;
    int64_t ctx;
    if ((st = lmi_context(pos, 1, "lm_attn_step", &ctx)) || (st = lmi_license_check(ctx)) ||
        (st = lmi_capture_check(a->be, stream, 0, "lm_attn_step")))
        return st;
    if (!a->state_batch) {
        if ((st = reserve(a, &a->state, &a->state_cap, B)) ||
            (st = a->be->zero(a, a->state, (size_t)lmi_state_floats(a, B) * sizeof(float))))
            return st;
        a->state_batch = B;
        a->position = 0;
    }
    if ((st = a->be->step(a, x, out, stream)))
        return st;
    a->position++;
    return LM_OK;
}

lm_status lm_attn_reset(lm_attn *a)
{
    if (!a)
        return lmi_error(LM_ERR_INVALID_ARG, "attn is NULL");
    a->state_batch = 0;
    a->position = 0;
    return LM_OK;
}

lm_status lm_attn_state_size(const lm_attn *a, size_t *bytes)
{
    if (!a || !bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", a ? "bytes" : "attn");
    if (!a->state_batch)
        return lmi_error(LM_ERR_STATE, "there is no state: run a forward with keep_state, a step, "
                                       "or lm_attn_set_state first");
    *bytes = lmi_blob_header_bytes(a) + (size_t)lmi_state_floats(a, a->state_batch) * sizeof(float) +
             LMI_BLOB_TAG_BYTES;
    return LM_OK;
}

lm_status lm_attn_get_state(const lm_attn *a, void *buf, size_t bytes)
{
    size_t need;
    lm_status st = lm_attn_state_size(a, &need);
    if (st)
        return st;
    if (!buf)
        return lmi_error(LM_ERR_INVALID_ARG, "buf is NULL");
    if (bytes < need)
        return lmi_error(LM_ERR_INVALID_ARG, "buf holds %zu bytes, the state needs %zu", bytes,
                         need);
    const size_t hb = lmi_blob_header_bytes(a), body = need - LMI_BLOB_TAG_BYTES;
    lmi_blob_header_write(a, buf);
    /* The copy to the host is synchronous: the tag covers the final bytes. */
    st = a->be->copy((lm_attn *)a, (char *)buf + hb, a->state, body - hb, 2);
    return st ? st : lmi_blob_sign(buf, body);
}

lm_status lm_attn_set_state(lm_attn *a, const void *buf, size_t bytes)
{
    if (!a || !buf)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", a ? "buf" : "attn");
    lmi_blob_info h;
    lm_status st = lmi_blob_read(a, buf, bytes, &h);
    if (st || (st = reserve(a, &a->state, &a->state_cap, h.batch)))
        return st;
    if ((st = a->be->copy(a, a->state, (const char *)buf + h.header_bytes, h.data_bytes, 1))) {
        a->state_batch = 0;
        return st;
    }
    a->state_batch = h.batch;
    a->position = h.position;
    return LM_OK;
}

lm_status lm_attn_position(const lm_attn *a, int64_t *tokens)
{
    if (!a || !tokens)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", a ? "tokens" : "attn");
    *tokens = a->state_batch ? a->position : 0;
    return LM_OK;
}
