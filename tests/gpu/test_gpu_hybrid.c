/*
 * test_gpu_hybrid.c - hybrid attention (docs/DESIGN.md §9) on CUDA against the
 * float64 reference (ref_hybrid) and the CPU backend: lengths around W and s
 * at several (W, s) incl. s = 0 and W = 1, dtypes, head dims, GQA, masks,
 * wide windows (fewer queries per CTA), the final state (S, z, every window
 * slot), both gate forms (sigmoid, exp up to its bound), split prefill ==
 * decode steps == one prefill, one decode step
 * captured in a CUDA graph and replayed (positions come from the device
 * state), a refused call changing nothing, bit-identical reruns, and the
 * module (CPU vs CUDA handles); both window bodies (registers, and WMMA
 * under LM_HYBRID_BODY=wmma) with both denominators (the linear call's den,
 * and pass A under LM_HYBRID_DEN=passA) on the same bf16 cases.
 *
 * Bounds against float64: the outputs gpu_dev.hybrid_out_bound's (gpu_util.c
 * says why), the final state state_bound (bf16: phi(k) rounded for the
 * tensor cores, as in the linear suite). Problems, reference, checks and the scenarios
 * both backends run are hybrid_cases.c's.
 */
#include "gpu_util.h"
#include "hybrid_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hcase base_case(void)
{
    hcase c = { .dtype = LM_BF16, .B = 2, .L = 300, .Hq = 4, .Hkv = 2, .Dk = 64, .Dv = 64, .W = 64, .s = 4,
                .fm = LM_FEATURE_ELU1, .gate = 1 };
    return c;
}

/* The GPU with the hybrid's output bound (the final state: state_bound). */
static const test_dev *hybrid_gpu(void)
{
    static test_dev d;
    d = gpu_dev;
    d.out_bound = gpu_dev.hybrid_out_bound;
    return &d;
}

/* The CPU backend's error on the same problem. */
static double cpu_error(const hprob *p)
{
    tbuf out = tbuf_new(p->c.dtype, p->nout);
    hcall k;
    hcall_init(&k, p, LM_CPU, out.data, NULL, 0, p->c.L);
    ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "cpu prefill: %s", lm_last_error());
    const double e = ref_compare(&out, p->want, p->nout).rel;
    tbuf_free(&out);
    return e;
}

/* The whole sequence (with a state and without), and against the CPU backend. */
static void check_case(const hcase *c)
{
    hprob p;
    hprob_init(&p, hybrid_gpu(), c);
    const double e = hybrid_check_whole(&p);
    if (c->L <= 1000) {
        const double ec = cpu_error(&p);
        CHECK(c->dtype == LM_F32 || e <= 2.0 * out_bound(c->dtype, ec, p.nout), "gpu error %.3g vs cpu %.3g",
              e, ec);
    }
    hprob_free(&p);
}

START_TEST(test_hybrid_lengths)
{
    ref_seed(301);
    const hcase base = base_case();
    hybrid_case_lengths(&base, gpu_small ? 2 : 6, gpu_small ? 5 : 7, check_case);
    gpu_end_test();
}
END_TEST

/* The exp gate form (hybrid_case_gate_exp): gates up to its bound, none, bf16. */
START_TEST(test_hybrid_gate_exp)
{
    ref_seed(306);
    const hcase base = base_case();
    hybrid_case_gate_exp(&base, gpu_small ? 1 : 2, check_case);
    gpu_end_test();
}
END_TEST

