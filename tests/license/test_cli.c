/*
 * test_cli.c - lm-license as the vendor uses it (the binary named by
 * LM_TEST_CLI, run in a child process): keygen writes a 0600 secret and
 * refuses to overwrite, a key others can read is refused, issue -> verify
 * round trips, verify refuses what the library refuses (exit 1 with the
 * reason), show says UNVERIFIED, --help for every command, usage errors
 * exit 2, and no output ever contains the secret key.
 */
#include "lt.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct run_result {
    int status;        /* exit status, or -1 when it did not exit normally */
    char out[8192], err[8192];
} run_result;

/* Hex of the secret made by make_key: no output may contain it. */
static char secret_hex[2 * LML_SEED_BYTES + 1];

static void slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    ck_assert(f != NULL);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
}

/* Runs lm-license with args (NULL-terminated), standard input from in_path
 * (or /dev/null). */
static run_result run_in(const char *in_path, const char *const *args)
{
    const char *cli = getenv("LM_TEST_CLI");
    ck_assert_msg(cli && *cli, "LM_TEST_CLI is not set");
    char out_path[600], err_path[600];
    snprintf(out_path, sizeof out_path, "%s/.out", lt_home());
    snprintf(err_path, sizeof err_path, "%s/.err", lt_home());
    const char *argv[32] = { cli };
    int n = 1;
    while (args[n - 1]) {
        ck_assert(n < 31);
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int in = open(in_path ? in_path : "/dev/null", O_RDONLY);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(err, 2) < 0)
            _exit(127);
        execv(cli, (char *const *)argv);
        _exit(127);
    }
    int ws;
    ck_assert(waitpid(pid, &ws, 0) == pid);
    run_result r;
    r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
    slurp(out_path, r.out, sizeof r.out);
    slurp(err_path, r.err, sizeof r.err);
    if (*secret_hex)
        ck_assert_msg(!strstr(r.out, secret_hex) && !strstr(r.err, secret_hex),
                      "lm-license %s printed the secret key", args[0]);
    return r;
}

#define RUN(...) run_in(NULL, (const char *const[]){ __VA_ARGS__, NULL })

/* The secret seed stored in a key file, as hex. */
static void secret_of(const char *secret, char hex[2 * LML_SEED_BYTES + 1])
{
    char text[1024];
    FILE *f = fopen(secret, "r");
    ck_assert(f != NULL);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    const char *at = strstr(text, "LM-SECRET-KEY-1 ");
    ck_assert(at != NULL);
    snprintf(hex, 2 * LML_SEED_BYTES + 1, "%.64s", at + 16);
}

/* keygen into $HOME/vendor; returns the paths of the two files. */
static void make_key(char secret[600], char pub[600])
{
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s/vendor", lt_home());
    snprintf(secret, 600, "%s.secret", prefix);
    snprintf(pub, 600, "%s.pub", prefix);
    run_result r = RUN("keygen", "--out", prefix);
    ck_assert_msg(r.status == 0, "keygen: %s", r.err);
    secret_of(secret, secret_hex);
}

static void read_pub(const char *pub, uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    char text[200];
    FILE *f = fopen(pub, "r");
    ck_assert(f != NULL);
    ck_assert(fgets(text, sizeof text, f) != NULL);
    fclose(f);
    ck_assert_uint_eq(strlen(text), 65);
    ck_assert(sodium_hex2bin(pk, LML_PUBLIC_KEY_BYTES, text, 64, NULL, NULL, NULL) == 0);
}

/* The first line of s, without its newline, into out. */
static void first_line(const char *s, char *out, size_t cap)
{
    size_t n = strcspn(s, "\n");
    ck_assert(n < cap);
    memcpy(out, s, n);
    out[n] = '\0';
}

