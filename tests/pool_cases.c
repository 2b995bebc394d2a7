/*
 * pool_cases.c - the engine pool's scenarios (pool_cases.h), for any backend.
 *
 * Every sequence is checked against ref_attend run on it alone (B = 1) from a
 * float64 model of its slot, which then takes the reference's final state:
 * the pool must carry each sequence exactly as separate calls would. A
 * hybrid pool's model keeps each slot's tokens since its start instead
 * (ref_hybrid has no carried state): the reference runs over them all and
 * the call's tokens are the last of its outputs. Slots live in one buffer,
 * interleaved (slot i: S, z, for hybrid the window's keys, values and
 * positions, then a guard), so that writes outside a slot's parts are seen;
 * the buffer starts as NaN, which lm_pool_create must clear. Outputs are
 * NaN-poisoned before each call.
 */
#include "pool_cases.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 3            /* floats after each slot's S and z */
#define GUARD_VALUE 1234.5f

/* The tokens a hybrid slot has seen (float64 shadows): q [len][Hq Dk],
 * k [len][Hkv Dk], v [len][Hkv Dv]. */
typedef struct history {
    double *q, *k, *v;
    int64_t len;
} history;

/* The pool, its memory (on the device, and a host copy) and the float64
 * model of every slot. */
typedef struct fixture {
    const test_dev *dev;
    pcase c;
    int64_t nS, nz, nwk, nwv, npos, nparts, blk; /* floats of a slot's parts; between slots */
    float *mem, *dmem;
    double *S, *z;        /* model: [N][nS], [N][nz] */
    double *wk, *wv, *wp; /* hybrid model: [N][nwk], [N][nwv], [N][npos] */
    history *hist;        /* hybrid: [N + 1], the last for sequences without a slot */
    int64_t *pos;
    float decay[8], gate[64];
    int64_t poisoned;     /* a slot no call may touch (NaN), or -1 */
    lm_pool *pool;
} fixture;

static void fixture_init(fixture *f, const test_dev *dev, const pcase *c)
{
    memset(f, 0, sizeof *f);
    f->dev = dev;
    f->c = *c;
    const int64_t ns = c->W ? c->s + c->W : 0;
    f->nS = c->Hkv * c->Dk * c->Dv, f->nz = c->Hkv * c->Dk;
    f->nwk = c->Hkv * ns * c->Dk, f->nwv = c->Hkv * ns * c->Dv, f->npos = c->Hkv * ns;
    f->nparts = f->nS + f->nz + f->nwk + f->nwv + f->npos, f->blk = f->nparts + GUARD;
    const size_t bytes = (size_t)(c->N * f->blk) * sizeof(float);
    f->mem = malloc(bytes);
    f->dmem = dev->alloc(bytes);
    for (int64_t i = 0; i < c->N * f->blk; i++) /* anything: the pool empties every slot */
        f->mem[i] = (i % f->blk) < f->nparts ? NAN : GUARD_VALUE;
    dev->upload(f->dmem, f->mem, bytes);
    f->S = calloc((size_t)(c->N * f->nS), sizeof(double));
    f->z = calloc((size_t)(c->N * f->nz), sizeof(double));
    f->wk = calloc((size_t)(c->N * f->nwk + 1), sizeof(double));
    f->wv = calloc((size_t)(c->N * f->nwv + 1), sizeof(double));
    f->wp = calloc((size_t)(c->N * f->npos + 1), sizeof(double));
    f->hist = calloc((size_t)c->N + 1, sizeof(history));
    f->pos = calloc((size_t)c->N, sizeof(int64_t));
    f->poisoned = -1;
    for (int64_t h = 0; h < c->Hkv; h++)
        f->decay[h] = (float)(1.0 - ldexp(1.0, -3 - (int)(h % 5)));
    ck_assert(c->Hq <= 64);
    for (int64_t h = 0; h < c->Hq; h++) /* in [-2, 2], the same in every pool of a case */
        f->gate[h] = c->gate ? (float)(2.0 * sin(1.0 + 3.0 * (double)h)) : 0.0f;
    lm_pool_config cfg;
    ck_assert_int_eq(lm_pool_config_default(&cfg, c->N, (int)c->Hkv, (int)c->Dk), LM_OK);
    cfg.head_dim_v = (int)c->Dv;
    cfg.device = dev->device;
    cfg.state = f->dmem, cfg.normalizer = f->dmem + f->nS;
    cfg.state_stride = cfg.normalizer_stride = f->blk;
    cfg.decay = c->decay ? f->decay : NULL;
    cfg.num_threads = c->num_threads;
    if (c->W) {
        cfg.attention = LM_ATTENTION_HYBRID;
        cfg.window = (int)c->W, cfg.sinks = (int)c->s;
        cfg.num_heads = c->gate ? (int)c->Hq : 0;
        cfg.window_gate = c->gate ? f->gate : NULL;
        cfg.window_gate_form = c->gate_form;
        cfg.window_keys = f->dmem + f->nS + f->nz;
        cfg.window_values = cfg.window_keys + f->nwk;
        cfg.window_pos = (int32_t *)(cfg.window_values + f->nwv);
        cfg.window_keys_stride = cfg.window_values_stride = cfg.window_pos_stride = f->blk;
    }
    ck_assert_msg(lm_pool_create(&cfg, &f->pool) == LM_OK, "%s", lm_last_error());
}

static void fixture_free(fixture *f)
{
    lm_pool_destroy(f->pool);
    f->dev->release(f->dmem);
    for (int64_t i = 0; i <= f->c.N; i++)
        free(f->hist[i].q), free(f->hist[i].k), free(f->hist[i].v);
    free(f->mem), free(f->S), free(f->z), free(f->wk), free(f->wv), free(f->wp), free(f->hist), free(f->pos);
}

/* The host copy of the slots' memory, fresh from the device. */
static void fixture_sync(fixture *f)
{
    f->dev->download(f->mem, f->dmem, (size_t)(f->c.N * f->blk) * sizeof(float));
}

/* Slot i's window against the model: the position codes exactly, and the
 * keys and values of the slots that hold a token exactly (fp32 copies of
 * the inputs). */
