/*
 * test_pool_license.c - the license on the engine pool, per row: a sequence
 * or decode row that would take its slot past the license's context limit
 * is refused alone when the caller asks for per-row statuses (its slot,
 * position and outputs left as they were, the others run), and fails the
 * whole call, with nothing written, when it does not. `make test-c` runs
 * this suite twice: licensed (no limit: every row runs) and in evaluation
 * mode (no license in the environment, LM_TEST_EVALUATION=1: a limit of
 * LM_EVAL_MAX_TOKENS tokens). Each test runs on a linear and on a hybrid
 * pool (the same rules; a hybrid slot's window is left as it was too).
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NSLOT = 3, HK = 1, DH = 8, HW = 4, HS = 1, NW = NSLOT * HK * (HW + HS) };

typedef struct lic {
    int64_t limit;                    /* the license's, 0 = none */
    int hybrid;                       /* a hybrid pool (W = HW, s = HS) */
    float S[NSLOT * HK * DH * DH], z[NSLOT * HK * DH];
    float wk[NW * DH], wv[NW * DH];
    int32_t wp[NW];
    lm_pool *pool;
} lic;

static void lic_init(lic *l, int hybrid)
{
    l->hybrid = hybrid;
    lm_license_details d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    ck_assert_int_eq(lm_license_info(&d), LM_OK);
    ck_assert_msg(d.mode != LM_LICENSE_INVALID, "a refused license: %s", d.reason);
    l->limit = d.max_seq_len;
    /* make test-c's second run says which mode it set up. */
    if (getenv("LM_TEST_EVALUATION"))
        ck_assert_msg(d.mode == LM_LICENSE_EVALUATION && l->limit == LM_EVAL_MAX_TOKENS,
                      "expected evaluation mode, got mode %d, limit %lld", (int)d.mode, (long long)l->limit);
    lm_pool_config cfg;
    ck_assert_int_eq(lm_pool_config_default(&cfg, NSLOT, HK, DH), LM_OK);
    cfg.state = l->S, cfg.normalizer = l->z;
    if (hybrid) {
        cfg.attention = LM_ATTENTION_HYBRID, cfg.window = HW, cfg.sinks = HS;
        cfg.window_keys = l->wk, cfg.window_values = l->wv, cfg.window_pos = l->wp;
    }
    ck_assert_msg(lm_pool_create(&cfg, &l->pool) == LM_OK, "%s", lm_last_error());
}

/* Packed tokens for T rows of one kv head of DH (q, k, v share the data). */
typedef struct toks {
    float *x, *out;
    lm_tensor t, to;
} toks;

static void toks_init(toks *k, int64_t T)
{
    k->x = malloc((size_t)(T * HK * DH) * sizeof(float));
    k->out = malloc((size_t)(T * HK * DH) * sizeof(float));
    for (int64_t i = 0; i < T * HK * DH; i++)
        k->x[i] = (float)(ref_uniform() * 2 - 1), k->out[i] = NAN;
    k->t = lm_tensor_3d(k->x, LM_F32, LM_CPU, T, HK, DH);
    k->to = lm_tensor_3d(k->out, LM_F32, LM_CPU, T, HK, DH);
}

static void toks_free(toks *k)
{
    free(k->x), free(k->out);
}

static int64_t position(const lic *l, int64_t slot)
{
    int64_t p = -1;
    ck_assert_int_eq(lm_pool_slot_position(l->pool, slot, &p, NULL), LM_OK);
    return p;
}

/* Slot 0 filled to 4000 tokens, then 200 more (past an evaluation limit)
 * packed with a fresh 100-token sequence on slot 1. */