START_TEST(keygen_writes_a_private_key)
{
    char secret[600], pub[600], prefix[600];
    make_key(secret, pub);
    struct stat sb;
    ck_assert(stat(secret, &sb) == 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    ck_assert(stat(pub, &sb) == 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0644);
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    read_pub(pub, pk);
    /* the seed in the secret file derives the public key in the .pub file */
    uint8_t seed[LML_SEED_BYTES], pk2[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    ck_assert(sodium_hex2bin(seed, sizeof seed, secret_hex, 64, NULL, NULL, NULL) == 0);
    ck_assert(lml_keypair_from_seed(pk2, sk, seed) == 0);
    ck_assert(memcmp(pk, pk2, sizeof pk) == 0);
    /* a second keygen refuses and leaves both files as they were */
    snprintf(prefix, sizeof prefix, "%s/vendor", lt_home());
    run_result r = RUN("keygen", "--out", prefix);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.err, "refusing to overwrite"));
    uint8_t pk3[LML_PUBLIC_KEY_BYTES];
    char hex[2 * LML_SEED_BYTES + 1];
    read_pub(pub, pk3);
    secret_of(secret, hex);
    ck_assert(memcmp(pk, pk3, sizeof pk) == 0);
    ck_assert_str_eq(hex, secret_hex);
    /* pubkey prints what the .pub file holds */
    r = RUN("pubkey", "--key", secret);
    ck_assert_int_eq(r.status, 0);
    char want[200];
    FILE *f = fopen(pub, "r");
    ck_assert(f && fgets(want, sizeof want, f));
    fclose(f);
    ck_assert_str_eq(r.out, want);
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(key_readable_by_others_is_refused)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    const mode_t modes[] = { 0640, 0604, 0660, 0606 };
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        ck_assert(chmod(secret, modes[i]) == 0);
        run_result r = RUN("issue", "--key", secret, "--licensee", "X", "--days", "1");
        ck_assert_int_eq(r.status, 1);
        ck_assert_msg(strstr(r.err, "chmod 600"), "%s", r.err);
        ck_assert_str_eq(r.out, ""); /* no token */
        r = RUN("pubkey", "--key", secret);
        ck_assert_int_eq(r.status, 1);
    }
    ck_assert(chmod(secret, 0600) == 0);
    ck_assert_int_eq(RUN("issue", "--key", secret, "--licensee", "X", "--days", "1").status, 0);
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(issue_then_verify)
{
    char secret[600], pub[600], tok[LML_INPUT_MAX + 1];
    make_key(secret, pub);
    const int64_t before = lt_now();
    run_result r = RUN("issue", "--key", secret, "--licensee", "ACME Corp", "--days", "30",
                       "--max-seq-len", "65536", "--features", "0x3");
    ck_assert_msg(r.status == 0, "%s", r.err);
    first_line(r.out, tok, sizeof tok);
    ck_assert(strstr(r.err, "licensee:     ACME Corp")); /* the fields on stderr */

    /* the library's verifier agrees, with the fields asked for */
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    read_pub(pub, pk);
    lml_license lic;
    char why[256];
    ck_assert_int_eq(lml_token_verify(tok, strlen(tok), pk, &lic, why, sizeof why), LML_VALID);
    ck_assert_str_eq(lic.licensee, "ACME Corp");
    ck_assert_int_eq(lic.max_seq_len, 65536);
    ck_assert_uint_eq(lic.features, 3);
    ck_assert(lic.not_before >= before && lic.not_before <= lt_now());
    ck_assert_int_eq(lic.expires - lic.not_before, 30 * 86400);
    ck_assert_int_eq(lic.host_bound, 0);

    r = RUN("verify", "--pubkey", pub, tok);
    ck_assert_msg(r.status == 0, "%s%s", r.out, r.err);
    ck_assert(strstr(r.out, "status:       valid"));
    ck_assert(strstr(r.out, "licensee:     ACME Corp"));
    ck_assert(strstr(r.out, "max seq len:  65536 tokens"));
    ck_assert(strstr(r.out, "features:     0x0000000000000003"));
    /* the key as hex, the token from a file and from standard input */
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, pk, sizeof pk);
    const char *path = lt_write_file("token", tok);
    char saved[600];
    snprintf(saved, sizeof saved, "%s", path);
    ck_assert_int_eq(RUN("verify", "--pubkey", hex, "--file", saved).status, 0);
    ck_assert_int_eq(run_in(saved, (const char *const[]){ "verify", "--pubkey", hex, "--file",
                                                            "-", NULL }).status, 0);
    /* --out writes the token to a file */
    char out_path[600];
    snprintf(out_path, sizeof out_path, "%s/issued", lt_home());
    r = RUN("issue", "--key", secret, "--licensee", "B", "--no-expiry", "--out", out_path);
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out, "");
    ck_assert_int_eq(RUN("verify", "--pubkey", pub, "--file", out_path).status, 0);
    unlink(out_path), unlink(secret), unlink(pub);
}
END_TEST

