/* suites.h - the Check suites of lm-license-tests, one per test_*.c; the second
 * argument is 1 when the suite signs tokens with the build's key. */
LT_SUITE(sign_suite, 0)
LT_SUITE(token_suite, 1)
LT_SUITE(policy_suite, 1)
LT_SUITE(eval_suite, 1)
LT_SUITE(cli_suite, 1)
