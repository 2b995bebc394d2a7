/*
 * token.c - the token text "LM1.<base64url payload>.<base64url signature>":
 * issuing (sign, then encode) and verifying. Verification checks only the
 * shape of the text before the signature, and parses nothing until the
 * signature over LML_SIGN_DOMAIN + payload has verified.
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
                        "unexpected byte 0x%02x at offset %zu (a token is LM1.<base64url>.<base64url>)",
                        c, i);
    }
    const size_t plen = strlen(LML_TOKEN_PREFIX);
    if (len < plen || memcmp(tok, LML_TOKEN_PREFIX, plen) != 0) {
        size_t i = 2;
        while (i < len && digit((unsigned char)tok[i]))
            i++;
        if (len >= 2 && tok[0] == 'L' && tok[1] == 'M' && i > 2 && i < len && tok[i] == '.')
            return fail(LML_ERR_VERSION, why, why_len,
                        "token format LM%.*s is not supported (this library reads LM1)",
                        (int)(i - 2), tok + 2);
        return fail(LML_ERR_FORMAT, why, why_len,
                    "not a Liquid Memory license token (it must start with LM1.)");
    }
    const char *p = tok + plen, *end = tok + len;
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

/* The signed message: the domain prefix, then the payload. */
static size_t message(uint8_t *msg, const uint8_t *payload, size_t n)
{
    const size_t d = strlen(LML_SIGN_DOMAIN);
    memcpy(msg, LML_SIGN_DOMAIN, d);
    memcpy(msg + d, payload, n);
    return d + n;
}

#define MSG_MAX (sizeof LML_SIGN_DOMAIN + LML_TOKEN_MAX)

lml_result lml_token_verify(const char *tok, size_t len, const uint8_t pk[LML_PUBLIC_KEY_BYTES],
                            lml_license *lic, char *why, size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    parts pt;
    lml_result r = split(tok, len, &pt, why, why_len);
    if (r != LML_VALID)
        return r;
    uint8_t msg[MSG_MAX];
    size_t n = message(msg, pt.payload, pt.payload_len);
    if (lml_verify(pt.sig, msg, n, pk) != 0) {
        snprintf(why, why_len,
                 "the signature does not verify: the token was altered, or was signed by "
                 "another key than the one this library trusts");
        return LML_ERR_SIGNATURE;
    }
    return lml_payload_decode(pt.payload, pt.payload_len, lic, why, why_len);
}

lml_result lml_token_decode_unverified(const char *tok, size_t len, lml_license *lic, char *why,
                                       size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    parts pt;
    lml_result r = split(tok, len, &pt, why, why_len);
    if (r != LML_VALID)
        return r;
    return lml_payload_decode(pt.payload, pt.payload_len, lic, why, why_len);
}

lml_result lml_token_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic,
                           const uint8_t sk[LML_SECRET_KEY_BYTES], char *why, size_t why_len)
{
    lml_result r = lml_license_check_fields(lic, why, why_len);
    if (r != LML_VALID)
        return r;
    uint8_t payload[LML_PAYLOAD_MAX], sig[LML_SIGNATURE_BYTES], msg[MSG_MAX];
    size_t n = lml_payload_encode(payload, lic);
    if (lml_sign(sig, msg, message(msg, payload, n), sk) != 0) {
        snprintf(why, why_len, "libsodium could not sign");
        return LML_ERR_SIGNATURE;
    }
    size_t at = strlen(LML_TOKEN_PREFIX);
    memcpy(out, LML_TOKEN_PREFIX, at);
    sodium_bin2base64(out + at, LML_TOKEN_MAX + 1 - at, payload, n, B64_VARIANT);
    at += strlen(out + at);
    out[at++] = '.';
    sodium_bin2base64(out + at, LML_TOKEN_MAX + 1 - at, sig, sizeof sig, B64_VARIANT);
    return LML_VALID;
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
    }
    return "unknown";
}
