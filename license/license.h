/*
 * license.h - internal declarations of the license module (prefix lml_):
 * Ed25519 verification, the binary payload (versions 1 and 2), the token
 * text, the compiled-in keyring and revocation list, the clock checks, the
 * host id and the token lookup. Everything here is verification only and is
 * what libliquidmemory contains; signing lives in license/vendor/ (vendor.h)
 * and is linked only into the vendor's tool. Shared by the library
 * (policy.c), the two lm-license tools, the fuzz targets and the license
 * tests. Not installed. README_INTEGRATION.md ("Licensing and
 * provisioning") documents the formats these functions implement.
 */
#ifndef LM_LICENSE_H
#define LM_LICENSE_H

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>

/* ---- sizes ---- */

/* Ed25519 sizes (verify.c checks them against libsodium's). */
#define LML_PUBLIC_KEY_BYTES 32
#define LML_SECRET_KEY_BYTES 64 /* libsodium's form: seed, then public key */
#define LML_SEED_BYTES 32
#define LML_SIGNATURE_BYTES 64
#define LML_KEY_ID_BYTES 8
#define LML_ID_BYTES 16
#define LML_HOST_BYTES 32
#define LML_LICENSEE_MAX 128

/* Payload layout, offsets in bytes, integers little-endian.
 *   version 1: version, flags, id, issued ... (no key id)
 *   version 2: version, flags, key id (8 bytes), then the version 1 fields
 *              from id on, each LML_KEY_ID_BYTES further. */
#define LML_OFF_VERSION 0
#define LML_OFF_FLAGS 1
#define LML_OFF_KEY_ID 2 /* version 2 only */
/* Offsets of the fields from the id on, relative to where the id starts. */
#define LML_REL_ID 0
#define LML_REL_ISSUED 16
#define LML_REL_NOT_BEFORE 24
#define LML_REL_EXPIRES 32
#define LML_REL_MAX_SEQ 40
#define LML_REL_FEATURES 48
#define LML_REL_HOST 56
#define LML_REL_NAME_LEN 88
#define LML_REL_NAME 89
/* Where the id starts in each version. */
#define LML_ID_AT(version) ((version) == 1 ? 2 : 2 + LML_KEY_ID_BYTES)
#define LML_FLAG_HOST_BOUND 0x01
#define LML_PAYLOAD_MIN(version) (LML_ID_AT(version) + LML_REL_NAME + 1)
#define LML_PAYLOAD_MAX (LML_ID_AT(2) + LML_REL_NAME + LML_LICENSEE_MAX) /* 227 */
/* Compatibility names of the version 1 offsets (tests, corpus). */
#define LML_OFF_ID (LML_ID_AT(1) + LML_REL_ID)
#define LML_OFF_ISSUED (LML_ID_AT(1) + LML_REL_ISSUED)
#define LML_OFF_NOT_BEFORE (LML_ID_AT(1) + LML_REL_NOT_BEFORE)
#define LML_OFF_EXPIRES (LML_ID_AT(1) + LML_REL_EXPIRES)
#define LML_OFF_MAX_SEQ (LML_ID_AT(1) + LML_REL_MAX_SEQ)
#define LML_OFF_FEATURES (LML_ID_AT(1) + LML_REL_FEATURES)
#define LML_OFF_HOST (LML_ID_AT(1) + LML_REL_HOST)
#define LML_OFF_NAME_LEN (LML_ID_AT(1) + LML_REL_NAME_LEN)
#define LML_OFF_NAME (LML_ID_AT(1) + LML_REL_NAME)

/* The versions this library reads; the tool issues LML_VERSION_CURRENT. */
#define LML_VERSION_MIN 1
#define LML_VERSION_CURRENT 2

/* Token text: "LM<v>." base64url(payload) "." base64url(signature), no
 * padding, where <v> is the payload version (1 or 2). */
#define LML_B64_LEN(n) (((n) * 4 + 2) / 3) /* unpadded base64 length of n bytes */
#define LML_SIG_B64_LEN LML_B64_LEN(LML_SIGNATURE_BYTES) /* 86 */
#define LML_TOKEN_MAX (4 + LML_B64_LEN(LML_PAYLOAD_MAX) + 1 + LML_SIG_B64_LEN) /* 394 */
/* The signed message is the domain of the payload's version followed by the
 * payload, so a signature made by a vendor key for anything else (another
 * version, a release manifest) never verifies as a license. */
