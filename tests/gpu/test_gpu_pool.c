/*
 * test_gpu_pool.c - the engine pool on CUDA: the shared scenarios of
 * pool_cases.c against the float64 reference (bounds of gpu_util.h); the
 * indexed decode captured in a CUDA graph and replayed with new indices and
 * inputs (positions advanced on the device, outputs as the CPU pool's); the
 * checks the decode kernel makes itself (an index out of range: the row is
 * refused in row_status and nothing of it written; padding rows LM_OK), on
 * linear and hybrid pools; a hybrid pool's prefill equal to the core's; a
 * right-padded prefill long enough for segments ends in the unpadded state;
 * a prefill with more decode rows than one table launch takes, as the CPU
 * pool's (linear and hybrid);
 * the varlen prefill's two paths (LM_POOL_PREFILL=each and packed, one pool
 * of each in this process) against the float64 reference and each other.
 */
#include "gpu_util.h"
#include "pool_cases.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_gpu_pool_batching)
{
    pool_case_batching(&gpu_dev);
}
END_TEST

START_TEST(test_gpu_pool_fork_blob)
{
    pool_case_fork_blob(&gpu_dev);
}
END_TEST

START_TEST(test_gpu_pool_workspace)
{
    pool_case_workspace(&gpu_dev);
}
END_TEST

/* LM_POOL_PREFILL is read when a pool is created: pool 0 of the scenario
 * runs each sequence as a core prefill of its own, pool 1 the packed launch
 * (lmk_attend_pack). */
static void select_path(int pool)
{
    setenv("LM_POOL_PREFILL", pool ? "packed" : "each", 1);
}

/* Both paths on pool_case_paths: outputs within gpu_dev's bound of the
 * float64 reference (bf16: 1.2 x the output-rounding floor plus sampling
 * slack and 4e-4, gpu_util.h) and of each other, slot states within 4e-3
 * relative, the untouched slot NaN throughout, positions exact. */
START_TEST(test_gpu_pool_paths)
{
    const char *was = getenv("LM_POOL_PREFILL");
    char *saved = was ? strdup(was) : NULL;
    pool_case_paths(&gpu_dev, 2, select_path, gpu_small);
    if (saved)
        setenv("LM_POOL_PREFILL", saved, 1);
    else
        unsetenv("LM_POOL_PREFILL");
    free(saved);
}
END_TEST

START_TEST(test_gpu_pool_hybrid_core)
{
    pool_case_hybrid_core(&gpu_dev);
}
END_TEST

enum { GN = 8, GH = 4, GD = 64, GB = 5, GW = 2, GS = 1 };

/* Floats of the pool_on memory of n slots: every slot's S, z and, for a
 * hybrid pool (W = GW, s = GS), its window's keys, values and positions. */
static size_t pool_floats(int hybrid, int64_t n)
{
    return (size_t)n * GH * (GD * GD + GD + (hybrid ? (GW + GS) * (2 * GD + 1) : 0));
}

/* A pool of n slots of [GH, GD, GD] on `dev` over memory of its own (*mem:
 * S, z, then a hybrid pool's window parts, each packed). */
static lm_pool *pool_on(lm_device dev, int hybrid, int64_t n, float **mem)
{
    const size_t floats = pool_floats(hybrid, n);
    *mem = dev == LM_CUDA ? dmalloc(floats * sizeof(float)) : malloc(floats * sizeof(float));
    lm_pool_config cfg;
    ck_assert_int_eq(lm_pool_config_default(&cfg, n, GH, GD), LM_OK);
    cfg.device = dev, cfg.state = *mem, cfg.normalizer = *mem + (size_t)n * GH * GD * GD;
    if (hybrid) {
        cfg.attention = LM_ATTENTION_HYBRID, cfg.window = GW, cfg.sinks = GS;
        cfg.window_keys = cfg.normalizer + n * GH * GD;
        cfg.window_values = cfg.window_keys + n * GH * (GW + GS) * GD;
        cfg.window_pos = (int32_t *)(cfg.window_values + n * GH * (GW + GS) * GD);
    }
    lm_pool *p;
    ck_assert_msg(lm_pool_create(&cfg, &p) == LM_OK, "%s", lm_last_error());
    return p;
}

/* lm_pool_decode captured once in a graph, replayed with other indices and
 * inputs: the CPU pool given the same steps one call at a time agrees; a
 * linear and a hybrid pool (W = 2, s = 1: the replays fold tokens out of the
 * window). */
