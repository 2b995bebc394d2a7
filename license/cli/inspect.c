/*
 * inspect.c - `lm-license verify` (signature against the built-in keyring or
 * a given public key, then revocation, time, clock and host, as the library
 * checks them) and `lm-license show` (decodes without checking anything, and
 * says so).
 */
#include "cli.h"

#include <string.h>
#include <time.h>

int cli_verify(int argc, char **argv)
{
    const char *pubkey = NULL, *file = NULL, *pos[1] = { NULL };
    const cli_opt opts[] = { { "pubkey", &pubkey, NULL }, { "file", &file, NULL },
                             { NULL, NULL, NULL } };
    int st = cli_parse(argc, argv, opts, pos, 1);
    if (st)
        return st;
    lml_key given;
    const lml_key *keys = lml_keyring;
    size_t n_keys = lml_keyring_size;
    if (pubkey) {
        if ((st = cli_pubkey_load(pubkey, given.pk)))
            return st;
        keys = &given, n_keys = 1;
    }
    char token[LML_INPUT_MAX + 1], why[256];
    size_t n;
    if ((st = cli_read_token(pos[0], file, token, &n)))
        return st;
    lml_license lic;
    lml_result r = lml_token_verify(token, n, keys, n_keys, &lic, why, sizeof why);
    const int signed_ok = r == LML_VALID;
    if (r == LML_VALID)
        r = lml_license_check_revoked(&lic, why, sizeof why);
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
