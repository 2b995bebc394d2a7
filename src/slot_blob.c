/*
 * slot_blob.c - the slot blob of lm_pool_slot_export / lm_pool_slot_import:
 * a header ("LMSLOT01"), then the slot's parts as 4-byte words in the byte
 * order of the machine that wrote it (the header's endian mark says which):
 * S [Hkv][Dk][Dv] and z [Hkv][Dk] fp32, and in a hybrid pool's blob the
 * window's keys [Hkv][s + W][Dk], values [Hkv][s + W][Dv] (fp32) and
 * positions [Hkv][s + W] (int32); then the tag of blob_auth.c.
 * Format 1 (56-byte header) is a linear pool's, and what linear pools still
 * write, so older readers keep reading them; format 2 (88 bytes: attention,
 * W, s added) is a hybrid pool's. A linear pool reads both (a format-2 blob
 * with attention 0); a hybrid pool only format 2 of its own W and s.
 * lmi_slot_blob_read is the whole parser of a blob coming back (the fuzzer
 * fuzz_blob drives it).
 */
#include "lm_impl.h"

#include <string.h>

typedef struct slot_header {
    char magic[8];          /* "LMSLOT01" */
    uint32_t version;       /* 1 or 2 */
    uint32_t header_bytes;  /* sizeof(slot_header) or sizeof(slot_header2) */
    uint32_t endian;        /* 0x01020304 as written */
    uint32_t reserved;
    int64_t kv_heads, dk, dv, position;
} slot_header;

typedef struct slot_header2 {
    slot_header h;
    int64_t attention;      /* lm_attention */
    int64_t window, sinks;  /* W, s (0 in a linear blob) */
    int64_t reserved;       /* 0 */
} slot_header2;

_Static_assert(sizeof(slot_header) == LMI_SLOT_HEADER_BYTES, "the slot blob's header is 56 bytes");
_Static_assert(sizeof(slot_header2) == LMI_SLOT_HEADER2_BYTES, "format 2's header is 88 bytes");

static const char blob_magic[8] = { 'L', 'M', 'S', 'L', 'O', 'T', '0', '1' };

size_t lmi_slot_blob_header(const lm_pool *p)
{
    return p->hybrid ? sizeof(slot_header2) : sizeof(slot_header);
}

/* Bytes of header and data: everything the tag covers. */
static size_t body_bytes(const lm_pool *p, size_t header)
{
    return header + (size_t)lmi_pool_slot_words(p) * 4;
}

size_t lmi_slot_blob_bytes(const lm_pool *p)
{
    return body_bytes(p, lmi_slot_blob_header(p)) + LMI_BLOB_TAG_BYTES;
}

lm_status lmi_slot_blob_seal(const lm_pool *p, int64_t position, void *buf)
{
    slot_header2 h = { .h = { .version = p->hybrid ? 2u : 1u, .header_bytes = (uint32_t)lmi_slot_blob_header(p),
                              .endian = 0x01020304u, .kv_heads = p->Hkv, .dk = p->Dk, .dv = p->Dv,
                              .position = position },
                       .attention = p->hybrid ? LM_ATTENTION_HYBRID : LM_ATTENTION_LINEAR,
                       .window = p->W, .sinks = p->s };
    memcpy(h.h.magic, blob_magic, sizeof h.h.magic);
    memcpy(buf, &h, lmi_slot_blob_header(p));
    return lmi_blob_sign(buf, body_bytes(p, lmi_slot_blob_header(p)));
}

/* Format 2's mode against the pool's: linear blobs into linear pools, hybrid
 * ones into hybrid pools of the same W and s. */
static lm_status check_mode(const lm_pool *p, const slot_header2 *h)
{
    const int hybrid = h->attention == LM_ATTENTION_HYBRID;
    if (h->attention != LM_ATTENTION_LINEAR && !hybrid)
        return lmi_error(LM_ERR_INVALID_ARG, "the slot blob's attention %lld is not 0 or 1",
                         (long long)h->attention);
    if (hybrid != p->hybrid || (hybrid && (h->window != p->W || h->sinks != p->s)))
        return lmi_error(LM_ERR_STATE, "the blob holds a %s slot (W = %lld, s = %lld), the pool is %s "
                         "(W = %lld, s = %lld)", hybrid ? "hybrid" : "linear", (long long)h->window,
                         (long long)h->sinks, p->hybrid ? "hybrid" : "linear", (long long)p->W,
                         (long long)p->s);
    return LM_OK;
}

lm_status lmi_slot_blob_read(const lm_pool *p, const void *buf, size_t bytes, int64_t *position,
                             const void **data)
{
    slot_header2 h2 = { .attention = LM_ATTENTION_LINEAR };
    slot_header *h = &h2.h;
    if (!buf || bytes < sizeof *h)
        return lmi_error(LM_ERR_INVALID_ARG, "a slot blob has at least %zu bytes, got %zu", sizeof *h,
                         buf ? bytes : 0);
    memcpy(h, buf, sizeof *h);
    if (memcmp(h->magic, blob_magic, sizeof h->magic))
        return lmi_error(LM_ERR_INVALID_ARG, "not a Liquid Memory slot blob (bad magic)");
    if (h->endian != 0x01020304u)
        return lmi_error(LM_ERR_UNSUPPORTED, "the slot blob was written on a machine of the other byte order");
    if (!((h->version == 1 && h->header_bytes == sizeof(slot_header)) ||
          (h->version == 2 && h->header_bytes == sizeof(slot_header2))))
        return lmi_error(LM_ERR_UNSUPPORTED, "slot blob format %u (header %u bytes); this library reads "
                         "formats 1 and 2", h->version, h->header_bytes);
    if (bytes < h->header_bytes)
        return lmi_error(LM_ERR_INVALID_ARG, "a format-%u slot blob has at least %u bytes, got %zu",
                         h->version, h->header_bytes, bytes);
    if (h->version == 2)
        memcpy(&h2, buf, sizeof h2);
    if (h->kv_heads != p->Hkv || h->dk != p->Dk || h->dv != p->Dv)
        return lmi_error(LM_ERR_STATE, "the blob holds %lld kv heads of %lld x %lld, the pool %lld of "
                         "%lld x %lld", (long long)h->kv_heads, (long long)h->dk, (long long)h->dv,
                         (long long)p->Hkv, (long long)p->Dk, (long long)p->Dv);
    lm_status st = check_mode(p, &h2);
    if (st)
        return st;
    if (h->position < 0 || h->position > LMI_MAX_POSITION)
        return lmi_error(LM_ERR_INVALID_ARG, "the blob's position is %lld (0..2^62)",
                         (long long)h->position);
    *position = h->position;
    *data = (const char *)buf + h->header_bytes;
    return lmi_blob_admit(buf, bytes, body_bytes(p, h->header_bytes), h->position, "lm_pool_slot_import");
}
