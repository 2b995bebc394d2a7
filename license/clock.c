/*
 * clock.c - the clock high-water mark: the latest time the library has seen
 * on this machine, kept in $HOME/.config/liquid-memory/clock so that a clock
 * set back between runs is noticed (policy.c refuses a license that expires
 * when the clock is more than LML_CLOCK_SKEW behind the mark). Best effort
 * by design: whoever can set the clock can usually delete the file too, and
 * a machine without a writable home keeps no mark. The file holds one
 * decimal number; it is replaced atomically (a new file renamed over it),
 * never followed through a symbolic link, and never written backwards.
 */
#include "license.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MARK_NAME "clock"

static int space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int lml_clock_mark_parse(const char *text, size_t n, int64_t *t)
{
    size_t a = 0, b = n;
    while (a < b && space(text[a]))
        a++;
    while (b > a && space(text[b - 1]))
        b--;
    if (a == b || b - a > 19) /* INT64_MAX has 19 digits */
        return -1;
    int64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        const int d = text[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *t = v;
    return 0;
}

int64_t lml_clock_mark_read(void)
{
    char path[PATH_MAX], text[LML_INPUT_MAX + 1], why[64];
    size_t n;
    int64_t t;
    if (lml_config_path(path, sizeof path, MARK_NAME) != 0 ||
        lml_read_small_file(path, text, &n, why, sizeof why) != LML_VALID ||
        lml_clock_mark_parse(text, n, &t) != 0)
        return 0;
    return t;
}

void lml_clock_mark_write(int64_t t)
{
    if (t <= lml_clock_mark_read())
        return;
    char dir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX], text[32];
    if (lml_config_path(dir, sizeof dir, "") != 0 ||
        lml_config_path(path, sizeof path, MARK_NAME) != 0 ||
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp)
        return;
    /* ~/.config itself is the user's: it is used when it exists, never made. */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return;
    const int n = snprintf(text, sizeof text, "%lld\n", (long long)t);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    const int ok = write(fd, text, (size_t)n) == n;
    if (close(fd) != 0 || !ok || rename(tmp, path) != 0)
        unlink(tmp);
}
