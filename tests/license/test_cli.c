/*
 * test_cli.c - the two tools as their users run them, in a child process:
 * lm-license-vendor (LM_TEST_VENDOR_CLI) and the customer's lm-license
 * (LM_TEST_CLI). keygen writes a 0600 secret and refuses to overwrite, a
 * key others can read is refused, issue -> verify round trips, verify
 * refuses what the library refuses (exit 1 with the reason), show says
 * UNVERIFIED and never prints a licensee the text rule refuses, issue needs
 * --never-expires for a license without expiry, --out never overwrites a
 * file (the key least of all) nor writes through a link, dates cannot
 * overflow, sign-release / verify-release refuse a tampered release, the
 * customer's tool has no signing command, --help for every command, every
 * usage error exits 2, and no output ever contains the secret key.
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

/* Runs the tool named by the variable `tool` with args (NULL-terminated),
 * standard input from in_path (or /dev/null). */
static run_result run_tool(const char *tool, const char *in_path, const char *const *args);

/* The customer's tool with standard input from in_path. */
static run_result run_in(const char *in_path, const char *const *args)
{
    return run_tool("LM_TEST_CLI", in_path, args);
}

static run_result run_tool(const char *tool, const char *in_path, const char *const *args)
{
    const char *cli = getenv(tool);
    ck_assert_msg(cli && *cli, "%s is not set", tool);
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

#define CUSTOMER "LM_TEST_CLI"
#define VENDOR "LM_TEST_VENDOR_CLI"
/* lm-license (the customer's), and lm-license-vendor */
#define RUN(...) run_tool(CUSTOMER, NULL, (const char *const[]){ __VA_ARGS__, NULL })
#define VRUN(...) run_tool(VENDOR, NULL, (const char *const[]){ __VA_ARGS__, NULL })

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
    run_result r = VRUN("keygen", "--out", prefix);
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
    run_result r = VRUN("keygen", "--out", prefix);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.err, "refusing to overwrite"));
    uint8_t pk3[LML_PUBLIC_KEY_BYTES];
    char hex[2 * LML_SEED_BYTES + 1];
    read_pub(pub, pk3);
    secret_of(secret, hex);
    ck_assert(memcmp(pk, pk3, sizeof pk) == 0);
    ck_assert_str_eq(hex, secret_hex);
    /* pubkey prints what the .pub file holds */
    r = VRUN("pubkey", "--key", secret);
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
        run_result r = VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1");
        ck_assert_int_eq(r.status, 1);
        ck_assert_msg(strstr(r.err, "chmod 600"), "%s", r.err);
        ck_assert_str_eq(r.out, ""); /* no token */
        r = VRUN("pubkey", "--key", secret);
        ck_assert_int_eq(r.status, 1);
    }
    ck_assert(chmod(secret, 0600) == 0);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1").status, 0);
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(issue_then_verify)
{
    char secret[600], pub[600], tok[LML_INPUT_MAX + 1];
    make_key(secret, pub);
    const int64_t before = lt_now();
    run_result r = VRUN("issue", "--key", secret, "--licensee", "ACME Corp", "--days", "30",
                       "--max-seq-len", "65536", "--features", "0x3");
    ck_assert_msg(r.status == 0, "%s", r.err);
    first_line(r.out, tok, sizeof tok);
    ck_assert(strstr(r.err, "licensee:     ACME Corp")); /* the fields on stderr */

    /* the library's verifier agrees, with the fields asked for */
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    read_pub(pub, pk);
    lml_license lic;
    char why[256];
    lml_key ring[1];
    memcpy(ring[0].pk, pk, sizeof pk);
    ck_assert_int_eq(lml_token_verify(tok, strlen(tok), ring, 1, &lic, why, sizeof why),
                     LML_VALID);
    ck_assert(strncmp(tok, "LM2.", 4) == 0);
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
    ck_assert(strstr(r.out, "format:       LM2"));
    char kid[2 * LML_KEY_ID_BYTES + 1], want_kid[64];
    uint8_t kid_bytes[LML_KEY_ID_BYTES];
    lml_key_id(kid_bytes, pk);
    sodium_bin2hex(kid, sizeof kid, kid_bytes, sizeof kid_bytes);
    snprintf(want_kid, sizeof want_kid, "key id:       %s", kid);
    ck_assert(strstr(r.out, want_kid));
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
    r = VRUN("issue", "--key", secret, "--licensee", "B", "--never-expires", "--out", out_path);
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out, "");
    r = RUN("verify", "--pubkey", pub, "--file", out_path);
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.out, "expires:      never"));
    unlink(out_path), unlink(secret), unlink(pub);
}
END_TEST