START_TEST(test_gpu_pool_graph)
{
    const int hybrid = _i;
    ref_seed(31);
    float *gmem, *hmem;
    lm_pool *gp = pool_on(LM_CUDA, hybrid, GN, &gmem), *cp = pool_on(LM_CPU, hybrid, GN, &hmem);
    const int64_t row = GH * GD;
    float *q = malloc(GB * row * sizeof(float)), *k = malloc(GB * row * sizeof(float));
    float *v = malloc(GB * row * sizeof(float)), *o = malloc(GB * row * sizeof(float));
    float *go = malloc(GB * row * sizeof(float));
    void *dq = dmalloc(GB * row * sizeof(float)), *dk = dmalloc(GB * row * sizeof(float));
    void *dv = dmalloc(GB * row * sizeof(float)), *dout = dmalloc(GB * row * sizeof(float));
    int32_t *dslots = dmalloc(GB * sizeof(int32_t));
    lm_tensor tq = lm_tensor_3d(dq, LM_F32, LM_CUDA, GB, GH, GD), tk = lm_tensor_3d(dk, LM_F32, LM_CUDA, GB, GH, GD);
    lm_tensor tv = lm_tensor_3d(dv, LM_F32, LM_CUDA, GB, GH, GD), to = lm_tensor_3d(dout, LM_F32, LM_CUDA, GB, GH, GD);
    lm_tensor hq = lm_tensor_3d(q, LM_F32, LM_CPU, GB, GH, GD), hk = lm_tensor_3d(k, LM_F32, LM_CPU, GB, GH, GD);
    lm_tensor hv = lm_tensor_3d(v, LM_F32, LM_CPU, GB, GH, GD), ho = lm_tensor_3d(o, LM_F32, LM_CPU, GB, GH, GD);
    lm_decode_args gd = { LM_SIZED(lm_decode_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .slots = dslots };
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    static const int32_t steps[6][GB] = { { 0, 1, 2, 3, 4 }, { 5, -1, 2, 7, 0 }, { 3, 6, -1, -1, 1 },
                                          { 7, 5, 4, 2, 0 }, { 0, 2, 5, 7, 3 }, { 2, 0, -1, 4, 5 } };
    cudaGraphExec_t exec = NULL;
    for (int st = 0; st < 6; st++) {
        for (int64_t i = 0; i < GB * row; i++) {
            q[i] = (float)(4 * ref_uniform() - 2), k[i] = (float)(4 * ref_uniform() - 2);
            v[i] = (float)(2 * ref_uniform() - 1);
        }
        CUDA_OK(cudaMemcpyAsync(dq, q, GB * row * sizeof(float), cudaMemcpyHostToDevice, s));
        CUDA_OK(cudaMemcpyAsync(dk, k, GB * row * sizeof(float), cudaMemcpyHostToDevice, s));
        CUDA_OK(cudaMemcpyAsync(dv, v, GB * row * sizeof(float), cudaMemcpyHostToDevice, s));
        CUDA_OK(cudaMemcpyAsync(dslots, steps[st], sizeof steps[st], cudaMemcpyHostToDevice, s));
        CUDA_OK(cudaMemsetAsync(dout, 0xff, GB * row * sizeof(float), s));
        if (!exec) { /* the first step is the capture's, replayed like the others */
            cudaGraph_t g;
            CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            lm_status r = lm_pool_decode(gp, &gd, s);
            CUDA_OK(cudaStreamEndCapture(s, &g));
            ck_assert_msg(r == LM_OK, "captured decode: %s", lm_last_error());
            CUDA_OK(cudaGraphInstantiate(&exec, g, 0));
            CUDA_OK(cudaGraphDestroy(g));
        }
        CUDA_OK(cudaGraphLaunch(exec, s));
        CUDA_OK(cudaStreamSynchronize(s));
        CUDA_OK(cudaMemcpy(go, dout, GB * row * sizeof(float), cudaMemcpyDeviceToHost));
        for (int64_t i = 0; i < GB * row; i++)
            o[i] = NAN;
        lm_decode_args cd = { LM_SIZED(lm_decode_args), .q = &hq, .k = &hk, .v = &hv, .out = &ho,
                              .slots = steps[st] };
        ck_assert_msg(lm_pool_decode(cp, &cd, NULL) == LM_OK, "%s", lm_last_error());
        double num = 0, den = 0;
        for (int64_t i = 0; i < GB * row; i++) {
            if (steps[st][i / row] < 0) { /* padding: the poison stays */
                CHECK(isnan(go[i]), "step %d: padding row %lld written", st, (long long)(i / row));
                continue;
            }
            num += (go[i] - o[i]) * (double)(go[i] - o[i]), den += (double)o[i] * o[i];
        }
        CHECK(sqrt(num / den) <= 1e-5, "step %d (hybrid %d): graph replay vs CPU pool: rel. error %.3g", st, hybrid,
              sqrt(num / den));
    }
    for (int64_t slot = 0; slot < GN; slot++) {
        int64_t pg = -1, pc = -2;
        ck_assert_int_eq(lm_pool_slot_position(gp, slot, &pg, s), LM_OK);
        ck_assert_int_eq(lm_pool_slot_position(cp, slot, &pc, NULL), LM_OK);
        CHECK(pg == pc, "slot %lld: position %lld on the GPU (graph replays), %lld on the CPU", (long long)slot,
              (long long)pg, (long long)pc);
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaStreamDestroy(s));
    lm_pool_destroy(gp), lm_pool_destroy(cp);
    cudaFree(gmem), free(hmem);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dslots);
    free(q), free(k), free(v), free(o), free(go);
    gpu_end_test();
}
END_TEST

