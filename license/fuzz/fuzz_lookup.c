/*
 * fuzz_lookup.c - libFuzzer target over where a token comes from (make
 * fuzz): trimming, reading a license file, the lookup through LM_LICENSE and
 * LM_LICENSE_FILE, and the clock mark file. Each input is
 *   - trimmed: the result has no surrounding whitespace, is a piece of the
 *     input, and trims to itself;
 *   - written to a license file that LM_LICENSE_FILE names, then looked up:
 *     the token found is the trimmed text, or the file is refused as too
 *     long exactly when it is;
 *   - given as LM_LICENSE (up to its first NUL): the same rule;
 *   - parsed as a clock mark: a number that parses prints back to digits
 *     that parse to it, and the mark file keeps the largest time written.
 * Files live in a private temporary folder that is HOME.
 */
#include "fuzz_key.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static char home[64], file[128];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(home, sizeof home, "/tmp/lm-fuzz-lookup-XXXXXX");
    require(mkdtemp(home) != NULL);
    setenv("HOME", home, 1);
    snprintf(file, sizeof file, "%s/license", home);
    char config[96];
    snprintf(config, sizeof config, "%s/.config", home);
    require(mkdir(config, 0700) == 0);
    return 0;
}

static int space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The trimmed text of data, by the rule, into out; its length. */
static size_t trimmed(const uint8_t *data, size_t size, char *out)
{
    size_t a = 0, b = size;
    while (a < b && space((char)data[a]))
        a++;
    while (b > a && space((char)data[b - 1]))
        b--;
    memcpy(out, data + a, b - a);
    out[b - a] = '\0';
    return b - a;
}

static void check_trim(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), *want = malloc(size + 1);
    require(s && want);
    memcpy(s, data, size);
    size_t n = size, w = trimmed(data, size, want);
    lml_trim(s, &n);
    require(n == w && memcmp(s, want, n) == 0 && s[n] == '\0');
    require(n == 0 || (!space(s[0]) && !space(s[n - 1])));
    size_t again = n;
    lml_trim(s, &again);
    require(again == n);
    free(s);
    free(want);
}

static void check_file(const uint8_t *data, size_t size)
{
    unlink(file);
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0600);
    require(fd >= 0);
    require(write(fd, data, size) == (ssize_t)size);
    close(fd);
    unsetenv("LM_LICENSE");
    setenv("LM_LICENSE_FILE", file, 1);
    lml_found f;
    lml_lookup(&f);
    require(f.present);
    if (size > LML_INPUT_MAX) {
        require(f.error == LML_ERR_TOO_LONG);
        return;
    }
    require(f.error == LML_VALID);
    char want[LML_INPUT_MAX + 1];
    size_t w = trimmed(data, size, want);
    require(f.len == w && memcmp(f.token, want, w) == 0);
}

static void check_env(const uint8_t *data, size_t size)
{
    size_t n = strnlen((const char *)data, size);
    char *text = malloc(n + 1);
    require(text != NULL);
    memcpy(text, data, n);
    text[n] = '\0';
    unsetenv("LM_LICENSE_FILE");
    setenv("LM_LICENSE", text, 1);
    lml_found f;
    lml_lookup(&f);
    if (n == 0) {
        /* an empty variable is unset; the default file does not exist */
        require(!f.present);
    } else if (n > LML_INPUT_MAX) {
        require(f.present && f.error == LML_ERR_TOO_LONG);
    } else {
        char want[LML_INPUT_MAX + 1];
        size_t w = trimmed(data, n, want);
        require(f.present && f.error == LML_VALID && f.len == w && !memcmp(f.token, want, w));
    }
    unsetenv("LM_LICENSE");
    free(text);
}

static void check_clock(const uint8_t *data, size_t size)
{
    int64_t t, back;
    if (lml_clock_mark_parse((const char *)data, size, &t) != 0)
        return;
    require(t >= 0);
    char text[32];
    int n = snprintf(text, sizeof text, "%lld", (long long)t);
    require(lml_clock_mark_parse(text, (size_t)n, &back) == 0 && back == t);
    int64_t before = lml_clock_mark_read();
    lml_clock_mark_write(t);
    int64_t after = lml_clock_mark_read();
    require(after == (t > before ? t : before));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_trim(data, size);
    check_file(data, size);
    check_env(data, size);
    check_clock(data, size);
    return 0;
}
