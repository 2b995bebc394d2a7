/*
 * fuzz_token.c - libFuzzer target over the token and payload code, versions
 * 1 and 2 (make fuzz). Each input is tried two ways:
 *   - as token text, verified with the two fuzz keys as the keyring: it must
 *     never crash, and a token that verifies must be exactly what issuing
 *     its fields with its key gives (one canonical encoding; Ed25519
 *     signatures are deterministic);
 *   - as a raw payload, since random text never gets past the signature:
 *     whatever decodes must re-encode to the same bytes, carry a licensee
 *     that passes the text rule, and sign, verify and decode back to the
 *     same fields.
 */
#include "fuzz_key.h"

static fuzz_keys keys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    require(fuzz_keys_make(&keys) == 0);
    return 0;
}

/* Which fuzz key has the id a version 2 license names; -1 when none. */
static int key_of(const lml_license *lic)
{
    for (int i = 0; i < FUZZ_KEYS; i++) {
        uint8_t id[LML_KEY_ID_BYTES];
        lml_key_id(id, keys.ring[i].pk);
        if (memcmp(id, lic->key_id, sizeof id) == 0)
            return i;
    }
    return -1;
}

static void as_token(const uint8_t *data, size_t size)
{
    lml_license lic, raw;
    char why[256], again[LML_TOKEN_MAX + 1];
    lml_result r = lml_token_verify((const char *)data, size, keys.ring, FUZZ_KEYS, &lic, why,
                                    sizeof why);
    lml_result u = lml_token_decode_unverified((const char *)data, size, &raw, why, sizeof why);
    if (r != LML_VALID)
        return;
    require(u == LML_VALID);
    require(lml_text_check(lic.licensee, strlen(lic.licensee), why, sizeof why) == 0);
    /* A version 1 token names no key: one of the two signed it. */
    int same = 0;
    for (int i = 0; i < FUZZ_KEYS && !same; i++) {
        if (lic.version == 2 && i != key_of(&lic))
            continue;
        require(lml_token_issue(again, &lic, keys.sk[i], why, sizeof why) == LML_VALID);
        same = strlen(again) == size && memcmp(again, data, size) == 0;
    }
    require(same);
    /* In force from max(issued, not before) until it expires; at its expiry
     * the clock rule may speak first when it expires long before its issue. */
    const int64_t t = lic.issued > lic.not_before ? lic.issued : lic.not_before;
    require(lml_license_check_time(&lic, t, why, sizeof why) ==
            (!lic.expires || t < lic.expires ? LML_VALID : LML_ERR_EXPIRED));
    if (lic.expires)
        require(lml_license_check_time(&lic, lic.expires, why, sizeof why) ==
                (lic.expires < lic.issued - LML_CLOCK_SKEW ? LML_ERR_CLOCK : LML_ERR_EXPIRED));
}

static void as_payload(const uint8_t *data, size_t size)
{
    lml_license lic, back;
    char why[256], token[LML_TOKEN_MAX + 1];
    uint8_t enc[LML_PAYLOAD_MAX], enc_back[LML_PAYLOAD_MAX];
    if (lml_payload_decode(data, size, &lic, why, sizeof why) != LML_VALID)
        return;
    require(lml_text_check(lic.licensee, strlen(lic.licensee), why, sizeof why) == 0);
    size_t n = lml_payload_encode(enc, &lic);
    require(n == size && memcmp(enc, data, size) == 0);
    /* Signed by key 1, under its id when the version has one. */
    if (lic.version >= 2)
        lml_key_id(lic.key_id, keys.ring[1].pk);
    n = lml_payload_encode(enc, &lic);
    require(lml_token_issue(token, &lic, keys.sk[1], why, sizeof why) == LML_VALID);
    require(strlen(token) <= LML_TOKEN_MAX);
    require(lml_token_verify(token, strlen(token), keys.ring, FUZZ_KEYS, &back, why,
                             sizeof why) == LML_VALID);
    require(lml_payload_encode(enc_back, &back) == n && memcmp(enc_back, enc, n) == 0);
    /* Under key 0 alone: a version 2 token names an unknown key, a version 1
     * token's signature fails. */
    lml_result only0 = lml_token_verify(token, strlen(token), keys.ring, 1, &back, why,
                                        sizeof why);
    require(only0 == (lic.version >= 2 ? LML_ERR_UNKNOWN_KEY : LML_ERR_SIGNATURE));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    as_token(data, size);
    as_payload(data, size);
    return 0;
}
