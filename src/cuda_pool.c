/*
 * cuda_pool.c - the engine pool on the GPU. Positions live in device memory
 * (with a per-slot arrival counter for the decode kernel), so that a decode
 * reads its slot indices on the device and is graph-capturable.
 *   decode   one launch of the decode kernel over the rows (decode.cu);
 *   prefill  its sequences of length 1 that continue a slot: decode launches
 *            from a table passed by value (up to LMK_DECODE_TABLE rows each);
 *            every other sequence: the core prefill on its tokens and slot
 *            (cuda_attend.c), one after the other on the stream, with one
 *            workspace (the largest any of them needs); then the positions
 *            (pool_pos.cu). Nothing is copied from the host.
 *            By default (LM_POOL_PREFILL=packed; `each` when a pool is
 *            created selects the per-sequence path for all), the sequences
 *            the v2 kernel takes uncompensated, up to a length cut, run
 *            instead as one CAUSAL launch over a table of (sequence, query
 *            head), longest first (lmk_attend_pack), their final states
 *            through scratch when kv heads are shared (GQA): 0.575x one 128K
 *            prefill for 64 mixed sequences of 128K tokens in all on the
 *            H100, `each` 1.76x.
 * Slot operations are stream-ordered copies and memsets, part by part (S, z,
 * and a hybrid pool's window keys, values and positions).
 * A hybrid pool (section "hybrid pools" below): a decode is one launch of the
 * hybrid decode kernel over the rows (slot indices on the device, slot
 * strides for the five parts, admission as the linear decode's); a prefill
 * empties its fresh slots, runs its longer sequences through the hybrid core
 * prefill on their slot's views (cuda_hybrid.c), its sequences of length 1
 * with a slot as hybrid decode launches from a table passed by value (up to
 * LMK_HYBRID_DECODE_TABLE rows each), then the positions.
 */
#include "cuda_impl.h"
#include "pool_seq.h"

#include <stdlib.h>
#include <string.h>

typedef struct pool_ctx {
    int device, sms;
    int packed;       /* LM_POOL_PREFILL was not "each" when the pool was created */
    int64_t *pos;     /* [N] tokens per slot */
    int32_t *arrive;  /* [N] decode: CTAs of the slot's row counted in, 0 between calls */
} pool_ctx;

/* LM_POOL_PREFILL: "packed" (the default) or "each"; read once per pool, at
 * its creation, so a process (the GPU suite) can hold pools of both. */
static int env_packed(void)
{
    const char *e = getenv("LM_POOL_PREFILL");
    return !(e && strcmp(e, "each") == 0);
}

static pool_ctx *ctx_of(const lm_pool *p)
{
    return (pool_ctx *)p->ctx;
}

static size_t S_bytes(const lm_pool *p)
{
    return (size_t)(p->Hkv * p->Dk * p->Dv) * sizeof(float);
}

static size_t z_bytes(const lm_pool *p)
{
    return (size_t)(p->Hkv * p->Dk) * sizeof(float);
}

/* INVALID_ARG unless ptr is memory of `device` the GPU can address. */
static lm_status check_memory(const void *ptr, int device, const char *what)
{
    struct cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, ptr);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return lmi_cuda_fail(e, "cudaPointerGetAttributes of the pool's memory", __FILE__, __LINE__);
    }
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        return lmi_error(LM_ERR_INVALID_ARG, "cuda pool: %s is not device memory", what);
    if (a.type == cudaMemoryTypeDevice && a.device != device)
        return lmi_error(LM_ERR_INVALID_ARG, "cuda pool: %s is memory of device %d, the pool's is %d", what,
                         a.device, device);
    return LM_OK;
}

static const char *const part_names[LMI_POOL_PARTS] = { "state", "normalizer", "window_keys", "window_values",
                                                         "window_pos" };

