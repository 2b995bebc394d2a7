/*
 * test_policy.c - the license in force (license/policy.c, lookup.c): the
 * lookup order, caching (verified once, no I/O afterwards), expiry during a
 * run, invalid licenses reported as such and never treated as evaluation,
 * lm_license_set / lm_license_info, and first use from 8 threads at once.
 * Every test runs in its own process (fork mode), so the cache starts empty.
 */
#include "lm_impl.h"
#include "lt.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A token for licensee `who`, otherwise as lt_license. */
static void token_for(char tok[LML_TOKEN_MAX + 1], const char *who, int64_t max_seq)
{
    lml_license lic = lt_license();
    snprintf(lic.licensee, sizeof lic.licensee, "%s", who);
    lic.max_seq_len = max_seq;
    lt_issue(tok, &lic, NULL);
}

static lm_license_details info(void)
{
    lm_license_details d = { LM_SIZED(lm_license_details) };
    ck_assert_int_eq(lm_license_info(&d), LM_OK);
    return d;
}

START_TEST(no_license_is_evaluation)
{
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_EVALUATION);
    ck_assert_int_eq(d.max_seq_len, LM_EVAL_MAX_TOKENS);
    ck_assert_str_eq(d.licensee, "");
    ck_assert_str_eq(d.source, "none");
    ck_assert_int_eq(d.development_build, lml_development_build);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS), LM_OK);
    ck_assert(strstr(lm_last_error(), "evaluation mode"));
    EXPECT_ERR(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE, "LM_LICENSE_FILE");
    ck_assert(strstr(lm_last_error(), "4096") && strstr(lm_last_error(), "4097"));
    ck_assert(strstr(lm_last_error(), "~/.config/liquid-memory/license"));
}
END_TEST

START_TEST(development_build_is_marked)
{
    const int dev = strstr(lm_version(), "development build") != NULL;
    ck_assert_int_eq(dev, lml_development_build);
    ck_assert_int_eq(info().development_build, lml_development_build);
}
END_TEST

START_TEST(license_from_env_token)
{
    lml_license lic = lt_license();
    lic.max_seq_len = 5000;
    lic.features = 0x5;
    lic.expires = lt_now() + 86400;
    char tok[LML_TOKEN_MAX + 1], id[33];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "Test Customer");
    ck_assert_str_eq(d.source, "LM_LICENSE");
    sodium_bin2hex(id, sizeof id, lic.id, sizeof lic.id);
    ck_assert_str_eq(d.license_id, id);
    ck_assert_int_eq(d.issued, lic.issued);
    ck_assert_int_eq(d.not_before, lic.not_before);
    ck_assert_int_eq(d.expires, lic.expires);
    ck_assert_int_eq(d.max_seq_len, 5000);
    ck_assert_uint_eq(d.features, 0x5);
    ck_assert_str_eq(d.reason, "");
    ck_assert_int_eq(lmi_license_check(5000), LM_OK);
    EXPECT_ERR(lmi_license_check(5001), LM_ERR_LICENSE, "allows 5000 tokens");
    ck_assert(strstr(lm_last_error(), "Test Customer") && strstr(lm_last_error(), "5001"));
}
END_TEST

START_TEST(license_from_file)
{
    char tok[LML_TOKEN_MAX + 1], text[LML_TOKEN_MAX + 8];
    token_for(tok, "From File", 0);
    snprintf(text, sizeof text, "\n  %s  \n", tok); /* whitespace around it is fine */
    const char *path = lt_write_file("elsewhere/token.txt", text);
    char want[600];
    snprintf(want, sizeof want, "LM_LICENSE_FILE=%s", path);
    setenv("LM_LICENSE_FILE", path, 1);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "From File");
    ck_assert_str_eq(d.source, want);
    ck_assert_int_eq(d.max_seq_len, 0);
    ck_assert_int_eq(lmi_license_check(1 << 20), LM_OK); /* unlimited */
}
END_TEST

