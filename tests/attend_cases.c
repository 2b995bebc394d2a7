/*
 * attend_cases.c - the attention core's problems, checks and case grid
 * (attend_cases.h), for any backend.
 *
 * Inputs: q, k uniform in [-2, 2) for elu+1 (else [-0.5, 1.5): relu and
 * identity keep the normaliser away from zero), v in [-1, 1), a mask of 25%
 * of the keys, decays 1 - 2^-(3 + h % 6) per kv head, an initial state S in
 * [-1, 1) and z in [1, 5). Outputs start as NaN before every run and must
 * all be written.
 *
 * The grid is the union of what the CPU and GPU suites ran when each had
 * its own copy; the comment of each family says where its values come from.
 */
#include "attend_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void atprob_init(atprob *p, const test_dev *dev, const atcase *c)
{
    memset(p, 0, sizeof *p);
    p->dev = dev;
    p->c = *c;
    const int64_t B = c->B, Lk = c->causal ? c->L : c->Lk;
    p->c.Lk = Lk;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->q = tbuf_new(c->dtype, B * c->L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * Lk * c->Hkv * c->Dv);
    tbuf_random(&p->q, lo, hi);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->sq, B, c->L, c->Hq, c->Dk, c->seq_first);
    ref_strides4(p->sk, B, Lk, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, Lk, c->Hkv, c->Dv, c->seq_first);
    ref_strides4(p->so, B, c->L, c->Hq, c->Dv, 0);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        ck_assert_ptr_nonnull(p->mask);
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    ck_assert(c->Hkv <= 64);
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    p->nout = B * c->L * c->Hq * c->Dv, p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->S0 = calloc((size_t)p->nS, sizeof(float));
    p->z0 = calloc((size_t)p->nz, sizeof(float));
    double *S0d = calloc((size_t)p->nS, sizeof(double)), *z0d = calloc((size_t)p->nz, sizeof(double));
    p->want = malloc((size_t)p->nout * sizeof(double));
    p->want_S = malloc((size_t)p->nS * sizeof(double));
    p->want_z = malloc((size_t)p->nz * sizeof(double));
    ck_assert(p->S0 && p->z0 && S0d && z0d && p->want && p->want_S && p->want_z);
    for (int64_t i = 0; c->state_in && i < p->nS; i++)
        S0d[i] = p->S0[i] = (float)(ref_uniform() * 2 - 1);
    for (int64_t i = 0; c->state_in && i < p->nz; i++)
        z0d[i] = p->z0[i] = (float)(1 + 4 * ref_uniform());
    ref_problem r = { .B = B, .L = c->L, .Lk = Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { p->q.ref, { p->sq[0], p->sq[1], p->sq[2], p->sq[3] } },
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .state = c->state_in ? S0d : NULL,
                      .normalizer = c->state_in ? z0d : NULL, .decay = c->decay ? p->decay : NULL,
                      .causal = c->causal, .feature_map = c->fm, .normalize = c->normalize,
                      .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_attend(&r, p->want, p->want_S, p->want_z);
    free(S0d);
    free(z0d);
    p->dq = test_dev_input(dev, p->q.data, tbuf_bytes(&p->q));
    p->dk = test_dev_input(dev, p->k.data, tbuf_bytes(&p->k));
    p->dv = test_dev_input(dev, p->v.data, tbuf_bytes(&p->v));
    p->dmask = test_dev_input(dev, p->mask, (size_t)(B * Lk));
}

void atprob_free(atprob *p)
{
    test_dev_drop(p->dev, p->dq), test_dev_drop(p->dev, p->dk), test_dev_drop(p->dev, p->dv);
    test_dev_drop(p->dev, p->dmask);
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v);
    free(p->mask);
    free(p->S0), free(p->z0);
    free(p->want), free(p->want_S), free(p->want_z);
}

/* ---- outputs and state on a backend ---- */

void atrun_new(atrun *r, const atprob *p, const test_dev *dev)
{
    r->dev = dev;
    r->out = dev->alloc((size_t)p->nout * lm_dtype_size(p->c.dtype));
    r->S = dev->alloc((size_t)p->nS * sizeof(float));
    r->z = dev->alloc((size_t)p->nz * sizeof(float));
    atrun_reset(r, p);
}

