/*
 * test_hybrid.c - hybrid attention in the core (lm_linear_attn_prefill /
 * decode with LM_ATTENTION_HYBRID) on the CPU against the float64 reference
 * of docs/DESIGN.md §9 (ref_hybrid): ragged lengths around W and s, several
 * (W, s) with s = 0 and W = 1, dtypes, layouts, GQA, gates, masks, the
 * final state (S, z and every window slot), prefill == split prefill ==
 * decode steps, and bad arguments refused with nothing changed.
 */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hcase {
    lm_dtype dtype;
    int64_t B, L, Hq, Hkv, Dk, Dv, W, s;
    int fm, mask, gate, seq_first;
    lm_precision precision;
} hcase;

static hcase base_case(void)
{
    hcase c = { .dtype = LM_F32, .B = 2, .L = 100, .Hq = 4, .Hkv = 2, .Dk = 32, .Dv = 32,
                .W = 16, .s = 4, .fm = LM_FEATURE_ELU1, .gate = 1 };
    return c;
}

/* The inputs of a case, the library's state buffers and the reference. */
typedef struct hprob {
    hcase c;
    tbuf q, k, v, out;
    uint8_t *mask;
    float gate[64];
    int64_t sq[4], sk[4], sv[4], so[4];
    float *S, *z, *wk, *wv; /* the state the calls carry */
    int32_t *wpos;
    int64_t nS, nz, nwk, nwv, nval;
    double *want;
    ref_hybrid_state fin;
} hprob;

/* An empty state: nothing seen yet. */
static void state_clear(hprob *p)
{
    memset(p->S, 0, (size_t)p->nS * sizeof(float));
    memset(p->z, 0, (size_t)p->nz * sizeof(float));
    memset(p->wk, 0, (size_t)p->nwk * sizeof(float));
    memset(p->wv, 0, (size_t)p->nwv * sizeof(float));
    memset(p->wpos, 0, (size_t)p->nval * sizeof(int32_t));
}

