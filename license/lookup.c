/*
 * lookup.c - where the library finds a token when none was set through
 * lm_license_set: LM_LICENSE (the token itself), LM_LICENSE_FILE (a path),
 * then ~/.config/liquid-memory/license. Only the last may be absent quietly:
 * a source the user configured but that cannot be read is an error, so that
 * a typo never falls back to evaluation mode unnoticed.
 */
#include "license.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

void lml_trim(char *s, size_t *len)
{
    size_t a = 0, b = *len;
    while (a < b && space(s[a]))
        a++;
    while (b > a && space(s[b - 1]))
        b--;
    memmove(s, s + a, b - a);
    s[b - a] = '\0';
    *len = b - a;
}

lml_result lml_read_small_file(const char *path, char *out, size_t *len, char *why,
                               size_t why_len)
{
    *len = 0;
    out[0] = '\0';
    /* O_NONBLOCK: a FIFO in place of the file must not hang the caller. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return LML_ERR_IO;
    }
    struct stat st;
    lml_result r = LML_VALID;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "%s is not a regular file", path);
        r = LML_ERR_IO;
    } else if (st.st_size > LML_INPUT_MAX) {
        snprintf(why, why_len, "%s is %lld bytes, a license file holds one token", path,
                 (long long)st.st_size);
        r = LML_ERR_TOO_LONG;
    }
    size_t n = 0;
    while (r == LML_VALID && n <= LML_INPUT_MAX) {
        ssize_t got = read(fd, out + n, LML_INPUT_MAX + 1 - n);
        if (got > 0) {
            n += (size_t)got;
        } else if (got == 0) {
            break;
        } else if (errno != EINTR) {
            snprintf(why, why_len, "cannot read %s: %s", path, strerror(errno));
            r = LML_ERR_IO;
        }
    }
    close(fd);
    if (r == LML_VALID && n > LML_INPUT_MAX) {
        snprintf(why, why_len, "%s grew past %d bytes while being read", path, LML_INPUT_MAX);
        r = LML_ERR_TOO_LONG;
    }
    if (r != LML_VALID)
        return r;
    *len = n;
    lml_trim(out, len);
    return LML_VALID;
}

int lml_config_path(char *out, size_t cap, const char *name)
{
    const char *home = getenv("HOME");
    if (!home || !*home)
        return -1;
    int w = snprintf(out, cap, "%s/.config/liquid-memory%s%s", home, *name ? "/" : "", name);
    return w < 0 || (size_t)w >= cap ? -1 : 0;
}

void lml_lookup(lml_found *f)
{
    memset(f, 0, sizeof *f);
    const char *env = getenv("LM_LICENSE");
    if (env && *env) {
        f->present = 1;
        snprintf(f->source, sizeof f->source, "LM_LICENSE");
        size_t n = strnlen(env, LML_INPUT_MAX + 1);
        if (n > LML_INPUT_MAX) {
            f->error = LML_ERR_TOO_LONG;
            snprintf(f->why, sizeof f->why, "LM_LICENSE is longer than %d bytes", LML_INPUT_MAX);
            return;
        }
        memcpy(f->token, env, n);
        f->len = n;
        lml_trim(f->token, &f->len);
        return;
    }
    char path[PATH_MAX];
    const char *file = getenv("LM_LICENSE_FILE");
    if (file && *file) {
        snprintf(f->source, sizeof f->source, "LM_LICENSE_FILE=%s", file);
    } else {
        struct stat st;
        if (lml_config_path(path, sizeof path, "license") != 0 ||
            (stat(path, &st) != 0 && (errno == ENOENT || errno == ENOTDIR)))
            return;
        file = path;
        /* A path too long for the report is shown cut: it is only for reading. */
        size_t n = strnlen(path, sizeof f->source - 1);
        memcpy(f->source, path, n);
        f->source[n] = '\0';
    }
    f->present = 1;
    f->error = lml_read_small_file(file, f->token, &f->len, f->why, sizeof f->why);
}
