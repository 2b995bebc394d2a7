/*
 * test_token.c - the token format (license/token.c, payload.c, text.c,
 * validity.c, keyring.c, lookup.c's file reading): issue -> verify round
 * trips in formats 1 and 2, every byte of a valid token changed to every
 * other value, every truncation, malformed and hostile inputs, payload
 * fields out of bounds behind a valid signature, the licensee text rule, key
 * rotation (current and next key, v1 tokens under the key that signed them,
 * unknown key ids), revocation, the time window with the clock rule, and the
 * host binding. Each refusal is checked for its reason, which the test
 * derives from the format's rules.
 */
#include "lt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static lml_result verify(const char *tok, size_t len, lml_license *lic, char *why)
{
    return lml_token_verify(tok, len, lml_keyring, lml_keyring_size, lic, why, 256);
}

#define EXPECT_RESULT(tok, len, want)                                                           \
    do {                                                                                        \
        lml_license l_;                                                                         \
        char w_[256] = "";                                                                      \
        lml_result r_ = verify((tok), (len), &l_, w_);                                          \
        ck_assert_msg(r_ == (want), "%s:%d: got %s (%s), expected %s", __FILE__, __LINE__,      \
                      lml_result_string(r_), w_, lml_result_string(want));                     \
        ck_assert_msg(r_ == LML_VALID || *w_, "a refusal without a reason");                    \
    } while (0)

/* Two licenses are the same when they encode to the same payload. */
static void assert_same(const lml_license *a_in, const lml_license *b)
{
    /* a may not name its key yet (lt_issue names it when signing) */
    lml_license a_named = *a_in;
    const lml_license *a = &a_named;
    if (a->version >= 2)
        memcpy(a_named.key_id, b->key_id, LML_KEY_ID_BYTES);
    uint8_t pa[LML_PAYLOAD_MAX], pb[LML_PAYLOAD_MAX];
    size_t na = lml_payload_encode(pa, a), nb = lml_payload_encode(pb, b);
    ck_assert(na > 0 && na == nb && memcmp(pa, pb, na) == 0);
}

START_TEST(round_trip)
{
    lml_license lic = lt_license(), got;
    char tok[LML_TOKEN_MAX + 1], why[256];
    lt_issue(tok, &lic, NULL);
    ck_assert(strncmp(tok, "LM2.", 4) == 0);
    ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID);
    assert_same(&lic, &got);
    ck_assert_str_eq(got.licensee, "Test Customer");
    uint8_t kid[LML_KEY_ID_BYTES];
    lml_key_id(kid, lml_keyring[0].pk);
    ck_assert(memcmp(got.key_id, kid, sizeof kid) == 0);

    /* every field at its extreme */
    memset(lic.licensee, 'z', LML_LICENSEE_MAX);
    memcpy(lic.licensee, "Kund\xc3\xa4r", 7); /* UTF-8 passes */
    lic.licensee[LML_LICENSEE_MAX] = '\0';
    lic.issued = 0;
    lic.not_before = INT64_MAX - 1;
    lic.expires = INT64_MAX;
    lic.max_seq_len = INT64_MAX;
    lic.features = UINT64_MAX;
    lic.host_bound = 1;
    memset(lic.host, 0xee, sizeof lic.host);
    lt_issue(tok, &lic, NULL);
    ck_assert_uint_eq(strlen(tok), LML_TOKEN_MAX); /* the longest token there is */
    ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID);
    assert_same(&lic, &got);
    ck_assert_int_eq(got.max_seq_len, INT64_MAX);
    ck_assert(got.features == UINT64_MAX && got.host_bound == 1);

    /* show decodes the same fields without the key */
    ck_assert_int_eq(lml_token_decode_unverified(tok, strlen(tok), &got, why, sizeof why),
                     LML_VALID);
    assert_same(&lic, &got);
}
END_TEST

START_TEST(issue_refuses_bad_fields)
{
    char tok[LML_TOKEN_MAX + 1], why[256];
    const uint8_t *sk = lt_signing_key();
    lml_license lic = lt_license();
    lic.licensee[0] = '\0';
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
    ck_assert(strstr(why, "licensee"));
    lic = lt_license();
    strcpy(lic.licensee, "bell\a");
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
    lic = lt_license();
    lic.expires = lic.not_before;
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
    ck_assert(strstr(why, "expires"));
    lic = lt_license();
    lic.max_seq_len = -1;
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
    lic = lt_license();
    lic.host[3] = 1; /* a host id on a license that is not host-bound */
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
    lic = lt_license();
    lic.issued = -5;
    ck_assert_int_eq(lml_token_issue(tok, &lic, sk, why, sizeof why), LML_ERR_PAYLOAD);
}
END_TEST

