/*
 * test_pool.c - the engine API (lm_pool_*) on the CPU: the shared scenarios
 * of pool_cases.c against the float64 reference (ragged packed prefills,
 * slots in any order, decode rows mixed in, indexed decode with padding,
 * forks, the slot blob, the caller's workspace, the varlen paths' scenario
 * on the CPU's one path); the thread count (results
 * identical bit for bit); bad arguments refused with nothing written.
 */
#include "pool_cases.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_continuous_batching)
{
    pool_case_batching(&cpu_dev);
}
END_TEST

START_TEST(test_fork_and_blob)
{
    pool_case_fork_blob(&cpu_dev);
}
END_TEST

START_TEST(test_hybrid_core)
{
    pool_case_hybrid_core(&cpu_dev);
}
END_TEST

START_TEST(test_workspace)
{
    pool_case_workspace(&cpu_dev);
}
END_TEST

START_TEST(test_varlen_paths)
{
    pool_case_paths(&cpu_dev, 1, NULL, 0); /* the CPU has one way */
}
END_TEST

/* A pool of 4 slots of [2, 16, 16] in plain memory, and packed inputs. */
typedef struct small {
    float *S, *z;
    lm_pool *pool;
    tbuf q, k, v, out;
    lm_tensor tq, tk, tv, to;
} small;

static void small_init(small *s, int threads, int64_t T)
{
    s->S = calloc(4 * 2 * 16 * 16, sizeof(float));
    s->z = calloc(4 * 2 * 16, sizeof(float));
    lm_pool_config cfg;
    ck_assert_int_eq(lm_pool_config_default(&cfg, 4, 2, 16), LM_OK);
    cfg.state = s->S, cfg.normalizer = s->z, cfg.num_threads = threads;
    ck_assert_msg(lm_pool_create(&cfg, &s->pool) == LM_OK, "%s", lm_last_error());
    s->q = tbuf_new(LM_F32, T * 4 * 16), s->k = tbuf_new(LM_F32, T * 2 * 16);
    s->v = tbuf_new(LM_F32, T * 2 * 16), s->out = tbuf_new(LM_F32, T * 4 * 16);
    tbuf_random(&s->q, -2, 2), tbuf_random(&s->k, -2, 2), tbuf_random(&s->v, -1, 1);
    tbuf_poison(&s->out);
    s->tq = lm_tensor_3d(s->q.data, LM_F32, LM_CPU, T, 4, 16);
    s->tk = lm_tensor_3d(s->k.data, LM_F32, LM_CPU, T, 2, 16);
    s->tv = lm_tensor_3d(s->v.data, LM_F32, LM_CPU, T, 2, 16);
    s->to = lm_tensor_3d(s->out.data, LM_F32, LM_CPU, T, 4, 16);
}

static void small_free(small *s)
{
    lm_pool_destroy(s->pool);
    free(s->S), free(s->z);
    tbuf_free(&s->q), tbuf_free(&s->k), tbuf_free(&s->v), tbuf_free(&s->out);
}

/* num_threads 1 and 2: the same results, bit for bit (every task is one
 * sequence's or row's own: no sums across threads). */
START_TEST(test_threads)
{
    small s[2];
    for (int i = 0; i < 2; i++) {
        ref_seed(25);
        small_init(&s[i], i + 1, 400);
        const int32_t cu[] = { 0, 300, 301, 400 }, slots[] = { 1, 3, 0 };
        lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &s[i].tq, .k = &s[i].tk, .v = &s[i].tv,
                              .out = &s[i].to, .num_seqs = 3, .cu_seqlens = cu, .slots = slots };
        ck_assert_msg(lm_pool_prefill(s[i].pool, &a, NULL) == LM_OK, "%s", lm_last_error());
        lm_tensor tq = s[i].tq, tk = s[i].tk, tv = s[i].tv, to = s[i].to;
        tq.shape[0] = tk.shape[0] = tv.shape[0] = to.shape[0] = 4;
        const int32_t rows[] = { 0, 1, 2, 3 };
        lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .slots = rows };
        size_t bytes = 0;
        ck_assert_int_eq(lm_pool_decode_workspace(s[i].pool, &d, &bytes), LM_OK);
        ck_assert_uint_gt(bytes, 0);
        d.workspace = malloc(bytes), d.workspace_bytes = bytes / 2;
        EXPECT_ERR(lm_pool_decode(s[i].pool, &d, NULL), LM_ERR_INVALID_ARG, "workspace");
        d.workspace_bytes = bytes;
        ck_assert_msg(lm_pool_decode(s[i].pool, &d, NULL) == LM_OK, "%s", lm_last_error());
        free(d.workspace);
    }
    ck_assert(!memcmp(s[0].out.data, s[1].out.data, (size_t)s[0].out.n * sizeof(float)));
    ck_assert(!memcmp(s[0].S, s[1].S, 4 * 2 * 16 * 16 * sizeof(float)));
    ck_assert(!memcmp(s[0].z, s[1].z, 4 * 2 * 16 * sizeof(float)));
    for (int i = 0; i < 2; i++)
        small_free(&s[i]);
}
END_TEST