#define LML_SIGN_DOMAIN_V1 "liquid-memory-license-v1"
#define LML_SIGN_DOMAIN_V2 "liquid-memory-license-v2"
#define LML_SIGN_DOMAIN_MAX 32
/* Domain of a key id: BLAKE2b-256 keyed with it, over the public key, cut
 * to LML_KEY_ID_BYTES. */
#define LML_KEY_ID_DOMAIN "liquid-memory-key-id-v1"

/* Text read from a file or the environment before trimming: anything longer
 * is refused without looking further. */
#define LML_INPUT_MAX 4096

/* How far the clock may run behind a license's issue time, or behind the
 * latest time seen, before it counts as rolled back (one day: time zones
 * and unsynchronised clocks stay well inside it). */
#define LML_CLOCK_SKEW 86400

/* ---- results ---- */

typedef enum lml_result {
    LML_VALID = 0,
    LML_ERR_EMPTY,         /* no characters */
    LML_ERR_TOO_LONG,      /* longer than any token can be */
    LML_ERR_FORMAT,        /* not of the shape LM<v>.<payload>.<signature> */
    LML_ERR_VERSION,       /* token or payload format of another version */
    LML_ERR_BASE64,        /* a part is not canonical unpadded base64url */
    LML_ERR_SIGNATURE,     /* the signature does not verify with the key */
    LML_ERR_PAYLOAD,       /* signed, but a field is out of bounds */
    LML_ERR_EXPIRED,       /* past its expiry */
    LML_ERR_NOT_YET_VALID, /* before its not-before time */
    LML_ERR_HOST,          /* bound to another machine (or this one has no host id) */
    LML_ERR_IO,            /* the token could not be read */
    LML_ERR_UNKNOWN_KEY,   /* signed by a key id that is not in the keyring */
    LML_ERR_REVOKED,       /* its license id is on the revocation list */
    LML_ERR_CLOCK          /* the clock is behind the issue time or a time already seen */
} lml_result;
#define LML_RESULT_LAST LML_ERR_CLOCK

/* Short static name of a result ("bad signature", "expired", ...). */
const char *lml_result_string(lml_result r);

/* ---- Ed25519 verification through libsodium (verify.c) ---- */

/* sodium_init, once; 0 on success, -1 when libsodium cannot start. */
int lml_crypto_init(void);
/* Plain Ed25519 (RFC 8032) over msg; 0 when valid, -1 otherwise. */
int lml_verify(const uint8_t sig[LML_SIGNATURE_BYTES], const uint8_t *msg, size_t len,
               const uint8_t pk[LML_PUBLIC_KEY_BYTES]) __attribute__((warn_unused_result));
/* The key id of a public key (LML_KEY_ID_DOMAIN). */
void lml_key_id(uint8_t id[LML_KEY_ID_BYTES], const uint8_t pk[LML_PUBLIC_KEY_BYTES]);

/* ---- the license fields and their binary payload (payload.c) ---- */

typedef struct lml_license {
    int version;                  /* payload version: 1 or 2 */
    uint8_t key_id[LML_KEY_ID_BYTES]; /* version 2: the signing key's id; 1: zero */
    uint8_t id[LML_ID_BYTES];
    char licensee[LML_LICENSEE_MAX + 1]; /* NUL-terminated, checked by lml_text_check */
    int64_t issued, not_before, expires; /* unix seconds; expires 0 = never */
    int64_t max_seq_len;                 /* tokens of context; 0 = unlimited */
    uint64_t features;
    int host_bound;
    uint8_t host[LML_HOST_BYTES]; /* all zero unless host_bound */
} lml_license;

/* Checks every field of lic (the rules of lml_payload_decode); LML_VALID or
 * LML_ERR_PAYLOAD with the reason in why. */
lml_result lml_license_check_fields(const lml_license *lic, char *why, size_t why_len);
/* Parses and bounds-checks a payload of exactly n bytes, of any version
 * this library reads. */
lml_result lml_payload_decode(const uint8_t *p, size_t n, lml_license *lic, char *why,
                              size_t why_len);

/* ---- text shown to people (text.c) ---- */