static int b64_value(char c)
{
    const char *p = c ? strchr(b64url, c) : NULL;
    return p ? (int)(p - b64url) : -1;
}

/* The reason a token of format `version` with one changed byte must be
 * refused for. */
static lml_result flipped_reason(const char *tok, size_t len, size_t i, char now, int version)
{
    const size_t dot = (size_t)(strchr(tok + 4, '.') - tok);
    if (b64_value(now) < 0 && now != '.')
        return LML_ERR_FORMAT; /* a byte no token contains */
    if (i < 4) {
        /* "LM<digits>." with other digits is another version, else not a
         * token; the other version this library reads takes the payload as
         * its own: a version 1 payload read as version 2 names a key id
         * (its license id's first bytes) that no key has, and a version 2
         * payload read as version 1 fails the signature. */
        if (i != 2 || now < '0' || now > '9')
            return LML_ERR_FORMAT;
        if (now == '1' || now == '2')
            return version == 1 ? LML_ERR_UNKNOWN_KEY : LML_ERR_SIGNATURE;
        return LML_ERR_VERSION;
    }
    if (now == '.' || i == dot)
        return LML_ERR_FORMAT; /* four parts, or two */
    /* inside a part: the last character may carry bits past the data, which
     * must be zero in canonical base64 */
    const size_t start = i < dot ? 4 : dot + 1, end = i < dot ? dot : len;
    const unsigned spare = (unsigned)((6 * (end - start)) % 8);
    if (i == end - 1 && (b64_value(now) & ((1 << spare) - 1)))
        return LML_ERR_BASE64;
    /* a change to a bit of a version 2 payload's key id names a key the
     * keyring does not have; character j of the part holds bits 6j .. 6j+5
     * of the payload, most significant first */
    const int diff = b64_value(tok[i]) ^ b64_value(now);
    for (int k = 0; version == 2 && i < dot && k < 6; k++) {
        const size_t byte = (6 * (i - 4) + (size_t)(5 - k)) / 8;
        if ((diff >> k & 1) && byte >= LML_OFF_KEY_ID && byte < LML_OFF_KEY_ID + LML_KEY_ID_BYTES)
            return LML_ERR_UNKNOWN_KEY;
    }
    return LML_ERR_SIGNATURE;
}