static lm_status setup(lm_pool *p, pool_ctx *c)
{
    lm_status st;
    for (int j = 0; j < p->nparts; j++)
        if ((st = check_memory(p->part[j].base, c->device, part_names[j])))
            return st;
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, c->device));
    LMI_CUDA_TRY(cudaMalloc((void **)&c->pos, (size_t)p->N * sizeof(int64_t)));
    LMI_CUDA_TRY(cudaMalloc((void **)&c->arrive, (size_t)p->N * sizeof(int32_t)));
    LMI_CUDA_TRY(cudaMemset(c->pos, 0, (size_t)p->N * sizeof(int64_t)));
    LMI_CUDA_TRY(cudaMemset(c->arrive, 0, (size_t)p->N * sizeof(int32_t)));
    /* Every slot empty: its bytes only, not what lies between slots. */
    for (int j = 0; j < p->nparts; j++)
        LMI_CUDA_TRY(cudaMemset2D(p->part[j].base, (size_t)p->part[j].stride * 4, 0, (size_t)p->part[j].words * 4,
                                  (size_t)p->N));
    LMI_CUDA_TRY(cudaDeviceSynchronize());
    return LM_OK;
}

static void release(pool_ctx *c)
{
    cudaFree(c->pos);
    cudaFree(c->arrive);
    free(c);
}

static lm_status pool_init(lm_pool *p)
{
    pool_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda pool: cannot allocate its context");
    c->device = p->cfg.cuda_device;
    c->packed = env_packed();
    int prev;
    lm_status st = LM_OK;
    if (c->device < 0 && cudaGetDevice(&c->device) != cudaSuccess)
        st = lmi_error(LM_ERR_NO_DEVICE, "cuda: no current device");
    if (st || (st = lmi_cuda_enter(c->device, &prev))) {
        free(c);
        return st;
    }
    st = setup(p, c);
    lmi_cuda_leave(c->device, prev);
    if (st) {
        release(c);
        return st;
    }
    p->ctx = c;
    p->pos_dev = c->pos;
    return LM_OK;
}

static void pool_fini(lm_pool *p)
{
    pool_ctx *c = ctx_of(p);
    const int device = c->device;
    int prev;
    const int entered = lmi_cuda_enter(device, &prev) == LM_OK;
    release(c);
    if (entered)
        lmi_cuda_leave(device, prev);
}

/* ---- decode ---- */

/* The kernel's parameters for the pool's slots, views of rows (s[0]) and
 * heads (s[2]); B, Hq and the rows' slots are the caller's to set. */
static void decode_params(const lm_pool *p, const lmi_view *q, const lmi_view *k, const lmi_view *v,
                          const lmi_view *out, lmk_decode *d)
{
    memset(d, 0, offsetof(lmk_decode, decay));
    d->q = q->data, d->k = k->data, d->v = v->data, d->out = out->data;
    d->sq[0] = q->s[0], d->sq[1] = q->s[2];
    d->sk[0] = k->s[0], d->sk[1] = k->s[2];
    d->sv[0] = v->s[0], d->sv[1] = v->s[2];
    d->so[0] = out->s[0], d->so[1] = out->s[2];
    d->S = p->cfg.state, d->z = p->cfg.normalizer;
    d->S_slot = p->S_stride, d->z_slot = p->z_stride;
    d->nslots = (int)p->N;
    d->pos = ctx_of(p)->pos, d->arrive = ctx_of(p)->arrive;
    d->dtype = q->dtype;
    d->Hkv = (int)p->Hkv, d->Dk = (int)p->Dk, d->Dv = (int)p->Dv;
    d->feature_map = p->cfg.feature_map, d->normalize = p->cfg.normalize;
    d->eps = p->cfg.eps, d->scale = p->scale;
    d->has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(d->decay, p->decay, (size_t)p->Hkv * sizeof(float));
}

static lm_status hybrid_decode(const lm_pool *p, const lmi_rows *r, cudaStream_t s);

static lm_status pool_decode(lm_pool *p, const lmi_rows *r, void *stream)
{
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(p)->device, &prev);
    if (st)
        return st;
    if (p->hybrid) {
        st = hybrid_decode(p, r, (cudaStream_t)stream);
        lmi_cuda_leave(ctx_of(p)->device, prev);
        return st;
    }
    lmk_decode d;
    decode_params(p, &r->q, &r->k, &r->v, &r->out, &d);
    d.Hq = (int)r->Hq, d.B = (int)r->B;
    d.slots = r->slot, d.limit = r->limit, d.status = r->status;
    st = lmk_decode_launch(&d, stream);
    lmi_cuda_leave(ctx_of(p)->device, prev);
    return st;
}

