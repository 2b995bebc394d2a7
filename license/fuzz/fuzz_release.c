/*
 * fuzz_release.c - libFuzzer target over the release manifest parser (make
 * fuzz), which `lm-license verify-release` runs on a MANIFEST whose
 * signature has verified, and `sign-release` on what it wrote. A manifest
 * that parses must be canonical: printing its entries back in the
 * "<sha256>  <path>" form gives the same bytes; every path keeps the rule
 * (relative, no "." or ".." component, the allowed characters).
 */
#include "fuzz_key.h"

#include <stdio.h>

typedef struct echo {
    char *text;
    size_t n, cap;
} echo;

/* Each '/'-separated component is non-empty, not "." or "..", and of the
 * allowed characters. */
static void require_path_rule(const char *p)
{
    const size_t len = strlen(p);
    require(len > 0 && len <= CLI_RELEASE_PATH_MAX);
    for (const char *c = p;; c++) {
        const size_t k = strcspn(c, "/");
        require(k > 0 && !(k == 1 && c[0] == '.') && !(k == 2 && c[0] == '.' && c[1] == '.'));
        for (size_t i = 0; i < k; i++)
            require(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-",
                           c[i]) != NULL);
        c += k;
        if (!*c)
            break;
    }
}

static int print_entry(const cli_manifest_entry *e, void *ctx)
{
    echo *o = ctx;
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, e->sha256, sizeof e->sha256);
    const size_t len = strlen(e->path);
    require_path_rule(e->path);
    require(o->n + 67 + len + 1 <= o->cap);
    o->n += (size_t)snprintf(o->text + o->n, o->cap - o->n, "%s  %s\n", hex, e->path);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    echo o = { malloc(size + 1), 0, size + 1 };
    require(o.text != NULL);
    char why[256];
    if (cli_manifest_parse((const char *)data, size, print_entry, &o, why, sizeof why) == 0)
        require(o.n == size && memcmp(o.text, data, size) == 0);
    else
        require(*why != '\0');
    free(o.text);
    return 0;
}
