/*
 * license.h - internal declarations of the license module (prefix lml_):
 * the Ed25519 wrappers, the binary payload, the LM1 token text, the host id,
 * the compiled-in vendor key and the token lookup. Shared by the library
 * (policy.c), the lm-license tool, the fuzz target and the license tests.
 * Not installed. README_INTEGRATION.md ("Licensing and provisioning")
 * documents the format these functions implement.
 */
#ifndef LM_LICENSE_H
#define LM_LICENSE_H

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>

/* ---- sizes ---- */

/* Ed25519 sizes (sign.c checks them against libsodium's). */
#define LML_PUBLIC_KEY_BYTES 32
#define LML_SECRET_KEY_BYTES 64 /* libsodium's form: seed, then public key */
#define LML_SEED_BYTES 32
#define LML_SIGNATURE_BYTES 64
#define LML_ID_BYTES 16
#define LML_HOST_BYTES 32
#define LML_LICENSEE_MAX 128

/* Payload layout, version 1 (offsets in bytes, integers little-endian). */
#define LML_PAYLOAD_VERSION 1
#define LML_OFF_VERSION 0
#define LML_OFF_FLAGS 1
#define LML_OFF_ID 2
#define LML_OFF_ISSUED 18
#define LML_OFF_NOT_BEFORE 26
#define LML_OFF_EXPIRES 34
#define LML_OFF_MAX_SEQ 42
#define LML_OFF_FEATURES 50
#define LML_OFF_HOST 58
#define LML_OFF_NAME_LEN 90
#define LML_OFF_NAME 91
#define LML_FLAG_HOST_BOUND 0x01
#define LML_PAYLOAD_MIN (LML_OFF_NAME + 1)
#define LML_PAYLOAD_MAX (LML_OFF_NAME + LML_LICENSEE_MAX)

/* Token text: "LM1." base64url(payload) "." base64url(signature), no padding. */
#define LML_TOKEN_PREFIX "LM1."
#define LML_B64_LEN(n) (((n) * 4 + 2) / 3) /* unpadded base64 length of n bytes */
#define LML_SIG_B64_LEN LML_B64_LEN(LML_SIGNATURE_BYTES) /* 86 */
#define LML_TOKEN_MAX (4 + LML_B64_LEN(LML_PAYLOAD_MAX) + 1 + LML_SIG_B64_LEN) /* 383 */
/* The signed message is this prefix followed by the payload, so a signature
 * made by the vendor key for anything else never verifies as a license. */
#define LML_SIGN_DOMAIN "liquid-memory-license-v1"

/* Text read from a file or the environment before trimming: anything longer
 * is refused without looking further. */
#define LML_INPUT_MAX 4096

/* ---- results ---- */

typedef enum lml_result {
    LML_VALID = 0,
    LML_ERR_EMPTY,         /* no characters */
    LML_ERR_TOO_LONG,      /* longer than any token can be */
    LML_ERR_FORMAT,        /* not of the shape LM1.<payload>.<signature> */
    LML_ERR_VERSION,       /* token or payload format of another version */
    LML_ERR_BASE64,        /* a part is not canonical unpadded base64url */
    LML_ERR_SIGNATURE,     /* the signature does not verify with the key */
    LML_ERR_PAYLOAD,       /* signed, but a field is out of bounds */
    LML_ERR_EXPIRED,       /* past its expiry */
    LML_ERR_NOT_YET_VALID, /* before its not-before time */
    LML_ERR_HOST,          /* bound to another machine (or this one has no host id) */
    LML_ERR_IO             /* the token could not be read */
} lml_result;

/* Short static name of a result ("bad signature", "expired", ...). */
const char *lml_result_string(lml_result r);

/* ---- Ed25519 through libsodium (sign.c) ---- */

/* sodium_init, once; 0 on success, -1 when libsodium cannot start. */
int lml_crypto_init(void);
/* Key pair from a 32-byte seed (the form secret keys are stored in). */
int lml_keypair_from_seed(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES],
                          const uint8_t seed[LML_SEED_BYTES]);
/* Plain Ed25519 (RFC 8032) over msg; 0 on success / valid, -1 otherwise. */
int lml_sign(uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
             const uint8_t sk[LML_SECRET_KEY_BYTES]);
int lml_verify(const uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
               const uint8_t pk[LML_PUBLIC_KEY_BYTES]) __attribute__((warn_unused_result));

/* ---- the license fields and their binary payload (payload.c) ---- */