START_TEST(test_prefill_per_row)
{
    ref_seed(41);
    lic l;
    lic_init(&l, _i);
    const int64_t cap = l.limit ? l.limit : LM_EVAL_MAX_TOKENS;
    ck_assert_int_ge(cap, 300);
    toks first;
    toks_init(&first, cap - 96);
    const int32_t cu0[] = { 0, (int32_t)(cap - 96) }, s0[] = { 0 };
    lm_prefill_args a0 = { LM_SIZED(lm_prefill_args), .q = &first.t, .k = &first.t, .v = &first.t,
                           .out = &first.to, .num_seqs = 1, .cu_seqlens = cu0, .slots = s0 };
    ck_assert_msg(lm_pool_prefill(l.pool, &a0, NULL) == LM_OK, "%s", lm_last_error());
    float S[sizeof l.S / sizeof l.S[0]], z[sizeof l.z / sizeof l.z[0]];
    int32_t wp[NW];
    memcpy(S, l.S, sizeof S), memcpy(z, l.z, sizeof z), memcpy(wp, l.wp, sizeof wp);

    toks t;
    toks_init(&t, 300);
    const int32_t cu[] = { 0, 200, 300 }, slots[] = { 0, 1 };
    const uint8_t flags[] = { 0, LM_SEQ_FRESH };
    lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &t.t, .k = &t.t, .v = &t.t, .out = &t.to,
                          .num_seqs = 2, .cu_seqlens = cu, .slots = slots, .flags = flags };
    if (l.limit) { /* without row statuses: the whole call refused, nothing written */
        EXPECT_ERR(lm_pool_prefill(l.pool, &a, NULL), LM_ERR_LICENSE, "tokens of context");
        ck_assert(!memcmp(S, l.S, sizeof S) && !memcmp(z, l.z, sizeof z) && !memcmp(wp, l.wp, sizeof wp));
        for (int64_t i = 0; i < 300 * HK * DH; i++)
            ck_assert(isnan(t.out[i]));
        ck_assert_int_eq(position(&l, 1), 0);
    }
    lm_status st[2] = { LM_ERR_INTERNAL, LM_ERR_INTERNAL };
    a.row_status = st;
    ck_assert_msg(lm_pool_prefill(l.pool, &a, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert_int_eq(st[1], LM_OK);
    ck_assert_int_eq(position(&l, 1), 100);
    for (int64_t i = 200 * HK * DH; i < 300 * HK * DH; i++)
        ck_assert(isfinite(t.out[i]));
    if (l.limit) { /* sequence 0 refused alone */
        ck_assert_int_eq(st[0], LM_ERR_LICENSE);
        ck_assert_int_eq(position(&l, 0), cap - 96);
        ck_assert(!memcmp(S, l.S, HK * DH * DH * sizeof(float)) && !memcmp(z, l.z, HK * DH * sizeof(float)));
        ck_assert(!memcmp(wp, l.wp, HK * (HW + HS) * sizeof(int32_t))); /* slot 0's window */
        for (int64_t i = 0; i < 200 * HK * DH; i++)
            ck_assert(isnan(t.out[i]));
    } else {
        ck_assert_int_eq(st[0], LM_OK);
        ck_assert_int_eq(position(&l, 0), cap + 104);
    }
    toks_free(&first), toks_free(&t);
    lm_pool_destroy(l.pool);
}
END_TEST

/* A decode row at the limit is refused (row_status), the other row runs. */
START_TEST(test_decode_per_row)
{
    ref_seed(42);
    lic l;
    lic_init(&l, _i);
    const int64_t cap = l.limit ? l.limit : LM_EVAL_MAX_TOKENS;
    toks first;
    toks_init(&first, cap + 5);
    const int32_t cu0[] = { 0, (int32_t)cap, (int32_t)(cap + 5) }, s0[] = { 0, 2 };
    lm_prefill_args a0 = { LM_SIZED(lm_prefill_args), .q = &first.t, .k = &first.t, .v = &first.t,
                           .out = &first.to, .num_seqs = 2, .cu_seqlens = cu0, .slots = s0 };
    ck_assert_msg(lm_pool_prefill(l.pool, &a0, NULL) == LM_OK, "%s", lm_last_error()); /* slot 0 at the cap */
    toks t;
    toks_init(&t, 2);
    const int32_t rows[] = { 0, 2 };
    int32_t st[2] = { -1, -1 };
    lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &t.t, .k = &t.t, .v = &t.t, .out = &t.to, .slots = rows };
    if (l.limit)
        EXPECT_ERR(lm_pool_decode(l.pool, &d, NULL), LM_ERR_LICENSE, "tokens of context");
    d.row_status = st;
    ck_assert_msg(lm_pool_decode(l.pool, &d, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert_int_eq(st[1], LM_OK);
    ck_assert_int_eq(position(&l, 2), 6);
    ck_assert_int_eq(st[0], l.limit ? LM_ERR_LICENSE : LM_OK);
    ck_assert_int_eq(position(&l, 0), l.limit ? cap : cap + 1);
    for (int64_t i = 0; i < HK * DH; i++)
        ck_assert(l.limit ? isnan(t.out[i]) : isfinite(t.out[i]));
    toks_free(&first), toks_free(&t);
    lm_pool_destroy(l.pool);
}
END_TEST

/* Issue #19: a slot at the cap exported, its position rewritten to 0 and
 * imported would give the sequence another cap's worth of tokens. Under a
 * limit the tag refuses it (and a blob without its tag) and the slot stays
 * as it was; an unlimited license counts nothing and takes it. The
 * unaltered blob comes back at its own position, where decode is refused. */
START_TEST(test_forged_slot_blob)
{
    ref_seed(43);
    lic l;
    lic_init(&l, _i);
    const int64_t cap = l.limit ? l.limit : LM_EVAL_MAX_TOKENS;
    toks first;
    toks_init(&first, cap);
    const int32_t cu0[] = { 0, (int32_t)cap }, s0[] = { 0 };
    lm_prefill_args a0 = { LM_SIZED(lm_prefill_args), .q = &first.t, .k = &first.t, .v = &first.t,
                           .out = &first.to, .num_seqs = 1, .cu_seqlens = cu0, .slots = s0 };
    ck_assert_msg(lm_pool_prefill(l.pool, &a0, NULL) == LM_OK, "%s", lm_last_error());
    size_t bytes;
    ck_assert_int_eq(lm_pool_slot_blob_size(l.pool, &bytes), LM_OK);
    char *blob = malloc(bytes), *forged = malloc(bytes);
    ck_assert_int_eq(lm_pool_slot_export(l.pool, 0, blob, bytes, NULL), LM_OK);
    memcpy(forged, blob, bytes);
    const int64_t zero = 0;
    memcpy(forged + 48, &zero, sizeof zero); /* the header's position */
    if (l.limit) {
        EXPECT_ERR(lm_pool_slot_import(l.pool, 1, forged, bytes, NULL), LM_ERR_LICENSE, "was altered");
        EXPECT_ERR(lm_pool_slot_import(l.pool, 1, blob, bytes - 32, NULL), LM_ERR_LICENSE, "has no tag");
        ck_assert_int_eq(position(&l, 1), 0);
        for (int64_t i = 0; i < HK * DH * DH; i++)
            ck_assert(l.S[HK * DH * DH + i] == 0.0f); /* slot 1 untouched */
    } else if (l.hybrid) { /* counted nowhere, but the window says the slot holds `cap` tokens */
        EXPECT_ERR(lm_pool_slot_import(l.pool, 1, forged, bytes, NULL), LM_ERR_INVALID_ARG, "disagree");
        ck_assert_int_eq(position(&l, 1), 0);
    } else {
        ck_assert_msg(lm_pool_slot_import(l.pool, 1, forged, bytes, NULL) == LM_OK, "%s", lm_last_error());
        ck_assert_int_eq(position(&l, 1), 0);
    }
    ck_assert_msg(lm_pool_slot_import(l.pool, 1, blob, bytes, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert_int_eq(position(&l, 1), cap);
    const int64_t huge = INT64_MAX;
    memcpy(forged + 48, &huge, sizeof huge);
    EXPECT_ERR(lm_pool_slot_import(l.pool, 2, forged, bytes, NULL), LM_ERR_INVALID_ARG, "0..2^62");
    toks t;
    toks_init(&t, 1);
    const int32_t rows[] = { 1 };
    lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &t.t, .k = &t.t, .v = &t.t, .out = &t.to, .slots = rows };
    if (l.limit)
        EXPECT_ERR(lm_pool_decode(l.pool, &d, NULL), LM_ERR_LICENSE, "tokens of context");
    else
        ck_assert_msg(lm_pool_decode(l.pool, &d, NULL) == LM_OK, "%s", lm_last_error());
    free(blob), free(forged);
    toks_free(&first), toks_free(&t);
    lm_pool_destroy(l.pool);
}
END_TEST

Suite *pool_license_suite(void)
{
    Suite *s = suite_create("pool_license");
    TCase *tc = tcase_create("pool_license");
    tcase_add_loop_test(tc, test_prefill_per_row, 0, 2);
    tcase_add_loop_test(tc, test_decode_per_row, 0, 2);
    tcase_add_loop_test(tc, test_forged_slot_blob, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
