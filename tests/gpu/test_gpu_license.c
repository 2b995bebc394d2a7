/*
 * test_gpu_license.c - the license's per-sequence count against CUDA graph
 * replays (issue #19), in evaluation mode (run with no license anywhere:
 * `lm-gpu-tests license`, see tests/gpu/main.c). A replay skips the host, so
 *   - a module step (and a forward that continues the state) cannot be
 *     captured: LM_ERR_LICENSE at capture, nothing enqueued; a fresh
 *     forward can (its length is baked into the graph, counted at capture);
 *   - a pool prefill cannot be captured;
 *   - the pool's indexed decode can: its kernel keeps the positions on the
 *     device and refuses, in row_status, a row that would pass the cap. A
 *     slot two tokens below the cap takes two replays and refuses the third.
 */
#include "gpu_util.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { E = 16, NH = 2, HK = 2, HD = 8, CAP = LM_EVAL_MAX_TOKENS };

static void require_evaluation(void)
{
    lm_license_details d = { LM_SIZED(lm_license_details) };
    ck_assert_int_eq(lm_license_info(&d), LM_OK);
    ck_assert_msg(d.mode == LM_LICENSE_EVALUATION,
                  "the license suite runs in evaluation mode: run it with LM_LICENSE and "
                  "LM_LICENSE_FILE unset and HOME without a license (mode is %d)", (int)d.mode);
}

START_TEST(test_gpu_module_capture_refused)
{
    require_evaluation();
    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, E, NH), LM_OK);
    cfg.device = LM_CUDA, cfg.max_batch = 1;
    lm_attn *a;
    ck_assert_msg(lm_attn_create(&cfg, &a) == LM_OK, "%s", lm_last_error());
    float w_in[3 * E * E], w_out[E * E], x[4 * E];
    for (int i = 0; i < 3 * E * E; i++)
        w_in[i] = (float)((i % 13) - 6) / 20.0f;
    for (int i = 0; i < E * E; i++)
        w_out[i] = (float)((i % 7) - 3) / 10.0f;
    for (int i = 0; i < 4 * E; i++)
        x[i] = (float)((i % 5) - 2) / 4.0f;
    float *dw_in = dupload_bytes(w_in, sizeof w_in), *dw_out = dupload_bytes(w_out, sizeof w_out);
    float *dx = dupload_bytes(x, sizeof x), *dy = dmalloc(sizeof x);
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = dw_in, .out_proj_weight = dw_out };
    ck_assert_int_eq(lm_attn_set_weights(a, &w), LM_OK);
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    lm_tensor t3 = lm_tensor_3d(dx, LM_F32, LM_CUDA, 1, 4, E), y3 = lm_tensor_3d(dy, LM_F32, LM_CUDA, 1, 4, E);
    lm_forward_opts fresh = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    lm_forward_opts cont = fresh;
    cont.use_state = 1;
    ck_assert_msg(lm_attn_forward(a, &t3, &t3, &t3, &fresh, &y3, s) == LM_OK, "%s", lm_last_error());
    lm_tensor t2 = lm_tensor_2d(dx, LM_F32, LM_CUDA, 1, E), y2 = lm_tensor_2d(dy, LM_F32, LM_CUDA, 1, E);
    ck_assert_msg(lm_attn_step(a, &t2, &y2, s) == LM_OK, "%s", lm_last_error()); /* buffers made */
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_ERR(IN_CAPTURE(s, lm_attn_step(a, &t2, &y2, s)), LM_ERR_LICENSE, "cannot be captured");
    EXPECT_ERR(IN_CAPTURE(s, lm_attn_forward(a, &t3, &t3, &t3, &cont, &y3, s)), LM_ERR_LICENSE,
               "cannot be captured");
    int64_t pos;
    ck_assert_int_eq(lm_attn_position(a, &pos), LM_OK);
    ck_assert_int_eq(pos, 5); /* the refused captures changed nothing */
    lm_forward_opts once = { LM_SIZED(lm_forward_opts), .is_causal = 1 };
    ck_assert_msg(IN_CAPTURE(s, lm_attn_forward(a, &t3, &t3, &t3, &once, &y3, s)) == LM_OK,
                  "a fresh forward is counted at capture: %s", lm_last_error());
    CUDA_OK(cudaStreamDestroy(s));
    lm_attn_destroy(a);
    cudaFree(dw_in), cudaFree(dw_out), cudaFree(dx), cudaFree(dy);
    gpu_end_test();
}
END_TEST

