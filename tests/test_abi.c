/*
 * test_abi.c - the ABI rules of liquid_memory.h: the numeric version, and
 * struct_size on every public struct that can grow (unset or too small is
 * refused with a message and changes nothing; a newer caller's larger struct
 * is read up to what this library knows; an output struct is written no
 * further than its struct_size).
 */
#include "ref.h"

#include <stddef.h>
#include <string.h>

START_TEST(test_version_number)
{
    ck_assert_int_eq(LM_VERSION_NUMBER,
                     LM_VERSION_MAJOR * 10000 + LM_VERSION_MINOR * 100 + LM_VERSION_PATCH);
    ck_assert_int_eq(lm_version_number(), LM_VERSION_NUMBER);
}
END_TEST

/* A struct as a newer header would declare it: ours, then fields we do not know. */
#define NEWER(T)                                                                              \
    struct {                                                                                  \
        T s;                                                                                  \
        char future[64];                                                                      \
    }

START_TEST(test_struct_size_in)
{
    enum { E = 8, Hh = 2, Lt = 5 };
    lm_attn_config cfg;
    ck_assert_int_eq(lm_attn_config_default(&cfg, E, Hh), LM_OK);
    ck_assert_uint_eq(cfg.struct_size, sizeof cfg);
    lm_attn *a = NULL;
    cfg.struct_size = 0;
    EXPECT_ERR(lm_attn_create(&cfg, &a), LM_ERR_INVALID_ARG, "lm_attn_config.struct_size is 0");
    cfg.struct_size = offsetof(lm_attn_config, max_batch); /* ends before its last field */
    EXPECT_ERR(lm_attn_create(&cfg, &a), LM_ERR_INVALID_ARG, "smaller than any release");
    ck_assert_ptr_null(a);

    NEWER(lm_attn_config) big;
    memset(&big, 0x7f, sizeof big); /* unknown trailing fields: never read */
    ck_assert_int_eq(lm_attn_config_default(&big.s, E, Hh), LM_OK);
    big.s.struct_size = sizeof big;
    ck_assert_msg(lm_attn_create(&big.s, &a) == LM_OK, "%s", lm_last_error());

    float w_in[3 * E * E], w_out[E * E], x[Lt * E], y[Lt * E];
    ref_seed(5);
    for (int i = 0; i < 3 * E * E; i++)
        w_in[i] = (float)(ref_uniform() - 0.5);
    for (int i = 0; i < E * E; i++)
        w_out[i] = (float)(ref_uniform() - 0.5);
    for (int i = 0; i < Lt * E; i++)
        x[i] = (float)(ref_uniform() - 0.5);
    lm_weights w = { .in_proj_weight = w_in, .out_proj_weight = w_out };
    EXPECT_ERR(lm_attn_set_weights(a, &w), LM_ERR_INVALID_ARG, "lm_weights.struct_size is 0");
    w.struct_size = sizeof w;
    ck_assert_int_eq(lm_attn_set_weights(a, &w), LM_OK);

    lm_tensor tx = lm_tensor_3d(x, LM_F32, LM_CPU, 1, Lt, E);
    lm_tensor ty = lm_tensor_3d(y, LM_F32, LM_CPU, 1, Lt, E);
    lm_forward_opts o = { .is_causal = 1, .keep_state = 1 };
    EXPECT_ERR(lm_attn_forward(a, &tx, &tx, &tx, &o, &ty, NULL), LM_ERR_INVALID_ARG,
               "lm_forward_opts.struct_size is 0");
    int64_t pos = -1;
    ck_assert_int_eq(lm_attn_position(a, &pos), LM_OK);
    ck_assert_int_eq(pos, 0); /* the refused forward kept nothing */
    NEWER(lm_forward_opts) ob;
    memset(&ob, 0x7f, sizeof ob);
    ob.s = (lm_forward_opts){ .struct_size = sizeof ob, .is_causal = 1, .keep_state = 1 };
    ck_assert_msg(lm_attn_forward(a, &tx, &tx, &tx, &ob.s, &ty, NULL) == LM_OK, "%s",
                  lm_last_error());
    ck_assert_int_eq(lm_attn_position(a, &pos), LM_OK);
    ck_assert_int_eq(pos, Lt);

    float dy[Lt * E], dx[Lt * E];
    memcpy(dy, x, sizeof dy);
    lm_tensor tdy = lm_tensor_3d(dy, LM_F32, LM_CPU, 1, Lt, E);
    lm_tensor tdx = lm_tensor_3d(dx, LM_F32, LM_CPU, 1, Lt, E);
    lm_forward_opts causal = { LM_SIZED(lm_forward_opts), .is_causal = 1 };
    lm_attn_grads g = { .dout = &tdy, .dquery = &tdx };
    EXPECT_ERR(lm_attn_backward(a, &tx, &tx, &tx, &causal, &g, NULL), LM_ERR_INVALID_ARG,
               "lm_attn_grads.struct_size is 0");
    lm_attn_destroy(a);

    lm_core_args ca;
    ck_assert_int_eq(lm_core_args_default(&ca), LM_OK);
    ck_assert_uint_eq(ca.struct_size, sizeof ca);
    ca.struct_size = 4;
    EXPECT_ERR(lm_linear_attn_prefill(&ca, NULL), LM_ERR_INVALID_ARG, "smaller than any release");
    EXPECT_ERR(lm_linear_attn_decode(&ca, NULL), LM_ERR_INVALID_ARG, "smaller than any release");
    lm_core_grads cg = { .struct_size = 0 };
    ca.struct_size = sizeof ca;
    lm_tensor q = lm_tensor_4d(x, LM_F32, LM_CPU, 1, Lt, 2, 4);
    lm_tensor qo = lm_tensor_4d(y, LM_F32, LM_CPU, 1, Lt, 2, 4);
    lm_tensor dq = lm_tensor_4d(dx, LM_F32, LM_CPU, 1, Lt, 2, 4);
    ca.q = ca.k = ca.v = &q;
    cg.dout = &qo, cg.dq = cg.dk = cg.dv = &dq;
    EXPECT_ERR(lm_linear_attn_backward(&ca, &cg, NULL), LM_ERR_INVALID_ARG,
               "lm_core_grads.struct_size is 0");
}
END_TEST

