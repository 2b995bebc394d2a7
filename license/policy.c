/* policy.c - placeholder until the license gate lands: everything allowed. */
#include "lm_impl.h"

lm_status lmi_license_check(int64_t tokens)
{
    (void)tokens;
    return LM_OK;
}

const char *lmi_license_build_note(void)
{
    return "";
}
