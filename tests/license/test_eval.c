/*
 * test_eval.c - the gate as callers meet it, through the public API on the
 * CPU backend: evaluation mode allows exactly LM_EVAL_MAX_TOKENS (4096)
 * tokens of context in lm_attn_forward, lm_attn_step (whose position counts)
 * and the core prefill / decode, and refuses 4097 with a message saying how
 * to install a license, leaving the handle as it was; a license lifts the
 * cap or sets its own; an invalid license refuses even short contexts.
 */
#include "lt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define E 8
#define H 2
#define D (E / H)
#define CAP LM_EVAL_MAX_TOKENS
#define MAX_L (CAP + 1024)

typedef struct model {
    lm_attn *a;
    float w_in[3 * E * E], w_out[E * E];
    float *x, *y; /* [1, MAX_L, E] */
    float tok[E], tok_out[E];
} model;

static float small_random(void)
{
    return (float)randombytes_uniform(2001) / 1000.0f - 1.0f;
}

static void model_init_mode(model *m, lm_attention attention)
{
    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, E, H), LM_OK);
    cfg.attention = attention;
    ck_assert_int_eq(lm_attn_create(&cfg, &m->a), LM_OK);
    for (int i = 0; i < 3 * E * E; i++)
        m->w_in[i] = small_random() * 0.3f;
    for (int i = 0; i < E * E; i++)
        m->w_out[i] = small_random() * 0.3f;
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = m->w_in, .out_proj_weight = m->w_out };
    ck_assert_int_eq(lm_attn_set_weights(m->a, &w), LM_OK);
    m->x = malloc(sizeof(float) * MAX_L * E);
    m->y = malloc(sizeof(float) * MAX_L * E);
    ck_assert(m->x && m->y);
    for (int i = 0; i < MAX_L * E; i++)
        m->x[i] = small_random();
    for (int i = 0; i < E; i++)
        m->tok[i] = small_random();
}

static void model_init(model *m)
{
    model_init_mode(m, LM_ATTENTION_LINEAR);
}

static void model_free(model *m)
{
    lm_attn_destroy(m->a);
    free(m->x);
    free(m->y);
}

/* Causal self-attention over L tokens, continuing the state when use_state. */
static lm_status forward(model *m, int64_t L, int use_state)
{
    lm_tensor x = lm_tensor_3d(m->x, LM_F32, LM_CPU, 1, L, E);
    lm_tensor y = lm_tensor_3d(m->y, LM_F32, LM_CPU, 1, L, E);
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1, .use_state = use_state, .keep_state = 1 };
    return lm_attn_forward(m->a, &x, &x, &x, &o, &y, NULL);
}

static lm_status step(model *m)
{
    lm_tensor t = lm_tensor_2d(m->tok, LM_F32, LM_CPU, 1, E);
    lm_tensor o = lm_tensor_2d(m->tok_out, LM_F32, LM_CPU, 1, E);
    return lm_attn_step(m->a, &t, &o, NULL);
}

static int64_t position(const model *m)
{
    int64_t p;
    ck_assert_int_eq(lm_attn_position(m->a, &p), LM_OK);
    return p;
}

/* Asserts an evaluation-mode refusal that names the cap, the need and the fix. */
#define EXPECT_EVAL_REFUSAL(call, need)                                                        \
    do {                                                                                       \
        char need_[32];                                                                        \
        snprintf(need_, sizeof need_, "needs %d", (need));                                     \
        EXPECT_ERR((call), LM_ERR_LICENSE, "evaluation mode allows 4096 tokens");               \
        ck_assert_msg(strstr(lm_last_error(), need_), "%s", lm_last_error());                 \
        ck_assert(strstr(lm_last_error(), "lm_license_set()") &&                               \
                  strstr(lm_last_error(), "LM_LICENSE_FILE"));                                 \
    } while (0)

START_TEST(forward_at_4096_and_4097)
{
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, CAP, 0), LM_OK);
    ck_assert_msg(strstr(lm_last_error(), "evaluation mode"), "no notice: %s", lm_last_error());
    ck_assert_int_eq(position(&m), CAP);
    EXPECT_EVAL_REFUSAL(forward(&m, CAP + 1, 0), CAP + 1);
    ck_assert_int_eq(position(&m), CAP); /* the refused call changed nothing */
    model_free(&m);
}
END_TEST

