/*
 * test_gpu_core.c - the attention core on CUDA against the CPU backend and the
 * float64 reference over the shape grid: lengths around the chunk size, head
 * dims, GQA, every mode of docs/DESIGN.md section 2, dtypes, layouts; outputs
 * NaN-poisoned before each run; 10 runs bit-identical; state hand-over
 * between prefills and from prefill to decode steps, also inside a CUDA graph.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gcase {
    lm_dtype dtype;
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv;
    int causal, fm, normalize, decay, mask, state_in, seq_first;
    lm_precision precision;
} gcase;

static gcase base_case(void)
{
    gcase c = { .dtype = LM_BF16, .B = 2, .L = 130, .Lk = 130, .Hq = 4, .Hkv = 2, .Dk = 64,
                .Dv = 64, .causal = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 };
    return c;
}

static void describe(char *s, size_t n, const gcase *c)
{
    snprintf(s, n, "dt %d B %lld L %lld/%lld H %lld/%lld D %lld/%lld c%d fm%d n%d dec%d m%d st%d sf%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->Hq,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->causal, c->fm, c->normalize,
             c->decay, c->mask, c->state_in, c->seq_first);
}

/* Host problem, its float64 answer, and device copies of the inputs. */
typedef struct problem {
    gcase c;
    tbuf q, k, v;
    uint8_t *mask;
    float decay[64];
    float *S0, *z0;            /* initial state (fp32) */
    double *want, *want_S, *want_z;
    int64_t sq[4], sk[4], sv[4], so[4];
    void *dq, *dk, *dv, *dmask;
} problem;

static void problem_init(problem *p, const gcase *c)
{
    memset(p, 0, sizeof *p);
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
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    const int64_t nS = B * c->Hkv * c->Dk * c->Dv, nz = B * c->Hkv * c->Dk;
    p->S0 = calloc((size_t)nS, sizeof(float));
    p->z0 = calloc((size_t)nz, sizeof(float));
    double *S0d = calloc((size_t)nS, sizeof(double)), *z0d = calloc((size_t)nz, sizeof(double));
    for (int64_t i = 0; c->state_in && i < nS; i++)
        S0d[i] = p->S0[i] = (float)(ref_uniform() * 2 - 1);
    for (int64_t i = 0; c->state_in && i < nz; i++)
        z0d[i] = p->z0[i] = (float)(1 + 4 * ref_uniform());
    p->want = malloc((size_t)(B * c->L * c->Hq * c->Dv) * sizeof(double));
    p->want_S = malloc((size_t)nS * sizeof(double));
    p->want_z = malloc((size_t)nz * sizeof(double));
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
    p->dq = dupload(&p->q);
    p->dk = dupload(&p->k);
    p->dv = dupload(&p->v);
    if (p->mask)
        p->dmask = dupload_bytes(p->mask, (size_t)(B * Lk));
}

static void problem_free(problem *p)
{
    tbuf_free(&p->q);
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    free(p->mask);
    free(p->S0);
    free(p->z0);
    free(p->want);
    free(p->want_S);
    free(p->want_z);
    cudaFree(p->dq);
    cudaFree(p->dk);
    cudaFree(p->dv);
    cudaFree(p->dmask);
}

/* Arguments of a call over tokens [t0, t0 + n) on `dev`, writing out / S / z. */
typedef struct call {
    lm_tensor q, k, v, out, mask;
    lm_core_args a;
} call;