/* 0 when s[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF) holding no control character (C0,
 * DEL, C1), no bidirectional formatting character (U+061C, U+200E, U+200F,
 * U+202A..U+202E, U+2066..U+2069) and no line or paragraph separator
 * (U+2028, U+2029); else -1 with the offending byte offset in why. */
int lml_text_check(const char *s, size_t n, char *why, size_t why_len);

/* ---- token text (token.c) ---- */

/* The signing domain of payload version v (1 or 2), or NULL. */
const char *lml_sign_domain(int version);
/* Writes the signed message (domain of `version`, then the payload) into
 * msg (at least LML_SIGN_DOMAIN_MAX + n bytes); returns its length. */
size_t lml_signed_message(uint8_t *msg, int version, const uint8_t *payload, size_t n);

/* A key the verifier accepts. */
typedef struct lml_key {
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
} lml_key;

/* Checks the shape of the len bytes at tok, picks the key (version 2: the
 * key whose id the payload names, LML_ERR_UNKNOWN_KEY when none of the n
 * keys has it; version 1: each key in turn), verifies the signature, and
 * only then parses the payload into lic. Time, host and revocation are not
 * looked at (validity.c and keyring.c do that). NUL bytes are refused. */
lml_result lml_token_verify(const char *tok, size_t len, const lml_key *keys, size_t n,
                            lml_license *lic, char *why, size_t why_len);
/* Parses the payload without checking the signature, for `lm-license show`:
 * never use the result to grant anything. */
lml_result lml_token_decode_unverified(const char *tok, size_t len, lml_license *lic, char *why,
                                       size_t why_len);

/* ---- validity in time and place (validity.c) ---- */

/* LML_VALID when lic is in force at unix time now, else EXPIRED,
 * NOT_YET_VALID or CLOCK (a license that expires, and a clock more than
 * LML_CLOCK_SKEW behind its issue time) with the times in why. */
lml_result lml_license_check_time(const lml_license *lic, int64_t now, char *why,
                                  size_t why_len);
/* LML_VALID when lic is not host-bound or bound to this machine (reads the
 * machine id: I/O), else LML_ERR_HOST. */
lml_result lml_license_check_host(const lml_license *lic, char *why, size_t why_len);
/* "YYYY-MM-DD HH:MM:SS UTC" for messages. */
void lml_format_time(char *out, size_t len, int64_t t);

/* ---- clock high-water mark (clock.c) ---- */

/* The latest unix time the library has recorded on this machine for this
 * user: $HOME/.config/liquid-memory/clock. Best effort: 0 when there is no
 * such file or it does not parse. */
int64_t lml_clock_mark_read(void);
/* Records t when it is later than the recorded mark; creates the directory
 * $HOME/.config/liquid-memory (mode 0700) when $HOME/.config exists.
 * Failures are ignored (read-only homes, no HOME). */
void lml_clock_mark_write(int64_t t);
/* Parses the mark file's text (one decimal number of unix seconds, optional
 * whitespace around it); 0 and *t on success, -1 otherwise. */
int lml_clock_mark_parse(const char *text, size_t n, int64_t *t);

/* ---- host id (hostid.c) ---- */

/* This machine's host id: a keyed BLAKE2b-256 of /etc/machine-id (or
 * /var/lib/dbus/machine-id). 0 on success, -1 (reason in why) when neither
 * can be read. */
int lml_host_id(uint8_t out[LML_HOST_BYTES], char *why, size_t why_len);

/* ---- the keys the library trusts and the licenses it refuses
 *      (keyring.c, from a header the build generates) ---- */

/* The keyring: the current vendor key first, then the next one when the
 * build was given one. */
extern const lml_key lml_keyring[];
extern const size_t lml_keyring_size;
/* 1 when the keys are development keys generated by the build. */
extern const int lml_development_build;
/* LML_VALID, or LML_ERR_REVOKED (with the id in why) when lic's license id
 * is on the compiled-in revocation list. */
lml_result lml_license_check_revoked(const lml_license *lic, char *why, size_t why_len);
/* The compiled-in revocation list. */
extern const uint8_t lml_revoked_ids[][LML_ID_BYTES];
extern const size_t lml_revoked_count;

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
/* "$HOME/.config/liquid-memory/<name>" into out; -1 when HOME is unset or
 * empty or the path does not fit. */
int lml_config_path(char *out, size_t cap, const char *name);

#endif /* LM_LICENSE_H */
