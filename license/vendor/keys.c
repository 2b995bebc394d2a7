/*
 * keys.c - the vendor's signing key on disk: keygen writes it, issue and
 * pubkey load it. The secret (a 32-byte Ed25519 seed, as hex) lives only in
 * a 0600 file and in sodium_malloc memory (guarded pages, locked, wiped on
 * free); it is never printed. A key file others can read is refused, since
 * such a key must be assumed leaked.
 */
#include "vendor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_TAG "LM-SECRET-KEY-1 "
#define KEY_FILE_MAX 1024

static const char key_comment[] =
    "# Liquid Memory license signing key (Ed25519 seed). Keep it secret: whoever holds it can\n"
    "# issue licenses. Never ship it; the library needs only the public key\n"
    "# (lm-license-vendor pubkey).\n";

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int cli_create_file(const char *path, mode_t mode, const char *text, size_t n, const char *who)
{
    /* O_EXCL: never replace a file (a key, a token); with O_CREAT it also
     * refuses a symbolic link, dangling or not, so nothing is written
     * through one. O_NOFOLLOW says the same once more. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        fprintf(stderr, "%s %s: cannot create %s: %s%s\n", cli_tool, who, path, strerror(errno),
                errno == EEXIST ? " (refusing to overwrite it; remove it first)" : "");
        return -1;
    }
    /* The umask may only have removed bits; set exactly the mode we mean. */
    int bad = fchmod(fd, mode) != 0 || write_all(fd, text, n) != 0 || fsync(fd) != 0;
    if (close(fd) != 0 || bad) {
        fprintf(stderr, "%s %s: cannot write %s: %s\n", cli_tool, who, path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

int cli_keygen(int argc, char **argv)
{
    const char *out = NULL;
    const cli_opt opts[] = { { "out", &out, NULL }, { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, NULL, 0);
    if (st)
        return st;
    if (!out) {
        fprintf(stderr, "lm-license-vendor keygen: --out PREFIX is required (see --help)\n");
        return CLI_USAGE;
    }
    char secret_path[PATH_MAX], pub_path[PATH_MAX];
    if (snprintf(secret_path, sizeof secret_path, "%s.secret", out) >= (int)sizeof secret_path ||
        snprintf(pub_path, sizeof pub_path, "%s.pub", out) >= (int)sizeof pub_path) {
        fprintf(stderr, "lm-license-vendor keygen: --out is too long\n");
        return CLI_USAGE;
    }
    struct stat sb;
    if (lstat(secret_path, &sb) == 0 || lstat(pub_path, &sb) == 0) {
        fprintf(stderr, "lm-license-vendor keygen: %s or %s exists; refusing to overwrite a key\n",
                secret_path, pub_path);
        return CLI_FAIL;
    }
    if (lml_crypto_init()) {
        fprintf(stderr, "lm-license-vendor keygen: libsodium could not start\n");
        return CLI_FAIL;
    }
    const size_t text_len = sizeof key_comment - 1 + strlen(KEY_TAG) + 2 * LML_SEED_BYTES + 1;
    uint8_t *seed = sodium_malloc(LML_SEED_BYTES), *sk = sodium_malloc(LML_SECRET_KEY_BYTES);
    char *text = sodium_malloc(text_len + 1);
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    st = CLI_FAIL;
    if (!seed || !sk || !text) {
        fprintf(stderr, "lm-license-vendor keygen: cannot allocate secure memory\n");
        goto done;
    }
    randombytes_buf(seed, LML_SEED_BYTES);
    if (lml_keypair_from_seed(pk, sk, seed)) {
        fprintf(stderr, "lm-license-vendor keygen: cannot derive the key pair\n");
        goto done;
    }
    snprintf(text, text_len + 1, "%s%s", key_comment, KEY_TAG);
    sodium_bin2hex(text + strlen(text), 2 * LML_SEED_BYTES + 1, seed, LML_SEED_BYTES);
    strcat(text, "\n");
    char pub_hex[2 * LML_PUBLIC_KEY_BYTES + 2];
    sodium_bin2hex(pub_hex, sizeof pub_hex, pk, LML_PUBLIC_KEY_BYTES);
    strcat(pub_hex, "\n");
    if (cli_create_file(secret_path, 0600, text, strlen(text), "keygen"))
        goto done;
    if (cli_create_file(pub_path, 0644, pub_hex, strlen(pub_hex), "keygen")) {
        unlink(secret_path);
        goto done;
    }
    uint8_t kid[LML_KEY_ID_BYTES];
    char kid_hex[2 * LML_KEY_ID_BYTES + 1];
    lml_key_id(kid, pk);
    sodium_bin2hex(kid_hex, sizeof kid_hex, kid, sizeof kid);
    printf("wrote %s (secret, mode 0600: keep it offline) and %s\npublic key: %skey id:     %s\n",
           secret_path, pub_path, pub_hex, kid_hex);
    st = CLI_OK;
done:
    sodium_free(seed);
    sodium_free(sk);
    sodium_free(text);
    return st;
}

/* Finds KEY_TAG at the start of a line and decodes the hex seed after it. */
int cli_key_parse_text(const char *text, uint8_t seed[LML_SEED_BYTES])
{
    const char *p = text;
    while (p && strncmp(p, KEY_TAG, strlen(KEY_TAG)) != 0) {
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    if (!p)
        return -1;
    p += strlen(KEY_TAG);
    size_t got;
    const char *end;
    if (sodium_hex2bin(seed, LML_SEED_BYTES, p, 2 * LML_SEED_BYTES, NULL, &got, &end) != 0 ||
        got != LML_SEED_BYTES || end != p + 2 * LML_SEED_BYTES)
        return -1;
    return *end == '\n' || *end == '\0' || *end == '\r' ? 0 : -1;
}

int cli_key_load(const char *path, cli_key *key)
{
    memset(key, 0, sizeof *key);
    if (lml_crypto_init()) {
        fprintf(stderr, "lm-license-vendor: libsodium could not start\n");
        return CLI_FAIL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        fprintf(stderr, "lm-license-vendor: cannot open the key %s: %s\n", path, strerror(errno));
        return CLI_FAIL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > KEY_FILE_MAX) {
        fprintf(stderr, "lm-license-vendor: %s is not a key file written by keygen\n", path);
        close(fd);
        return CLI_FAIL;
    }
    if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        fprintf(stderr,
                "lm-license-vendor: refusing the key %s: its mode %04o lets others read or "
                "change it; treat it as leaked, or if it is not, run: chmod 600 %s\n",
                path, (unsigned)(sb.st_mode & 07777), path);
        close(fd);
        return CLI_FAIL;
    }
    char *text = sodium_malloc(KEY_FILE_MAX + 1);
    uint8_t *seed = sodium_malloc(LML_SEED_BYTES);
    key->sk = sodium_malloc(LML_SECRET_KEY_BYTES);
    int st = CLI_FAIL;
    ssize_t n = -1;
    if (!text || !seed || !key->sk)
        fprintf(stderr, "lm-license-vendor: cannot allocate secure memory\n");
    else if ((n = read(fd, text, KEY_FILE_MAX)) < 0)
        fprintf(stderr, "lm-license-vendor: cannot read %s: %s\n", path, strerror(errno));
    if (n >= 0) {
        text[n] = '\0';
        if (cli_key_parse_text(text, seed) != 0)
            fprintf(stderr, "lm-license-vendor: %s is not a key file written by keygen\n", path);
        else if (lml_keypair_from_seed(key->pk, key->sk, seed) != 0)
            fprintf(stderr, "lm-license-vendor: cannot derive the key pair\n");
        else
            st = CLI_OK;
    }
    close(fd);
    sodium_free(text);
    sodium_free(seed);
    if (st)
        cli_key_free(key);
    return st;
}

void cli_key_free(cli_key *key)
{
    sodium_free(key->sk);
    key->sk = NULL;
}

int cli_pubkey(int argc, char **argv)
{
    const char *path = NULL;
    const cli_opt opts[] = { { "key", &path, NULL }, { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, NULL, 0);
    if (st)
        return st;
    if (!path) {
        fprintf(stderr, "lm-license-vendor pubkey: --key FILE is required (see --help)\n");
        return CLI_USAGE;
    }
    cli_key key;
    if ((st = cli_key_load(path, &key)))
        return st;
    char hex[2 * LML_PUBLIC_KEY_BYTES + 1], kid_hex[2 * LML_KEY_ID_BYTES + 1];
    uint8_t kid[LML_KEY_ID_BYTES];
    sodium_bin2hex(hex, sizeof hex, key.pk, LML_PUBLIC_KEY_BYTES);
    lml_key_id(kid, key.pk);
    sodium_bin2hex(kid_hex, sizeof kid_hex, kid, sizeof kid);
    cli_key_free(&key);
    /* stdout holds the key alone, for make VENDOR_PUBKEY=$(...) */
    printf("%s\n", hex);
    fprintf(stderr, "key id: %s\n", kid_hex);
    return CLI_OK;
}
