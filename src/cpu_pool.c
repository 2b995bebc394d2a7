/*
 * cpu_pool.c - the engine pool on the CPU: the indexed decode (one task per
 * row x kv head, fused: each state row is read once, updated, written back
 * and read out for the group's query heads, in place in the caller's slot),
 * the varlen prefill (its length-1 sequences through that decode, the
 * others as chunked prefills in one parallel region, lmi_cpu_attend_many),
 * and the slot operations. Positions are the pool's host array (pool.c).
 * A hybrid pool runs the hybrid core (cpu_hybrid.c) on slot views: a prefill
 * sequence by sequence (B = 1, each parallel over its query heads), a decode
 * row by row in parallel (each a one-token hybrid step on its slot). The
 * hybrid core allocates its own scratch, so a hybrid pool's workspace
 * queries answer 0.
 */
#include "cpu_chunk.h"
#include "dtype.h"
#include "pool_seq.h"

#include <stdlib.h>
#include <string.h>

static float *slot_S(const lm_pool *p, int64_t slot)
{
    return p->cfg.state + slot * p->S_stride;
}

static float *slot_z(const lm_pool *p, int64_t slot)
{
    return p->cfg.normalizer + slot * p->z_stride;
}

static lm_status slot_zero(lm_pool *p, int64_t slot, void *stream);

/* ---- decode ---- */

/* Floats of one thread's decode scratch: phi(k), v, and per query head of
 * a group phi(q), its output row and its denominator. */
static int64_t decode_floats(const lm_pool *p, int64_t Hq)
{
    const int64_t G = Hq / p->Hkv;
    return p->Dk + p->Dv + G * (p->Dk + p->Dv + 1);
}

/* Row x of a [B, 1, H, D] view, head h, as fp32 into dst (phi applied when fm >= 0). */
static void load(float *dst, const lmi_view *v, int64_t x, int64_t h, int64_t D, int fm)
{
    lmi_load_row(dst, lmi_elem(v->data, v->dtype, x * v->s[0] + h * v->s[2]), v->dtype, D, v->s[3]);
    if (fm >= 0)
        lmi_phi(dst, NULL, D, fm);
}

/* Row b, kv head hk: S = g S + phi(k) v^T, z = g z + phi(k) (from 0 when
 * fresh) in one pass over S, reading out phi(q) S and phi(q).z of the G
 * query heads on the way. */
LMI_HOT static void decode_task(const lm_pool *p, const lmi_rows *r, int64_t b, int64_t hk, float *w)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, G = r->Hq / p->Hkv, x = r->tok ? r->tok[b] : b;
    const int fm = p->cfg.feature_map, fresh = r->fresh && r->fresh[b];
    float *k = w, *v = k + Dk, *q = v + Dv, *num = q + G * Dk, *den = num + G * Dv;
    load(k, &r->k, x, hk, Dk, fm);
    load(v, &r->v, x, hk, Dv, -1);
    for (int64_t gi = 0; gi < G; gi++)
        load(q + gi * Dk, &r->q, x, hk * G + gi, Dk, fm);
    memset(num, 0, (size_t)(G * (Dv + 1)) * sizeof(float));
    const float g = fresh ? 0.0f : p->decay ? p->decay[hk] : 1.0f;
    float *S = slot_S(p, r->slot[b]) + hk * Dk * Dv, *z = slot_z(p, r->slot[b]) + hk * Dk;
    for (int64_t d = 0; d < Dk; d++) {
        float *restrict row = S + d * Dv;
        const float kd = k[d];
        if (fresh) /* the slot's old contents may be anything, NaN included */
#pragma omp simd
            for (int64_t e = 0; e < Dv; e++)
                row[e] = kd * v[e];
        else
#pragma omp simd
            for (int64_t e = 0; e < Dv; e++)
                row[e] = g * row[e] + kd * v[e];
        z[d] = (fresh ? 0.0f : g * z[d]) + kd;
        for (int64_t gi = 0; gi < G; gi++) {
            const float qd = q[gi * Dk + d];
            lmi_axpy(num + gi * Dv, qd, row, Dv);
            den[gi] += qd * z[d];
        }
    }
    for (int64_t gi = 0; gi < G; gi++) {
        float *o = num + gi * Dv;
        lmi_scale(o, p->cfg.normalize ? 1.0f / (den[gi] + p->cfg.eps) : p->scale, Dv);
        lmi_store_row(lmi_elem(r->out.data, r->out.dtype, x * r->out.s[0] + (hk * G + gi) * r->out.s[2]),
                      r->out.dtype, o, Dv, r->out.s[3]);
    }
}

