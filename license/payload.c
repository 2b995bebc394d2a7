/*
 * payload.c - the binary payload of a license token (layout in license.h and
 * README_INTEGRATION.md): fixed offsets, little-endian integers, one canonical
 * encoding per license. Every field is bounds-checked on both sides, so the
 * issuing tool cannot sign what the library would refuse.
 */
#include "license.h"

#include <stdio.h>
#include <string.h>

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

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

/* Licensee text is shown in UIs and terminals: no control characters.
 * Bytes >= 0x80 are allowed so that UTF-8 names pass. */
static int name_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

lml_result lml_license_check_fields(const lml_license *lic, char *why, size_t why_len)
{
    size_t n = strnlen(lic->licensee, sizeof lic->licensee);
    if (n == 0 || n > LML_LICENSEE_MAX)
        return bad(why, why_len, "licensee must be 1 to 128 bytes");
    if (!name_ok(lic->licensee, n))
        return bad(why, why_len, "licensee contains a control character");
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

size_t lml_payload_encode(uint8_t out[LML_PAYLOAD_MAX], const lml_license *lic)
{
    char why[128];
    if (lml_license_check_fields(lic, why, sizeof why) != LML_VALID)
        return 0;
    size_t n = strlen(lic->licensee);
    memset(out, 0, LML_OFF_NAME);
    out[LML_OFF_VERSION] = LML_PAYLOAD_VERSION;
    out[LML_OFF_FLAGS] = lic->host_bound ? LML_FLAG_HOST_BOUND : 0;
    memcpy(out + LML_OFF_ID, lic->id, LML_ID_BYTES);
    put64(out + LML_OFF_ISSUED, (uint64_t)lic->issued);
    put64(out + LML_OFF_NOT_BEFORE, (uint64_t)lic->not_before);
    put64(out + LML_OFF_EXPIRES, (uint64_t)lic->expires);
    put64(out + LML_OFF_MAX_SEQ, (uint64_t)lic->max_seq_len);
    put64(out + LML_OFF_FEATURES, lic->features);
    memcpy(out + LML_OFF_HOST, lic->host, LML_HOST_BYTES);
    out[LML_OFF_NAME_LEN] = (uint8_t)n;
    memcpy(out + LML_OFF_NAME, lic->licensee, n);
    return LML_OFF_NAME + n;
}

lml_result lml_payload_decode(const uint8_t *p, size_t n, lml_license *lic, char *why,
                              size_t why_len)
{
    memset(lic, 0, sizeof *lic);
    if (n < 1)
        return bad(why, why_len, "payload is empty");
    /* The version decides the layout, so it is read before any length check. */
    if (p[LML_OFF_VERSION] != LML_PAYLOAD_VERSION) {
        snprintf(why, why_len, "payload version %u is not supported (this library reads %d)",
                 p[LML_OFF_VERSION], LML_PAYLOAD_VERSION);
        return LML_ERR_VERSION;
    }
    if (n < LML_PAYLOAD_MIN || n > LML_PAYLOAD_MAX) {
        snprintf(why, why_len, "payload is %zu bytes, expected %d to %d", n, LML_PAYLOAD_MIN,
                 LML_PAYLOAD_MAX);
        return LML_ERR_PAYLOAD;
    }
    if (p[LML_OFF_FLAGS] & ~LML_FLAG_HOST_BOUND)
        return bad(why, why_len, "reserved flag bits are set");
    size_t name_len = p[LML_OFF_NAME_LEN];
    if (name_len < 1 || name_len > LML_LICENSEE_MAX || LML_OFF_NAME + name_len != n) {
        snprintf(why, why_len, "licensee length %zu does not match the payload size %zu",
                 name_len, n);
        return LML_ERR_PAYLOAD;
    }
    /* Checked on the raw bytes: a NUL would otherwise hide what follows it. */
    if (!name_ok((const char *)p + LML_OFF_NAME, name_len))
        return bad(why, why_len, "licensee contains a control character");
    lic->host_bound = (p[LML_OFF_FLAGS] & LML_FLAG_HOST_BOUND) != 0;
    memcpy(lic->id, p + LML_OFF_ID, LML_ID_BYTES);
    /* Values above INT64_MAX become negative and are refused by the field checks. */
    lic->issued = (int64_t)get64(p + LML_OFF_ISSUED);
    lic->not_before = (int64_t)get64(p + LML_OFF_NOT_BEFORE);
    lic->expires = (int64_t)get64(p + LML_OFF_EXPIRES);
    lic->max_seq_len = (int64_t)get64(p + LML_OFF_MAX_SEQ);
    lic->features = get64(p + LML_OFF_FEATURES);
    memcpy(lic->host, p + LML_OFF_HOST, LML_HOST_BYTES);
    memcpy(lic->licensee, p + LML_OFF_NAME, name_len);
    lic->licensee[name_len] = '\0';
    lml_result r = lml_license_check_fields(lic, why, why_len);
    if (r != LML_VALID)
        memset(lic, 0, sizeof *lic);
    return r;
}
