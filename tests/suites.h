/* suites.h - the Check suites of lm-tests, one line per tests/test_*.c. */
LM_SUITE(api_suite)
LM_SUITE(abi_suite)
LM_SUITE(attend_suite)
LM_SUITE(module_suite)
LM_SUITE(threads_suite)
LM_SUITE(backward_suite)
LM_SUITE(module_backward_suite)
LM_SUITE(absorb_suite)