static size_t decode_bytes(const lm_pool *p, int64_t Hq)
{
    return (size_t)(lmi_cpu_threads(p->cfg.num_threads) * decode_floats(p, Hq)) * sizeof(float);
}

static lm_status decode(lm_pool *p, const lmi_rows *r, void *ws, size_t ws_bytes)
{
    const size_t bytes = decode_bytes(p, r->Hq);
    if (ws && ws_bytes < bytes)
        return lmi_ws_short(ws_bytes, bytes, NULL);
    float *mem = ws ? ws : malloc(bytes);
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a decode's scratch (%zu bytes)", bytes);
    const int64_t ntask = r->B * p->Hkv, per = decode_floats(p, r->Hq);
    /* A thread team pays off from about a few hundred KB of state. */
    const int team = ntask > 1 && ntask * p->Dk * p->Dv > (1 << 16) ? (int)lmi_cpu_threads(p->cfg.num_threads) : 1;
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < ntask; t++) {
        const int64_t b = t / p->Hkv;
        if (r->slot[b] >= 0 && !(r->skip && r->skip[b]))
            decode_task(p, r, b, t % p->Hkv, mem + (int64_t)omp_get_thread_num() * per);
    }
    if (!ws)
        free(mem);
    return LM_OK;
}

/* Row b of a hybrid decode as a one-token hybrid step on its slot. */
static void hybrid_row(const lm_pool *p, const lmi_rows *r, int64_t b, lmi_core_params *c)
{
    const int64_t slot = r->slot[b], x = r->tok ? r->tok[b] : b;
    memset(c, 0, sizeof *c);
    c->B = 1, c->L = c->Lk = 1, c->Hq = r->Hq, c->Hkv = p->Hkv, c->Dk = p->Dk, c->Dv = p->Dv;
    const lmi_view *src[] = { &r->q, &r->k, &r->v, &r->out };
    lmi_view *dst[] = { &c->q, &c->k, &c->v, &c->out };
    for (int i = 0; i < 4; i++) {
        *dst[i] = *src[i];
        dst[i]->data = lmi_elem(src[i]->data, src[i]->dtype, x * src[i]->s[0]);
    }
    c->state = slot_S(p, slot), c->normalizer = slot_z(p, slot);
    c->causal = 1, c->feature_map = p->cfg.feature_map, c->normalize = 1;
    c->compensated = lmi_compensated(p->cfg.precision, p->pos[slot] + 1);
    c->eps = p->cfg.eps, c->scale = p->scale, c->num_threads = 1;
    lmi_pool_hybrid_params(p, slot, p->pos[slot], c);
}

static lm_status hybrid_decode(const lm_pool *p, const lmi_rows *r)
{
    const int team = r->B > 1 ? (int)lmi_cpu_threads(p->cfg.num_threads) : 1;
    int failed = 0;
#pragma omp parallel for num_threads(team) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t b = 0; b < r->B; b++) {
        if (r->slot[b] < 0 || (r->skip && r->skip[b]))
            continue;
        lmi_core_params c;
        hybrid_row(p, r, b, &c);
        failed |= lmi_cpu_hybrid(&c, 1) != LM_OK;
    }
    return failed ? lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a hybrid decode step's scratch")
                  : LM_OK;
}

