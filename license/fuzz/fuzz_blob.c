/*
 * fuzz_blob.c - libFuzzer target over the parsers of the state blobs that
 * come back into the library (make fuzz): lm_attn_set_state's
 * (lmi_blob_read, formats LMSTATE1 / LMSTATE2, src/state_blob.c) and
 * lm_pool_slot_import's (lmi_slot_blob_read, LMSLOT01 formats 1 and 2, linear and
 * hybrid pools, src/slot_blob.c),
 * with the admission rule of src/blob_auth.c. fuzz_blob.h describes the
 * input. Properties: no crash or undefined behaviour on any input; a blob
 * accepted has exactly the size its header implies (with or without the
 * tag), a position in 0..2^62 and a batch in bounds; under a context cap an
 * accepted blob carries this process's tag over everything before it.
 */
#include "fuzz_blob.h"
#include "lm_impl.h"

#include <stdlib.h>
#include <string.h>

static int capped;

/* The license, as the fuzzer's mode byte says (the gate is not linked). */
lm_status lmi_license_limits(lmi_limits *out)
{
    *out = (lmi_limits){ .cap = capped ? LM_EVAL_MAX_TOKENS : 0, .evaluation = capped };
    return LM_OK;
}

static void require(int ok)
{
    if (!ok)
        abort();
}

/* Whether blob[0..n) ends in this process's tag over the rest. */
static int tagged(const uint8_t *blob, size_t n)
{
    if (n < FUZZ_BLOB_TAG)
        return 0;
    uint8_t *copy = malloc(n);
    require(copy != NULL);
    memcpy(copy, blob, n);
    require(lmi_blob_sign(copy, n - FUZZ_BLOB_TAG) == LM_OK);
    const int same = !memcmp(copy + n - FUZZ_BLOB_TAG, blob + n - FUZZ_BLOB_TAG, FUZZ_BLOB_TAG);
    free(copy);
    return same;
}

static void module(const uint8_t *blob, size_t n, int hybrid)
{
    lm_attn a;
    memset(&a, 0, sizeof a);
    a.cfg.attention = hybrid ? LM_ATTENTION_HYBRID : LM_ATTENTION_LINEAR;
    a.cfg.window = FUZZ_BLOB_WINDOW, a.cfg.sinks = FUZZ_BLOB_SINKS;
    a.Hkv = FUZZ_BLOB_KV_HEADS, a.D = FUZZ_BLOB_D;
    lmi_blob_info h;
    if (lmi_blob_read(&a, blob, n, &h) != LM_OK)
        return;
    const size_t body = h.header_bytes + h.data_bytes;
    require(h.header_bytes == lmi_blob_header_bytes(&a) || (!hybrid && h.header_bytes == 80));
    require(h.batch >= 1 && h.batch <= LMI_MAX_BLOB_BATCH);
    require(h.position >= 0 && h.position <= LMI_MAX_POSITION);
    require(h.data_bytes == (size_t)lmi_state_floats(&a, h.batch) * sizeof(float));
    require(n == body || n == body + FUZZ_BLOB_TAG);
    require(!capped || (n == body + FUZZ_BLOB_TAG && tagged(blob, n)));
}

static void pool(const uint8_t *blob, size_t n, int hybrid)
{
    lm_pool p;
    memset(&p, 0, sizeof p);
    p.Hkv = FUZZ_BLOB_KV_HEADS, p.Dk = FUZZ_BLOB_D, p.Dv = FUZZ_BLOB_DV;
    p.hybrid = hybrid, p.W = FUZZ_BLOB_WINDOW, p.s = FUZZ_BLOB_SINKS;
    lmi_pool_layout(&p);
    int64_t position = -1;
    const void *data = NULL;
    if (lmi_slot_blob_read(&p, blob, n, &position, &data) != LM_OK)
        return;
    const size_t header = (size_t)((const uint8_t *)data - blob);
    const size_t body = header + (size_t)lmi_pool_slot_words(&p) * 4;
    require(header == lmi_slot_blob_header(&p) || (!hybrid && header == LMI_SLOT_HEADER2_BYTES));
    require(position >= 0 && position <= LMI_MAX_POSITION);
    require(n == body || n == body + FUZZ_BLOB_TAG);
    require(!capped || (n == body + FUZZ_BLOB_TAG && tagged(blob, n)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t mode = data[0];
    const size_t n = size - 1;
    uint8_t *blob = malloc(n ? n : 1); /* its own allocation: ASan sees any overread */
    require(blob != NULL);
    memcpy(blob, data + 1, n);
    if ((mode & FUZZ_BLOB_SIGN) && n >= FUZZ_BLOB_TAG)
        require(lmi_blob_sign(blob, n - FUZZ_BLOB_TAG) == LM_OK);
    capped = (mode & FUZZ_BLOB_CAPPED) != 0;
    if ((mode & 3) < 2)
        module(blob, n, mode & 1);
    else
        pool(blob, n, mode & 1);
    free(blob);
    return 0;
}