static void check_window(fixture *f, int64_t i, const char *when)
{
    const int64_t Dk = f->c.Dk, Dv = f->c.Dv, ns = f->c.s + f->c.W;
    const float *k = f->mem + i * f->blk + f->nS + f->nz, *v = k + f->nwk;
    const float *pw = v + f->nwv;
    for (int64_t x = 0; x < f->npos; x++) {
        int32_t code;
        memcpy(&code, pw + x, sizeof code);
        const double want = f->wp[i * f->npos + x];
        ck_assert_msg(code == want, "%s: slot %lld, window slot %lld of kv head %lld: code %d, expected %g", when,
                      (long long)i, (long long)(x % ns), (long long)(x / ns), (int)code, want);
        for (int64_t d = 0; want > 0 && d < Dk; d++)
            ck_assert_msg(k[x * Dk + d] == f->wk[i * f->nwk + x * Dk + d], "%s: slot %lld window key differs", when,
                          (long long)i);
        for (int64_t e = 0; want > 0 && e < Dv; e++)
            ck_assert_msg(v[x * Dv + e] == f->wv[i * f->nwv + x * Dv + e], "%s: slot %lld window value differs",
                          when, (long long)i);
    }
}

/* The library's slot states against the model, the guards, the positions. */
static void fixture_check(fixture *f, const char *when)
{
    fixture_sync(f);
    float *S = malloc((size_t)(f->c.N * f->nS) * sizeof(float));
    float *z = malloc((size_t)(f->c.N * f->nz) * sizeof(float));
    for (int64_t i = 0; i < f->c.N; i++) {
        const float *m = f->mem + i * f->blk;
        memcpy(S + i * f->nS, m, (size_t)f->nS * sizeof(float));
        memcpy(z + i * f->nz, m + f->nS, (size_t)f->nz * sizeof(float));
        if (i == f->poisoned) { /* still NaN throughout; the model's values stand in for the comparison */
            for (int64_t x = 0; x < f->nS + f->nz; x++)
                ck_assert_msg(isnan(m[x]), "%s: untouched slot %lld was written", when, (long long)i);
            for (int64_t x = 0; x < f->nS; x++)
                S[i * f->nS + x] = (float)f->S[i * f->nS + x];
            for (int64_t x = 0; x < f->nz; x++)
                z[i * f->nz + x] = (float)f->z[i * f->nz + x];
        }
        for (int g = 0; g < GUARD; g++)
            ck_assert_msg(m[f->nparts + g] == GUARD_VALUE, "%s: slot %lld's guard was written", when,
                          (long long)i);
        int64_t pos = -1;
        ck_assert_int_eq(lm_pool_slot_position(f->pool, i, &pos, NULL), LM_OK);
        ck_assert_msg(pos == f->pos[i], "%s: slot %lld at position %lld, expected %lld", when, (long long)i,
                      (long long)pos, (long long)f->pos[i]);
        if (f->c.W)
            check_window(f, i, when);
    }
    ref_err es = ref_compare_f32(S, f->S, f->c.N * f->nS), ez = ref_compare_f32(z, f->z, f->c.N * f->nz);
    REF_CHECK(es, f->dev->state_bound(f->c.dtype), "(slot states S, %s)", when);
    REF_CHECK(ez, f->dev->state_bound(f->c.dtype), "(slot states z, %s)", when);
    free(S), free(z);
}

/* Slot `slot`'s S and z set to NaN on the device: no later call may read
 * (its NaN would reach an output) or write them (fixture_check). */
static void fixture_poison(fixture *f, int64_t slot)
{
    float *m = f->mem + slot * f->blk;
    for (int64_t x = 0; x < f->nS + f->nz; x++)
        m[x] = NAN;
    f->dev->upload(f->dmem + slot * f->blk, m, (size_t)(f->nS + f->nz) * sizeof(float));
    f->poisoned = slot;
}

/* Slot dst of the model becomes slot src's (a fork). */
static void model_copy(fixture *f, int64_t dst, int64_t src)
{
    memcpy(f->S + dst * f->nS, f->S + src * f->nS, (size_t)f->nS * sizeof(double));
    memcpy(f->z + dst * f->nz, f->z + src * f->nz, (size_t)f->nz * sizeof(double));
    memcpy(f->wk + dst * f->nwk, f->wk + src * f->nwk, (size_t)f->nwk * sizeof(double));
    memcpy(f->wv + dst * f->nwv, f->wv + src * f->nwv, (size_t)f->nwv * sizeof(double));
    memcpy(f->wp + dst * f->npos, f->wp + src * f->npos, (size_t)f->npos * sizeof(double));
    history *d = &f->hist[dst];
    const history *s = &f->hist[src];
    const int64_t rq = f->c.Hq * f->c.Dk, rk = f->c.Hkv * f->c.Dk, rv = f->c.Hkv * f->c.Dv;
    d->q = realloc(d->q, (size_t)(s->len * rq + 1) * sizeof(double));
    d->k = realloc(d->k, (size_t)(s->len * rk + 1) * sizeof(double));
    d->v = realloc(d->v, (size_t)(s->len * rv + 1) * sizeof(double));
    memcpy(d->q, s->q ? s->q : d->q, (size_t)(s->len * rq) * sizeof(double));
    memcpy(d->k, s->k ? s->k : d->k, (size_t)(s->len * rk) * sizeof(double));
    memcpy(d->v, s->v ? s->v : d->v, (size_t)(s->len * rv) * sizeof(double));
    d->len = s->len;
    f->pos[dst] = f->pos[src];
}

/* Packed tokens of one call: q [T, Hq, Dk], k, v [T, Hkv, D], out [T, Hq, Dv]
 * on the host (with float64 shadows) and on the device. */
typedef struct packed {
    const test_dev *dev;
    int64_t T;
    tbuf q, k, v, out;
    void *dq, *dk, *dv, *dout;
    lm_tensor tq, tk, tv, to;
    double *want;
} packed;

static size_t bytes_of(const tbuf *b)
{
    return (size_t)b->n * lm_dtype_size(b->dtype);
}