START_TEST(test_hybrid_shapes_dtypes)
{
    static const int64_t dims[][4] = { /* Hq, Hkv, Dk, Dv */
        { 4, 2, 64, 64 }, { 4, 4, 128, 128 }, { 2, 1, 256, 256 }, { 8, 2, 96, 40 }, { 3, 1, 32, 128 },
        { 2, 1, 64, 97 } }; /* 97: the decode's last CTA of a cluster has fewer columns */
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    ref_seed(302);
    for (int i = 0; i < (gpu_small ? 2 : 6); i++)
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

/* name's value (malloc'd, or NULL: unset), and name set to value (NULL: unset). */
static char *env_saved(const char *name)
{
    const char *e = getenv(name);
    return e ? strdup(e) : NULL;
}

static void env_set(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

/* Every token of c a decode step from an empty state, checked (output and
 * final state) against float64. */
static void decode_steps(const hcase *c, const char *what)
{
    hprob p;
    hprob_init(&p, hybrid_gpu(), c);
    void *out = hout_new(&p);
    hstate st;
    hstate_new(&st, &p);
    const int64_t whole[] = { 0, c->L };
    hybrid_run_parts(&p, out, &st, whole, 2, 1);
    hybrid_check_out(&p, out, what);
    hybrid_check_state(&p, &st, what);
    hstate_free(&st, &p);
    hout_free(&p, out);
    hprob_free(&p);
}

/* prefill == split prefill (hybrid_case_splits) == decode steps. */
START_TEST(test_hybrid_split_and_decode)
{
    ref_seed(303);
    for (int w = 0; w < (gpu_small ? 2 : 6); w++) {
        hcase c = base_case();
        c.W = hybrid_windows[w][0], c.s = hybrid_windows[w][1];
        c.L = 260, c.mask = 1, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = 128;
        c.gate_form = w % 2 ? LM_GATE_EXP : LM_GATE_SIGMOID; /* both forms over the table */
        hprob p;
        hprob_init(&p, hybrid_gpu(), &c);
        hybrid_case_splits(&p);
        hprob_free(&p);
    }
    gpu_end_test();
}
END_TEST

/* The decode step (kernels/hybrid_decode.cu) alone: one CTA per (row, kv
 * head) pair and clusters, windows wider than its tile, and a step captured
 * once in a CUDA graph and replayed for every later token (its position
 * comes from the device state, its inputs from fixed buffers the test
 * refills). Its own case (CK_RUN_CASE=decode: the sanitizers' run). */
START_TEST(test_hybrid_decode)
{
    /* Small mode (the sanitizers' runs; racecheck instruments every shared
     * memory access of every step) keeps each case a few steps past its
     * first fold. */
    ref_seed(304);
    /* Decode steps over enough (row, kv head) pairs (40 x 16 = 640 >= 4 x 132 SMs)
     * that an H100 runs one CTA per pair, not clusters (kernels/hybrid_decode.cu). */
    {
        hcase c = base_case();
        c.W = 16, c.s = 2, c.L = gpu_small ? 24 : 40, c.B = 40, c.Hq = c.Hkv = 16, c.Dk = c.Dv = 64;
        decode_steps(&c, "decode steps, one CTA per pair"); /* folds from token 19 on */
    }
    /* Windows in several tiles of the step's shared memory (the slots under a
     * running max, the leaving slot read from the state when it is past the
     * first tile): one wider than a tile (~130 slots of 128 keys and 32 value
     * columns in a cluster at four heads a pass), with two passes of query
     * heads (8 per kv head, tile 0 staged again for the second) and masked
     * tokens; then tiles capped by LM_HYBRID_DECODE_TILE, in clusters and
     * with one CTA per pair. */
    {
        hcase c = base_case();
        c.W = 700, c.s = 3, c.L = 1000, c.B = 2, c.Hq = 8, c.Hkv = 1, c.Dk = c.Dv = 128, c.mask = 1;
        if (!gpu_small) /* the sanitizers' runs: the capped tiles below take the same paths */
            decode_steps(&c, "decode steps, window in tiles, clusters");
        char *tile_was = env_saved("LM_HYBRID_DECODE_TILE");
        env_set("LM_HYBRID_DECODE_TILE", "24");
        c = base_case();
        c.W = 64, c.s = 4, c.L = gpu_small ? 80 : 300, c.B = 2, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = 128, c.mask = 1;
        decode_steps(&c, "decode steps, tiles of 24 slots, clusters");
        env_set("LM_HYBRID_DECODE_TILE", "7");
        c = base_case();
        c.W = 16, c.s = 2, c.L = gpu_small ? 24 : 40, c.B = 40, c.Hq = c.Hkv = 16, c.Dk = c.Dv = 64;
        decode_steps(&c, "decode steps, tiles of 7 slots, one CTA per pair");
        env_set("LM_HYBRID_DECODE_TILE", tile_was);
        free(tile_was);
    }
    /* Head dims and dtypes off the fast paths: keys not a multiple of 4 floats
     * (staged a word at a time, the logits' tail lanes), a cluster's last CTA
     * with fewer columns (97), value columns not a multiple of 4, wide heads,
     * f16 and f32 inputs, GQA, masked tokens. */
    {
        static const int64_t dims[][4] = { /* Hq, Hkv, Dk, Dv */
            { 8, 2, 96, 40 }, { 3, 1, 32, 128 }, { 2, 1, 64, 97 }, { 2, 1, 33, 31 }, { 4, 2, 256, 256 } };
        static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
        for (int i = 0; i < 5; i++) {
            hcase c = base_case();
            c.Hq = dims[i][0], c.Hkv = dims[i][1], c.Dk = dims[i][2], c.Dv = dims[i][3];
            c.dtype = dts[i % 3], c.mask = i % 2, c.L = gpu_small ? 48 : 120, c.W = 32, c.s = 3;
            decode_steps(&c, "decode steps, head dims and dtypes");
        }
    }
    /* Decode, plain and in a graph, after a prefill of L0 tokens (without a mask: the
     * graph's inputs are one token per batch row). */
    for (int g = 0; g < 2; g++) {
        hcase c = base_case();
        c.W = g ? 16 : 64, c.s = g ? 0 : 4, c.L = gpu_small ? (g ? 40 : 110) : 150, c.B = 2, c.Hq = 8, c.Hkv = 2;
        c.Dk = c.Dv = 128;
        c.gate_form = g ? LM_GATE_EXP : LM_GATE_SIGMOID; /* the graph's step with the exp gate */
        hprob p;
        hprob_init(&p, hybrid_gpu(), &c);
        const int64_t L0 = g ? 0 : 90;
        void *dout = hout_new(&p);
        hstate st;
        hstate_new(&st, &p);
        hcall k;
        if (L0) {
            hcall_init(&k, &p, LM_CUDA, dout, &st, 0, L0);
            ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        }
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        CUDA_OK(cudaDeviceSynchronize());
        if (!g) {
            for (int64_t t = L0; t < c.L; t++) {
                hcall_init(&k, &p, LM_CUDA, dout, &st, t, 1);
                ck_assert_msg(lm_linear_attn_decode(&k.a, s) == LM_OK, "decode: %s", lm_last_error());
            }
        } else {
            /* fixed one-token buffers [B, 1, H, D], contiguous */
            const size_t es = 2, bq = (size_t)(c.Hq * c.Dk) * es, bk = (size_t)(c.Hkv * c.Dk) * es;
            const size_t bv = (size_t)(c.Hkv * c.Dv) * es, bo = (size_t)(c.Hq * c.Dv) * es;
            char *xq = dmalloc(c.B * bq), *xk = dmalloc(c.B * bk), *xv = dmalloc(c.B * bv), *xo = dmalloc(c.B * bo);
            const int64_t s1[4] = { c.Hq * c.Dk, c.Hq * c.Dk, c.Dk, 1 }, s2[4] = { c.Hkv * c.Dk, c.Hkv * c.Dk, c.Dk, 1 };
            const int64_t s3[4] = { c.Hkv * c.Dv, c.Hkv * c.Dv, c.Dv, 1 }, s4[4] = { c.Hq * c.Dv, c.Hq * c.Dv, c.Dv, 1 };
            lm_tensor tq = ref_tensor4(xq, c.dtype, LM_CUDA, s1, c.B, 1, c.Hq, c.Dk);
            lm_tensor tk = ref_tensor4(xk, c.dtype, LM_CUDA, s2, c.B, 1, c.Hkv, c.Dk);
            lm_tensor tv = ref_tensor4(xv, c.dtype, LM_CUDA, s3, c.B, 1, c.Hkv, c.Dv);
            lm_tensor to = ref_tensor4(xo, c.dtype, LM_CUDA, s4, c.B, 1, c.Hq, c.Dv);
            lm_core_args a;
            ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
            a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to;
            a.attention = LM_ATTENTION_HYBRID, a.window = (int)c.W, a.sinks = (int)c.s, a.window_gate = p.gate;
            a.window_gate_form = c.gate_form;
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
        const char *what = g ? "steps replayed from one graph" : "prefill + decode steps";
        hybrid_check_out(&p, dout, what);
        hybrid_check_state(&p, &st, what);
        hstate_free(&st, &p);
        hout_free(&p, dout);
        hprob_free(&p);
    }
    gpu_end_test();
}
END_TEST

/* Both window bodies on the same bf16 cases: the register one
 * (kernels/hybrid_body.cu: bf16, 16-byte rows, head dims 64 or 128; the tests
 * above reach it by default) and the WMMA one it replaced, which
 * LM_HYBRID_BODY=wmma selects; each with both denominators: the linear call's
 * (its v2 epilogue writes den; the default on compute capability 9.0) and
 * pass A (zsum, chunk scan, the walk), which LM_HYBRID_DEN=passA selects and
 * every other GPU runs (both read at every prefill). Head dims 64, 128 and
 * mixed, GQA, masks, several chunks of 64 rows with a ragged last one, the
 * compensated linear kernel (precision on), split prefills whose sinks,
 * window and z (z0 != 0 for the linear call) are in the state, and, on the
 * full grid, one call past 64K tokens (compensated, segments). Same bounds as
 * above (hybrid_out_bound). */
START_TEST(test_hybrid_both_bodies)
{
    static const int64_t dims[][4] = { { 4, 2, 64, 64 }, { 8, 2, 128, 128 }, { 4, 1, 128, 64 }, { 2, 2, 64, 128 } };
    char *body_was = env_saved("LM_HYBRID_BODY"), *den_was = env_saved("LM_HYBRID_DEN");
    char *fused_was = env_saved("LM_HYBRID_FUSED");
    env_set("LM_HYBRID_FUSED", "off"); /* the separate bodies (test_hybrid_fused: the fused window) */
    for (int run = 0; run < 4; run++) {
        env_set("LM_HYBRID_BODY", run & 1 ? "wmma" : NULL);
        env_set("LM_HYBRID_DEN", run & 2 ? "passA" : NULL);
        ref_seed(307);
        for (int i = 0; i < (gpu_small ? 2 : 4); i++) {
            hcase c = base_case();
            c.Hq = dims[i][0], c.Hkv = dims[i][1], c.Dk = dims[i][2], c.Dv = dims[i][3];
            c.L = 1000, c.mask = i % 2 == 0, c.W = i < 2 ? 64 : 100, c.s = i < 2 ? 4 : 5;
            c.precision = i == 1 ? LM_PRECISION_ON : LM_PRECISION_AUTO;
            check_case(&c);
        }
        hcase c = base_case();
        c.L = 260, c.mask = 1, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = 128;
        hprob p;
        hprob_init(&p, hybrid_gpu(), &c);
        hybrid_case_splits(&p);
        hprob_free(&p);
        if (!gpu_small) { /* past LM_PRECISION_AUTO_TOKENS: compensated, in segments */
            c = base_case();
            c.B = 1, c.L = 65600, c.Hq = 2, c.Hkv = 1, c.mask = 1;
            check_case(&c);
        }
    }
    env_set("LM_HYBRID_BODY", body_was);
    env_set("LM_HYBRID_DEN", den_was);
    env_set("LM_HYBRID_FUSED", fused_was);
    free(body_was), free(den_was), free(fused_was);
    gpu_end_test();
}
END_TEST

/* The window fused into the linear call (kernels/v2_window.cuh; bf16, Dk =
 * Dv in {64, 128}, W <= 64, s <= 16, no mask, compute capability 9.0, where
 * LM_HYBRID_FUSED=only makes every other call an error, so these cases prove
 * they fused; other GPUs run the separate body on them): windows and sinks at
 * the ends of the range (W 1 and 64, s 0 and 16, W + s not a multiple of 64),
 * lengths that leave a last chunk of 1 to 63 rows and the window's next chunk
 * past the delayed keys, GQA, both gate forms; split prefills (sinks, window
 * and z from the state); then the same cases with the separate body
 * (LM_HYBRID_FUSED=off) for the same bound; and, on the full grid, one call
 * past 64K tokens (compensated, in segments). Bounds as above. */
START_TEST(test_hybrid_fused)
{
    static const int64_t wins[][2] = { { 64, 4 }, { 64, 16 }, { 1, 0 }, { 7, 2 }, { 33, 9 }, { 16, 0 } };
    static const int64_t dims[][4] = { { 4, 2, 64, 64 }, { 8, 2, 128, 128 }, { 2, 2, 128, 128 } };
    static const int64_t tails[] = { 1, 70, 131, 1000, 2113 }; /* body rows */
    int major = 0, minor = 0, dev = 0;
    CUDA_OK(cudaGetDevice(&dev));
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    const char *kern = getenv("LM_ATTEND_KERNEL");
    const int fuses = major == 9 && minor == 0 && !(kern && !strcmp(kern, "v1"));
    char *fused_was = env_saved("LM_HYBRID_FUSED");
    for (int run = 0; run < 2; run++) {
        env_set("LM_HYBRID_FUSED", run ? "off" : fuses ? "only" : NULL);
        ref_seed(308);
        for (int w = 0; w < (gpu_small ? 2 : 6); w++)
            for (int d = 0; d < 3; d++) {
                hcase c = base_case();
                c.W = wins[w][0], c.s = wins[w][1];
                c.Hq = dims[d][0], c.Hkv = dims[d][1], c.Dk = dims[d][2], c.Dv = dims[d][3];
                c.mask = 0, c.L = c.W + c.s + tails[(w + d) % 5];
                c.gate_form = (w + d) % 2 ? LM_GATE_EXP : LM_GATE_SIGMOID;
                check_case(&c);
            }
        for (int i = 0; i < 2; i++) {
            hcase c = base_case();
            c.L = 260, c.mask = 0, c.Hq = 8, c.Hkv = 2, c.Dk = c.Dv = i ? 64 : 128;
            c.W = i ? 33 : 64, c.s = i ? 9 : 4;
            hprob p;
            hprob_init(&p, hybrid_gpu(), &c);
            hybrid_case_splits(&p);
            hprob_free(&p);
        }
        if (!gpu_small) { /* past LM_PRECISION_AUTO_TOKENS: compensated, in segments */
            hcase c = base_case();
            c.B = 1, c.L = 65600, c.Hq = 2, c.Hkv = 1, c.Dk = c.Dv = 128, c.mask = 0;
            check_case(&c);
        }
    }
    env_set("LM_HYBRID_FUSED", fused_was);
    free(fused_was);
    gpu_end_test();
}
END_TEST

/* A window too wide for shared memory is refused before anything changes. */
START_TEST(test_hybrid_refused)
{
    ref_seed(306);
    hcase c = base_case();
    c.B = 1, c.Hq = c.Hkv = 1, c.Dk = c.Dv = 16, c.L = 40, c.W = 100000, c.s = 0;
    hprob p;
    hprob_init(&p, hybrid_gpu(), &c);
    hstate st;
    hstate_new(&st, &p);
    void *dout = hout_new(&p);
    hcall k;
    hcall_init(&k, &p, LM_CUDA, dout, &st, 0, c.L);
    EXPECT_ERR(lm_linear_attn_prefill(&k.a, NULL), LM_ERR_UNSUPPORTED, "shared memory");
    hstate h;
    hstate_fetch(&h, &st, &p);
    int64_t changed = 0;
    for (int64_t i = 0; i < p.nS; i++)
        changed += h.S[i] != 0.0f;
    for (int64_t i = 0; i < p.npos; i++)
        changed += h.pos[i] != 0;
    CHECK(changed == 0, "a refused prefill changed %lld state entries", (long long)changed);
    hstate_free_host(&h);
    hout_free(&p, dout);
    hstate_free(&st, &p);
    hprob_free(&p);
    gpu_end_test();
}
END_TEST

/* Two runs of the same prefill give the same bits. */
START_TEST(test_hybrid_deterministic)
{
    ref_seed(304);
    hcase c = base_case();
    c.L = gpu_small ? 300 : 3000, c.B = 1, c.Hq = 4, c.Hkv = 2, c.Dk = c.Dv = 128, c.mask = 1;
    hprob p;
    hprob_init(&p, hybrid_gpu(), &c);
    const size_t bytes = (size_t)p.nout * 2;
    unsigned char *first = malloc(bytes), *again = malloc(bytes);
    void *dout = hout_new(&p);
    for (int run = 0; run < 2; run++) {
        hstate st;
        hstate_new(&st, &p);
        hout_poison(&p, dout);
        hcall k;
        hcall_init(&k, &p, LM_CUDA, dout, &st, 0, c.L);
        ck_assert_msg(lm_linear_attn_prefill(&k.a, NULL) == LM_OK, "%s", lm_last_error());
        ddownload_bytes(run ? again : first, dout, bytes);
        hstate_free(&st, &p);
    }
    CHECK(!memcmp(first, again, bytes), "two runs differ");
    hout_free(&p, dout);
    free(first), free(again);
    hprob_free(&p);
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
        cfg.window_gate_form = LM_GATE_EXP; /* the module passes its form (sigmoid: the core tests) */
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
        lm_tensor xt = ref_tensor3(g ? dx : x.data, dt, g ? LM_CUDA : LM_CPU, s3, B, L, E);
        lm_tensor ot = ref_tensor3(g ? dout : out[0].data, dt, g ? LM_CUDA : LM_CPU, s3, B, L, E);
        lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
        lm_tensor xa = ref_tokens(xt, 0, L1), oa = ref_tokens(ot, 0, L1), xb = ref_tokens(xt, L1, L2 - L1), obv = ref_tokens(ot, L1, L2 - L1);
        ck_assert_msg(lm_attn_forward(a[g], &xa, &xa, &xa, &o, &oa, NULL) == LM_OK, "%s", lm_last_error());
        o.use_state = 1;
        ck_assert_msg(lm_attn_forward(a[g], &xb, &xb, &xb, &o, &obv, NULL) == LM_OK, "%s", lm_last_error());
        for (int64_t t = L2; t < L; t++) {
            lm_tensor xs = ref_tokens(xt, t, 1), os = ref_tokens(ot, t, 1);
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
    /* The window's positions end the body, before the blob's 32-byte tag (keyed
     * per process over the body, docs/DESIGN.md §6.1: it differs wherever the
     * floats do, so it is left out). */
    const size_t tag = 32, tail = (size_t)(B * Hkv * (32 + 4)) * 4;
    CHECK(!memcmp(blob[0] + nb[0] - tag - tail, blob[1] + nb[1] - tag - tail, tail), "window positions differ");
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
    tcase_add_test(tc, test_hybrid_gate_exp);
    tcase_add_test(tc, test_hybrid_shapes_dtypes);
    tcase_add_test(tc, test_hybrid_split_and_decode);
    tcase_add_test(tc, test_hybrid_both_bodies);
    tcase_add_test(tc, test_hybrid_refused);
    tcase_add_test(tc, test_hybrid_deterministic);
    tcase_add_test(tc, test_hybrid_module);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("decode");
    tcase_set_timeout(td, 600);
    tcase_add_test(td, test_hybrid_decode);
    suite_add_tcase(s, td);
    /* Its own case (CK_RUN_CASE=fused: the sanitizers' run), last: a failure
     * leaves LM_HYBRID_FUSED=only set. */
    TCase *tf = tcase_create("fused");
    tcase_set_timeout(tf, 600);
    tcase_add_test(tf, test_hybrid_fused);
    suite_add_tcase(s, tf);
    return s;
}
