/*
 * test_policy.c - the license in force (license/policy.c, lookup.c,
 * clock.c): the lookup order, caching (verified once, no I/O afterwards),
 * expiry during a run, invalid licenses reported as such and never treated
 * as evaluation, lm_license_set / lm_license_info, the keyring (format 1,
 * the next key, an unknown key) and revocation, the clock rules and the
 * high-water mark file, lm_license_reload, and first use from 8 threads at
 * once.
 * Every test runs in its own process (fork mode), so the cache starts empty.
 */
#include "lm_impl.h"
#include "lt.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A token for licensee `who`, otherwise as lt_license. */
static void token_for(char tok[LML_TOKEN_MAX + 1], const char *who, int64_t max_seq)
{
    lml_license lic = lt_license();
    snprintf(lic.licensee, sizeof lic.licensee, "%s", who);
    lic.max_seq_len = max_seq;
    lt_issue(tok, &lic, NULL);
}

static lm_license_details info(void)
{
    lm_license_details d = { LM_SIZED(lm_license_details) };
    ck_assert_int_eq(lm_license_info(&d), LM_OK);
    return d;
}

START_TEST(no_license_is_evaluation)
{
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_EVALUATION);
    ck_assert_int_eq(d.max_seq_len, LM_EVAL_MAX_TOKENS);
    ck_assert_str_eq(d.licensee, "");
    ck_assert_str_eq(d.source, "none");
    ck_assert_int_eq(d.development_build, lml_development_build);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS), LM_OK);
    ck_assert(strstr(lm_last_error(), "evaluation mode"));
    EXPECT_ERR(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE, "LM_LICENSE_FILE");
    ck_assert(strstr(lm_last_error(), "4096") && strstr(lm_last_error(), "4097"));
    ck_assert(strstr(lm_last_error(), "~/.config/liquid-memory/license"));
}
END_TEST

START_TEST(development_build_is_marked)
{
    const int dev = strstr(lm_version(), "development build") != NULL;
    ck_assert_int_eq(dev, lml_development_build);
    ck_assert_int_eq(info().development_build, lml_development_build);
}
END_TEST

START_TEST(license_from_env_token)
{
    lml_license lic = lt_license();
    lic.max_seq_len = 5000;
    lic.features = 0x5;
    lic.expires = lt_now() + 86400;
    char tok[LML_TOKEN_MAX + 1], id[33];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "Test Customer");
    ck_assert_str_eq(d.source, "LM_LICENSE");
    sodium_bin2hex(id, sizeof id, lic.id, sizeof lic.id);
    ck_assert_str_eq(d.license_id, id);
    ck_assert_int_eq(d.issued, lic.issued);
    ck_assert_int_eq(d.not_before, lic.not_before);
    ck_assert_int_eq(d.expires, lic.expires);
    ck_assert_int_eq(d.max_seq_len, 5000);
    ck_assert_uint_eq(d.features, 0x5);
    ck_assert_str_eq(d.reason, "");
    ck_assert_int_eq(lmi_license_check(5000), LM_OK);
    EXPECT_ERR(lmi_license_check(5001), LM_ERR_LICENSE, "allows 5000 tokens");
    ck_assert(strstr(lm_last_error(), "Test Customer") && strstr(lm_last_error(), "5001"));
}
END_TEST

START_TEST(license_from_file)
{
    char tok[LML_TOKEN_MAX + 1], text[LML_TOKEN_MAX + 8];
    token_for(tok, "From File", 0);
    snprintf(text, sizeof text, "\n  %s  \n", tok); /* whitespace around it is fine */
    const char *path = lt_write_file("elsewhere/token.txt", text);
    char want[600];
    snprintf(want, sizeof want, "LM_LICENSE_FILE=%s", path);
    setenv("LM_LICENSE_FILE", path, 1);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "From File");
    ck_assert_str_eq(d.source, want);
    ck_assert_int_eq(d.max_seq_len, 0);
    ck_assert_int_eq(lmi_license_check(1 << 20), LM_OK); /* unlimited */
}
END_TEST

START_TEST(license_from_home)
{
    char tok[LML_TOKEN_MAX + 1], want[600];
    token_for(tok, "From Home", 0);
    lt_install_home_license(tok);
    snprintf(want, sizeof want, "%s/.config/liquid-memory/license", lt_home());
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "From Home");
    ck_assert_str_eq(d.source, want);
}
END_TEST