START_TEST(verify_refuses)
{
    char secret[600], pub[600], tok[LML_INPUT_MAX + 1], bad[LML_INPUT_MAX + 1];
    make_key(secret, pub);
    run_result r = VRUN("issue", "--key", secret, "--licensee", "ACME", "--days", "30");
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
    r = VRUN("issue", "--key", secret, "--licensee", "Old", "--not-before", "2001-01-01",
            "--expires", "2002-01-01");
    ck_assert_int_eq(r.status, 0);
    first_line(r.out, tok, sizeof tok);
    r = RUN("verify", "--pubkey", pub, tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: expired (the license expired on 2002-01-01 00:00:00 UTC)"));
    ck_assert(strstr(r.out, "licensee:     Old"));
    /* not yet valid */
    r = VRUN("issue", "--key", secret, "--licensee", "Future", "--not-before", "2999-01-01",
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
    r = VRUN("issue", "--key", secret, "--licensee", "Elsewhere", "--days", "1", "--host",
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
        r = VRUN("issue", "--key", secret, "--licensee", "Here", "--days", "1", "--host", bad);
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
    run_result r = VRUN("issue", "--key", secret, "--licensee", "Shown", "--days", "3");
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
    r = RUN("show", "LM2.x");
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "cannot decode"));
    unlink(secret), unlink(pub);
}
END_TEST

START_TEST(help_for_every_command)
{
    static const char *const customer[] = { "verify", "show", "host-id", "verify-release" };
    static const char *const vendor[] = { "keygen", "pubkey", "issue", "sign-release" };
    for (int t = 0; t < 2; t++) {
        const char *tool = t ? VENDOR : CUSTOMER, *name = t ? "lm-license-vendor" : "lm-license";
        const char *const *commands = t ? vendor : customer;
        run_result r = run_tool(tool, NULL, (const char *const[]){ "--help", NULL });
        ck_assert_int_eq(r.status, 0);
        for (size_t i = 0; i < 4; i++) {
            ck_assert(strstr(r.out, commands[i]));
            const char *const args[] = { commands[i], "--help", NULL };
            run_result h = run_tool(tool, NULL, args);
            char want[64];
            snprintf(want, sizeof want, "usage: %s %s", name, commands[i]);
            ck_assert_int_eq(h.status, 0);
            ck_assert_msg(strncmp(h.out, want, strlen(want)) == 0, "%s", h.out);
        }
    }
}
END_TEST

/* The customer's tool holds no signing command: those exist only in the
 * vendor's, and the other way round. */
START_TEST(customer_tool_cannot_sign)
{
    static const char *const vendor_only[] = { "keygen", "pubkey", "issue", "sign-release" };
    for (size_t i = 0; i < 4; i++) {
        run_result r = RUN(vendor_only[i], "--help");
        ck_assert_int_eq(r.status, 2);
        ck_assert(strstr(r.err, "unknown command"));
    }
    ck_assert_int_eq(VRUN("verify", "--help").status, 2);
}
END_TEST

/* Every usage error exits 2, in every command of both tools: an unknown or
 * missing option or argument, or a value that does not parse. */
START_TEST(usage_errors_exit_2)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    ck_assert_int_eq(run_in(NULL, (const char *const[]){ NULL }).status, 2);
    ck_assert_int_eq(RUN("frobnicate").status, 2);
    ck_assert_int_eq(VRUN("frobnicate").status, 2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--days", "1").status, 2); /* no licensee */
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X").status, 2); /* no expiry */
    ck_assert_int_eq(VRUN("issue", "--licensee", "X", "--days", "1").status, 2); /* no key */
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--never-expires").status,
        2);
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "X", "--expires", "2025-02-30").status, 2);
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--host", "abc").status,
        2);
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--max-seq-len", "-1")
            .status,
        2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X", "--days", " 1").status, 2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X", "--days", "+1").status, 2);
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "X", "--expires", "2025- 1-01").status, 2);
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "bell\a", "--days", "1").status, 2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X", "--bogus").status, 2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "--licensee", "X", "--days").status, 2);
    ck_assert_int_eq(VRUN("issue", "--key", secret, "stray", "--licensee", "X", "--days", "1")
                         .status, 2);
    ck_assert_int_eq(VRUN("keygen").status, 2);
    ck_assert_int_eq(VRUN("pubkey").status, 2);
    ck_assert_int_eq(VRUN("sign-release", "--key", secret).status, 2); /* no folder */
    /* verify and show: both a token and --file, neither, a bad --pubkey, extra words */
    const char *path = lt_write_file("t", "LM2.a.b");
    char t[600];
    snprintf(t, sizeof t, "%s", path);
    ck_assert_int_eq(RUN("verify", "LM2.a.b", "--file", t).status, 2);
    ck_assert_int_eq(RUN("verify").status, 2);
    ck_assert_int_eq(RUN("verify", "--pubkey", "zz", "LM2.a.b").status, 2);
    ck_assert_int_eq(RUN("verify", "LM2.a.b", "LM2.c.d").status, 2);
    ck_assert_int_eq(RUN("verify", "--bogus", "LM2.a.b").status, 2);
    ck_assert_int_eq(RUN("show", "LM2.a.b", "--file", t).status, 2);
    ck_assert_int_eq(RUN("show").status, 2);
    ck_assert_int_eq(RUN("show", "--pubkey", pub, "LM2.a.b").status, 2);
    ck_assert_int_eq(RUN("host-id", "extra").status, 2);
    ck_assert_int_eq(RUN("verify-release", lt_home()).status, 2); /* no --pubkey */
    ck_assert_int_eq(RUN("verify-release", "--pubkey", pub).status, 2); /* no folder */
    /* refusals are 1, not 2: a token that is not one, an unreadable file */
    ck_assert_int_eq(RUN("verify", "LM2.a.b").status, 1);
    ck_assert_int_eq(RUN("show", "LM2.a.b").status, 1);
    ck_assert_int_eq(RUN("verify", "--file", "/nonexistent/token").status, 1);
    unlink(secret), unlink(pub);
}
END_TEST

