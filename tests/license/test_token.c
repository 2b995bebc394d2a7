/*
 * test_token.c - the token format (license/token.c, payload.c, validity.c,
 * lookup.c's file reading): issue -> verify round trips, every byte of a
 * valid token changed to every other value, every truncation, malformed and
 * hostile inputs, payload fields out of bounds behind a valid signature,
 * the time window and the host binding. Each refusal is checked for its
 * reason, which the test derives from the format's rules.
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
    return lml_token_verify(tok, len, lml_vendor_public_key, lic, why, 256);
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
static void assert_same(const lml_license *a, const lml_license *b)
{
    uint8_t pa[LML_PAYLOAD_MAX], pb[LML_PAYLOAD_MAX];
    size_t na = lml_payload_encode(pa, a), nb = lml_payload_encode(pb, b);
    ck_assert(na > 0 && na == nb && memcmp(pa, pb, na) == 0);
}

START_TEST(round_trip)
{
    lml_license lic = lt_license(), got;
    char tok[LML_TOKEN_MAX + 1], why[256];
    lt_issue(tok, &lic, NULL);
    ck_assert(strncmp(tok, "LM1.", 4) == 0);
    ck_assert_int_eq(verify(tok, strlen(tok), &got, why), LML_VALID);
    assert_same(&lic, &got);
    ck_assert_str_eq(got.licensee, "Test Customer");

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

/* The reason a token with one changed byte must be refused for. */
static lml_result flipped_reason(const char *tok, size_t len, size_t i, char now)
{
    const size_t dot = (size_t)(strchr(tok + 4, '.') - tok);
    if (b64_value(now) < 0 && now != '.')
        return LML_ERR_FORMAT; /* a byte no token contains */
    if (i < 4) {
        /* "LM<digits>." with other digits is another version, else not a token */
        int digits = i == 2 && now >= '0' && now <= '9';
        return digits ? LML_ERR_VERSION : LML_ERR_FORMAT;
    }
    if (now == '.' || i == dot)
        return LML_ERR_FORMAT; /* four parts, or two */
    /* inside a part: the last character may carry bits past the data, which
     * must be zero in canonical base64 */
    const size_t start = i < dot ? 4 : dot + 1, end = i < dot ? dot : len;
    const unsigned spare = (unsigned)((6 * (end - start)) % 8);
    if (i == end - 1 && (b64_value(now) & ((1 << spare) - 1)))
        return LML_ERR_BASE64;
    return LML_ERR_SIGNATURE;
}

