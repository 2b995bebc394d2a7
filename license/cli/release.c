/*
 * release.c - signed releases, the customer's side: the MANIFEST format
 * (cli.h), hashing and listing a release folder, and `lm-license
 * verify-release`, which checks the signature over MANIFEST before reading
 * a line of it, then that the folder holds exactly the files MANIFEST lists
 * with their SHA-256. A file added beside the library (a libsodium.so that
 * $ORIGIN would load, say) is refused as surely as a changed one.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 10000
#define MAX_DEPTH 16

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t why_len, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return -1;
}

static int path_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '+' || c == '-' || c == '/';
}

/* The rule for a path in a release (cli.h); 0 when p[0..n) keeps it. */
static int path_ok(const char *p, size_t n)
{
    if (n == 0 || n > CLI_RELEASE_PATH_MAX)
        return -1;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && !path_char((unsigned char)p[i]))
            return -1;
        if (i == n || p[i] == '/') {
            const size_t len = i - start;
            if (len == 0 || (len == 1 && p[start] == '.') ||
                (len == 2 && p[start] == '.' && p[start + 1] == '.'))
                return -1;
            start = i + 1;
        }
    }
    return 0;
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int cli_manifest_parse(const char *text, size_t n,
                       int (*each)(const cli_manifest_entry *e, void *ctx), void *ctx,
                       char *why, size_t why_len)
{
    cli_manifest_entry e, prev;
    size_t line = 0;
    for (size_t at = 0; at < n; line++) {
        const char *nl = memchr(text + at, '\n', n - at);
        if (!nl)
            return fail(why, why_len, "line %zu does not end with a newline", line + 1);
        const char *s = text + at;
        const size_t len = (size_t)(nl - s);
        /* 64 lower-case hex digits, two spaces, the path */
        if (len < 67 || s[64] != ' ' || s[65] != ' ')
            return fail(why, why_len, "line %zu is not \"<sha256>  <path>\"", line + 1);
        for (int i = 0; i < 32; i++) {
            const int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return fail(why, why_len, "line %zu: the SHA-256 is not 64 lower-case hex digits",
                            line + 1);
            e.sha256[i] = (uint8_t)(hi << 4 | lo);
        }
        const size_t plen = len - 66;
        if (path_ok(s + 66, plen) != 0)
            return fail(why, why_len, "line %zu: the path is not one a release may hold",
                        line + 1);
        memcpy(e.path, s + 66, plen);
        e.path[plen] = '\0';
        if (line > 0 && strcmp(prev.path, e.path) >= 0)
            return fail(why, why_len, "line %zu: the paths are not in strictly ascending order",
                        line + 1);
        int st = each ? each(&e, ctx) : 0;
        if (st)
            return st;
        prev = e;
        at += len + 1;
    }
    return 0;
}

/* Reads the regular file at path (not through a symbolic link), at most
 * max bytes, into a malloc'd buffer (*out, NUL-terminated). */
static int read_file(const char *path, size_t max, char **out, size_t *n, char *why,
                     size_t why_len)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return fail(why, why_len, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
        (size_t)st.st_size > max) {
        close(fd);
        return fail(why, why_len, "%s is not a regular file of at most %zu bytes", path, max);
    }
    size_t got = 0, cap = (size_t)st.st_size + 1;
    buf = malloc(cap);
    while (buf) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r > 0 && (got += (size_t)r) < cap)
            continue;
        if (r < 0 && errno == EINTR)
            continue;
        if (r != 0 || got >= cap) { /* an error, or the file grew */
            free(buf);
            buf = NULL;
        }
        break;
    }
    close(fd);
    if (!buf)
        return fail(why, why_len, "cannot read %s", path);
    buf[got] = '\0';
    *out = buf;
    *n = got;
    return 0;
}

int cli_sha256_file(const char *path, uint8_t out[32], char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return fail(why, why_len, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(why, why_len, "%s is not a regular file", path);
    }
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    unsigned char buf[1 << 16];
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            close(fd);
            return fail(why, why_len, "cannot read %s: %s", path, strerror(errno));
        }
        crypto_hash_sha256_update(&h, buf, (unsigned long long)r);
    }
    close(fd);
    crypto_hash_sha256_final(&h, out);
    return 0;
}

