/*
 * hybrid_cases.c - hybrid attention's problems and shared scenarios
 * (hybrid_cases.h), for any backend.
 *
 * Inputs: q, k uniform in [-2, 2) for elu+1 (else [-0.5, 1.5): relu keeps
 * the linear part's normaliser away from zero), v in [-1, 1), a mask of 25%
 * of the keys, gates in [-2, 2] (or the case's [-gate_max, gate_max], both
 * ends included). Outputs start as NaN before every call and
 * must all be written.
 */
#include "hybrid_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const int64_t hybrid_windows[6][2] = { { 64, 4 }, { 16, 0 }, { 1, 0 }, { 1, 3 }, { 7, 2 }, { 100, 5 } };

void hprob_init(hprob *p, const test_dev *dev, const hcase *c)
{
    memset(p, 0, sizeof *p);
    p->dev = dev;
    p->c = *c;
    const int64_t B = c->B, L = c->L, ns = c->s + c->W;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, B * L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    tbuf_random(&p->q, lo, hi);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->sq, B, L, c->Hq, c->Dk, c->seq_first);
    ref_strides4(p->sk, B, L, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, L, c->Hkv, c->Dv, c->seq_first);
    ref_strides4(p->so, B, L, c->Hq, c->Dv, 0);
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    ck_assert(c->Hq <= 64);
    const double gmax = c->gate_max > 0 ? c->gate_max : 2.0;
    for (int64_t h = 0; h < c->Hq; h++)
        p->gate[h] = c->gate ? (float)(gmax * (2 * ref_uniform() - 1)) : 0.0f;
    if (c->gate && c->Hq > 1 && c->gate_max > 0) /* both ends of the range */
        p->gate[0] = (float)-gmax, p->gate[c->Hq - 1] = (float)gmax;
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->nwk = B * c->Hkv * ns * c->Dk, p->nwv = B * c->Hkv * ns * c->Dv, p->npos = B * c->Hkv * ns;
    p->nout = B * L * c->Hq * c->Dv;
    p->want = malloc((size_t)p->nout * sizeof(double));
    ref_hybrid_state_alloc(&p->fin, B * c->Hkv, c->Dk, c->Dv, ns);
    ref_problem r = { .B = B, .L = L, .Lk = L, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { p->q.ref, { p->sq[0], p->sq[1], p->sq[2], p->sq[3] } },
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .causal = 1, .feature_map = c->fm, .normalize = 1,
                      .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_hybrid(&r, c->W, c->s, c->gate ? p->gate : NULL, c->gate_form, p->want, &p->fin);
    p->dq = test_dev_input(dev, p->q.data, tbuf_bytes(&p->q));
    p->dk = test_dev_input(dev, p->k.data, tbuf_bytes(&p->k));
    p->dv = test_dev_input(dev, p->v.data, tbuf_bytes(&p->v));
    p->dmask = test_dev_input(dev, p->mask, (size_t)(B * L));
}

void hprob_free(hprob *p)
{
    test_dev_drop(p->dev, p->dq), test_dev_drop(p->dev, p->dk), test_dev_drop(p->dev, p->dv);
    test_dev_drop(p->dev, p->dmask);
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v);
    free(p->mask);
    free(p->want);
    ref_hybrid_state_free(&p->fin);
}

/* ---- the carried state ---- */

/* Bytes of the state's parts S, z, wk, wv, pos. */
static void state_bytes(const hprob *p, size_t *b)
{
    b[0] = (size_t)p->nS * 4, b[1] = (size_t)p->nz * 4, b[2] = (size_t)p->nwk * 4;
    b[3] = (size_t)p->nwv * 4, b[4] = (size_t)p->npos * 4;
}

static void state_parts(const hstate *st, void **parts)
{
    parts[0] = st->S, parts[1] = st->z, parts[2] = st->wk, parts[3] = st->wv, parts[4] = st->pos;
}

void hstate_new(hstate *st, const hprob *p)
{
    size_t b[5];
    state_bytes(p, b);
    st->S = p->dev->alloc(b[0]), st->z = p->dev->alloc(b[1]), st->wk = p->dev->alloc(b[2]);
    st->wv = p->dev->alloc(b[3]), st->pos = p->dev->alloc(b[4]);
    hstate_clear(st, p);
}

void hstate_clear(hstate *st, const hprob *p)
{
    size_t b[5];
    void *parts[5];
    state_bytes(p, b);
    state_parts(st, parts);
    for (int i = 0; i < 5; i++) {
        void *zero = calloc(b[i] ? b[i] : 1, 1);
        p->dev->upload(parts[i], zero, b[i]);
        free(zero);
    }
}

void hstate_free(hstate *st, const hprob *p)
{
    void *parts[5];
    state_parts(st, parts);
    for (int i = 0; i < 5; i++)
        p->dev->release(parts[i]);
}

