/*
 * fuzz_token.c - libFuzzer target over the license token code (make fuzz).
 * Each input is tried two ways:
 *   - as token text, verified with the fuzz key: it must never crash, and a
 *     token that verifies must be exactly what issuing its fields gives
 *     (one canonical encoding; Ed25519 signatures are deterministic);
 *   - as a raw payload, since random text never gets past the signature:
 *     whatever decodes must re-encode to the same bytes, and sign, verify
 *     and decode back to the same fields.
 * A broken property aborts, which libFuzzer reports as a crash.
 */
#include "fuzz_key.h"

#include <stdlib.h>

static uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (fuzz_key(pk, sk))
        abort();
    return 0;
}

static void require(int ok)
{
    if (!ok)
        abort();
}

static void as_token(const uint8_t *data, size_t size)
{
    lml_license lic, raw;
    char why[256], again[LML_TOKEN_MAX + 1];
    lml_result r = lml_token_verify((const char *)data, size, pk, &lic, why, sizeof why);
    lml_result u = lml_token_decode_unverified((const char *)data, size, &raw, why, sizeof why);
    if (r != LML_VALID)
        return;
    require(u == LML_VALID);
    require(lml_token_issue(again, &lic, sk, why, sizeof why) == LML_VALID);
    require(strlen(again) == size && memcmp(again, data, size) == 0);
    require(lml_license_check_time(&lic, lic.not_before, why, sizeof why) == LML_VALID);
    require(!lic.expires ||
            lml_license_check_time(&lic, lic.expires, why, sizeof why) == LML_ERR_EXPIRED);
}

static void as_payload(const uint8_t *data, size_t size)
{
    lml_license lic, back;
    char why[256], token[LML_TOKEN_MAX + 1];
    uint8_t enc[LML_PAYLOAD_MAX], enc_back[LML_PAYLOAD_MAX];
    if (lml_payload_decode(data, size, &lic, why, sizeof why) != LML_VALID)
        return;
    size_t n = lml_payload_encode(enc, &lic);
    require(n == size && memcmp(enc, data, size) == 0);
    require(lml_token_issue(token, &lic, sk, why, sizeof why) == LML_VALID);
    require(strlen(token) <= LML_TOKEN_MAX);
    require(lml_token_verify(token, strlen(token), pk, &back, why, sizeof why) == LML_VALID);
    require(lml_payload_encode(enc_back, &back) == n && memcmp(enc_back, enc, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    as_token(data, size);
    as_payload(data, size);
    return 0;
}