static void call_init(call *k, const problem *p, lm_device dev, void *out, float *S, float *z,
                      int64_t t0, int64_t n)
{
    const gcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    const int64_t nk = c->causal ? n : c->Lk, k0 = c->causal ? t0 : 0;
    k->q = ref_tokens(ref_tensor4(gpu ? p->dq : p->q.data, c->dtype, dev, p->sq, c->B, c->L, c->Hq, c->Dk), t0, n);
    k->k = ref_tokens(ref_tensor4(gpu ? p->dk : p->k.data, c->dtype, dev, p->sk, c->B, c->Lk, c->Hkv, c->Dk), k0, nk);
    k->v = ref_tokens(ref_tensor4(gpu ? p->dv : p->v.data, c->dtype, dev, p->sv, c->B, c->Lk, c->Hkv, c->Dv), k0, nk);
    k->out = ref_tokens(ref_tensor4(out, c->dtype, dev, p->so, c->B, c->L, c->Hq, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.q = &k->q, k->a.k = &k->k, k->a.v = &k->v, k->a.out = &k->out;
    if (p->mask) {
        k->mask = lm_tensor_2d((uint8_t *)(gpu ? p->dmask : p->mask) + k0, LM_BOOL, dev, c->B, nk);
        k->mask.stride[0] = c->Lk;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = S, k->a.normalizer = z, k->a.position = t0;
    k->a.is_causal = c->causal;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.normalize = c->normalize;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

static int64_t n_out(const gcase *c)
{
    return c->B * c->L * c->Hq * c->Dv;
}

/* GPU state buffers holding the initial state. */
static void state_upload(const problem *p, float **dS, float **dz)
{
    const gcase *c = &p->c;
    *dS = dupload_bytes(p->S0, (size_t)(c->B * c->Hkv * c->Dk * c->Dv) * sizeof(float));
    *dz = dupload_bytes(p->z0, (size_t)(c->B * c->Hkv * c->Dk) * sizeof(float));
}

/* Checks out (device) and the final state against float64; returns err. */
static double check_outputs(const problem *p, const void *dout, const float *dS, const float *dz,
                            const char *what)
{
    const gcase *c = &p->c;
    const int64_t n = n_out(c), nS = c->B * c->Hkv * c->Dk * c->Dv, nz = c->B * c->Hkv * c->Dk;
    tbuf got = tbuf_new(c->dtype, n);
    ddownload(&got, dout);
    float *S = malloc((size_t)nS * sizeof(float)), *z = malloc((size_t)nz * sizeof(float));
    ddownload_bytes(S, dS, (size_t)nS * sizeof(float));
    ddownload_bytes(z, dz, (size_t)nz * sizeof(float));
    char desc[160];
    describe(desc, sizeof desc, c);
    const ref_err e = ref_compare(&got, p->want, n);
    const double floor = out_floor(c->dtype, p->want, n), bound = out_bound(c->dtype, floor, n);
    gpu_note(desc, c->dtype, e.rel, floor);
    ck_assert_msg(e.unwritten == 0, "%s: %lld outputs not written (%s)", what, (long long)e.unwritten, desc);
    ck_assert_msg(e.rel <= bound, "%s: error %.3g > %.3g (floor %.3g) (%s)", what, e.rel, bound, floor, desc);
    const ref_err es = ref_compare_f32(S, p->want_S, nS), ez = ref_compare_f32(z, p->want_z, nz);
    ck_assert_msg(es.unwritten == 0 && es.rel <= state_bound(c->dtype), "%s: state S error %.3g (%s)",
                  what, es.rel, desc);
    ck_assert_msg(ez.unwritten == 0 && ez.rel <= state_bound(c->dtype), "%s: state z error %.3g (%s)",
                  what, ez.rel, desc);
    tbuf_free(&got);
    free(S);
    free(z);
    return e.rel;
}

/* The CPU backend's error on the same problem (the reference the GPU is held to). */
static double cpu_error(const problem *p)
{
    const gcase *c = &p->c;
    const int64_t nS = c->B * c->Hkv * c->Dk * c->Dv, nz = c->B * c->Hkv * c->Dk;
    tbuf out = tbuf_new(c->dtype, n_out(c));
    float *S = malloc((size_t)nS * sizeof(float)), *z = malloc((size_t)nz * sizeof(float));
    memcpy(S, p->S0, (size_t)nS * sizeof(float));
    memcpy(z, p->z0, (size_t)nz * sizeof(float));
    call k;
    call_init(&k, p, LM_CPU, out.data, S, z, 0, c->L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "cpu prefill: %s", lm_last_error());
    const double e = ref_compare(&out, p->want, out.n).rel;
    tbuf_free(&out);
    free(S);
    free(z);
    return e;
}

/* One prefill over the whole sequence on the GPU, checked; returns its error. */
static double check_case(const gcase *c)
{
    problem p;
    problem_init(&p, c);
    float *dS, *dz;
    state_upload(&p, &dS, &dz);
    const size_t bytes = (size_t)n_out(c) * lm_dtype_size(c->dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    call k;
    call_init(&k, &p, LM_CUDA, dout, dS, dz, 0, c->L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "gpu prefill: %s", lm_last_error());
    const double e = check_outputs(&p, dout, dS, dz, "prefill");
    if (!gpu_small && c->L <= 1000) { /* the GPU within reach of the CPU backend's error */
        const double ec = cpu_error(&p);
        ck_assert_msg(e <= out_bound(c->dtype, ec, n_out(c)), "gpu error %.3g vs cpu %.3g", e, ec);
    }
    cudaFree(dout);
    cudaFree(dS);
    cudaFree(dz);
    problem_free(&p);
    return e;
}

START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 127, 1000, 4097 };
    ref_seed(101);
    const int n = gpu_small ? 4 : 7;
    for (int i = 0; i < n; i++)
        for (int causal = 1; causal >= 0; causal--) {
            gcase c = base_case();
            c.L = c.Lk = Ls[i];
            c.causal = causal;
            c.B = Ls[i] > 1000 ? 1 : 2;
            check_case(&c);
        }
}
END_TEST

START_TEST(test_head_dims)
{
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 256, 256 }, { 64, 128 },
                                       { 128, 64 }, { 256, 64 }, { 32, 32 }, { 96, 40 }, { 60, 44 } };
    ref_seed(102);
    const int n = gpu_small ? 3 : 9;
    for (int i = 0; i < n; i++)
        for (int causal = 1; causal >= 0; causal--) {
            gcase c = base_case();
            c.Dk = dims[i][0], c.Dv = dims[i][1];
            c.causal = causal;
            c.L = c.Lk = gpu_small ? 70 : 200;
            check_case(&c);
        }
}
END_TEST

START_TEST(test_heads)
{
    static const int64_t heads[][2] = { { 8, 8 }, { 8, 2 }, { 8, 1 }, { 1, 1 } };
    ref_seed(103);
    for (int i = 0; i < (gpu_small ? 2 : 4); i++)
        for (int causal = 1; causal >= 0; causal--) {
            gcase c = base_case();
            c.Hq = heads[i][0], c.Hkv = heads[i][1];
            c.causal = causal;
            c.B = 3;
            c.L = c.Lk = gpu_small ? 70 : 300;
            check_case(&c);
        }
}
END_TEST

/* Every mode of docs/DESIGN.md §2 (identity only unnormalised, decay only causal),
 * cross-attention lengths for the bidirectional ones. */
START_TEST(test_modes)
{
    ref_seed(104);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++)
                    for (int mask = 0; mask < 2; mask++)
                        for (int st = 0; st < 2; st++) {
                            if (fm == LM_FEATURE_IDENTITY && norm)
                                continue;
                            if (gpu_small && (st || fm == LM_FEATURE_RELU))
                                continue;
                            gcase c = base_case();
                            c.causal = causal, c.normalize = norm, c.fm = fm;
                            c.decay = decay, c.mask = mask, c.state_in = st;
                            c.L = 150;
                            c.Lk = causal ? 150 : 77;
                            check_case(&c);
                        }
}
END_TEST