/* Loop index 0: a format 2 token; 1: a format 1 token. */
START_TEST(every_byte_changed_is_refused)
{
    lml_license lic = lt_license();
    lic.version = _i ? 1 : 2;
    char tok[LML_TOKEN_MAX + 1], bad[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    const size_t len = strlen(tok);
    int counts[LML_RESULT_LAST + 1] = { 0 };
    for (size_t i = 0; i < len; i++)
        for (int x = 1; x < 256; x++) {
            memcpy(bad, tok, len + 1);
            bad[i] = (char)(bad[i] ^ x);
            lml_result want = flipped_reason(tok, len, i, bad[i], lic.version);
            EXPECT_RESULT(bad, len, want);
            counts[want]++;
        }
    /* all the kinds of refusal were met */
    ck_assert(counts[LML_ERR_FORMAT] && counts[LML_ERR_VERSION] && counts[LML_ERR_BASE64] &&
              counts[LML_ERR_SIGNATURE] && counts[LML_ERR_UNKNOWN_KEY]);
}
END_TEST

START_TEST(every_truncation_is_refused)
{
    lml_license lic = lt_license();
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    const size_t len = strlen(tok), dot = (size_t)(strchr(tok + 4, '.') - tok);
    for (size_t k = 0; k < len; k++) {
        lml_result want = k == 0     ? LML_ERR_EMPTY
                          : k <= dot ? LML_ERR_FORMAT     /* no signature part */
                                     : LML_ERR_SIGNATURE; /* a signature cut short */
        EXPECT_RESULT(tok, k, want);
    }
    EXPECT_RESULT(tok, len, LML_VALID);
}
END_TEST

START_TEST(malformed_inputs_are_refused)
{
    lml_license lic = lt_license();
    char tok[LML_TOKEN_MAX + 1], bad[2 * LML_TOKEN_MAX];
    lt_issue(tok, &lic, NULL);
    const size_t len = strlen(tok), dot = (size_t)(strchr(tok + 4, '.') - tok);

    EXPECT_RESULT("", 0, LML_ERR_EMPTY);
    EXPECT_RESULT("LM2.", 4, LML_ERR_FORMAT);
    EXPECT_RESULT("LM1..", 5, LML_ERR_FORMAT);
    EXPECT_RESULT("hello", 5, LML_ERR_FORMAT);
    EXPECT_RESULT("LM3.AAAA.AAAA", 13, LML_ERR_VERSION);
    EXPECT_RESULT("LM0.AAAA.AAAA", 13, LML_ERR_VERSION);
    EXPECT_RESULT("LM10.AAAA.AAAA", 14, LML_ERR_VERSION);
    /* lower case prefix, and another product's prefix */
    snprintf(bad, sizeof bad, "lm2.%s", tok + 4);
    EXPECT_RESULT(bad, len, LML_ERR_FORMAT);
    snprintf(bad, sizeof bad, "XY1.%s", tok + 4);
    EXPECT_RESULT(bad, len, LML_ERR_FORMAT);
    /* padding, the standard alphabet, spaces, a newline: bytes no token has */
    const char *foreign[] = { "=", "+", "/", " ", "\n", "\t" };
    for (size_t f = 0; f < sizeof foreign / sizeof *foreign; f++) {
        snprintf(bad, sizeof bad, "%.*s%s%s", (int)dot, tok, foreign[f], tok + dot);
        EXPECT_RESULT(bad, len + 1, LML_ERR_FORMAT);
    }
    /* a payload part of a length no base64 text has (4n + 1) */
    const size_t extra = (1 + 4 - (dot - 4) % 4) % 4;
    snprintf(bad, sizeof bad, "%.*s%.*s%s", (int)dot, tok, (int)extra, "AAAA", tok + dot);
    ck_assert_uint_eq((dot - 4 + extra) % 4, 1);
    EXPECT_RESULT(bad, len + extra, LML_ERR_BASE64);
    /* an extra part */
    snprintf(bad, sizeof bad, "%s.AAAA", tok);
    EXPECT_RESULT(bad, len + 5, LML_ERR_FORMAT);
    /* NUL bytes: inside, in place of a character, and after a valid token */
    memcpy(bad, tok, len + 1);
    bad[10] = '\0';
    EXPECT_RESULT(bad, len, LML_ERR_FORMAT);
    memcpy(bad, tok, len);
    memcpy(bad + len, "\0garbage", 8);
    EXPECT_RESULT(bad, len + 8, LML_ERR_FORMAT);
    /* one byte too many (a valid token followed by a character) */
    snprintf(bad, sizeof bad, "%sA", tok);
    EXPECT_RESULT(bad, len + 1, LML_ERR_SIGNATURE);
}
END_TEST

START_TEST(oversized_input_is_refused)
{
    const size_t mb = 1 << 20;
    char *big = malloc(mb);
    ck_assert(big != NULL);
    memset(big, 'A', mb);
    memcpy(big, "LM2.", 4);
    big[mb / 2] = '.';
    EXPECT_RESULT(big, mb, LML_ERR_TOO_LONG);
    memset(big, 0, mb);
    EXPECT_RESULT(big, mb, LML_ERR_TOO_LONG);
    EXPECT_RESULT(big, LML_TOKEN_MAX + 1, LML_ERR_TOO_LONG);
    memset(big, 0xff, mb);
    EXPECT_RESULT(big, mb, LML_ERR_TOO_LONG);
    /* fast: refused by its length, without reading it (20000 tries of a
     * 1 MB input take milliseconds; a pass over the bytes would take seconds) */
    lml_license l;
    char w[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 20000; i++)
        ck_assert(lml_token_verify(big, mb, lml_keyring, lml_keyring_size, &l, w, sizeof w) ==
                  LML_ERR_TOO_LONG);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(seconds < 1.0, "20000 refusals of 1 MB took %.2f s", seconds);
    lml_license lic;
    char why[256];
    ck_assert_int_eq(lml_token_decode_unverified(big, mb, &lic, why, sizeof why),
                     LML_ERR_TOO_LONG);
    free(big);
}
END_TEST

/* The token of lic, as signed by key `which` of the build's keyring. */
static void issue_with(char tok[LML_TOKEN_MAX + 1], const lml_license *lic, int which)
{
    lt_issue(tok, lic, lt_key(which));
}

START_TEST(other_keys_are_refused)
{
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    lt_random_key(pk, sk);
    lml_license lic = lt_license(), got;
    char tok[LML_TOKEN_MAX + 1], why[256], hex[2 * LML_KEY_ID_BYTES + 1];
    uint8_t kid[LML_KEY_ID_BYTES];
    /* format 2 names its key: one the keyring lacks is an unknown key */
    lt_issue(tok, &lic, sk);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_UNKNOWN_KEY);
    verify(tok, strlen(tok), &got, why);
    lml_key_id(kid, pk);
    sodium_bin2hex(hex, sizeof hex, kid, sizeof kid);
    ck_assert_msg(strstr(why, hex), "%s", why);
    /* format 1 names none: no key of the ring verifies it */
    lic.version = 1;
    lt_issue(tok, &lic, sk);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_SIGNATURE);
    /* and the other way round: the build's tokens under the other key */
    const lml_key other = { .pk = { 0 } };
    lml_key ring[1] = { other };
    memcpy(ring[0].pk, pk, sizeof pk);
    for (int v = 1; v <= 2; v++) {
        lic.version = v;
        lt_issue(tok, &lic, NULL);
        ck_assert_int_eq(lml_token_verify(tok, strlen(tok), ring, 1, &got, why, sizeof why),
                         v == 1 ? LML_ERR_SIGNATURE : LML_ERR_UNKNOWN_KEY);
    }
}
END_TEST