/* --expires 0 (or 1970-01-01) used to give a license that never expires:
 * the payload's "never". Only --never-expires says that now. */
START_TEST(never_expiring_needs_its_option)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    static const char *const zero[] = { "0", "1970-01-01", "-5" };
    for (size_t i = 0; i < 3; i++) {
        run_result r = VRUN("issue", "--key", secret, "--licensee", "X", "--expires", zero[i]);
        ck_assert_int_eq(r.status, 2);
        ck_assert_str_eq(r.out, "");
        ck_assert_msg(strstr(r.err, "--never-expires"), "%s", r.err);
    }
    run_result r = VRUN("issue", "--key", secret, "--licensee", "X", "--never-expires");
    ck_assert_int_eq(r.status, 0);
    ck_assert(strstr(r.err, "expires:      never"));
    unlink(secret), unlink(pub);
}
END_TEST

/* Dates are added with overflow checks: --not-before at the end of time
 * plus --days is a usage error that says so. */
START_TEST(dates_do_not_overflow)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    run_result r = VRUN("issue", "--key", secret, "--licensee", "X", "--not-before",
                        "9223372036854775807", "--days", "1");
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strstr(r.err, "past the end of time"), "%s", r.err);
    r = VRUN("issue", "--key", secret, "--licensee", "X", "--not-before", "9223372036854775808",
             "--days", "1");
    ck_assert_int_eq(r.status, 2); /* out of range */
    r = VRUN("issue", "--key", secret, "--licensee", "X", "--not-before", "9223372036000000000",
             "--days", "1");
    ck_assert_int_eq(r.status, 0); /* just inside */
    unlink(secret), unlink(pub);
}
END_TEST

/* --out never overwrites a file: not the signing key (by its name or
 * another name), not any other file, and never through a symbolic link. */
