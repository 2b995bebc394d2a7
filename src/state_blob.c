/*
 * state_blob.c - the headers of the state blobs of lm_attn_get_state /
 * lm_attn_set_state. Format 1 ("LMSTATE1"): batch, kv heads, Dk, Dv,
 * position; then S and z as fp32. Format 2 ("LMSTATE2", docs/DESIGN.md §9):
 * the same plus the attention mode, W and s, then S, z and in hybrid mode the
 * window's keys and values (fp32) and positions (int32). Linear handles keep writing format
 * 1 and read both; hybrid handles use format 2. Either ends in the tag of
 * blob_auth.c (LMI_BLOB_TAG_BYTES): an older library reads the blob without
 * its last LMI_BLOB_TAG_BYTES bytes. lmi_blob_read is the whole parser of a
 * blob coming back (the fuzzer fuzz_blob drives it).
 */
#include "lm_impl.h"

#include <string.h>

typedef struct header1 {
    char magic[8]; /* "LMSTATE1" */
    int64_t batch, kv_heads, dk, dv, position;
} header1;

typedef struct header2 {
    char magic[8]; /* "LMSTATE2" */
    int64_t batch, kv_heads, dk, dv, position;
    int64_t attention, window, sinks, reserved;
} header2;

static const char magic1[8] = { 'L', 'M', 'S', 'T', 'A', 'T', 'E', '1' };
static const char magic2[8] = { 'L', 'M', 'S', 'T', 'A', 'T', 'E', '2' };

static int is_hybrid(const lm_attn *a)
{
    return a->cfg.attention == LM_ATTENTION_HYBRID;
}

size_t lmi_blob_header_bytes(const lm_attn *a)
{
    return is_hybrid(a) ? sizeof(header2) : sizeof(header1);
}

void lmi_blob_header_write(const lm_attn *a, void *buf)
{
    if (!is_hybrid(a)) {
        header1 h = { .batch = a->state_batch, .kv_heads = a->Hkv, .dk = a->D, .dv = a->D,
                      .position = a->position };
        memcpy(h.magic, magic1, sizeof h.magic);
        memcpy(buf, &h, sizeof h);
        return;
    }
    header2 h = { .batch = a->state_batch, .kv_heads = a->Hkv, .dk = a->D, .dv = a->D,
                  .position = a->position, .attention = LM_ATTENTION_HYBRID,
                  .window = a->cfg.window, .sinks = a->cfg.sinks };
    memcpy(h.magic, magic2, sizeof h.magic);
    memcpy(buf, &h, sizeof h);
}

static const char *mode_name(int64_t attention)
{
    return attention == LM_ATTENTION_LINEAR ? "linear"
           : attention == LM_ATTENTION_HYBRID ? "hybrid" : "unknown";
}

static lm_status header_read(const lm_attn *a, const void *buf, size_t bytes, lmi_blob_info *info)
{
    if (bytes < sizeof(header1))
        return lmi_error(LM_ERR_INVALID_ARG, "a state blob has at least %zu bytes, got %zu",
                         sizeof(header1), bytes);
    header2 h = { 0 }; /* format 1 is its prefix: a linear state */
    if (!memcmp(buf, magic1, sizeof magic1)) {
        memcpy(&h, buf, sizeof(header1));
        info->header_bytes = sizeof(header1);
    } else if (!memcmp(buf, magic2, sizeof magic2)) {
        if (bytes < sizeof h)
            return lmi_error(LM_ERR_INVALID_ARG, "a state blob of format 2 has at least %zu bytes, "
                             "got %zu", sizeof h, bytes);
        memcpy(&h, buf, sizeof h);
        info->header_bytes = sizeof h;
    } else {
        return lmi_error(LM_ERR_INVALID_ARG, "not a Liquid Memory state blob (bad magic)");
    }
    if (h.attention != a->cfg.attention)
        return lmi_error(LM_ERR_STATE, "the blob holds a %s attention state, the handle computes %s "
                         "attention", mode_name(h.attention), mode_name(a->cfg.attention));
    if (is_hybrid(a) && (h.window != a->cfg.window || h.sinks != a->cfg.sinks))
        return lmi_error(LM_ERR_STATE, "the blob's window has W = %lld, s = %lld; the handle's "
                         "W = %d, s = %d", (long long)h.window, (long long)h.sinks, a->cfg.window,
                         a->cfg.sinks);
    info->batch = h.batch, info->kv_heads = h.kv_heads, info->dk = h.dk, info->dv = h.dv;
    info->position = h.position;
    return LM_OK;
}

lm_status lmi_blob_read(const lm_attn *a, const void *buf, size_t bytes, lmi_blob_info *h)
{
    lm_status st = header_read(a, buf, bytes, h);
    if (st)
        return st;
    if (h->kv_heads != a->Hkv || h->dk != a->D || h->dv != a->D)
        return lmi_error(LM_ERR_STATE,
                         "the blob has %lld kv heads of %lldx%lld, the handle %lld of %lldx%lld",
                         (long long)h->kv_heads, (long long)h->dk, (long long)h->dv,
                         (long long)a->Hkv, (long long)a->D, (long long)a->D);
    if (h->batch <= 0 || h->batch > LMI_MAX_BLOB_BATCH || h->position < 0 ||
        h->position > LMI_MAX_POSITION)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "the blob has batch %lld (1..%d), position %lld (0..2^62)",
                         (long long)h->batch, LMI_MAX_BLOB_BATCH, (long long)h->position);
    if (a->cfg.max_batch > 0 && h->batch > a->cfg.max_batch)
        return lmi_error(LM_ERR_INVALID_ARG, "the blob's batch %lld exceeds max_batch %d",
                         (long long)h->batch, a->cfg.max_batch);
    h->data_bytes = (size_t)lmi_state_floats(a, h->batch) * sizeof(float);
    return lmi_blob_admit(buf, bytes, h->header_bytes + h->data_bytes, h->position,
                          "lm_attn_set_state");
}
