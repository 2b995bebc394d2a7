/*
 * test_api.c - the public functions called with every kind of bad argument:
 * each returns the right status and a message that names the problem, and
 * leaves the handle usable with its state unchanged.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define E 32
#define H 4
#define L 20
#define B 2

/* A working handle with weights, and inputs for it. */
typedef struct fixture {
    lm_attn *a;
    float w_in[3 * E * E], b_in[3 * E], w_out[E * E], b_out[E];
    float x[B * L * E], y[B * L * E], y0[B * L * E];
    lm_tensor tx, ty;
    void *blob;
    size_t blob_bytes;
    int64_t pos;
} fixture;

static void fill(float *p, int n, double scale)
{
    for (int i = 0; i < n; i++)
        p[i] = (float)((ref_uniform() * 2 - 1) * scale);
}

static void fixture_init(fixture *f)
{
    ref_seed(31);
    lm_attn_config cfg;
    ck_assert(lm_attn_config_default(&cfg, E, H) == LM_OK);
    ck_assert(lm_attn_create(&cfg, &f->a) == LM_OK);
    fill(f->w_in, 3 * E * E, 0.3);
    fill(f->b_in, 3 * E, 0.1);
    fill(f->w_out, E * E, 0.3);
    fill(f->b_out, E, 0.1);
    fill(f->x, B * L * E, 1.0);
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = f->w_in, .in_proj_bias = f->b_in,
                     .out_proj_weight = f->w_out, .out_proj_bias = f->b_out };
    ck_assert(lm_attn_set_weights(f->a, &w) == LM_OK);
    f->tx = lm_tensor_3d(f->x, LM_F32, LM_CPU, B, L, E);
    f->ty = lm_tensor_3d(f->y, LM_F32, LM_CPU, B, L, E);
    /* A state to protect: a causal forward that keeps it. */
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    ck_assert(lm_attn_forward(f->a, &f->tx, &f->tx, &f->tx, &o, &f->ty, NULL) == LM_OK);
    memcpy(f->y0, f->y, sizeof f->y);
    ck_assert(lm_attn_state_size(f->a, &f->blob_bytes) == LM_OK);
    f->blob = malloc(f->blob_bytes);
    ck_assert(lm_attn_get_state(f->a, f->blob, f->blob_bytes) == LM_OK);
    ck_assert(lm_attn_position(f->a, &f->pos) == LM_OK);
}

/* The handle still works and its state is what it was. */
static void fixture_check(fixture *f)
{
    size_t bytes;
    ck_assert(lm_attn_state_size(f->a, &bytes) == LM_OK);
    ck_assert_uint_eq(bytes, f->blob_bytes);
    void *now = malloc(bytes);
    ck_assert(lm_attn_get_state(f->a, now, bytes) == LM_OK);
    ck_assert_msg(!memcmp(now, f->blob, bytes), "the state changed after a failed call");
    free(now);
    int64_t pos;
    ck_assert(lm_attn_position(f->a, &pos) == LM_OK);
    ck_assert_int_eq(pos, f->pos);
    for (int i = 0; i < B * L * E; i++)
        f->y[i] = NAN;
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1 };
    ck_assert_msg(lm_attn_forward(f->a, &f->tx, &f->tx, &f->tx, &o, &f->ty, NULL) == LM_OK, "%s",
                  lm_last_error());
    ck_assert_msg(!memcmp(f->y, f->y0, sizeof f->y), "the handle computes differently now");
}

static void fixture_free(fixture *f)
{
    lm_attn_destroy(f->a);
    free(f->blob);
}

START_TEST(test_status_and_version)
{
    for (int s = LM_OK; s <= LM_ERR_INTERNAL; s++) {
        const char *t = lm_status_string((lm_status)s);
        ck_assert(t && *t);
        for (int r = LM_OK; r < s; r++)
            ck_assert_str_ne(t, lm_status_string((lm_status)r));
    }
    ck_assert_str_eq(lm_status_string((lm_status)99), "unknown status");
    ck_assert_ptr_nonnull(strstr(lm_version(), LM_VERSION_STRING));
    ck_assert_ptr_nonnull(lm_last_error());
    ck_assert_uint_eq(lm_dtype_size(LM_BF16), 2);
    ck_assert_uint_eq(lm_dtype_size(LM_F16), 2);
    ck_assert_uint_eq(lm_dtype_size(LM_F32), 4);
    ck_assert_uint_eq(lm_dtype_size(LM_BOOL), 1);
    ck_assert_uint_eq(lm_dtype_size((lm_dtype)9), 0);
    float x;
    lm_tensor t = lm_tensor_4d(&x, LM_F32, LM_CPU, 2, 3, 4, 5);
    ck_assert_int_eq(t.ndim, 4);
    ck_assert(t.stride[0] == 60 && t.stride[1] == 20 && t.stride[2] == 5 && t.stride[3] == 1);
    t = lm_tensor_2d(&x, LM_BF16, LM_CUDA, 7, 9);
    ck_assert(t.ndim == 2 && t.stride[0] == 9 && t.stride[1] == 1 && t.device == LM_CUDA);
}
END_TEST

