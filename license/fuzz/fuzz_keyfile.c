/*
 * fuzz_keyfile.c - libFuzzer target over the vendor's secret key files
 * (make fuzz): the text parser and the loader. Each input is
 *   - parsed as key file text (up to its first NUL): a text that parses
 *     holds the key line at the start of a line, and the canonical text of
 *     the seed found parses to the same seed;
 *   - written to a 0600 file and loaded as lm-license-vendor does: the load
 *     succeeds exactly when the text parses (and the file is not too long
 *     for a key file), with the public key of that seed.
 */
#include "fuzz_key.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static char dir[64], path[128];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "/tmp/lm-fuzz-keyfile-XXXXXX");
    require(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/key.secret", dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    require(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    uint8_t seed[LML_SEED_BYTES], again[LML_SEED_BYTES];
    const int parsed = cli_key_parse_text(text, seed) == 0;
    if (parsed) {
        const char *at = strstr(text, "LM-SECRET-KEY-1 ");
        require(at != NULL);
        char canon[128], hex[2 * LML_SEED_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, seed, sizeof seed);
        snprintf(canon, sizeof canon, "# comment\nLM-SECRET-KEY-1 %s\n", hex);
        require(cli_key_parse_text(canon, again) == 0 && memcmp(seed, again, sizeof seed) == 0);
    }
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    require(fd >= 0);
    require(write(fd, data, size) == (ssize_t)size);
    close(fd);
    cli_key key;
    const int loaded = cli_key_load(path, &key) == CLI_OK;
    /* The loader reads the whole file (at most 1024 bytes) as text, which
     * ends at its first NUL as the parser's input here does. */
    require(loaded == (parsed && size <= 1024));
    if (loaded) {
        uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
        require(lml_keypair_from_seed(pk, sk, seed) == 0);
        require(memcmp(pk, key.pk, sizeof pk) == 0);
        cli_key_free(&key);
    }
    free(text);
    return 0;
}
