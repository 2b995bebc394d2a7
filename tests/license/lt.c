/* lt.c - the helpers of lt.h. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "lt.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int lt_have_signing_key(void)
{
    const char *p = getenv("LM_TEST_SIGNING_KEY");
    return p && *p;
}

int lt_have_keyring(void)
{
    const char *p = getenv("LM_TEST_NEXT_SIGNING_KEY");
    return p && *p && lml_keyring_size == 2 && lml_revoked_count >= 1;
}

const uint8_t *lt_key(int which)
{
    static uint8_t sk[2][LML_SECRET_KEY_BYTES];
    static int loaded[2];
    ck_assert(which == 0 || which == 1);
    if (loaded[which])
        return sk[which];
    const char *var = which ? "LM_TEST_NEXT_SIGNING_KEY" : "LM_TEST_SIGNING_KEY";
    const char *path = getenv(var);
    ck_assert_msg(path && *path, "%s is not set", var);
    ck_assert_msg((size_t)which < lml_keyring_size, "the keyring has no key %d", which);
    char text[1025] = { 0 };
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    uint8_t seed[LML_SEED_BYTES], pk[LML_PUBLIC_KEY_BYTES];
    ck_assert_msg(cli_key_parse_text(text, seed) == 0, "%s is not a key file", path);
    ck_assert(lml_keypair_from_seed(pk, sk[which], seed) == 0);
    ck_assert_msg(memcmp(pk, lml_keyring[which].pk, sizeof pk) == 0,
                  "%s does not sign for keyring key %d of the library", path, which);
    loaded[which] = 1;
    return sk[which];
}

const uint8_t *lt_signing_key(void)
{
    return lt_key(0);
}

int64_t lt_now(void)
{
    return (int64_t)time(NULL);
}

lml_license lt_license(void)
{
    lml_license lic;
    memset(&lic, 0, sizeof lic);
    lic.version = 2;
    randombytes_buf(lic.id, sizeof lic.id);
    strcpy(lic.licensee, "Test Customer");
    lic.issued = lic.not_before = lt_now() - 3600;
    return lic;
}

void lt_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic, const uint8_t *sk)
{
    char why[256] = "";
    if (!sk)
        sk = lt_signing_key();
    lml_license named = *lic;
    if (named.version >= 2)
        lml_key_id(named.key_id, sk + LML_SEED_BYTES); /* sk ends with its public key */
    lml_result r = lml_token_issue(out, &named, sk, why, sizeof why);
    ck_assert_msg(r == LML_VALID, "issue: %s", why);
}

void lt_sign_payload(char out[LML_TOKEN_MAX + 1], int version, const uint8_t *payload,
                     size_t n)
{
    uint8_t msg[LML_SIGN_DOMAIN_MAX + LML_TOKEN_MAX], sig[LML_SIGNATURE_BYTES];
    ck_assert(n <= LML_TOKEN_MAX);
    const size_t m = lml_signed_message(msg, version, payload, n);
    ck_assert(lml_sign(sig, msg, m, lt_signing_key()) == 0);
    lt_token_text(out, LML_TOKEN_MAX + 1, version, payload, n, sig);
}

void lt_token_text(char *out, size_t cap, int version, const uint8_t *payload, size_t n,
                   const uint8_t sig[LML_SIGNATURE_BYTES])
{
    ck_assert(4 + LML_B64_LEN(n) + 1 + LML_SIG_B64_LEN < cap);
    snprintf(out, cap, "LM%d.", version);
    sodium_bin2base64(out + 4, cap - 4, payload, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    size_t at = strlen(out);
    out[at++] = '.';
    sodium_bin2base64(out + at, cap - at, sig, LML_SIGNATURE_BYTES,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

void lt_random_key(uint8_t pk[LML_PUBLIC_KEY_BYTES], uint8_t sk[LML_SECRET_KEY_BYTES])
{
    uint8_t seed[LML_SEED_BYTES];
    ck_assert(lml_crypto_init() == 0);
    randombytes_buf(seed, sizeof seed);
    ck_assert(lml_keypair_from_seed(pk, sk, seed) == 0);
}

/* ---- the per-test environment ---- */

static char home[256];

void lt_setup(void)
{
    ck_assert(lml_crypto_init() == 0);
    unsetenv("LM_LICENSE");
    unsetenv("LM_LICENSE_FILE");
    const char *tmp = getenv("TMPDIR");
    snprintf(home, sizeof home, "%s/lm-license-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_msg(mkdtemp(home) != NULL, "mkdtemp: %s", strerror(errno));
    setenv("HOME", home, 1);
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

void lt_teardown(void)
{
    /* Everything under HOME: the files made here and those the library made
     * (the clock mark). FTW_PHYS: links are removed, never followed. */
    nftw(home, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *lt_home(void)
{
    return home;
}

const char *lt_write_file(const char *rel, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", home, rel);
    /* mkdir -p of the parents */
    for (char *s = path + strlen(home) + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        mkdir(path, 0700);
        *s = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fputs(text, f) >= 0 && fclose(f) == 0);
    return path;
}

void lt_install_home_license(const char *tok)
{
    char text[LML_TOKEN_MAX + 2];
    snprintf(text, sizeof text, "%s\n", tok);
    lt_write_file(".config/liquid-memory/license", text);
}