START_TEST(test_create_errors)
{
    lm_attn_config c;
    lm_attn *a = (lm_attn *)&c; /* a sentinel: must stay untouched on failure */
    EXPECT_ERR(lm_attn_config_default(NULL, E, H), LM_ERR_INVALID_ARG, "lm_attn_config to initialise is NULL");
    EXPECT_ERR(lm_attn_create(NULL, &a), LM_ERR_INVALID_ARG, "cfg");
    ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);
    EXPECT_ERR(lm_attn_create(&c, NULL), LM_ERR_INVALID_ARG, "out");

#define BAD(field, value, st, needle)                                                         \
    do {                                                                                      \
        ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);                                                     \
        c.field = value;                                                                      \
        EXPECT_ERR(lm_attn_create(&c, &a), st, needle);                                       \
        ck_assert_ptr_eq(a, (lm_attn *)&c);                                                   \
    } while (0)
    BAD(embed_dim, 0, LM_ERR_INVALID_ARG, "embed_dim");
    BAD(embed_dim, -4, LM_ERR_INVALID_ARG, "embed_dim");
    BAD(num_heads, 0, LM_ERR_INVALID_ARG, "num_heads");
    BAD(num_heads, -1, LM_ERR_INVALID_ARG, "num_heads");
    BAD(num_heads, 5, LM_ERR_INVALID_ARG, "does not divide embed_dim");
    BAD(num_kv_heads, 3, LM_ERR_INVALID_ARG, "num_kv_heads");
    BAD(num_kv_heads, -2, LM_ERR_INVALID_ARG, "num_kv_heads");
    BAD(head_dim, -8, LM_ERR_INVALID_ARG, "head_dim");
    BAD(kdim, -1, LM_ERR_INVALID_ARG, "kdim");
    BAD(vdim, -1, LM_ERR_INVALID_ARG, "vdim");
    BAD(dtype, LM_BOOL, LM_ERR_INVALID_ARG, "dtype");
    BAD(dtype, (lm_dtype)17, LM_ERR_INVALID_ARG, "dtype");
    BAD(device, (lm_device)5, LM_ERR_INVALID_ARG, "device");
    BAD(max_batch, -1, LM_ERR_INVALID_ARG, "max_batch");
    BAD(feature_map, (lm_feature_map)9, LM_ERR_INVALID_ARG, "feature_map");
    BAD(normalize, 2, LM_ERR_INVALID_ARG, "normalize");
    BAD(eps, 0.0f, LM_ERR_INVALID_ARG, "eps");
    BAD(eps, NAN, LM_ERR_INVALID_ARG, "eps");
    BAD(scale, -1.0f, LM_ERR_INVALID_ARG, "scale");
    BAD(scale, INFINITY, LM_ERR_INVALID_ARG, "scale");
    BAD(precision, (lm_precision)7, LM_ERR_INVALID_ARG, "precision");
    float bad_decay[H] = { 0.9f, 1.5f, 0.9f, 0.9f };
    BAD(decay, bad_decay, LM_ERR_INVALID_ARG, "decay[1]");
    float zero_decay[H] = { 0.9f, 0.9f, 0.9f, 0.0f };
    BAD(decay, zero_decay, LM_ERR_INVALID_ARG, "decay[3]");
#undef BAD
    /* A GPU that is absent (or a build without CUDA) is LM_ERR_NO_DEVICE. */
    ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);
    c.device = LM_CUDA;
    lm_status st = lm_attn_create(&c, &a);
    if (st == LM_OK)
        lm_attn_destroy(a); /* a machine with a GPU: creating works */
    else
        ck_assert_msg(st == LM_ERR_NO_DEVICE, "%s", lm_last_error());
}
END_TEST

