/*
 * main.c - runs the license suites (make test-license); exit status 1 on
 * failure. Fork mode is forced: each test gets a fresh process, so the
 * library's license cache never carries over, and this parent process never
 * calls into the library at all.
 *
 * Suites that sign tokens need the key behind the compiled-in public key
 * (LM_TEST_SIGNING_KEY, set by make). A release build without
 * VENDOR_SECRET_KEY has none: those suites are reported as NOT RUN.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#define LT_SUITE(name, needs_key) Suite *name(void);
#include "suites.h"
#undef LT_SUITE

int main(void)
{
    const char *key = getenv("LM_TEST_SIGNING_KEY");
    const int have_key = key && *key;
    SRunner *sr = srunner_create(NULL);
    srunner_set_fork_status(sr, CK_FORK);
#define LT_SUITE(name, needs_key)                                                              \
    if (!(needs_key) || have_key)                                                              \
        srunner_add_suite(sr, name());                                                         \
    else                                                                                       \
        printf("NOT RUN: %s needs the signing key of this build (make VENDOR_SECRET_KEY=...)\n", \
               #name);
#include "suites.h"
#undef LT_SUITE
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
