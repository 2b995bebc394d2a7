/* main.c - runs every Check suite listed in suites.h; exit status 1 on failure. */
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
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