void hstate_fetch(hstate *host, const hstate *st, const hprob *p)
{
    size_t b[5];
    void *from[5], *to[5];
    state_bytes(p, b);
    state_parts(st, from);
    host->S = malloc(b[0] ? b[0] : 1), host->z = malloc(b[1] ? b[1] : 1), host->wk = malloc(b[2] ? b[2] : 1);
    host->wv = malloc(b[3] ? b[3] : 1), host->pos = malloc(b[4] ? b[4] : 1);
    state_parts(host, to);
    for (int i = 0; i < 5; i++)
        p->dev->download(to[i], from[i], b[i]);
}

void hstate_free_host(hstate *host)
{
    free(host->S), free(host->z), free(host->wk), free(host->wv), free(host->pos);
}

/* ---- outputs ---- */

void *hout_new(const hprob *p)
{
    void *out = p->dev->alloc((size_t)p->nout * lm_dtype_size(p->c.dtype));
    hout_poison(p, out);
    return out;
}

void hout_poison(const hprob *p, void *out)
{
    tbuf nan = tbuf_new(p->c.dtype, p->nout);
    tbuf_poison(&nan);
    p->dev->upload(out, nan.data, tbuf_bytes(&nan));
    tbuf_free(&nan);
}

void hout_free(const hprob *p, void *out)
{
    p->dev->release(out);
}

tbuf hout_fetch(const hprob *p, const void *out)
{
    tbuf got = tbuf_new(p->c.dtype, p->nout);
    p->dev->download(got.data, out, tbuf_bytes(&got));
    return got;
}

/* ---- calls ---- */