START_TEST(out_never_overwrites)
{
    char secret[600], pub[600], hex[2 * LML_SEED_BYTES + 1], other[600], link_to_key[600];
    char dangling[600], target[600];
    make_key(secret, pub);
    snprintf(other, sizeof other, "%s/other", lt_home());
    snprintf(link_to_key, sizeof link_to_key, "%s/link-to-key", lt_home());
    snprintf(dangling, sizeof dangling, "%s/dangling", lt_home());
    snprintf(target, sizeof target, "%s/created-through-link", lt_home());
    ck_assert(symlink(secret, link_to_key) == 0 && symlink(target, dangling) == 0);
    lt_write_file("other", "precious\n");

    run_result r = VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--out",
                        secret);
    ck_assert_int_eq(r.status, 2);
    ck_assert(strstr(r.err, "signing key"));
    static const char *const kinds[] = { "link to the key", "an existing file", "dangling link" };
    const char *outs[] = { link_to_key, other, dangling };
    for (int i = 0; i < 3; i++) {
        r = VRUN("issue", "--key", secret, "--licensee", "X", "--days", "1", "--out", outs[i]);
        ck_assert_msg(r.status == 1 || (i == 0 && r.status == 2), "%s: %d", kinds[i], r.status);
        ck_assert_str_eq(r.out, "");
    }
    /* all as they were */
    secret_of(secret, hex);
    ck_assert_str_eq(hex, secret_hex);
    FILE *f = fopen(other, "r");
    char text[64] = "";
    ck_assert(f && fgets(text, sizeof text, f));
    fclose(f);
    ck_assert_str_eq(text, "precious\n");
    ck_assert(access(target, F_OK) != 0);
    unlink(link_to_key), unlink(dangling), unlink(secret), unlink(pub);
}
END_TEST

/* A licensee the text rule refuses is refused when issuing (exit 2), and a
 * signed token carrying one (as an older tool could make) is not shown. */
START_TEST(licensee_text_rule)
{
    char secret[600], pub[600];
    make_key(secret, pub);
    static const char *const bad[] = { "evil\xe2\x80\xae" "fdp.exe", "bad\xff" "utf8",
                                       "c1\xc2\x9b" "31m", "over\xc0\xaf" "long" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        run_result r = VRUN("issue", "--key", secret, "--licensee", bad[i], "--days", "1");
        ck_assert_int_eq(r.status, 2);
        ck_assert_str_eq(r.out, "");
        ck_assert(strstr(r.err, "licensee"));
    }
    ck_assert_int_eq(
        VRUN("issue", "--key", secret, "--licensee", "Kund\xc3\xa4r AB", "--days", "1").status, 0);
    /* signed with the build's key: the payload is what refuses it */
    lml_license lic = lt_license();
    lml_key_id(lic.key_id, lml_keyring[0].pk);
    uint8_t p[LML_PAYLOAD_MAX];
    size_t n = lml_payload_encode(p, &lic);
    const size_t name = LML_ID_AT(2) + LML_REL_NAME;
    memcpy(p + name, "\xe2\x80\xae", 3); /* "Test Customer" begins with U+202E */
    char tok[LML_TOKEN_MAX + 1];
    lt_sign_payload(tok, 2, p, n);
    run_result r = RUN("show", tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "U+202E"));
    ck_assert(!strstr(r.out, "\xe2\x80\xae") && !strstr(r.out, "licensee:"));
    r = RUN("verify", tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "bad payload") && !strstr(r.out, "\xe2\x80\xae"));
    unlink(secret), unlink(pub);
}
END_TEST

/* Without --pubkey, verify uses the keyring built in, as the library does,
 * and the revocation list. */
START_TEST(verify_with_the_built_in_keyring)
{
    char tok[LML_TOKEN_MAX + 1];
    lml_license lic = lt_license();
    lt_issue(tok, &lic, lt_key(1)); /* the next key */
    run_result r = RUN("verify", tok);
    ck_assert_msg(r.status == 0, "%s", r.out);
    lic.version = 1;
    lt_issue(tok, &lic, NULL);
    ck_assert_int_eq(RUN("verify", tok).status, 0);
    lic.version = 2;
    memcpy(lic.id, lml_revoked_ids[0], LML_ID_BYTES);
    lt_issue(tok, &lic, NULL);
    r = RUN("verify", tok);
    ck_assert_int_eq(r.status, 1);
    ck_assert(strstr(r.out, "refused: revoked"));
}
END_TEST

/* ---- signed releases ---- */

static void write_at(const char *dir, const char *rel, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s", path);
    ck_assert(fputs(text, f) >= 0 && fclose(f) == 0);
}

/* sign-release, then verify-release; each kind of tampering is refused:
 * a changed, added, removed or linked file, an edited MANIFEST, another key. */