static lm_status pool_decode(lm_pool *p, const lmi_rows *r, void *stream)
{
    (void)stream;
    return p->hybrid ? hybrid_decode(p, r) : decode(p, r, r->ws, r->ws_bytes);
}

static lm_status pool_decode_ws(const lm_pool *p, const lmi_rows *r, size_t *bytes)
{
    *bytes = p->hybrid ? 0 : decode_bytes(p, r->Hq);
    return LM_OK;
}

/* ---- varlen prefill ---- */

/* Whether sequence i is a decode row: one token continuing a slot. */
static int is_step(const lmi_varlen *v, int64_t i)
{
    return v->cu[i + 1] - v->cu[i] == 1 && v->slot[i] >= 0;
}

static int runs(const lmi_varlen *v, int64_t i)
{
    return !(v->skip && v->skip[i]);
}

/* The scratch of a prefill: its bookkeeping (the prefills' parameters, the
 * decode rows' tokens, slots and fresh flags), then the prefills' scratch
 * and the decode rows'. Counts the prefills into *np, the rows into *nr. */
static size_t book_bytes(int64_t n)
{
    size_t b = (size_t)n * (sizeof(lmi_core_params) + 2 * sizeof(int32_t) + 1);
    return (b + 63) / 64 * 64;
}

/* Fills the bookkeeping at mem; *rest = the bytes the work itself needs. */
static void book(const lm_pool *p, const lmi_varlen *v, void *mem, int64_t *np, lmi_rows *rows, size_t *rest)
{
    lmi_core_params *ps = mem;
    int32_t *tok = (int32_t *)(ps + v->n), *slot = tok + v->n;
    uint8_t *fresh = (uint8_t *)(slot + v->n);
    *np = 0;
    *rows = (lmi_rows){ .q = v->q, .k = v->k, .v = v->v, .out = v->out, .Hq = v->Hq, .tok = tok,
                        .slot = slot, .fresh = fresh };
    lmi_view *vs[] = { &rows->q, &rows->k, &rows->v, &rows->out };
    for (int i = 0; i < 4; i++) /* token x is row x */
        vs[i]->s[0] = vs[i]->s[1], vs[i]->s[1] = 0;
    for (int64_t i = 0; i < v->n; i++) {
        if (!runs(v, i) || (v->cu[i + 1] == v->cu[i] && !lmi_pool_seq_fresh(v, i)))
            continue;
        if (is_step(v, i)) {
            tok[rows->B] = v->cu[i];
            slot[rows->B] = v->slot[i];
            fresh[rows->B++] = (uint8_t)lmi_pool_seq_fresh(v, i);
        } else {
            lmi_pool_seq_params(p, v, i, &ps[(*np)++]);
        }
    }
    *rest = lmi_cpu_attend_ws(ps, *np) + (rows->B ? decode_bytes(p, v->Hq) : 0);
}

/* A hybrid pool's prefill: each sequence through the hybrid core on its
 * slot, in order (a fresh slot emptied first). */
static lm_status hybrid_prefill(lm_pool *p, const lmi_varlen *v)
{
    lm_status st = LM_OK;
    for (int64_t i = 0; st == LM_OK && i < v->n; i++) {
        if (!runs(v, i))
            continue;
        if (v->slot[i] >= 0 && lmi_pool_seq_fresh(v, i))
            slot_zero(p, v->slot[i], NULL);
        if (v->cu[i + 1] == v->cu[i])
            continue;
        lmi_core_params c;
        lmi_pool_seq_params(p, v, i, &c);
        st = lmi_cpu_hybrid(&c, 0);
    }
    return st;
}