static void packed_init(packed *p, const test_dev *dev, const pcase *c, int64_t T)
{
    p->dev = dev;
    p->T = T;
    p->q = tbuf_new(c->dtype, T * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, T * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, T * c->Hkv * c->Dv);
    p->out = tbuf_new(c->dtype, T * c->Hq * c->Dv);
    tbuf_random(&p->q, -2, 2);
    tbuf_random(&p->k, -2, 2);
    tbuf_random(&p->v, -1, 1);
    tbuf_poison(&p->out);
    tbuf *bs[] = { &p->q, &p->k, &p->v, &p->out };
    void **ds[] = { &p->dq, &p->dk, &p->dv, &p->dout };
    for (int i = 0; i < 4; i++) {
        *ds[i] = dev->alloc(bytes_of(bs[i]) + 1);
        dev->upload(*ds[i], bs[i]->data, bytes_of(bs[i]));
    }
    p->tq = lm_tensor_3d(p->dq, c->dtype, dev->device, T, c->Hq, c->Dk);
    p->tk = lm_tensor_3d(p->dk, c->dtype, dev->device, T, c->Hkv, c->Dk);
    p->tv = lm_tensor_3d(p->dv, c->dtype, dev->device, T, c->Hkv, c->Dv);
    p->to = lm_tensor_3d(p->dout, c->dtype, dev->device, T, c->Hq, c->Dv);
    p->want = malloc((size_t)(p->out.n ? p->out.n : 1) * sizeof(double));
    for (int64_t i = 0; i < p->out.n; i++)
        p->want[i] = NAN; /* rows no sequence writes stay unwritten */
}

/* The outputs as the call left them, into p->out. */
static void packed_fetch(packed *p)
{
    p->dev->download(p->out.data, p->dout, bytes_of(&p->out));
}

/* Sets output value i (host and device) before a call. */
static void packed_set_out(packed *p, int64_t i, double x)
{
    tbuf_set(&p->out, i, x);
    const size_t es = lm_dtype_size(p->out.dtype);
    p->dev->upload((char *)p->dout + i * (int64_t)es, (char *)p->out.data + i * (int64_t)es, es);
}

static void packed_free(packed *p)
{
    void *ds[] = { p->dq, p->dk, p->dv, p->dout };
    for (int i = 0; i < 4; i++)
        p->dev->release(ds[i]);
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v), tbuf_free(&p->out);
    free(p->want);
}

/* Rows [t0, t0 + len) of the packed shadow `from` ([T][row]) appended to *to
 * ([n][row], n rows already). */
static void append_rows(double **to, int64_t n, const double *from, int64_t row, int64_t t0, int64_t len)
{
    *to = realloc(*to, (size_t)((n + len) * row) * sizeof(double));
    ck_assert(*to);
    memcpy(*to + n * row, from + t0 * row, (size_t)(len * row) * sizeof(double));
}

/* The hybrid reference of tokens [t0, t0 + len) continuing slot (-1: a
 * sequence of its own): ref_hybrid over every token the slot has seen. */
static void reference_hybrid(fixture *f, packed *p, int64_t t0, int64_t len, int32_t slot)
{
    const pcase *c = &f->c;
    history *h = &f->hist[slot >= 0 ? slot : c->N];
    if (slot < 0)
        h->len = 0;
    append_rows(&h->q, h->len, p->q.ref, c->Hq * c->Dk, t0, len);
    append_rows(&h->k, h->len, p->k.ref, c->Hkv * c->Dk, t0, len);
    append_rows(&h->v, h->len, p->v.ref, c->Hkv * c->Dv, t0, len);
    h->len += len;
    const int64_t L = h->len, row = c->Hq * c->Dv;
    double *out = malloc((size_t)(L * row) * sizeof(double));
    ref_hybrid_state fin;
    ref_hybrid_state_alloc(&fin, c->Hkv, c->Dk, c->Dv, c->s + c->W);
    ref_problem r = { .B = 1, .L = L, .Lk = L, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { h->q, { 0, c->Hq * c->Dk, c->Dk, 1 } },
                      .k = { h->k, { 0, c->Hkv * c->Dk, c->Dk, 1 } },
                      .v = { h->v, { 0, c->Hkv * c->Dv, c->Dv, 1 } },
                      .causal = 1, .feature_map = LM_FEATURE_ELU1, .normalize = 1, .eps = 1e-6,
                      .scale = 1.0 / sqrt((double)c->Dk) };
    ref_hybrid(&r, c->W, c->s, c->gate ? f->gate : NULL, c->gate_form, out, &fin);
    memcpy(p->want + t0 * row, out + (L - len) * row, (size_t)(len * row) * sizeof(double));
    if (slot >= 0) {
        memcpy(f->S + slot * f->nS, fin.S, (size_t)f->nS * sizeof(double));
        memcpy(f->z + slot * f->nz, fin.z, (size_t)f->nz * sizeof(double));
        memcpy(f->wk + slot * f->nwk, fin.keys, (size_t)f->nwk * sizeof(double));
        memcpy(f->wv + slot * f->nwv, fin.values, (size_t)f->nwv * sizeof(double));
        memcpy(f->wp + slot * f->npos, fin.pos, (size_t)f->npos * sizeof(double));
        f->pos[slot] += len;
    }
    ref_hybrid_state_free(&fin);
    free(out);
}

/* The reference of tokens [t0, t0 + len) as one sequence continuing slot
 * (-1 or fresh: from empty), into p->want; the model takes its final state. */
