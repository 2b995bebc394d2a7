/*
 * pool.c - the engine API (lm_pool_*): a pool of recurrent states in the
 * caller's memory, packed variable-length prefill and indexed decode over
 * it, slot operations and the slot blob. Everything a call is given is
 * checked here, whole, before anything is written (see "Per-row failure" in
 * liquid_memory.h); the backend table then does the work. The pool keeps
 * every slot's position (tokens absorbed), which the license reads.
 */
#include "pool_seq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Slots are named by int32 indices in the calls. */
#define MAX_SLOTS INT32_MAX

/* ---- configuration and life ---- */

lm_status lm_pool_config_init(lm_pool_config *cfg, size_t size, int64_t num_slots, int num_kv_heads,
                              int head_dim)
{
    const lm_pool_config d = {
        LM_SIZED(lm_pool_config),
        .num_slots = num_slots,
        .num_kv_heads = num_kv_heads,
        .head_dim = head_dim,
        .device = LM_CPU,
        .cuda_device = -1,
        .feature_map = LM_FEATURE_ELU1,
        .normalize = 1,
        .eps = 1e-6f,
        .precision = LM_PRECISION_AUTO,
        .window = LM_HYBRID_WINDOW_DEFAULT,
        .sinks = LM_HYBRID_SINKS_DEFAULT,
    };
    return LMI_SIZED_INIT(cfg, size, &d, lm_pool_config, num_threads);
}

/* A hybrid pool's fields: the options as the core checks them (through its
 * own check, on core arguments made of the pool's), the heads, the window's
 * memory and strides. */
static lm_status check_hybrid(const lm_pool_config *c, int64_t Dv)
{
    if (c->num_heads < 0 || c->num_heads > LMI_MAX_HEADS || c->num_heads % c->num_kv_heads)
        return lmi_error(LM_ERR_INVALID_ARG, "num_heads (%d) must be 0 (any) or a multiple of the %d kv "
                         "heads, at most %d", c->num_heads, c->num_kv_heads, LMI_MAX_HEADS);
    if (c->window_gate && !c->num_heads)
        return lmi_error(LM_ERR_INVALID_ARG, "window_gate holds num_heads logits: set num_heads (the "
                         "layer's query heads)");
    lm_core_args a = { .state = c->state, .normalize = c->normalize, .decay = c->decay,
                       .attention = c->attention, .window = c->window, .sinks = c->sinks,
                       .window_gate = c->window_gate, .window_gate_form = c->window_gate_form,
                       .window_keys = c->window_keys,
                       .window_values = c->window_values, .window_pos = c->window_pos };
    lm_status st = lmi_hybrid_check_core(&a, 1, c->num_heads);
    if (st)
        return st;
    const int64_t ns = (int64_t)c->sinks + c->window, wk = c->num_kv_heads * ns * c->head_dim,
                  wv = c->num_kv_heads * ns * Dv, wp = c->num_kv_heads * ns;
    if (c->window_keys_stride < 0 || (c->window_keys_stride && c->window_keys_stride < wk) ||
        c->window_values_stride < 0 || (c->window_values_stride && c->window_values_stride < wv) ||
        c->window_pos_stride < 0 || (c->window_pos_stride && c->window_pos_stride < wp))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "window slot strides (%lld, %lld, %lld elements) are below a slot's window "
                         "keys (%lld), values (%lld) or positions (%lld): slots would overlap",
                         (long long)c->window_keys_stride, (long long)c->window_values_stride,
                         (long long)c->window_pos_stride, (long long)wk, (long long)wv, (long long)wp);
    return LM_OK;
}

