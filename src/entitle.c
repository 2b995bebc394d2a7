/*
 * entitle.c - the license's entitlements beyond a call's context length
 * (docs/DESIGN.md, "Per-sequence entitlements"): positions checked for
 * overflow, CUDA graph capture under a context cap, and the core API's rule
 * for a state the caller carries. The count itself is lmi_license_check's;
 * blobs are blob_auth.c's.
 */
#include "lm_impl.h"

#include <string.h>

lm_status lmi_context(int64_t position, int64_t tokens, const char *what, int64_t *ctx)
{
    if (position < 0 || position > LMI_MAX_POSITION)
        return lmi_error(LM_ERR_INVALID_ARG, "%s: position %lld is outside 0..2^62", what,
                         (long long)position);
    if (tokens < 0 || __builtin_add_overflow(position, tokens, ctx))
        return lmi_error(LM_ERR_INVALID_ARG, "%s: position %lld plus %lld tokens overflows", what,
                         (long long)position, (long long)tokens);
    return LM_OK;
}

/* Who counts under a cap, for messages. */
static const char *counter(const lmi_limits *lim)
{
    return lim->evaluation ? "evaluation mode" : "the license";
}

lm_status lmi_capture_check(const lmi_backend *be, void *stream, int fixed, const char *what)
{
    if (fixed || !be->capturing)
        return LM_OK;
    int yes = 0;
    lm_status st = be->capturing(stream, &yes);
    if (st || !yes)
        return st;
    lmi_limits lim;
    if ((st = lmi_license_limits(&lim)) || !lim.cap)
        return st;
    return lmi_error(LM_ERR_LICENSE,
                     "%s cannot be captured in a CUDA graph while %s counts %lld tokens of "
                     "context per sequence: each replay would add tokens that the host-side "
                     "count never sees. Run it without a graph, capture lm_pool_decode (its "
                     "kernel keeps the count on the device), or install a license without a "
                     "context cap",
                     what, counter(&lim), (long long)lim.cap);
}

/* Zeroes the n floats (or int32s) at ptr, when given. */
static lm_status empty(const lmi_backend *be, void *ptr, int64_t n, void *stream)
{
    return ptr && n ? be->zero_async(ptr, (size_t)n * 4, stream) : LM_OK;
}

lm_status lmi_core_entitle(const lm_core_args *a)
{
    if (a->fresh_state && (!a->state || a->position))
        return lmi_error(LM_ERR_INVALID_ARG,
                         "fresh_state starts a sequence in the given state: give state and "
                         "normalizer, and position 0 (not %lld)", (long long)a->position);
    if (!a->state || a->fresh_state)
        return LM_OK;
    lmi_limits lim;
    lm_status st = lmi_license_limits(&lim);
    if (st || !lim.cap)
        return st;
    return lmi_error(LM_ERR_LICENSE,
                     "%s counts %lld tokens of context per sequence, and the core API cannot "
                     "verify a state the caller carries (its position, %lld, is the caller's "
                     "word): pass fresh_state = 1 to start a sequence (the library empties the "
                     "state), and continue sequences with an lm_attn handle or an lm_pool, whose "
                     "positions the library keeps; or install a license without a context cap",
                     counter(&lim), (long long)lim.cap, (long long)a->position);
}

lm_status lmi_core_fresh(const lm_core_args *a, const lmi_backend *be, const lmi_core_params *p,
                         void *stream)
{
    if (!a->fresh_state)
        return LM_OK;
    const int64_t rows = p->B * p->Hkv, slots = p->hybrid ? p->sinks + p->window : 0;
    lm_status st;
    if ((st = empty(be, p->state, rows * p->Dk * p->Dv, stream)) ||
        (st = empty(be, p->normalizer, rows * p->Dk, stream)) ||
        (st = empty(be, p->win_k, rows * slots * p->Dk, stream)) ||
        (st = empty(be, p->win_v, rows * slots * p->Dv, stream)))
        return st;
    return empty(be, p->win_pos, rows * slots, stream);
}
