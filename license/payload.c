/*
 * payload.c - the binary payload of a license token (layout in license.h and
 * README_INTEGRATION.md): fixed offsets, little-endian integers, one canonical
 * encoding per license, versions 1 and 2 (2 adds the signing key's id).
 * Every field is bounds-checked here, and the issuing tool
 * (license/vendor/issue.c) runs the same checks before it signs, so it
 * cannot sign what the library would refuse.
 */
#include "license.h"

#include <stdio.h>
#include <string.h>

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static lml_result bad(char *why, size_t why_len, const char *text)
{
    snprintf(why, why_len, "%s", text);
    return LML_ERR_PAYLOAD;
}

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* The licensee rule, on raw bytes: a NUL would otherwise hide what follows. */
static lml_result check_name(const char *s, size_t n, char *why, size_t why_len)
{
    char text[192];
    if (n == 0 || n > LML_LICENSEE_MAX)
        return bad(why, why_len, "licensee must be 1 to 128 bytes");
    if (lml_text_check(s, n, text, sizeof text) != 0) {
        snprintf(why, why_len, "licensee %s", text);
        return LML_ERR_PAYLOAD;
    }
    return LML_VALID;
}

lml_result lml_license_check_fields(const lml_license *lic, char *why, size_t why_len)
{
    if (lic->version < LML_VERSION_MIN || lic->version > LML_VERSION_CURRENT)
        return bad(why, why_len, "the payload version must be 1 or 2");
    if (lic->version == 1 && !all_zero(lic->key_id, LML_KEY_ID_BYTES))
        return bad(why, why_len, "a version 1 payload has no key id");
    lml_result r = check_name(lic->licensee, strnlen(lic->licensee, sizeof lic->licensee), why,
                              why_len);
    if (r != LML_VALID)
        return r;
    if (lic->issued < 0 || lic->not_before < 0 || lic->expires < 0)
        return bad(why, why_len, "times must be >= 0 (unix seconds)");
    if (lic->expires && lic->expires <= lic->not_before)
        return bad(why, why_len, "expires must be after not-before (or 0 = never)");
    if (lic->max_seq_len < 0)
        return bad(why, why_len, "max sequence length must be >= 0 (0 = unlimited)");
    if (lic->host_bound != 0 && lic->host_bound != 1)
        return bad(why, why_len, "host_bound must be 0 or 1");
    if (!lic->host_bound && !all_zero(lic->host, LML_HOST_BYTES))
        return bad(why, why_len, "host id given but the license is not host-bound");
    return LML_VALID;
}

lml_result lml_payload_decode(const uint8_t *p, size_t n, lml_license *lic, char *why,
                              size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    if (n < 1)
        return bad(why, why_len, "payload is empty");
    /* The version decides the layout, so it is read before any length check. */
    const int version = p[LML_OFF_VERSION];
    if (version < LML_VERSION_MIN || version > LML_VERSION_CURRENT) {
        snprintf(why, why_len, "payload version %d is not supported (this library reads %d to %d)",
                 version, LML_VERSION_MIN, LML_VERSION_CURRENT);
        return LML_ERR_VERSION;
    }
    const size_t at = LML_ID_AT(version), min = LML_PAYLOAD_MIN(version),
                 max = at + LML_REL_NAME + LML_LICENSEE_MAX;
    if (n < min || n > max) {
        snprintf(why, why_len, "payload is %zu bytes, a version %d payload has %zu to %zu", n,
                 version, min, max);
        return LML_ERR_PAYLOAD;
    }
    if (p[LML_OFF_FLAGS] & ~LML_FLAG_HOST_BOUND)
        return bad(why, why_len, "reserved flag bits are set");
    const size_t name_len = p[at + LML_REL_NAME_LEN];
    if (name_len < 1 || name_len > LML_LICENSEE_MAX || at + LML_REL_NAME + name_len != n) {
        snprintf(why, why_len, "licensee length %zu does not match the payload size %zu",
                 name_len, n);
        return LML_ERR_PAYLOAD;
    }
    lml_result r = check_name((const char *)p + at + LML_REL_NAME, name_len, why, why_len);
    if (r != LML_VALID)
        return r;
    lic->version = version;
    if (version >= 2)
        memcpy(lic->key_id, p + LML_OFF_KEY_ID, LML_KEY_ID_BYTES);
    lic->host_bound = (p[LML_OFF_FLAGS] & LML_FLAG_HOST_BOUND) != 0;
    memcpy(lic->id, p + at + LML_REL_ID, LML_ID_BYTES);
    /* Values above INT64_MAX become negative and are refused by the field checks. */
    lic->issued = (int64_t)get64(p + at + LML_REL_ISSUED);
    lic->not_before = (int64_t)get64(p + at + LML_REL_NOT_BEFORE);
    lic->expires = (int64_t)get64(p + at + LML_REL_EXPIRES);
    lic->max_seq_len = (int64_t)get64(p + at + LML_REL_MAX_SEQ);
    lic->features = get64(p + at + LML_REL_FEATURES);
    memcpy(lic->host, p + at + LML_REL_HOST, LML_HOST_BYTES);
    memcpy(lic->licensee, p + at + LML_REL_NAME, name_len);
    lic->licensee[name_len] = '\0';
    r = lml_license_check_fields(lic, why, why_len);
    if (r != LML_VALID)
        memset(lic, 0, sizeof *lic);
    return r;
}