/* A format 2 token that names one key of the ring but is signed by the
 * other is refused: the id only picks the key. */
START_TEST(key_id_only_picks_the_key)
{
    lml_license lic = lt_license();
    lml_key_id(lic.key_id, lml_keyring[0].pk);
    uint8_t payload[LML_PAYLOAD_MAX], msg[LML_SIGN_DOMAIN_MAX + LML_PAYLOAD_MAX];
    uint8_t sig[LML_SIGNATURE_BYTES];
    const size_t n = lml_payload_encode(payload, &lic);
    ck_assert(lml_sign(sig, msg, lml_signed_message(msg, 2, payload, n), lt_key(1)) == 0);
    char tok[LML_TOKEN_MAX + 1];
    lt_token_text(tok, sizeof tok, 2, payload, n, sig);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_SIGNATURE);
}
END_TEST

/* Rotation: the keyring holds the current and the next key. Tokens of
 * either verify, format 1 tokens (no key id) under the key that signed them;
 * a library whose ring lacks the next key (an older release) says the key
 * is unknown rather than that the token was altered. */
START_TEST(rotation_current_and_next_key)
{
    ck_assert_msg(lml_keyring_size == 2, "a development build has a current and a next key");
    lml_license lic = lt_license(), got;
    char tok[LML_TOKEN_MAX + 1], why[256];
    for (int which = 0; which < 2; which++)
        for (int v = 1; v <= 2; v++) {
            lic.version = v;
            issue_with(tok, &lic, which);
            ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID);
            ck_assert_int_eq(got.version, v);
            uint8_t kid[LML_KEY_ID_BYTES] = { 0 };
            if (v == 2)
                lml_key_id(kid, lml_keyring[which].pk);
            ck_assert(memcmp(got.key_id, kid, sizeof kid) == 0);
            /* the ring of the release before the rotation: the current key only */
            lml_result r = lml_token_verify(tok, strlen(tok), lml_keyring, 1, &got, why,
                                            sizeof why);
            ck_assert_int_eq(r, which == 0 ? LML_VALID
                                : v == 2   ? LML_ERR_UNKNOWN_KEY
                                           : LML_ERR_SIGNATURE);
        }
}
END_TEST

/* A format 1 token keeps verifying: the v1 layout and domain are read as
 * before, with every field. */
START_TEST(format_1_still_reads)
{
    lml_license lic = lt_license(), got;
    lic.version = 1;
    lic.expires = lt_now() + 86400;
    lic.max_seq_len = 8192;
    lic.features = 0x5;
    char tok[LML_TOKEN_MAX + 1], why[256];
    lt_issue(tok, &lic, NULL);
    ck_assert(strncmp(tok, "LM1.", 4) == 0);
    ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID);
    assert_same(&lic, &got);
    /* the v1 payload is 8 bytes shorter: no key id */
    uint8_t p[LML_PAYLOAD_MAX];
    ck_assert_uint_eq(lml_payload_encode(p, &lic), LML_OFF_NAME + strlen(lic.licensee));
    /* a v1 payload under the v2 prefix (and domain), and the reverse, are refused */
    lt_sign_payload(tok, 2, p, LML_OFF_NAME + strlen(lic.licensee));
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_UNKNOWN_KEY); /* bytes 2..9 are the license id */
    lic.version = 2;
    lml_key_id(lic.key_id, lml_keyring[0].pk);
    const size_t n2 = lml_payload_encode(p, &lic);
    lt_sign_payload(tok, 1, p, n2);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_VERSION);
}
END_TEST