static lm_status pool_decode_ws(const lm_pool *p, const lmi_rows *r, size_t *bytes)
{
    (void)p, (void)r;
    *bytes = 0;
    return LM_OK;
}

/* ---- varlen prefill ---- */

static int runs(const lmi_varlen *v, int64_t i)
{
    return !(v->skip && v->skip[i]);
}

/* Sequences of length 1 continuing (or starting) a slot run as decode rows. */
static int is_step(const lmi_varlen *v, int64_t i)
{
    return v->cu[i + 1] - v->cu[i] == 1 && v->slot[i] >= 0;
}

/* Whether sequence i runs as a prefill of its own. */
static int is_prefill(const lmi_varlen *v, int64_t i)
{
    return runs(v, i) && !is_step(v, i) && v->cu[i + 1] > v->cu[i];
}

/* The packed launch of a call (pool_ctx.packed): which sequences it takes
 * and the scratch it needs. */
typedef struct pack_plan {
    int on;              /* some sequence runs packed */
    int64_t cut;         /* longest sequence it takes (tokens) */
    int64_t count;       /* sequences it takes */
    int64_t per_launch;  /* entries per launch */
    int64_t ws_entries;  /* entries whose final states the scratch holds (GQA), or 0 */
    size_t ws;           /* its bytes */
} pack_plan;

/* The packed launch's scratch at most (GQA): at Dk = Dv = 128 an entry's
 * final state is Hkv x 66 KB, so a launch still has about 1,000 x Hq / Hkv
 * CTAs, several waves of the GPU. */
#define PACK_SCRATCH_BYTES ((size_t)64 << 20)

/* A sequence the packed launch may take: a prefill of its own, uncompensated
 * (the compensated kernel sums in fp32 segments the host plans). */
static int pack_candidate(const lm_pool *p, const lmi_varlen *v, int64_t i)
{
    if (!is_prefill(v, i))
        return 0;
    lmi_core_params cp;
    lmi_pool_seq_params(p, v, i, &cp);
    return !cp.compensated;
}

static int64_t seq_len(const lmi_varlen *v, int64_t i)
{
    return v->cu[i + 1] - v->cu[i];
}

/* The packed launch's parameters for sequence i's shape: the packed views
 * from token 0, the pool's options, uncompensated. */
static void pack_params(const lm_pool *p, const lmi_varlen *v, int64_t i, lmk_attend *a)
{
    lmi_core_params cp;
    lmi_pool_seq_params(p, v, i, &cp);
    cp.compensated = 0;
    lmi_cuda_attend_params(&cp, a);
    a->q = v->q.data, a->k = v->k.data, a->v = v->v.data, a->out = v->out.data;
}

/* Each sequence is one segment on one CTA per query head, so a long one
 * would be the launch's tail: a sequence longer than its share of the SMs
 * (the candidates' tokens x Hq / SMs) and than 16 chunks (below that the
 * core would not cut it into segments either) runs on its own. */
static pack_plan pack_plan_of(const lm_pool *p, const lmi_varlen *v)
{
    pack_plan pp = { 0 };
    if (!ctx_of(p)->packed)
        return pp;
    int64_t first = -1, tokens = 0;
    for (int64_t i = 0; i < v->n; i++)
        if (pack_candidate(p, v, i)) {
            first = first < 0 ? i : first;
            tokens += seq_len(v, i);
        }
    if (first < 0)
        return pp;
    lmk_attend a;
    pack_params(p, v, first, &a);
    if (!a.v2 || !lmk_attend_pack_takes(&a))
        return pp;
    const int64_t share = lmi_cdiv(tokens * v->Hq, ctx_of(p)->sms);
    pp.cut = share > 16 * LMK_CHUNK ? share : 16 * LMK_CHUNK;
    for (int64_t i = 0; i < v->n; i++)
        pp.count += pack_candidate(p, v, i) && seq_len(v, i) <= pp.cut;
    pp.on = pp.count > 0;
    pp.per_launch = LMK_PACK_TABLE;
    if (v->Hq != p->Hkv) { /* GQA: final states through scratch */
        const size_t entry = (size_t)(p->Hkv * (p->Dk * p->Dv + p->Dk)) * sizeof(float);
        const int64_t fit = (int64_t)(PACK_SCRATCH_BYTES / entry);
        pp.per_launch = fit < 1 ? 1 : fit < LMK_PACK_TABLE ? fit : LMK_PACK_TABLE;
        pp.ws_entries = pp.count < pp.per_launch ? pp.count : pp.per_launch;
        pp.ws = (size_t)pp.ws_entries * entry;
    }
    return pp;
}