/* A step after a 4096-token forward is token 4097. */
START_TEST(step_after_4096_is_token_4097)
{
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, CAP, 0), LM_OK);
    EXPECT_EVAL_REFUSAL(step(&m), CAP + 1);
    ck_assert_int_eq(position(&m), CAP);
    ck_assert_int_eq(forward(&m, CAP - 1, 0), LM_OK);
    ck_assert_int_eq(step(&m), LM_OK); /* token 4096 */
    ck_assert_int_eq(position(&m), CAP);
    EXPECT_EVAL_REFUSAL(step(&m), CAP + 1);
    /* after a reset the context starts again */
    ck_assert_int_eq(lm_attn_reset(m.a), LM_OK);
    ck_assert_int_eq(step(&m), LM_OK);
    model_free(&m);
}
END_TEST

/* Continuing a state counts the tokens already in it. */
START_TEST(forward_with_state_counts_position)
{
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, 4000, 0), LM_OK);
    EXPECT_EVAL_REFUSAL(forward(&m, 97, 1), CAP + 1);
    ck_assert_int_eq(position(&m), 4000);
    ck_assert_int_eq(forward(&m, 96, 1), LM_OK);
    ck_assert_int_eq(position(&m), CAP);
    EXPECT_EVAL_REFUSAL(forward(&m, 1, 1), CAP + 1);
    model_free(&m);
}
END_TEST

/* Bidirectional cross-attention: the longer of queries and keys counts. */
START_TEST(cross_attention_key_length_counts)
{
    model m;
    model_init(&m);
    lm_tensor q = lm_tensor_3d(m.tok, LM_F32, LM_CPU, 1, 1, E);
    lm_tensor o = lm_tensor_3d(m.tok_out, LM_F32, LM_CPU, 1, 1, E);
    for (int64_t Lk = CAP; Lk <= CAP + 1; Lk++) {
        lm_tensor kv = lm_tensor_3d(m.x, LM_F32, LM_CPU, 1, Lk, E);
        lm_status st = lm_attn_forward(m.a, &q, &kv, &kv, NULL, &o, NULL);
        if (Lk == CAP)
            ck_assert_int_eq(st, LM_OK);
        else
            EXPECT_EVAL_REFUSAL(st, CAP + 1);
    }
    model_free(&m);
}
END_TEST

/* Projected q, k, v of L tokens, and a state, for the core API. */
typedef struct core {
    float *q, *k, *v, *o;
    float state[H * D * D], norm[H * D];
    lm_tensor tq, tk, tv, to;
    lm_core_args args;
} core;

static void core_init(core *c, int64_t L, int with_state, int64_t position)
{
    const size_t n = (size_t)L * H * D;
    c->q = malloc(n * sizeof(float));
    c->k = malloc(n * sizeof(float));
    c->v = malloc(n * sizeof(float));
    c->o = malloc(n * sizeof(float));
    ck_assert(c->q && c->k && c->v && c->o);
    for (size_t i = 0; i < n; i++)
        c->q[i] = small_random(), c->k[i] = small_random(), c->v[i] = small_random();
    memset(c->state, 0, sizeof c->state);
    memset(c->norm, 0, sizeof c->norm);
    c->tq = lm_tensor_4d(c->q, LM_F32, LM_CPU, 1, L, H, D);
    c->tk = lm_tensor_4d(c->k, LM_F32, LM_CPU, 1, L, H, D);
    c->tv = lm_tensor_4d(c->v, LM_F32, LM_CPU, 1, L, H, D);
    c->to = lm_tensor_4d(c->o, LM_F32, LM_CPU, 1, L, H, D);
    ck_assert_int_eq(lm_core_args_default(&c->args), LM_OK);
    c->args.q = &c->tq, c->args.k = &c->tk, c->args.v = &c->tv, c->args.out = &c->to;
    if (with_state) {
        c->args.state = c->state;
        c->args.normalizer = c->norm;
        c->args.position = position;
    }
}

static void core_free(core *c)
{
    free(c->q), free(c->k), free(c->v), free(c->o);
}

