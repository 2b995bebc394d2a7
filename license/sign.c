/*
 * sign.c - the only calls into libsodium's signature API: Ed25519 (RFC 8032)
 * key pairs from a seed, detached signing and verification. Keeping them here
 * gives the RFC test vectors one place to check.
 */
#include "license.h"

_Static_assert(LML_PUBLIC_KEY_BYTES == crypto_sign_PUBLICKEYBYTES, "public key size");
_Static_assert(LML_SECRET_KEY_BYTES == crypto_sign_SECRETKEYBYTES, "secret key size");
_Static_assert(LML_SEED_BYTES == crypto_sign_SEEDBYTES, "seed size");
_Static_assert(LML_SIGNATURE_BYTES == crypto_sign_BYTES, "signature size");

int lml_crypto_init(void)
{
    /* sodium_init is idempotent and thread-safe; 1 means "already done". */
    return sodium_init() < 0 ? -1 : 0;
}

int lml_keypair_from_seed(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES],
                          const uint8_t seed[LML_SEED_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_seed_keypair(pk, sk, seed);
}

int lml_sign(uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
             const uint8_t sk[LML_SECRET_KEY_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_detached(sig, NULL, msg, len, sk);
}

int lml_verify(const uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
               const uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_verify_detached(sig, msg, len, pk);
}