static void reference(fixture *f, packed *p, int64_t t0, int64_t len, int32_t slot, int fresh)
{
    const pcase *c = &f->c;
    if (slot >= 0 && fresh) {
        memset(f->S + slot * f->nS, 0, (size_t)f->nS * sizeof(double));
        memset(f->z + slot * f->nz, 0, (size_t)f->nz * sizeof(double));
        memset(f->wp + slot * f->npos, 0, (size_t)f->npos * sizeof(double));
        f->hist[slot].len = 0;
        f->pos[slot] = 0;
    }
    if (len == 0)
        return;
    if (c->W) {
        reference_hybrid(f, p, t0, len, slot);
        return;
    }
    double *S = malloc((size_t)f->nS * sizeof(double)), *z = malloc((size_t)f->nz * sizeof(double));
    ref_problem r = { .B = 1, .L = len, .Lk = len, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { p->q.ref + t0 * c->Hq * c->Dk, { 0, c->Hq * c->Dk, c->Dk, 1 } },
                      .k = { p->k.ref + t0 * c->Hkv * c->Dk, { 0, c->Hkv * c->Dk, c->Dk, 1 } },
                      .v = { p->v.ref + t0 * c->Hkv * c->Dv, { 0, c->Hkv * c->Dv, c->Dv, 1 } },
                      .state = slot >= 0 ? f->S + slot * f->nS : NULL,
                      .normalizer = slot >= 0 ? f->z + slot * f->nz : NULL,
                      .decay = c->decay ? f->decay : NULL, .causal = 1, .feature_map = LM_FEATURE_ELU1,
                      .normalize = 1, .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_attend(&r, p->want + t0 * c->Hq * c->Dv, S, z);
    if (slot >= 0) {
        memcpy(f->S + slot * f->nS, S, (size_t)f->nS * sizeof(double));
        memcpy(f->z + slot * f->nz, z, (size_t)f->nz * sizeof(double));
        f->pos[slot] += len;
    }
    free(S), free(z);
}

/* The device's output bound for this fixture's pool (linear or hybrid). */
static double out_bound_of(const fixture *f, const double *want, int64_t n)
{
    const test_dev *d = f->dev;
    return (f->c.W && d->hybrid_out_bound ? d->hybrid_out_bound : d->out_bound)(f->c.dtype, want, n);
}

static void check_out(fixture *f, packed *p, const char *what)
{
    packed_fetch(p);
    ref_err e = ref_compare(&p->out, p->want, p->out.n);
    ref_note(f->c.dtype, e.rel);
    REF_CHECK(e, out_bound_of(f, p->want, p->out.n),
              "(%s, dtype %d, decay %d, H %lld/%lld, D %lld/%lld, W %lld, s %lld)", what, (int)f->c.dtype,
              f->c.decay, (long long)f->c.Hq, (long long)f->c.Hkv, (long long)f->c.Dk, (long long)f->c.Dv,
              (long long)f->c.W, (long long)f->c.s);
}

/* The same lm_pool_prefill of n sequences (lengths len, slots, flags) on
 * each of nf fixtures (pools alike but for how they run it), outputs
 * NaN-poisoned before each; each checked against the float64 reference,
 * and pool j's outputs against pool 0's within the same bound. With ws, in
 * the caller's workspace of the queried size (one byte less refused). */
static void prefill_on(fixture *fs, int nf, int64_t n, const int32_t *len, const int32_t *slots,
                       const uint8_t *flags, int ws)
{
    int32_t cu[64];
    cu[0] = 0;
    for (int64_t i = 0; i < n; i++)
        cu[i + 1] = cu[i] + len[i];
    packed p;
    packed_init(&p, fs[0].dev, &fs[0].c, cu[n]);
    tbuf first = tbuf_new(p.out.dtype, p.out.n), poison = tbuf_new(p.out.dtype, p.out.n);
    tbuf_poison(&poison);
    for (int j = 0; j < nf; j++) {
        fixture *f = &fs[j];
        lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &p.tq, .k = &p.tk, .v = &p.tv, .out = &p.to,
                              .num_seqs = (int32_t)n, .cu_seqlens = cu, .slots = slots, .flags = flags };
        f->dev->upload(p.dout, poison.data, bytes_of(&poison));
        void *w = NULL;
        if (ws) {
            size_t bytes = 0;
            ck_assert_int_eq(lm_pool_prefill_workspace(f->pool, &a, &bytes), LM_OK);
            w = f->dev->alloc(bytes + 1);
            if (bytes) {
                a.workspace = w, a.workspace_bytes = bytes - 1;
                EXPECT_ERR(lm_pool_prefill(f->pool, &a, NULL), LM_ERR_INVALID_ARG, "workspace");
            }
            a.workspace = w, a.workspace_bytes = bytes;
        }
        ck_assert_msg(lm_pool_prefill(f->pool, &a, NULL) == LM_OK, "%s", lm_last_error());
        if (w)
            f->dev->release(w);
        for (int64_t i = 0; i < n; i++)
            reference(f, &p, cu[i], len[i], slots[i], flags && (flags[i] & LM_SEQ_FRESH));
        check_out(f, &p, "a packed prefill");
        if (j == 0) {
            memcpy(first.data, p.out.data, bytes_of(&p.out));
        } else {
            for (int64_t i = 0; i < p.out.n; i++)
                first.ref[i] = tbuf_get(&first, i);
            ref_err e = ref_compare(&p.out, first.ref, p.out.n);
            REF_CHECK(e, out_bound_of(f, p.want, p.out.n), "(pool %d against pool 0)", j);
        }
        fixture_check(f, "after a prefill");
    }
    tbuf_free(&first), tbuf_free(&poison);
    packed_free(&p);
}

static void prefill(fixture *f, int64_t n, const int32_t *len, const int32_t *slots, const uint8_t *flags)
{
    prefill_on(f, 1, n, len, slots, flags, 0);
}

/* One lm_pool_decode of B rows (indices on the device); padding rows'
 * outputs stay as they were. */
static void decode(fixture *f, int64_t B, const int32_t *slots)
{
    packed p;
    packed_init(&p, f->dev, &f->c, B);
    const int64_t row = f->c.Hq * f->c.Dv;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; slots[b] < 0 && i < row; i++)
            packed_set_out(&p, b * row + i, 0.25); /* a padding row's output: kept */
    int32_t *dslots = f->dev->alloc((size_t)B * sizeof(int32_t));
    f->dev->upload(dslots, slots, (size_t)B * sizeof(int32_t));
    lm_decode_args a = { LM_SIZED(lm_decode_args), .q = &p.tq, .k = &p.tk, .v = &p.tv, .out = &p.to,
                         .slots = dslots };
    ck_assert_msg(lm_pool_decode(f->pool, &a, NULL) == LM_OK, "%s", lm_last_error());
    for (int64_t b = 0; b < B; b++) {
        if (slots[b] >= 0)
            reference(f, &p, b, 1, slots[b], 0);
        else
            for (int64_t i = 0; i < row; i++)
                p.want[b * row + i] = 0.25;
    }
    check_out(f, &p, "an indexed decode");
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; slots[b] < 0 && i < row; i++)
            ck_assert_msg(tbuf_get(&p.out, b * row + i) == 0.25, "padding row %lld was written", (long long)b);
    f->dev->release(dslots);
    packed_free(&p);
    fixture_check(f, "after a decode");
}