static int packs(const lm_pool *p, const lmi_varlen *v, const pack_plan *pp, int64_t i)
{
    return pp->on && seq_len(v, i) <= pp->cut && pack_candidate(p, v, i);
}

/* Checks the views once, and the workspace the prefills need: the largest
 * of the sequences run on their own and the packed launch's scratch (they
 * run one after the other on the stream). */
static lm_status plan(const lm_pool *p, const lmi_varlen *v, pack_plan *pp, size_t *bytes)
{
    *bytes = 0;
    for (int64_t i = 0; i < v->n; i++) {
        if (!is_prefill(v, i))
            continue;
        lmi_core_params cp; /* the views are the call's: the first prefill checks them */
        lmi_pool_seq_params(p, v, i, &cp);
        const lm_status st = lmi_cuda_check_core(&cp, ctx_of(p)->device);
        if (st)
            return st;
        break;
    }
    *pp = pack_plan_of(p, v);
    for (int64_t i = 0; i < v->n; i++) {
        if (!is_prefill(v, i) || packs(p, v, pp, i))
            continue;
        lmi_core_params cp;
        lmi_pool_seq_params(p, v, i, &cp);
        const size_t b = lmi_cuda_attend_ws(&cp, ctx_of(p)->sms);
        *bytes = b > *bytes ? b : *bytes;
    }
    *bytes = pp->ws > *bytes ? pp->ws : *bytes;
    return LM_OK;
}

static lm_status pool_prefill_ws(const lm_pool *p, const lmi_varlen *v, size_t *bytes)
{
    if (p->hybrid) { /* the hybrid core prefill's scratch is stream-ordered, its own */
        *bytes = 0;
        return LM_OK;
    }
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(p)->device, &prev);
    if (st)
        return st;
    pack_plan pp;
    st = plan(p, v, &pp, bytes);
    lmi_cuda_leave(ctx_of(p)->device, prev);
    return st;
}

/* The views of a varlen call as rows of a decode: token x is row x. */
static void token_rows(const lmi_varlen *v, lmi_view rows[4])
{
    rows[0] = v->q, rows[1] = v->k, rows[2] = v->v, rows[3] = v->out;
    for (int i = 0; i < 4; i++)
        rows[i].s[0] = rows[i].s[1];
}

/* A decode table's launch (or its check) over its first n rows. */
typedef lm_status (*table_fn)(void *table, int n, cudaStream_t s);

/* The decode rows of the call (its sequences of length 1 with a slot, not
 * refused), `per` at a time into row[], each batch given to fn. */
static lm_status step_batches(const lmi_varlen *v, lmk_decode_row *row, int per, table_fn fn, void *table,
                              cudaStream_t s)
{
    lm_status st = LM_OK;
    int n = 0;
    for (int64_t i = 0; i <= v->n && st == LM_OK; i++) {
        if (i < v->n && runs(v, i) && is_step(v, i))
            row[n++] = (lmk_decode_row){ v->cu[i], v->slot[i], lmi_pool_seq_fresh(v, i) };
        if (n && (n == per || i == v->n)) {
            st = fn(table, n, s);
            n = 0;
        }
    }
    return st;
}

static lm_status linear_table(void *table, int n, cudaStream_t s)
{
    lmk_decode_table *t = table;
    t->d.B = n;
    return lmk_decode_table_launch(t, s);
}

/* The decode rows of the call, LMK_DECODE_TABLE at a time. */
static lm_status steps(lm_pool *p, const lmi_varlen *v, cudaStream_t s)
{
    lmk_decode_table *t = malloc(sizeof *t); /* too large for the stack; host memory only */
    if (!t)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda pool: no host memory for a launch's parameters");
    lmi_view rows[4];
    token_rows(v, rows);
    decode_params(p, &rows[0], &rows[1], &rows[2], &rows[3], &t->d);
    t->d.Hq = (int)v->Hq;
    const lm_status st = step_batches(v, t->row, LMK_DECODE_TABLE, linear_table, t, s);
    free(t);
    return st;
}

