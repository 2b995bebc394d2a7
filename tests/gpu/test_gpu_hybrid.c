/*
 * test_gpu_hybrid.c - hybrid attention (docs/DESIGN.md §9) on CUDA against the
 * float64 reference (ref_hybrid) and the CPU backend: lengths around W and s
 * at several (W, s) incl. s = 0 and W = 1, dtypes, head dims, GQA, masks,
 * wide windows (fewer queries per CTA), the final state (S, z, every window
 * slot), split prefill == decode steps == one prefill, one decode step
 * captured in a CUDA graph and replayed (positions come from the device
 * state), a refused call changing nothing, bit-identical reruns, and the
 * module (CPU vs CUDA handles).
 *
 * Bounds against float64: bf16 / f16 twice the module suites' out_bound
 * (the linear part's numerator is rounded to the output dtype once before
 * the division and the output once after it: at most sqrt(2) floors, plus
 * slack); the final state: state_bound (bf16: phi(k) rounded for the tensor
 * cores, as in the linear suite); f32 1e-4 (q, k, v and the weights as bf16 hi + lo: ~2^-17 per
 * operand, which exp turns into a relative error of the weights of that
 * times the logits' size).
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hcase {
    lm_dtype dtype;
    int64_t B, L, Hq, Hkv, Dk, Dv, W, s;
    int mask, seq_first;
} hcase;

static hcase base_case(void)
{
    hcase c = { .dtype = LM_BF16, .B = 2, .L = 300, .Hq = 4, .Hkv = 2, .Dk = 64, .Dv = 64, .W = 64, .s = 4 };
    return c;
}

static void describe(char *d, size_t n, const hcase *c)
{
    snprintf(d, n, "dt %d B %lld L %lld H %lld/%lld D %lld/%lld W %lld s %lld m%d sf%d", (int)c->dtype,
             (long long)c->B, (long long)c->L, (long long)c->Hq, (long long)c->Hkv, (long long)c->Dk,
             (long long)c->Dv, (long long)c->W, (long long)c->s, c->mask, c->seq_first);
}

typedef struct problem {
    hcase c;
    tbuf q, k, v;
    uint8_t *mask;
    float gate[64];
    int64_t sq[4], sk[4], sv[4], so[4];
    int64_t nS, nz, nwk, nwv, npos, nout;
    double *want;
    ref_hybrid_state fin;
    void *dq, *dk, *dv, *dmask;
} problem;

/* Device state buffers, zero = the empty state. */
typedef struct dstate {
    float *S, *z, *wk, *wv;
    int32_t *pos;
} dstate;

static void problem_init(problem *p, const hcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L, ns = c->s + c->W;
    p->q = tbuf_new(c->dtype, B * L * c->Hq * c->Dk);
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    tbuf_random(&p->q, -2, 2);
    tbuf_random(&p->k, -2, 2);
    tbuf_random(&p->v, -1, 1);
    strides4(p->sq, B, L, c->Hq, c->Dk, c->seq_first);
    strides4(p->sk, B, L, c->Hkv, c->Dk, c->seq_first);
    strides4(p->sv, B, L, c->Hkv, c->Dv, c->seq_first);
    strides4(p->so, B, L, c->Hq, c->Dv, 0);
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    for (int64_t h = 0; h < c->Hq; h++)
        p->gate[h] = (float)(4 * ref_uniform() - 2);
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->nwk = B * c->Hkv * ns * c->Dk, p->nwv = B * c->Hkv * ns * c->Dv, p->npos = B * c->Hkv * ns;
    p->nout = B * L * c->Hq * c->Dv;
    p->want = malloc((size_t)p->nout * sizeof(double));
    ref_hybrid_state_alloc(&p->fin, B * c->Hkv, c->Dk, c->Dv, ns);
    ref_problem r = { .B = B, .L = L, .Lk = L, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .q = { p->q.ref, { p->sq[0], p->sq[1], p->sq[2], p->sq[3] } },
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .causal = 1, .feature_map = LM_FEATURE_ELU1, .normalize = 1,
                      .eps = 1e-6, .scale = 1.0 / sqrt((double)c->Dk) };
    ref_hybrid(&r, c->W, c->s, p->gate, p->want, &p->fin);
    p->dq = dupload(&p->q);
    p->dk = dupload(&p->k);
    p->dv = dupload(&p->v);
    if (p->mask)
        p->dmask = dupload_bytes(p->mask, (size_t)(B * L));
}

