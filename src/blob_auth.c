/*
 * blob_auth.c - the tag that authenticates the state blobs leaving the
 * library (lm_attn_get_state, lm_pool_slot_export), and the rule that admits
 * a blob coming back (docs/DESIGN.md, "Per-sequence entitlements").
 *
 * A blob carries the position of its sequence, which the license counts; a
 * caller who could rewrite it (or splice another state under it) would reset
 * the count. So every blob ends in LMI_BLOB_TAG_BYTES of keyed BLAKE2b over
 * a domain string and everything before the tag, keyed with a random key
 * drawn once per process and never shown. A blob whose tag verifies was
 * written by this process, unaltered. Under a license with a context cap
 * (evaluation, or a max_seq_len) only such blobs are taken back; an
 * unlimited license has no count to protect and takes any well-formed blob
 * (another process's, a stored one, one without a tag from an older
 * library), so states still move between processes and machines there.
 */
#include "lm_impl.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>

#define DOMAIN "liquid-memory-state-blob-v1"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static uint8_t key[crypto_generichash_KEYBYTES];
static int key_ok;

static void make_key(void)
{
    if (sodium_init() < 0)
        return;
    randombytes_buf(key, sizeof key);
    key_ok = 1;
}

/* The tag of body[0..n); 0, or -1 when libsodium could not start. */
static int tag_of(const void *body, size_t n, uint8_t tag[LMI_BLOB_TAG_BYTES])
{
    pthread_once(&once, make_key);
    if (!key_ok)
        return -1;
    crypto_generichash_state s;
    crypto_generichash_init(&s, key, sizeof key, LMI_BLOB_TAG_BYTES);
    crypto_generichash_update(&s, (const unsigned char *)DOMAIN, sizeof DOMAIN);
    crypto_generichash_update(&s, body, n);
    crypto_generichash_final(&s, tag, LMI_BLOB_TAG_BYTES);
    return 0;
}

lm_status lmi_blob_sign(void *blob, size_t body_bytes)
{
    uint8_t tag[LMI_BLOB_TAG_BYTES];
    if (tag_of(blob, body_bytes, tag))
        return lmi_error(LM_ERR_INTERNAL, "libsodium could not start: no key to tag the state blob");
    memcpy((char *)blob + body_bytes, tag, sizeof tag);
    return LM_OK;
}

lm_status lmi_blob_admit(const void *blob, size_t bytes, size_t body_bytes, int64_t position,
                         const char *what)
{
    if (bytes != body_bytes && bytes != body_bytes + LMI_BLOB_TAG_BYTES)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "%s: the blob has %zu bytes, expected %zu (with its %d-byte tag) or %zu",
                         what, bytes, body_bytes + LMI_BLOB_TAG_BYTES, LMI_BLOB_TAG_BYTES,
                         body_bytes);
    lmi_limits lim;
    lm_status st = lmi_license_limits(&lim);
    if (st)
        return st;
    if (!lim.cap)
        return LM_OK; /* nothing is counted: any well-formed blob */
    uint8_t tag[LMI_BLOB_TAG_BYTES];
    const int ours = bytes == body_bytes + LMI_BLOB_TAG_BYTES && !tag_of(blob, body_bytes, tag) &&
                     !sodium_memcmp(tag, (const char *)blob + body_bytes, sizeof tag);
    if (ours)
        return LM_OK;
    return lmi_error(LM_ERR_LICENSE,
                     "%s: the blob (position %lld) %s; %s counts %lld tokens of context per "
                     "sequence, so it takes back only blobs this process wrote, unaltered. "
                     "Continue the sequence in this process, or install an unlimited license "
                     "to move states between processes",
                     what, (long long)position,
                     bytes == body_bytes ? "has no tag" : "was altered or written by another process",
                     lim.evaluation ? "evaluation mode" : "the license", (long long)lim.cap);
}