void pool_case_batching(const test_dev *dev)
{
    static const pcase cases[] = {
        { LM_F32, 9, 4, 2, 32, 32, 0, 0, 0, 0, 0, LM_GATE_SIGMOID },
        { LM_F32, 9, 4, 2, 32, 32, 1, 0, 0, 0, 0, LM_GATE_SIGMOID },
        { LM_BF16, 9, 2, 2, 32, 16, 1, 0, 0, 0, 0, LM_GATE_SIGMOID },
        { LM_F16, 9, 8, 1, 32, 40, 0, 0, 0, 0, 0, LM_GATE_SIGMOID },
        { LM_BF16, 9, 4, 4, 64, 64, 1, 2, 0, 0, 0, LM_GATE_SIGMOID },
        { LM_F32, 9, 2, 2, 128, 128, 0, 0, 0, 0, 0, LM_GATE_SIGMOID },
        /* hybrid: W 16 s 3 with gates; W 7 s 0 (GQA, 2 threads); W 1 s 2; W 12 s 2 with
         * exp gates (gamma up to e^2: the window outweighs the state) */
        { LM_F32, 9, 4, 2, 32, 32, 0, 0, 16, 3, 1, LM_GATE_SIGMOID },
        { LM_BF16, 9, 4, 1, 32, 24, 0, 2, 7, 0, 0, LM_GATE_SIGMOID },
        { LM_F16, 9, 2, 2, 64, 32, 0, 0, 1, 2, 1, LM_GATE_SIGMOID },
        { LM_BF16, 9, 4, 2, 32, 32, 0, 0, 12, 2, 1, LM_GATE_EXP },
    };
    ref_seed(21);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        fixture f;
        fixture_init(&f, dev, &cases[ci]);
        fixture_check(&f, "at creation");
        const int32_t len1[] = { 65, 1, 0, 130, 7, 64 }, slots1[] = { 4, 0, -1, 8, 2, 6 };
        const uint8_t fresh1[] = { LM_SEQ_FRESH, 0, 0, LM_SEQ_FRESH, 0, 0 };
        prefill(&f, 6, len1, slots1, fresh1);
        /* Decode rows (length 1) among prefills; slot 8 emptied; 3 started fresh; 5 joins. */
        const int32_t len2[] = { 1, 1, 63, 1, 0, 200, 1 }, slots2[] = { 0, 4, 2, 6, 8, 3, 5 };
        const uint8_t fresh2[] = { 0, 0, 0, 0, LM_SEQ_FRESH, LM_SEQ_FRESH, 0 };
        prefill(&f, 7, len2, slots2, fresh2);
        const int32_t rows[] = { 2, -1, 0, 4, -1, 6, 3 };
        decode(&f, 7, rows);
        const int32_t rows2[] = { 5, 3, 2 }; /* 0, 4 and 6 finished: left alone */
        decode(&f, 3, rows2);
        const int32_t len3[] = { 3 }, slots3[] = { 0 };
        prefill(&f, 1, len3, slots3, NULL);
        /* Lengths around the window (a linear case uses W 16, s 3's): fresh, a
         * decode with padding, then continued in another order. */
        const int32_t W = f.c.W ? (int32_t)f.c.W : 16, sk = f.c.W ? (int32_t)f.c.s : 3;
        const int32_t len4[] = { 1, W - 1, W, W + 1, sk + W + 1, 300 }, slots4[] = { 7, 1, 5, 0, 8, 2 };
        const uint8_t fresh4[] = { LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH,
                                   LM_SEQ_FRESH };
        prefill(&f, 6, len4, slots4, fresh4);
        const int32_t rows4[] = { 1, -1, 7, 0, 5, 8, 2 };
        decode(&f, 7, rows4);
        /* Prefills and decode rows of every kind: slot 7 continued, 8 (it holds
         * tokens) restarted fresh, 3 continued, a length-1 sequence without a
         * slot (a prefill of its own); then a call of decode rows alone, 1
         * restarted fresh among them. */
        const int32_t len5[] = { sk + W + 1, 1, W + 1, 1, W - 1, 1, W, 1 };
        const int32_t slots5[] = { 1, 7, 0, 8, 2, -1, 5, 3 };
        const uint8_t fresh5[] = { 0, 0, 0, LM_SEQ_FRESH, 0, 0, 0, 0 };
        prefill(&f, 8, len5, slots5, fresh5);
        const int32_t len6[] = { 1, 1, 1, 1 }, slots6[] = { 8, 1, 6, 3 };
        const uint8_t fresh6[] = { 0, LM_SEQ_FRESH, 0, 0 };
        prefill(&f, 4, len6, slots6, fresh6);
        fixture_free(&f);
    }
}