void hcall_init(hcall *k, const hprob *p, lm_device where, void *out, const hstate *st, int64_t t0,
                int64_t n)
{
    const hcase *c = &p->c;
    const int host = where == LM_CPU;
    memset(k, 0, sizeof *k);
    k->q = ref_tokens(ref_tensor4(host ? p->q.data : p->dq, c->dtype, where, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_tensor4(host ? p->k.data : p->dk, c->dtype, where, p->sk, c->B, c->L, c->Hkv, c->Dk), t0, n);
    k->v = ref_tokens(ref_tensor4(host ? p->v.data : p->dv, c->dtype, where, p->sv, c->B, c->L, c->Hkv, c->Dv), t0, n);
    k->out = ref_tokens(ref_tensor4(out, c->dtype, where, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d((host ? p->mask : p->dmask) + t0, LM_BOOL, where, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.precision = c->precision;
    k->a.attention = LM_ATTENTION_HYBRID;
    k->a.window = (int)c->W;
    k->a.sinks = (int)c->s;
    k->a.window_gate = c->gate ? p->gate : NULL;
    k->a.window_gate_form = c->gate_form;
    if (st) {
        k->a.state = st->S, k->a.normalizer = st->z;
        k->a.window_keys = st->wk, k->a.window_values = st->wv, k->a.window_pos = st->pos;
        k->a.position = t0;
    }
}

/* ---- checks ---- */

static void describe(char *s, size_t n, const hcase *c, const char *what)
{
    snprintf(s, n, "%s: dtype %d B %lld L %lld H %lld/%lld D %lld/%lld W %lld s %lld fm %d mask %d "
             "gate %d (form %d, max %g) seq_first %d", what, (int)c->dtype, (long long)c->B,
             (long long)c->L, (long long)c->Hq, (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv,
             (long long)c->W, (long long)c->s, c->fm, c->mask, c->gate, (int)c->gate_form,
             c->gate_max, c->seq_first);
}

double hybrid_check_out(const hprob *p, const void *out, const char *what)
{
    char d[256];
    describe(d, sizeof d, &p->c, what);
    tbuf got = hout_fetch(p, out);
    const ref_err e = ref_compare(&got, p->want, p->nout);
    tbuf_free(&got);
    if (p->dev->note)
        p->dev->note("hybrid", p->c.dtype, p->want, p->nout, e.rel);
    REF_CHECK(e, p->dev->out_bound(p->c.dtype, p->want, p->nout), "(%s)", d);
    return e.rel;
}

void hybrid_check_state(const hprob *p, const hstate *st, const char *what)
{
    char d[256];
    describe(d, sizeof d, &p->c, what);
    hstate h;
    hstate_fetch(&h, st, p);
    const ref_err es = ref_compare_f32(h.S, p->fin.S, p->nS), ez = ref_compare_f32(h.z, p->fin.z, p->nz);
    REF_CHECK(es, p->dev->state_bound(p->c.dtype), "(final S, %s)", d);
    REF_CHECK(ez, p->dev->state_bound(p->c.dtype), "(final z, %s)", d);
    const int64_t slots = p->c.s + p->c.W;
    for (int64_t i = 0; i < p->npos; i++) {
        ck_assert_msg(h.pos[i] == p->fin.pos[i], "slot %lld of head %lld: position code %d, expected %g (%s)",
                      (long long)(i % slots), (long long)(i / slots), (int)h.pos[i], p->fin.pos[i], d);
        if (p->fin.pos[i] <= 0)
            continue;
        for (int64_t x = 0; x < p->c.Dk; x++)
            ck_assert_msg(h.wk[i * p->c.Dk + x] == p->fin.keys[i * p->c.Dk + x],
                          "slot %lld key[%lld] differs (%s)", (long long)(i % slots), (long long)x, d);
        for (int64_t x = 0; x < p->c.Dv; x++)
            ck_assert_msg(h.wv[i * p->c.Dv + x] == p->fin.values[i * p->c.Dv + x],
                          "slot %lld value[%lld] differs (%s)", (long long)(i % slots), (long long)x, d);
    }
    hstate_free_host(&h);
}

/* ---- scenarios ---- */

void hybrid_run_parts(const hprob *p, void *out, hstate *st, const int64_t *cuts, int n, int steps)
{
    const lm_device dev = p->dev->device;
    hstate_clear(st, p);
    hout_poison(p, out);
    for (int i = 0; i + 1 < n; i++) {
        const int64_t t0 = cuts[i], len = cuts[i + 1] - cuts[i];
        hcall k;
        if (steps) {
            for (int64_t t = t0; t < t0 + len; t++) {
                hcall_init(&k, p, dev, out, st, t, 1);
                k.a.position = t % 3; /* decode reads each row's position from its window */
                ck_assert_msg(lm_linear_attn_decode(&k.a, NULL) == LM_OK, "decode at %lld: %s", (long long)t,
                              lm_last_error());
            }
        } else {
            hcall_init(&k, p, dev, out, st, t0, len);
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill [%lld, %lld): %s",
                          (long long)t0, (long long)(t0 + len), lm_last_error());
        }
    }
}

double hybrid_check_whole(const hprob *p)
{
    void *out = hout_new(p);
    hstate st;
    hstate_new(&st, p);
    const int64_t whole[] = { 0, p->c.L };
    hybrid_run_parts(p, out, &st, whole, 2, 0);
    const double e = hybrid_check_out(p, out, "prefill from an empty state");
    hybrid_check_state(p, &st, "prefill");
    /* Without a state (nothing kept), the same outputs. */
    hout_poison(p, out);
    hcall k;
    hcall_init(&k, p, p->dev->device, out, NULL, 0, p->c.L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill without a state: %s", lm_last_error());
    hybrid_check_out(p, out, "prefill without a state");
    hstate_free(&st, p);
    hout_free(p, out);
    return e;
}

void hybrid_case_lengths(const hcase *base, int nw, int nl, void (*check)(const hcase *c))
{
    for (int w = 0; w < nw; w++) {
        const int64_t W = hybrid_windows[w][0], s = hybrid_windows[w][1];
        const int64_t Ls[] = { 1, W - 1, W, W + 1, s + W + 1, 1000, 4097 };
        for (int i = 0; i < nl && i < 7; i++) {
            if (Ls[i] < 1)
                continue;
            hcase c = *base;
            c.W = W, c.s = s, c.L = Ls[i];
            c.B = Ls[i] > 1000 ? 1 : 2;
            check(&c);
        }
    }
}

void hybrid_case_gate_exp(const hcase *base, int nw, void (*check)(const hcase *c))
{
    hcase c = *base;
    c.gate_form = LM_GATE_EXP, c.gate = 1;
    hybrid_case_lengths(&c, nw, 7, check);
    c.L = 300, c.mask = 1;
    c.gate_max = LM_HYBRID_GATE_EXP_MAX;
    check(&c);
    c.gate_max = 0, c.gate = 0;
    check(&c);
    c.gate = 1, c.dtype = LM_BF16;
    check(&c);
}

void hybrid_case_splits(const hprob *p)
{
    const int64_t W = p->c.W, s = p->c.s, L = p->c.L;
    const int64_t cut_sets[][4] = { { 1, 0, 0, 0 },      { W - 1 > 0 ? W - 1 : 2, 0, 0, 0 },
                                    { W, 0, 0, 0 },      { W + 1, 0, 0, 0 },
                                    { s + W + 1, 0, 0, 0 }, { s + 1, s + W, 0, 0 },
                                    { 63, 64, 130, 0 }, { 63, 64, 200, 0 },
                                    { 3, 100, 101, 259 } };
    void *out = hout_new(p);
    hstate st;
    hstate_new(&st, p);
    for (size_t i = 0; i < sizeof cut_sets / sizeof cut_sets[0]; i++) {
        int64_t cuts[6] = { 0 };
        int n = 1;
        for (int j = 0; j < 4 && cut_sets[i][j]; j++)
            if (cut_sets[i][j] > cuts[n - 1] && cut_sets[i][j] < L)
                cuts[n++] = cut_sets[i][j];
        cuts[n++] = L;
        hybrid_run_parts(p, out, &st, cuts, n, 0);
        hybrid_check_out(p, out, "split prefill");
        hybrid_check_state(p, &st, "split prefill");
    }
    hstate_free(&st, p);
    hout_free(p, out);
}