void atrun_reset(atrun *r, const atprob *p)
{
    tbuf nan = tbuf_new(p->c.dtype, p->nout);
    tbuf_poison(&nan);
    r->dev->upload(r->out, nan.data, tbuf_bytes(&nan));
    tbuf_free(&nan);
    r->dev->upload(r->S, p->S0, (size_t)p->nS * sizeof(float));
    r->dev->upload(r->z, p->z0, (size_t)p->nz * sizeof(float));
}

void atrun_free(atrun *r)
{
    r->dev->release(r->out), r->dev->release(r->S), r->dev->release(r->z);
}

tbuf atrun_out(const atprob *p, const atrun *r)
{
    tbuf got = tbuf_new(p->c.dtype, p->nout);
    r->dev->download(got.data, r->out, tbuf_bytes(&got));
    return got;
}

void atrun_state(const atprob *p, const atrun *r, float *S, float *z)
{
    r->dev->download(S, r->S, (size_t)p->nS * sizeof(float));
    r->dev->download(z, r->z, (size_t)p->nz * sizeof(float));
}

/* ---- calls and runs ---- */

void atcall_init(atcall *k, const atprob *p, const atrun *r, int64_t t0, int64_t n)
{
    const atcase *c = &p->c;
    const lm_device where = r->dev->device;
    const int host = where == LM_CPU;
    const int64_t nk = c->causal ? n : c->Lk, k0 = c->causal ? t0 : 0;
    memset(k, 0, sizeof *k);
    k->q = ref_tokens(ref_tensor4(host ? p->q.data : p->dq, c->dtype, where, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_tensor4(host ? p->k.data : p->dk, c->dtype, where, p->sk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->v = ref_tokens(ref_tensor4(host ? p->v.data : p->dv, c->dtype, where, p->sv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    k->out = ref_tokens(ref_tensor4(r->out, c->dtype, where, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d((host ? p->mask : p->dmask) + k0, LM_BOOL, where, c->B, nk);
        k->mask.stride[0] = c->Lk;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = r->S, k->a.normalizer = r->z, k->a.position = t0;
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

void attend_run(const atprob *p, atrun *r, const int64_t *cuts, int n, int64_t end)
{
    atrun_reset(r, p);
    atcall k;
    int64_t t0 = 0;
    for (int i = 0; i < n; t0 = cuts[i++]) {
        atcall_init(&k, p, r, t0, cuts[i] - t0);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "prefill [%lld, %lld) on device %d: %s",
                      (long long)t0, (long long)cuts[i], (int)r->dev->device, lm_last_error());
    }
    for (int64_t t = t0; t < end; t++) {
        atcall_init(&k, p, r, t, 1);
        ck_assert_msg(lm_linear_attn_decode(&k.a, NULL) == LM_OK, "decode at %lld on device %d: %s",
                      (long long)t, (int)r->dev->device, lm_last_error());
    }
}

/* ---- checks ---- */

void attend_describe(char *s, size_t n, const atcase *c)
{
    snprintf(s, n, "dt %d B %lld L %lld/%lld H %lld/%lld D %lld/%lld c%d fm%d n%d dec%d m%d st%d sf%d pr%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->Hq,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal, c->fm, c->normalize,
             c->decay, c->mask, c->state_in, c->seq_first, (int)c->precision);
}

double attend_out_err(const atprob *p, const atrun *r)
{
    tbuf got = atrun_out(p, r);
    const ref_err e = ref_compare(&got, p->want, p->nout);
    tbuf_free(&got);
    ck_assert_msg(e.unwritten == 0, "%lld outputs not written on device %d", (long long)e.unwritten,
                  (int)r->dev->device);
    return e.rel;
}

/* The grid entry running now, named in messages. */
static const char *grid_name = "";

double attend_check(const atprob *p, const atrun *r, const char *what)
{
    const atcase *c = &p->c;
    char d[200];
    attend_describe(d, sizeof d, c);
    tbuf got = atrun_out(p, r);
    const ref_err e = ref_compare(&got, p->want, p->nout);
    tbuf_free(&got);
    if (r->dev->note)
        r->dev->note(d, c->dtype, p->want, p->nout, e.rel);
    REF_CHECK(e, r->dev->out_bound(c->dtype, p->want, p->nout), "(%s, %s: %s)", grid_name, what, d);
    float *S = malloc((size_t)p->nS * sizeof(float)), *z = malloc((size_t)p->nz * sizeof(float));
    ck_assert(S && z);
    atrun_state(p, r, S, z);
    const ref_err es = ref_compare_f32(S, p->want_S, p->nS), ez = ref_compare_f32(z, p->want_z, p->nz);
    REF_CHECK(es, r->dev->state_bound(c->dtype), "(final state S, %s, %s: %s)", grid_name, what, d);
    REF_CHECK(ez, r->dev->state_bound(c->dtype), "(final normaliser z, %s, %s: %s)", grid_name, what, d);
    free(S), free(z);
    return e.rel;
}

/* ---- the grid ---- */

/* The sequence in prefill parts ending at cuts (then decode steps to L) on
 * e's backend, checked; with n = 1 and cuts = {L} (one prefill) also e's own
 * check. */
static void check_parts(const attend_env *e, const atcase *c, const int64_t *cuts, int n, const char *what)
{
    atprob p;
    atprob_init(&p, e->dev, c);
    atrun r;
    atrun_new(&r, &p, e->dev);
    attend_run(&p, &r, cuts, n, c->L);
    const double err = attend_check(&p, &r, what);
    atrun_free(&r);
    if (n == 1 && cuts[0] == c->L && e->also)
        e->also(&p, err);
    atprob_free(&p);
}

static void check_whole(const attend_env *e, const atcase *c)
{
    check_parts(e, c, &c->L, 1, "one prefill");
}

/* Lengths around the chunk (64) and past 4096, causal and bidirectional,
 * B = 1 and 3 (CPU: these lengths x B, causal; GPU: all but 2, both
 * directions, B = 2 or 1). small: the first four, B = 2. */
static void grid_lengths(const attend_env *e)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 2, 127, 1000, 4097 };
    for (int i = 0; i < (e->small ? 4 : 8); i++)
        for (int causal = 1; causal >= 0; causal--)
            for (int64_t B = e->small ? 2 : 1; B <= 3; B += 2) {
                atcase c = e->base;
                c.L = c.Lk = Ls[i];
                c.causal = causal, c.B = B;
                check_whole(e, &c);
            }
}

/* Head dims Dk / Dv, equal and not, powers of two and ragged (both suites'
 * lists), both directions, L = 200 (CPU: 130, causal). small: the first three. */
static void grid_head_dims(const attend_env *e)
{
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 256, 256 }, { 64, 128 }, { 128, 64 }, { 256, 64 },
                                       { 32, 32 },  { 96, 40 },   { 60, 44 },   { 64, 32 },  { 32, 128 } };
    for (int i = 0; i < (e->small ? 3 : 11); i++)
        for (int causal = 1; causal >= 0; causal--) {
            atcase c = e->base;
            c.Dk = dims[i][0], c.Dv = dims[i][1];
            c.causal = causal;
            c.L = c.Lk = e->small ? 70 : 200;
            check_whole(e, &c);
        }
}

/* GQA: Hq / Hkv from MHA to one kv head, B = 3, L = 300 (CPU: 100). small:
 * the first two. */
static void grid_heads(const attend_env *e)
{
    static const int64_t heads[][2] = { { 8, 8 }, { 8, 2 }, { 8, 1 }, { 1, 1 }, { 4, 4 } };
    for (int i = 0; i < (e->small ? 2 : 5); i++)
        for (int causal = 1; causal >= 0; causal--) {
            atcase c = e->base;
            c.Hq = heads[i][0], c.Hkv = heads[i][1];
            c.causal = causal, c.B = 3;
            c.L = c.Lk = e->small ? 70 : 300;
            check_whole(e, &c);
        }
}

/* Every combination of the modes of docs/DESIGN.md §2 (identity only
 * unnormalised: its normaliser has no sign; decay only causal), 77 keys for
 * the bidirectional ones. small: no initial state, no relu. */
static void grid_modes(const attend_env *e)
{
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int st = 0; st < 2; st++) {
                            if (fm == LM_FEATURE_IDENTITY && norm)
                                continue;
                            if (e->small && (st || fm == LM_FEATURE_RELU))
                                continue;
                            atcase c = e->base;
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask, c.state_in = st;
                            c.B = 2, c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_whole(e, &c);
                        }
}

/* bf16, f16, f32 at 1, 65, 1000 tokens, head dims 64 to 256, in four modes:
 * causal; with decay (Dk 64); with decay and an initial state;
 * bidirectional with a mask (CPU: Dk 64, no state with decay; GPU: decay
 * with a state). small: 1 and 65 tokens, Dk 64, not decay without a state. */
static void grid_dtypes(const attend_env *e)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t Ls[] = { 1, 65, 1000 };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < (e->small ? 2 : 3); j++)
            for (int mode = 0; mode < 4; mode++)
                for (int64_t dk = 64; dk <= (e->small ? 64 : 256); dk *= 2) {
                    if (mode == 1 && (e->small || dk > 64)) /* the CPU suite's mode, at its Dk */
                        continue;
                    atcase c = e->base;
                    c.dtype = dts[i];
                    c.L = c.Lk = Ls[j];
                    c.causal = mode != 3;
                    c.decay = mode == 1 || mode == 2;
                    c.state_in = mode == 2;
                    c.mask = mode == 3;
                    c.Dk = c.Dv = dk;
                    check_whole(e, &c);
                }
}