/* Bad arguments: each refused with a message, and nothing written: the
 * outputs keep their poison, the slots their bytes, the positions their
 * values. */
START_TEST(test_bad_arguments)
{
    ref_seed(24);
    small f;
    small_init(&f, 0, 10);
    const int32_t cu0[] = { 0, 6, 10 }, sl0[] = { 1, 2 };
    lm_tensor o0 = f.to;
    tbuf scratch = tbuf_new(LM_F32, f.out.n);
    o0.data = scratch.data;
    lm_prefill_args a0 = { LM_SIZED(lm_prefill_args), .q = &f.tq, .k = &f.tk, .v = &f.tv, .out = &o0,
                           .num_seqs = 2, .cu_seqlens = cu0, .slots = sl0 };
    ck_assert_int_eq(lm_pool_prefill(f.pool, &a0, NULL), LM_OK);
    float S[4 * 2 * 16 * 16], z[4 * 2 * 16];
    memcpy(S, f.S, sizeof S), memcpy(z, f.z, sizeof z);
    int32_t cu[] = { 0, 4, 10 }, slots[] = { 0, 3 };
    uint8_t flags[] = { 0, 0 };
    lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &f.tq, .k = &f.tk, .v = &f.tv, .out = &f.to,
                          .num_seqs = 2, .cu_seqlens = cu, .slots = slots, .flags = flags };
#define BAD(field, value, st, needle)                                                             \
    do {                                                                                          \
        lm_prefill_args b = a;                                                                    \
        b.field = value;                                                                          \
        EXPECT_ERR(lm_pool_prefill(f.pool, &b, NULL), st, needle);                                \
    } while (0)
    BAD(struct_size, 0, LM_ERR_INVALID_ARG, "struct_size is 0");
    BAD(num_seqs, 0, LM_ERR_INVALID_ARG, "num_seqs");
    BAD(cu_seqlens, NULL, LM_ERR_INVALID_ARG, "cu_seqlens");
    BAD(slots, NULL, LM_ERR_INVALID_ARG, "slots");
    BAD(q, NULL, LM_ERR_INVALID_ARG, "required");
    BAD(workspace_bytes, 8, LM_ERR_INVALID_ARG, "workspace is NULL");
    cu[0] = 1;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "cu_seqlens must run from 0");
    cu[0] = 0, cu[2] = 9;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "cu_seqlens must run from 0 to T");
    cu[2] = 10, cu[1] = 11;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "decreases at 1");
    cu[1] = 4, slots[1] = 4;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "slots[1] = 4 is not a slot");
    slots[1] = -2;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "slots[1] = -2");
    slots[1] = 0;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "slot 0 appears twice");
    slots[1] = 3, flags[1] = 4;
    EXPECT_ERR(lm_pool_prefill(f.pool, &a, NULL), LM_ERR_INVALID_ARG, "unknown bits");
    flags[1] = 0;
    lm_tensor wrong = f.tk;
    wrong.shape[1] = 4; /* the pool has 2 kv heads */
    BAD(k, &wrong, LM_ERR_INVALID_ARG, "k is [10, 4, 16]");
    wrong = f.tq;
    wrong.dtype = LM_BF16;
    BAD(q, &wrong, LM_ERR_INVALID_ARG, "share one of");
    wrong = f.tq;
    wrong.shape[1] = 3;
    BAD(q, &wrong, LM_ERR_INVALID_ARG, "multiple of the pool's 2 kv heads");
    lm_tensor alias = f.to;
    alias.data = f.q.data;
    BAD(out, &alias, LM_ERR_INVALID_ARG, "overlaps q");
    lm_tensor on_gpu = f.tv;
    on_gpu.device = LM_CUDA;
    BAD(v, &on_gpu, LM_ERR_INVALID_ARG, "v is on cuda");