START_TEST(core_prefill_at_4096_and_4097)
{
    core c;
    core_init(&c, CAP, 0, 0);
    ck_assert_int_eq(lm_linear_attn_prefill(&c.args, NULL), LM_OK);
    core_free(&c);
    core_init(&c, CAP + 1, 0, 0);
    EXPECT_EVAL_REFUSAL(lm_linear_attn_prefill(&c.args, NULL), CAP + 1);
    core_free(&c);
    /* a sequence started with fresh_state: the library empties the state itself */
    core_init(&c, CAP, 1, 0);
    c.args.fresh_state = 1;
    for (size_t i = 0; i < sizeof c.state / sizeof *c.state; i++)
        c.state[i] = NAN; /* whatever the caller left there is not read */
    ck_assert_int_eq(lm_linear_attn_prefill(&c.args, NULL), LM_OK);
    for (size_t i = 0; i < sizeof c.state / sizeof *c.state; i++)
        ck_assert(isfinite(c.state[i]));
    core_free(&c);
    core_init(&c, CAP + 1, 1, 0);
    c.args.fresh_state = 1;
    EXPECT_EVAL_REFUSAL(lm_linear_attn_prefill(&c.args, NULL), CAP + 1);
    core_free(&c);
}
END_TEST

/* Issue #19: a carried state with a caller-supplied position (0, say, after
 * 4096 tokens) cannot be verified, so under a cap the core takes none:
 * prefill, decode, backward and absorb, whatever the position. */
START_TEST(core_refuses_carried_state_under_cap)
{
    core c;
    core_init(&c, 16, 1, 0);
    EXPECT_ERR(lm_linear_attn_prefill(&c.args, NULL), LM_ERR_LICENSE, "cannot verify a state");
    ck_assert(strstr(lm_last_error(), "evaluation mode counts 4096"));
    c.args.position = 5;
    c.args.fresh_state = 1; /* fresh means position 0 */
    EXPECT_ERR(lm_linear_attn_prefill(&c.args, NULL), LM_ERR_INVALID_ARG, "position 0");
    c.args.fresh_state = 0;
    lm_tensor dq = c.tq, dk = c.tk, dv = c.tv;
    lm_core_grads g = { LM_SIZED(lm_core_grads), .dout = &c.to, .dq = &dq, .dk = &dk, .dv = &dv };
    float *gk = malloc(sizeof(float) * 16 * H * D), *gv = malloc(sizeof(float) * 16 * H * D);
    float *gq = malloc(sizeof(float) * 16 * H * D);
    dq.data = gq, dk.data = gk, dv.data = gv;
    EXPECT_ERR(lm_linear_attn_backward(&c.args, &g, NULL), LM_ERR_LICENSE, "cannot verify");
    EXPECT_ERR(lm_linear_attn_absorb(&c.args, NULL), LM_ERR_LICENSE, "cannot verify");
    free(gq), free(gk), free(gv);
    core_free(&c);
    core_init(&c, 1, 1, 0);
    EXPECT_ERR(lm_linear_attn_decode(&c.args, NULL), LM_ERR_LICENSE, "cannot verify");
    core_free(&c);
}
END_TEST

/* What is counted is the context of each sequence: a batch of three
 * 4096-token sequences runs, and one token more is refused as 4097, not as
 * the batch's total. */
START_TEST(batch_is_not_counted)
{
    const int64_t B = 3, L = CAP + 1, n = B * L * H * D;
    float *x = calloc((size_t)n, sizeof(float)), *o = malloc((size_t)n * sizeof(float));
    ck_assert(x && o);
    lm_tensor t = lm_tensor_4d(x, LM_F32, LM_CPU, B, CAP, H, D), to = lm_tensor_4d(o, LM_F32, LM_CPU, B, CAP, H, D);
    lm_core_args a;
    ck_assert_int_eq(lm_core_args_default(&a), LM_OK);
    a.q = &t, a.k = &t, a.v = &t, a.out = &to;
    ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "%s", lm_last_error());
    t.shape[1] = to.shape[1] = L;
    t.stride[0] = to.stride[0] = L * H * D;
    EXPECT_EVAL_REFUSAL(lm_linear_attn_prefill(&a, NULL), CAP + 1);
    free(x), free(o);
}
END_TEST

START_TEST(core_decode_at_4096_and_4097)
{
    core c;
    core_init(&c, 1, 1, CAP);
    EXPECT_EVAL_REFUSAL(lm_linear_attn_decode(&c.args, NULL), CAP + 1);
    core_free(&c);
}
END_TEST

/* Signs lic and installs it with lm_license_set. */
static void install(const lml_license *lic)
{
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, lic, NULL);
    ck_assert_int_eq(lm_license_set(tok), LM_OK);
}