START_TEST(test_struct_size_out)
{
    /* An output struct is written up to its struct_size and no further. */
    struct {
        lm_license_details d;
        unsigned char guard[32];
    } out;
    memset(&out, 0xa5, sizeof out);
    out.d.struct_size = sizeof out.d;
    ck_assert_int_eq(lm_license_info(&out.d), LM_OK);
    ck_assert_uint_eq(out.d.struct_size, sizeof out.d);
    for (size_t i = 0; i < sizeof out.guard; i++)
        ck_assert_uint_eq(out.guard[i], 0xa5);
    ck_assert_str_ne(out.d.source, "");
    lm_license_details unset = { .struct_size = 0 };
    EXPECT_ERR(lm_license_info(&unset), LM_ERR_INVALID_ARG, "lm_license_details.struct_size is 0");
}
END_TEST

START_TEST(test_init_writes_caller_size)
{
    /* An older caller's struct ends at its first release's last field: the
     * _init() behind its inline _default() writes that many bytes, no more,
     * and a handle accepts what it wrote. */
    const size_t old = offsetof(lm_core_args, precision) + sizeof(lm_precision);
    unsigned char buf[sizeof(lm_core_args) + 32];
    memset(buf, 0xa5, sizeof buf);
    ck_assert_int_eq(lm_core_args_init((lm_core_args *)buf, old), LM_OK);
    for (size_t i = old; i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], 0xa5);
    lm_core_args a;
    memcpy(&a, buf, old);
    ck_assert_uint_eq(a.struct_size, old);
    ck_assert_int_eq(a.is_causal, 1);
    ck_assert_int_eq(a.normalize, 1);

    struct {
        lm_pool_config c;
        unsigned char guard[32];
    } pc;
    memset(&pc, 0xa5, sizeof pc);
    ck_assert_int_eq(lm_pool_config_default(&pc.c, 4, 2, 8), LM_OK);
    ck_assert_uint_eq(pc.c.struct_size, sizeof pc.c);
    ck_assert_int_eq(pc.c.cuda_device, -1);
    for (size_t i = 0; i < sizeof pc.guard; i++)
        ck_assert_uint_eq(pc.guard[i], 0xa5);

    lm_attn_config cfg;
    EXPECT_ERR(lm_attn_config_init(&cfg, 4, 8, 2), LM_ERR_INVALID_ARG, "not a size of lm_attn_config");
    EXPECT_ERR(lm_attn_config_init(NULL, sizeof cfg, 8, 2), LM_ERR_INVALID_ARG, "is NULL");
}
END_TEST

Suite *abi_suite(void)
{
    Suite *s = suite_create("abi");
    TCase *tc = tcase_create("abi");
    tcase_add_test(tc, test_version_number);
    tcase_add_test(tc, test_struct_size_in);
    tcase_add_test(tc, test_struct_size_out);
    tcase_add_test(tc, test_init_writes_caller_size);
    suite_add_tcase(s, tc);
    return s;
}