/* lm_license_set, then LM_LICENSE, then LM_LICENSE_FILE, then the home file. */
START_TEST(lookup_order)
{
    char a[LML_TOKEN_MAX + 1], b[LML_TOKEN_MAX + 1], c[LML_TOKEN_MAX + 1], s[LML_TOKEN_MAX + 1];
    token_for(a, "Env Token", 0);
    token_for(b, "Env File", 0);
    token_for(c, "Home File", 0);
    token_for(s, "Set By Call", 0);
    lt_install_home_license(c);
    setenv("LM_LICENSE_FILE", lt_write_file("b", b), 1);
    setenv("LM_LICENSE", a, 1);
    switch (_i) {
    case 0: ck_assert_int_eq(lm_license_set(s), LM_OK); break;
    case 1: break;
    case 2: unsetenv("LM_LICENSE"); break;
    case 3: unsetenv("LM_LICENSE"), unsetenv("LM_LICENSE_FILE"); break;
    }
    static const char *const want[] = { "Set By Call", "Env Token", "Env File", "Home File" };
    ck_assert_str_eq(info().licensee, want[_i]);
}
END_TEST

START_TEST(empty_variables_are_unset)
{
    char c[LML_TOKEN_MAX + 1];
    token_for(c, "Home File", 0);
    lt_install_home_license(c);
    setenv("LM_LICENSE", "", 1);
    setenv("LM_LICENSE_FILE", "", 1);
    ck_assert_str_eq(info().licensee, "Home File");
}
END_TEST

/* Each kind of bad license: mode INVALID with the reason, and every check
 * refused with that reason, not evaluation mode. */
START_TEST(invalid_license_is_not_evaluation)
{
    char tok[LML_TOKEN_MAX + 1], path[600];
    const char *want = NULL;
    lml_license lic = lt_license();
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    switch (_i) {
    case 0:
        setenv("LM_LICENSE", "not a token", 1);
        want = "malformed";
        break;
    case 1:
        lt_random_key(pk, sk);
        lic.version = 1; /* names no key: the signature is what fails */
        lt_issue(tok, &lic, sk);
        setenv("LM_LICENSE", tok, 1);
        want = "bad signature";
        break;
    case 2:
        lic.issued = lic.not_before = lt_now() - 10 * 86400;
        lic.expires = lt_now() - 86400;
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "expired";
        break;
    case 3:
        lic.not_before = lt_now() + 86400;
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "not yet valid";
        break;
    case 4:
        lic.host_bound = 1;
        randombytes_buf(lic.host, sizeof lic.host);
        lt_issue(tok, &lic, NULL);
        setenv("LM_LICENSE", tok, 1);
        want = "wrong host";
        break;
    case 5:
        snprintf(path, sizeof path, "%s/no/such/file", lt_home());
        setenv("LM_LICENSE_FILE", path, 1);
        want = "no/such/file";
        break;
    case 6:
        lt_install_home_license("LM1.garbage");
        want = "malformed";
        break;
    }
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_INVALID);
    ck_assert_msg(*d.reason, "no reason given");
    EXPECT_ERR(lmi_license_check(1), LM_ERR_LICENSE, want);
    ck_assert(!strstr(lm_last_error(), "evaluation mode allows"));
}
END_TEST

/* Verified once: changing or removing the source afterwards changes nothing. */
START_TEST(verified_once_and_cached)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Cached", 100);
    const char *path = lt_write_file("lic", tok);
    char saved[600];
    snprintf(saved, sizeof saved, "%s", path);
    setenv("LM_LICENSE_FILE", saved, 1);
    ck_assert_int_eq(lmi_license_check(100), LM_OK);
    ck_assert(unlink(saved) == 0);
    setenv("LM_LICENSE", "garbage", 1);
    ck_assert_int_eq(lmi_license_check(100), LM_OK);
    EXPECT_ERR(lmi_license_check(101), LM_ERR_LICENSE, "Cached");
    ck_assert_str_eq(info().licensee, "Cached");
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
}
END_TEST

/* The time window is checked on every call: a license that expires while
 * the process runs stops working then. */
START_TEST(expiry_during_run)
{
    lml_license lic = lt_license();
    lic.expires = lt_now() + 2;
    char tok[LML_TOKEN_MAX + 1];
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    ck_assert_int_eq(lmi_license_check(10), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    const struct timespec tick = { 0, 50 * 1000 * 1000 };
    while (lt_now() < lic.expires)
        nanosleep(&tick, NULL);
    EXPECT_ERR(lmi_license_check(10), LM_ERR_LICENSE, "expired");
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_INVALID);
    ck_assert(strstr(d.reason, "expired"));
    ck_assert_str_eq(d.licensee, "Test Customer"); /* the fields are still shown */
}
END_TEST