static void problem_free(problem *p)
{
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v);
    free(p->mask);
    free(p->want);
    ref_hybrid_state_free(&p->fin);
    cudaFree(p->dq), cudaFree(p->dk), cudaFree(p->dv), cudaFree(p->dmask);
}

static dstate dstate_new(const problem *p)
{
    dstate d = { dmalloc((size_t)p->nS * 4), dmalloc((size_t)p->nz * 4), dmalloc((size_t)p->nwk * 4),
                 dmalloc((size_t)p->nwv * 4), dmalloc((size_t)p->npos * 4) };
    CUDA_OK(cudaMemset(d.S, 0, (size_t)p->nS * 4));
    CUDA_OK(cudaMemset(d.z, 0, (size_t)p->nz * 4));
    CUDA_OK(cudaMemset(d.wk, 0, (size_t)p->nwk * 4));
    CUDA_OK(cudaMemset(d.wv, 0, (size_t)p->nwv * 4));
    CUDA_OK(cudaMemset(d.pos, 0, (size_t)p->npos * 4));
    return d;
}

static void dstate_free(dstate *d)
{
    cudaFree(d->S), cudaFree(d->z), cudaFree(d->wk), cudaFree(d->wv), cudaFree(d->pos);
}

typedef struct call {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} call;

/* Tokens [t0, t0 + n) on dev (host buffers for LM_CPU), writing out, the state in st or none. */
static void call_init(call *k, const problem *p, lm_device dev, void *out, const dstate *st, int64_t t0,
                      int64_t n)
{
    const hcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    k->q = tokens(view4(gpu ? p->dq : p->q.data, c->dtype, dev, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = tokens(view4(gpu ? p->dk : p->k.data, c->dtype, dev, p->sk, c->B, c->L, c->Hkv, c->Dk), t0, n);
    k->v = tokens(view4(gpu ? p->dv : p->v.data, c->dtype, dev, p->sv, c->B, c->L, c->Hkv, c->Dv), t0, n);
    k->out = tokens(view4(out, c->dtype, dev, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d((uint8_t *)(gpu ? p->dmask : p->mask) + t0, LM_BOOL, dev, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.attention = LM_ATTENTION_HYBRID;
    k->a.window = (int)c->W, k->a.sinks = (int)c->s;
    k->a.window_gate = p->gate;
    if (st) {
        k->a.state = st->S, k->a.normalizer = st->z;
        k->a.window_keys = st->wk, k->a.window_values = st->wv, k->a.window_pos = st->pos;
        k->a.position = t0;
    }
}

static double bound_of(lm_dtype dt, double floor, int64_t n)
{
    return dt == LM_F32 ? 1e-4 : 2.0 * out_bound(dt, floor, n);
}

/* out (device) and the final state (device) against the reference. */
static double check_outputs(const problem *p, const void *dout, const dstate *st, const char *what)
{
    const hcase *c = &p->c;
    char d[200];
    describe(d, sizeof d, c);
    tbuf got = tbuf_new(c->dtype, p->nout);
    ddownload(&got, dout);
    const ref_err e = ref_compare(&got, p->want, p->nout);
    const double floor = out_floor(c->dtype, p->want, p->nout), bound = bound_of(c->dtype, floor, p->nout);
    gpu_note("hybrid", c->dtype, e.rel, floor);
    CHECK(e.unwritten == 0, "%s: %lld outputs not written (%s)", what, (long long)e.unwritten, d);
    CHECK(e.rel <= bound, "%s: error %.3g > %.3g (floor %.3g) (%s)", what, e.rel, bound, floor, d);
    tbuf_free(&got);
    if (!st)
        return e.rel;
    float *S = malloc((size_t)p->nS * 4), *z = malloc((size_t)p->nz * 4);
    float *wk = malloc((size_t)p->nwk * 4), *wv = malloc((size_t)p->nwv * 4);
    int32_t *pos = malloc((size_t)p->npos * 4);
    ddownload_bytes(S, st->S, (size_t)p->nS * 4);
    ddownload_bytes(z, st->z, (size_t)p->nz * 4);
    ddownload_bytes(wk, st->wk, (size_t)p->nwk * 4);
    ddownload_bytes(wv, st->wv, (size_t)p->nwv * 4);
    ddownload_bytes(pos, st->pos, (size_t)p->npos * 4);
    const ref_err es = ref_compare_f32(S, p->fin.S, p->nS), ez = ref_compare_f32(z, p->fin.z, p->nz);
    /* The evicted keys go through the linear prefill, whose bf16 path feeds
     * phi(k) to the tensor cores in bf16: the linear suite's state_bound. */
    const double sb = state_bound(c->dtype);
    CHECK(es.rel <= sb && es.unwritten == 0, "%s: final S error %.3g > %.3g (%s)", what, es.rel, sb, d);
    CHECK(ez.rel <= sb && ez.unwritten == 0, "%s: final z error %.3g > %.3g (%s)", what, ez.rel, sb, d);
    int64_t bad = 0;
    for (int64_t i = 0; i < p->npos; i++) {
        if (pos[i] != p->fin.pos[i]) {
            bad++;
            continue;
        }
        for (int64_t x = 0; pos[i] > 0 && x < c->Dk; x++)
            bad += wk[i * c->Dk + x] != p->fin.keys[i * c->Dk + x];
        for (int64_t x = 0; pos[i] > 0 && x < c->Dv; x++)
            bad += wv[i * c->Dv + x] != p->fin.values[i * c->Dv + x];
    }
    CHECK(bad == 0, "%s: %lld window entries differ from the reference (%s)", what, (long long)bad, d);
    free(S), free(z), free(wk), free(wv), free(pos);
    return e.rel;
}

/* The whole sequence in parts [cuts[i], cuts[i+1]) carrying the state (one
 * part: a single prefill); returns the error. */
static double run_parts(const problem *p, const int64_t *cuts, int n)
{
    const size_t bytes = (size_t)p->nout * lm_dtype_size(p->c.dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    dstate st = dstate_new(p);
    for (int i = 0; i + 1 < n; i++) {
        call k;
        call_init(&k, p, LM_CUDA, dout, &st, cuts[i], cuts[i + 1] - cuts[i]);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "gpu prefill: %s", lm_last_error());
    }
    const double e = check_outputs(p, dout, &st, n > 2 ? "split prefill" : "prefill");
    dstate_free(&st);
    cudaFree(dout);
    return e;
}

/* The CPU backend's error on the same problem. */
static double cpu_error(const problem *p)
{
    tbuf out = tbuf_new(p->c.dtype, p->nout);
    call k;
    call_init(&k, p, LM_CPU, out.data, NULL, 0, p->c.L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "cpu prefill: %s", lm_last_error());
    const double e = ref_compare(&out, p->want, p->nout).rel;
    tbuf_free(&out);
    return e;
}

static void check_case(const hcase *c)
{
    problem p;
    problem_init(&p, c);
    const int64_t whole[] = { 0, c->L };
    const double e = run_parts(&p, whole, 2);
    if (c->L <= 1000) {
        const double ec = cpu_error(&p);
        CHECK(c->dtype == LM_F32 || e <= 2.0 * out_bound(c->dtype, ec, p.nout), "gpu error %.3g vs cpu %.3g",
              e, ec);
    }
    /* Without a state (nothing kept), the same outputs. */
    const size_t bytes = (size_t)p.nout * lm_dtype_size(c->dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    call k;
    call_init(&k, &p, LM_CUDA, dout, NULL, 0, c->L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "gpu prefill without state: %s", lm_last_error());
    check_outputs(&p, dout, NULL, "prefill without a state");
    cudaFree(dout);
    problem_free(&p);
}

static const int64_t windows[][2] = { { 64, 4 }, { 16, 0 }, { 1, 0 }, { 1, 3 }, { 7, 2 }, { 100, 5 } };

START_TEST(test_hybrid_lengths)
{
    ref_seed(301);
    const int nw = gpu_small ? 2 : 6;
    for (int w = 0; w < nw; w++) {
        const int64_t W = windows[w][0], s = windows[w][1];
        const int64_t Ls[] = { 1, W - 1, W, W + 1, s + W + 1, 1000, 4097 };
        for (int i = 0; i < (gpu_small ? 5 : 7); i++) {
            if (Ls[i] < 1)
                continue;
            hcase c = base_case();
            c.W = W, c.s = s, c.L = Ls[i];
            c.B = Ls[i] > 1000 ? 1 : 2;
            check_case(&c);
        }
    }
    gpu_end_test();
}
END_TEST

START_TEST(test_hybrid_shapes_dtypes)
{
    static const int64_t dims[][4] = { /* Hq, Hkv, Dk, Dv */
        { 4, 2, 64, 64 }, { 4, 4, 128, 128 }, { 2, 1, 256, 256 }, { 8, 2, 96, 40 }, { 3, 1, 32, 128 } };
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    ref_seed(302);
    for (int i = 0; i < (gpu_small ? 2 : 5); i++)
        for (int d = 0; d < 3; d++) {
            hcase c = base_case();
            c.Hq = dims[i][0], c.Hkv = dims[i][1], c.Dk = dims[i][2], c.Dv = dims[i][3];
            c.dtype = dts[d];
            c.mask = (i + d) % 2, c.seq_first = d == 1;
            c.L = 333, c.W = 32, c.s = 3;
            check_case(&c);
        }
    /* Windows too wide for 64 queries per CTA (32 and 16 then). */
    static const int64_t wide[][2] = { { 700, 20 }, { 1500, 0 } };
    for (int i = 0; i < (gpu_small ? 1 : 2); i++) {
        hcase c = base_case();
        c.W = wide[i][0], c.s = wide[i][1], c.L = 2500, c.B = 1, c.mask = 1;
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

/* prefill == split prefill == decode steps, and a step captured once in a
 * CUDA graph and replayed for every later token (its position comes from
 * the device state, its inputs from fixed buffers the test refills). */
START_TEST(test_hybrid_split_and_decode)
{
    ref_seed(303);
    for (int w = 0; w < (gpu_small ? 2 : 6); w++) {
        hcase c = base_case();
        c.W = windows[w][0], c.s = windows[w][1];
        c.L = 260, c.mask = 1, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = 128;
        problem p;
        problem_init(&p, &c);
        const int64_t W = c.W, s = c.s;
        int64_t sets[][5] = { { 0, 1, c.L }, { 0, W, c.L }, { 0, s + W + 1 > 2 ? s + W + 1 : 2, c.L },
                              { 0, 63, 64, 200, c.L } };
        const int ns[] = { 3, 3, 3, 5 };
        for (int i = 0; i < 4; i++)
            if (sets[i][1] < c.L)
                run_parts(&p, sets[i], ns[i]);
        problem_free(&p);
    }
    /* Decode, plain and in a graph, after a prefill of L0 tokens (without a mask: the
     * graph's inputs are one token per batch row). */
    for (int g = 0; g < 2; g++) {
        hcase c = base_case();
        c.W = g ? 16 : 64, c.s = g ? 0 : 4, c.L = 150, c.B = 2, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = 128;
        problem p;
        problem_init(&p, &c);
        const int64_t L0 = g ? 0 : 90;
        const size_t bytes = (size_t)p.nout * 2;
        void *dout = dmalloc(bytes);
        dpoison(dout, bytes);
        dstate st = dstate_new(&p);
        call k;
        if (L0) {
            call_init(&k, &p, LM_CUDA, dout, &st, 0, L0);
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        }
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        CUDA_OK(cudaDeviceSynchronize());
        if (!g) {
            for (int64_t t = L0; t < c.L; t++) {
                call_init(&k, &p, LM_CUDA, dout, &st, t, 1);
                ck_assert_msg(lm_linear_attn_decode(&k.a, s) == LM_OK, "decode: %s", lm_last_error());
            }
        } else {
            /* fixed one-token buffers [B, 1, H, D], contiguous */
            const size_t es = 2, bq = (size_t)(c.Hq * c.Dk) * es, bk = (size_t)(c.Hkv * c.Dk) * es;
            const size_t bv = (size_t)(c.Hkv * c.Dv) * es, bo = (size_t)(c.Hq * c.Dv) * es;
            char *xq = dmalloc(c.B * bq), *xk = dmalloc(c.B * bk), *xv = dmalloc(c.B * bv), *xo = dmalloc(c.B * bo);
            const int64_t s1[4] = { c.Hq * c.Dk, c.Hq * c.Dk, c.Dk, 1 }, s2[4] = { c.Hkv * c.Dk, c.Hkv * c.Dk, c.Dk, 1 };
            const int64_t s3[4] = { c.Hkv * c.Dv, c.Hkv * c.Dv, c.Dv, 1 }, s4[4] = { c.Hq * c.Dv, c.Hq * c.Dv, c.Dv, 1 };
            lm_tensor tq = view4(xq, c.dtype, LM_CUDA, s1, c.B, 1, c.Hq, c.Dk);
            lm_tensor tk = view4(xk, c.dtype, LM_CUDA, s2, c.B, 1, c.Hkv, c.Dk);
            lm_tensor tv = view4(xv, c.dtype, LM_CUDA, s3, c.B, 1, c.Hkv, c.Dv);
            lm_tensor to = view4(xo, c.dtype, LM_CUDA, s4, c.B, 1, c.Hq, c.Dv);
            lm_core_args a;
            ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
            a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to;
            a.attention = LM_ATTENTION_HYBRID, a.window = (int)c.W, a.sinks = (int)c.s, a.window_gate = p.gate;
            a.state = st.S, a.normalizer = st.z, a.window_keys = st.wk, a.window_values = st.wv;
            a.window_pos = st.pos;
            cudaGraph_t gr;
            cudaGraphExec_t ex;
            CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            ck_assert_msg(lm_linear_attn_decode(&a, s) == LM_OK, "decode in capture: %s", lm_last_error());
            CUDA_OK(cudaStreamEndCapture(s, &gr));
            CUDA_OK(cudaGraphInstantiate(&ex, gr, 0));
            for (int64_t t = L0; t < c.L; t++) {
                for (int64_t b = 0; b < c.B; b++) {
                    CUDA_OK(cudaMemcpyAsync(xq + b * bq, (char *)p.dq + (b * c.L + t) * bq, bq, cudaMemcpyDeviceToDevice, s));
                    CUDA_OK(cudaMemcpyAsync(xk + b * bk, (char *)p.dk + (b * c.L + t) * bk, bk, cudaMemcpyDeviceToDevice, s));
                    CUDA_OK(cudaMemcpyAsync(xv + b * bv, (char *)p.dv + (b * c.L + t) * bv, bv, cudaMemcpyDeviceToDevice, s));
                }
                CUDA_OK(cudaGraphLaunch(ex, s));
                for (int64_t b = 0; b < c.B; b++)
                    CUDA_OK(cudaMemcpyAsync((char *)dout + (b * c.L + t) * bo, xo + b * bo, bo, cudaMemcpyDeviceToDevice, s));
            }
            CUDA_OK(cudaStreamSynchronize(s));
            CUDA_OK(cudaGraphExecDestroy(ex));
            CUDA_OK(cudaGraphDestroy(gr));
            cudaFree(xq), cudaFree(xk), cudaFree(xv), cudaFree(xo);
        }
        CUDA_OK(cudaStreamSynchronize(s));
        CUDA_OK(cudaStreamDestroy(s));
        check_outputs(&p, dout, &st, g ? "steps replayed from one graph" : "prefill + decode steps");
        dstate_free(&st);
        cudaFree(dout);
        problem_free(&p);
    }
    gpu_end_test();
}
END_TEST

/* A window too wide for shared memory is refused before anything changes. */
START_TEST(test_hybrid_refused)
{
    ref_seed(306);
    hcase c = base_case();
    c.B = 1, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 16, c.L = 40, c.W = 100000, c.s = 0;
    problem p;
    problem_init(&p, &c);
    dstate st = dstate_new(&p);
    const size_t bytes = (size_t)p.nout * 2;
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    call k;
    call_init(&k, &p, LM_CUDA, dout, &st, 0, c.L);
    EXPECT_ERR(lm_linear_attn_prefill(&k.a, NULL), LM_ERR_UNSUPPORTED, "shared memory");
    float *S = malloc((size_t)p.nS * 4);
    int32_t *pos = malloc((size_t)p.npos * 4);
    ddownload_bytes(S, st.S, (size_t)p.nS * 4);
    ddownload_bytes(pos, st.pos, (size_t)p.npos * 4);
    int64_t changed = 0;
    for (int64_t i = 0; i < p.nS; i++)
        changed += S[i] != 0.0f;
    for (int64_t i = 0; i < p.npos; i++)
        changed += pos[i] != 0;
    CHECK(changed == 0, "a refused prefill changed %lld state entries", (long long)changed);
    free(S), free(pos);
    cudaFree(dout);
    dstate_free(&st);
    problem_free(&p);
    gpu_end_test();
}
END_TEST

/* Two runs of the same prefill give the same bits. */
START_TEST(test_hybrid_deterministic)
{
    ref_seed(304);
    hcase c = base_case();
    c.L = gpu_small ? 300 : 3000, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128, c.mask = 1;
    problem p;
    problem_init(&p, &c);
    const size_t bytes = (size_t)p.nout * 2;
    unsigned char *first = malloc(bytes), *again = malloc(bytes);
    void *dout = dmalloc(bytes);
    for (int run = 0; run < 2; run++) {
        dstate st = dstate_new(&p);
        dpoison(dout, bytes);
        call k;
        call_init(&k, &p, LM_CUDA, dout, &st, 0, c.L);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        ddownload_bytes(run ? again : first, dout, bytes);
        dstate_free(&st);
    }
    CHECK(!memcmp(first, again, bytes), "two runs differ");
    cudaFree(dout);
    free(first), free(again);
    problem_free(&p);
    gpu_end_test();
}
END_TEST

/* The module: a CUDA handle against a CPU handle with the same config and
 * weights: forward with the state kept, more forward, decode steps, state blob. */
START_TEST(test_hybrid_module)
{
    ref_seed(305);
    const int64_t B = 2, L = 200, E = 256, H = 4, Hkv = 2, D = 64, Dq = H * D, Dkv = Hkv * D;
    const lm_dtype dt = LM_BF16;
    tbuf x = tbuf_new(dt, B * L * E), win = tbuf_new(dt, (Dq + 2 * Dkv) * E), wo = tbuf_new(dt, E * Dq);
    tbuf_random(&x, -1, 1);
    tbuf_random(&win, -0.1, 0.1);
    tbuf_random(&wo, -0.1, 0.1);
    float gate[4] = { -1.0f, 0.0f, 0.5f, 2.0f };
    lm_attn *a[2];
    void *dx = dupload(&x), *dwin = dupload(&win), *dwo = dupload(&wo);
    for (int g = 0; g < 2; g++) {
        lm_attn_config cfg;
        ck_assert(lm_attn_config_default(&cfg, (int)E, (int)H) == LM_OK);
        cfg.num_kv_heads = (int)Hkv, cfg.dtype = dt, cfg.device = g ? LM_CUDA : LM_CPU;
        cfg.attention = LM_ATTENTION_HYBRID, cfg.window = 32, cfg.sinks = 4, cfg.window_gate = gate;
        ck_assert_msg(lm_attn_create(&cfg, &a[g]) == LM_OK, "%s", lm_last_error());
        lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = g ? dwin : win.data,
                         .out_proj_weight = g ? dwo : wo.data };
        ck_assert(lm_attn_set_weights(a[g], &w) == LM_OK);
    }
    const size_t ob = (size_t)(B * L * E) * 2;
    tbuf out[2] = { tbuf_new(dt, B * L * E), tbuf_new(dt, B * L * E) };
    void *dout = dmalloc(ob);
    dpoison(dout, ob);
    int64_t s3[3];
    ref_strides3(s3, B, L, E, 0);
    const int64_t L1 = 120, L2 = 170; /* forward, forward, then steps */
    for (int g = 0; g < 2; g++) {
        lm_tensor xt = view3(g ? dx : x.data, dt, g ? LM_CUDA : LM_CPU, s3, B, L, E);
        lm_tensor ot = view3(g ? dout : out[0].data, dt, g ? LM_CUDA : LM_CPU, s3, B, L, E);
        lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
        lm_tensor xa = tokens(xt, 0, L1), oa = tokens(ot, 0, L1), xb = tokens(xt, L1, L2 - L1), obv = tokens(ot, L1, L2 - L1);
        ck_assert_msg(lm_attn_forward(a[g], &xa, &xa, &xa, &o, &oa, NULL) == LM_OK, "%s", lm_last_error());
        o.use_state = 1;
        ck_assert_msg(lm_attn_forward(a[g], &xb, &xb, &xb, &o, &obv, NULL) == LM_OK, "%s", lm_last_error());
        for (int64_t t = L2; t < L; t++) {
            lm_tensor xs = tokens(xt, t, 1), os = tokens(ot, t, 1);
            lm_tensor x2 = { .data = xs.data, .dtype = dt, .device = xs.device, .ndim = 2, .shape = { B, E },
                             .stride = { xs.stride[0], 1 } };
            lm_tensor o2 = { .data = os.data, .dtype = dt, .device = os.device, .ndim = 2, .shape = { B, E },
                             .stride = { os.stride[0], 1 } };
            ck_assert_msg(lm_attn_step(a[g], &x2, &o2, NULL) == LM_OK, "%s", lm_last_error());
        }
    }
    ddownload(&out[1], dout);
    double num = 0, den = 0;
    for (int64_t i = 0; i < B * L * E; i++) {
        const double c = tbuf_get(&out[0], i), gv = tbuf_get(&out[1], i);
        num += (gv - c) * (gv - c);
        den += c * c;
    }
    CHECK(sqrt(num / den) <= 1e-2, "module: CUDA vs CPU relative difference %.3g", sqrt(num / den));
    /* The state blobs agree in layout and (nearly) in content. */
    size_t nb[2];
    for (int g = 0; g < 2; g++)
        ck_assert(lm_attn_state_size(a[g], &nb[g]) == LM_OK);
    ck_assert_uint_eq(nb[0], nb[1]);
    char *blob[2] = { malloc(nb[0]), malloc(nb[1]) };
    for (int g = 0; g < 2; g++)
        ck_assert(lm_attn_get_state(a[g], blob[g], nb[g]) == LM_OK);
    CHECK(!memcmp(blob[0], blob[1], 80), "state blob headers differ");
    const size_t tail = (size_t)(B * Hkv * (32 + 4)) * 4; /* positions, at the end */
    CHECK(!memcmp(blob[0] + nb[0] - tail, blob[1] + nb[1] - tail, tail), "window positions differ");
    free(blob[0]), free(blob[1]);
    for (int g = 0; g < 2; g++)
        lm_attn_destroy(a[g]);
    tbuf_free(&x), tbuf_free(&win), tbuf_free(&wo), tbuf_free(&out[0]), tbuf_free(&out[1]);
    cudaFree(dx), cudaFree(dwin), cudaFree(dwo), cudaFree(dout);
    gpu_end_test();
}
END_TEST

Suite *gpu_hybrid_suite(void)
{
    Suite *s = suite_create("gpu_hybrid");
    TCase *tc = tcase_create("hybrid");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_hybrid_lengths);
    tcase_add_test(tc, test_hybrid_shapes_dtypes);
    tcase_add_test(tc, test_hybrid_split_and_decode);
    tcase_add_test(tc, test_hybrid_refused);
    tcase_add_test(tc, test_hybrid_deterministic);
    tcase_add_test(tc, test_hybrid_module);
    suite_add_tcase(s, tc);
    return s;
}
