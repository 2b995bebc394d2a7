/*
 * vendor.h - the vendor's side of the license module: signing, issuing
 * tokens, secret key files and the commands of lm-license-vendor. None of it
 * is linked into libliquidmemory, which only verifies (license.h); the build
 * links it into lm-license-vendor, the fuzz targets and the tests.
 */
#ifndef LM_LICENSE_VENDOR_H
#define LM_LICENSE_VENDOR_H

#include "../cli/cli.h"
#include "../license.h"

#include <sys/types.h>

/* ---- Ed25519 signing (sign.c) ---- */

/* Key pair from a 32-byte seed (the form secret keys are stored in). */
int lml_keypair_from_seed(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES],
                          const uint8_t seed[LML_SEED_BYTES]);
/* Plain Ed25519 (RFC 8032) over msg; 0 on success. */
int lml_sign(uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
             const uint8_t sk[LML_SECRET_KEY_BYTES]);

/* ---- tokens (issue.c) ---- */

/* Writes the payload of lic (of lic->version) into out; returns its length,
 * 0 when a field is out of bounds. */
size_t lml_payload_encode(uint8_t out[LML_PAYLOAD_MAX], const lml_license *lic);
/* Signs lic with sk and writes the NUL-terminated token into out (at least
 * LML_TOKEN_MAX + 1 bytes). LML_VALID, or LML_ERR_PAYLOAD for a bad field
 * (a version 2 license must carry the key id of sk). */
lml_result lml_token_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic,
                           const uint8_t sk[LML_SECRET_KEY_BYTES], char *why, size_t why_len);
/* Makes lic a current-version license naming the key pk. */
void lml_license_for_key(lml_license *lic, const uint8_t pk[LML_PUBLIC_KEY_BYTES]);

/* ---- secret key files (keys.c) ---- */

/* A signing key held in guarded, locked memory (sodium_malloc). */
typedef struct cli_key {
    uint8_t *sk; /* LML_SECRET_KEY_BYTES */
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
} cli_key;

/* Loads a secret key file written by keygen; refuses files that others can
 * read. CLI_OK or CLI_FAIL (message printed). */
int cli_key_load(const char *path, cli_key *key);
/* Wipes and frees the secret. */
void cli_key_free(cli_key *key);
/* Finds the key line in the text of a key file (NUL-terminated) and
 * decodes its seed; 0 on success. */
int cli_key_parse_text(const char *text, uint8_t seed[LML_SEED_BYTES]);

/* Creates path, which must not exist (nor be a symbolic link), with mode,
 * and writes text to it; 0, or -1 with a message naming the command `who`. */
int cli_create_file(const char *path, mode_t mode, const char *text, size_t n, const char *who);

/* ---- commands ---- */

int cli_keygen(int argc, char **argv);
int cli_pubkey(int argc, char **argv);
int cli_issue(int argc, char **argv);
int cli_sign_release(int argc, char **argv);

#endif /* LM_LICENSE_VENDOR_H */