START_TEST(release_tampering_is_refused)
{
    char secret[600], pub[600], dir[600], path[700], other_hex[65];
    make_key(secret, pub);
    snprintf(dir, sizeof dir, "%s/rel", lt_home());
    ck_assert(mkdir(dir, 0755) == 0);
    snprintf(path, sizeof path, "%s/lib", dir);
    ck_assert(mkdir(path, 0755) == 0);
    write_at(dir, "lib/libliquidmemory.so", "not really a library\n");
    write_at(dir, "README.md", "read me\n");
    write_at(dir, "a.txt", "a\n"); /* sorts before "a/..." and after "README.md" */
    run_result r = VRUN("sign-release", "--key", secret, dir);
    ck_assert_msg(r.status == 0, "%s", r.err);
    r = RUN("verify-release", "--pubkey", pub, dir);
    ck_assert_msg(r.status == 0, "%s", r.out);
    ck_assert(strstr(r.out, "intact (3 files"));
    /* sha256sum reads the same MANIFEST (when it is installed) */
    char cmd[1600];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && if command -v sha256sum >/dev/null; then sha256sum --quiet --strict -c "
             "MANIFEST; fi",
             dir);
    ck_assert_int_eq(system(cmd), 0);

    for (int k = 0; k < 7; k++) {
        snprintf(path, sizeof path, "%s/lib/libliquidmemory.so", dir);
        switch (k) {
        case 0: write_at(dir, "lib/libliquidmemory.so", "not really a library!\n"); break;
        case 1: write_at(dir, "lib/libsodium.so.23", "a library $ORIGIN would load\n"); break;
        case 2: unlink(path); break;
        case 3: unlink(path), ck_assert(symlink("../README.md", path) == 0); break;
        case 4: {
            snprintf(path, sizeof path, "%s/MANIFEST", dir);
            FILE *f = fopen(path, "a");
            ck_assert(f && fputs("0000000000000000000000000000000000000000000000000000000000000000"
                                 "  zz\n", f) >= 0);
            fclose(f);
            write_at(dir, "zz", "");
            break;
        }
        case 5: {
            uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
            lt_random_key(pk, sk);
            sodium_bin2hex(other_hex, sizeof other_hex, pk, sizeof pk);
            break;
        }
        case 6: write_at(dir, "MANIFEST.sig", "short"); break;
        }
        r = RUN("verify-release", "--pubkey", k == 5 ? other_hex : pub, dir);
        ck_assert_msg(r.status == 1, "case %d: %s", k, r.out);
        static const char *const want[] = { "changed: lib/libliquidmemory.so",
                                            "extra:   lib/libsodium.so.23",
                                            "missing: lib/libliquidmemory.so",
                                            "symbolic link", "not signed", "not signed",
                                            "64-byte signature" };
        ck_assert_msg(strstr(r.out, want[k]), "case %d: %s", k, r.out);
        ck_assert(strstr(r.out, "REFUSED"));
        /* put it back: remove everything, write and sign again */
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s/lib'", dir, dir);
        ck_assert_int_eq(system(cmd), 0);
        write_at(dir, "lib/libliquidmemory.so", "not really a library\n");
        write_at(dir, "README.md", "read me\n");
        write_at(dir, "a.txt", "a\n");
        ck_assert_int_eq(VRUN("sign-release", "--key", secret, dir).status, 0);
        ck_assert_int_eq(RUN("verify-release", "--pubkey", pub, dir).status, 0);
    }
    /* sign-release never replaces a MANIFEST */
    r = VRUN("sign-release", "--key", secret, dir);
    ck_assert_int_eq(r.status, 1);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    unlink(secret), unlink(pub);
}
END_TEST

/* A token issued by the tool with the build's key is what the library takes. */
START_TEST(tool_token_is_accepted_by_the_library)
{
    run_result r = VRUN("issue", "--key", getenv("LM_TEST_SIGNING_KEY"), "--licensee",
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
    tcase_add_test(tc, customer_tool_cannot_sign);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, never_expiring_needs_its_option);
    tcase_add_test(tc, dates_do_not_overflow);
    tcase_add_test(tc, out_never_overwrites);
    tcase_add_test(tc, licensee_text_rule);
    LT_ADD_KEYRING_TEST(tc, verify_with_the_built_in_keyring);
    tcase_add_test(tc, release_tampering_is_refused);
    tcase_add_test(tc, tool_token_is_accepted_by_the_library);
    suite_add_tcase(s, tc);
    return s;
}