START_TEST(license_from_home)
{
    char tok[LML_TOKEN_MAX + 1], want[600];
    token_for(tok, "From Home", 0);
    lt_install_home_license(tok);
    snprintf(want, sizeof want, "%s/.config/liquid-memory/license", lt_home());
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "From Home");
    ck_assert_str_eq(d.source, want);
}
END_TEST

/* lm_license_set, then LM_LICENSE, then LM_LICENSE_FILE, then the home file. */
START_TEST(lookup_order)
{
    char a[LML_TOKEN_MAX + 1], b[LML_TOKEN_MAX + 1], c[LML_TOKEN_MAX + 1], s[LML_TOKEN_MAX + 1];
    token_for(a, "Env Token", 0);
    token_for(b, "Env File", 0);
    token_for(c, "Home File", 0);
    token_for(s, "Set By Call", 0);
    lt_install_home_license(c);
    setenv("LM_LICENSE_FILE", lt_write_file("b", b), 1);
    setenv("LM_LICENSE", a, 1);
    switch (_i) {
    case 0: ck_assert_int_eq(lm_license_set(s), LM_OK); break;
    case 1: break;
    case 2: unsetenv("LM_LICENSE"); break;
    case 3: unsetenv("LM_LICENSE"), unsetenv("LM_LICENSE_FILE"); break;
    }
    static const char *const want[] = { "Set By Call", "Env Token", "Env File", "Home File" };
    ck_assert_str_eq(info().licensee, want[_i]);
}
END_TEST

START_TEST(empty_variables_are_unset)
{
    char c[LML_TOKEN_MAX + 1];
    token_for(c, "Home File", 0);
    lt_install_home_license(c);
    setenv("LM_LICENSE", "", 1);
    setenv("LM_LICENSE_FILE", "", 1);
    ck_assert_str_eq(info().licensee, "Home File");
}
END_TEST

/* Each kind of bad license: mode INVALID with the reason, and every check
 * refused with that reason, not evaluation mode. */
START_TEST(invalid_license_is_not_evaluation)
{
    char tok[LML_TOKEN_MAX + 1], path[600];
    const char *want = NULL;
    lml_license lic = lt_license();
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    switch (_i) {
    case 0:
        setenv("LM_LICENSE", "not a token", 1);
        want = "malformed";
        break;
    case 1:
        lt_random_key(pk, sk);
        lt_issue(tok, &lic, sk);
        setenv("LM_LICENSE", tok, 1);
        want = "bad signature";
        break;
    case 2:
        lic.issued = lic.not_before = lt_now() - 10 * 86400;
        lic.expires = lt_now() - 86400;
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "expired";
        break;
    case 3:
        lic.not_before = lt_now() + 86400;
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "not yet valid";
        break;
    case 4:
        lic.host_bound = 1;
        randombytes_buf(lic.host, sizeof lic.host);
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "wrong host";
        break;
    case 5:
        snprintf(path, sizeof path, "%s/no/such/file", lt_home());
        setenv("LM_LICENSE_FILE", path, 1);
        want = "no/such/file";
        break;
    case 6:
        lt_install_home_license("LM1.garbage");
        want = "malformed";
        break;
    }
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_INVALID);
    ck_assert_msg(*d.reason, "no reason given");
    EXPECT_ERR(lmi_license_check(1), LM_ERR_LICENSE, want);
    ck_assert(!strstr(lm_last_error(), "evaluation mode allows"));
}
END_TEST

/* Verified once: changing or removing the source afterwards changes nothing. */
START_TEST(verified_once_and_cached)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Cached", 100);
    const char *path = lt_write_file("lic", tok);
    char saved[600];
    snprintf(saved, sizeof saved, "%s", path);
    setenv("LM_LICENSE_FILE", saved, 1);
    ck_assert_int_eq(lmi_license_check(100), LM_OK);
    ck_assert(unlink(saved) == 0);
    setenv("LM_LICENSE", "garbage", 1);
    ck_assert_int_eq(lmi_license_check(100), LM_OK);
    EXPECT_ERR(lmi_license_check(101), LM_ERR_LICENSE, "Cached");
    ck_assert_str_eq(info().licensee, "Cached");
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
}
END_TEST