START_TEST(every_byte_changed_is_refused)
{
    lml_license lic = lt_license();
    char tok[LML_TOKEN_MAX + 1], bad[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    const size_t len = strlen(tok);
    int counts[LML_ERR_IO + 1] = { 0 };
    for (size_t i = 0; i < len; i++)
        for (int x = 1; x < 256; x++) {
            memcpy(bad, tok, len + 1);
            bad[i] = (char)(bad[i] ^ x);
            lml_result want = flipped_reason(tok, len, i, bad[i]);
            EXPECT_RESULT(bad, len, want);
            counts[want]++;
        }
    /* all the kinds of refusal were met */
    ck_assert(counts[LML_ERR_FORMAT] && counts[LML_ERR_VERSION] && counts[LML_ERR_BASE64] &&
              counts[LML_ERR_SIGNATURE]);
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
    EXPECT_RESULT("LM1.", 4, LML_ERR_FORMAT);
    EXPECT_RESULT("LM1..", 5, LML_ERR_FORMAT);
    EXPECT_RESULT("hello", 5, LML_ERR_FORMAT);
    EXPECT_RESULT("LM2.AAAA.AAAA", 13, LML_ERR_VERSION);
    EXPECT_RESULT("LM10.AAAA.AAAA", 14, LML_ERR_VERSION);
    /* lower case prefix, and another product's prefix */
    snprintf(bad, sizeof bad, "lm1.%s", tok + 4);
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
    memcpy(big, "LM1.", 4);
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
        ck_assert(lml_token_verify(big, mb, lml_vendor_public_key, &l, w, sizeof w) ==
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

START_TEST(other_keys_are_refused)
{
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    lt_random_key(pk, sk);
    lml_license lic = lt_license(), got;
    char tok[LML_TOKEN_MAX + 1], why[256];
    lt_issue(tok, &lic, sk);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_SIGNATURE);
    /* and the other way round: the build's token under the other key */
    lt_issue(tok, &lic, NULL);
    ck_assert_int_eq(lml_token_verify(tok, strlen(tok), pk, &got, why, sizeof why),
                     LML_ERR_SIGNATURE);
    ck_assert(strstr(why, "signature"));
}
END_TEST

/* A signature by the right key over the payload alone (no domain prefix),
 * e.g. a key reused for another purpose, is not a license. */
START_TEST(signature_without_domain_is_refused)
{
    lml_license lic = lt_license();
    uint8_t payload[LML_PAYLOAD_MAX], sig[LML_SIGNATURE_BYTES];
    size_t n = lml_payload_encode(payload, &lic);
    ck_assert(lml_sign(sig, payload, n, lt_signing_key()) == 0);
    char tok[LML_TOKEN_MAX + 1];
    strcpy(tok, "LM1.");
    sodium_bin2base64(tok + 4, sizeof tok - 4, payload, n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    strcat(tok, ".");
    sodium_bin2base64(tok + strlen(tok), sizeof tok - strlen(tok), sig, sizeof sig,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    EXPECT_RESULT(tok, strlen(tok), LML_ERR_SIGNATURE);
}
END_TEST

/* Payloads that break one rule each, correctly signed, so that the parser
 * behind the signature is what refuses them. */
START_TEST(payload_fields_are_bounds_checked)
{
    lml_license lic = lt_license();
    uint8_t good[LML_PAYLOAD_MAX + 8], p[LML_PAYLOAD_MAX + 8];
    const size_t n = lml_payload_encode(good, &lic);
    ck_assert_uint_eq(n, LML_OFF_NAME + strlen("Test Customer"));
    char tok[LML_TOKEN_MAX + 1];
    lt_sign_payload(tok, good, n);
    EXPECT_RESULT(tok, strlen(tok), LML_VALID);

#define PAYLOAD_CASE(edit, len, want)                                                          \
    do {                                                                                       \
        memcpy(p, good, sizeof good);                                                          \
        edit;                                                                                  \
        lt_sign_payload(tok, p, (len));                                                        \
        EXPECT_RESULT(tok, strlen(tok), (want));                                               \
    } while (0)

    PAYLOAD_CASE(p[LML_OFF_VERSION] = 2, n, LML_ERR_VERSION);
    PAYLOAD_CASE(p[LML_OFF_VERSION] = 0, n, LML_ERR_VERSION);
    PAYLOAD_CASE(p[LML_OFF_VERSION] = 2, 3, LML_ERR_VERSION); /* version before length */
    PAYLOAD_CASE(p[LML_OFF_FLAGS] = 0x02, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_FLAGS] = 0x80, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_HOST + 31] = 1, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_NAME_LEN] = 0, LML_OFF_NAME, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_NAME_LEN] = (uint8_t)(n - LML_OFF_NAME + 1), n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[n] = 'x', n + 1, LML_ERR_PAYLOAD); /* a trailing byte */
    PAYLOAD_CASE(p[LML_OFF_NAME + 2] = '\0', n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_NAME + 2] = '\n', n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_NAME + 2] = 0x7f, n, LML_ERR_PAYLOAD);
    PAYLOAD_CASE(p[LML_OFF_ISSUED + 7] = 0x80, n, LML_ERR_PAYLOAD);     /* negative */
    PAYLOAD_CASE(p[LML_OFF_NOT_BEFORE + 7] = 0xff, n, LML_ERR_PAYLOAD); /* negative */
    PAYLOAD_CASE(p[LML_OFF_MAX_SEQ + 7] = 0x80, n, LML_ERR_PAYLOAD);    /* negative */
    /* expires not after not-before */
    PAYLOAD_CASE(memcpy(p + LML_OFF_EXPIRES, p + LML_OFF_NOT_BEFORE, 8), n, LML_ERR_PAYLOAD);
    /* every shorter payload */
    for (size_t k = 1; k < n; k++)
        PAYLOAD_CASE((void)0, k, LML_ERR_PAYLOAD);
    /* a licensee of 129 bytes makes the token longer than any license */
    memcpy(p, good, n);
    p[LML_OFF_NAME_LEN] = LML_LICENSEE_MAX + 1;
    memset(p + LML_OFF_NAME, 'n', LML_LICENSEE_MAX + 1);
    uint8_t sig[LML_SIGNATURE_BYTES] = { 0 };
    char long_tok[2 * LML_TOKEN_MAX];
    strcpy(long_tok, "LM1.");
    sodium_bin2base64(long_tok + 4, sizeof long_tok - 4, p, LML_PAYLOAD_MAX + 1,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    strcat(long_tok, ".");
    sodium_bin2base64(long_tok + strlen(long_tok), sizeof long_tok - strlen(long_tok), sig,
                      sizeof sig, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    EXPECT_RESULT(long_tok, strlen(long_tok), LML_ERR_TOO_LONG);
#undef PAYLOAD_CASE
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
    tcase_add_test(tc, every_byte_changed_is_refused);
    tcase_add_test(tc, every_truncation_is_refused);
    tcase_add_test(tc, malformed_inputs_are_refused);
    tcase_add_test(tc, oversized_input_is_refused);
    tcase_add_test(tc, other_keys_are_refused);
    tcase_add_test(tc, signature_without_domain_is_refused);
    tcase_add_test(tc, payload_fields_are_bounds_checked);
    tcase_add_test(tc, time_window);
    tcase_add_test(tc, host_binding);
    tcase_add_test(tc, token_files);
    suite_add_tcase(s, tc);
    return s;
}