START_TEST(test_gpu_pool_replay_stops_at_cap)
{
    require_evaluation();
    const size_t nS = 2 * HK * HD * HD, nz = 2 * HK * HD;
    float *S = dmalloc(nS * sizeof(float)), *z = dmalloc(nz * sizeof(float));
    lm_pool_config cfg;
    ck_assert_int_eq(lm_pool_config_default(&cfg, 2, HK, HD), LM_OK);
    cfg.device = LM_CUDA, cfg.state = S, cfg.normalizer = z;
    lm_pool *p;
    ck_assert_msg(lm_pool_create(&cfg, &p) == LM_OK, "%s", lm_last_error());
    const int64_t T = CAP - 2, row = HK * HD;
    float *h = malloc((size_t)(T * row) * sizeof(float));
    for (int64_t i = 0; i < T * row; i++)
        h[i] = (float)((i % 11) - 5) / 8.0f;
    float *dx = dupload_bytes(h, (size_t)(T * row) * sizeof(float)), *dout = dmalloc((size_t)(T * row) * sizeof(float));
    lm_tensor t = lm_tensor_3d(dx, LM_F32, LM_CUDA, T, HK, HD), to = lm_tensor_3d(dout, LM_F32, LM_CUDA, T, HK, HD);
    const int32_t cu[] = { 0, (int32_t)T }, slot0[] = { 0 };
    lm_prefill_args pa = { LM_SIZED(lm_prefill_args), .q = &t, .k = &t, .v = &t, .out = &to, .num_seqs = 1,
                           .cu_seqlens = cu, .slots = slot0 };
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ck_assert_msg(lm_pool_prefill(p, &pa, s) == LM_OK, "%s", lm_last_error());
    CUDA_OK(cudaStreamSynchronize(s));
    EXPECT_ERR(IN_CAPTURE(s, lm_pool_prefill(p, &pa, s)), LM_ERR_LICENSE, "cannot be captured");

    const int32_t one = 0;
    int32_t *dslot = dupload_bytes(&one, sizeof one), *dstatus = dmalloc(sizeof(int32_t));
    lm_tensor t1 = lm_tensor_3d(dx, LM_F32, LM_CUDA, 1, HK, HD), o1 = lm_tensor_3d(dout, LM_F32, LM_CUDA, 1, HK, HD);
    lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &t1, .k = &t1, .v = &t1, .out = &o1, .slots = dslot,
                         .row_status = dstatus };
    cudaGraph_t g;
    cudaGraphExec_t ex;
    CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    lm_status r = lm_pool_decode(p, &d, s);
    CUDA_OK(cudaStreamEndCapture(s, &g));
    ck_assert_msg(r == LM_OK, "the pool's decode is captured under the cap: %s", lm_last_error());
    CUDA_OK(cudaGraphInstantiate(&ex, g, 0));
    for (int replay = 0; replay < 3; replay++) {
        CUDA_OK(cudaMemsetAsync(dstatus, 0x7f, sizeof(int32_t), s));
        CUDA_OK(cudaGraphLaunch(ex, s));
        CUDA_OK(cudaStreamSynchronize(s));
        int32_t st = -1;
        ddownload_bytes(&st, dstatus, sizeof st);
        CHECK(st == (replay < 2 ? LM_OK : LM_ERR_LICENSE), "replay %d: row status %d", replay, st);
    }
    int64_t pos = -1;
    ck_assert_int_eq(lm_pool_slot_position(p, 0, &pos, s), LM_OK);
    CHECK(pos == CAP, "after three replays from %d the slot holds %lld tokens, the cap is %d", (int)T,
          (long long)pos, CAP);
    CUDA_OK(cudaGraphExecDestroy(ex));
    CUDA_OK(cudaGraphDestroy(g));
    CUDA_OK(cudaStreamDestroy(s));
    lm_pool_destroy(p);
    cudaFree(S), cudaFree(z), cudaFree(dx), cudaFree(dout), cudaFree(dslot), cudaFree(dstatus);
    free(h);
    gpu_end_test();
}
END_TEST

Suite *gpu_license_suite(void)
{
    Suite *s = suite_create("gpu_license");
    TCase *tc = tcase_create("evaluation");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gpu_module_capture_refused);
    tcase_add_test(tc, test_gpu_pool_replay_stops_at_cap);
    suite_add_tcase(s, tc);
    return s;
}