START_TEST(set_and_forget)
{
    char tok[LML_TOKEN_MAX + 1], padded[LML_TOKEN_MAX + 8];
    token_for(tok, "Set", 0);
    snprintf(padded, sizeof padded, " %s\n", tok);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE);
    ck_assert_int_eq(lm_license_set(padded), LM_OK);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_OK);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.source, "lm_license_set");
    ck_assert_int_eq(lm_license_set(NULL), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_EVALUATION);
    ck_assert_int_eq(lmi_license_check(LM_EVAL_MAX_TOKENS + 1), LM_ERR_LICENSE);
}
END_TEST

/* A token lm_license_set refuses leaves the license in force as it was. */
START_TEST(set_refuses_bad_tokens)
{
    char good[LML_TOKEN_MAX + 1], tok[LML_TOKEN_MAX + 1];
    token_for(good, "Good", 0);
    ck_assert_int_eq(lm_license_set(good), LM_OK);
    EXPECT_ERR(lm_license_set(""), LM_ERR_INVALID_ARG, "empty");
    EXPECT_ERR(lm_license_set("hello"), LM_ERR_INVALID_ARG, "malformed");
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    lt_random_key(pk, sk);
    lml_license lic = lt_license();
    lt_issue(tok, &lic, sk);
    EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "unknown key");
    lic.version = 1;
    lt_issue(tok, &lic, sk);
    EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "bad signature");
    lic.version = 2;
    lic.issued = lic.not_before = 1000;
    lic.expires = 2000;
    lt_issue(tok, &lic, NULL);
    EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "expired");
    ck_assert(strstr(lm_last_error(), "unchanged"));
    size_t mb = 1 << 20;
    char *big = malloc(mb + 1);
    ck_assert(big != NULL);
    memset(big, 'A', mb);
    big[mb] = '\0';
    EXPECT_ERR(lm_license_set(big), LM_ERR_INVALID_ARG, "longer than");
    free(big);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "Good");
}
END_TEST

/* A license set by the program replaces a bad one from the environment. */
START_TEST(set_overrides_invalid_env)
{
    setenv("LM_LICENSE", "LM1.bad.bad", 1);
    ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Set", 0);
    ck_assert_int_eq(lm_license_set(tok), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    ck_assert_int_eq(lmi_license_check(1), LM_OK);
    ck_assert_int_eq(lm_license_set(NULL), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
}
END_TEST

START_TEST(info_null)
{
    EXPECT_ERR(lm_license_info(NULL), LM_ERR_INVALID_ARG, "NULL");
}
END_TEST

/* ---- keys, revocation, clock ---- */

/* The library takes format 1 tokens (the key that signed them is in the
 * ring) and tokens of the next key; it refuses an unknown key and a revoked
 * license, each with its reason. */
START_TEST(keyring_and_revocation)
{
    char tok[LML_TOKEN_MAX + 1];
    lml_license lic = lt_license();
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    const char *want_reason = NULL;
    lm_license_mode want = LM_LICENSE_LICENSED;
    switch (_i) {
    case 0: lic.version = 1; lt_issue(tok, &lic, NULL); break;     /* format 1, current key */
    case 1: lt_issue(tok, &lic, lt_key(1)); break;                 /* the next key */
    case 2: lic.version = 1; lt_issue(tok, &lic, lt_key(1)); break; /* format 1, next key */
    case 3:
        lt_random_key(pk, sk);
        lt_issue(tok, &lic, sk);
        want = LM_LICENSE_INVALID, want_reason = "unknown key";
        break;
    case 4:
        memcpy(lic.id, lml_revoked_ids[0], LML_ID_BYTES);
        lt_issue(tok, &lic, NULL);
        want = LM_LICENSE_INVALID, want_reason = "revoked";
        break;
    }
    setenv("LM_LICENSE", tok, 1);
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, want);
    if (want_reason) {
        EXPECT_ERR(lmi_license_check(1), LM_ERR_LICENSE, want_reason);
        EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, want_reason);
    } else {
        ck_assert_int_eq(lmi_license_check(1 << 20), LM_OK);
        ck_assert_int_eq(lm_license_set(tok), LM_OK);
    }
}
END_TEST

/* A license issued in the future (the clock set back to before it was
 * issued) is refused when it expires, not when it never does. */