/* Indices are checked by the kernel: out of range, the row is refused in
 * row_status (LM_ERR_INVALID_ARG) and nothing of it is written; a linear and
 * a hybrid pool. */
START_TEST(test_gpu_pool_row_status)
{
    float *mem;
    lm_pool *gp = pool_on(LM_CUDA, _i, GN, &mem);
    const int64_t row = GH * GD;
    float *h = malloc(3 * row * sizeof(float)), *out = malloc(3 * row * sizeof(float));
    for (int64_t i = 0; i < 3 * row; i++)
        h[i] = (float)((i % 17) - 8) / 8.0f;
    void *dx = dupload_bytes(h, 3 * row * sizeof(float)), *dout = dmalloc(3 * row * sizeof(float));
    dpoison(dout, 3 * row * sizeof(float));
    const int32_t slots[3] = { 2, GN + 3, -1 };
    int32_t status[3] = { -7, -7, -7 };
    int32_t *dslots = dupload_bytes(slots, sizeof slots), *dstatus = dupload_bytes(status, sizeof status);
    lm_tensor t = lm_tensor_3d(dx, LM_F32, LM_CUDA, 3, GH, GD), to = lm_tensor_3d(dout, LM_F32, LM_CUDA, 3, GH, GD);
    lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &t, .k = &t, .v = &t, .out = &to, .slots = dslots,
                         .row_status = dstatus };
    ck_assert_msg(lm_pool_decode(gp, &d, NULL) == LM_OK, "%s", lm_last_error());
    ddownload_bytes(status, dstatus, sizeof status);
    ddownload_bytes(out, dout, 3 * row * sizeof(float));
    CHECK(status[0] == LM_OK && status[1] == LM_ERR_INVALID_ARG && status[2] == LM_OK,
          "row statuses %d %d %d, expected ok, invalid argument, ok", status[0], status[1], status[2]);
    for (int64_t i = 0; i < 3 * row; i++)
        CHECK(i < row ? isfinite(out[i]) : isnan(out[i]), "output %lld of row %lld: %g", (long long)i,
              (long long)(i / row), out[i]);
    int64_t pos = -1;
    ck_assert_int_eq(lm_pool_slot_position(gp, 2, &pos, NULL), LM_OK);
    CHECK(pos == 1, "slot 2 at position %lld after one step", (long long)pos);
    lm_pool_destroy(gp);
    cudaFree(mem), cudaFree(dx), cudaFree(dout), cudaFree(dslots), cudaFree(dstatus);
    free(h), free(out);
    gpu_end_test();
}
END_TEST

