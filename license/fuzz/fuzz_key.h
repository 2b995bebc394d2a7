/*
 * fuzz_key.h - the key pair of the fuzz target and its corpus generator:
 * derived from a public phrase, so it signs test inputs only and is worth
 * nothing as a secret. The library never trusts it.
 */
#ifndef LM_FUZZ_KEY_H
#define LM_FUZZ_KEY_H

#include "license.h"

#include <string.h>

static int fuzz_key(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES])
{
    static const char phrase[] = "liquid-memory fuzzing key: public, signs test inputs only";
    uint8_t seed[LML_SEED_BYTES];
    if (lml_crypto_init())
        return -1;
    crypto_generichash(seed, sizeof seed, (const unsigned char *)phrase, strlen(phrase), NULL, 0);
    return lml_keypair_from_seed(pk, sk, seed);
}

#endif /* LM_FUZZ_KEY_H */