/* A signature by the right key over the payload alone (no domain prefix),
 * e.g. a key reused for another purpose, is not a license; nor is one made
 * under the other version's domain. */
START_TEST(signature_without_domain_is_refused)
{
    lml_license lic = lt_license();
    lml_key_id(lic.key_id, lml_keyring[0].pk);
    uint8_t payload[LML_PAYLOAD_MAX], sig[LML_SIGNATURE_BYTES];
    uint8_t msg[LML_SIGN_DOMAIN_MAX + LML_PAYLOAD_MAX];
    const size_t n = lml_payload_encode(payload, &lic);
    for (int k = 0; k < 3; k++) {
        const size_t m = k == 0 ? (memcpy(msg, payload, n), n)
                                : lml_signed_message(msg, k, payload, n); /* v1 domain, or v2 */
        ck_assert(lml_sign(sig, msg, m, lt_signing_key()) == 0);
        char tok[LML_TOKEN_MAX + 1];
        lt_token_text(tok, sizeof tok, 2, payload, n, sig);
        EXPECT_RESULT(tok, strlen(tok), k == 2 ? LML_VALID : LML_ERR_SIGNATURE);
    }
}
END_TEST

/* Payloads that break one rule each, correctly signed, so that the parser
 * behind the signature is what refuses them. Loop index 0: format 2, 1:
 * format 1. */
