/*
 * sized.c - the ABI rule for public structs (liquid_memory.h, "ABI rule for
 * structs"): a caller's struct is read or written only up to the struct_size
 * it declares, so a program built against an older header (a shorter struct)
 * works with a newer library, and never gets bytes written past its struct.
 */
#include "lm_impl.h"

#include <string.h>

/* The caller's struct_size, checked against what the library can use:
 * 0 (never set) and sizes below the struct's first release are refused. */
static lm_status sized_check(const void *src, size_t min_size, const char *type,
                             uint32_t *size)
{
    memcpy(size, src, sizeof *size);
    if (*size == 0)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "%s.struct_size is 0: set it to sizeof(%s) (LM_SIZED(%s), or the "
                         "struct's _default() initialiser)", type, type, type);
    if (*size < min_size)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "%s.struct_size is %u, smaller than any release of %s (%zu bytes)",
                         type, (unsigned)*size, type, min_size);
    return LM_OK;
}

lm_status lmi_sized_in(void *dst, size_t dst_size, size_t min_size, const void *src,
                       const char *type)
{
    uint32_t size;
    lm_status st = sized_check(src, min_size, type, &size);
    if (st)
        return st;
    const size_t n = size < dst_size ? size : dst_size;
    memset(dst, 0, dst_size);
    memcpy(dst, src, n);
    memcpy(dst, &(uint32_t){ (uint32_t)dst_size }, sizeof(uint32_t));
    return LM_OK;
}

lm_status lmi_sized_out(void *dst, const void *src, size_t src_size, size_t min_size,
                        const char *type)
{
    uint32_t size;
    lm_status st = sized_check(dst, min_size, type, &size);
    if (st)
        return st;
    const size_t n = size < src_size ? size : src_size;
    memcpy(dst, src, n);
    memcpy(dst, &size, sizeof size); /* the caller's size stays what the caller set */
    return LM_OK;
}

lm_status lmi_sized_init(void *dst, size_t size, size_t min_size, const void *src, size_t src_size,
                         const char *type)
{
    if (!dst)
        return lmi_error(LM_ERR_INVALID_ARG, "the %s to initialise is NULL", type);
    if (size < min_size || size > UINT32_MAX)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "size %zu is not a size of %s (at least %zu bytes): pass sizeof(%s)",
                         size, type, min_size, type);
    memset(dst, 0, size);
    memcpy(dst, src, size < src_size ? size : src_size);
    memcpy(dst, &(uint32_t){ (uint32_t)size }, sizeof(uint32_t));
    return LM_OK;
}
