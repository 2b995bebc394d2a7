/*
 * cuda_plugin.c - the CUDA backend's side of plugin.h: its one exported
 * entry point, and lmi_error, which hands every message to the core so that
 * it lands in the caller's lm_last_error.
 */
#include "cuda_impl.h"
#include "plugin.h"

static lm_status (*core_verror)(lm_status, const char *, va_list);

lm_status lmi_error(lm_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    status = core_verror(status, fmt, ap);
    va_end(ap);
    return status;
}

__attribute__((visibility("default"))) lm_status lmi_cuda_plugin_entry(const lmi_plugin_host *host,
                                                                      lmi_plugin *out);

lm_status lmi_cuda_plugin_entry(const lmi_plugin_host *host, lmi_plugin *out)
{
    out->version = LM_VERSION_NUMBER;
    out->layout = LMI_PLUGIN_LAYOUT;
    out->backend = lmi_cuda_open_backend;
    if (host->version != LM_VERSION_NUMBER || host->layout != LMI_PLUGIN_LAYOUT)
        return LM_ERR_INTERNAL; /* no message: the core writes it */
    core_verror = host->verror;
    return LM_OK;
}
