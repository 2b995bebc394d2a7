/*
 * lt.h - what the license suites share: the keys that sign for the library's
 * compiled-in keyring (the current key from LM_TEST_SIGNING_KEY, the next
 * one from LM_TEST_NEXT_SIGNING_KEY), licenses and tokens made from them, a
 * clean environment per test (no license variables, HOME in an empty
 * temporary directory) and files in it.
 *
 * The runner uses Check's fork mode: every test runs in a fresh child, so the
 * library's process-wide license cache starts empty in each.
 */
#ifndef LM_TEST_LT_H
#define LM_TEST_LT_H

#include "liquid_memory.h"
#include "license.h"
#include "vendor.h" /* signing: the tests issue tokens */
#include "../ref.h" /* EXPECT_ERR */

#include <check.h>
#include <stdint.h>
#include <stdio.h>

/* 1 when LM_TEST_SIGNING_KEY names a key file (dev builds always do). */
int lt_have_signing_key(void);
/* 1 when the build has a next key whose secret LM_TEST_NEXT_SIGNING_KEY
 * names and revokes at least one id: development builds always do; a
 * release build with VENDOR_NEXT_SECRET_KEY and a revocation list. */
int lt_have_keyring(void);
/* Adds test t to tc when lt_have_keyring(), else reports it NOT RUN. */
#define LT_ADD_KEYRING_TEST(tc, t)                                                             \
    do {                                                                                       \
        if (lt_have_keyring())                                                                 \
            tcase_add_test(tc, t);                                                             \
        else                                                                                   \
            printf("NOT RUN: %s needs a next key (VENDOR_NEXT_SECRET_KEY=...) and a revoked "  \
                   "id\n", #t);                                                                \
    } while (0)
/* The signing key of keyring entry 0 (current) or 1 (next); fails the test
 * unless it signs for that compiled-in key. */
const uint8_t *lt_key(int which);
/* lt_key(0). */
const uint8_t *lt_signing_key(void);

/* A license in force now: format 2, "Test Customer", random id, issued an
 * hour ago, no expiry, unlimited, no features, any host. */
lml_license lt_license(void);
/* Signs lic with sk (the build's current key when sk is NULL), naming sk's
 * key id when lic is of format 2; asserts success. */
void lt_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic, const uint8_t *sk);
/* Signs raw payload bytes (any content) with the build's current key, as
 * issuing a token of format `version` would, so that the checks behind the
 * signature can be reached. */
void lt_sign_payload(char out[LML_TOKEN_MAX + 1], int version, const uint8_t *payload,
                     size_t n);
/* "LM<version>." base64url(payload) "." base64url(sig) into out (cap bytes),
 * whatever the bytes: tokens no issuer would make. */
void lt_token_text(char *out, size_t cap, int version, const uint8_t *payload, size_t n,
                   const uint8_t sig[LML_SIGNATURE_BYTES]);
/* A fresh random key pair. */
void lt_random_key(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES]);
int64_t lt_now(void);

/* Checked fixture: clean environment and an empty temporary HOME, removed
 * afterwards with everything in it. */
void lt_setup(void);
void lt_teardown(void);
const char *lt_home(void);
/* Writes text to HOME-relative path rel (creating directories); returns the
 * absolute path (static storage, valid until the next call). */
const char *lt_write_file(const char *rel, const char *text);
/* Installs tok as ~/.config/liquid-memory/license. */
void lt_install_home_license(const char *tok);

#endif /* LM_TEST_LT_H */