START_TEST(clock_behind_issue_time_refuses_expiring_licenses)
{
    char tok[LML_TOKEN_MAX + 1];
    lml_license lic = lt_license();
    lic.issued = lt_now() + 3 * 86400;
    lic.not_before = lt_now() - 86400;
    lic.expires = _i ? 0 : lt_now() + 30 * 86400;
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    if (_i) {
        ck_assert_int_eq(lmi_license_check(10), LM_OK);
        ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    } else {
        EXPECT_ERR(lmi_license_check(10), LM_ERR_LICENSE, "clock");
        ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
        EXPECT_ERR(lm_license_set(tok), LM_ERR_LICENSE, "clock rolled back");
    }
}
END_TEST

static int64_t read_mark(void)
{
    char path[600], text[64];
    snprintf(path, sizeof path, "%s/.config/liquid-memory/clock", lt_home());
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    int64_t t;
    ck_assert_int_eq(lml_clock_mark_parse(text, n, &t), 0);
    return t;
}

/* The high-water mark: a time recorded on this machine later than the
 * clock by more than a day refuses a license that expires (the clock was
 * set back after it was recorded); one without expiry is not refused. A
 * license that expires records now. */
START_TEST(clock_mark_file)
{
    char tok[LML_TOKEN_MAX + 1], text[64];
    lml_license lic = lt_license();
    lic.expires = _i == 1 ? 0 : lt_now() + 30 * 86400;
    lt_issue(tok, &lic, NULL);
    setenv("LM_LICENSE", tok, 1);
    if (_i == 2) {
        /* no mark yet: using the license records the time (~/.config exists) */
        lt_write_file(".config/placeholder", "");
        const int64_t before = lt_now();
        ck_assert_int_eq(lmi_license_check(10), LM_OK);
        const int64_t mark = read_mark();
        ck_assert(mark >= before && mark <= lt_now());
        return;
    }
    snprintf(text, sizeof text, "%lld\n", (long long)(lt_now() + 2 * 86400));
    lt_write_file(".config/liquid-memory/clock", text);
    if (_i == 1) {
        ck_assert_int_eq(lmi_license_check(10), LM_OK);
        return;
    }
    EXPECT_ERR(lmi_license_check(10), LM_ERR_LICENSE, "already seen");
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_INVALID);
    ck_assert(strstr(d.reason, "clock"));
    /* the mark is never moved backwards */
    ck_assert(read_mark() > lt_now() + 86400);
}
END_TEST

/* The mark is replaced by renaming, so a symbolic link in its place is
 * replaced, never written through. */
START_TEST(clock_mark_never_follows_a_link)
{
    char tok[LML_TOKEN_MAX + 1], link_path[600];
    const char *target = lt_write_file("target", "untouched\n");
    char target_copy[600];
    snprintf(target_copy, sizeof target_copy, "%s", target);
    lt_write_file(".config/liquid-memory/placeholder", "");
    snprintf(link_path, sizeof link_path, "%s/.config/liquid-memory/clock", lt_home());
    ck_assert(symlink(target_copy, link_path) == 0);
    lml_license lic = lt_license();
    lic.expires = lt_now() + 86400;
    lt_issue(tok, &lic, NULL);
    ck_assert_int_eq(lm_license_set(tok), LM_OK);
    FILE *f = fopen(target_copy, "r");
    char text[64] = "";
    ck_assert(f && fgets(text, sizeof text, f));
    fclose(f);
    ck_assert_str_eq(text, "untouched\n");
    ck_assert(read_mark() >= lt_now() - 5); /* the link became the mark file */
    unlink(link_path);
}
END_TEST

/* ---- lm_license_reload ---- */

/* A renewed license file is picked up without a restart. */
START_TEST(reload_picks_up_a_renewed_file)
{
    char a[LML_TOKEN_MAX + 1], b[LML_TOKEN_MAX + 1], path[600];
    token_for(a, "First Year", 5000);
    token_for(b, "Second Year", 9000);
    snprintf(path, sizeof path, "%s", lt_write_file("lic", a));
    setenv("LM_LICENSE_FILE", path, 1);
    ck_assert_str_eq(info().licensee, "First Year");
    EXPECT_ERR(lmi_license_check(9000), LM_ERR_LICENSE, "allows 5000");
    lt_write_file("lic", b);
    ck_assert_str_eq(info().licensee, "First Year"); /* cached until reloaded */
    ck_assert_int_eq(lm_license_reload(), LM_OK);
    ck_assert_str_eq(info().licensee, "Second Year");
    ck_assert_int_eq(lmi_license_check(9000), LM_OK);
}
END_TEST

