/*
 * test_threads.c - several handles used from several threads at once give
 * the same results, bit for bit, as the same calls made one after another.
 */
#include "ref.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NT 4
#define E 64
#define L 300
#define B 2

typedef struct job {
    int heads;
    float w_in[3 * E * E], w_out[E * E], x[B * L * E], y[B * L * E], steps[B * E];
    lm_status st;
} job;

static void *run(void *arg)
{
    job *j = arg;
    lm_attn_config c;
    lm_attn *a;
    ck_assert_int_eq(lm_attn_config_default(&c, E, j->heads), LM_OK);
    if ((j->st = lm_attn_create(&c, &a)))
        return NULL;
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = j->w_in, .out_proj_weight = j->w_out };
    lm_tensor x = lm_tensor_3d(j->x, LM_F32, LM_CPU, B, L, E);
    lm_tensor y = lm_tensor_3d(j->y, LM_F32, LM_CPU, B, L, E);
    lm_tensor xs = lm_tensor_2d(j->x, LM_F32, LM_CPU, B, E), ys = lm_tensor_2d(j->steps, LM_F32, LM_CPU, B, E);
    xs.stride[0] = L * E;
    lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    if (!(j->st = lm_attn_set_weights(a, &w)) && !(j->st = lm_attn_forward(a, &x, &x, &x, &o, &y, NULL)))
        for (int t = 0; t < 5 && !j->st; t++)
            j->st = lm_attn_step(a, &xs, &ys, NULL);
    lm_attn_destroy(a);
    return NULL;
}

START_TEST(test_parallel_handles)
{
    static job serial[NT], parallel[NT];
    static const int heads[NT] = { 1, 4, 8, 4 };
    ref_seed(41);
    for (int i = 0; i < NT; i++) {
        serial[i].heads = heads[i];
        for (int k = 0; k < 3 * E * E; k++)
            serial[i].w_in[k] = (float)(ref_uniform() * 0.4 - 0.2);
        for (int k = 0; k < E * E; k++)
            serial[i].w_out[k] = (float)(ref_uniform() * 0.4 - 0.2);
        for (int k = 0; k < B * L * E; k++)
            serial[i].x[k] = (float)(ref_uniform() * 2 - 1);
        parallel[i] = serial[i];
    }
    for (int i = 0; i < NT; i++) {
        run(&serial[i]);
        ck_assert_msg(serial[i].st == LM_OK, "serial job %d: %s", i, lm_status_string(serial[i].st));
    }
    pthread_t th[NT];
    for (int i = 0; i < NT; i++)
        ck_assert(pthread_create(&th[i], NULL, run, &parallel[i]) == 0);
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < NT; i++) {
        ck_assert_msg(parallel[i].st == LM_OK, "thread %d: %s", i, lm_status_string(parallel[i].st));
        ck_assert_msg(!memcmp(serial[i].y, parallel[i].y, sizeof serial[i].y),
                      "thread %d: forward differs from the serial run", i);
        ck_assert_msg(!memcmp(serial[i].steps, parallel[i].steps, sizeof serial[i].steps),
                      "thread %d: steps differ from the serial run", i);
    }
}
END_TEST

/* The error text is per thread: a failure on one thread is not seen on another. */
static void *fail_create(void *arg)
{
    *(lm_status *)arg = lm_attn_create(NULL, NULL);
    return NULL;
}

START_TEST(test_error_text_per_thread)
{
    ck_assert_int_eq(lm_attn_config_default(NULL, 1, 1), LM_ERR_INVALID_ARG);
    char mine[256];
    strncpy(mine, lm_last_error(), sizeof mine - 1);
    mine[sizeof mine - 1] = 0;
    pthread_t t;
    lm_status theirs = LM_OK;
    ck_assert(pthread_create(&t, NULL, fail_create, &theirs) == 0);
    pthread_join(t, NULL);
    ck_assert_int_eq(theirs, LM_ERR_INVALID_ARG);
    ck_assert_str_eq(mine, lm_last_error());
}
END_TEST

Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_parallel_handles);
    tcase_add_test(tc, test_error_text_per_thread);
    suite_add_tcase(s, tc);
    return s;
}