/* The fork and blob scenario on one pool case. */
static void fork_blob(const test_dev *dev, const pcase *cp)
{
    const pcase c = *cp;
    fixture f, g;
    fixture_init(&f, dev, &c);
    const int32_t len[] = { 50 }, slot0[] = { 0 };
    prefill(&f, 1, len, slot0, NULL);
    ck_assert_int_eq(lm_pool_slot_copy(f.pool, 3, 0, NULL), LM_OK);
    model_copy(&f, 3, 0);
    fixture_check(&f, "after a copy");
    const int32_t len2[] = { 9, 17 }, slots2[] = { 3, 0 };
    prefill(&f, 2, len2, slots2, NULL);

    size_t bytes = 0;
    ck_assert_int_eq(lm_pool_slot_blob_size(f.pool, &bytes), LM_OK);
    /* a 56-byte header (hybrid: 88, format 2), the slot's parts, a 32-byte tag */
    ck_assert_uint_eq(bytes, (c.W ? 88 : 56) + (size_t)f.nparts * sizeof(float) + 32);
    unsigned char *blob = malloc(bytes), *bad = malloc(bytes);
    ck_assert_int_eq(lm_pool_slot_export(f.pool, 3, blob, bytes, NULL), LM_OK);
    uint32_t version;
    memcpy(&version, blob + 8, sizeof version);
    ck_assert_uint_eq(version, c.W ? 2 : 1);
    pcase c2 = c;
    c2.N = 2;
    fixture_init(&g, dev, &c2);
    ck_assert_int_eq(lm_pool_slot_import(g.pool, 1, blob, bytes, NULL), LM_OK);
    fixture_sync(&f);
    fixture_sync(&g);
    ck_assert(!memcmp(g.mem + g.blk, f.mem + 3 * f.blk, (size_t)f.nparts * sizeof(float)));
    int64_t pos = 0;
    ck_assert_int_eq(lm_pool_slot_position(g.pool, 1, &pos, NULL), LM_OK);
    ck_assert_int_eq(pos, f.pos[3]);

    /* Refused blobs change nothing. */
    memcpy(bad, blob, bytes);
    bad[0] = 'X';
    EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_INVALID_ARG, "bad magic");
    memcpy(bad, blob, bytes);
    bad[8] = 9; /* format version */
    EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_UNSUPPORTED, "format 9");
    EXPECT_ERR(lm_pool_slot_import(g.pool, 0, blob, bytes - 4, NULL), LM_ERR_INVALID_ARG, "bytes");
    memcpy(bad, blob, bytes);
    int64_t dk = 16;
    memcpy(bad + 32, &dk, sizeof dk); /* kv_heads at 24, dk at 32 */
    EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_STATE, "kv heads");
    if (c.W) {
        /* Another W; a position its window disagrees with: an unlimited licence
         * takes altered blobs (nothing is counted) and finds the disagreement,
         * a cap refuses the altered blob first. */
        memcpy(bad, blob, bytes);
        const int64_t w2 = c.W + 1;
        memcpy(bad + 64, &w2, sizeof w2); /* attention at 56, W at 64, s at 72 */
        EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_STATE, "the pool is hybrid");
        memcpy(bad, blob, bytes);
        const int64_t p2 = f.pos[3] + 1;
        memcpy(bad + 48, &p2, sizeof p2); /* position at 48 */
        lm_license_details lic = { LM_SIZED(lm_license_details) };
        ck_assert_int_eq(lm_license_info(&lic), LM_OK);
        if (lic.max_seq_len)
            EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_LICENSE, "altered");
        else
            EXPECT_ERR(lm_pool_slot_import(g.pool, 0, bad, bytes, NULL), LM_ERR_INVALID_ARG, "disagree");
        /* A linear pool's blob (format 1) into the hybrid pool, and back. */
        pcase cl = c2;
        cl.W = cl.s = cl.gate = 0;
        fixture l;
        fixture_init(&l, dev, &cl);
        size_t lbytes = 0;
        ck_assert_int_eq(lm_pool_slot_blob_size(l.pool, &lbytes), LM_OK);
        unsigned char *lblob = malloc(lbytes);
        ck_assert_int_eq(lm_pool_slot_export(l.pool, 0, lblob, lbytes, NULL), LM_OK);
        EXPECT_ERR(lm_pool_slot_import(g.pool, 0, lblob, lbytes, NULL), LM_ERR_STATE, "a linear slot");
        EXPECT_ERR(lm_pool_slot_import(l.pool, 0, blob, bytes, NULL), LM_ERR_STATE, "a hybrid slot");
        free(lblob);
        fixture_free(&l);
    }
    EXPECT_ERR(lm_pool_slot_export(g.pool, 0, blob, bytes - 1, NULL), LM_ERR_INVALID_ARG, "needs");
    EXPECT_ERR(lm_pool_slot_export(g.pool, 2, blob, bytes, NULL), LM_ERR_INVALID_ARG, "not a slot");
    fixture_sync(&g);
    for (int64_t i = 0; i < g.nparts; i++)
        ck_assert(g.mem[i] == 0.0f); /* slot 0 still empty */
    ck_assert_int_eq(lm_pool_slot_position(g.pool, 0, &pos, NULL), LM_OK);
    ck_assert_int_eq(pos, 0);

    /* The same tokens after the original and after the imported copy: equal. */
    packed p;
    packed_init(&p, dev, &c, 5);
    void *dout2 = dev->alloc(bytes_of(&p.out));
    lm_tensor to2 = p.to;
    to2.data = dout2;
    const int32_t cu[] = { 0, 5 }, s3[] = { 3 }, s1[] = { 1 };
    lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &p.tq, .k = &p.tk, .v = &p.tv, .out = &p.to,
                          .num_seqs = 1, .cu_seqlens = cu, .slots = s3 };
    ck_assert_int_eq(lm_pool_prefill(f.pool, &a, NULL), LM_OK);
    a.slots = s1, a.out = &to2;
    ck_assert_int_eq(lm_pool_prefill(g.pool, &a, NULL), LM_OK);
    packed_fetch(&p);
    tbuf out2 = tbuf_new(c.dtype, p.out.n);
    dev->download(out2.data, dout2, bytes_of(&out2));
    ck_assert(!memcmp(p.out.data, out2.data, bytes_of(&out2)));
    fixture_sync(&f);
    fixture_sync(&g);
    ck_assert(!memcmp(g.mem + g.blk, f.mem + 3 * f.blk, (size_t)f.nparts * sizeof(float)));

    ck_assert_int_eq(lm_pool_slot_zero(f.pool, 3, NULL), LM_OK);
    ck_assert_int_eq(lm_pool_slot_position(f.pool, 3, &pos, NULL), LM_OK);
    ck_assert_int_eq(pos, 0);
    fixture_sync(&f);
    for (int64_t i = 0; i < f.nparts; i++)
        ck_assert(f.mem[3 * f.blk + i] == 0.0f);
    tbuf_free(&out2);
    dev->release(dout2);
    packed_free(&p);
    free(blob), free(bad);
    fixture_free(&g);
    fixture_free(&f);
}

void pool_case_fork_blob(const test_dev *dev)
{
    static const pcase cases[] = { { LM_F32, 6, 4, 2, 32, 32, 1, 0, 0, 0, 0, LM_GATE_SIGMOID },
                                   { LM_F32, 6, 4, 2, 32, 32, 0, 0, 8, 2, 1, LM_GATE_SIGMOID } };
    ref_seed(22);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fork_blob(dev, &cases[i]);
}