typedef struct lml_license {
    uint8_t id[LML_ID_BYTES];
    char licensee[LML_LICENSEE_MAX + 1]; /* NUL-terminated */
    int64_t issued, not_before, expires; /* unix seconds; expires 0 = never */
    int64_t max_seq_len;                 /* tokens of context; 0 = unlimited */
    uint64_t features;
    int host_bound;
    uint8_t host[LML_HOST_BYTES]; /* all zero unless host_bound */
} lml_license;

/* Checks every field of lic (the rules of lml_payload_decode); LML_VALID or
 * LML_ERR_PAYLOAD with the reason in why. */
lml_result lml_license_check_fields(const lml_license *lic, char *why, size_t why_len);
/* Writes the payload of lic into out (at least LML_PAYLOAD_MAX bytes);
 * returns its length, 0 when a field is out of bounds. */
size_t lml_payload_encode(uint8_t out[LML_PAYLOAD_MAX], const lml_license *lic);
/* Parses and bounds-checks a payload of exactly n bytes. */
lml_result lml_payload_decode(const uint8_t *p, size_t n, lml_license *lic, char *why,
                              size_t why_len);

/* ---- token text (token.c) ---- */

/* Signs lic with sk and writes the NUL-terminated token into out (at least
 * LML_TOKEN_MAX + 1 bytes). LML_VALID, or LML_ERR_PAYLOAD for a bad field. */
lml_result lml_token_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic,
                           const uint8_t sk[LML_SECRET_KEY_BYTES], char *why, size_t why_len);
/* Checks the shape of the len bytes at tok, verifies the signature with pk,
 * and only then parses the payload into lic. Time and host are not looked
 * at (lml_license_applies does that). NUL bytes in tok are refused. */
lml_result lml_token_verify(const char *tok, size_t len, const uint8_t pk[LML_PUBLIC_KEY_BYTES],
                            lml_license *lic, char *why, size_t why_len);
/* Parses the payload without checking the signature, for `lm-license show`:
 * never use the result to grant anything. */
lml_result lml_token_decode_unverified(const char *tok, size_t len, lml_license *lic, char *why,
                                       size_t why_len);

/* ---- validity in time and place (validity.c) ---- */

/* LML_VALID when lic is in force at unix time now, else EXPIRED or
 * NOT_YET_VALID with the times in why. */
lml_result lml_license_check_time(const lml_license *lic, int64_t now, char *why,
                                  size_t why_len);
/* LML_VALID when lic is not host-bound or bound to this machine (reads the
 * machine id: I/O), else LML_ERR_HOST. */
lml_result lml_license_check_host(const lml_license *lic, char *why, size_t why_len);
/* "YYYY-MM-DD HH:MM:SS UTC" for messages. */
void lml_format_time(char *out, size_t len, int64_t t);

/* ---- host id (hostid.c) ---- */

/* This machine's host id: a keyed BLAKE2b-256 of /etc/machine-id (or
 * /var/lib/dbus/machine-id). 0 on success, -1 (reason in why) when neither
 * can be read. */
int lml_host_id(uint8_t out[LML_HOST_BYTES], char *why, size_t why_len);

/* ---- the key the library trusts (vendor_key.c, generated header) ---- */

extern const uint8_t lml_vendor_public_key[LML_PUBLIC_KEY_BYTES];
/* 1 when the key is a development key generated by the build. */
extern const int lml_development_build;

/* ---- where a token comes from (lookup.c) ---- */

typedef struct lml_found {
    int present;      /* 1: a token (or an unreadable configured source) was found */
    lml_result error; /* LML_VALID, or why the source could not be read */
    char token[LML_INPUT_MAX + 1];
    size_t len;       /* trimmed length */
    char source[256]; /* "LM_LICENSE", "LM_LICENSE_FILE=/path", "/home/u/.config/..." */
    char why[256];
} lml_found;

/* Looks for a token in LM_LICENSE, then LM_LICENSE_FILE, then
 * $HOME/.config/liquid-memory/license (I/O). A missing default file is
 * "not present"; a configured source that cannot be read is present with
 * error LML_ERR_IO. */
void lml_lookup(lml_found *f);
/* Reads a regular file of at most LML_INPUT_MAX bytes into out (that size
 * + 1, NUL-terminated) and trims it; LML_ERR_IO or LML_ERR_TOO_LONG. */
lml_result lml_read_small_file(const char *path, char *out, size_t *len, char *why,
                               size_t why_len);
/* Trims ASCII whitespace around s[0..*len) in place (moves the text to s). */
void lml_trim(char *s, size_t *len);

#endif /* LM_LICENSE_H */