/* Header field offsets shared by both module blob formats. */
#define BLOB_POSITION_AT 40

static void *get_blob(model *m, size_t *bytes)
{
    ck_assert_int_eq(lm_attn_state_size(m->a, bytes), LM_OK);
    void *b = malloc(*bytes);
    ck_assert_int_eq(lm_attn_get_state(m->a, b, *bytes), LM_OK);
    return b;
}

/* Issue #19: forwards of 4096 tokens chained through get_state -> position
 * rewritten to 0 -> set_state. The tag refuses the rewritten blob (linear
 * and hybrid), the handle keeps its state, and an unaltered blob comes back
 * at its own position, where the next token is 4097. */
START_TEST(chained_module_forwards_are_refused)
{
    const lm_attention modes[] = { LM_ATTENTION_LINEAR, LM_ATTENTION_HYBRID };
    for (int i = 0; i < 2; i++) {
        model m;
        model_init_mode(&m, modes[i]);
        ck_assert_int_eq(forward(&m, CAP, 0), LM_OK);
        size_t bytes;
        char *blob = get_blob(&m, &bytes);
        const int64_t zero = 0;
        char *forged = malloc(bytes);
        memcpy(forged, blob, bytes);
        memcpy(forged + BLOB_POSITION_AT, &zero, sizeof zero);
        ck_assert_int_eq(lm_attn_reset(m.a), LM_OK);
        EXPECT_ERR(lm_attn_set_state(m.a, forged, bytes), LM_ERR_LICENSE, "was altered");
        ck_assert(strstr(lm_last_error(), "position 0"));
        ck_assert_int_eq(position(&m), 0); /* refused: nothing changed */
        /* the state bytes themselves are covered too */
        memcpy(forged, blob, bytes);
        forged[bytes / 2] ^= 1;
        EXPECT_ERR(lm_attn_set_state(m.a, forged, bytes), LM_ERR_LICENSE, "was altered");
        /* a blob without its tag (an older library's) is refused under the cap */
        EXPECT_ERR(lm_attn_set_state(m.a, blob, bytes - 32), LM_ERR_LICENSE, "has no tag");
        ck_assert_int_eq(lm_attn_set_state(m.a, blob, bytes), LM_OK);
        ck_assert_int_eq(position(&m), CAP);
        EXPECT_EVAL_REFUSAL(forward(&m, 1, 1), CAP + 1);
        EXPECT_EVAL_REFUSAL(step(&m), CAP + 1);
        free(forged);
        free(blob);
        model_free(&m);
    }
}
END_TEST

/* An unlimited license counts nothing: blobs move between processes, so a
 * blob without its tag or with another process's is taken back. */
START_TEST(unlimited_license_takes_foreign_blobs)
{
    lml_license lic = lt_license();
    install(&lic);
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, 64, 0), LM_OK);
    size_t bytes;
    char *blob = get_blob(&m, &bytes);
    blob[bytes - 1] ^= 1; /* another process's tag */
    ck_assert_int_eq(lm_attn_set_state(m.a, blob, bytes), LM_OK);
    ck_assert_int_eq(lm_attn_set_state(m.a, blob, bytes - 32), LM_OK);
    EXPECT_ERR(lm_attn_set_state(m.a, blob, bytes - 31), LM_ERR_INVALID_ARG, "expected");
    ck_assert_int_eq(position(&m), 64);
    /* a capped license refuses the same blob */
    lic.max_seq_len = 8192;
    install(&lic);
    EXPECT_ERR(lm_attn_set_state(m.a, blob, bytes), LM_ERR_LICENSE, "the license counts 8192");
    free(blob);
    model_free(&m);
}
END_TEST

