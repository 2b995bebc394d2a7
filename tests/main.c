/*
 * main.c - runs every Check suite listed in suites.h in one process (set
 * CK_FORK=yes to fork per test), prints the largest error per dtype, exits
 * 1 on any failure. CK_RUN_SUITE / CK_RUN_CASE select, as Check documents.
 */
#include "ref.h"

#include <check.h>
#include <stdlib.h>

#define LM_SUITE(name) Suite *name(void);
#include "suites.h"
#undef LM_SUITE

int main(void)
{
    SRunner *sr = srunner_create(NULL);
#define LM_SUITE(name) srunner_add_suite(sr, name());
#include "suites.h"
#undef LM_SUITE
    if (!getenv("CK_FORK"))
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    ref_print_summary();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
