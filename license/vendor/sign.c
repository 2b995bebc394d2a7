/*
 * sign.c - Ed25519 (RFC 8032) signing through libsodium: key pairs from a
 * seed and detached signatures. Vendor side only: linked into
 * lm-license-vendor, the fuzz targets and the tests, never into the library
 * (verification is license/verify.c).
 */
#include "vendor.h"

int lml_keypair_from_seed(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES],
                          const uint8_t seed[LML_SEED_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_ed25519_seed_keypair(pk, sk, seed);
}

int lml_sign(uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
             const uint8_t sk[LML_SECRET_KEY_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_ed25519_detached(sig, NULL, msg, len, sk);
}
