/*
 * cli.h - what the files of lm-license share: the commands, option parsing,
 * reading keys and tokens, printing a license. lm-license is the vendor's
 * provisioning tool; it is built from license/ but is not part of the library.
 */
#ifndef LM_LICENSE_CLI_H
#define LM_LICENSE_CLI_H

#include "license.h"

#include <stdio.h>

/* Exit statuses: 0 done (verify: valid), 1 refused or failed, 2 bad usage. */
#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

/* One command: its name, a one-line summary, its help text, its entry. */
typedef struct cli_command {
    const char *name;
    const char *summary;
    const char *help;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} cli_command;

int cli_keygen(int argc, char **argv);
int cli_pubkey(int argc, char **argv);
int cli_issue(int argc, char **argv);
int cli_verify(int argc, char **argv);
int cli_show(int argc, char **argv);
int cli_host_id(int argc, char **argv);

/* ---- options (args.c) ---- */

/* "--name VALUE" / "--name=VALUE" when value is set, "--name" when flag is. */
typedef struct cli_opt {
    const char *name;
    const char **value;
    int *flag;
} cli_opt;

/* Parses argv[1..] into opts (a NULL-name-terminated list) and up to
 * max_pos positional arguments. CLI_OK, CLI_USAGE (message printed), or -1
 * when --help was asked (the caller prints its help). */
int cli_parse(int argc, char **argv, const cli_opt *opts, const char **pos, int max_pos);
/* Whole-string numbers: decimal, or 0x-hex for unsigned. 0 on success. */
int cli_parse_i64(const char *s, int64_t *out);
int cli_parse_u64(const char *s, uint64_t *out);
/* A time: unix seconds, or YYYY-MM-DD (00:00 UTC). 0 on success. */
int cli_parse_time(const char *s, int64_t *out);
/* Exactly 2n hex digits into out[n]. 0 on success. */
int cli_parse_hex(const char *s, uint8_t *out, size_t n);
/* The token named by the arguments: `token` itself, or the file `path`
 * ("-" = standard input), trimmed. CLI_OK or CLI_FAIL (message printed). */
int cli_read_token(const char *token, const char *path, char out[LML_INPUT_MAX + 1],
                   size_t *len);

/* ---- keys (keys.c) ---- */

/* A signing key held in guarded, locked memory (sodium_malloc). */
typedef struct cli_key {
    uint8_t *sk; /* LML_SECRET_KEY_BYTES */
    uint8_t pk[LML_PUBLIC_KEY_BYTES];
} cli_key;

/* Loads a secret key file written by keygen; refuses files that others can
 * read. CLI_OK or CLI_FAIL (message printed). */
int cli_key_load(const char *path, cli_key *key);
/* Wipes and frees the secret. */
void cli_key_free(cli_key *key);
/* A public key: 64 hex digits, or a file holding them. */
int cli_pubkey_load(const char *arg, uint8_t pk[LML_PUBLIC_KEY_BYTES]);

/* ---- printing (inspect.c) ---- */

/* Prints the fields of lic, one per line. */
void cli_print_license(FILE *f, const lml_license *lic);

#endif /* LM_LICENSE_CLI_H */