/* Positions near INT64_MAX: checked, never overflowed (UBSan in test-asan). */
START_TEST(overflowing_positions_are_refused)
{
    lml_license lic = lt_license();
    install(&lic);
    core c;
    core_init(&c, 4, 1, INT64_MAX);
    EXPECT_ERR(lm_linear_attn_prefill(&c.args, NULL), LM_ERR_INVALID_ARG, "outside 0..2^62");
    c.args.position = INT64_MAX - 2;
    EXPECT_ERR(lm_linear_attn_prefill(&c.args, NULL), LM_ERR_INVALID_ARG, "outside 0..2^62");
    core_free(&c);
    core_init(&c, 1, 1, INT64_MAX);
    EXPECT_ERR(lm_linear_attn_decode(&c.args, NULL), LM_ERR_INVALID_ARG, "outside 0..2^62");
    c.args.position = (int64_t)1 << 62; /* the largest position: still runs */
    ck_assert_int_eq(lm_linear_attn_decode(&c.args, NULL), LM_OK);
    core_free(&c);
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, 8, 0), LM_OK);
    size_t bytes;
    char *blob = get_blob(&m, &bytes);
    const int64_t huge = INT64_MAX;
    memcpy(blob + BLOB_POSITION_AT, &huge, sizeof huge);
    EXPECT_ERR(lm_attn_set_state(m.a, blob, bytes), LM_ERR_INVALID_ARG, "position");
    ck_assert_int_eq(position(&m), 8);
    free(blob);
    model_free(&m);
}
END_TEST

START_TEST(unlimited_license_lifts_the_cap)
{
    lml_license lic = lt_license();
    install(&lic);
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, CAP + 1, 0), LM_OK);
    ck_assert_int_eq(forward(&m, CAP, 0), LM_OK);
    ck_assert_int_eq(step(&m), LM_OK);
    ck_assert_int_eq(position(&m), CAP + 1);
    model_free(&m);
    core c;
    core_init(&c, 1, 1, 1 << 30); /* an unlimited license counts nothing: any carried state */
    ck_assert_int_eq(lm_linear_attn_decode(&c.args, NULL), LM_OK);
    core_free(&c);
}
END_TEST

START_TEST(licensed_cap_is_enforced)
{
    const int cap = 5000;
    lml_license lic = lt_license();
    lic.max_seq_len = cap;
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    model m;
    model_init(&m);
    ck_assert_int_eq(forward(&m, cap, 0), LM_OK);
    EXPECT_ERR(step(&m), LM_ERR_LICENSE, "allows 5000 tokens");
    ck_assert(strstr(lm_last_error(), "needs 5001"));
    EXPECT_ERR(forward(&m, cap + 1, 0), LM_ERR_LICENSE, "allows 5000 tokens");
    ck_assert_int_eq(position(&m), cap);
    model_free(&m);
    core c;
    core_init(&c, 1, 1, cap - 1); /* a capped license takes no carried state either */
    EXPECT_ERR(lm_linear_attn_decode(&c.args, NULL), LM_ERR_LICENSE, "the license counts 5000");
    c.args.position = cap;
    EXPECT_ERR(lm_linear_attn_decode(&c.args, NULL), LM_ERR_LICENSE, "allows 5000 tokens");
    core_free(&c);
}
END_TEST

/* An expired license is refused, even for contexts evaluation mode allows. */
START_TEST(invalid_license_refuses_short_contexts)
{
    lml_license lic = lt_license();
    lic.issued = lic.not_before = 1000;
    lic.expires = 2000;
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    model m;
    model_init(&m);
    EXPECT_ERR(forward(&m, 16, 0), LM_ERR_LICENSE, "expired");
    EXPECT_ERR(step(&m), LM_ERR_LICENSE, "expired");
    model_free(&m);
}
END_TEST

Suite *eval_suite(void)
{
    Suite *s = suite_create("eval");
    TCase *tc = tcase_create("cap");
    tcase_add_checked_fixture(tc, lt_setup, lt_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, forward_at_4096_and_4097);
    tcase_add_test(tc, step_after_4096_is_token_4097);
    tcase_add_test(tc, forward_with_state_counts_position);
    tcase_add_test(tc, cross_attention_key_length_counts);
    tcase_add_test(tc, core_prefill_at_4096_and_4097);
    tcase_add_test(tc, core_decode_at_4096_and_4097);
    tcase_add_test(tc, core_refuses_carried_state_under_cap);
    tcase_add_test(tc, batch_is_not_counted);
    tcase_add_test(tc, chained_module_forwards_are_refused);
    tcase_add_test(tc, unlimited_license_takes_foreign_blobs);
    tcase_add_test(tc, overflowing_positions_are_refused);
    tcase_add_test(tc, unlimited_license_lifts_the_cap);
    tcase_add_test(tc, licensed_cap_is_enforced);
    tcase_add_test(tc, invalid_license_refuses_short_contexts);
    suite_add_tcase(s, tc);
    return s;
}