/* The positions after the prefills (the decode rows advance their own, in
 * either pool's decode kernel). */
static lm_status positions(lm_pool *p, const lmi_varlen *v, cudaStream_t s)
{
    lmk_pos_update *u = malloc(sizeof *u);
    if (!u)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda pool: no host memory for a launch's parameters");
    u->pos = ctx_of(p)->pos;
    u->n = 0;
    lm_status st = LM_OK;
    for (int64_t i = 0; i <= v->n && st == LM_OK; i++) {
        if (i < v->n && runs(v, i) && v->slot[i] >= 0 && !is_step(v, i)) {
            u->e[u->n].slot = v->slot[i];
            u->e[u->n].len = v->cu[i + 1] - v->cu[i];
            u->e[u->n++].fresh = lmi_pool_seq_fresh(v, i);
        }
        if (u->n && (u->n == LMK_POS_TABLE || i == v->n)) {
            st = lmk_pos_update_launch(u, s);
            u->n = 0;
        }
    }
    free(u);
    return st;
}

/* Longest first; ties in token order (t0 differs between sequences with tokens). */
static int longer_first(const void *a, const void *b)
{
    const lmk_pack_entry *x = a, *y = b;
    return x->len != y->len ? (x->len < y->len) - (x->len > y->len) : (x->t0 > y->t0) - (x->t0 < y->t0);
}

/* The packed sequences, longest first, pp->per_launch at a time: one launch
 * of the v2 kernel over their table, then (GQA) their final states from
 * scratch into the slots. */
static lm_status packed(lm_pool *p, const lmi_varlen *v, const pack_plan *pp, void *ws, cudaStream_t s)
{
    lmk_pack_entry *all = malloc((size_t)pp->count * sizeof *all);
    lmk_attend_pack *t = malloc(sizeof *t); /* 12.7 KB: host memory, passed by value */
    lm_status st = LM_OK;
    if (!all || !t) {
        st = lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda pool: no host memory for a launch's parameters");
        goto done;
    }
    int64_t n = 0, first = -1;
    for (int64_t i = 0; i < v->n; i++)
        if (packs(p, v, pp, i)) {
            first = first < 0 ? i : first;
            all[n++] = (lmk_pack_entry){ v->cu[i], (int32_t)seq_len(v, i), v->slot[i], lmi_pool_seq_fresh(v, i) };
        }
    qsort(all, (size_t)n, sizeof *all, longer_first);
    memset(t, 0, offsetof(lmk_attend_pack, e));
    pack_params(p, v, first, &t->a);
    t->S = p->cfg.state, t->z = p->cfg.normalizer;
    t->S_slot = p->S_stride, t->z_slot = p->z_stride;
    if (pp->ws) { /* [entries][Hkv][Dk][Dv], then [entries][Hkv][Dk] */
        t->fin_S = ws;
        t->fin_z = t->fin_S + pp->ws_entries * p->Hkv * p->Dk * p->Dv;
    }
    for (int64_t x = 0; x < n && st == LM_OK; x += pp->per_launch) {
        t->n = (int)(n - x < pp->per_launch ? n - x : pp->per_launch);
        memcpy(t->e, all + x, (size_t)t->n * sizeof *all);
        if ((st = lmk_attend_pack_launch(t, s)) == LM_OK)
            st = lmk_attend_pack_copy_launch(t, s);
    }
done:
    free(all), free(t);
    return st;
}