START_TEST(test_dtypes)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t Ls[] = { 1, 65, 1000 };
    ref_seed(105);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < (gpu_small ? 2 : 3); j++)
            for (int mode = 0; mode < 3; mode++)
                for (int dk = 64; dk <= (gpu_small ? 64 : 256); dk *= 2) {
                    gcase c = base_case();
                    c.dtype = dts[i];
                    c.L = c.Lk = Ls[j];
                    c.causal = mode != 2;
                    c.decay = mode == 1;
                    c.mask = mode == 2;
                    c.state_in = mode == 1;
                    c.Dk = c.Dv = dk;
                    check_case(&c);
                }
}
END_TEST

/* Sequence-first strides (no unit stride between tokens), and B * H so small
 * that the sequence is cut into segments (ABSORB, scan, CAUSAL). */
START_TEST(test_layouts_and_segments)
{
    ref_seed(106);
    for (int sf = 0; sf < 2; sf++)
        for (int causal = 1; causal >= 0; causal--) {
            gcase c = base_case();
            c.seq_first = sf, c.causal = causal;
            c.B = 1, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 128;
            c.L = c.Lk = gpu_small ? 1100 : 3000;
            c.mask = 1, c.decay = causal, c.state_in = 1;
            c.precision = sf ? LM_PRECISION_ON : LM_PRECISION_AUTO;
            check_case(&c);
        }
}
END_TEST

