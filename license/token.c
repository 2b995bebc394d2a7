/*
 * token.c - the token text "LM<v>.<base64url payload>.<base64url signature>"
 * (v = the payload version, 1 or 2) and its verification against the keys
 * the caller trusts. Verification checks only the shape of the text before
 * the signature and parses nothing until the signature over the version's
 * domain + payload has verified; the one field read before that is a
 * version 2 payload's key id, which only picks the key to verify with (a
 * changed id picks a key whose signature then fails).
 */
#include "license.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define B64_VARIANT sodium_base64_VARIANT_URLSAFE_NO_PADDING

static int b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static int digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Decoded parts of a token whose shape and base64 are right. */
typedef struct parts {
    int version; /* of the prefix; the payload's first byte must agree */
    uint8_t payload[LML_TOKEN_MAX]; /* larger than any payload the text can hold */
    size_t payload_len;
    uint8_t sig[LML_SIGNATURE_BYTES];
} parts;

__attribute__((format(printf, 4, 5))) static lml_result fail(lml_result r, char *why,
                                                              size_t why_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return r;
}

/* Strict canonical unpadded base64url of the whole text into out (cap bytes). */
static int b64_decode(uint8_t *out, size_t cap, const char *text, size_t n, size_t *len)
{
    const char *end;
    if (sodium_base642bin(out, cap, text, n, NULL, len, &end, B64_VARIANT) != 0)
        return -1;
    return end == text + n ? 0 : -1;
}

/* The version of a "LM<digit>." prefix this library reads, else 0. */
static int prefix_version(const char *tok, size_t len)
{
    if (len < 4 || tok[0] != 'L' || tok[1] != 'M' || tok[3] != '.')
        return 0;
    const int v = tok[2] - '0';
    return v >= LML_VERSION_MIN && v <= LML_VERSION_CURRENT ? v : 0;
}

/* Everything before the signature check: length, characters, version prefix,
 * three parts, base64 of each. */
static lml_result split(const char *tok, size_t len, parts *out, char *why, size_t why_len)
{
    if (len == 0)
        return fail(LML_ERR_EMPTY, why, why_len, "the token is empty");
    if (len > LML_TOKEN_MAX)
        return fail(LML_ERR_TOO_LONG, why, why_len,
                    "the token is %zu bytes, no license token is longer than %d", len,
                    LML_TOKEN_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)tok[i];
        if (!b64url_char(c) && c != '.')
            return fail(LML_ERR_FORMAT, why, why_len,
                        "unexpected byte 0x%02x at offset %zu (a token is "
                        "LM2.<base64url>.<base64url>)",
                        c, i);
    }
    out->version = prefix_version(tok, len);
    if (!out->version) {
        size_t i = 2;
        while (i < len && digit((unsigned char)tok[i]))
            i++;
        if (len >= 2 && tok[0] == 'L' && tok[1] == 'M' && i > 2 && i < len && tok[i] == '.')
            return fail(LML_ERR_VERSION, why, why_len,
                        "token format LM%.*s is not supported (this library reads LM1 and LM2)",
                        (int)(i - 2), tok + 2);
        return fail(LML_ERR_FORMAT, why, why_len,
                    "not a Liquid Memory license token (it must start with LM2. or LM1.)");
    }
    const char *p = tok + 4, *end = tok + len;
    const char *dot = memchr(p, '.', (size_t)(end - p));
    if (!dot)
        return fail(LML_ERR_FORMAT, why, why_len,
                    "the token has no signature part (truncated?)");
    const char *s = dot + 1;
    if (memchr(s, '.', (size_t)(end - s)))
        return fail(LML_ERR_FORMAT, why, why_len, "the token has more than three parts");
    const size_t pn = (size_t)(dot - p), sn = (size_t)(end - s);
    if (pn == 0)
        return fail(LML_ERR_FORMAT, why, why_len, "the token has an empty payload");
    if (sn != LML_SIG_B64_LEN)
        return fail(LML_ERR_SIGNATURE, why, why_len,
                    "the signature part is %zu characters, a signature is %d (truncated?)", sn,
                    LML_SIG_B64_LEN);
    if (b64_decode(out->payload, sizeof out->payload, p, pn, &out->payload_len))
        return fail(LML_ERR_BASE64, why, why_len,
                    "the payload part is not canonical base64url (%zu characters)", pn);
    size_t sig_len;
    if (b64_decode(out->sig, sizeof out->sig, s, sn, &sig_len) || sig_len != LML_SIGNATURE_BYTES)
        return fail(LML_ERR_BASE64, why, why_len,
                    "the signature part is not canonical base64url");
    return LML_VALID;
}

