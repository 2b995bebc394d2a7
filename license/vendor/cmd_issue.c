/*
 * cmd_issue.c - `lm-license-vendor issue`: fills a license from the options,
 * signs it with the vendor's secret key and prints (or writes) the token.
 * Every option is checked before the key is read; a license that never
 * expires must be asked for by name (--never-expires), and dates are added
 * with overflow checks.
 */
#include "vendor.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define SECONDS_PER_DAY 86400

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s issue: ", cli_tool);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_USAGE;
}

/* The options of issue, as given. */
typedef struct issue_opts {
    const char *key, *licensee, *days, *expires, *not_before, *max_seq, *features, *host, *out;
    int never_expires;
} issue_opts;

/* Turns the options into lic (all but the key id); CLI_OK or CLI_USAGE. */
static int fill(lml_license *lic, const issue_opts *o)
{
    const int64_t now = (int64_t)time(NULL);
    memset(lic, 0, sizeof *lic);
    lic->version = LML_VERSION_CURRENT;
    randombytes_buf(lic->id, LML_ID_BYTES);
    lic->issued = now;
    lic->not_before = now;
    if (!o->licensee || !*o->licensee || strlen(o->licensee) > LML_LICENSEE_MAX)
        return usage_error("--licensee NAME (1 to %d bytes of UTF-8) is required",
                           LML_LICENSEE_MAX);
    snprintf(lic->licensee, sizeof lic->licensee, "%s", o->licensee);
    if (!!o->days + !!o->expires + o->never_expires != 1)
        return usage_error("give exactly one of --days N, --expires DATE, --never-expires");
    if (o->not_before && (cli_parse_time(o->not_before, &lic->not_before) || lic->not_before < 0))
        return usage_error("--not-before wants YYYY-MM-DD or unix seconds (>= 0)");
    int64_t v;
    if (o->days) {
        if (cli_parse_i64(o->days, &v) || v < 1 || v > 365L * 1000)
            return usage_error("--days wants a number of days, 1 to 365000");
        if (__builtin_add_overflow(lic->not_before, v * SECONDS_PER_DAY, &lic->expires))
            return usage_error("--not-before plus --days is past the end of time");
    } else if (o->expires) {
        if (cli_parse_time(o->expires, &lic->expires))
            return usage_error("--expires wants YYYY-MM-DD or unix seconds");
        /* 0 is how the payload says "never": it must not be reachable by a
         * typo or a script's empty date. */
        if (lic->expires <= 0)
            return usage_error("--expires must be a time after 1970-01-01; for a license "
                               "without expiry, say --never-expires");
    }
    if (o->max_seq && (cli_parse_i64(o->max_seq, &lic->max_seq_len) || lic->max_seq_len < 0))
        return usage_error("--max-seq-len wants tokens of context, 0 = unlimited");
    if (o->features && cli_parse_u64(o->features, &lic->features))
        return usage_error("--features wants a number (decimal or 0x hex)");
    if (o->host) {
        if (cli_parse_hex(o->host, lic->host, LML_HOST_BYTES))
            return usage_error("--host wants the 64 hex digits that `lm-license host-id` prints "
                               "on the customer's machine");
        lic->host_bound = 1;
    }
    char why[256];
    if (lml_license_check_fields(lic, why, sizeof why) != LML_VALID)
        return usage_error("%s", why);
    return CLI_OK;
}

/* --out must not name the secret key: the same path, or another name of
 * the same file. */
static int out_is_key(const char *out, const char *key)
{
    struct stat a, b;
    if (strcmp(out, key) == 0)
        return 1;
    return stat(out, &a) == 0 && stat(key, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

int cli_issue(int argc, char **argv)
{
    issue_opts o = { 0 };
    const cli_opt opts[] = { { "key", &o.key, NULL },
                             { "licensee", &o.licensee, NULL },
                             { "days", &o.days, NULL },
                             { "expires", &o.expires, NULL },
                             { "never-expires", NULL, &o.never_expires },
                             { "not-before", &o.not_before, NULL },
                             { "max-seq-len", &o.max_seq, NULL },
                             { "features", &o.features, NULL },
                             { "host", &o.host, NULL },
                             { "out", &o.out, NULL },
                             { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, NULL, 0);
    if (st)
        return st;
    if (!o.key)
        return usage_error("--key FILE (the secret key) is required");
    if (o.out && out_is_key(o.out, o.key))
        return usage_error("--out %s is the signing key: refusing to overwrite it", o.out);
    if (lml_crypto_init()) {
        fprintf(stderr, "%s issue: libsodium could not start\n", cli_tool);
        return CLI_FAIL;
    }
    lml_license lic;
    if ((st = fill(&lic, &o)))
        return st;
    cli_key key;
    if ((st = cli_key_load(o.key, &key)))
        return st;
    lml_license_for_key(&lic, key.pk);
    char token[LML_TOKEN_MAX + 2], why[256];
    lml_result r = lml_token_issue(token, &lic, key.sk, why, sizeof why);
    cli_key_free(&key);
    if (r != LML_VALID) {
        fprintf(stderr, "%s issue: %s\n", cli_tool, why);
        return CLI_FAIL;
    }
    if (o.out) {
        strcat(token, "\n");
        if (cli_create_file(o.out, 0644, token, strlen(token), "issue"))
            return CLI_FAIL;
    } else {
        printf("%s\n", token);
    }
    /* The fields go to stderr, so that stdout holds the token alone. */
    if (lic.expires && lic.expires <= lic.issued)
        fprintf(stderr, "warning: this license has already expired\n");
    fprintf(stderr, "issued%s%s:\n", o.out ? " to " : "", o.out ? o.out : "");
    cli_print_license(stderr, &lic);
    return CLI_OK;
}