/* The time window is checked on every call: a license that expires while
 * the process runs stops working then. */
START_TEST(expiry_during_run)
{
    lml_license lic = lt_license();
    lic.expires = lt_now() + 2;
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    ck_assert_int_eq(lmi_license_check(10), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    const struct timespec tick = { 0, 50 * 1000 * 1000 };
    while (lt_now() < lic.expires)
        nanosleep(&tick, NULL);
    EXPECT_ERR(lmi_license_check(10), LM_ERR_LICENSE, "expired");
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_INVALID);
    ck_assert(strstr(d.reason, "expired"));
    ck_assert_str_eq(d.licensee, "Test Customer"); /* the fields are still shown */
}
END_TEST

START_TEST(set_and_forget)
{
    char tok[LML_TOKEN_MAX + 1], padded[LML_TOKEN_MAX + 8];
    token_for(tok, "Set", 0);
    snprintf(padded, sizeof padded, " %s\n", tok);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE);
    ck_assert_int_eq(lm_license_set(padded), LM_OK);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_OK);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.source, "lm_license_set");
    ck_assert_int_eq(lm_license_set(NULL), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_EVALUATION);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE);
}
END_TEST

/* A token lm_license_set refuses leaves the license in force as it was. */
START_TEST(set_refuses_bad_tokens)
{
    char good[LML_TOKEN_MAX + 1], tok[LML_TOKEN_MAX + 1];
    token_for(good, "Good", 0);
    ck_assert_int_eq(lm_license_set(good), LM_OK);
    EXPECT_ERR(lm_license_set(""), LM_ERR_INVALID_ARG, "empty");
    EXPECT_ERR(lm_license_set("hello"), LM_ERR_INVALID_ARG, "malformed");
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    lt_random_key(pk, sk);
    lml_license lic = lt_license();
    lt_issue(tok, &lic, sk);
    EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "bad signature");
    lic.issued = lic.not_before = 1000;
    lic.expires = 2000;
    lt_issue(tok, &lic, NULL);
    EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "expired");
    ck_assert(strstr(lm_last_error(), "unchanged"));
    size_t mb = 1 << 20;
    char *big = malloc(mb + 1);
    ck_assert(big != NULL);
    memset(big, 'A', mb);
    big[mb] = '\0';
    EXPECT_ERR(lm_license_set(big), LM_ERR_INVALID_ARG, "longer than");
    free(big);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "Good");
}
END_TEST

