/*
 * fuzz_cli.c - libFuzzer target over the tools' command lines (make fuzz).
 * An input is split at NUL bytes into arguments (at most 24) and
 *   - parsed with an option table like issue's: the parser returns only
 *     done, usage error or help, and a value it hands out is one of the
 *     arguments (or the text after '=' in one);
 *   - each argument is read as a number, a date and hex: what parses prints
 *     back to the same value (a date to the same YYYY-MM-DD);
 *   - run as `lm-license-vendor issue ARGS` in a private folder holding a
 *     key file "k": it exits 0, 1 or 2 and a token it writes verifies with
 *     that key. Arguments naming a path with '/' are left out, so nothing
 *     is written outside the folder.
 */
#include "fuzz_key.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 24

static char dir[64];
static fuzz_keys keys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    require(fuzz_keys_make(&keys) == 0);
    snprintf(dir, sizeof dir, "/tmp/lm-fuzz-cli-XXXXXX");
    require(mkdtemp(dir) != NULL && chdir(dir) == 0);
    char hex[2 * LML_SEED_BYTES + 1], text[128];
    sodium_bin2hex(hex, sizeof hex, keys.seed[0], LML_SEED_BYTES);
    int n = snprintf(text, sizeof text, "LM-SECRET-KEY-1 %s\n", hex);
    int fd = open("k", O_WRONLY | O_CREAT | O_EXCL, 0600);
    require(fd >= 0 && write(fd, text, (size_t)n) == n && close(fd) == 0);
    return 0;
}

/* Removes every file of the folder but the key; when issued, each is a
 * token (--out) that must verify with the key. */
static void clean(int issued)
{
    DIR *d = opendir(".");
    require(d != NULL);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || !strcmp(de->d_name, "k"))
            continue;
        if (issued) {
            char tok[LML_INPUT_MAX + 1], why[256];
            size_t len;
            lml_license lic;
            require(lml_read_small_file(de->d_name, tok, &len, why, sizeof why) == LML_VALID);
            require(lml_token_verify(tok, len, keys.ring, 1, &lic, why, sizeof why) ==
                    LML_VALID);
        }
        unlink(de->d_name);
    }
    closedir(d);
}

static void check_values(const char *a)
{
    int64_t i;
    uint64_t u;
    char text[64];
    if (cli_parse_i64(a, &i) == 0) {
        snprintf(text, sizeof text, "%lld", (long long)i);
        int64_t back;
        require(cli_parse_i64(text, &back) == 0 && back == i);
    }
    if (cli_parse_u64(a, &u) == 0) {
        snprintf(text, sizeof text, "%llu", (unsigned long long)u);
        uint64_t back;
        require(cli_parse_u64(text, &back) == 0 && back == u);
    }
    if (cli_parse_time(a, &i) == 0 && strlen(a) == 10 && a[4] == '-') {
        struct tm tm;
        time_t tt = (time_t)i;
        require(gmtime_r(&tt, &tm) != NULL);
        snprintf(text, sizeof text, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday);
        require(strcmp(text, a) == 0);
    }
    uint8_t h[LML_HOST_BYTES];
    if (cli_parse_hex(a, h, sizeof h) == 0) {
        char hex[2 * LML_HOST_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, h, sizeof h);
        require(strcasecmp(hex, a) == 0);
    }
}

/* Whether value points into one of the n arguments. */
static int from_args(const char *value, char **args, int n)
{
    for (int i = 0; i < n; i++)
        if (value >= args[i] && value <= args[i] + strlen(args[i]))
            return 1;
    return 0;
}

static void check_parse(char **args, int n)
{
    const char *a = NULL, *b = NULL, *pos[2] = { NULL, NULL };
    int flag = 0;
    const cli_opt opts[] = { { "key", &a, NULL }, { "days", &b, NULL },
                             { "never-expires", NULL, &flag }, { NULL, NULL, NULL } };
    int st = cli_parse(n, args, opts, pos, 2);
    require(st == CLI_OK || st == CLI_USAGE || st == -1);
    require(!a || from_args(a, args, n));
    require(!b || from_args(b, args, n));
    require(!pos[0] || from_args(pos[0], args, n));
    require(!pos[1] || from_args(pos[1], args, n));
}

static void check_issue(char **args, int n)
{
    for (int i = 1; i < n; i++)
        if (strchr(args[i], '/'))
            return;
    int st = cli_issue(n, args);
    require(st == CLI_OK || st == CLI_FAIL || st == CLI_USAGE || st == -1);
    clean(st == CLI_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1), *args[MAX_ARGS + 1];
    require(buf != NULL);
    memcpy(buf, data, size);
    buf[size] = '\0';
    int n = 0;
    args[n++] = "issue";
    for (char *p = buf; n < MAX_ARGS && p <= buf + size; p += strlen(p) + 1)
        args[n++] = p;
    args[n] = NULL;
    for (int i = 1; i < n; i++)
        check_values(args[i]);
    check_parse(args, n);
    check_issue(args, n);
    free(buf);
    return 0;
}