static lm_status prefill_on(lm_pool *p, const lmi_varlen *v, cudaStream_t s)
{
    size_t bytes;
    pack_plan pp;
    lm_status st = plan(p, v, &pp, &bytes);
    if (st)
        return st;
    void *ws = v->ws;
    if (ws && v->ws_bytes < bytes)
        return lmi_ws_short(v->ws_bytes, bytes, "lm_pool_prefill_workspace");
    if (!ws && bytes)
        LMI_CUDA_TRY(cudaMallocAsync(&ws, bytes, s));
    for (int64_t i = 0; i < v->n && st == LM_OK; i++) {
        if (runs(v, i) && v->slot[i] >= 0 && v->cu[i + 1] == v->cu[i] && lmi_pool_seq_fresh(v, i)) {
            const int64_t slot = v->slot[i]; /* fresh, no tokens: the slot emptied */
            if (cudaMemsetAsync(p->cfg.state + slot * p->S_stride, 0, S_bytes(p), s) != cudaSuccess ||
                cudaMemsetAsync(p->cfg.normalizer + slot * p->z_stride, 0, z_bytes(p), s) != cudaSuccess)
                st = lmi_cuda_fail(cudaGetLastError(), "cudaMemsetAsync of a fresh slot", __FILE__, __LINE__);
        } else if (is_prefill(v, i) && !packs(p, v, &pp, i)) {
            lmi_core_params cp;
            lmi_pool_seq_params(p, v, i, &cp);
            st = lmi_cuda_attend(&cp, ctx_of(p)->sms, ws, s);
        }
    }
    if (st == LM_OK && pp.on)
        st = packed(p, v, &pp, ws, s);
    if (st == LM_OK)
        st = steps(p, v, s);
    if (st == LM_OK)
        st = positions(p, v, s);
    if (ws && !v->ws) {
        cudaError_t e = cudaFreeAsync(ws, s);
        if (st == LM_OK && e != cudaSuccess)
            st = lmi_cuda_fail(e, "cudaFreeAsync(prefill workspace)", __FILE__, __LINE__);
    }
    return st;
}

static lm_status hybrid_prefill_on(lm_pool *p, const lmi_varlen *v, cudaStream_t s);

static lm_status pool_prefill(lm_pool *p, const lmi_varlen *v, void *stream)
{
    int prev;
    lm_status st = lmi_cuda_enter(ctx_of(p)->device, &prev);
    if (st)
        return st;
    st = p->hybrid ? hybrid_prefill_on(p, v, (cudaStream_t)stream) : prefill_on(p, v, (cudaStream_t)stream);
    lmi_cuda_leave(ctx_of(p)->device, prev);
    return st;
}

/* ---- slots ---- */

static lm_status zero_parts(lm_pool *p, int64_t slot, cudaStream_t s)
{
    for (int j = 0; j < p->nparts; j++)
        LMI_CUDA_TRY(cudaMemsetAsync(lmi_pool_part_at(p, j, slot), 0, (size_t)p->part[j].words * 4, s));
    return LM_OK;
}

static lm_status zero_on(lm_pool *p, int64_t slot, cudaStream_t s)
{
    lm_status st = zero_parts(p, slot, s);
    if (st)
        return st;
    LMI_CUDA_TRY(cudaMemsetAsync(ctx_of(p)->pos + slot, 0, sizeof(int64_t), s));
    return LM_OK;
}

static lm_status copy_on(lm_pool *p, int64_t dst, int64_t src, cudaStream_t s)
{
    const enum cudaMemcpyKind dd = cudaMemcpyDeviceToDevice;
    for (int j = 0; j < p->nparts; j++)
        LMI_CUDA_TRY(cudaMemcpyAsync(lmi_pool_part_at(p, j, dst), lmi_pool_part_at(p, j, src),
                                     (size_t)p->part[j].words * 4, dd, s));
    LMI_CUDA_TRY(cudaMemcpyAsync(ctx_of(p)->pos + dst, ctx_of(p)->pos + src, sizeof(int64_t), dd, s));
    return LM_OK;
}

static lm_status get_on(const lm_pool *p, int64_t slot, void *data, int64_t *pos, cudaStream_t s)
{
    const enum cudaMemcpyKind dh = cudaMemcpyDeviceToHost;
    for (int j = 0; data && j < p->nparts; j++) {
        LMI_CUDA_TRY(cudaMemcpyAsync(data, lmi_pool_part_at(p, j, slot), (size_t)p->part[j].words * 4, dh, s));
        data = (char *)data + p->part[j].words * 4;
    }
    LMI_CUDA_TRY(cudaMemcpyAsync(pos, ctx_of(p)->pos + slot, sizeof(int64_t), dh, s));
    LMI_CUDA_TRY(cudaStreamSynchronize(s));
    return LM_OK;
}