#undef BAD

    int32_t rows[] = { 1, -1, 9 };
    lm_tensor tq = f.tq, tk = f.tk, tv = f.tv, to = f.to;
    tq.shape[0] = tk.shape[0] = tv.shape[0] = to.shape[0] = 3;
    lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .slots = rows };
    EXPECT_ERR(lm_pool_decode(f.pool, &d, NULL), LM_ERR_INVALID_ARG, "slots[2] = 9");
    rows[2] = 1;
    EXPECT_ERR(lm_pool_decode(f.pool, &d, NULL), LM_ERR_INVALID_ARG, "slot 1 appears twice in one call (row 2)");
    d.slots = NULL;
    EXPECT_ERR(lm_pool_decode(f.pool, &d, NULL), LM_ERR_INVALID_ARG, "slots is NULL");
    d.struct_size = 0;
    EXPECT_ERR(lm_pool_decode(f.pool, &d, NULL), LM_ERR_INVALID_ARG, "lm_decode_args.struct_size is 0");
    EXPECT_ERR(lm_pool_slot_copy(f.pool, 4, 0, NULL), LM_ERR_INVALID_ARG, "dst 4 is not a slot");
    EXPECT_ERR(lm_pool_slot_copy(f.pool, 0, -1, NULL), LM_ERR_INVALID_ARG, "src -1 is not a slot");
    EXPECT_ERR(lm_pool_slot_zero(f.pool, 7, NULL), LM_ERR_INVALID_ARG, "slot 7 is not a slot");

    for (int64_t i = 0; i < f.out.n; i++)
        ck_assert_msg(isnan(tbuf_get(&f.out, i)), "a refused call wrote output %lld", (long long)i);
    ck_assert_msg(!memcmp(S, f.S, sizeof S) && !memcmp(z, f.z, sizeof z), "a refused call wrote a slot");
    const int64_t want[] = { 0, 6, 4, 0 };
    for (int64_t i = 0; i < 4; i++) {
        int64_t pos = -1;
        ck_assert_int_eq(lm_pool_slot_position(f.pool, i, &pos, NULL), LM_OK);
        ck_assert_int_eq(pos, want[i]);
    }

    /* Configurations. */
    lm_pool_config cfg;
    lm_pool *pool = NULL;
    ck_assert_int_eq(lm_pool_config_default(&cfg, 0, 2, 16), LM_OK);
    cfg.state = S, cfg.normalizer = z;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "num_slots");
    cfg.num_slots = 2, cfg.state = NULL;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "caller's slot memory");
    cfg.state = S, cfg.state_stride = 100; /* a slot's S is 2 x 16 x 16 */
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "slots would overlap");
    cfg.state_stride = 0;
    const float decay[] = { 0.5f, 1.5f };
    cfg.decay = decay;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "decay[1]");
    cfg.decay = NULL, cfg.num_threads = -1;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "num_threads");
    cfg.num_threads = 0, cfg.struct_size = 8;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "smaller than any release");
    ck_assert_ptr_null(pool);
    tbuf_free(&scratch);
    small_free(&f);
}
END_TEST

/* Hybrid pools: configurations refused with a message; a call whose q has
 * other heads than num_heads refused with nothing written; a caller whose
 * struct ends before `attention` (an older header) gets a linear pool. */