static lm_status pool_prefill_ws(const lm_pool *p, const lmi_varlen *v, size_t *bytes)
{
    if (p->hybrid) {
        *bytes = 0;
        return LM_OK;
    }
    void *mem = malloc(book_bytes(v->n));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory to plan the prefill");
    int64_t np;
    lmi_rows rows;
    size_t rest;
    book(p, v, mem, &np, &rows, &rest);
    free(mem);
    *bytes = book_bytes(v->n) + rest;
    return LM_OK;
}

static lm_status pool_prefill(lm_pool *p, const lmi_varlen *v, void *stream)
{
    (void)stream;
    if (p->hybrid)
        return hybrid_prefill(p, v);
    const size_t books = book_bytes(v->n);
    if (v->ws && v->ws_bytes < books)
        return lmi_ws_short(v->ws_bytes, books, "lm_pool_prefill_workspace");
    char *mem = v->ws ? v->ws : malloc(books);
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory to plan the prefill");
    int64_t np;
    lmi_rows rows;
    size_t rest;
    book(p, v, mem, &np, &rows, &rest);
    if (v->ws && v->ws_bytes < books + rest)
        return lmi_ws_short(v->ws_bytes, books + rest, "lm_pool_prefill_workspace");
    if (!v->ws) { /* all of the scratch before anything is written */
        char *all = realloc(mem, books + rest);
        if (!all) {
            free(mem);
            return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for the prefill's scratch");
        }
        mem = all;
        book(p, v, mem, &np, &rows, &rest); /* the pointers into it, again */
    }
    const size_t attend = lmi_cpu_attend_ws((lmi_core_params *)mem, np);
    lm_status st = lmi_cpu_attend_many((lmi_core_params *)mem, np, mem + books, attend);
    if (st == LM_OK && rows.B)
        st = decode(p, &rows, mem + books + attend, rest - attend);
    /* A fresh sequence of no tokens only empties its slot. */
    for (int64_t i = 0; st == LM_OK && i < v->n; i++)
        if (runs(v, i) && v->cu[i + 1] == v->cu[i] && v->slot[i] >= 0 && lmi_pool_seq_fresh(v, i))
            st = slot_zero(p, v->slot[i], NULL);
    if (!v->ws)
        free(mem);
    return st;
}

/* ---- life and slots ---- */

static lm_status slot_zero(lm_pool *p, int64_t slot, void *stream)
{
    (void)stream;
    for (int j = 0; j < p->nparts; j++)
        memset(lmi_pool_part_at(p, j, slot), 0, (size_t)p->part[j].words * 4);
    return LM_OK;
}

static lm_status pool_init(lm_pool *p)
{
    for (int64_t i = 0; i < p->N; i++)
        slot_zero(p, i, NULL);
    return LM_OK;
}

static void pool_fini(lm_pool *p)
{
    (void)p;
}

static lm_status slot_copy(lm_pool *p, int64_t dst, int64_t src, void *stream)
{
    (void)stream;
    for (int j = 0; j < p->nparts; j++)
        memcpy(lmi_pool_part_at(p, j, dst), lmi_pool_part_at(p, j, src), (size_t)p->part[j].words * 4);
    return LM_OK;
}

static lm_status slot_get(const lm_pool *p, int64_t slot, void *data, int64_t *pos, void *stream)
{
    (void)stream;
    for (int j = 0; data && j < p->nparts; j++) {
        memcpy(data, lmi_pool_part_at(p, j, slot), (size_t)p->part[j].words * 4);
        data = (char *)data + p->part[j].words * 4;
    }
    *pos = p->pos[slot];
    return LM_OK;
}

static lm_status slot_set(lm_pool *p, int64_t slot, const void *data, int64_t pos, void *stream)
{
    (void)stream, (void)pos; /* the position is the pool's (pool.c) */
    for (int j = 0; j < p->nparts; j++) {
        memcpy(lmi_pool_part_at(p, j, slot), data, (size_t)p->part[j].words * 4);
        data = (const char *)data + p->part[j].words * 4;
    }
    return LM_OK;
}

const lmi_pool_ops lmi_cpu_pool = {
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
};
