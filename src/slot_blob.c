/*
 * slot_blob.c - the slot blob of lm_pool_slot_export / lm_pool_slot_import:
 * a header ("LMSLOT01"), then S [Hkv][Dk][Dv] and z [Hkv][Dk] as fp32 in the
 * byte order of the machine that wrote it (the header's endian mark says
 * which), then the tag of blob_auth.c. lmi_slot_blob_read is the whole parser
 * of a blob coming back (the fuzzer fuzz_blob drives it).
 */
#include "lm_impl.h"

#include <string.h>

typedef struct slot_header {
    char magic[8];          /* "LMSLOT01" */
    uint32_t version;       /* BLOB_VERSION */
    uint32_t header_bytes;  /* sizeof(slot_header) */
    uint32_t endian;        /* 0x01020304 as written */
    uint32_t reserved;
    int64_t kv_heads, dk, dv, position;
} slot_header;

_Static_assert(sizeof(slot_header) == LMI_SLOT_HEADER_BYTES, "the slot blob's header is 56 bytes");

#define BLOB_VERSION 1u
static const char blob_magic[8] = { 'L', 'M', 'S', 'L', 'O', 'T', '0', '1' };

/* Bytes of header and data: everything the tag covers. */
static size_t body_bytes(const lm_pool *p)
{
    return sizeof(slot_header) + (size_t)(p->Hkv * p->Dk * p->Dv + p->Hkv * p->Dk) * sizeof(float);
}

size_t lmi_slot_blob_bytes(const lm_pool *p)
{
    return body_bytes(p) + LMI_BLOB_TAG_BYTES;
}

lm_status lmi_slot_blob_seal(const lm_pool *p, int64_t position, void *buf)
{
    slot_header h = { .version = BLOB_VERSION, .header_bytes = sizeof h, .endian = 0x01020304u,
                      .kv_heads = p->Hkv, .dk = p->Dk, .dv = p->Dv, .position = position };
    memcpy(h.magic, blob_magic, sizeof h.magic);
    memcpy(buf, &h, sizeof h);
    return lmi_blob_sign(buf, body_bytes(p));
}

lm_status lmi_slot_blob_read(const lm_pool *p, const void *buf, size_t bytes, int64_t *position)
{
    slot_header h;
    if (!buf || bytes < sizeof h)
        return lmi_error(LM_ERR_INVALID_ARG, "a slot blob has at least %zu bytes, got %zu", sizeof h,
                         buf ? bytes : 0);
    memcpy(&h, buf, sizeof h);
    if (memcmp(h.magic, blob_magic, sizeof h.magic))
        return lmi_error(LM_ERR_INVALID_ARG, "not a Liquid Memory slot blob (bad magic)");
    if (h.endian != 0x01020304u)
        return lmi_error(LM_ERR_UNSUPPORTED, "the slot blob was written on a machine of the other byte order");
    if (h.version != BLOB_VERSION || h.header_bytes != sizeof h)
        return lmi_error(LM_ERR_UNSUPPORTED, "slot blob format %u (header %u bytes); this library reads "
                         "format %u", h.version, h.header_bytes, BLOB_VERSION);
    if (h.kv_heads != p->Hkv || h.dk != p->Dk || h.dv != p->Dv)
        return lmi_error(LM_ERR_STATE, "the blob holds %lld kv heads of %lld x %lld, the pool %lld of "
                         "%lld x %lld", (long long)h.kv_heads, (long long)h.dk, (long long)h.dv,
                         (long long)p->Hkv, (long long)p->Dk, (long long)p->Dv);
    if (h.position < 0 || h.position > LMI_MAX_POSITION)
        return lmi_error(LM_ERR_INVALID_ARG, "the blob's position is %lld (0..2^62)",
                         (long long)h.position);
    *position = h.position;
    return lmi_blob_admit(buf, bytes, body_bytes(p), h.position, "lm_pool_slot_import");
}