const char *lml_sign_domain(int version)
{
    return version == 1 ? LML_SIGN_DOMAIN_V1 : version == 2 ? LML_SIGN_DOMAIN_V2 : NULL;
}

size_t lml_signed_message(uint8_t *msg, int version, const uint8_t *payload, size_t n)
{
    const char *domain = lml_sign_domain(version);
    const size_t d = strlen(domain);
    memcpy(msg, domain, d);
    memcpy(msg + d, payload, n);
    return d + n;
}

#define MSG_MAX (LML_SIGN_DOMAIN_MAX + LML_TOKEN_MAX)

/* The payload, which must be of the version the prefix names: the prefix
 * picked the signing domain, so neither can stand in for the other. */
static lml_result decode(const parts *pt, lml_license *lic, char *why, size_t why_len)
{
    lml_result r = lml_payload_decode(pt->payload, pt->payload_len, lic, why, why_len);
    if (r == LML_VALID && lic->version != pt->version) {
        memset(lic, 0, sizeof *lic);
        return fail(LML_ERR_VERSION, why, why_len,
                    "the token says LM%d but its payload is version %d", pt->version,
                    pt->payload[0]);
    }
    return r;
}

/* Whether sig verifies the payload under pk. */
static int signed_by(const parts *pt, const uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    uint8_t msg[MSG_MAX];
    const size_t n = lml_signed_message(msg, pt->version, pt->payload, pt->payload_len);
    return lml_verify(pt->sig, msg, n, pk) == 0;
}

lml_result lml_token_verify(const char *tok, size_t len, const lml_key *keys, size_t n,
                            lml_license *lic, char *why, size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    parts pt;
    lml_result r = split(tok, len, &pt, why, why_len);
    if (r != LML_VALID)
        return r;
    int ok = 0;
    if (pt.version == 1) {
        /* No key id: a version 1 token verifies under the key that signed it. */
        for (size_t i = 0; i < n && !ok; i++)
            ok = signed_by(&pt, keys[i].pk);
    } else {
        if (pt.payload_len < LML_OFF_KEY_ID + LML_KEY_ID_BYTES)
            return fail(LML_ERR_PAYLOAD, why, why_len,
                        "the payload is %zu bytes, too short to name its key", pt.payload_len);
        const uint8_t *kid = pt.payload + LML_OFF_KEY_ID;
        const lml_key *key = NULL;
        for (size_t i = 0; i < n && !key; i++) {
            uint8_t id[LML_KEY_ID_BYTES];
            lml_key_id(id, keys[i].pk);
            if (memcmp(id, kid, LML_KEY_ID_BYTES) == 0)
                key = &keys[i];
        }
        if (!key) {
            char hex[2 * LML_KEY_ID_BYTES + 1];
            sodium_bin2hex(hex, sizeof hex, kid, LML_KEY_ID_BYTES);
            return fail(LML_ERR_UNKNOWN_KEY, why, why_len,
                        "the token is signed by key %s, which this library does not trust "
                        "(a token for another build, or a key newer than this release)",
                        hex);
        }
        ok = signed_by(&pt, key->pk);
    }
    if (!ok)
        return fail(LML_ERR_SIGNATURE, why, why_len,
                    "the signature does not verify: the token was altered, or was signed by "
                    "another key than the ones this library trusts");
    return decode(&pt, lic, why, why_len);
}

lml_result lml_token_decode_unverified(const char *tok, size_t len, lml_license *lic, char *why,
                                       size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    parts pt;
    lml_result r = split(tok, len, &pt, why, why_len);
    if (r != LML_VALID)
        return r;
    return decode(&pt, lic, why, why_len);
}

const char *lml_result_string(lml_result r)
{
    switch (r) {
    case LML_VALID: return "valid";
    case LML_ERR_EMPTY: return "empty token";
    case LML_ERR_TOO_LONG: return "token too long";
    case LML_ERR_FORMAT: return "malformed token";
    case LML_ERR_VERSION: return "unsupported token version";
    case LML_ERR_BASE64: return "bad base64";
    case LML_ERR_SIGNATURE: return "bad signature";
    case LML_ERR_PAYLOAD: return "bad payload";
    case LML_ERR_EXPIRED: return "expired";
    case LML_ERR_NOT_YET_VALID: return "not yet valid";
    case LML_ERR_HOST: return "wrong host";
    case LML_ERR_IO: return "unreadable";
    case LML_ERR_UNKNOWN_KEY: return "unknown key";
    case LML_ERR_REVOKED: return "revoked";
    case LML_ERR_CLOCK: return "clock rolled back";
    }
    return "unknown";
}