START_TEST(payload_fields_are_bounds_checked)
{
    const int v = _i ? 1 : 2;
    const size_t at = LML_ID_AT(v);
    lml_license lic = lt_license();
    lic.version = v;
    if (v == 2)
        lml_key_id(lic.key_id, lml_keyring[0].pk);
    uint8_t good[LML_PAYLOAD_MAX + 8], p[LML_PAYLOAD_MAX + 8];
    const size_t n = lml_payload_encode(good, &lic);
    ck_assert_uint_eq(n, at + LML_REL_NAME + strlen("Test Customer"));
    char tok[LML_TOKEN_MAX + 1];
    lt_sign_payload(tok, v, good, n);
    EXPECT_RESULT(tok, strlen(tok), LML_VALID);

#define PAYLOAD_CASE(edit, len, want)                                                          \
    do {                                                                                       \
        memcpy(p, good, sizeof good);                                                          \
        edit;                                                                                  \
        lt_sign_payload(tok, v, p, (len));                                                     \
        EXPECT_RESULT(tok, strlen(tok), (want));                                               \
    } while (0)
#define NAME(text) memcpy(p + at + LML_REL_NAME + 2, text, sizeof text - 1)

    PAYLOAD_CASE(p[LML_OFF_VERSION] = 3, n, LML_ERR_VERSION);
    PAYLOAD_CASE(p[LML_OFF_VERSION] = 0, n, LML_ERR_VERSION);
    PAYLOAD_CASE(p[LML_OFF_FLAGS] = 0x02, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_FLAGS] = 0x80, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[at + LML_REL_HOST + 31] = 1, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[at + LML_REL_NAME_LEN] = 0, at + LML_REL_NAME, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[at + LML_REL_NAME_LEN] = (uint8_t)(n - at - LML_REL_NAME + 1), n,
                 LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[n] = 'x', n + 1, LML_ERR_PAYLOAD); /* a trailing byte */
    PAYLOAD_CASE(NAME("\0"), n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(NAME("\n"), n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(NAME("\x7f"), n, LML_ERR_PAYLOAD);
    /* the text rule (license/text.c) behind the signature too */
    PAYLOAD_CASE(NAME("\xff"), n, LML_ERR_PAYLOAD);         /* not UTF-8 */
    PAYLOAD_CASE(NAME("\xc0\x80"), n, LML_ERR_PAYLOAD);     /* overlong NUL */
    PAYLOAD_CASE(NAME("\xc2\x9b"), n, LML_ERR_PAYLOAD);     /* C1 control CSI */
    PAYLOAD_CASE(NAME("\xe2\x80\xae"), n, LML_ERR_PAYLOAD); /* U+202E right-to-left override */
    PAYLOAD_CASE(NAME("\xe2\x81\xa6"), n, LML_ERR_PAYLOAD); /* U+2066 left-to-right isolate */
    PAYLOAD_CASE(NAME("\xc3\xa4"), n, LML_VALID);           /* a-umlaut is a name */
    PAYLOAD_CASE(p[at + LML_REL_ISSUED + 7] = 0x80, n, LML_ERR_PAYLOAD);     /* negative */
    PAYLOAD_CASE(p[at + LML_REL_NOT_BEFORE + 7] = 0xff, n, LML_ERR_PAYLOAD); /* negative */
    PAYLOAD_CASE(p[at + LML_REL_MAX_SEQ + 7] = 0x80, n, LML_ERR_PAYLOAD);    /* negative */
    /* expires not after not-before */
    PAYLOAD_CASE(memcpy(p + at + LML_REL_EXPIRES, p + at + LML_REL_NOT_BEFORE, 8), n,
                 LML_ERR_PAYLOAD);
    /* every shorter payload (format 2: too short to name a key, or to hold the rest) */
    for (size_t k = 1; k < n; k++)
        PAYLOAD_CASE((void)0, k, LML_ERR_PAYLOAD);
    /* the version is read before the length (format 1, where no key id comes first) */
    if (v == 1)
        PAYLOAD_CASE(p[LML_OFF_VERSION] = 3, 3, LML_ERR_VERSION);
    /* a licensee of 129 bytes makes the token longer than any license */
    memcpy(p, good, n);
    p[at + LML_REL_NAME_LEN] = LML_LICENSEE_MAX + 1;
    memset(p + at + LML_REL_NAME, 'n', LML_LICENSEE_MAX + 1);
    uint8_t sig[LML_SIGNATURE_BYTES] = { 0 };
    char long_tok[2 * LML_TOKEN_MAX];
    lt_token_text(long_tok, sizeof long_tok, v, p, at + LML_REL_NAME + 129, sig);
    EXPECT_RESULT(long_tok, strlen(long_tok), v == 2 ? LML_ERR_TOO_LONG : LML_ERR_SIGNATURE);
#undef NAME
#undef PAYLOAD_CASE
}
END_TEST

/* The licensee text rule on its own: what a name may hold. */
START_TEST(text_rule)
{
    static const struct {
        const char *text;
        int ok;
    } cases[] = {
        { "ACME Corp", 1 },
        { "Kund\xc3\xa4r AB", 1 },                  /* U+00E4 */
        { "\xe6\x97\xa5\xe6\x9c\xac", 1 },          /* CJK */
        { "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d", 1 },  /* Hebrew, right to left by itself */
        { "a\xe2\x80\x8d" "b", 1 },                 /* U+200D zero width joiner */
        { "\xf0\x9f\x98\x80", 1 },                  /* U+1F600, four bytes */
        { "\xf4\x8f\xbf\xbf", 1 },                  /* U+10FFFF, the last code point */
        { "tab\there", 0 },
        { "esc\x1b[31m", 0 },
        { "del\x7f", 0 },
        { "\xc2\x80", 0 },                          /* U+0080, C1 */
        { "\xc2\x9f", 0 },                          /* U+009F, C1 */
        { "\xd8\x9c", 0 },                          /* U+061C arabic letter mark */
        { "\xe2\x80\x8e", 0 },                      /* U+200E left-to-right mark */
        { "\xe2\x80\x8f", 0 },                      /* U+200F right-to-left mark */
        { "\xe2\x80\xaa", 0 },                      /* U+202A */
        { "\xe2\x80\xae", 0 },                      /* U+202E */
        { "\xe2\x81\xa6", 0 },                      /* U+2066 */
        { "\xe2\x81\xa9", 0 },                      /* U+2069 */
        { "\xe2\x80\xa8", 0 },                      /* U+2028 line separator */
        { "\xe2\x80\xa9", 0 },                      /* U+2029 paragraph separator */
        { "\x80", 0 },                              /* a lone continuation byte */
        { "\xc3", 0 },                              /* cut short */
        { "\xe2\x80", 0 },                          /* cut short */
        { "\xc0\xaf", 0 },                          /* overlong '/' */
        { "\xe0\x80\xaf", 0 },                      /* overlong '/' */
        { "\xf0\x80\x80\xaf", 0 },                  /* overlong '/' */
        { "\xed\xa0\x80", 0 },                      /* U+D800, a surrogate */
        { "\xf4\x90\x80\x80", 0 },                  /* U+110000 */
        { "\xf8\x88\x80\x80\x80", 0 },              /* five bytes */
        { "\xfe\xff", 0 },
    };
    char why[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const int ok = lml_text_check(cases[i].text, strlen(cases[i].text), why, sizeof why) == 0;
        ck_assert_msg(ok == cases[i].ok, "case %zu: %s", i, why);
        if (!ok)
            ck_assert(strstr(why, "UTF-8") || strstr(why, "U+"));
    }
    /* a NUL inside is a control character too */
    ck_assert_int_eq(lml_text_check("a\0b", 3, why, sizeof why), -1);
    /* the issuing side refuses what the decoder refuses */
    lml_license lic = lt_license();
    strcpy(lic.licensee, "evil\xe2\x80\xae" "gnp.exe");
    ck_assert_int_eq(lml_license_check_fields(&lic, why, sizeof why), LML_ERR_PAYLOAD);
    ck_assert(strstr(why, "U+202E"));
    char tok[LML_TOKEN_MAX + 1];
    ck_assert_int_eq(lml_token_issue(tok, &lic, lt_signing_key(), why, sizeof why),
                     LML_ERR_PAYLOAD);
}
END_TEST

/* The compiled-in revocation list: a license whose id is on it is refused
 * although it verifies; development builds carry one test id. */
START_TEST(revocation_list)
{
    ck_assert_msg(lml_revoked_count >= 1, "development builds revoke license/revoked-dev.txt");
    lml_license lic = lt_license(), got;
    char why[256], tok[LML_TOKEN_MAX + 1], hex[2 * LML_ID_BYTES + 1];
    ck_assert_int_eq(lml_license_check_revoked(&lic, why, sizeof why), LML_VALID);
    memcpy(lic.id, lml_revoked_ids[0], LML_ID_BYTES);
    lt_issue(tok, &lic, NULL);
    ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID); /* the signature holds */
    ck_assert_int_eq(lml_license_check_revoked(&got, why, sizeof why), LML_ERR_REVOKED);
    sodium_bin2hex(hex, sizeof hex, lic.id, sizeof lic.id);
    ck_assert(strstr(why, hex) && strstr(why, "revoked"));
}
END_TEST

