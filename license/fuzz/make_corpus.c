/*
 * make_corpus.c - writes the seed corpora of the fuzz targets (make
 * fuzz-corpus) into DIR/<target>/: for token, valid LM1 and LM2 tokens
 * signed with the fuzz keys, their raw payloads and near misses (a bad
 * signature, another version, a cut token, an unknown key), so that fuzzing
 * starts past the signature and at the edges of each check; for the others,
 * well-formed inputs and their edges (blob: a well-formed blob of each
 * format for the readers of fuzz_blob.h, tagged by the fuzzer, capped or not).
 */
#include "fuzz_blob.h"
#include "fuzz_key.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

static const char *root;
static char sub[512];

static int in(const char *target)
{
    snprintf(sub, sizeof sub, "%s/%s", root, target);
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        return -1;
    return mkdir(sub, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int put(const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_corpus: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

static int put_text(const char *name, const char *text)
{
    return put(name, text, strlen(text));
}

/* Writes lic signed by key k as token-<name> and payload-<name>; the token
 * is left in tok. */
static int put_license(const char *name, lml_license *lic, const fuzz_keys *keys, int k,
                       char *tok)
{
    char file[128], why[256];
    uint8_t payload[LML_PAYLOAD_MAX];
    if (lic->version == 2)
        lml_key_id(lic->key_id, keys->ring[k].pk);
    size_t n = lml_payload_encode(payload, lic);
    if (!n || lml_token_issue(tok, lic, keys->sk[k], why, sizeof why) != LML_VALID) {
        fprintf(stderr, "make_corpus: %s: %s\n", name, why);
        return -1;
    }
    snprintf(file, sizeof file, "token-%s", name);
    if (put(file, tok, strlen(tok)))
        return -1;
    snprintf(file, sizeof file, "payload-%s", name);
    return put(file, payload, n);
}

static int token_corpus(const fuzz_keys *keys)
{
    char basic[LML_TOKEN_MAX + 1], tok[LML_TOKEN_MAX + 1];
    lml_license lic = { .version = 2, .issued = 1700000000, .not_before = 1700000000 };
    memset(lic.id, 0x11, sizeof lic.id);
    strcpy(lic.licensee, "Example Customer");
    if (in("token") || put_license("basic", &lic, keys, 0, basic))
        return -1;
    lic.version = 1;
    memset(lic.key_id, 0, sizeof lic.key_id);
    if (put_license("v1", &lic, keys, 1, tok))
        return -1;
    lic.version = 2;
    memset(lic.licensee, 'x', LML_LICENSEE_MAX);
    memcpy(lic.licensee, "Kund\xc3\xa4r AB \xe6\x97\xa5\xe6\x9c\xac ", 18); /* UTF-8 is allowed */
    lic.licensee[LML_LICENSEE_MAX] = '\0';
    lic.expires = 1800000000;
    lic.max_seq_len = 131072;
    lic.features = 0x8000000000000001u;
    lic.host_bound = 1;
    memset(lic.host, 0xab, sizeof lic.host);
    if (put_license("full", &lic, keys, 1, tok))
        return -1;
    strcpy(tok, basic);
    tok[strlen(tok) - 20] ^= 0x01; /* 'A' <-> '@' etc.: a signature byte changes */
    if (put("token-bad-signature", tok, strlen(tok)))
        return -1;
    strcpy(tok, basic);
    tok[2] = '3';
    if (put("token-format-lm3", tok, strlen(tok)) || put("token-cut", basic, strlen(basic) - 9) ||
        put("token-prefix-only", "LM2.", 4) || put("token-empty", "", 0))
        return -1;
    /* payloads just outside the text rule: a bidi override, a C1 control */
    uint8_t p[LML_PAYLOAD_MAX];
    lic = (lml_license){ .version = 2, .issued = 1, .not_before = 1 };
    strcpy(lic.licensee, "ab");
    size_t n = lml_payload_encode(p, &lic);
    memcpy(p + n - 2, "\xe2\x80", 2); /* with a third byte 0xae: U+202E */
    return put("payload-almost-bidi", p, n);
}

static int lookup_corpus(void)
{
    return in("lookup") || put_text("token", "  LM2.abc.def\r\n") ||
           put_text("clock", "1700000000\n") || put_text("clock-max", "9223372036854775807") ||
           put_text("spaces", " \t\v\f\r\n") || put("nul", "LM2.a\0b", 7);
}

static int keyfile_corpus(const fuzz_keys *keys)
{
    char hex[2 * LML_SEED_BYTES + 1], text[256];
    sodium_bin2hex(hex, sizeof hex, keys->seed[0], LML_SEED_BYTES);
    snprintf(text, sizeof text, "# Liquid Memory license signing key\nLM-SECRET-KEY-1 %s\n", hex);
    if (in("keyfile") || put_text("key", text))
        return -1;
    snprintf(text, sizeof text, "LM-SECRET-KEY-1 %s", hex);
    if (put_text("key-no-newline", text))
        return -1;
    text[strlen(text) - 1] = 'g';
    return put_text("key-bad-hex", text);
}

static int cli_corpus(void)
{
    static const char issue[] = "--key\0k\0--licensee\0ACME\0--days\0" "30\0--max-seq-len\0"
                                "65536\0--features\0" "0x3";
    static const char out[] = "--key\0k\0--licensee\0Out\0--never-expires\0--out\0t";
    static const char dates[] = "--key\0k\0--licensee\0D\0--not-before\0" "2025-02-28\0"
                                "--expires\0" "2026-01-01";
    static const char overflow[] = "--key\0k\0--licensee\0O\0--not-before\0"
                                   "9223372036854775807\0--days\0" "1";
    static const char host[] = "--host\0" "0123456789abcdef0123456789abcdef"
                               "0123456789abcdef0123456789abcdef";
    return in("cli") || put("issue", issue, sizeof issue - 1) ||
           put("out", out, sizeof out - 1) || put("dates", dates, sizeof dates - 1) ||
           put("overflow", overflow, sizeof overflow - 1) || put("host", host, sizeof host - 1);
}

static int release_corpus(void)
{
#define Z64 "0000000000000000000000000000000000000000000000000000000000000000"
    static const char manifest[] =
        Z64 "  RELEASE\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  doc/README.md\n"
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff  lib/libliquidmemory.so\n";
    return in("release") || put_text("manifest", manifest) ||
           put_text("dotdot", Z64 "  a/../b\n");
#undef Z64
}

/* Seed `name`: mode byte, then a blob of `head` header bytes (magic and
 * int64 fields from `at` on), `floats` zero floats and a tag. */
static int put_blob(const char *name, uint8_t mode, const char *magic, size_t head, size_t at,
                    const int64_t *fields, int nfields, size_t floats)
{
    uint8_t buf[512] = { 0 };
    const size_t n = 1 + head + floats * 4 + FUZZ_BLOB_TAG;
    if (n > sizeof buf)
        return -1;
    buf[0] = mode;
    memcpy(buf + 1, magic, 8);
    memcpy(buf + 1 + at, fields, (size_t)nfields * sizeof(int64_t));
    return put(name, buf, n);
}

static int blob_corpus(void)
{
    const int64_t D = FUZZ_BLOB_D, slots = FUZZ_BLOB_WINDOW + FUZZ_BLOB_SINKS;
    /* batch, kv heads, dk, dv, position (format 2: attention, W, s, reserved) */
    const int64_t lin[] = { 1, FUZZ_BLOB_KV_HEADS, D, D, 4096 };
    const int64_t hyb[] = { 1, FUZZ_BLOB_KV_HEADS, D, D, 7, 1, FUZZ_BLOB_WINDOW, FUZZ_BLOB_SINKS, 0 };
    const size_t lin_floats = (size_t)(FUZZ_BLOB_KV_HEADS * (D * D + D));
    const size_t hyb_floats = lin_floats + (size_t)(FUZZ_BLOB_KV_HEADS * slots * (2 * D + 1));
    /* slot blob: version, header bytes, endian, reserved (uint32), then kv heads, dk, dv,
     * position */
    int64_t slot_head[6] = { 0, 0, FUZZ_BLOB_KV_HEADS, D, FUZZ_BLOB_DV, 12 };
    const uint32_t words[4] = { 1, 56, 0x01020304u, 0 };
    memcpy(slot_head, words, sizeof words);
    const size_t slot_floats = (size_t)(FUZZ_BLOB_KV_HEADS * D * (FUZZ_BLOB_DV + 1));
    /* slot blob format 2 (88 bytes): format 1's fields, then attention, W, s, reserved */
    int64_t slot2[10] = { 0, 0, FUZZ_BLOB_KV_HEADS, D, FUZZ_BLOB_DV, 12, 1, FUZZ_BLOB_WINDOW, FUZZ_BLOB_SINKS, 0 };
    const uint32_t words2[4] = { 2, 88, 0x01020304u, 0 };
    memcpy(slot2, words2, sizeof words2);
    int64_t slot2_linear[10];
    memcpy(slot2_linear, slot2, sizeof slot2);
    slot2_linear[6] = slot2_linear[7] = slot2_linear[8] = 0;
    const size_t slot2_floats = slot_floats + (size_t)(FUZZ_BLOB_KV_HEADS * slots * (D + FUZZ_BLOB_DV + 1));
    const uint8_t sign = FUZZ_BLOB_SIGN, cap = FUZZ_BLOB_CAPPED;
    return in("blob") ||
           put_blob("linear-signed", 0 | sign, "LMSTATE1", 48, 8, lin, 5, lin_floats) ||
           put_blob("linear-capped", 0 | sign | cap, "LMSTATE1", 48, 8, lin, 5, lin_floats) ||
           put_blob("linear-untagged-capped", 0 | cap, "LMSTATE1", 48, 8, lin, 5, lin_floats) ||
           put_blob("linear-format2", 0 | sign, "LMSTATE2", 80, 8, hyb, 4, lin_floats) ||
           put_blob("hybrid-signed", 1 | sign, "LMSTATE2", 80, 8, hyb, 9, hyb_floats) ||
           put_blob("hybrid-capped", 1 | sign | cap, "LMSTATE2", 80, 8, hyb, 9, hyb_floats) ||
           put_blob("slot-signed", 2 | sign, "LMSLOT01", 56, 8, slot_head, 6, slot_floats) ||
           put_blob("slot-capped", 2 | sign | cap, "LMSLOT01", 56, 8, slot_head, 6,
                    slot_floats) ||
           put_blob("slot-hybrid-signed", 3 | sign, "LMSLOT01", 88, 8, slot2, 10, slot2_floats) ||
           put_blob("slot-hybrid-capped", 3 | sign | cap, "LMSLOT01", 88, 8, slot2, 10, slot2_floats) ||
           put_blob("slot-linear-format2", 2 | sign, "LMSLOT01", 88, 8, slot2_linear, 10, slot_floats);
}

int main(int argc, char **argv)
{
    fuzz_keys keys;
    if (argc != 2 || fuzz_keys_make(&keys)) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    root = argv[1];
    return token_corpus(&keys) || lookup_corpus() || keyfile_corpus(&keys) || cli_corpus() ||
                   release_corpus() || blob_corpus()
               ? 1
               : 0;
}