/* Bidirectional cross-attention: fewer and more keys than queries, one query,
 * one key (the CPU suite's; not in small). */
static void grid_cross(const attend_env *e)
{
    static const int64_t sizes[][2] = { { 37, 300 }, { 300, 37 }, { 1, 65 }, { 64, 1 } };
    for (int i = 0; i < (e->small ? 0 : 4); i++) {
        atcase c = e->base;
        c.causal = 0;
        c.L = sizes[i][0], c.Lk = sizes[i][1];
        c.mask = i & 1;
        c.Dk = 64, c.Dv = 32;
        check_whole(e, &c);
    }
}

/* Sequence-first memory ([L, B, H, D]) read through strides, no copy (the
 * CPU suite's: B = 3, 97 tokens; not in small); and B * H so small that the
 * GPU cuts the sequence into segments (ABSORB, scan, CAUSAL), batch- and
 * sequence-first, with a mask, decay when causal, a state, compensated or
 * auto precision (the GPU suite's: 3000 tokens, small 1100). */
static void grid_layouts(const attend_env *e)
{
    for (int causal = 1; causal >= 0 && !e->small; causal--) {
        atcase c = e->base;
        c.seq_first = 1, c.causal = causal;
        c.B = 3, c.L = c.Lk = 97;
        check_whole(e, &c);
    }
    for (int sf = 0; sf < 2; sf++)
        for (int causal = 1; causal >= 0; causal--) {
            atcase c = e->base;
            c.seq_first = sf, c.causal = causal;
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 128;
            c.L = c.Lk = e->small ? 1100 : 3000;
            c.mask = 1, c.decay = causal, c.state_in = 1;
            c.precision = sf ? LM_PRECISION_ON : LM_PRECISION_AUTO;
            check_whole(e, &c);
        }
}