/* Row x of a packed [T, H, D] descriptor, as [1, H, D]. */
static lm_tensor token(lm_tensor t, int64_t x)
{
    t.data = (char *)t.data + x * t.stride[0] * (int64_t)lm_dtype_size(t.dtype);
    t.shape[0] = 1;
    return t;
}

void pool_case_hybrid_core(const test_dev *dev)
{
    static const pcase cases[] = { { LM_F32, 4, 4, 2, 32, 32, 0, 0, 16, 3, 1, LM_GATE_SIGMOID },
                                   { LM_BF16, 4, 2, 1, 64, 32, 0, 0, 64, 4, 0, LM_GATE_SIGMOID },
                                   { LM_F32, 4, 4, 2, 32, 32, 0, 0, 16, 3, 1, LM_GATE_EXP } };
    ref_seed(26);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const pcase c = cases[ci];
        const int64_t T = 300, T1 = 250, row = c.Hq * c.Dv;
        fixture f;
        fixture_init(&f, dev, &c);
        packed p;
        packed_init(&p, dev, &c, T);
        /* Slot 2: one prefill of the whole sequence. */
        const int32_t cu[] = { 0, (int32_t)T }, s2[] = { 2 };
        const uint8_t fresh[] = { LM_SEQ_FRESH };
        lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &p.tq, .k = &p.tk, .v = &p.tv, .out = &p.to,
                              .num_seqs = 1, .cu_seqlens = cu, .slots = s2, .flags = fresh };
        ck_assert_msg(lm_pool_prefill(f.pool, &a, NULL) == LM_OK, "%s", lm_last_error());
        reference(&f, &p, 0, T, 2, 1);
        check_out(&f, &p, "a hybrid pool's prefill");
        tbuf whole = tbuf_new(c.dtype, p.out.n);
        memcpy(whole.data, p.out.data, bytes_of(&whole));
        fixture_check(&f, "after a hybrid prefill");

        /* Slot 1: a prefill of T1 tokens, then one decode step per token. */
        tbuf_poison(&p.out);
        dev->upload(p.dout, p.out.data, bytes_of(&p.out));
        lm_tensor tq = p.tq, tk = p.tk, tv = p.tv, to = p.to;
        tq.shape[0] = tk.shape[0] = tv.shape[0] = to.shape[0] = T1;
        const int32_t cu1[] = { 0, (int32_t)T1 }, s1[] = { 1 };
        lm_prefill_args a1 = { LM_SIZED(lm_prefill_args), .q = &tq, .k = &tk, .v = &tv, .out = &to,
                               .num_seqs = 1, .cu_seqlens = cu1, .slots = s1, .flags = fresh };
        ck_assert_msg(lm_pool_prefill(f.pool, &a1, NULL) == LM_OK, "%s", lm_last_error());
        reference(&f, &p, 0, T1, 1, 1);
        int32_t *dslot = dev->alloc(sizeof(int32_t));
        dev->upload(dslot, s1, sizeof(int32_t));
        for (int64_t t = T1; t < T; t++) {
            lm_tensor rq = token(p.tq, t), rk = token(p.tk, t), rv = token(p.tv, t), ro = token(p.to, t);
            lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &rq, .k = &rk, .v = &rv, .out = &ro,
                                 .slots = dslot };
            ck_assert_msg(lm_pool_decode(f.pool, &d, NULL) == LM_OK, "step %lld: %s", (long long)t,
                          lm_last_error());
            reference(&f, &p, t, 1, 1, 0);
        }
        check_out(&f, &p, "a hybrid pool's prefill then decode steps");
        fixture_check(&f, "after hybrid decode steps");

        /* The core's hybrid prefill on the sequence alone, from a fresh state:
         * slot 2's outputs and state bit for bit. */
        float *st = dev->alloc((size_t)f.nparts * sizeof(float));
        void *dout = dev->alloc(bytes_of(&p.out));
        lm_tensor q4 = lm_tensor_4d(p.dq, c.dtype, dev->device, 1, T, c.Hq, c.Dk);
        lm_tensor k4 = lm_tensor_4d(p.dk, c.dtype, dev->device, 1, T, c.Hkv, c.Dk);
        lm_tensor v4 = lm_tensor_4d(p.dv, c.dtype, dev->device, 1, T, c.Hkv, c.Dv);
        lm_tensor o4 = lm_tensor_4d(dout, c.dtype, dev->device, 1, T, c.Hq, c.Dv);
        lm_core_args k;
        ck_assert_int_eq(lm_core_args_default(&k), LM_OK);
        k.q = &q4, k.k = &k4, k.v = &v4, k.out = &o4;
        k.attention = LM_ATTENTION_HYBRID, k.window = (int)c.W, k.sinks = (int)c.s;
        k.window_gate = c.gate ? f.gate : NULL;
        k.window_gate_form = c.gate_form;
        k.state = st, k.normalizer = st + f.nS, k.window_keys = k.normalizer + f.nz;
        k.window_values = k.window_keys + f.nwk, k.window_pos = (int32_t *)(k.window_values + f.nwv);
        k.fresh_state = 1;
        ck_assert_msg(lm_linear_attn_prefill(&k, NULL) == LM_OK, "%s", lm_last_error());
        tbuf core = tbuf_new(c.dtype, p.out.n);
        dev->download(core.data, dout, bytes_of(&core));
        ck_assert_msg(!memcmp(core.data, whole.data, (size_t)(T * row) * lm_dtype_size(c.dtype)),
                      "the pool's prefill differs from the core's hybrid prefill");
        float *host = malloc((size_t)f.nparts * sizeof(float));
        dev->download(host, st, (size_t)f.nparts * sizeof(float));
        fixture_sync(&f);
        ck_assert_msg(!memcmp(host, f.mem + 2 * f.blk, (size_t)f.nparts * sizeof(float)),
                      "the pool's slot differs from the core's hybrid state");
        free(host);
        tbuf_free(&core), tbuf_free(&whole);
        dev->release(dout), dev->release(st), dev->release(dslot);
        packed_free(&p);
        fixture_free(&f);
    }
}

