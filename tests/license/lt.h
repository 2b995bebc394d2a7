/*
 * lt.h - what the license suites share: the key that signs for the library's
 * compiled-in public key (from LM_TEST_SIGNING_KEY), licenses and tokens made
 * from it, a clean environment per test (no license variables, HOME in an
 * empty temporary directory) and files in it.
 *
 * The runner uses Check's fork mode: every test runs in a fresh child, so the
 * library's process-wide license cache starts empty in each.
 */
#ifndef LM_TEST_LT_H
#define LM_TEST_LT_H

#include "liquid_memory.h"
#include "license.h"
#include "../ref.h" /* EXPECT_ERR */

#include <check.h>
#include <stdint.h>

/* 1 when LM_TEST_SIGNING_KEY names a key file (dev builds always do). */
int lt_have_signing_key(void);
/* The signing key; fails the test unless it signs for the compiled-in key. */
const uint8_t *lt_signing_key(void);

/* A license in force now: "Test Customer", random id, issued an hour ago,
 * no expiry, unlimited, no features, any host. */
lml_license lt_license(void);
/* Signs lic with sk (the build's key when sk is NULL); asserts success. */
void lt_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic, const uint8_t *sk);
/* Signs raw payload bytes (any content) with the build's key, as issuing
 * would, so that the checks behind the signature can be reached. */
void lt_sign_payload(char out[LML_TOKEN_MAX + 1], const uint8_t *payload, size_t n);
/* A fresh random key pair. */
void lt_random_key(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES]);
int64_t lt_now(void);

/* Checked fixture: clean environment and an empty temporary HOME, removed
 * afterwards with every file made by lt_write_file. */
void lt_setup(void);
void lt_teardown(void);
const char *lt_home(void);
/* Writes text to HOME-relative path rel (creating directories); returns the
 * absolute path (static storage, valid until the next call). */
const char *lt_write_file(const char *rel, const char *text);
/* Installs tok as ~/.config/liquid-memory/license. */
void lt_install_home_license(const char *tok);

#endif /* LM_TEST_LT_H */