START_TEST(time_window)
{
    lml_license lic = lt_license();
    char why[256];
    lic.not_before = 1000;
    lic.issued = 900;
    lic.expires = 2000;
    ck_assert_int_eq(lml_license_check_time(&lic, 999, why, sizeof why), LML_ERR_NOT_YET_VALID);
    ck_assert(strstr(why, "not valid before 1970-01-01 00:16:40 UTC"));
    ck_assert_int_eq(lml_license_check_time(&lic, 1000, why, sizeof why), LML_VALID);
    ck_assert_int_eq(lml_license_check_time(&lic, 1999, why, sizeof why), LML_VALID);
    ck_assert_int_eq(lml_license_check_time(&lic, 2000, why, sizeof why), LML_ERR_EXPIRED);
    ck_assert(strstr(why, "expired on 1970-01-01 00:33:20 UTC"));
    lic.expires = 0; /* never */
    ck_assert_int_eq(lml_license_check_time(&lic, INT64_MAX, why, sizeof why), LML_VALID);
}
END_TEST

/* The clock rule: a license that expires is refused while the clock is more
 * than LML_CLOCK_SKEW behind its issue time (the clock was set back to
 * before the license existed); one without expiry gains nothing from a
 * clock set back and is not refused for it. */
START_TEST(clock_behind_issue_time)
{
    lml_license lic = lt_license();
    char why[256];
    const int64_t issued = 1700000000;
    lic.issued = issued;
    lic.not_before = issued - 30 * 86400; /* backdated: valid from before it was issued */
    lic.expires = issued + 365 * 86400;
    ck_assert_int_eq(lml_license_check_time(&lic, issued - LML_CLOCK_SKEW, why, sizeof why),
                     LML_VALID);
    ck_assert_int_eq(lml_license_check_time(&lic, issued - LML_CLOCK_SKEW - 1, why, sizeof why),
                     LML_ERR_CLOCK);
    ck_assert(strstr(why, "clock") && strstr(why, "2023-11-14 22:13:20 UTC"));
    ck_assert_int_eq(lml_license_check_time(&lic, 0, why, sizeof why), LML_ERR_CLOCK);
    lic.expires = 0;
    ck_assert_int_eq(lml_license_check_time(&lic, issued - 10 * 86400, why, sizeof why),
                     LML_VALID);
}
END_TEST

