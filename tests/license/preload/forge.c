/*
 * forge.c - tries the token given as argv[1] (a forged one) with
 * lm_license_set; exit 0 when the library refuses it with LM_ERR_LICENSE,
 * 1 when it takes it. Run by tests/license/test_build.sh under LD_PRELOAD.
 */
#include "liquid_memory.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    lm_status st = lm_license_set(argv[1]);
    printf("%s: %s\n", lm_status_string(st), lm_last_error());
    return st == LM_ERR_LICENSE ? 0 : 1;
}