static void hprob_init(hprob *p, const hcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L, slots = c->s + c->W;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, B * L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    p->out = tbuf_new(c->dtype, B * L * c->Hq * c->Dv);
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
    for (int64_t h = 0; h < c->Hq; h++)
        p->gate[h] = c->gate ? (float)(4 * ref_uniform() - 2) : 0.0f;
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->nwk = B * c->Hkv * slots * c->Dk, p->nwv = B * c->Hkv * slots * c->Dv;
    p->nval = B * c->Hkv * slots;
    p->S = malloc((size_t)p->nS * sizeof(float));
    p->z = malloc((size_t)p->nz * sizeof(float));
    p->wk = malloc((size_t)p->nwk * sizeof(float));
    p->wv = malloc((size_t)p->nwv * sizeof(float));
    p->wpos = malloc((size_t)p->nval * sizeof(int32_t));
    state_clear(p);

    p->want = malloc((size_t)p->out.n * sizeof(double));
    ref_hybrid_state_alloc(&p->fin, B * c->Hkv, c->Dk, c->Dv, slots);
    ref_problem r = { .B = B, .L = L, .Lk = L, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { p->q.ref, { p->sq[0], p->sq[1], p->sq[2], p->sq[3] } },
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .causal = 1, .feature_map = c->fm, .normalize = 1,
                      .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_hybrid(&r, c->W, c->s, c->gate ? p->gate : NULL, p->want, &p->fin);
}

static void hprob_free(hprob *p)
{
    tbuf_free(&p->q);
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    tbuf_free(&p->out);
    free(p->mask);
    free(p->S), free(p->z), free(p->wk), free(p->wv), free(p->wpos);
    free(p->want);
    ref_hybrid_state_free(&p->fin);
}

/* Core arguments over tokens [t0, t0 + n), carrying the problem's state
 * (position t0) or none. */
typedef struct call {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} call;

static void call_init(call *k, hprob *p, int64_t t0, int64_t n, int with_state)
{
    const hcase *c = &p->c;
    k->q = ref_tokens(ref_view4(&p->q, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_view4(&p->k, p->sk, c->B, c->L, c->Hkv, c->Dk), t0, n);
    k->v = ref_tokens(ref_view4(&p->v, p->sv, c->B, c->L, c->Hkv, c->Dv), t0, n);
    k->out = ref_tokens(ref_view4(&p->out, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d(p->mask + t0, LM_BOOL, LM_CPU, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.precision = c->precision;
    k->a.attention = LM_ATTENTION_HYBRID;
    k->a.window = (int)c->W;
    k->a.sinks = (int)c->s;
    k->a.window_gate = c->gate ? p->gate : NULL;
    if (with_state) {
        k->a.state = p->S, k->a.normalizer = p->z;
        k->a.window_keys = p->wk, k->a.window_values = p->wv, k->a.window_pos = p->wpos;
        k->a.position = t0;
    }
}

static void describe(char *s, size_t n, const hcase *c, const char *what)
{
    snprintf(s, n, "%s: dtype %d B %lld L %lld H %lld/%lld D %lld/%lld W %lld s %lld fm %d mask %d "
             "gate %d seq_first %d", what, (int)c->dtype, (long long)c->B, (long long)c->L,
             (long long)c->Hq, (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv,
             (long long)c->W, (long long)c->s, c->fm, c->mask, c->gate, c->seq_first);
}

static void check_out(hprob *p, const char *what)
{
    char d[256];
    describe(d, sizeof d, &p->c, what);
    ref_err e = ref_compare(&p->out, p->want, p->out.n);
    ref_note(p->c.dtype, e.rel);
    REF_CHECK(e, ref_bound(p->c.dtype), "(%s)", d);
}

/* The carried state against the reference's final one: S and z within fp32
 * accumulation (2e-5, as linear mode), the window exactly (fp32 copies of
 * the inputs, the positions). */
static void check_state(hprob *p, const char *what)
{
    char d[256];
    describe(d, sizeof d, &p->c, what);
    ref_err es = ref_compare_f32(p->S, p->fin.S, p->nS), ez = ref_compare_f32(p->z, p->fin.z, p->nz);
    REF_CHECK(es, 2e-5, "(final S, %s)", d);
    REF_CHECK(ez, 2e-5, "(final z, %s)", d);
    const int64_t slots = p->c.s + p->c.W;
    for (int64_t i = 0; i < p->nval; i++) {
        ck_assert_msg(p->wpos[i] == p->fin.pos[i], "slot %lld of head %lld: position code %d, expected %g (%s)",
                      (long long)(i % slots), (long long)(i / slots), (int)p->wpos[i],
                      p->fin.pos[i], d);
        if (p->fin.pos[i] <= 0)
            continue;
        for (int64_t x = 0; x < p->c.Dk; x++)
            ck_assert_msg(p->wk[i * p->c.Dk + x] == p->fin.keys[i * p->c.Dk + x],
                          "slot %lld key[%lld] differs (%s)", (long long)(i % slots), (long long)x, d);
        for (int64_t x = 0; x < p->c.Dv; x++)
            ck_assert_msg(p->wv[i * p->c.Dv + x] == p->fin.values[i * p->c.Dv + x],
                          "slot %lld value[%lld] differs (%s)", (long long)(i % slots), (long long)x, d);
    }
}

/* The whole sequence in one prefill, without a state and with one. */
static void check_case(const hcase *c)
{
    hprob p;
    hprob_init(&p, c);
    for (int with_state = 0; with_state < 2; with_state++) {
        call k;
        call_init(&k, &p, 0, c->L, with_state);
        tbuf_poison(&p.out);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill: %s", lm_last_error());
        check_out(&p, with_state ? "prefill from an empty state" : "prefill");
    }
    check_state(&p, "prefill");
    hprob_free(&p);
}

static const int64_t windows[][2] = { { 64, 4 }, { 16, 0 }, { 1, 0 }, { 1, 3 }, { 7, 2 }, { 100, 5 } };
#define NWINDOWS ((int)(sizeof windows / sizeof windows[0]))

START_TEST(test_lengths)
{
    ref_seed(101);
    for (int w = 0; w < NWINDOWS; w++) {
        const int64_t W = windows[w][0], s = windows[w][1];
        const int64_t Ls[] = { 1, W - 1, W, W + 1, s + W + 1, 1000, 4097 };
        for (size_t i = 0; i < sizeof Ls / sizeof Ls[0]; i++) {
            if (Ls[i] < 1)
                continue;
            hcase c = base_case();
            c.W = W, c.s = s, c.L = Ls[i];
            c.B = Ls[i] > 1000 ? 1 : 2;
            check_case(&c);
        }
    }
}
END_TEST

START_TEST(test_shapes)
{
    static const int64_t shapes[][4] = { /* Hq, Hkv, Dk, Dv */
        { 1, 1, 32, 32 }, { 8, 8, 16, 16 }, { 8, 2, 32, 32 }, { 4, 1, 24, 40 }, { 2, 2, 64, 8 },
        { 2, 1, 128, 128 } };
    ref_seed(102);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        hcase c = base_case();
        c.Hq = shapes[i][0], c.Hkv = shapes[i][1], c.Dk = shapes[i][2], c.Dv = shapes[i][3];
        c.L = 150;
        c.W = 20, c.s = 3;
        check_case(&c);
    }
}
END_TEST

START_TEST(test_dtypes_layouts)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16, LM_F16 };
    ref_seed(103);
    for (int d = 0; d < 3; d++)
        for (int seq_first = 0; seq_first < 2; seq_first++)
            for (int fm = 0; fm < 2; fm++) {
                hcase c = base_case();
                c.dtype = dts[d], c.seq_first = seq_first, c.fm = fm;
                c.L = 301, c.W = 32, c.s = 2, c.B = 3;
                check_case(&c);
            }
}
END_TEST

/* A masked key leaves both sets; the window stays the positions (t-W, t]. */
START_TEST(test_masks)
{
    ref_seed(104);
    for (int w = 0; w < NWINDOWS; w++) {
        hcase c = base_case();
        c.W = windows[w][0], c.s = windows[w][1];
        c.L = 500, c.mask = 1, c.B = 3;
        check_case(&c);
    }
    /* Every key of batch row 1 masked: its outputs are 0, no slot is valid. */
    hcase c = base_case();
    c.mask = 1, c.L = 90;
    hprob p;
    hprob_init(&p, &c);
    for (int64_t t = 0; t < c.L; t++)
        p.mask[c.L + t] = 1;
    call k;
    call_init(&k, &p, 0, c.L, 1);
    tbuf_poison(&p.out);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    const int64_t row = c.L * c.Hq * c.Dv;
    for (int64_t i = row; i < 2 * row; i++)
        ck_assert_msg(tbuf_get(&p.out, i) == 0.0, "output %lld of a fully masked row is %g",
                      (long long)i, tbuf_get(&p.out, i));
    for (int64_t i = c.Hkv * (c.s + c.W); i < 2 * c.Hkv * (c.s + c.W); i++)
        ck_assert_msg(p.wpos[i] <= 0, "a fully masked row left a slot with a key");
    hprob_free(&p);
}
END_TEST

/* Runs the problem in parts [cuts[i], cuts[i+1]) carrying the state, each
 * part a prefill (or one decode step per token when steps). */
static void run_parts(hprob *p, const int64_t *cuts, int n, int steps)
{
    state_clear(p);
    tbuf_poison(&p->out);
    for (int i = 0; i + 1 < n; i++) {
        const int64_t t0 = cuts[i], len = cuts[i + 1] - cuts[i];
        if (steps) {
            for (int64_t t = t0; t < t0 + len; t++) {
                call k;
                call_init(&k, p, t, 1, 1);
                k.a.position = t % 3; /* decode reads each row's position from its window */
                ck_assert_msg(lm_linear_attn_decode(&k.a, NULL) == LM_OK, "decode at %lld: %s",
                              (long long)t, lm_last_error());
            }
        } else {
            call k;
            call_init(&k, p, t0, len, 1);
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill [%lld, %lld): %s",
                          (long long)t0, (long long)(t0 + len), lm_last_error());
        }
    }
}

/* prefill == split prefill (cuts around W, s and the chunk) == decode steps,
 * with masks, checked against the reference with the final state. */
START_TEST(test_split_and_steps)
{
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    ref_seed(105);
    for (int w = 0; w < NWINDOWS; w++)
        for (int d = 0; d < 2; d++) {
            hcase c = base_case();
            c.W = windows[w][0], c.s = windows[w][1];
            c.dtype = dts[d];
            c.L = 260, c.mask = 1, c.Hq = 4, c.Hkv = 1;
            hprob p;
            hprob_init(&p, &c);
            const int64_t W = c.W, s = c.s;
            const int64_t cut_sets[][4] = { { 1, 0, 0, 0 }, { W - 1 > 0 ? W - 1 : 2, 0, 0, 0 },
                                            { W, 0, 0, 0 }, { W + 1, 0, 0, 0 }, { s + 1, s + W, 0, 0 },
                                            { 63, 64, 130, 0 }, { 3, 100, 101, 259 } };
            for (size_t i = 0; i < sizeof cut_sets / sizeof cut_sets[0]; i++) {
                int64_t cuts[6] = { 0 };
                int n = 1;
                for (int j = 0; j < 4 && cut_sets[i][j]; j++)
                    if (cut_sets[i][j] > cuts[n - 1] && cut_sets[i][j] < c.L)
                        cuts[n++] = cut_sets[i][j];
                cuts[n++] = c.L;
                run_parts(&p, cuts, n, 0);
                check_out(&p, "split prefill");
                check_state(&p, "split prefill");
            }
            const int64_t all[] = { 0, c.L };
            run_parts(&p, all, 2, 1);
            check_out(&p, "decode steps");
            check_state(&p, "decode steps");
            /* A prefill, steps, a prefill. */
            const int64_t mixed[] = { 0, 70, 75 + W, c.L };
            state_clear(&p);
            tbuf_poison(&p.out);
            run_parts(&p, mixed, 2, 0);
            for (int64_t t = mixed[1]; t < mixed[2]; t++) {
                call k;
                call_init(&k, &p, t, 1, 1);
                ck_assert(lm_linear_attn_decode(&k.a, NULL) == LM_OK);
            }
            call k;
            call_init(&k, &p, mixed[2], c.L - mixed[2], 1);
            ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
            check_out(&p, "prefill, steps, prefill");
            check_state(&p, "prefill, steps, prefill");
            hprob_free(&p);
        }
}
END_TEST

/* W >= L: every key is in the window, so the output is softmax attention
 * (gamma cancels); checked against a direct softmax. */
START_TEST(test_full_window_is_softmax)
{
    ref_seed(106);
    hcase c = base_case();
    c.L = 50, c.W = 64, c.s = 0, c.Hq = c.Hkv = 2;
    hprob p;
    hprob_init(&p, &c);
    call k;
    call_init(&k, &p, 0, c.L, 0);
    ck_assert(lm_linear_attn_prefill(&k.a, NULL) == LM_OK);
    double *soft = calloc((size_t)p.out.n, sizeof(double));
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t h = 0; h < c.Hq; h++)
            for (int64_t t = 0; t < c.L; t++) {
                double l[64], m = -INFINITY, sum = 0;
                for (int64_t j = 0; j <= t; j++) {
                    l[j] = 0;
                    for (int64_t x = 0; x < c.Dk; x++)
                        l[j] += p.q.ref[b * p.sq[0] + t * p.sq[1] + h * p.sq[2] + x] *
                                p.k.ref[b * p.sk[0] + j * p.sk[1] + h * p.sk[2] + x];
                    l[j] /= sqrt((double)c.Dk);
                    m = l[j] > m ? l[j] : m;
                }
                double *o = soft + ((b * c.L + t) * c.Hq + h) * c.Dv;
                for (int64_t j = 0; j <= t; j++) {
                    const double a = exp(l[j] - m);
                    sum += a;
                    for (int64_t e = 0; e < c.Dv; e++)
                        o[e] += a * p.v.ref[b * p.sv[0] + j * p.sv[1] + h * p.sv[2] + e];
                }
                for (int64_t e = 0; e < c.Dv; e++)
                    o[e] /= sum;
            }
    /* eps / (gamma sum) is below 1e-6 of the output here, well inside the bound. */
    ref_err e = ref_compare(&p.out, soft, p.out.n);
    REF_CHECK(e, 1e-5, "(hybrid with W >= L vs softmax)");
    free(soft);
    hprob_free(&p);
}
END_TEST

/* Compensated accumulation of the evicted tokens' state (precision on, and
 * auto past 65536 tokens) agrees with the reference. */
START_TEST(test_precision)
{
    ref_seed(107);
    static const lm_precision modes[] = { LM_PRECISION_ON, LM_PRECISION_AUTO };
    for (int i = 0; i < 2; i++) {
        hcase c = base_case();
        c.B = 1, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 16;
        c.L = i ? 70000 : 3000;
        c.precision = modes[i];
        check_case(&c);
    }
}
END_TEST

/* Every bad argument gets a clear status and message, and changes neither
 * the output nor any part of the state. */
START_TEST(test_bad_arguments)
{
    ref_seed(108);
    hcase c = base_case();
    c.L = 40;
    hprob p;
    hprob_init(&p, &c);
    call k0;
    call_init(&k0, &p, 0, 20, 1);
    ck_assert(lm_linear_attn_prefill(&k0.a, NULL) == LM_OK);
    /* A snapshot of everything a call may write. */
    const size_t nb = (size_t)(p.nS + p.nz + p.nwk + p.nwv + p.nval) * 4;
    char *before = malloc(nb + (size_t)p.out.n * sizeof(float));
    char *after = malloc(nb + (size_t)p.out.n * sizeof(float));
    tbuf_poison(&p.out);
#define SNAP(dst)                                                                           \
    do {                                                                                    \
        char *d_ = (dst);                                                                   \
        memcpy(d_, p.S, (size_t)p.nS * 4), d_ += p.nS * 4;                                  \
        memcpy(d_, p.z, (size_t)p.nz * 4), d_ += p.nz * 4;                                  \
        memcpy(d_, p.wk, (size_t)p.nwk * 4), d_ += p.nwk * 4;                               \
        memcpy(d_, p.wv, (size_t)p.nwv * 4), d_ += p.nwv * 4;                               \
        memcpy(d_, p.wpos, (size_t)p.nval * 4), d_ += p.nval * 4;                           \
        memcpy(d_, p.out.data, (size_t)p.out.n * 4);                                        \
    } while (0)
    SNAP(before);
    const size_t all = nb + (size_t)p.out.n * 4;
    float decay[8] = { 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f };
    float bad_gate[8] = { 0, 0, NAN, 0 };
    for (int i = 0; i < 11; i++) {
        call k;
        call_init(&k, &p, 20, 20, 1);
        lm_status want = LM_ERR_INVALID_ARG;
        const char *needle = "";
        switch (i) {
        case 0: k.a.window = 0, needle = "window must be in 1.."; break;
        case 1: k.a.window = -3, needle = "window must be in 1.."; break;
        case 2: k.a.sinks = -1, needle = "sinks must be in 0.."; break;
        case 3: k.a.is_causal = 0, want = LM_ERR_UNSUPPORTED, needle = "hybrid attention is causal"; break;
        case 4: k.a.normalize = 0, needle = "set normalize = 1"; break;
        case 5: k.a.decay = decay, want = LM_ERR_UNSUPPORTED, needle = "has no decay"; break;
        case 6: k.a.window_pos = NULL, needle = "exactly when state is"; break;
        case 7: k.a.state = k.a.normalizer = NULL, needle = "exactly when state is"; break;
        case 8: k.a.attention = (lm_attention)7, needle = "attention 7 is not one of"; break;
        case 9: k.a.window_gate = bad_gate, needle = "window_gate[2]"; break;
        case 10: k.a.sinks = (1 << 20) + 1, needle = "sinks must be in 0.."; break;
        }
        EXPECT_ERR(lm_linear_attn_prefill(&k.a, NULL), want, needle);
        SNAP(after);
        ck_assert_msg(!memcmp(before, after, all), "case %d changed the state or the output", i);
    }
    /* Decode refuses a hybrid step without a state; the backward has no hybrid. */
    call k;
    call_init(&k, &p, 20, 1, 0);
    EXPECT_ERR(lm_linear_attn_decode(&k.a, NULL), LM_ERR_INVALID_ARG, "a state");
    call_init(&k, &p, 0, 20, 0);
    tbuf dq = tbuf_new(c.dtype, c.B * 20 * c.Hq * c.Dk), dk = tbuf_new(c.dtype, c.B * 20 * c.Hkv * c.Dk);
    tbuf dv = tbuf_new(c.dtype, c.B * 20 * c.Hkv * c.Dv), dout = tbuf_new(c.dtype, c.B * 20 * c.Hq * c.Dv);
    lm_tensor tq = lm_tensor_4d(dq.data, c.dtype, LM_CPU, c.B, 20, c.Hq, c.Dk);
    lm_tensor tk = lm_tensor_4d(dk.data, c.dtype, LM_CPU, c.B, 20, c.Hkv, c.Dk);
    lm_tensor tv = lm_tensor_4d(dv.data, c.dtype, LM_CPU, c.B, 20, c.Hkv, c.Dv);
    lm_tensor to = lm_tensor_4d(dout.data, c.dtype, LM_CPU, c.B, 20, c.Hq, c.Dv);
    lm_core_grads g = { LM_SIZED(lm_core_grads), .dout = &to, .dq = &tq, .dk = &tk, .dv = &tv };
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &g, NULL), LM_ERR_UNSUPPORTED, "no backward in the C library");
    call_init(&k, &p, 0, 20, 1);
    EXPECT_ERR(lm_linear_attn_absorb(&k.a, NULL), LM_ERR_UNSUPPORTED, "hybrid attention's window");
    size_t wsb = 0;
    EXPECT_ERR(lm_linear_attn_prefill_workspace(&k.a, &wsb), LM_ERR_UNSUPPORTED, "allocates its own");
    EXPECT_ERR(lm_linear_attn_prefill_ws(&k.a, &wsb, sizeof wsb, NULL), LM_ERR_UNSUPPORTED,
               "allocates its own");
    tbuf_free(&dq), tbuf_free(&dk), tbuf_free(&dv), tbuf_free(&dout);