/* Relative L2 distance of x from want, n floats. */
static double rel_l2(const float *x, const float *want, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++)
        num += (x[i] - (double)want[i]) * (x[i] - (double)want[i]), den += (double)want[i] * want[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

enum { MN = 1100 }; /* slots: more decode rows in one call than a table launch takes (1024) */

/* A prefill of MN + 1 sequences, most of them decode rows (length 1, a
 * slot): more than one table launch (LMK_DECODE_TABLE,
 * LMK_HYBRID_DECODE_TABLE: 1024 rows each). Four calls: every slot fresh,
 * continued in reverse order with every 7th restarted fresh, continued, and
 * continued in reverse (the hybrid's W = 2, s = 1: tokens fold out of the
 * window); every 97th sequence 3 to 6 tokens long (a prefill), one without
 * a slot. Outputs, slot memory and positions as the CPU pool's given the
 * same calls: outputs within out_bound (f32: 3e-5 relative L2), S, z and
 * window keys and values within state_bound (5e-5), window codes exact. A
 * linear and a hybrid pool. */
START_TEST(test_gpu_pool_many_rows)
{
    const int hybrid = _i;
    ref_seed(33);
    float *gmem, *hmem;
    lm_pool *gp = pool_on(LM_CUDA, hybrid, MN, &gmem), *cp = pool_on(LM_CPU, hybrid, MN, &hmem);
    const int64_t row = GH * GD, n = MN + 1, floats = (int64_t)pool_floats(hybrid, MN);
    const int64_t codes = hybrid ? (int64_t)MN * GH * (GW + GS) : 0; /* int32, at the end */
    int32_t *cu = malloc((size_t)(n + 1) * sizeof *cu), *slots = malloc((size_t)n * sizeof *slots);
    uint8_t *flags = malloc((size_t)n);
    float *back = malloc((size_t)floats * sizeof(float));
    for (int call = 0; call < 4; call++) {
        cu[0] = 0;
        for (int64_t i = 0; i < n; i++) {
            slots[i] = i == MN ? -1 : (int32_t)(call % 2 ? MN - 1 - i : i);
            flags[i] = call == 0 || (call == 1 && i % 7 == 3) ? LM_SEQ_FRESH : 0;
            cu[i + 1] = cu[i] + (i % 97 == 5 ? 3 + call : 1);
        }
        const int64_t T = cu[n];
        float *x[4];
        void *dx[4];
        for (int j = 0; j < 4; j++) {
            x[j] = malloc((size_t)(T * row) * sizeof(float));
            for (int64_t i = 0; i < T * row; i++)
                x[j][i] = (float)(j == 2 ? 2 * ref_uniform() - 1 : 4 * ref_uniform() - 2);
            dx[j] = dupload_bytes(x[j], (size_t)(T * row) * sizeof(float));
        }
        float *gout = malloc((size_t)(T * row) * sizeof(float));
        for (int64_t i = 0; i < T * row; i++)
            x[3][i] = NAN;
        dpoison(dx[3], (size_t)(T * row) * sizeof(float));
        lm_tensor g[4], h[4];
        for (int j = 0; j < 4; j++) {
            g[j] = lm_tensor_3d(dx[j], LM_F32, LM_CUDA, T, GH, GD);
            h[j] = lm_tensor_3d(x[j], LM_F32, LM_CPU, T, GH, GD);
        }
        lm_prefill_args ga = { LM_SIZED(lm_prefill_args), .q = &g[0], .k = &g[1], .v = &g[2], .out = &g[3],
                               .num_seqs = (int32_t)n, .cu_seqlens = cu, .slots = slots, .flags = flags };
        lm_prefill_args ha = ga;
        ha.q = &h[0], ha.k = &h[1], ha.v = &h[2], ha.out = &h[3];
        ck_assert_msg(lm_pool_prefill(gp, &ga, NULL) == LM_OK, "call %d: %s", call, lm_last_error());
        ck_assert_msg(lm_pool_prefill(cp, &ha, NULL) == LM_OK, "call %d: %s", call, lm_last_error());
        ddownload_bytes(gout, dx[3], (size_t)(T * row) * sizeof(float));
        const double eo = rel_l2(gout, x[3], T * row);
        CHECK(eo <= out_bound(LM_F32, 0, T * row), "call %d (hybrid %d): outputs %.3g from the CPU pool's", call,
              hybrid, eo);
        ddownload_bytes(back, gmem, (size_t)floats * sizeof(float));
        const double es = rel_l2(back, hmem, floats - codes);
        CHECK(es <= state_bound(LM_F32), "call %d (hybrid %d): slot memory %.3g from the CPU pool's", call,
              hybrid, es);
        CHECK(!memcmp(back + floats - codes, hmem + floats - codes, (size_t)codes * sizeof(int32_t)),
              "call %d: window position codes differ from the CPU pool's", call);
        for (int64_t slot = 0; slot < MN; slot++) {
            int64_t pg = -1, pc = -2;
            ck_assert_int_eq(lm_pool_slot_position(gp, slot, &pg, NULL), LM_OK);
            ck_assert_int_eq(lm_pool_slot_position(cp, slot, &pc, NULL), LM_OK);
            CHECK(pg == pc, "call %d: slot %lld at position %lld on the GPU, %lld on the CPU", call,
                  (long long)slot, (long long)pg, (long long)pc);
        }
        for (int j = 0; j < 4; j++)
            free(x[j]), cudaFree(dx[j]);
        free(gout);
    }
    lm_pool_destroy(gp), lm_pool_destroy(cp);
    cudaFree(gmem), free(hmem), free(back);
    free(cu), free(slots), free(flags);
    gpu_end_test();
}
END_TEST

/* With decay, a right-padded prefill ends in the state of the unpadded one,
 * also when the sequence is cut into segments (few heads: the GPU would
 * idle otherwise) and across chunks of the backward's length. */
START_TEST(test_gpu_masked_keys_keep_state)
{
    static const int64_t lengths[][2] = { { 100, 60 }, { 5000, 3001 }, { 20000, 9999 } };
    ref_seed(32);
    for (int li = 0; li < (gpu_small ? 1 : 3); li++) {
        const int64_t L = lengths[li][0], keep = lengths[li][1], H = 2, D = 64;
        tbuf q = tbuf_new(LM_BF16, L * H * D), k = tbuf_new(LM_BF16, L * H * D), v = tbuf_new(LM_BF16, L * H * D);
        tbuf_random(&q, -2, 2), tbuf_random(&k, -2, 2), tbuf_random(&v, -1, 1);
        void *dq = dupload(&q), *dk = dupload(&k), *dv = dupload(&v), *dout = dmalloc(L * H * D * 2);
        uint8_t *mask = calloc((size_t)L, 1);
        for (int64_t t = keep; t < L; t++)
            mask[t] = 1;
        void *dmask = dupload_bytes(mask, (size_t)L);
        const float decay[2] = { 0.999f, 0.9f };
        float *st[2], *hs[2];
        for (int pass = 0; pass < 2; pass++) { /* padded (mask), then the first `keep` tokens alone */
            const int64_t n = pass ? keep : L;
            st[pass] = dmalloc((size_t)(H * D * D + H * D) * sizeof(float));
            CUDA_OK(cudaMemset(st[pass], 0, (size_t)(H * D * D + H * D) * sizeof(float)));
            lm_tensor tq = lm_tensor_4d(dq, LM_BF16, LM_CUDA, 1, n, H, D), tk = lm_tensor_4d(dk, LM_BF16, LM_CUDA, 1, n, H, D);
            lm_tensor tv = lm_tensor_4d(dv, LM_BF16, LM_CUDA, 1, n, H, D), to = lm_tensor_4d(dout, LM_BF16, LM_CUDA, 1, n, H, D);
            lm_tensor tm = lm_tensor_2d(dmask, LM_BOOL, LM_CUDA, 1, L);
            lm_core_args a;
            ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
            a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to, a.decay = decay;
            a.key_padding_mask = pass ? NULL : &tm;
            a.state = st[pass], a.normalizer = st[pass] + H * D * D;
            ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "%s", lm_last_error());
            hs[pass] = malloc((size_t)(H * D * D + H * D) * sizeof(float));
            ddownload_bytes(hs[pass], st[pass], (size_t)(H * D * D + H * D) * sizeof(float));
        }
        double num = 0, den = 0;
        for (int64_t i = 0; i < H * D * D + H * D; i++)
            num += (hs[0][i] - hs[1][i]) * (double)(hs[0][i] - hs[1][i]), den += (double)hs[1][i] * hs[1][i];
        CHECK(sqrt(num / den) <= 5e-5, "L %lld padded after %lld: final state %.3g from the unpadded one",
              (long long)L, (long long)keep, sqrt(num / den));
        for (int pass = 0; pass < 2; pass++)
            cudaFree(st[pass]), free(hs[pass]);
        cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dmask);
        free(mask);
        tbuf_free(&q), tbuf_free(&k), tbuf_free(&v);
    }
    gpu_end_test();
}
END_TEST

Suite *gpu_pool_suite(void)
{
    Suite *s = suite_create("gpu_pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_gpu_pool_batching);
    tcase_add_test(tc, test_gpu_pool_fork_blob);
    tcase_add_test(tc, test_gpu_pool_workspace);
    tcase_add_test(tc, test_gpu_pool_paths);
    tcase_add_test(tc, test_gpu_pool_hybrid_core);
    tcase_add_loop_test(tc, test_gpu_pool_graph, 0, 2);
    tcase_add_loop_test(tc, test_gpu_pool_row_status, 0, 2);
    tcase_add_loop_test(tc, test_gpu_pool_many_rows, 0, 2);
    tcase_add_test(tc, test_gpu_masked_keys_keep_state);
    suite_add_tcase(s, tc);
    return s;
}
