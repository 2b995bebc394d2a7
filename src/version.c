/* version.c - lm_version: the release, the backends built in, the key kind. */
#include "lm_impl.h"

#include <stdio.h>
#include <threads.h>

#ifdef LM_WITH_CUDA
#define LM_BACKENDS "cpu, cuda"
#else
#define LM_BACKENDS "cpu"
#endif

static char text[128];
static once_flag text_once = ONCE_FLAG_INIT;

static void make_text(void)
{
    snprintf(text, sizeof text, "%s (%s)%s", LM_VERSION_STRING, LM_BACKENDS,
             lmi_license_build_note());
}

const char *lm_version(void)
{
    call_once(&text_once, make_text);
    return text;
}

int lm_version_number(void)
{
    return LM_VERSION_NUMBER;
}