static lm_status check_config(const lm_pool_config *c)
{
    if (c->num_slots < 1 || c->num_slots > MAX_SLOTS)
        return lmi_error(LM_ERR_INVALID_ARG, "num_slots must be in 1..%d, not %lld", MAX_SLOTS,
                         (long long)c->num_slots);
    if (c->num_kv_heads < 1 || c->num_kv_heads > LMI_MAX_HEADS)
        return lmi_error(LM_ERR_INVALID_ARG, "num_kv_heads must be in 1..%d, not %d", LMI_MAX_HEADS,
                         c->num_kv_heads);
    if (c->head_dim < 1 || c->head_dim > LMI_MAX_HEAD_DIM || c->head_dim_v < 0 ||
        c->head_dim_v > LMI_MAX_HEAD_DIM)
        return lmi_error(LM_ERR_INVALID_ARG, "head_dim (%d) must be in 1..%d, head_dim_v (%d) in 0..%d",
                         c->head_dim, LMI_MAX_HEAD_DIM, c->head_dim_v, LMI_MAX_HEAD_DIM);
    if (c->device != LM_CPU && c->device != LM_CUDA)
        return lmi_error(LM_ERR_INVALID_ARG, "device must be LM_CPU or LM_CUDA, not %d", (int)c->device);
    if (!c->state || !c->normalizer)
        return lmi_error(LM_ERR_INVALID_ARG, "state and normalizer (the caller's slot memory) are required");
    const int64_t Dv = c->head_dim_v ? c->head_dim_v : c->head_dim;
    const int64_t S = (int64_t)c->num_kv_heads * c->head_dim * Dv, z = (int64_t)c->num_kv_heads * c->head_dim;
    if ((c->state_stride && c->state_stride < S) || (c->normalizer_stride && c->normalizer_stride < z) ||
        c->state_stride < 0 || c->normalizer_stride < 0)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "slot strides (%lld, %lld floats) are below a slot's S (%lld) or z (%lld): "
                         "slots would overlap", (long long)c->state_stride,
                         (long long)c->normalizer_stride, (long long)S, (long long)z);
    if (c->num_threads < 0)
        return lmi_error(LM_ERR_INVALID_ARG, "num_threads must be >= 0, not %d", c->num_threads);
    lm_status st = lmi_check_options(c->feature_map, c->normalize, c->eps, c->scale, c->decay,
                                     c->num_kv_heads, c->precision);
    return st ? st : c->attention == LM_ATTENTION_LINEAR ? LM_OK : check_hybrid(c, Dv);
}

lm_status lm_pool_create(const lm_pool_config *config, lm_pool **out)
{
    if (!config || !out)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", config ? "out" : "cfg");
    lm_pool_config cfg;
    lm_status st = LMI_SIZED_IN(&cfg, config, lm_pool_config, num_threads);
    if (st || (st = check_config(&cfg)))
        return st;
    const lmi_backend *be = &lmi_cpu_backend;
    if (cfg.device == LM_CUDA && (st = lmi_cuda_backend(cfg.cuda_device, &be)))
        return st;
    if (!be->pool)
        return lmi_error(LM_ERR_UNSUPPORTED, "the %s backend has no state pools", be->name);
    lm_pool *p = calloc(1, sizeof *p);
    if (!p)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cannot allocate a pool");
    p->cfg = cfg;
    p->N = cfg.num_slots, p->Hkv = cfg.num_kv_heads, p->Dk = cfg.head_dim;
    p->Dv = cfg.head_dim_v ? cfg.head_dim_v : cfg.head_dim;
    p->S_stride = cfg.state_stride ? cfg.state_stride : p->Hkv * p->Dk * p->Dv;
    p->z_stride = cfg.normalizer_stride ? cfg.normalizer_stride : p->Hkv * p->Dk;
    p->scale = cfg.scale > 0.0f ? cfg.scale : 1.0f / sqrtf((float)p->Dk);
    p->ops = be->pool;
    p->be = be;
    p->pos = calloc((size_t)p->N, sizeof *p->pos);
    p->mark = calloc((size_t)p->N, sizeof *p->mark);
    if (cfg.decay && (p->decay = malloc((size_t)p->Hkv * sizeof(float))))
        memcpy(p->decay, cfg.decay, (size_t)p->Hkv * sizeof(float));
    p->cfg.decay = p->decay;
    p->hybrid = cfg.attention == LM_ATTENTION_HYBRID;
    p->W = p->hybrid ? cfg.window : 0, p->s = p->hybrid ? cfg.sinks : 0, p->Hq = p->hybrid ? cfg.num_heads : 0;
    if (p->hybrid && cfg.window_gate && (p->gate = malloc((size_t)p->Hq * sizeof(float))))
        memcpy(p->gate, cfg.window_gate, (size_t)p->Hq * sizeof(float));
    p->cfg.window_gate = p->gate;
    lmi_pool_layout(p);
    if (!p->pos || !p->mark || (cfg.decay && !p->decay) || (p->hybrid && cfg.window_gate && !p->gate)) {
        lm_pool_destroy(p);
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cannot allocate the pool's %lld positions", (long long)p->N);
    }
    if ((st = p->ops->init(p))) {
        p->ops = NULL; /* nothing of the backend's to release */
        lm_pool_destroy(p);
        return st;
    }
    *out = p;
    return LM_OK;
}

