/*
 * error.c - status names and the thread-local text behind lm_last_error.
 * The only mutable global of the library besides the license cache.
 */
#include "lm_impl.h"

#include <stdio.h>

static _Thread_local char last_error[512];

const char *lm_status_string(lm_status status)
{
    switch (status) {
    case LM_OK: return "ok";
    case LM_ERR_INVALID_ARG: return "invalid argument";
    case LM_ERR_UNSUPPORTED: return "unsupported";
    case LM_ERR_OUT_OF_MEMORY: return "out of memory";
    case LM_ERR_NO_DEVICE: return "no CUDA device";
    case LM_ERR_CUDA: return "CUDA error";
    case LM_ERR_LICENSE: return "license";
    case LM_ERR_STATE: return "state mismatch";
    case LM_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *lm_last_error(void)
{
    return last_error;
}

static void record(const char *fmt, va_list ap)
{
    vsnprintf(last_error, sizeof last_error, fmt, ap);
}

lm_status lmi_verror(lm_status status, const char *fmt, va_list ap)
{
    record(fmt, ap);
    return status;
}

lm_status lmi_error(lm_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(fmt, ap);
    va_end(ap);
    return status;
}

void lmi_notice(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(fmt, ap);
    va_end(ap);
}