START_TEST(test_weights_errors)
{
    fixture f;
    fixture_init(&f);
    float wk[E * E];
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = f.w_in, .out_proj_weight = f.w_out };
    EXPECT_ERR(lm_attn_set_weights(NULL, &w), LM_ERR_INVALID_ARG, "attn");
    EXPECT_ERR(lm_attn_set_weights(f.a, NULL), LM_ERR_INVALID_ARG, "weights");
    lm_weights no_out = { LM_SIZED(lm_weights), .in_proj_weight = f.w_in };
    EXPECT_ERR(lm_attn_set_weights(f.a, &no_out), LM_ERR_INVALID_ARG, "out_proj_weight");
    lm_weights both = { LM_SIZED(lm_weights), .in_proj_weight = f.w_in, .k_proj_weight = wk, .out_proj_weight = f.w_out };
    EXPECT_ERR(lm_attn_set_weights(f.a, &both), LM_ERR_INVALID_ARG, "not both");
    lm_weights partial = { LM_SIZED(lm_weights), .q_proj_weight = wk, .k_proj_weight = wk, .out_proj_weight = f.w_out };
    EXPECT_ERR(lm_attn_set_weights(f.a, &partial), LM_ERR_INVALID_ARG, "q/k/v_proj_weight");
    fixture_check(&f);

    lm_attn_config c;
    lm_attn *x;
    ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);
    c.kdim = 16;
    ck_assert(lm_attn_create(&c, &x) == LM_OK);
    EXPECT_ERR(lm_attn_set_weights(x, &w), LM_ERR_INVALID_ARG, "kdim == vdim == embed_dim");
    lm_tensor t = lm_tensor_3d(f.x, LM_F32, LM_CPU, 1, 2, E), o = lm_tensor_3d(f.y, LM_F32, LM_CPU, 1, 2, E);
    EXPECT_ERR(lm_attn_forward(x, &t, &t, &t, NULL, &o, NULL), LM_ERR_INVALID_ARG, "no weights");
    lm_attn_destroy(x);
    fixture_free(&f);
}
END_TEST

START_TEST(test_forward_errors)
{
    fixture f;
    fixture_init(&f);
    lm_forward_opts causal = { LM_SIZED(lm_forward_opts), .is_causal = 1 }, keep = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    float other[B * L * E];
    lm_tensor x = f.tx, y = f.ty, t;
#define FWD(q, k, v, o, opts, st, needle)                                                     \
    do {                                                                                      \
        EXPECT_ERR(lm_attn_forward(f.a, q, k, v, opts, o, NULL), st, needle);                 \
        fixture_check(&f);                                                                    \
    } while (0)
    EXPECT_ERR(lm_attn_forward(NULL, &x, &x, &x, &causal, &y, NULL), LM_ERR_INVALID_ARG, "attn");
    FWD(NULL, &x, &x, &y, &keep, LM_ERR_INVALID_ARG, "query is NULL");
    FWD(&x, NULL, &x, &y, &keep, LM_ERR_INVALID_ARG, "key is NULL");
    FWD(&x, &x, NULL, &y, &keep, LM_ERR_INVALID_ARG, "value is NULL");
    FWD(&x, &x, &x, NULL, &keep, LM_ERR_INVALID_ARG, "out is NULL");
    t = x, t.ndim = 2;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "dimensions");
    t = x, t.dtype = LM_BF16;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "dtype");
    t = x, t.dtype = (lm_dtype)42;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "unknown dtype");
    t = x, t.device = LM_CUDA;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "on cuda");
    t = x, t.shape[2] = E - 1;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "dimension 2");
    t = x, t.shape[1] = 0;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "size 0");
    t = x, t.shape[0] = -3;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "size -3");
    t = x, t.stride[1] = -1;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "stride");
    t = x, t.data = NULL;
    FWD(&t, &t, &t, &y, &keep, LM_ERR_INVALID_ARG, "NULL data");
    t = x, t.shape[0] = 1; /* key with another batch */
    FWD(&x, &t, &x, &y, &keep, LM_ERR_INVALID_ARG, "key: dimension 0");
    t = x, t.shape[1] = L - 1; /* value shorter than key */
    FWD(&x, &x, &t, &y, &keep, LM_ERR_INVALID_ARG, "value: dimension 1");
    t = y, t.shape[1] = L - 1;
    FWD(&x, &x, &x, &t, &keep, LM_ERR_INVALID_ARG, "out: dimension 1");
    FWD(&x, &x, &x, &x, &keep, LM_ERR_INVALID_ARG, "alias");
    lm_tensor shorter = lm_tensor_3d(other, LM_F32, LM_CPU, B, L - 5, E);
    FWD(&x, &shorter, &shorter, &y, &keep, LM_ERR_INVALID_ARG, "as many queries as keys");
    uint8_t m[B * L] = { 0 };
    lm_tensor mask = lm_tensor_2d(m, LM_F32, LM_CPU, B, L);
    lm_forward_opts om = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1, .key_padding_mask = &mask };
    FWD(&x, &x, &x, &y, &om, LM_ERR_INVALID_ARG, "LM_BOOL");
    mask = lm_tensor_2d(m, LM_BOOL, LM_CPU, B, L - 1);
    FWD(&x, &x, &x, &y, &om, LM_ERR_INVALID_ARG, "key_padding_mask is [2, 19]");
    /* continuing a state of batch 2 with batch 1 */
    lm_tensor x1 = lm_tensor_3d(f.x, LM_F32, LM_CPU, 1, L, E), y1 = lm_tensor_3d(other, LM_F32, LM_CPU, 1, L, E);
    lm_forward_opts cont = { LM_SIZED(lm_forward_opts), .is_causal = 1, .use_state = 1, .keep_state = 1 };
    FWD(&x1, &x1, &x1, &y1, &cont, LM_ERR_STATE, "lm_attn_reset");
    fixture_free(&f);

    /* decay is causal only; max_batch is enforced */
    float decay[H] = { 0.9f, 0.9f, 0.9f, 0.9f };
    lm_attn_config c;
    lm_attn *a;
    ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);
    c.decay = decay;
    c.max_batch = 1;
    ck_assert(lm_attn_create(&c, &a) == LM_OK);
    float w_in[3 * E * E] = { 0 }, w_out[E * E] = { 0 };
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = w_in, .out_proj_weight = w_out };
    ck_assert(lm_attn_set_weights(a, &w) == LM_OK);
    EXPECT_ERR(lm_attn_forward(a, &x1, &x1, &x1, NULL, &y1, NULL), LM_ERR_UNSUPPORTED, "causal");
    EXPECT_ERR(lm_attn_forward(a, &x, &x, &x, &causal, &y, NULL), LM_ERR_INVALID_ARG, "max_batch");
    lm_attn_destroy(a);
}
END_TEST