/* An expired license is replaced by its renewal: INVALID -> LICENSED. */
START_TEST(reload_renews_an_expired_license)
{
    char tok[LML_TOKEN_MAX + 1];
    lml_license lic = lt_license();
    lic.issued = lic.not_before = lt_now() - 10 * 86400;
    lic.expires = lt_now() - 86400;
    lt_issue(tok, &lic, NULL);
    lt_install_home_license(tok);
    ck_assert_int_eq(info().mode, LM_LICENSE_INVALID);
    lic = lt_license();
    lic.expires = lt_now() + 365 * 86400;
    lt_issue(tok, &lic, NULL);
    lt_install_home_license(tok);
    ck_assert_int_eq(lm_license_reload(), LM_OK);
    ck_assert_int_eq(info().mode, LM_LICENSE_LICENSED);
    ck_assert_int_eq(lmi_license_check(10), LM_OK);
}
END_TEST

/* A reload that finds nothing usable leaves the license in force as it was. */
START_TEST(reload_keeps_a_working_license)
{
    char good[LML_TOKEN_MAX + 1], tok[LML_TOKEN_MAX + 1], path[600];
    token_for(good, "Working", 0);
    snprintf(path, sizeof path, "%s", lt_write_file("lic", good));
    setenv("LM_LICENSE_FILE", path, 1);
    ck_assert_int_eq(lmi_license_check(1 << 20), LM_OK);
    lml_license lic = lt_license();
    switch (_i) {
    case 0: lt_write_file("lic", "garbage"); break;
    case 1: unlink(path); break;
    case 2:
        lic.issued = lic.not_before = 1000, lic.expires = 2000;
        lt_issue(tok, &lic, NULL);
        lt_write_file("lic", tok);
        break;
    case 3: unsetenv("LM_LICENSE_FILE"); break; /* no source at all */
    }
    static const char *const want[] = { "malformed", "cannot open", "expired", "no license found" };
    static const lm_status want_st[] = { LM_ERR_INVALID_ARG, LM_ERR_LICENSE, LM_ERR_LICENSE,
                                         LM_ERR_LICENSE };
    EXPECT_ERR(lm_license_reload(), want_st[_i], want[_i]);
    ck_assert(strstr(lm_last_error(), "unchanged"));
    lm_license_details d = info();
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "Working");
    ck_assert_int_eq(lmi_license_check(1 << 20), LM_OK);
}
END_TEST

/* lm_license_set keeps precedence; the reloaded license applies once it is
 * forgotten. A reload before first use works as the first lookup would. */
START_TEST(reload_and_set)
{
    char s[LML_TOKEN_MAX + 1], e[LML_TOKEN_MAX + 1];
    token_for(s, "Set", 0);
    token_for(e, "Env", 0);
    setenv("LM_LICENSE", e, 1);
    ck_assert_int_eq(lm_license_reload(), LM_OK); /* before any other call */
    ck_assert_str_eq(info().licensee, "Env");
    ck_assert_int_eq(lm_license_set(s), LM_OK);
    ck_assert_int_eq(lm_license_reload(), LM_OK);
    ck_assert_str_eq(info().licensee, "Set");
    ck_assert_int_eq(lm_license_set(NULL), LM_OK);
    ck_assert_str_eq(info().licensee, "Env");
}
END_TEST

/* ---- threads ---- */

#define N_THREADS 8
static pthread_barrier_t start;
static atomic_int stop;

typedef struct first_use {
    lm_status at_cap, over_cap, status_info;
    lm_license_details d;
    char message[512];
} first_use;

static void *first_use_thread(void *arg)
{
    first_use *r = arg;
    pthread_barrier_wait(&start);
    r->at_cap = lmi_license_check(5000);
    r->over_cap = lmi_license_check(5001);
    snprintf(r->message, sizeof r->message, "%s", lm_last_error());
    r->d.struct_size = sizeof r->d;
    r->status_info = lm_license_info(&r->d);
    return NULL;
}