/* Compensated accumulation off and on at 4097 tokens and auto past 65536
 * (the CPU suite's, one head; not in small); and on, on the shapes the GPU's
 * v2 prefill takes (Dk = Dv = 64 and 128, no decay): GQA, a mask, an initial
 * state, ragged lengths, segments (B * H small), every feature map, both
 * directions (the GPU suite's; small: 1100 tokens, elu+1). */
static void grid_precision(const attend_env *e)
{
    static const lm_precision modes[] = { LM_PRECISION_OFF, LM_PRECISION_ON, LM_PRECISION_AUTO };
    for (int i = 0; i < (e->small ? 0 : 3); i++) {
        atcase c = e->base;
        c.B = 1, c.Hq = c.Hkv = 1;
        c.L = c.Lk = i == 2 ? 70000 : 4097;
        c.precision = modes[i];
        c.decay = i == 1;
        check_whole(e, &c);
    }
    for (int64_t dk = 64; dk <= 128; dk *= 2)
        for (int fm = 0; fm < (e->small ? 1 : 3); fm++)
            for (int causal = 1; causal >= 0; causal--) {
                atcase c = e->base;
                c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = dk;
                c.L = c.Lk = e->small ? 1100 : 3000 + 17 * fm;
                c.causal = causal, c.mask = 1, c.state_in = 1;
                c.fm = fm, c.normalize = fm != LM_FEATURE_IDENTITY;
                c.precision = LM_PRECISION_ON;
                check_whole(e, &c);
            }
}

