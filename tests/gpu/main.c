/*
 * main.c - lm-gpu-tests: the GPU suites, in this process (no fork: CUDA does
 * not survive one).
 *   lm-gpu-tests                  core, module, backward and module backward grids
 *   lm-gpu-tests small            the reduced grid, for compute-sanitizer
 *   lm-gpu-tests long             64K to 1M tokens
 *   lm-gpu-tests comp             compensated prefills at ragged lengths (and
 *                                 their errors printed, for v1 against v2)
 *   lm-gpu-tests core             the core and absorb grids alone
 *   lm-gpu-tests backward         the (core) backward grid alone
 *   lm-gpu-tests module_backward  the module backward's grid alone
 *   lm-gpu-tests absorb           lm_linear_attn_absorb's grid alone
 *   lm-gpu-tests pool             the engine pool's suite alone
 *   lm-gpu-tests hybrid           hybrid attention's grid alone
 *   lm-gpu-tests den              the linear prefill's internal denominator output
 *                                 alone (also the last suite of all and small: it
 *                                 gives the CUDA backend an error sink of its own,
 *                                 test_gpu_den.c, so no suite may follow it)
 *   lm-gpu-tests license          the license against graph replays; in evaluation
 *                                 mode only: LM_LICENSE, LM_LICENSE_FILE unset, HOME
 *                                 without a license (make test-gpu runs it so)
 * Exit status 0 pass, 1 fail, 77 no GPU here.
 */
#include "gpu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Suite *gpu_core_suite(void);
Suite *gpu_module_suite(void);
Suite *gpu_long_suite(void);
Suite *gpu_comp_suite(void);
Suite *gpu_backward_suite(void);
Suite *gpu_module_backward_suite(void);
Suite *gpu_absorb_suite(void);
Suite *gpu_pool_suite(void);
Suite *gpu_hybrid_suite(void);
Suite *gpu_den_suite(void);
Suite *gpu_license_suite(void);

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "all";
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("lm-gpu-tests: no CUDA device here, nothing run\n");
        return 77;
    }
    gpu_small = !strcmp(mode, "small");
    SRunner *sr;
    if (!strcmp(mode, "long")) {
        sr = srunner_create(gpu_long_suite());
    } else if (!strcmp(mode, "comp")) {
        sr = srunner_create(gpu_comp_suite());
    } else if (!strcmp(mode, "core")) {
        sr = srunner_create(gpu_core_suite());
        srunner_add_suite(sr, gpu_absorb_suite());
    } else if (!strcmp(mode, "backward")) {
        sr = srunner_create(gpu_backward_suite());
    } else if (!strcmp(mode, "module_backward")) {
        sr = srunner_create(gpu_module_backward_suite());
    } else if (!strcmp(mode, "pool")) {
        sr = srunner_create(gpu_pool_suite());
    } else if (!strcmp(mode, "hybrid")) {
        sr = srunner_create(gpu_hybrid_suite());
    } else if (!strcmp(mode, "den")) {
        sr = srunner_create(gpu_den_suite());
    } else if (!strcmp(mode, "license")) {
        sr = srunner_create(gpu_license_suite());
    } else if (!strcmp(mode, "all") || gpu_small) {
        sr = srunner_create(gpu_core_suite());
        srunner_add_suite(sr, gpu_module_suite());
        srunner_add_suite(sr, gpu_backward_suite());
        srunner_add_suite(sr, gpu_module_backward_suite());
        srunner_add_suite(sr, gpu_absorb_suite());
        srunner_add_suite(sr, gpu_pool_suite());
        srunner_add_suite(sr, gpu_hybrid_suite());
        srunner_add_suite(sr, gpu_den_suite()); /* last: see the top comment */
    } else if (!strcmp(mode, "absorb")) {
        sr = srunner_create(gpu_absorb_suite());
    } else {
        fprintf(stderr, "usage: lm-gpu-tests [all|small|long|comp|core|backward|module_backward|absorb|pool|hybrid|den|license]\n");
        return 2;
    }
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    gpu_print_summary();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
