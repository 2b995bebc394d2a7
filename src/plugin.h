/*
 * plugin.h - the interface between the core library and its CUDA backend.
 *
 * The CUDA backend is a separate library, libliquidmemory_cuda.so.0, so that
 * the core (libliquidmemory.so.0 / .a) needs no CUDA library: CPU-only users
 * never load cuBLASLt or the CUDA runtime. The core dlopen()s the backend the
 * first time a CUDA device or tensor arrives (load_cuda.c), looking beside
 * the core library first, then on the loader's search path; the backend
 * reaches the core only through the host table below (it links to no
 * symbol of the core, so it serves the shared and the static core alike).
 * Both halves are built from one tree: the handshake refuses a backend of
 * another version or layout of the internal structs.
 */
#ifndef LM_PLUGIN_H
#define LM_PLUGIN_H

#include "lm_impl.h"

#include <stdarg.h>
#include <stdint.h>

/* File name of the CUDA backend (its soname). */
#define LMI_CUDA_PLUGIN_FILE "libliquidmemory_cuda.so." LMI_STR(LM_ABI_VERSION)
#define LMI_STR(x) LMI_STR_(x)
#define LMI_STR_(x) #x
/* The one symbol the backend exports: an lmi_plugin_entry. */
#define LMI_CUDA_PLUGIN_SYMBOL "lmi_cuda_plugin_entry"

/* A fingerprint of the internal structs both halves share: a backend
 * compiled against other definitions is refused. */
#define LMI_PLUGIN_LAYOUT                                                                   \
    ((uint64_t)sizeof(lm_attn) ^ (uint64_t)sizeof(lm_pool) << 8 ^ (uint64_t)sizeof(lmi_backend) << 16 ^ \
     (uint64_t)sizeof(lmi_varlen) << 24 ^ (uint64_t)sizeof(lmi_core_params) << 32 ^                   \
     (uint64_t)sizeof(lmi_rows) << 40 ^ (uint64_t)sizeof(lmi_forward) << 48)

/* What the core hands the backend. */
typedef struct lmi_plugin_host {
    int version;      /* LM_VERSION_NUMBER of the core */
    uint64_t layout;  /* LMI_PLUGIN_LAYOUT of the core */
    /* lmi_error of the core: the message lands in the caller's lm_last_error. */
    lm_status (*verror)(lm_status status, const char *fmt, va_list ap);
} lmi_plugin_host;

/* What the backend hands back. */
typedef struct lmi_plugin {
    int version;
    uint64_t layout;
    /* The backend table for cuda_device (-1: the current one), or NO_DEVICE /
     * UNSUPPORTED with a message (lmi_cuda_backend's contract). */
    lm_status (*backend)(int cuda_device, const lmi_backend **out);
} lmi_plugin;

typedef lm_status (*lmi_plugin_entry)(const lmi_plugin_host *host, lmi_plugin *out);

#endif /* LM_PLUGIN_H */