/* 8 threads make the first call at once: one verification, the same answer. */
START_TEST(first_use_from_8_threads)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Threads", 5000);
    setenv("LM_LICENSE", tok, 1);
    pthread_t t[N_THREADS];
    first_use r[N_THREADS];
    ck_assert(pthread_barrier_init(&start, NULL, N_THREADS) == 0);
    for (int i = 0; i < N_THREADS; i++)
        ck_assert(pthread_create(&t[i], NULL, first_use_thread, &r[i]) == 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N_THREADS; i++) {
        ck_assert_int_eq(r[i].at_cap, LM_OK);
        ck_assert_int_eq(r[i].over_cap, LM_ERR_LICENSE);
        ck_assert_int_eq(r[i].status_info, LM_OK);
        ck_assert(strstr(r[i].message, "allows 5000 tokens"));
        ck_assert_int_eq(r[i].d.mode, LM_LICENSE_LICENSED);
        ck_assert_str_eq(r[i].d.licensee, "Threads");
        ck_assert_str_eq(r[i].d.license_id, r[0].d.license_id);
    }
}
END_TEST

static void *checker_thread(void *arg)
{
    int *bad = arg;
    pthread_barrier_wait(&start);
    while (!stop) {
        /* 4096 is allowed in every state this test passes through */
        if (lmi_license_check(LM_EVAL_MAX_TOKENS) != LM_OK)
            (*bad)++;
        lm_status st = lmi_license_check(LM_EVAL_MAX_TOKENS + 1);
        if (st != LM_OK && st != LM_ERR_LICENSE)
            (*bad)++;
    }
    return NULL;
}

/* Checks on 8 threads while the main thread sets and forgets a license. */
START_TEST(set_while_checking)
{
    char tok[LML_TOKEN_MAX + 1];
    token_for(tok, "Toggled", 0);
    pthread_t t[N_THREADS];
    int bad[N_THREADS] = { 0 };
    stop = 0;
    ck_assert(pthread_barrier_init(&start, NULL, N_THREADS + 1) == 0);
    for (int i = 0; i < N_THREADS; i++)
        ck_assert(pthread_create(&t[i], NULL, checker_thread, &bad[i]) == 0);
    pthread_barrier_wait(&start);
    for (int k = 0; k < 200; k++) {
        ck_assert_int_eq(lm_license_set(k % 2 ? NULL : tok), LM_OK);
        ck_assert_int_eq(info().mode, k % 2 ? LM_LICENSE_EVALUATION : LM_LICENSE_LICENSED);
    }
    stop = 1;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(bad[i], 0);
    }
    pthread_barrier_destroy(&start);
}
END_TEST

Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("lookup");
    tcase_add_checked_fixture(tc, lt_setup, lt_teardown);
    tcase_add_test(tc, no_license_is_evaluation);
    tcase_add_test(tc, development_build_is_marked);
    tcase_add_test(tc, license_from_env_token);
    tcase_add_test(tc, license_from_file);
    tcase_add_test(tc, license_from_home);
    tcase_add_loop_test(tc, lookup_order, 0, 4);
    tcase_add_test(tc, empty_variables_are_unset);
    tcase_add_loop_test(tc, invalid_license_is_not_evaluation, 0, 7);
    tcase_add_test(tc, verified_once_and_cached);
    tcase_add_test(tc, expiry_during_run);
    tcase_add_test(tc, set_and_forget);
    tcase_add_test(tc, set_refuses_bad_tokens);
    tcase_add_test(tc, set_overrides_invalid_env);
    tcase_add_test(tc, info_null);
    suite_add_tcase(s, tc);
    TCase *tk = tcase_create("keys and clock");
    tcase_add_checked_fixture(tk, lt_setup, lt_teardown);
    if (lt_have_keyring())
        tcase_add_loop_test(tk, keyring_and_revocation, 0, 5);
    else
        printf("NOT RUN: keyring_and_revocation needs a next key and a revoked id\n");
    tcase_add_loop_test(tk, clock_behind_issue_time_refuses_expiring_licenses, 0, 2);
    tcase_add_loop_test(tk, clock_mark_file, 0, 3);
    tcase_add_test(tk, clock_mark_never_follows_a_link);
    suite_add_tcase(s, tk);
    TCase *tr = tcase_create("reload");
    tcase_add_checked_fixture(tr, lt_setup, lt_teardown);
    tcase_add_test(tr, reload_picks_up_a_renewed_file);
    tcase_add_test(tr, reload_renews_an_expired_license);
    tcase_add_loop_test(tr, reload_keeps_a_working_license, 0, 4);
    tcase_add_test(tr, reload_and_set);
    suite_add_tcase(s, tr);
    TCase *th = tcase_create("threads");
    tcase_add_checked_fixture(th, lt_setup, lt_teardown);
    tcase_set_timeout(th, 60);
    tcase_add_test(th, first_use_from_8_threads);
    tcase_add_test(th, set_while_checking);
    suite_add_tcase(s, th);
    return s;
}