START_TEST(verify_refuses)
{
    char secret[600], pub[600], tok[LML_INPUT_MAX + 1], bad[LML_INPUT_MAX + 1];
    make_key(secret, pub);
    run_result r = RUN("issue", "--key", secret, "--licensee", "ACME", "--days", "30");
    first_line(r.out, tok, sizeof tok);

    /* altered: refused, and no fields shown since nothing vouches for them */
    snprintf(bad, sizeof bad, "%s", tok);
    bad[strlen(bad) - 10] = bad[strlen(bad) - 10] == 'A' ? 'B' : 'A';
    r = RUN("verify", "--pubkey", pub, bad);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: bad signature"));
    ck_assert(!strstr(r.out, "licensee:"));
    /* another key */
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    char hex[65];
    lt_random_key(pk, sk);
    sodium_bin2hex(hex, sizeof hex, pk, sizeof pk);
    ck_assert_int_eq(RUN("verify", "--pubkey", hex, tok).status, 1);
    /* expired: refused, the signed fields shown */
    r = RUN("issue", "--key", secret, "--licensee", "Old", "--not-before", "2001-01-01",
            "--expires", "2002-01-01");
    ck_assert_int_eq(r.status, 0);
    first_line(r.out, tok, sizeof tok);
    r = RUN("verify", "--pubkey", pub, tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: expired (the license expired on 2002-01-01 00:00:00 UTC)"));
    ck_assert(strstr(r.out, "licensee:     Old"));
    /* not yet valid */
    r = RUN("issue", "--key", secret, "--licensee", "Future", "--not-before", "2999-01-01",
            "--days", "1");
    first_line(r.out, tok, sizeof tok);
    r = RUN("verify", "--pubkey", pub, tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: not yet valid"));
    /* bound to another machine */
    uint8_t other[LML_HOST_BYTES];
    char other_hex[65];
    randombytes_buf(other, sizeof other);
    sodium_bin2hex(other_hex, sizeof other_hex, other, sizeof other);
    r = RUN("issue", "--key", secret, "--licensee", "Elsewhere", "--days", "1", "--host",
            other_hex);
    first_line(r.out, tok, sizeof tok);
    r = RUN("verify", "--pubkey", pub, tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: wrong host"));
    ck_assert(strstr(r.out, other_hex));
    /* bound to this machine, with the id host-id prints */
    r = RUN("host-id");
    uint8_t here[LML_HOST_BYTES];
    char why[256];
    if (lml_host_id(here, why, sizeof why) == 0) {
        char here_hex[65];
        sodium_bin2hex(here_hex, sizeof here_hex, here, sizeof here);
        ck_assert_int_eq(r.status, 0);
        first_line(r.out, bad, sizeof bad);
        ck_assert_str_eq(bad, here_hex);
        r = RUN("issue", "--key", secret, "--licensee", "Here", "--days", "1", "--host", bad);
        first_line(r.out, tok, sizeof tok);
        ck_assert_int_eq(RUN("verify", "--pubkey", pub, tok).status, 0);
    } else {
        ck_assert_int_eq(r.status, 1);
        ck_assert(strstr(r.err, "machine id"));
    }
    /* not a token at all */
    r = RUN("verify", "--pubkey", pub, "hello");
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: malformed token"));
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(show_is_unverified)
{
    char secret[600], pub[600], tok[LML_INPUT_MAX + 1];
    make_key(secret, pub);
    run_result r = RUN("issue", "--key", secret, "--licensee", "Shown", "--days", "3");
    first_line(r.out, tok, sizeof tok);
    r = RUN("show", tok);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "UNVERIFIED"));
    ck_assert(strstr(r.out, "licensee:     Shown"));
    /* a forged signature still shows, still labelled */
    tok[strlen(tok) - 5] = tok[strlen(tok) - 5] == 'A' ? 'B' : 'A';
    r = RUN("show", tok);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "UNVERIFIED"));
    r = RUN("show", "LM1.x");
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "cannot decode"));
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(help_for_every_command)
{
    static const char *const commands[] = { "keygen", "pubkey", "issue", "verify", "show",
                                            "host-id" };
    run_result r = RUN("--help");
    ck_assert_int_eq(r.status, 0);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        ck_assert(strstr(r.out, commands[i]));
        run_result h = RUN(commands[i], "--help");
        char want[64];
        snprintf(want, sizeof want, "usage: lm-license %s", commands[i]);
        ck_assert_int_eq(h.status, 0);
        ck_assert_msg(strncmp(h.out, want, strlen(want)) == 0, "%s", h.out);
    }
}
END_TEST