/* Compensated accumulation (LM_PRECISION_ON) on the shapes the v2 prefill
 * takes (bf16, Dk = Dv = 64 and 128, no decay): GQA, a key mask, an initial
 * state, ragged lengths, segments (B * H small), every feature map, causal
 * and bidirectional (whose key pass is v2's ABSORB). */
START_TEST(test_compensated)
{
    ref_seed(108);
    for (int dk = 64; dk <= 128; dk *= 2)
        for (int fm = 0; fm < (gpu_small ? 1 : 3); fm++)
            for (int causal = 1; causal >= 0; causal--) {
                gcase c = base_case();
                c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = dk;
                c.L = c.Lk = gpu_small ? 1100 : 3000 + 17 * fm;
                c.causal = causal, c.mask = 1, c.state_in = 1;
                c.fm = fm, c.normalize = fm != LM_FEATURE_IDENTITY;
                c.precision = LM_PRECISION_ON;
                check_case(&c);
            }
}
END_TEST

/* 10 runs of the same call give the same bits (no atomics, fixed orders). */
START_TEST(test_deterministic)
{
    ref_seed(107);
    for (int causal = 1; causal >= 0; causal--) {
        gcase c = base_case();
        c.causal = causal, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128;
        c.L = c.Lk = gpu_small ? 300 : 5000;
        c.mask = 1, c.state_in = 1, c.decay = causal;
        problem p;
        problem_init(&p, &c);
        const size_t bytes = (size_t)n_out(&c) * lm_dtype_size(c.dtype);
        const size_t nS = (size_t)(c.B * c.Hkv * c.Dk * c.Dv), nz = (size_t)(c.B * c.Hkv * c.Dk);
        unsigned char *first = malloc(bytes + (nS + nz) * 4), *again = malloc(bytes + (nS + nz) * 4);
        void *dout = dmalloc(bytes);
        for (int run = 0; run < (gpu_small ? 2 : 10); run++) {
            float *dS, *dz;
            state_upload(&p, &dS, &dz);
            dpoison(dout, bytes);
            call k;
            call_init(&k, &p, LM_CUDA, dout, dS, dz, 0, c.L);
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
            unsigned char *dst = run ? again : first;
            ddownload_bytes(dst, dout, bytes);
            ddownload_bytes(dst + bytes, dS, nS * 4);
            ddownload_bytes(dst + bytes + nS * 4, dz, nz * 4);
            ck_assert_msg(!run || !memcmp(first, again, bytes + (nS + nz) * 4),
                          "run %d differs from run 0 (causal %d)", run, causal);
            cudaFree(dS);
            cudaFree(dz);
        }
        cudaFree(dout);
        free(first);
        free(again);
        problem_free(&p);
    }
}
END_TEST

