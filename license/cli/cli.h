/*
 * cli.h - what the two license tools share. lm-license is the customer's
 * tool and only verifies (verify, show, host-id, verify-release);
 * lm-license-vendor (license/vendor/) keeps the secret keys and signs
 * (keygen, pubkey, issue, sign-release). Both are built from license/ but
 * are not part of the library. Shared here: the command table and its
 * runner, option parsing, reading tokens and public keys, printing a
 * license, and the release manifest format.
 */
#ifndef LM_LICENSE_CLI_H
#define LM_LICENSE_CLI_H

#include "license.h"

#include <stdio.h>

/* Exit statuses: 0 done (verify: valid), 1 refused or failed, 2 bad usage
 * (an unknown or missing option or argument, or an option value that does
 * not parse). */
#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

/* The running tool's name for messages ("lm-license", "lm-license-vendor"). */
extern const char *cli_tool;

/* One command: its name, a one-line summary, its help text, its entry. */
typedef struct cli_command {
    const char *name;
    const char *summary;
    const char *help;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} cli_command;

/* main() of a tool: sets cli_tool, runs the command argv[1] names, prints
 * help for --help; returns the exit status. */
int cli_run(const char *tool, const char *about, const cli_command *commands, size_t n,
            int argc, char **argv);

/* The customer's commands (lm-license). */
int cli_verify(int argc, char **argv);
int cli_show(int argc, char **argv);
int cli_host_id(int argc, char **argv);
int cli_verify_release(int argc, char **argv);

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
 * ("-" = standard input), trimmed. CLI_OK, CLI_USAGE (both or neither
 * given) or CLI_FAIL (unreadable; message printed). */
int cli_read_token(const char *token, const char *path, char out[LML_INPUT_MAX + 1],
                   size_t *len);
/* A public key: 64 hex digits, or a file holding them. CLI_OK or CLI_USAGE
 * (message printed). */
int cli_pubkey_load(const char *arg, uint8_t pk[LML_PUBLIC_KEY_BYTES]);

/* ---- printing (inspect.c) ---- */

/* Prints the fields of lic, one per line. */
void cli_print_license(FILE *f, const lml_license *lic);

/* ---- signed releases (release.c) ----
 * A release folder holds MANIFEST: one line per file, "<sha256 hex>  <path>"
 * (the format of sha256sum, so `sha256sum -c MANIFEST` reads it), sorted by
 * path, covering every regular file of the folder but MANIFEST and
 * MANIFEST.sig; and MANIFEST.sig: the 64-byte Ed25519 signature over
 * CLI_RELEASE_DOMAIN followed by the bytes of MANIFEST, by the vendor's
 * release key (not a license key). */
#define CLI_RELEASE_DOMAIN "liquid-memory-release-v1"
#define CLI_MANIFEST "MANIFEST"
#define CLI_MANIFEST_SIG "MANIFEST.sig"
#define CLI_MANIFEST_MAX (1 << 20) /* bytes */
#define CLI_RELEASE_PATH_MAX 255   /* bytes of one path in a manifest */

/* One line of a manifest. */
typedef struct cli_manifest_entry {
    uint8_t sha256[32];
    char path[CLI_RELEASE_PATH_MAX + 1];
} cli_manifest_entry;

/* Parses the n bytes of a manifest, calling each(entry, ctx) per line in
 * order (each may stop the walk by returning non-zero, which is returned).
 * 0 when every line is well formed and the paths strictly ascend; else -1
 * with the line and the reason in why. A path is relative, of the
 * characters A-Z a-z 0-9 . _ + - and /, with no empty, "." or ".."
 * component. */
int cli_manifest_parse(const char *text, size_t n,
                       int (*each)(const cli_manifest_entry *e, void *ctx), void *ctx,
                       char *why, size_t why_len);
/* The SHA-256 of the regular file at path (opened without following a
 * symbolic link); 0, or -1 with the reason in why. */
int cli_sha256_file(const char *path, uint8_t out[32], char *why, size_t why_len);
/* The regular files under dir, as relative paths sorted bytewise, MANIFEST
 * and MANIFEST.sig left out; anything but folders and regular files (a
 * symbolic link, a device) is an error. Calls each(path, ctx) in order; 0,
 * the first non-zero each, or -1 with the reason in why. */
int cli_release_walk(const char *dir, int (*each)(const char *path, void *ctx), void *ctx,
                     char *why, size_t why_len);

#endif /* LM_LICENSE_CLI_H */