START_TEST(test_step_errors)
{
    fixture f;
    fixture_init(&f);
    float xs[B * E], ys[B * E];
    fill(xs, B * E, 1.0);
    lm_tensor x = lm_tensor_2d(xs, LM_F32, LM_CPU, B, E), y = lm_tensor_2d(ys, LM_F32, LM_CPU, B, E), t;
#define STEP(x_, y_, st, needle)                                                              \
    do {                                                                                      \
        EXPECT_ERR(lm_attn_step(f.a, x_, y_, NULL), st, needle);                              \
        fixture_check(&f);                                                                    \
    } while (0)
    EXPECT_ERR(lm_attn_step(NULL, &x, &y, NULL), LM_ERR_INVALID_ARG, "attn");
    STEP(NULL, &y, LM_ERR_INVALID_ARG, "x is NULL");
    STEP(&x, NULL, LM_ERR_INVALID_ARG, "out is NULL");
    t = x, t.shape[1] = E + 1;
    STEP(&t, &y, LM_ERR_INVALID_ARG, "dimension 1");
    t = y, t.shape[0] = 1;
    STEP(&x, &t, LM_ERR_INVALID_ARG, "out: dimension 0");
    STEP(&x, &x, LM_ERR_INVALID_ARG, "alias");
    t = x, t.dtype = LM_F16;
    STEP(&t, &y, LM_ERR_INVALID_ARG, "dtype");
    /* batch change without reset, then with reset */
    lm_tensor x1 = lm_tensor_2d(xs, LM_F32, LM_CPU, 1, E), y1 = lm_tensor_2d(ys, LM_F32, LM_CPU, 1, E);
    STEP(&x1, &y1, LM_ERR_STATE, "lm_attn_reset");
    ck_assert(lm_attn_step(f.a, &x, &y, NULL) == LM_OK);
    int64_t pos;
    ck_assert(lm_attn_position(f.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, L + 1);
    ck_assert(lm_attn_reset(f.a) == LM_OK);
    ck_assert(lm_attn_position(f.a, &pos) == LM_OK);
    ck_assert_int_eq(pos, 0);
    ck_assert_msg(lm_attn_step(f.a, &x1, &y1, NULL) == LM_OK, "%s", lm_last_error());
    EXPECT_ERR(lm_attn_reset(NULL), LM_ERR_INVALID_ARG, "attn");
    fixture_free(&f);

    /* step is self-attention: a cross-attention handle refuses it */
    lm_attn_config c;
    lm_attn *a;
    ck_assert_int_eq(lm_attn_config_default(&c, E, H), LM_OK);
    c.kdim = 8;
    ck_assert(lm_attn_create(&c, &a) == LM_OK);
    float wq[E * E] = { 0 }, wk[E * 8] = { 0 }, wv[E * E] = { 0 }, wo[E * E] = { 0 };
    lm_weights w = { LM_SIZED(lm_weights), .q_proj_weight = wq, .k_proj_weight = wk, .v_proj_weight = wv, .out_proj_weight = wo };
    ck_assert(lm_attn_set_weights(a, &w) == LM_OK);
    EXPECT_ERR(lm_attn_step(a, &x, &y, NULL), LM_ERR_UNSUPPORTED, "kdim == vdim");
    lm_attn_destroy(a);
}
END_TEST

START_TEST(test_state_errors)
{
    fixture f;
    fixture_init(&f);
    size_t n;
    EXPECT_ERR(lm_attn_state_size(NULL, &n), LM_ERR_INVALID_ARG, "attn");
    EXPECT_ERR(lm_attn_state_size(f.a, NULL), LM_ERR_INVALID_ARG, "bytes");
    EXPECT_ERR(lm_attn_get_state(f.a, NULL, f.blob_bytes), LM_ERR_INVALID_ARG, "buf");
    char *buf = malloc(f.blob_bytes + 8);
    EXPECT_ERR(lm_attn_get_state(f.a, buf, f.blob_bytes - 1), LM_ERR_INVALID_ARG, "bytes");
    EXPECT_ERR(lm_attn_set_state(f.a, NULL, f.blob_bytes), LM_ERR_INVALID_ARG, "buf");
    EXPECT_ERR(lm_attn_set_state(NULL, f.blob, f.blob_bytes), LM_ERR_INVALID_ARG, "attn");
    EXPECT_ERR(lm_attn_set_state(f.a, f.blob, 10), LM_ERR_INVALID_ARG, "at least");
    memcpy(buf, f.blob, f.blob_bytes);
    buf[0] = 'X';
    EXPECT_ERR(lm_attn_set_state(f.a, buf, f.blob_bytes), LM_ERR_INVALID_ARG, "magic");
    fixture_check(&f);
    memcpy(buf, f.blob, f.blob_bytes);
    EXPECT_ERR(lm_attn_set_state(f.a, buf, f.blob_bytes - 4), LM_ERR_INVALID_ARG, "expected");
    EXPECT_ERR(lm_attn_set_state(f.a, buf, f.blob_bytes + 8), LM_ERR_INVALID_ARG, "expected");
    fixture_check(&f);
    int64_t pos;
    EXPECT_ERR(lm_attn_position(f.a, NULL), LM_ERR_INVALID_ARG, "tokens");
    EXPECT_ERR(lm_attn_position(NULL, &pos), LM_ERR_INVALID_ARG, "attn");

    /* a blob from a handle of another shape */
    lm_attn_config c;
    lm_attn *a;
    ck_assert_int_eq(lm_attn_config_default(&c, E, H / 2), LM_OK);
    ck_assert(lm_attn_create(&c, &a) == LM_OK);
    EXPECT_ERR(lm_attn_set_state(a, f.blob, f.blob_bytes), LM_ERR_STATE, "kv heads");
    EXPECT_ERR(lm_attn_state_size(a, &n), LM_ERR_STATE, "no state");
    ck_assert(lm_attn_position(a, &pos) == LM_OK);
    ck_assert_int_eq(pos, 0);
    lm_attn_destroy(a);
    lm_attn_destroy(NULL);
    free(buf);
    fixture_free(&f);
}
END_TEST

START_TEST(test_core_errors)
{
    enum { CL = 8, CH = 2, CD = 4 };
    float q[CL * CH * CD], k[CL * CH * CD], v[CL * CH * CD], o[CL * CH * CD];
    float S[CH * CD * CD], z[CH * CD], S0[CH * CD * CD], z0[CH * CD];
    fill(q, CL * CH * CD, 1);
    fill(k, CL * CH * CD, 1);
    fill(v, CL * CH * CD, 1);
    fill(S, CH * CD * CD, 1);
    fill(z, CH * CD, 1);
    memcpy(S0, S, sizeof S);
    memcpy(z0, z, sizeof z);
    lm_tensor tq = lm_tensor_4d(q, LM_F32, LM_CPU, 1, CL, CH, CD), tk = lm_tensor_4d(k, LM_F32, LM_CPU, 1, CL, CH, CD);
    lm_tensor tv = lm_tensor_4d(v, LM_F32, LM_CPU, 1, CL, CH, CD), to = lm_tensor_4d(o, LM_F32, LM_CPU, 1, CL, CH, CD), t;
    lm_core_args a, good;
    EXPECT_ERR(lm_core_args_default(NULL), LM_ERR_INVALID_ARG, "lm_core_args to initialise is NULL");
    ck_assert_int_eq(lm_core_args_default(&good), LM_OK);
    good.q = &tq, good.k = &tk, good.v = &tv, good.out = &to;
    good.state = S, good.normalizer = z;
#define CORE(fn, st, needle)                                                                  \
    do {                                                                                      \
        EXPECT_ERR(fn(&a, NULL), st, needle);                                                 \
        ck_assert_msg(!memcmp(S, S0, sizeof S) && !memcmp(z, z0, sizeof z),                  \
                      "state changed by a failed call");                                      \
        a = good;                                                                             \
    } while (0)
    EXPECT_ERR(lm_linear_attn_prefill(NULL, NULL), LM_ERR_INVALID_ARG, "args");
    a = good;
    a.q = NULL;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "q is NULL");
    a.v = NULL;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "v is NULL");
    t = tk, t.shape[3] = CD - 1, a.k = &t;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "[B, Lk, Hkv, Dk]");
    t = to, t.shape[2] = 1, a.out = &t;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "[B, L, Hq, Dv]");
    t = tk, t.shape[2] = 3, a.k = &t;
    lm_tensor tv3 = tv;
    tv3.shape[2] = 3;
    a.v = &tv3;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "must divide");
    t = tk, t.dtype = LM_BF16, a.k = &t;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "same dtype");
    t = tq, t.dtype = LM_BOOL, a.q = &t;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "BF16, F16 or F32");
    a.normalizer = NULL;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "both or neither");
    a.position = -1;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "position");
    t = tk, t.shape[1] = CL - 1, a.k = &t;
    tv3 = tv, tv3.shape[1] = CL - 1, a.v = &tv3;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "L == Lk");
    float decay[CH] = { 0.5f, 0.5f };
    a.decay = decay, a.is_causal = 0;
    CORE(lm_linear_attn_prefill, LM_ERR_UNSUPPORTED, "causal");
    decay[1] = 2.0f;
    a.decay = decay;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "decay[1]");
    a.feature_map = (lm_feature_map)5;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "feature_map");
    a.eps = -1;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "eps");
    a.out = &tq;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "alias");
    CORE(lm_linear_attn_decode, LM_ERR_INVALID_ARG, "one token");
    lm_tensor q1 = tq, k1 = tk, v1 = tv, o1 = to;
    q1.shape[1] = k1.shape[1] = v1.shape[1] = o1.shape[1] = 1;
    a.q = &q1, a.k = &k1, a.v = &v1, a.out = &o1, a.state = NULL, a.normalizer = NULL;
    CORE(lm_linear_attn_decode, LM_ERR_INVALID_ARG, "a state");
    uint8_t m[CL];
    lm_tensor tm = lm_tensor_2d(m, LM_BOOL, LM_CPU, 2, CL);
    a.key_padding_mask = &tm;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "key_padding_mask");
    t = tq, t.device = LM_CUDA, a.q = &t;
    CORE(lm_linear_attn_prefill, LM_ERR_INVALID_ARG, "on cpu");
    /* the good call works after all of that */
    a = good;
    ck_assert_msg(lm_linear_attn_prefill(&a, NULL) == LM_OK, "%s", lm_last_error());
}
END_TEST

Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("errors");
    tcase_add_test(tc, test_status_and_version);
    tcase_add_test(tc, test_create_errors);
    tcase_add_test(tc, test_weights_errors);
    tcase_add_test(tc, test_forward_errors);
    tcase_add_test(tc, test_step_errors);
    tcase_add_test(tc, test_state_errors);
    tcase_add_test(tc, test_core_errors);
    suite_add_tcase(s, tc);
    return s;
}
