/*
 * verify.c - the library's only calls into libsodium's signature API:
 * Ed25519 (RFC 8032) verification, and the key id of a public key. The
 * ed25519-specific call is used rather than the crypto_sign_ wrapper, whose
 * object file also holds signing: the library carries no signing code.
 * Signing is in license/vendor/sign.c, linked only into the vendor's tool.
 */
#include "license.h"

#include <string.h>

_Static_assert(LML_PUBLIC_KEY_BYTES == crypto_sign_ed25519_PUBLICKEYBYTES, "public key size");
_Static_assert(LML_SECRET_KEY_BYTES == crypto_sign_ed25519_SECRETKEYBYTES, "secret key size");
_Static_assert(LML_SEED_BYTES == crypto_sign_ed25519_SEEDBYTES, "seed size");
_Static_assert(LML_SIGNATURE_BYTES == crypto_sign_ed25519_BYTES, "signature size");
_Static_assert(sizeof LML_KEY_ID_DOMAIN - 1 >= crypto_generichash_KEYBYTES_MIN, "key id domain");

int lml_crypto_init(void)
{
    /* sodium_init is idempotent and thread-safe; 1 means "already done". */
    return sodium_init() < 0 ? -1 : 0;
}

int lml_verify(const uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
               const uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    if (lml_crypto_init())
        return -1;
    return crypto_sign_ed25519_verify_detached(sig, msg, len, pk) == 0 ? 0 : -1;
}

void lml_key_id(uint8_t id[LML_KEY_ID_BYTES], const uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    uint8_t h[32];
    crypto_generichash(h, sizeof h, pk, LML_PUBLIC_KEY_BYTES,
                       (const unsigned char *)LML_KEY_ID_DOMAIN, sizeof LML_KEY_ID_DOMAIN - 1);
    memcpy(id, h, LML_KEY_ID_BYTES);
}