/* ---- listing a release folder ---- */

typedef struct listing {
    char **paths;
    size_t n;
} listing;

static void listing_free(listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
    l->paths = NULL;
    l->n = 0;
}

/* Appends a copy of path; 0, or -1 when out of memory. */
static int listing_add(listing *l, const char *path)
{
    char **grown = realloc(l->paths, (l->n + 1) * sizeof *grown);
    char *copy = strdup(path);
    if (grown)
        l->paths = grown;
    if (!grown || !copy) {
        free(copy);
        return -1;
    }
    l->paths[l->n++] = copy;
    return 0;
}

static int by_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds the files under the folder fd (whose path in the release is prefix) to l. */
static int list_dir(int fd, const char *prefix, int depth, listing *l, char *why,
                    size_t why_len)
{
    if (depth > MAX_DEPTH)
        return fail(why, why_len, "%s: folders nest deeper than %d", prefix, MAX_DEPTH);
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return fail(why, why_len, "cannot list %s: %s", *prefix ? prefix : ".", strerror(errno));
    }
    int st = 0;
    struct dirent *de;
    while (!st && (errno = 0, de = readdir(d))) {
        const char *name = de->d_name;
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        if (!*prefix && (!strcmp(name, CLI_MANIFEST) || !strcmp(name, CLI_MANIFEST_SIG)))
            continue;
        char rel[2 * CLI_RELEASE_PATH_MAX + 2];
        snprintf(rel, sizeof rel, "%s%s%s", prefix, *prefix ? "/" : "", name);
        if (path_ok(rel, strlen(rel)) != 0) {
            st = fail(why, why_len, "'%.*s' is not a name a release may hold", 255, rel);
            break;
        }
        struct stat sb;
        if (fstatat(dirfd(d), name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            st = fail(why, why_len, "cannot stat %s: %s", rel, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            int sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            st = sub < 0 ? fail(why, why_len, "cannot open %s: %s", rel, strerror(errno))
                         : list_dir(sub, rel, depth + 1, l, why, why_len);
        } else if (!S_ISREG(sb.st_mode)) {
            st = fail(why, why_len, "%s is %s, a release holds only files and folders", rel,
                      S_ISLNK(sb.st_mode) ? "a symbolic link" : "not a regular file");
        } else if (l->n == MAX_FILES) {
            st = fail(why, why_len, "more than %d files", MAX_FILES);
        } else if (listing_add(l, rel) != 0) {
            st = fail(why, why_len, "out of memory");
        }
    }
    if (!st && errno)
        st = fail(why, why_len, "cannot list %s: %s", *prefix ? prefix : ".", strerror(errno));
    closedir(d);
    return st;
}

int cli_release_walk(const char *dir, int (*each)(const char *path, void *ctx), void *ctx,
                     char *why, size_t why_len)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fail(why, why_len, "cannot open the folder %s: %s", dir, strerror(errno));
    listing l = { NULL, 0 };
    int st = list_dir(fd, "", 0, &l, why, why_len);
    if (!st)
        qsort(l.paths, l.n, sizeof *l.paths, by_bytes);
    for (size_t i = 0; !st && i < l.n; i++)
        st = each(l.paths[i], ctx);
    listing_free(&l);
    return st;
}

/* ---- lm-license verify-release ---- */

/* The release's files, listed beside the manifest's lines. */
typedef struct check {
    const char *dir;
    listing files;   /* what the folder holds, sorted */
    size_t next;     /* the next file the manifest must name */
    size_t bad;      /* files with another hash */
} check;

static int collect(const char *path, void *ctx)
{
    return listing_add(&((check *)ctx)->files, path);
}