void lm_pool_destroy(lm_pool *p)
{
    if (!p)
        return;
    if (p->ops)
        p->ops->fini(p);
    free(p->pos);
    free(p->mark);
    free(p->decay);
    free(p->gate);
    free(p);
}

/* ---- argument checks shared by the calls ---- */

static lm_status check_slot(const lm_pool *p, int64_t slot, const char *what)
{
    if (slot < 0 || slot >= p->N)
        return lmi_error(LM_ERR_INVALID_ARG, "%s %lld is not a slot of the pool (0..%lld)", what,
                         (long long)slot, (long long)p->N - 1);
    return LM_OK;
}

/* A [R, H, D] tensor of the pool's device with R rows (< 0: any), H heads
 * (< 0: any) and D; its dtype must be dt (< 0: a float dtype). */
static lm_status check_rows(const lm_pool *p, const lm_tensor *t, const char *what, int64_t R, int64_t H,
                            int64_t D, int dt)
{
    lm_status st = lmi_check_tensor(t, what, 3, p->cfg.device);
    if (st)
        return st;
    if (t->dtype == LM_BOOL || (dt >= 0 && (int)t->dtype != dt))
        return lmi_error(LM_ERR_INVALID_ARG, "%s: q, k, v and out must share one of BF16, F16, F32", what);
    const int64_t want[3] = { R, H, D };
    for (int i = 0; i < 3; i++)
        if (want[i] >= 0 && t->shape[i] != want[i])
            return lmi_error(LM_ERR_INVALID_ARG, "%s is [%lld, %lld, %lld]: dimension %d should be %lld",
                             what, (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                             i, (long long)want[i]);
    if (p->cfg.device == LM_CUDA && t->stride[2] != 1)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %s needs stride 1 on its last dimension", what);
    return LM_OK;
}

/* q [R, Hq, Dk], k [R, Hkv, Dk], v [R, Hkv, Dv], out [R, Hq, Dv] (*R, *Hq),
 * and a workspace given with its size. */
static lm_status check_io(const lm_pool *p, const lm_tensor *q, const lm_tensor *k, const lm_tensor *v,
                          const lm_tensor *out, const void *ws, size_t ws_bytes, int64_t *R, int64_t *Hq)
{
    if (!ws && ws_bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "workspace is NULL but workspace_bytes is %zu", ws_bytes);
    if (!q || !k || !v || !out)
        return lmi_error(LM_ERR_INVALID_ARG, "q, k, v and out are required");
    lm_status st = check_rows(p, q, "q", -1, -1, p->Dk, -1);
    if (st)
        return st;
    *R = q->shape[0], *Hq = q->shape[1];
    if (*Hq > LMI_MAX_HEADS || *Hq % p->Hkv)
        return lmi_error(LM_ERR_INVALID_ARG, "q has %lld heads: a multiple of the pool's %lld kv heads "
                         "(at most %d)", (long long)*Hq, (long long)p->Hkv, LMI_MAX_HEADS);
    if (p->Hq && *Hq != p->Hq)
        return lmi_error(LM_ERR_INVALID_ARG, "q has %lld heads, the hybrid pool's num_heads is %lld",
                         (long long)*Hq, (long long)p->Hq);
    if ((st = check_rows(p, k, "k", *R, p->Hkv, p->Dk, q->dtype)) ||
        (st = check_rows(p, v, "v", *R, p->Hkv, p->Dv, q->dtype)) ||
        (st = check_rows(p, out, "out", *R, *Hq, p->Dv, q->dtype)))
        return st;
    const lm_tensor *ins[] = { q, k, v };
    const char *names[] = { "q", "k", "v" };
    return lmi_check_no_alias(out, ins, names, 3);
}

static lmi_view rows_view(const lm_tensor *t)
{
    lmi_view v = { .data = t->data, .dtype = t->dtype, .s = { 0, t->stride[0], t->stride[1], t->stride[2] } };
    return v;
}

/* The license's limit on a slot's tokens (0 = none); LICENSE when nothing
 * may run (an invalid or expired license). Checked on every call. */
static lm_status license_limit(int64_t *limit)
{
    lmi_limits lim;
    lm_status st = lmi_license_limits(&lim);
    *limit = lim.cap;
    return st;
}

/* ---- varlen prefill ---- */

/* Checks a prefill call whole and fills *v (skip left NULL). */
static lm_status check_prefill(lm_pool *pool, const lm_prefill_args *args, lm_prefill_args *a, lmi_varlen *v)
{
    if (!pool || !args)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", pool ? "args" : "pool");
    lm_status st = LMI_SIZED_IN(a, args, lm_prefill_args, row_status);
    if (st)
        return st;
    int64_t T = 0, Hq = 0;
    if ((st = check_io(pool, a->q, a->k, a->v, a->out, a->workspace, a->workspace_bytes, &T, &Hq)))
        return st;
    const int64_t n = a->num_seqs;
    if (n < 1 || !a->cu_seqlens || !a->slots)
        return lmi_error(LM_ERR_INVALID_ARG, "num_seqs (%lld) must be >= 1, with cu_seqlens and slots",
                         (long long)n);
    if (a->cu_seqlens[0] != 0 || a->cu_seqlens[n] != T)
        return lmi_error(LM_ERR_INVALID_ARG, "cu_seqlens must run from 0 to T = %lld (the rows of q), "
                         "not %d .. %d", (long long)T, a->cu_seqlens[0], a->cu_seqlens[n]);
    pool->epoch++;
    for (int64_t i = 0; i < n; i++) {
        if (a->cu_seqlens[i + 1] < a->cu_seqlens[i])
            return lmi_error(LM_ERR_INVALID_ARG, "cu_seqlens decreases at %lld (%d > %d)", (long long)i,
                             a->cu_seqlens[i], a->cu_seqlens[i + 1]);
        const int32_t s = a->slots[i];
        if (s < -1 || s >= pool->N)
            return lmi_error(LM_ERR_INVALID_ARG, "slots[%lld] = %d is not a slot of the pool (0..%lld, "
                             "or -1)", (long long)i, s, (long long)pool->N - 1);
        if (s >= 0 && pool->mark[s] == pool->epoch)
            return lmi_error(LM_ERR_INVALID_ARG, "slot %d appears twice in one call (sequence %lld)", s,
                             (long long)i);
        if (s >= 0)
            pool->mark[s] = pool->epoch;
        if (a->flags && (a->flags[i] & ~LM_SEQ_FRESH))
            return lmi_error(LM_ERR_INVALID_ARG, "flags[%lld] = %u has unknown bits", (long long)i,
                             (unsigned)a->flags[i]);
    }
    *v = (lmi_varlen){ .q = rows_view(a->q), .k = rows_view(a->k), .v = rows_view(a->v),
                       .out = rows_view(a->out), .T = T, .Hq = Hq, .n = n, .cu = a->cu_seqlens,
                       .slot = a->slots, .flags = a->flags, .ws = a->workspace,
                       .ws_bytes = a->workspace_bytes };
    return LM_OK;
}

lm_status lm_pool_prefill_workspace(const lm_pool *pool, const lm_prefill_args *args, size_t *bytes)
{
    lm_prefill_args a;
    lmi_varlen v;
    if (!bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "bytes is NULL");
    lm_status st = check_prefill((lm_pool *)pool, args, &a, &v);
    return st ? st : pool->ops->prefill_ws(pool, &v, bytes);
}

/* pool->pos := the device's positions (CUDA, synchronous). */
static lm_status refresh(lm_pool *pool, void *stream)
{
    lm_status st = pool->ops->positions(pool, stream);
    pool->stale = st ? pool->stale : 0;
    return st;
}

/* A hybrid prefill places tokens by each slot's exact position (docs/DESIGN.md
 * §9.2), which on CUDA only the device knows after decode steps: read back
 * when some sequence continues a slot. That read cannot be captured. */
static lm_status hybrid_positions(lm_pool *pool, const lmi_varlen *v, void *stream)
{
    int continues = 0;
    for (int64_t i = 0; i < v->n; i++)
        continues |= !lmi_pool_seq_fresh(v, i) && v->cu[i + 1] > v->cu[i];
    if (!pool->hybrid || !pool->ops->positions || !pool->stale || !continues)
        return LM_OK;
    int yes = 0;
    lm_status st = pool->be->capturing ? pool->be->capturing(stream, &yes) : LM_OK;
    if (st)
        return st;
    if (yes)
        return lmi_error(LM_ERR_UNSUPPORTED,
                         "lm_pool_prefill on a hybrid pool continuing slots after decode steps reads the "
                         "slots' positions back from the GPU (a host synchronisation), which a CUDA graph "
                         "cannot capture: run it outside the graph (lm_pool_decode can be captured)");
    return refresh(pool, stream);
}

/* Contexts after the call against the license: sequences over its limit
 * are refused (row_status), or fail the call (no row_status). */
static lm_status prefill_license(lm_pool *pool, const lmi_varlen *v, lm_status *row_status, void *stream,
                                 int *refused)
{
    int64_t limit;
    lm_status st = license_limit(&limit);
    if (st)
        return st;
    *refused = 0;
    for (int64_t i = 0; row_status && i < v->n; i++)
        row_status[i] = LM_OK;
    if (!limit)
        return LM_OK;
    if (pool->ops->positions && (st = refresh(pool, stream)))
        return st; /* CUDA: the device's positions (decode steps), exact */
    int64_t worst = 0;
    for (int64_t i = 0; i < v->n; i++) {
        const int64_t ctx = (lmi_pool_seq_fresh(v, i) ? 0 : pool->pos[v->slot[i]]) + v->cu[i + 1] - v->cu[i];
        worst = ctx > worst ? ctx : worst;
        if (row_status)
            row_status[i] = ctx > limit ? LM_ERR_LICENSE : LM_OK;
        *refused |= ctx > limit;
    }
    if (*refused && !row_status)
        return lmi_license_check(worst);
    return LM_OK;
}

/* A hybrid slot's window codes are int32 (docs/DESIGN.md §9.2): no sequence
 * may take its slot past 2^31 - 1 tokens. */
static lm_status hybrid_lengths(const lm_pool *pool, const lmi_varlen *v)
{
    for (int64_t i = 0; pool->hybrid && i < v->n; i++) {
        const int64_t end = (lmi_pool_seq_fresh(v, i) ? 0 : pool->pos[v->slot[i]]) + v->cu[i + 1] - v->cu[i];
        if (end > INT32_MAX)
            return lmi_error(LM_ERR_UNSUPPORTED, "sequence %lld would take its hybrid slot to position %lld: "
                             "window positions are int32 (at most 2^31 - 1 tokens)", (long long)i,
                             (long long)end);
    }
    return LM_OK;
}

lm_status lm_pool_prefill(lm_pool *pool, const lm_prefill_args *args, void *stream)
{
    lm_prefill_args a;
    lmi_varlen v;
    int refused;
    lm_status st = check_prefill(pool, args, &a, &v);
    if (st || (st = lmi_capture_check(pool->be, stream, 0, "lm_pool_prefill")) ||
        (st = hybrid_positions(pool, &v, stream)) || (st = hybrid_lengths(pool, &v)) ||
        (st = prefill_license(pool, &v, a.row_status, stream, &refused)))
        return st;
    v.skip = refused ? a.row_status : NULL;
    if ((st = pool->ops->prefill(pool, &v, stream)))
        return st;
    for (int64_t i = 0; i < v.n; i++) {
        const int32_t s = v.slot[i];
        if (s >= 0 && !(v.skip && v.skip[i]))
            pool->pos[s] = (lmi_pool_seq_fresh(&v, i) ? 0 : pool->pos[s]) + v.cu[i + 1] - v.cu[i];
    }
    return LM_OK;
}

/* ---- indexed decode ---- */

static lm_status check_decode(lm_pool *pool, const lm_decode_args *args, lm_decode_args *a, lmi_rows *r)
{
    if (!pool || !args)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", pool ? "args" : "pool");
    lm_status st = LMI_SIZED_IN(a, args, lm_decode_args, row_status);
    if (st)
        return st;
    int64_t B = 0, Hq = 0;
    if ((st = check_io(pool, a->q, a->k, a->v, a->out, a->workspace, a->workspace_bytes, &B, &Hq)))
        return st;
    if (!a->slots)
        return lmi_error(LM_ERR_INVALID_ARG, "slots is NULL");
    if (B > MAX_SLOTS)
        return lmi_error(LM_ERR_INVALID_ARG, "%lld rows, at most %d", (long long)B, MAX_SLOTS);
    *r = (lmi_rows){ .q = rows_view(a->q), .k = rows_view(a->k), .v = rows_view(a->v),
                     .out = rows_view(a->out), .B = B, .Hq = Hq, .slot = a->slots,
                     .status = a->row_status, .ws = a->workspace, .ws_bytes = a->workspace_bytes };
    /* [B, 1, H, D] views: the row is the batch index. */
    lmi_view *vs[] = { &r->q, &r->k, &r->v, &r->out };
    for (int i = 0; i < 4; i++)
        vs[i]->s[0] = vs[i]->s[1], vs[i]->s[1] = 0;
    if (pool->cfg.device == LM_CUDA)
        return LM_OK; /* the indices are in device memory: the kernel checks them */
    pool->epoch++;
    for (int64_t b = 0; b < B; b++) {
        const int32_t s = a->slots[b];
        if (s < -1 || s >= pool->N)
            return lmi_error(LM_ERR_INVALID_ARG, "slots[%lld] = %d is not a slot of the pool (0..%lld, "
                             "or -1 for padding)", (long long)b, s, (long long)pool->N - 1);
        if (s >= 0 && pool->mark[s] == pool->epoch)
            return lmi_error(LM_ERR_INVALID_ARG, "slot %d appears twice in one call (row %lld)", s,
                             (long long)b);
        if (s >= 0)
            pool->mark[s] = pool->epoch;
    }
    return LM_OK;
}

lm_status lm_pool_decode_workspace(const lm_pool *pool, const lm_decode_args *args, size_t *bytes)
{
    lm_decode_args a;
    lmi_rows r;
    if (!bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "bytes is NULL");
    lm_status st = check_decode((lm_pool *)pool, args, &a, &r);
    return st ? st : pool->ops->decode_ws(pool, &r, bytes);
}

lm_status lm_pool_decode(lm_pool *pool, const lm_decode_args *args, void *stream)
{
    lm_decode_args a;
    lmi_rows r;
    lm_status st = check_decode(pool, args, &a, &r);
    int64_t limit;
    if (st || (st = license_limit(&limit)))
        return st;
    if (pool->cfg.device == LM_CUDA) {
        r.limit = limit;
        pool->stale = 1;
        return pool->ops->decode(pool, &r, stream);
    }
    int refused = 0;
    int64_t worst = 0;
    for (int64_t b = 0; limit && b < r.B; b++) {
        const int32_t s = r.slot[b];
        const int over = s >= 0 && pool->pos[s] + 1 > limit;
        refused |= over;
        worst = s >= 0 && pool->pos[s] + 1 > worst ? pool->pos[s] + 1 : worst;
    }
    if (refused && !r.status)
        return lmi_license_check(worst);
    for (int64_t b = 0; r.status && b < r.B; b++) {
        const int32_t s = r.slot[b];
        r.status[b] = s >= 0 && limit && pool->pos[s] + 1 > limit ? LM_ERR_LICENSE : LM_OK;
    }
    r.skip = refused ? r.status : NULL;
    if ((st = pool->ops->decode(pool, &r, stream)))
        return st;
    for (int64_t b = 0; b < r.B; b++)
        if (r.slot[b] >= 0 && !(r.skip && r.skip[b]))
            pool->pos[r.slot[b]]++;
    return LM_OK;
}

/* ---- slot operations ---- */

lm_status lm_pool_slot_zero(lm_pool *pool, int64_t slot, void *stream)
{
    if (!pool)
        return lmi_error(LM_ERR_INVALID_ARG, "pool is NULL");
    lm_status st = check_slot(pool, slot, "slot");
    if (st || (st = pool->ops->slot_zero(pool, slot, stream)))
        return st;
    pool->pos[slot] = 0;
    return LM_OK;
}

lm_status lm_pool_slot_copy(lm_pool *pool, int64_t dst, int64_t src, void *stream)
{
    if (!pool)
        return lmi_error(LM_ERR_INVALID_ARG, "pool is NULL");
    lm_status st = check_slot(pool, dst, "dst");
    if (st || (st = check_slot(pool, src, "src")))
        return st;
    if (dst == src)
        return LM_OK;
    if ((st = pool->ops->slot_copy(pool, dst, src, stream)))
        return st;
    pool->pos[dst] = pool->pos[src];
    return LM_OK;
}

lm_status lm_pool_slot_position(const lm_pool *pool, int64_t slot, int64_t *tokens, void *stream)
{
    if (!pool || !tokens)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", pool ? "tokens" : "pool");
    lm_status st = check_slot(pool, slot, "slot");
    if (st)
        return st;
    return pool->ops->slot_get(pool, slot, NULL, tokens, stream);
}

lm_status lm_pool_slot_blob_size(const lm_pool *pool, size_t *bytes)
{
    if (!pool || !bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", pool ? "bytes" : "pool");
    *bytes = lmi_slot_blob_bytes(pool);
    return LM_OK;
}

lm_status lm_pool_slot_export(const lm_pool *pool, int64_t slot, void *buf, size_t bytes, void *stream)
{
    size_t need;
    lm_status st = lm_pool_slot_blob_size(pool, &need);
    if (st || (st = check_slot(pool, slot, "slot")))
        return st;
    if (!buf || bytes < need)
        return lmi_error(LM_ERR_INVALID_ARG, "buf holds %zu bytes, a slot's blob needs %zu",
                         buf ? bytes : 0, need);
    int64_t position;
    if ((st = pool->ops->slot_get(pool, slot, (char *)buf + lmi_slot_blob_header(pool), &position, stream)))
        return st;
    return lmi_slot_blob_seal(pool, position, buf);
}

/* A hybrid slot's window positions against its position: every code at most
 * the position, and the largest the position itself (a decode reads the
 * slot's position from there, docs/DESIGN.md §9.2). */
static lm_status check_window_pos(const lm_pool *p, const void *data, int64_t position)
{
    const char *pos = (const char *)data + 4 * (p->part[0].words + p->part[1].words + p->part[2].words +
                                                p->part[3].words);
    const int64_t ns = p->s + p->W;
    for (int64_t h = 0; h < p->Hkv; h++) {
        int64_t top = 0;
        for (int64_t i = 0; i < ns; i++) {
            int32_t c;
            memcpy(&c, pos + 4 * (h * ns + i), sizeof c); /* the blob may be unaligned */
            const int64_t a = c < 0 ? -(int64_t)c : c;
            top = a > top ? a : top;
        }
        if (top != position)
            return lmi_error(LM_ERR_INVALID_ARG, "the blob's window positions (kv head %lld: up to %lld) "
                             "disagree with its position %lld", (long long)h, (long long)top,
                             (long long)position);
    }
    return LM_OK;
}

lm_status lm_pool_slot_import(lm_pool *pool, int64_t slot, const void *buf, size_t bytes, void *stream)
{
    if (!pool)
        return lmi_error(LM_ERR_INVALID_ARG, "pool is NULL");
    lm_status st = check_slot(pool, slot, "slot");
    int64_t position;
    const void *data;
    if (st || (st = lmi_slot_blob_read(pool, buf, bytes, &position, &data)) ||
        (pool->hybrid && (st = check_window_pos(pool, data, position))))
        return st;
    if ((st = pool->ops->slot_set(pool, slot, data, position, stream)))
        return st;
    pool->pos[slot] = position;
    return LM_OK;
}