#undef SNAP
    free(before);
    free(after);
    hprob_free(&p);
}
END_TEST

/* An old caller's lm_core_args (no hybrid fields) runs linear attention, and
 * the defaults set the hybrid's W and s. */
START_TEST(test_abi_defaults)
{
    lm_core_args a;
    ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
    ck_assert_int_eq(a.attention, LM_ATTENTION_LINEAR);
    ck_assert_int_eq(a.window, LM_HYBRID_WINDOW_DEFAULT);
    ck_assert_int_eq(a.sinks, LM_HYBRID_SINKS_DEFAULT);
    ck_assert_ptr_null(a.window_gate);
    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, 64, 4), LM_OK);
    ck_assert_int_eq(cfg.attention, LM_ATTENTION_LINEAR);
    ck_assert_int_eq(cfg.window, LM_HYBRID_WINDOW_DEFAULT);
    ck_assert_int_eq(cfg.sinks, LM_HYBRID_SINKS_DEFAULT);

    ref_seed(109);
    hcase c = base_case();
    c.L = 30;
    hprob p;
    hprob_init(&p, &c);
    call k;
    call_init(&k, &p, 0, c.L, 0);
    k.a.struct_size = (uint32_t)offsetof(lm_core_args, attention); /* the release before hybrid */
    k.a.attention = LM_ATTENTION_HYBRID;                            /* beyond it: not read */
    tbuf_poison(&p.out);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    double *lin = malloc((size_t)p.out.n * sizeof(double));
    ref_problem r = { .B = c.B, .L = c.L, .Lk = c.L, .Hq = c.Hq, .Hkv = c.Hkv, .Dk = c.Dk, .Dv = c.Dv,
                      .q = { p.q.ref, { p.sq[0], p.sq[1], p.sq[2], p.sq[3] } },
                      .k = { p.k.ref, { p.sk[0], p.sk[1], p.sk[2], p.sk[3] } },
                      .v = { p.v.ref, { p.sv[0], p.sv[1], p.sv[2], p.sv[3] } },
                      .causal = 1, .feature_map = c.fm, .normalize = 1, .eps = 1e-6,
                      .scale = 1.0 / sqrt((double)c.Dk) };
    ref_attend(&r, lin, NULL, NULL);
    ref_err e = ref_compare(&p.out, lin, p.out.n);
    REF_CHECK(e, ref_bound(c.dtype), "(a short lm_core_args is linear attention)");
    free(lin);
    hprob_free(&p);
}
END_TEST

Suite *hybrid_suite(void)
{
    Suite *s = suite_create("hybrid");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_dtypes_layouts);
    tcase_add_test(tc, test_masks);
    tcase_add_test(tc, test_split_and_steps);
    tcase_add_test(tc, test_full_window_is_softmax);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_abi_defaults);
    suite_add_tcase(s, tc);
    return s;
}