START_TEST(usage_errors_exit_2)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    ck_assert_int_eq(run_in(NULL, (const char *const[]){ NULL }).status, 2);
    ck_assert_int_eq(RUN("frobnicate").status, 2);
    ck_assert_int_eq(RUN("issue", "--key", secret, "--days", "1").status, 2); /* no licensee */
    ck_assert_int_eq(RUN("issue", "--key", secret, "--licensee", "X").status, 2); /* no expiry */
    ck_assert_int_eq(
        RUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--no-expiry").status, 2);
    ck_assert_int_eq(
        RUN("issue", "--key", secret, "--licensee", "X", "--expires", "2025-02-30").status, 2);
    ck_assert_int_eq(
        RUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--host", "abc").status,
        2);
    ck_assert_int_eq(
        RUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--max-seq-len", "-1")
            .status,
        2);
    ck_assert_int_eq(
        RUN("issue", "--key", secret, "--licensee", "bell\a", "--days", "1").status, 2);
    ck_assert_int_eq(RUN("issue", "--key", secret, "--licensee", "X", "--bogus").status, 2);
    ck_assert_int_eq(RUN("verify", "LM1.a.b").status, 2); /* no --pubkey */
    ck_assert_int_eq(RUN("keygen").status, 2);
    unlink(secret), unlink(pub);
}
END_TEST

/* A token issued by the tool with the build's key is what the library takes. */
START_TEST(tool_token_is_accepted_by_the_library)
{
    run_result r = RUN("issue", "--key", getenv("LM_TEST_SIGNING_KEY"), "--licensee",
                       "From The Tool", "--days", "2", "--max-seq-len", "5000");
    ck_assert_msg(r.status == 0, "%s", r.err);
    char tok[LML_INPUT_MAX + 1];
    first_line(r.out, tok, sizeof tok);
    ck_assert_int_eq(lm_license_set(tok), LM_OK);
    lm_license_details d = { LM_SIZED(lm_license_details) };
    ck_assert_int_eq(lm_license_info(&d), LM_OK);
    ck_assert_int_eq(d.mode, LM_LICENSE_LICENSED);
    ck_assert_str_eq(d.licensee, "From The Tool");
    ck_assert_int_eq(d.max_seq_len, 5000);
    ck_assert_int_eq(d.expires - d.not_before, 2 * 86400);
}
END_TEST

Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("lm-license");
    tcase_add_checked_fixture(tc, lt_setup, lt_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, keygen_writes_a_private_key);
    tcase_add_test(tc, key_readable_by_others_is_refused);
    tcase_add_test(tc, issue_then_verify);
    tcase_add_test(tc, verify_refuses);
    tcase_add_test(tc, show_is_unverified);
    tcase_add_test(tc, help_for_every_command);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, tool_token_is_accepted_by_the_library);
    suite_add_tcase(s, tc);
    return s;
}