START_TEST(host_binding)
{
    lml_license lic = lt_license();
    char why[256];
    ck_assert_int_eq(lml_license_check_host(&lic, why, sizeof why), LML_VALID); /* unbound */
    lic.host_bound = 1;
    randombytes_buf(lic.host, sizeof lic.host);
    ck_assert_int_eq(lml_license_check_host(&lic, why, sizeof why), LML_ERR_HOST);
    uint8_t here[LML_HOST_BYTES];
    char id_why[256];
    if (lml_host_id(here, id_why, sizeof id_why) == 0) {
        ck_assert(strstr(why, "another machine"));
        memcpy(lic.host, here, sizeof here);
        ck_assert_int_eq(lml_license_check_host(&lic, why, sizeof why), LML_VALID);
    } else {
        /* no machine id here: a host-bound license cannot apply, and says why */
        ck_assert(strstr(why, "machine id"));
    }
}
END_TEST

START_TEST(token_files)
{
    char out[LML_INPUT_MAX + 1], why[256];
    size_t n;
    const char *path = lt_write_file("tok", "  \n\tLM1.abc.def \r\n\n");
    ck_assert_int_eq(lml_read_small_file(path, out, &n, why, sizeof why), LML_VALID);
    ck_assert_str_eq(out, "LM1.abc.def");
    ck_assert_uint_eq(n, 11);

    char *big = malloc(LML_INPUT_MAX + 2);
    ck_assert(big != NULL);
    memset(big, 'A', LML_INPUT_MAX + 1);
    big[LML_INPUT_MAX + 1] = '\0';
    path = lt_write_file("big", big);
    ck_assert_int_eq(lml_read_small_file(path, out, &n, why, sizeof why), LML_ERR_TOO_LONG);
    big[LML_INPUT_MAX] = '\0'; /* exactly the limit is read */
    path = lt_write_file("limit", big);
    ck_assert_int_eq(lml_read_small_file(path, out, &n, why, sizeof why), LML_VALID);
    ck_assert_uint_eq(n, LML_INPUT_MAX);
    free(big);

    ck_assert_int_eq(lml_read_small_file(lt_home(), out, &n, why, sizeof why), LML_ERR_IO);
    ck_assert(strstr(why, "not a regular file"));
    char missing[512];
    snprintf(missing, sizeof missing, "%s/missing", lt_home());
    ck_assert_int_eq(lml_read_small_file(missing, out, &n, why, sizeof why), LML_ERR_IO);
    ck_assert(strstr(why, strerror(ENOENT)));
    /* a FIFO must not block the reader */
    path = lt_write_file("fifo", "");
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s", path);
    ck_assert(unlink(fifo) == 0 && mkfifo(fifo, 0600) == 0);
    ck_assert_int_eq(lml_read_small_file(fifo, out, &n, why, sizeof why), LML_ERR_IO);
}
END_TEST

Suite *token_suite(void)
{
    Suite *s = suite_create("token");
    TCase *tc = tcase_create("format");
    tcase_add_checked_fixture(tc, lt_setup, lt_teardown);
    tcase_set_timeout(tc, 120); /* the byte-by-byte test under ASan */
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, issue_refuses_bad_fields);
    tcase_add_loop_test(tc, every_byte_changed_is_refused, 0, 2);
    tcase_add_test(tc, every_truncation_is_refused);
    tcase_add_test(tc, malformed_inputs_are_refused);
    tcase_add_test(tc, oversized_input_is_refused);
    tcase_add_test(tc, other_keys_are_refused);
    LT_ADD_KEYRING_TEST(tc, key_id_only_picks_the_key);
    LT_ADD_KEYRING_TEST(tc, rotation_current_and_next_key);
    tcase_add_test(tc, format_1_still_reads);
    tcase_add_test(tc, signature_without_domain_is_refused);
    tcase_add_loop_test(tc, payload_fields_are_bounds_checked, 0, 2);
    tcase_add_test(tc, text_rule);
    LT_ADD_KEYRING_TEST(tc, revocation_list);
    tcase_add_test(tc, time_window);
    tcase_add_test(tc, clock_behind_issue_time);
    tcase_add_test(tc, host_binding);
    tcase_add_test(tc, token_files);
    suite_add_tcase(s, tc);
    return s;
}