/* One prefill == two with the state handed over == decode steps only: f32
 * and bf16, plain and with decay and a mask, 200 tokens cut at 1, 64, 100,
 * 199, and all 200 as decode steps (the CPU suite's; not in small); and
 * 1000 tokens with a mask and a state, cut at 1, 64, 100, 777 with and
 * without decay (the GPU suite's; small: the first two). */
static void grid_handover(const attend_env *e)
{
    static const int64_t splits[] = { 1, 64, 100, 199 }, cuts[] = { 1, 64, 100, 777 };
    static const lm_dtype dts[] = { LM_F32, LM_BF16 };
    for (int d = 0; d < (e->small ? 0 : 2); d++)
        for (int mode = 0; mode < 2; mode++) {
            atcase c = e->base;
            c.dtype = dts[d];
            c.L = c.Lk = 200;
            c.B = 2, c.Hq = 8, c.Hkv = 2;
            c.decay = mode, c.mask = mode;
            for (int s = 0; s < 4; s++) {
                const int64_t two[] = { splits[s], c.L };
                check_parts(e, &c, two, 2, "two prefills");
            }
            check_parts(e, &c, NULL, 0, "decode steps only");
        }
    for (int i = 0; i < (e->small ? 2 : 4); i++) {
        atcase c = e->base;
        c.L = c.Lk = 1000, c.decay = i % 2, c.mask = 1, c.state_in = 1;
        const int64_t two[] = { cuts[i], c.L };
        check_parts(e, &c, two, 2, "two prefills");
    }
}

int attend_decode_case(const attend_env *e, int i, atcase *c, int64_t *L0)
{
    if (i >= (e->small ? 2 : 6))
        return 0;
    *c = e->base;
    c->B = 2, c->Hq = 8, c->Hkv = i % 3 == 2 ? 1 : 2;
    c->Dk = c->Dv = i % 2 ? 128 : 64;
    c->decay = i % 2, c->mask = i >= 2, c->state_in = i >= 4;
    c->fm = i == 3 ? LM_FEATURE_RELU : LM_FEATURE_ELU1;
    c->L = c->Lk = 70;
    *L0 = i == 5 ? 0 : 64;
    return 1;
}

/* A prefill of 64 tokens (or none) then decode steps to 70: GQA, Dk 64 and
 * 128, decay, masks, initial states, relu (the GPU suite's; small: the first
 * two). */
static void grid_decode(const attend_env *e)
{
    atcase c;
    int64_t L0;
    for (int i = 0; attend_decode_case(e, i, &c, &L0); i++)
        check_parts(e, &c, &L0, L0 > 0, "prefill then decode steps");
}

const attend_grid attend_grids[] = {
    { "lengths", grid_lengths }, { "head dims", grid_head_dims }, { "heads", grid_heads },
    { "modes", grid_modes },     { "dtypes", grid_dtypes },       { "cross-attention", grid_cross },
    { "layouts", grid_layouts }, { "precision", grid_precision }, { "handover", grid_handover },
    { "decode", grid_decode },
};
const int attend_ngrids = (int)(sizeof attend_grids / sizeof attend_grids[0]);

void attend_grid_run(int i, const attend_env *e, uint64_t seed)
{
    ck_assert(i >= 0 && i < attend_ngrids);
    ref_seed(seed + (uint64_t)i);
    grid_name = attend_grids[i].name;
    attend_grids[i].run(e);
    grid_name = "";
}