START_TEST(test_hybrid_config)
{
    enum { N = 3, HKV = 2, D = 16, W = 4, SK = 1, NS = SK + W };
    static float S[N * HKV * D * D], z[N * HKV * D], wk[N * HKV * NS * D], wv[N * HKV * NS * D];
    static int32_t wp[N * HKV * NS];
    const float gate[4] = { 0.5f, -1.0f, 2.0f, 0.0f }, decay[HKV] = { 0.5f, 0.9f };
    lm_pool_config cfg;
    lm_pool *pool = NULL;
    ck_assert_int_eq(lm_pool_config_default(&cfg, N, HKV, D), LM_OK);
    ck_assert_int_eq(cfg.attention, LM_ATTENTION_LINEAR);
    ck_assert_int_eq(cfg.window, LM_HYBRID_WINDOW_DEFAULT);
    ck_assert_int_eq(cfg.sinks, LM_HYBRID_SINKS_DEFAULT);
    cfg.state = S, cfg.normalizer = z;
    cfg.attention = LM_ATTENTION_HYBRID, cfg.window = W, cfg.sinks = SK;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "window_keys, window_values and window_pos");
    cfg.window_keys = wk, cfg.window_values = wv, cfg.window_pos = wp;
    cfg.decay = decay;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_UNSUPPORTED, "no decay");
    cfg.decay = NULL, cfg.normalize = 0;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "normalize = 1");
    cfg.normalize = 1, cfg.window = 0;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "window must be in 1..");
    cfg.window = W, cfg.sinks = -1;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "sinks must be");
    cfg.sinks = SK, cfg.attention = (lm_attention)7;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "attention 7");
    cfg.attention = LM_ATTENTION_HYBRID, cfg.window_gate = gate;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "set num_heads");
    cfg.num_heads = 3;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "multiple of the 2 kv heads");
    cfg.num_heads = 4, cfg.window_keys_stride = HKV * NS * D - 1;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "slots would overlap");
    cfg.window_keys_stride = 0, cfg.window_pos_stride = -1;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "window slot strides");
    cfg.window_pos_stride = 0;
    const float bad_gate[4] = { 0.0f, NAN, 0.0f, 0.0f };
    cfg.window_gate = bad_gate;
    EXPECT_ERR(lm_pool_create(&cfg, &pool), LM_ERR_INVALID_ARG, "window_gate[1]");
    ck_assert_ptr_null(pool);
    cfg.window_gate = gate;
    for (size_t i = 0; i < sizeof wp / sizeof wp[0]; i++)
        wp[i] = 77; /* the pool empties the window too */
    ck_assert_msg(lm_pool_create(&cfg, &pool) == LM_OK, "%s", lm_last_error());
    for (size_t i = 0; i < sizeof wp / sizeof wp[0]; i++)
        ck_assert_int_eq(wp[i], 0);

    /* q with 2 heads where the pool's layer has 4: refused, nothing written. */
    tbuf q = tbuf_new(LM_F32, 3 * 2 * D), k = tbuf_new(LM_F32, 3 * HKV * D), v = tbuf_new(LM_F32, 3 * HKV * D),
         out = tbuf_new(LM_F32, 3 * 2 * D);
    tbuf_random(&q, -1, 1), tbuf_random(&k, -1, 1), tbuf_random(&v, -1, 1), tbuf_poison(&out);
    lm_tensor tq = lm_tensor_3d(q.data, LM_F32, LM_CPU, 3, 2, D), tk = lm_tensor_3d(k.data, LM_F32, LM_CPU, 3, HKV, D),
              tv = lm_tensor_3d(v.data, LM_F32, LM_CPU, 3, HKV, D), to = lm_tensor_3d(out.data, LM_F32, LM_CPU, 3, 2, D);
    const int32_t cu[] = { 0, 3 }, slots[] = { 1 };
    lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .num_seqs = 1,
                          .cu_seqlens = cu, .slots = slots };
    EXPECT_ERR(lm_pool_prefill(pool, &a, NULL), LM_ERR_INVALID_ARG, "num_heads is 4");
    for (int64_t i = 0; i < out.n; i++)
        ck_assert(isnan(tbuf_get(&out, i)));
    for (size_t i = 0; i < sizeof wp / sizeof wp[0]; i++)
        ck_assert_int_eq(wp[i], 0);
    lm_pool_destroy(pool);

    /* An older caller's struct (up to num_threads): a linear pool, its window untouched. */
    lm_pool_config old = cfg;
    old.struct_size = (uint32_t)offsetof(lm_pool_config, attention);
    for (size_t i = 0; i < sizeof wp / sizeof wp[0]; i++)
        wp[i] = 77;
    ck_assert_msg(lm_pool_create(&old, &pool) == LM_OK, "%s", lm_last_error());
    size_t bytes = 0;
    ck_assert_int_eq(lm_pool_slot_blob_size(pool, &bytes), LM_OK);
    ck_assert_uint_eq(bytes, 56 + sizeof S / N + sizeof z / N + 32);
    for (size_t i = 0; i < sizeof wp / sizeof wp[0]; i++)
        ck_assert_int_eq(wp[i], 77);
    lm_pool_destroy(pool);
    tbuf_free(&q), tbuf_free(&k), tbuf_free(&v), tbuf_free(&out);
}
END_TEST

Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_continuous_batching);
    tcase_add_test(tc, test_fork_and_blob);
    tcase_add_test(tc, test_hybrid_core);
    tcase_add_test(tc, test_workspace);
    tcase_add_test(tc, test_varlen_paths);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_hybrid_config);
    suite_add_tcase(s, tc);
    return s;
}