void pool_case_workspace(const test_dev *dev)
{
    const pcase c = { LM_F32, 4, 4, 2, 32, 32, 1, 0, 0, 0, 0, LM_GATE_SIGMOID };
    ref_seed(23);
    fixture f[2];
    for (int i = 0; i < 2; i++)
        fixture_init(&f[i], dev, &c);
    packed p;
    packed_init(&p, dev, &c, 300);
    const int32_t cu[] = { 0, 1, 200, 299, 300 }, slots[] = { 2, 0, 1, 3 };
    tbuf outs[2];
    int32_t rows[] = { 3, -1, 1 };
    int32_t *drows = dev->alloc(sizeof rows);
    dev->upload(drows, rows, sizeof rows);
    for (int i = 0; i < 2; i++) {
        outs[i] = tbuf_new(c.dtype, p.out.n);
        lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &p.tq, .k = &p.tk, .v = &p.tv, .out = &p.to,
                              .num_seqs = 4, .cu_seqlens = cu, .slots = slots };
        void *ws = NULL;
        size_t bytes = 0;
        if (i == 1) {
            ck_assert_int_eq(lm_pool_prefill_workspace(f[i].pool, &a, &bytes), LM_OK);
            ws = dev->alloc(bytes + 1);
            if (bytes) {
                a.workspace = ws, a.workspace_bytes = bytes - 1;
                EXPECT_ERR(lm_pool_prefill(f[i].pool, &a, NULL), LM_ERR_INVALID_ARG, "workspace");
            }
            a.workspace = ws, a.workspace_bytes = bytes;
        }
        ck_assert_msg(lm_pool_prefill(f[i].pool, &a, NULL) == LM_OK, "%s", lm_last_error());
        lm_tensor tq = p.tq, tk = p.tk, tv = p.tv, to = p.to;
        tq.shape[0] = tk.shape[0] = tv.shape[0] = to.shape[0] = 3;
        lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .slots = drows };
        if (i == 1) {
            ck_assert_int_eq(lm_pool_decode_workspace(f[i].pool, &d, &bytes), LM_OK);
            dev->release(ws);
            ws = dev->alloc(bytes + 1);
            d.workspace = ws, d.workspace_bytes = bytes;
        }
        ck_assert_msg(lm_pool_decode(f[i].pool, &d, NULL) == LM_OK, "%s", lm_last_error());
        dev->download(outs[i].data, p.dout, bytes_of(&outs[i]));
        fixture_sync(&f[i]);
        dev->release(ws);
    }
    ck_assert_msg(!memcmp(outs[0].data, outs[1].data, bytes_of(&outs[0])), "outputs differ with a workspace");
    ck_assert_msg(!memcmp(f[0].mem, f[1].mem, (size_t)(c.N * f[0].blk) * sizeof(float)),
                  "states differ with a workspace");
    for (int i = 0; i < 2; i++) {
        tbuf_free(&outs[i]);
        fixture_free(&f[i]);
    }
    dev->release(drows);
    packed_free(&p);
}

/* nf pools of case c, pool j made after select(j) (NULL: nothing to select). */
static void fixtures_init(fixture *fs, int nf, const test_dev *dev, const pcase *c, void (*select)(int))
{
    for (int j = 0; j < nf; j++) {
        if (select)
            select(j);
        fixture_init(&fs[j], dev, c);
    }
}

void pool_case_paths(const test_dev *dev, int npools, void (*select)(int pool), int small)
{
    enum { MAXP = 4 };
    ck_assert_int_le(npools, MAXP);
    fixture fs[MAXP];
    /* GQA (Hq = 4 Hkv, Dk = Dv = 128) and Hq == Hkv (64): ragged lengths,
     * slots out of order, slot 4 never touched (NaN); a length-1 sequence
     * without a slot (a prefill) beside decode rows (length 1, a slot). */
    static const pcase cases[] = { { LM_BF16, 10, 8, 2, 128, 128, 0, 0, 0, 0, 0, LM_GATE_SIGMOID },
                                   { LM_BF16, 10, 4, 4, 64, 64, 0, 0, 0, 0, 0, LM_GATE_SIGMOID } };
    ref_seed(24);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        fixtures_init(fs, npools, dev, &cases[ci], select);
        for (int j = 0; j < npools; j++)
            fixture_poison(&fs[j], 4);
        const int32_t longest = small ? 1100 : 4097;
        const int32_t len1[] = { 1, 63, 64, 65, 1000, longest, 1 }, slots1[] = { -1, 2, 9, 0, 5, 3, 7 };
        const uint8_t fresh1[] = { 0, LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH, LM_SEQ_FRESH, 0 };
        prefill_on(fs, npools, 7, len1, slots1, fresh1, 0);
        /* Slots continued (9 as a decode row), 8 joins, 6 starts fresh; in
         * the caller's workspace. */
        const int32_t len2[] = { 65, 1000, 63, 1, 64, longest, 130, 1, 200 }, slots2[] = { 7, 2, 0, -1, 5, 3, 8, 9, 6 };
        const uint8_t fresh2[] = { 0, 0, 0, 0, 0, 0, LM_SEQ_FRESH, 0, LM_SEQ_FRESH };
        prefill_on(fs, npools, 9, len2, slots2, fresh2, 1);
        for (int j = 0; j < npools; j++)
            fixture_free(&fs[j]);
    }
    if (small)
        return;
    /* One kv head of 64: slot 0 past LM_PRECISION_AUTO_TOKENS, so that its
     * next sequence is compensated, in one call with a fresh sequence and a
     * decode row. */
    const pcase c = { LM_BF16, 3, 1, 1, 64, 64, 0, 0, 0, 0, 0, LM_GATE_SIGMOID };
    fixtures_init(fs, npools, dev, &c, select);
    const int32_t lenA[] = { LM_PRECISION_AUTO_TOKENS - 36 }, slotsA[] = { 0 };
    prefill_on(fs, npools, 1, lenA, slotsA, NULL, 0);
    const int32_t lenB[] = { 100, 300, 1 }, slotsB[] = { 0, 1, 2 };
    prefill_on(fs, npools, 3, lenB, slotsB, NULL, 1);
    for (int j = 0; j < npools; j++)
        fixture_free(&fs[j]);
}