static lm_status set_on(lm_pool *p, int64_t slot, const void *data, int64_t pos, cudaStream_t s)
{
    const enum cudaMemcpyKind hd = cudaMemcpyHostToDevice;
    for (int j = 0; j < p->nparts; j++) {
        LMI_CUDA_TRY(cudaMemcpyAsync(lmi_pool_part_at(p, j, slot), data, (size_t)p->part[j].words * 4, hd, s));
        data = (const char *)data + p->part[j].words * 4;
    }
    LMI_CUDA_TRY(cudaMemcpyAsync(ctx_of(p)->pos + slot, &pos, sizeof(int64_t), hd, s));
    LMI_CUDA_TRY(cudaStreamSynchronize(s)); /* &pos and the caller's blob are read by then */
    return LM_OK;
}

static lm_status all_positions_on(lm_pool *p, cudaStream_t s)
{
    LMI_CUDA_TRY(cudaMemcpyAsync(p->pos, ctx_of(p)->pos, (size_t)p->N * sizeof(int64_t), cudaMemcpyDeviceToHost, s));
    LMI_CUDA_TRY(cudaStreamSynchronize(s));
    return LM_OK;
}

/* Each slot operation on the pool's device. */
#define ON_DEVICE(p, call)                                             \
    do {                                                               \
        int prev_;                                                     \
        lm_status st_ = lmi_cuda_enter(ctx_of(p)->device, &prev_);     \
        if (st_)                                                       \
            return st_;                                                \
        st_ = (call);                                                  \
        lmi_cuda_leave(ctx_of(p)->device, prev_);                      \
        return st_;                                                    \
    } while (0)

static lm_status slot_zero(lm_pool *p, int64_t slot, void *stream)
{
    ON_DEVICE(p, zero_on(p, slot, (cudaStream_t)stream));
}

static lm_status slot_copy(lm_pool *p, int64_t dst, int64_t src, void *stream)
{
    ON_DEVICE(p, copy_on(p, dst, src, (cudaStream_t)stream));
}

static lm_status slot_get(const lm_pool *p, int64_t slot, void *data, int64_t *pos, void *stream)
{
    ON_DEVICE(p, get_on(p, slot, data, pos, (cudaStream_t)stream));
}

static lm_status slot_set(lm_pool *p, int64_t slot, const void *data, int64_t pos, void *stream)
{
    ON_DEVICE(p, set_on(p, slot, data, pos, (cudaStream_t)stream));
}

static lm_status all_positions(lm_pool *p, void *stream)
{
    ON_DEVICE(p, all_positions_on(p, (cudaStream_t)stream));
}

/* ---- hybrid pools ---- */

/* The hybrid decode kernel's parameters for the pool's slots (their five
 * parts at their strides, the positions and arrival counters), views of
 * rows (s[0]) and heads (s[2]), Hq query heads; B, the rows' slots, limit
 * and status are the caller's to set. */
static lm_status hybrid_params(const lm_pool *p, const lmi_view rows[4], int64_t Hq, lmk_hybrid_decode *d)
{
    lmi_core_params c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.L = c.Lk = 1, c.Hq = Hq, c.Hkv = p->Hkv, c.Dk = p->Dk, c.Dv = p->Dv;
    c.q = rows[0], c.k = rows[1], c.v = rows[2], c.out = rows[3];
    c.state = p->cfg.state, c.normalizer = p->cfg.normalizer;
    c.causal = 1, c.feature_map = p->cfg.feature_map, c.normalize = 1, c.eps = p->cfg.eps, c.scale = p->scale;
    lmi_pool_hybrid_params(p, 0, 0, &c);
    c.win_k = p->cfg.window_keys, c.win_v = p->cfg.window_values, c.win_pos = p->cfg.window_pos;
    lm_status st = lmi_cuda_hybrid_decode_params(&c, d);
    if (st)
        return st;
    d->nslots = (int)p->N;
    d->S_slot = p->part[0].stride, d->z_slot = p->part[1].stride, d->wk_slot = p->part[2].stride;
    d->wv_slot = p->part[3].stride, d->wp_slot = p->part[4].stride;
    d->pos = ctx_of(p)->pos, d->arrive = ctx_of(p)->arrive;
    return LM_OK;
}

