/*
 * issue.c - making a token: the payload's canonical encoding (the inverse of
 * license/payload.c's decoder, under the same field checks) and its
 * signature, as "LM<v>.<payload>.<signature>". Vendor side only.
 */
#include "vendor.h"

#include <stdio.h>
#include <string.h>

#define B64_VARIANT sodium_base64_VARIANT_URLSAFE_NO_PADDING

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

size_t lml_payload_encode(uint8_t out[LML_PAYLOAD_MAX], const lml_license *lic)
{
    char why[192];
    if (lml_license_check_fields(lic, why, sizeof why) != LML_VALID)
        return 0;
    const size_t n = strlen(lic->licensee), at = LML_ID_AT(lic->version);
    memset(out, 0, at + LML_REL_NAME);
    out[LML_OFF_VERSION] = (uint8_t)lic->version;
    out[LML_OFF_FLAGS] = lic->host_bound ? LML_FLAG_HOST_BOUND : 0;
    if (lic->version >= 2)
        memcpy(out + LML_OFF_KEY_ID, lic->key_id, LML_KEY_ID_BYTES);
    memcpy(out + at + LML_REL_ID, lic->id, LML_ID_BYTES);
    put64(out + at + LML_REL_ISSUED, (uint64_t)lic->issued);
    put64(out + at + LML_REL_NOT_BEFORE, (uint64_t)lic->not_before);
    put64(out + at + LML_REL_EXPIRES, (uint64_t)lic->expires);
    put64(out + at + LML_REL_MAX_SEQ, (uint64_t)lic->max_seq_len);
    put64(out + at + LML_REL_FEATURES, lic->features);
    memcpy(out + at + LML_REL_HOST, lic->host, LML_HOST_BYTES);
    out[at + LML_REL_NAME_LEN] = (uint8_t)n;
    memcpy(out + at + LML_REL_NAME, lic->licensee, n);
    return at + LML_REL_NAME + n;
}

lml_result lml_token_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic,
                           const uint8_t sk[LML_SECRET_KEY_BYTES], char *why, size_t why_len)
{
    lml_result r = lml_license_check_fields(lic, why, why_len);
    if (r != LML_VALID)
        return r;
    if (lic->version >= 2) {
        /* The key id must name the key that signs, or no verifier finds it. */
        uint8_t id[LML_KEY_ID_BYTES];
        lml_key_id(id, sk + LML_SEED_BYTES); /* libsodium's sk ends with the public key */
        if (memcmp(id, lic->key_id, LML_KEY_ID_BYTES) != 0) {
            snprintf(why, why_len, "the payload's key id is not the id of the signing key");
            return LML_ERR_PAYLOAD;
        }
    }
    uint8_t payload[LML_PAYLOAD_MAX], sig[LML_SIGNATURE_BYTES];
    uint8_t msg[LML_SIGN_DOMAIN_MAX + LML_PAYLOAD_MAX];
    const size_t n = lml_payload_encode(payload, lic);
    if (lml_sign(sig, msg, lml_signed_message(msg, lic->version, payload, n), sk) != 0) {
        snprintf(why, why_len, "libsodium could not sign");
        return LML_ERR_SIGNATURE;
    }
    size_t at = (size_t)snprintf(out, LML_TOKEN_MAX + 1, "LM%d.", lic->version);
    sodium_bin2base64(out + at, LML_TOKEN_MAX + 1 - at, payload, n, B64_VARIANT);
    at += strlen(out + at);
    out[at++] = '.';
    sodium_bin2base64(out + at, LML_TOKEN_MAX + 1 - at, sig, sizeof sig, B64_VARIANT);
    return LML_VALID;
}

void lml_license_for_key(lml_license *lic, const uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    lic->version = LML_VERSION_CURRENT;
    lml_key_id(lic->key_id, pk);
}
