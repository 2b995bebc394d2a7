/*
 * load_cuda.c - lmi_cuda_backend in the core: loads the CUDA backend
 * (libliquidmemory_cuda.so.0, see plugin.h) once, on first use, and hands
 * its table out. A build without nvcc has no backend to load; a missing or
 * unloadable one (no CUDA runtime, no cuBLASLt) is LM_ERR_NO_DEVICE with
 * the loader's reason, on every call that asks for CUDA.
 */
#define _GNU_SOURCE /* dladdr */
#include "plugin.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <threads.h>

static once_flag load_once = ONCE_FLAG_INIT;
static lmi_plugin plugin;      /* backend == NULL: not loaded, why in load_error */
static char load_error[640];

#ifdef LM_WITH_CUDA
static lm_status host_verror(lm_status status, const char *fmt, va_list ap)
{
    return lmi_verror(status, fmt, ap);
}

/* dlopen of the backend beside the file that holds this code (the shared
 * core, or the program the static core is linked into); else by name. */
static void *open_plugin(char *why, size_t n)
{
    Dl_info info;
    if (dladdr((void *)&lmi_cuda_backend, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash) {
            char path[4096];
            snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname),
                     info.dli_fname, LMI_CUDA_PLUGIN_FILE);
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (h)
                return h;
        }
    }
    void *h = dlopen(LMI_CUDA_PLUGIN_FILE, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, n, "%s", e ? e : "not found");
    }
    return h;
}

static void load(void)
{
    char why[512] = "";
    void *h = open_plugin(why, sizeof why);
    if (!h) {
        snprintf(load_error, sizeof load_error,
                 "no CUDA backend: %s could not be loaded (%.400s); it must be installed beside "
                 "libliquidmemory, with the CUDA runtime and cuBLASLt it needs",
                 LMI_CUDA_PLUGIN_FILE, why);
        return;
    }
    lmi_plugin_entry entry;
    void *sym = dlsym(h, LMI_CUDA_PLUGIN_SYMBOL);
    memcpy(&entry, &sym, sizeof entry); /* object to function pointer, as POSIX allows */
    const lmi_plugin_host host = { LM_VERSION_NUMBER, LMI_PLUGIN_LAYOUT, host_verror };
    lmi_plugin p = { 0 };
    if (!entry || entry(&host, &p) != LM_OK || p.version != LM_VERSION_NUMBER ||
        p.layout != LMI_PLUGIN_LAYOUT || !p.backend) {
        snprintf(load_error, sizeof load_error,
                 "no CUDA backend: %s is not the one of this library (version %d, "
                 "expected %d): install the matching CUDA backend",
                 LMI_CUDA_PLUGIN_FILE, p.version, LM_VERSION_NUMBER);
        dlclose(h);
        return;
    }
    plugin = p; /* the library stays loaded for the life of the process */
}
#else
static void load(void)
{
    snprintf(load_error, sizeof load_error,
             "this build of Liquid Memory has no CUDA backend (built without nvcc)");
}
#endif

lm_status lmi_cuda_backend(int cuda_device, const lmi_backend **out)
{
    call_once(&load_once, load);
    if (!plugin.backend)
        return lmi_error(LM_ERR_NO_DEVICE, "%s", load_error);
    return plugin.backend(cuda_device, out);
}