/* A license set by the program replaces a bad one from the environment. */
START_TEST(set_overrides_invalid_env)
{
    setenv("LM_LICENSE", "LM1.bad.bad", 1);
    ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Set", 0);
    ck_assert_int_eq(lm_license_set(tok), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    ck_assert_int_eq(lmi_license_check(1), LM_OK);
    ck_assert_int_eq(lm_license_set(NULL), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
}
END_TEST

START_TEST(info_null)
{
    EXPECT_ERR(lm_license_info(NULL), LM_ERR_INVALID_ARG, "NULL");
}
END_TEST

/* ---- threads ---- */

#define N_THREADS 8
static pthread_barrier_t start;
static atomic_int stop;

typedef struct first_use {
    lm_status at_cap, over_cap, status_info;
    lm_license_details d;
    char message[512];
} first_use;

static void *first_use_thread(void *arg)
{
    first_use *r = arg;
    pthread_barrier_wait(&start);
    r->at_cap = lmi_license_check(5000);
    r->over_cap = lmi_license_check(5001);
    snprintf(r->message, sizeof r->message, "%s", lm_last_error());
    r->d.struct_size = sizeof r->d;
    r->status_info = lm_license_info(&r->d);
    return NULL;
}

/* 8 threads make the first call at once: one verification, the same answer. */
START_TEST(first_use_from_8_threads)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Threads", 5000);
    setenv("LM_LICENSE", tok, 1);
    pthread_t t[N_THREADS];
    first_use r[N_THREADS];
    ck_assert(pthread_barrier_init(&start, NULL, N_THREADS) == 0);
    for (int i = 0; i < N_THREADS; i++)
        ck_assert(pthread_create(&t[i], NULL, first_use_thread, &r[i]) == 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N_THREADS; i++) {
        ck_assert_int_eq(r[i].at_cap, LM_OK);
        ck_assert_int_eq(r[i].over_cap, LM_ERR_LICENSE);
        ck_assert_int_eq(r[i].status_info, LM_OK);
        ck_assert(strstr(r[i].message, "allows 5000 tokens"));
        ck_assert_int_eq(r[i].d.mode, LM_LICENSE_LICENSED);
        ck_assert_str_eq(r[i].d.licensee, "Threads");
        ck_assert_str_eq(r[i].d.license_id, r[0].d.license_id);
    }
}
END_TEST

static void *checker_thread(void *arg)
{
    int *bad = arg;
    pthread_barrier_wait(&start);
    while (!stop) {
        /* 4096 is allowed in every state this test passes through */
        if (lmi_license_check(LM_EVAL_MAX_TOKENS) != LM_OK)
            (*bad)++;
        lm_status st = lmi_license_check(LM_EVAL_MAX_TOKENS + 1);
        if (st != LM_OK && st != LM_ERR_LICENSE)
            (*bad)++;
    }
    return NULL;
}

/* Checks on 8 threads while the main thread sets and forgets a license. */
START_TEST(set_while_checking)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Toggled", 0);
    pthread_t t[N_THREADS];
    int bad[N_THREADS] = { 0 };
    stop = 0;
    ck_assert(pthread_barrier_init(&start, NULL, N_THREADS + 1) == 0);
    for (int i = 0; i < N_THREADS; i++)
        ck_assert(pthread_create(&t[i], NULL, checker_thread, &bad[i]) == 0);
    pthread_barrier_wait(&start);
    for (int k = 0; k < 200; k++) {
        ck_assert_int_eq(lm_license_set(k % 2 ? NULL : tok), LM_OK);
        ck_assert_int_eq(info().mode, k % 2 ? LM_LICENSE_EVALUATION : LM_LICENSE_LICENSED);
    }
    stop = 1;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(bad[i], 0);
    }
    pthread_barrier_destroy(&start);
}
END_TEST

Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("lookup");
    tcase_add_checked_fixture(tc, lt_setup, lt_teardown);
    tcase_add_test(tc, no_license_is_evaluation);
    tcase_add_test(tc, development_build_is_marked);
    tcase_add_test(tc, license_from_env_token);
    tcase_add_test(tc, license_from_file);
    tcase_add_test(tc, license_from_home);
    tcase_add_loop_test(tc, lookup_order, 0, 4);
    tcase_add_test(tc, empty_variables_are_unset);
    tcase_add_loop_test(tc, invalid_license_is_not_evaluation, 0, 7);
    tcase_add_test(tc, verified_once_and_cached);
    tcase_add_test(tc, expiry_during_run);
    tcase_add_test(tc, set_and_forget);
    tcase_add_test(tc, set_refuses_bad_tokens);
    tcase_add_test(tc, set_overrides_invalid_env);
    tcase_add_test(tc, info_null);
    suite_add_tcase(s, tc);
    TCase *th = tcase_create("threads");
    tcase_add_checked_fixture(th, lt_setup, lt_teardown);
    tcase_set_timeout(th, 60);
    tcase_add_test(th, first_use_from_8_threads);
    tcase_add_test(th, set_while_checking);
    suite_add_tcase(s, th);
    return s;
}
