/*
 * inspect.c - `lm-license verify` (signature with a given public key, then
 * time and host, as the library checks them) and `lm-license show` (decodes
 * without checking anything, and says so), and the printing of fields.
 */
#include "cli.h"

#include <string.h>
#include <time.h>

void cli_print_license(FILE *f, const lml_license *lic)
{
    char id[2 * LML_ID_BYTES + 1], t[64];
    sodium_bin2hex(id, sizeof id, lic->id, LML_ID_BYTES);
    fprintf(f, "licensee:     %s\n", lic->licensee);
    fprintf(f, "license id:   %s\n", id);
    lml_format_time(t, sizeof t, lic->issued);
    fprintf(f, "issued:       %s\n", t);
    lml_format_time(t, sizeof t, lic->not_before);
    fprintf(f, "not before:   %s\n", t);
    lml_format_time(t, sizeof t, lic->expires);
    fprintf(f, "expires:      %s\n", lic->expires ? t : "never");
    if (lic->max_seq_len)
        fprintf(f, "max seq len:  %lld tokens\n", (long long)lic->max_seq_len);
    else
        fprintf(f, "max seq len:  unlimited\n");
    fprintf(f, "features:     0x%016llx\n", (unsigned long long)lic->features);
    if (lic->host_bound) {
        char host[2 * LML_HOST_BYTES + 1];
        sodium_bin2hex(host, sizeof host, lic->host, LML_HOST_BYTES);
        fprintf(f, "host:         %s\n", host);
    } else {
        fprintf(f, "host:         any\n");
    }
}

int cli_verify(int argc, char **argv)
{
    const char *pubkey = NULL, *file = NULL, *pos[1] = { NULL };
    const cli_opt opts[] = { { "pubkey", &pubkey, NULL }, { "file", &file, NULL },
                             { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, pos, 1);
    if (st)
        return st;
    if (!pubkey) {
        fprintf(stderr, "lm-license verify: --pubkey HEX|FILE (the vendor public key) is "
                        "required\n");
        return CLI_USAGE;
    }
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
    char token[LML_INPUT_MAX + 1], why[256];
    size_t n;
    if ((st = cli_pubkey_load(pubkey, pk)) || (st = cli_read_token(pos[0], file, token, &n)))
        return st;
    lml_license lic;
    lml_result r = lml_token_verify(token, n, pk, &lic, why, sizeof why);
    const int signed_ok = r == LML_VALID;
    if (r == LML_VALID)
        r = lml_license_check_time(&lic, (int64_t)time(NULL), why, sizeof why);
    if (r == LML_VALID)
        r = lml_license_check_host(&lic, why, sizeof why);
    if (r == LML_VALID)
        printf("status:       valid\n");
    else
        printf("status:       refused: %s (%s)\n", lml_result_string(r), why);
    /* Fields are shown only when the signature vouches for them. */
    if (signed_ok)
        cli_print_license(stdout, &lic);
    return r == LML_VALID ? CLI_OK : CLI_FAIL;
}

int cli_show(int argc, char **argv)
{
    const char *file = NULL, *pos[1] = { NULL };
    const cli_opt opts[] = { { "file", &file, NULL }, { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, pos, 1);
    if (st)
        return st;
    char token[LML_INPUT_MAX + 1], why[256];
    size_t n;
    if ((st = cli_read_token(pos[0], file, token, &n)))
        return st;
    lml_license lic;
    lml_result r = lml_token_decode_unverified(token, n, &lic, why, sizeof why);
    if (r != LML_VALID) {
        printf("status:       cannot decode: %s (%s)\n", lml_result_string(r), why);
        return CLI_FAIL;
    }
    printf("status:       UNVERIFIED (signature not checked: use verify before trusting this)\n");
    cli_print_license(stdout, &lic);
    return CLI_OK;
}
