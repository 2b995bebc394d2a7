/* lt.c - the helpers of lt.h. */
#include "lt.h"

#include <errno.h>
#include <fcntl.h>
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

const uint8_t *lt_signing_key(void)
{
    static uint8_t sk[LML_SECRET_KEY_BYTES];
    static int loaded;
    if (loaded)
        return sk;
    const char *path = getenv("LM_TEST_SIGNING_KEY");
    ck_assert_msg(path && *path, "LM_TEST_SIGNING_KEY is not set");
    char text[1025] = { 0 };
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *hex = strstr(text, "LM-SECRET-KEY-1 ");
    ck_assert_msg(hex != NULL, "%s is not a key file", path);
    uint8_t seed[LML_SEED_BYTES], pk[LML_PUBLIC_KEY_BYTES];
    size_t got;
    ck_assert(sodium_hex2bin(seed, sizeof seed, hex + 16, 64, NULL, &got, NULL) == 0 &&
              got == sizeof seed);
    ck_assert(lml_keypair_from_seed(pk, sk, seed) == 0);
    ck_assert_msg(memcmp(pk, lml_vendor_public_key, sizeof pk) == 0,
                  "%s does not sign for the public key compiled into the library", path);
    loaded = 1;
    return sk;
}

int64_t lt_now(void)
{
    return (int64_t)time(NULL);
}

lml_license lt_license(void)
{
    lml_license lic;
    memset(&lic, 0, sizeof lic);
    randombytes_buf(lic.id, sizeof lic.id);
    strcpy(lic.licensee, "Test Customer");
    lic.issued = lic.not_before = lt_now() - 3600;
    return lic;
}

void lt_issue(char out[LML_TOKEN_MAX + 1], const lml_license *lic, const uint8_t *sk)
{
    char why[256] = "";
    lml_result r = lml_token_issue(out, lic, sk ? sk : lt_signing_key(), why, sizeof why);
    ck_assert_msg(r == LML_VALID, "issue: %s", why);
}

void lt_sign_payload(char out[LML_TOKEN_MAX + 1], const uint8_t *payload, size_t n)
{
    uint8_t msg[64 + LML_TOKEN_MAX], sig[LML_SIGNATURE_BYTES];
    const size_t d = strlen(LML_SIGN_DOMAIN);
    ck_assert(n <= LML_TOKEN_MAX);
    memcpy(msg, LML_SIGN_DOMAIN, d);
    memcpy(msg + d, payload, n);
    ck_assert(lml_sign(sig, msg, d + n, lt_signing_key()) == 0);
    strcpy(out, "LM1.");
    sodium_bin2base64(out + 4, LML_TOKEN_MAX + 1 - 4, payload, n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    size_t at = strlen(out);
    ck_assert(at + 1 + LML_SIG_B64_LEN <= LML_TOKEN_MAX);
    out[at++] = '.';
    sodium_bin2base64(out + at, LML_TOKEN_MAX + 1 - at, sig, sizeof sig,
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

#define MAX_MADE 32
static char home[256];
static char made[MAX_MADE][512]; /* files and directories made, in order */
static int n_made;

void lt_setup(void)
{
    ck_assert(lml_crypto_init() == 0);
    unsetenv("LM_LICENSE");
    unsetenv("LM_LICENSE_FILE");
    const char *tmp = getenv("TMPDIR");
    snprintf(home, sizeof home, "%s/lm-license-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_msg(mkdtemp(home) != NULL, "mkdtemp: %s", strerror(errno));
    setenv("HOME", home, 1);
    n_made = 0;
}

void lt_teardown(void)
{
    for (int i = n_made - 1; i >= 0; i--)
        if (unlink(made[i]) != 0)
            rmdir(made[i]);
    rmdir(home);
}

const char *lt_home(void)
{
    return home;
}

static void remember(const char *path)
{
    ck_assert(n_made < MAX_MADE);
    snprintf(made[n_made++], sizeof made[0], "%s", path);
}

const char *lt_write_file(const char *rel, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", home, rel);
    /* mkdir -p of the parents, remembering the ones made */
    for (char *s = path + strlen(home) + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        if (mkdir(path, 0700) == 0)
            remember(path);
        *s = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fputs(text, f) >= 0 && fclose(f) == 0);
    remember(path);
    return path;
}

void lt_install_home_license(const char *tok)
{
    char text[LML_TOKEN_MAX + 2];
    snprintf(text, sizeof text, "%s\n", tok);
    lt_write_file(".config/liquid-memory/license", text);
}
