/*
 * issue.c - `lm-license issue`: fills a license from the options, signs it
 * with the vendor's secret key and prints (or writes) the token.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Writes the token and a newline to path (replaced if it exists). */
static int write_token(const char *path, const char *token)
{
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%s\n", token) < 0 || fclose(f) != 0) {
        fprintf(stderr, "lm-license issue: cannot write %s: %s\n", path, strerror(errno));
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* Turns the options into lic; CLI_OK or CLI_USAGE with a message. */
static int fill(lml_license *lic, const char *licensee, const char *days, const char *expires,
                int no_expiry, const char *not_before, const char *max_seq, const char *features,
                const char *host)
{
    const int64_t now = (int64_t)time(NULL);
    memset(lic, 0, sizeof *lic);
    randombytes_buf(lic->id, LML_ID_BYTES);
    lic->issued = now;
    lic->not_before = now;
    if (!licensee || strlen(licensee) > LML_LICENSEE_MAX) {
        fprintf(stderr, "lm-license issue: --licensee NAME (1 to %d bytes) is required\n",
                LML_LICENSEE_MAX);
        return CLI_USAGE;
    }
    snprintf(lic->licensee, sizeof lic->licensee, "%s", licensee);
    if (!!days + !!expires + no_expiry != 1) {
        fprintf(stderr, "lm-license issue: give exactly one of --days N, --expires DATE, "
                        "--no-expiry\n");
        return CLI_USAGE;
    }
    int64_t v;
    if (not_before && cli_parse_time(not_before, &lic->not_before)) {
        fprintf(stderr, "lm-license issue: --not-before wants YYYY-MM-DD or unix seconds\n");
        return CLI_USAGE;
    }
    if (days) {
        if (cli_parse_i64(days, &v) || v < 1 || v > 365L * 1000) {
            fprintf(stderr, "lm-license issue: --days wants a number of days, 1 to 365000\n");
            return CLI_USAGE;
        }
        lic->expires = lic->not_before + v * 86400;
    } else if (expires && cli_parse_time(expires, &lic->expires)) {
        fprintf(stderr, "lm-license issue: --expires wants YYYY-MM-DD or unix seconds\n");
        return CLI_USAGE;
    }
    if (max_seq && (cli_parse_i64(max_seq, &lic->max_seq_len) || lic->max_seq_len < 0)) {
        fprintf(stderr, "lm-license issue: --max-seq-len wants tokens of context, 0 = unlimited\n");
        return CLI_USAGE;
    }
    if (features && cli_parse_u64(features, &lic->features)) {
        fprintf(stderr, "lm-license issue: --features wants a number (decimal or 0x hex)\n");
        return CLI_USAGE;
    }
    if (host) {
        if (cli_parse_hex(host, lic->host, LML_HOST_BYTES)) {
            fprintf(stderr, "lm-license issue: --host wants the 64 hex digits that "
                            "`lm-license host-id` prints on the customer's machine\n");
            return CLI_USAGE;
        }
        lic->host_bound = 1;
    }
    return CLI_OK;
}

int cli_issue(int argc, char **argv)
{
    const char *key_path = NULL, *licensee = NULL, *days = NULL, *expires = NULL,
               *not_before = NULL, *max_seq = NULL, *features = NULL, *host = NULL, *out = NULL;
    int no_expiry = 0;
    const cli_opt opts[] = { { "key", &key_path, NULL },       { "licensee", &licensee, NULL },
                             { "days", &days, NULL },          { "expires", &expires, NULL },
                             { "no-expiry", NULL, &no_expiry }, { "not-before", &not_before, NULL },
                             { "max-seq-len", &max_seq, NULL }, { "features", &features, NULL },
                             { "host", &host, NULL },          { "out", &out, NULL },
                             { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, NULL, 0);
    if (st)
        return st;
    if (!key_path) {
        fprintf(stderr, "lm-license issue: --key FILE (the secret key) is required\n");
        return CLI_USAGE;
    }
    if (lml_crypto_init()) {
        fprintf(stderr, "lm-license issue: libsodium could not start\n");
        return CLI_FAIL;
    }
    lml_license lic;
    if ((st = fill(&lic, licensee, days, expires, no_expiry, not_before, max_seq, features,
                   host)))
        return st;
    cli_key key;
    if ((st = cli_key_load(key_path, &key)))
        return st;
    char token[LML_TOKEN_MAX + 1], why[256];
    lml_result r = lml_token_issue(token, &lic, key.sk, why, sizeof why);
    cli_key_free(&key);
    if (r != LML_VALID) {
        fprintf(stderr, "lm-license issue: %s\n", why);
        return CLI_USAGE;
    }
    if (out && (st = write_token(out, token)))
        return st;
    if (!out)
        printf("%s\n", token);
    /* The fields go to stderr, so that stdout holds the token alone. */
    if (lic.expires && lic.expires <= lic.issued)
        fprintf(stderr, "warning: this license has already expired\n");
    fprintf(stderr, "issued%s%s:\n", out ? " to " : "", out ? out : "");
    cli_print_license(stderr, &lic);
    return CLI_OK;
}
