/*
 * fuzz_key.h - the keys of the fuzz targets and their corpus generator:
 * derived from public phrases, so they sign test inputs only and are worth
 * nothing as secrets. The library never trusts them. Key 0 stands for the
 * current vendor key, key 1 for the next one.
 */
#ifndef LM_FUZZ_KEY_H
#define LM_FUZZ_KEY_H

#include "vendor.h"

#include <stdlib.h>
#include <string.h>

#define FUZZ_KEYS 2

typedef struct fuzz_keys {
    lml_key ring[FUZZ_KEYS];
    uint8_t seed[FUZZ_KEYS][LML_SEED_BYTES];
    uint8_t sk[FUZZ_KEYS][LML_SECRET_KEY_BYTES];
} fuzz_keys;

static inline int fuzz_keys_make(fuzz_keys *k)
{
    static const char *const phrases[FUZZ_KEYS] = {
        "liquid-memory fuzzing key: public, signs test inputs only",
        "liquid-memory fuzzing key 2: public, signs test inputs only",
    };
    if (lml_crypto_init())
        return -1;
    for (int i = 0; i < FUZZ_KEYS; i++) {
        crypto_generichash(k->seed[i], LML_SEED_BYTES, (const unsigned char *)phrases[i],
                           strlen(phrases[i]), NULL, 0);
        if (lml_keypair_from_seed(k->ring[i].pk, k->sk[i], k->seed[i]))
            return -1;
    }
    return 0;
}

/* A broken property: abort, which libFuzzer reports as a crash. */
static inline void require(int ok)
{
    if (!ok)
        abort();
}

#endif /* LM_FUZZ_KEY_H */
