/*
 * release_sign.c - `lm-license-vendor sign-release`: lists a release folder,
 * writes its MANIFEST (cli.h's format: the SHA-256 of every file, sorted by
 * path) and signs it with the release key into MANIFEST.sig. make dist runs
 * it on the staged release, then checks the result with lm-license
 * verify-release.
 */
#include "vendor.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* The manifest being written. */
typedef struct manifest {
    const char *dir;
    char *text;
    size_t n, cap;
    char why[320];
} manifest;

static int add_line(const char *path, void *ctx)
{
    manifest *m = ctx;
    char full[PATH_MAX], hex[65];
    uint8_t h[32];
    snprintf(full, sizeof full, "%s/%s", m->dir, path);
    if (cli_sha256_file(full, h, m->why, sizeof m->why) != 0)
        return -1;
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    const size_t need = 64 + 2 + strlen(path) + 1;
    if (m->n + need + 1 > CLI_MANIFEST_MAX) {
        snprintf(m->why, sizeof m->why, "the manifest would pass %d bytes", CLI_MANIFEST_MAX);
        return -1;
    }
    if (m->n + need + 1 > m->cap) {
        size_t cap = 2 * (m->n + need + 1);
        char *grown = realloc(m->text, cap);
        if (!grown) {
            snprintf(m->why, sizeof m->why, "out of memory");
            return -1;
        }
        m->text = grown, m->cap = cap;
    }
    m->n += (size_t)snprintf(m->text + m->n, m->cap - m->n, "%s  %s\n", hex, path);
    return 0;
}

int cli_sign_release(int argc, char **argv)
{
    const char *key_path = NULL, *pos[1] = { NULL };
    const cli_opt opts[] = { { "key", &key_path, NULL }, { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, pos, 1);
    if (st)
        return st;
    if (!key_path || !pos[0]) {
        fprintf(stderr, "%s sign-release: --key FILE (the release key) and the release folder "
                        "are required\n", cli_tool);
        return CLI_USAGE;
    }
    manifest m = { .dir = pos[0] };
    cli_key key = { 0 };
    uint8_t *msg = NULL, sig[LML_SIGNATURE_BYTES];
    char path[PATH_MAX];
    if ((st = cli_key_load(key_path, &key)))
        return st;
    st = CLI_FAIL;
    if (cli_release_walk(m.dir, add_line, &m, m.why, sizeof m.why) != 0 || m.n == 0) {
        fprintf(stderr, "%s sign-release: %s\n", cli_tool, m.n ? m.why : "the folder is empty");
        goto done;
    }
    /* The manifest must read back as written: the same parser checks it. */
    if (cli_manifest_parse(m.text, m.n, NULL, NULL, m.why, sizeof m.why) != 0) {
        fprintf(stderr, "%s sign-release: %s\n", cli_tool, m.why);
        goto done;
    }
    const size_t d = strlen(CLI_RELEASE_DOMAIN);
    if (!(msg = malloc(d + m.n)))
        goto done;
    memcpy(msg, CLI_RELEASE_DOMAIN, d);
    memcpy(msg + d, m.text, m.n);
    if (lml_sign(sig, msg, d + m.n, key.sk) != 0) {
        fprintf(stderr, "%s sign-release: libsodium could not sign\n", cli_tool);
        goto done;
    }
    snprintf(path, sizeof path, "%s/%s", m.dir, CLI_MANIFEST);
    if (cli_create_file(path, 0644, m.text, m.n, "sign-release"))
        goto done;
    snprintf(path, sizeof path, "%s/%s", m.dir, CLI_MANIFEST_SIG);
    if (cli_create_file(path, 0644, (const char *)sig, sizeof sig, "sign-release"))
        goto done;
    uint8_t kid[LML_KEY_ID_BYTES];
    char kid_hex[2 * LML_KEY_ID_BYTES + 1];
    lml_key_id(kid, key.pk);
    sodium_bin2hex(kid_hex, sizeof kid_hex, kid, sizeof kid);
    printf("signed %s/%s: %zu bytes, release key id %s\n", m.dir, CLI_MANIFEST, m.n, kid_hex);
    st = CLI_OK;
done:
    cli_key_free(&key);
    free(m.text);
    free(msg);
    return st;
}
