/*
 * make_corpus.c - writes the seed corpus of the fuzz target (make
 * fuzz-corpus): valid tokens signed with the fuzz key, their raw payloads,
 * and near misses (a bad signature, another version, a cut token), so that
 * fuzzing starts past the signature and at the edges of each check.
 */
#include "fuzz_key.h"

#include <stdio.h>

static const char *dir;

static int put(const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_corpus: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* Writes lic as token-<name> and payload-<name>; the token is left in tok. */
static int put_license(const char *name, const lml_license *lic, const uint8_t *sk, char *tok)
{
    char file[128], why[256];
    uint8_t payload[LML_PAYLOAD_MAX];
    size_t n = lml_payload_encode(payload, lic);
    if (!n || lml_token_issue(tok, lic, sk, why, sizeof why) != LML_VALID) {
        fprintf(stderr, "make_corpus: %s: %s\n", name, why);
        return -1;
    }
    snprintf(file, sizeof file, "token-%s", name);
    if (put(file, tok, strlen(tok)))
        return -1;
    snprintf(file, sizeof file, "payload-%s", name);
    return put(file, payload, n);
}

int main(int argc, char **argv)
{
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES];
    if (argc != 2 || fuzz_key(pk, sk)) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    dir = argv[1];
    char basic[LML_TOKEN_MAX + 1], full[LML_TOKEN_MAX + 1], tok[LML_TOKEN_MAX + 1];

    lml_license lic = { .issued = 1700000000, .not_before = 1700000000 };
    memset(lic.id, 0x11, sizeof lic.id);
    strcpy(lic.licensee, "Example Customer");
    if (put_license("basic", &lic, sk, basic))
        return 1;

    memset(lic.licensee, 'x', LML_LICENSEE_MAX);
    memcpy(lic.licensee, "Kund\xc3\xa4r AB ", 11); /* UTF-8 is allowed */
    lic.licensee[LML_LICENSEE_MAX] = '\0';
    lic.expires = 1800000000;
    lic.max_seq_len = 131072;
    lic.features = 0x8000000000000001u;
    lic.host_bound = 1;
    memset(lic.host, 0xab, sizeof lic.host);
    if (put_license("full", &lic, sk, full))
        return 1;

    strcpy(tok, basic);
    tok[strlen(tok) - 20] ^= 0x01; /* 'A' <-> '@' etc.: a signature byte changes */
    if (put("token-bad-signature", tok, strlen(tok)))
        return 1;
    strcpy(tok, basic);
    tok[2] = '2';
    if (put("token-format-lm2", tok, strlen(tok)) || put("token-cut", basic, strlen(basic) - 9) ||
        put("token-prefix-only", "LM1.", 4) || put("token-empty", "", 0))
        return 1;
    return 0;
}