static int check_line(const cli_manifest_entry *e, void *ctx)
{
    check *c = ctx;
    /* Both lists ascend: a file the folder has and the manifest skipped is
     * extra; a line past the folder's file is missing. */
    while (c->next < c->files.n && strcmp(c->files.paths[c->next], e->path) < 0)
        printf("extra:   %s (not in MANIFEST)\n", c->files.paths[c->next++]), c->bad++;
    if (c->next == c->files.n || strcmp(c->files.paths[c->next], e->path) != 0) {
        printf("missing: %s\n", e->path);
        c->bad++;
        return 0;
    }
    c->next++;
    char path[PATH_MAX], why[256];
    uint8_t h[32];
    snprintf(path, sizeof path, "%s/%s", c->dir, e->path);
    if (cli_sha256_file(path, h, why, sizeof why) != 0) {
        printf("unreadable: %s (%s)\n", e->path, why);
        c->bad++;
    } else if (sodium_memcmp(h, e->sha256, sizeof h) != 0) {
        printf("changed: %s (its SHA-256 is not the one MANIFEST lists)\n", e->path);
        c->bad++;
    }
    return 0;
}

int cli_verify_release(int argc, char **argv)
{
    const char *pubkey = NULL, *pos[1] = { NULL };
    const cli_opt opts[] = { { "pubkey", &pubkey, NULL }, { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, pos, 1);
    if (st)
        return st;
    if (!pubkey || !pos[0]) {
        fprintf(stderr, "%s verify-release: --pubkey HEX|FILE (the vendor's release key) and "
                        "the release folder are required\n", cli_tool);
        return CLI_USAGE;
    }
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    if ((st = cli_pubkey_load(pubkey, pk)))
        return st;
    if (lml_crypto_init()) {
        fprintf(stderr, "%s verify-release: libsodium could not start\n", cli_tool);
        return CLI_FAIL;
    }
    check c = { .dir = pos[0] };
    char path[PATH_MAX], why[320], *manifest = NULL, *sig = NULL;
    size_t n = 0, sig_len = 0;
    uint8_t *msg = NULL;
    st = CLI_FAIL;
    snprintf(path, sizeof path, "%s/%s", c.dir, CLI_MANIFEST);
    if (read_file(path, CLI_MANIFEST_MAX, &manifest, &n, why, sizeof why) != 0)
        goto refused;
    snprintf(path, sizeof path, "%s/%s", c.dir, CLI_MANIFEST_SIG);
    if (read_file(path, LML_SIGNATURE_BYTES, &sig, &sig_len, why, sizeof why) != 0)
        goto refused;
    const size_t d = strlen(CLI_RELEASE_DOMAIN);
    if (sig_len != LML_SIGNATURE_BYTES || !(msg = malloc(d + n))) {
        snprintf(why, sizeof why, "%s is not a %d-byte signature", CLI_MANIFEST_SIG,
                 LML_SIGNATURE_BYTES);
        goto refused;
    }
    memcpy(msg, CLI_RELEASE_DOMAIN, d);
    memcpy(msg + d, manifest, n);
    if (lml_verify((const uint8_t *)sig, msg, d + n, pk) != 0) {
        snprintf(why, sizeof why, "%s is not signed by this release key: the manifest was "
                                  "altered, or the key is not the vendor's release key",
                 CLI_MANIFEST);
        goto refused;
    }
    snprintf(why, sizeof why, "out of memory"); /* what a failing collect means */
    if (cli_release_walk(c.dir, collect, &c, why, sizeof why) != 0 ||
        cli_manifest_parse(manifest, n, check_line, &c, why, sizeof why) != 0)
        goto refused;
    while (c.next < c.files.n)
        printf("extra:   %s (not in MANIFEST)\n", c.files.paths[c.next++]), c.bad++;
    if (c.bad) {
        snprintf(why, sizeof why, "%zu file%s differ from the signed MANIFEST", c.bad,
                 c.bad == 1 ? "" : "s");
        goto refused;
    }
    printf("release: intact (%zu files, MANIFEST signed by the release key)\n", c.files.n);
    st = CLI_OK;
    goto done;
refused:
    printf("release: REFUSED: %s\n", why);
done:
    free(manifest);
    free(sig);
    free(msg);
    listing_free(&c.files);
    return st;
}