/* Prefill in two calls with the state handed over equals one call. */
START_TEST(test_state_handover)
{
    ref_seed(108);
    static const int64_t cuts[] = { 1, 64, 100, 777 };
    for (int i = 0; i < (gpu_small ? 2 : 4); i++) {
        gcase c = base_case();
        c.L = c.Lk = 1000, c.decay = i % 2, c.mask = 1, c.state_in = 1;
        problem p;
        problem_init(&p, &c);
        float *dS, *dz;
        state_upload(&p, &dS, &dz);
        const size_t bytes = (size_t)n_out(&c) * lm_dtype_size(c.dtype);
        void *dout = dmalloc(bytes);
        dpoison(dout, bytes);
        call k;
        call_init(&k, &p, LM_CUDA, dout, dS, dz, 0, cuts[i]);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        call_init(&k, &p, LM_CUDA, dout, dS, dz, cuts[i], c.L - cuts[i]);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        check_outputs(&p, dout, dS, dz, "two prefills");
        cudaFree(dout);
        cudaFree(dS);
        cudaFree(dz);
        problem_free(&p);
    }
}
END_TEST

/* Prefill of L0 tokens then decode steps; the steps also replayed from a CUDA graph. */
static void prefill_then_decode(const gcase *c, int64_t L0, int graph)
{
    problem p;
    problem_init(&p, c);
    float *dS, *dz;
    state_upload(&p, &dS, &dz);
    const size_t bytes = (size_t)n_out(c) * lm_dtype_size(c->dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    call k;
    if (L0 > 0) {
        call_init(&k, &p, LM_CUDA, dout, dS, dz, 0, L0);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
    }
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CUDA_OK(cudaDeviceSynchronize());
    for (int64_t t = L0; t < c->L; t++) {
        call_init(&k, &p, LM_CUDA, dout, dS, dz, t, 1);
        if (!graph) {
            ck_assert_msg(lm_linear_attn_decode(&k.a, s) == LM_OK, "decode: %s", lm_last_error());
            continue;
        }
        cudaGraph_t gr;
        cudaGraphExec_t ex;
        CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        ck_assert_msg(lm_linear_attn_decode(&k.a, s) == LM_OK, "decode in capture: %s", lm_last_error());
        CUDA_OK(cudaStreamEndCapture(s, &gr));
        CUDA_OK(cudaGraphInstantiate(&ex, gr, 0));
        CUDA_OK(cudaGraphLaunch(ex, s));
        CUDA_OK(cudaGraphExecDestroy(ex));
        CUDA_OK(cudaGraphDestroy(gr));
    }
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaStreamDestroy(s));
    check_outputs(&p, dout, dS, dz, graph ? "prefill + decode (graph)" : "prefill + decode");
    cudaFree(dout);
    cudaFree(dS);
    cudaFree(dz);
    problem_free(&p);
}

START_TEST(test_decode)
{
    ref_seed(109);
    for (int i = 0; i < (gpu_small ? 2 : 6); i++) {
        gcase c = base_case();
        c.B = 2, c.Hq = 8, c.Hkv = i % 3 == 2 ? 1 : 2;
        c.Dk = c.Dv = i % 2 ? 128 : 64;
        c.decay = i % 2, c.mask = i >= 2, c.state_in = i >= 4;
        c.fm = i == 3 ? LM_FEATURE_RELU : LM_FEATURE_ELU1;
        c.L = c.Lk = 70;
        prefill_then_decode(&c, i == 5 ? 0 : 64, i >= 4);
    }
}
END_TEST

Suite *gpu_core_suite(void)
{
    Suite *s = suite_create("gpu_core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_head_dims);
    tcase_add_test(tc, test_heads);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_dtypes);
    tcase_add_test(tc, test_layouts_and_segments);
    tcase_add_test(tc, test_compensated);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_state_handover);
    tcase_add_test(tc, test_decode);
    suite_add_tcase(s, tc);
    return s;
}