/* One launch of the hybrid decode kernel over the rows: the kernel reads
 * each row's slot on the device and finds the slot's parts at their strides. */
static lm_status hybrid_decode(const lm_pool *p, const lmi_rows *r, cudaStream_t s)
{
    const lmi_view rows[4] = { r->q, r->k, r->v, r->out };
    lmk_hybrid_decode d;
    lm_status st = hybrid_params(p, rows, r->Hq, &d);
    if (st)
        return st;
    d.B = (int)r->B;
    d.slots = r->slot, d.limit = r->limit, d.status = r->status;
    return lmk_hybrid_decode_launch(&d, s);
}

static lm_status hybrid_table_check(void *table, int n, cudaStream_t s)
{
    (void)s;
    lmk_hybrid_decode_table *t = table;
    t->d.B = n;
    return lmk_hybrid_decode_check(&t->d);
}

static lm_status hybrid_table(void *table, int n, cudaStream_t s)
{
    lmk_hybrid_decode_table *t = table;
    t->d.B = n;
    return lmk_hybrid_decode_table_launch(t, s);
}

/* Every fresh slot emptied (stream-ordered), the sequences longer than one
 * token (or without a slot) through the hybrid core prefill on their slot's
 * views, then the decode rows (length 1, a slot) as launches of the hybrid
 * decode kernel from a table passed by value, LMK_HYBRID_DECODE_TABLE at a
 * time (each advances its slots' positions), then the other positions.
 * Every check (each prefill's, each table launch's) runs before anything is
 * written. The license was judged per sequence on the host (refused ones
 * are skipped), so the tables carry no limit. */
static lm_status hybrid_prefill_on(lm_pool *p, const lmi_varlen *v, cudaStream_t s)
{
    lm_status st = LM_OK;
    int64_t nsteps = 0;
    for (int64_t i = 0; i < v->n && st == LM_OK; i++)
        if (runs(v, i) && is_step(v, i)) {
            nsteps++;
        } else if (runs(v, i) && v->cu[i + 1] > v->cu[i]) {
            lmi_core_params cp;
            lmi_pool_seq_params(p, v, i, &cp);
            st = lmi_cuda_hybrid_check(&cp);
        }
    lmk_hybrid_decode_table *t = NULL;
    if (st == LM_OK && nsteps) {
        if (!(t = malloc(sizeof *t))) /* 16.7 KB: host memory, passed by value */
            return lmi_error(LM_ERR_OUT_OF_MEMORY, "cuda pool: no host memory for a launch's parameters");
        lmi_view rows[4];
        token_rows(v, rows);
        st = hybrid_params(p, rows, v->Hq, &t->d);
        if (st == LM_OK)
            st = step_batches(v, t->row, LMK_HYBRID_DECODE_TABLE, hybrid_table_check, t, s);
    }
    for (int64_t i = 0; i < v->n && st == LM_OK; i++) {
        if (!runs(v, i))
            continue;
        if (v->slot[i] >= 0 && lmi_pool_seq_fresh(v, i))
            st = zero_parts(p, v->slot[i], s);
        if (st == LM_OK && v->cu[i + 1] > v->cu[i] && !is_step(v, i)) {
            lmi_core_params cp;
            lmi_pool_seq_params(p, v, i, &cp);
            st = lmi_cuda_hybrid_prefill(&cp, s);
        }
    }
    if (st == LM_OK && t)
        st = step_batches(v, t->row, LMK_HYBRID_DECODE_TABLE, hybrid_table, t, s);
    free(t);
    return st ? st : positions(p, v, s);
}

const lmi_pool_ops lmi_cuda_pool = {
    .init = pool_init,
    .fini = pool_fini,
    .prefill = pool_prefill,
    .prefill_ws = pool_prefill_ws,
    .decode = pool_decode,
    .decode_ws = pool_decode_ws,
    .slot_zero = slot_zero,
    .slot_copy = slot_copy,
    .slot_get = slot_get,
    .slot_set = slot_set,
    .positions = all_positions,
};
