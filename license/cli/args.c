/*
 * args.c - the license tools' option parsing (long options only, so that
 * every command line reads the same), numbers, dates, hex, public keys and
 * token input. Numbers and dates are strict: the whole text, digits only
 * (no spaces, no '+'), in range, or refused.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int cli_parse(int argc, char **argv, const cli_opt *opts, const char **pos, int max_pos)
{
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return -1;
        if (a[0] != '-' || a[1] != '-' || !a[2]) {
            if (npos == max_pos) {
                fprintf(stderr, "%s %s: unexpected argument '%s' (see --help)\n", cli_tool,
                        argv[0], a);
                return CLI_USAGE;
            }
            pos[npos++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const cli_opt *o = opts;
        while (o->name && (strlen(o->name) != nl || strncmp(o->name, name, nl)))
            o++;
        if (!o->name) {
            fprintf(stderr, "%s %s: unknown option --%.*s (see --help)\n", cli_tool, argv[0],
                    (int)nl, name);
            return CLI_USAGE;
        }
        if (o->flag) {
            if (eq) {
                fprintf(stderr, "%s %s: --%s takes no value\n", cli_tool, argv[0], o->name);
                return CLI_USAGE;
            }
            *o->flag = 1;
        } else if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            fprintf(stderr, "%s %s: --%s needs a value\n", cli_tool, argv[0], o->name);
            return CLI_USAGE;
        }
    }
    return CLI_OK;
}

static int digit(char c)
{
    return c >= '0' && c <= '9';
}

int cli_parse_i64(const char *s, int64_t *out)
{
    if (!digit(s[s[0] == '-']))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *s, uint64_t *out)
{
    const int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    if (!*digits || *digits == '-' || *digits == '+' || *digits == ' ')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(digits, &end, hex ? 16 : 10);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The number of the n digits at s. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = 10 * v + (s[i] - '0');
    return v;
}

int cli_parse_time(const char *s, int64_t *out)
{
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return cli_parse_i64(s, out);
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !digit(s[i]))
            return -1;
    /* Four-digit years: the product below stays far inside int64. */
    const int y = digits(s, 4), m = digits(s + 5, 2), d = digits(s + 8, 2);
    if (m < 1 || m > 12 || d < 1 || d > 31)
        return -1;
    int64_t t = days_from_civil(y, m, d) * 86400;
    /* Reject dates like 2025-02-30 by reading the result back. */
    struct tm tm;
    time_t tt = (time_t)t;
    if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 != y || tm.tm_mon + 1 != m || tm.tm_mday != d)
        return -1;
    *out = t;
    return 0;
}

int cli_parse_hex(const char *s, uint8_t *out, size_t n)
{
    size_t len, got;
    const char *end;
    if ((len = strlen(s)) != 2 * n)
        return -1;
    if (sodium_hex2bin(out, n, s, len, NULL, &got, &end) != 0 || got != n || end != s + len)
        return -1;
    return 0;
}

static int read_stdin(char *out, size_t *len)
{
    size_t n = 0;
    while (n <= LML_INPUT_MAX) {
        ssize_t got = read(STDIN_FILENO, out + n, LML_INPUT_MAX + 1 - n);
        if (got > 0)
            n += (size_t)got;
        else if (got == 0)
            break;
        else if (errno != EINTR)
            return -1;
    }
    if (n > LML_INPUT_MAX)
        return -1;
    *len = n;
    return 0;
}

int cli_read_token(const char *token, const char *path, char out[LML_INPUT_MAX + 1],
                   size_t *len)
{
    char why[256];
    if (token && path) {
        fprintf(stderr, "%s: give the token or --file, not both\n", cli_tool);
        return CLI_USAGE;
    }
    if (token) {
        *len = strnlen(token, LML_INPUT_MAX + 1);
        if (*len > LML_INPUT_MAX) {
            fprintf(stderr, "%s: the token is longer than %d bytes\n", cli_tool, LML_INPUT_MAX);
            return CLI_FAIL;
        }
        memcpy(out, token, *len);
    } else if (!path) {
        fprintf(stderr, "%s: give a token, or --file PATH (- for standard input)\n", cli_tool);
        return CLI_USAGE;
    } else if (!strcmp(path, "-")) {
        if (read_stdin(out, len)) {
            fprintf(stderr, "%s: cannot read a token of at most %d bytes from standard input\n",
                    cli_tool, LML_INPUT_MAX);
            return CLI_FAIL;
        }
    } else if (lml_read_small_file(path, out, len, why, sizeof why) != LML_VALID) {
        fprintf(stderr, "%s: %s\n", cli_tool, why);
        return CLI_FAIL;
    }
    out[*len] = '\0';
    lml_trim(out, len);
    return CLI_OK;
}

int cli_pubkey_load(const char *arg, uint8_t pk[LML_PUBLIC_KEY_BYTES])
{
    if (cli_parse_hex(arg, pk, LML_PUBLIC_KEY_BYTES) == 0)
        return CLI_OK;
    char text[LML_INPUT_MAX + 1], why[256];
    size_t n;
    if (lml_read_small_file(arg, text, &n, why, sizeof why) != LML_VALID) {
        fprintf(stderr, "%s: --pubkey is neither 64 hex digits nor a readable file: %s\n",
                cli_tool, why);
        return CLI_USAGE;
    }
    if (cli_parse_hex(text, pk, LML_PUBLIC_KEY_BYTES) != 0) {
        fprintf(stderr, "%s: %s does not hold a public key (64 hex digits)\n", cli_tool, arg);
        return CLI_USAGE;
    }
    return CLI_OK;
}
