/*
 * main.c - lm-license, the vendor's provisioning tool for Liquid Memory
 * license tokens: the command table, help, and `host-id`.
 */
#include "cli.h"

#include <string.h>

int cli_host_id(int argc, char **argv)
{
    int st = cli_parse(argc, argv, (const cli_opt[]){ { NULL, NULL, NULL } }, NULL, 0);
    if (st)
        return st;
    uint8_t id[LML_HOST_BYTES];
    char why[256], hex[2 * LML_HOST_BYTES + 1];
    if (lml_host_id(id, why, sizeof why)) {
        fprintf(stderr, "lm-license host-id: %s\n", why);
        return CLI_FAIL;
    }
    sodium_bin2hex(hex, sizeof hex, id, LML_HOST_BYTES);
    printf("%s\n", hex);
    return CLI_OK;
}

static const cli_command commands[] = {
    { "keygen", "make a new signing key pair",
      "usage: lm-license keygen --out PREFIX\n"
      "Writes PREFIX.secret (the secret key, mode 0600) and PREFIX.pub (the public key as\n"
      "hex). Refuses to overwrite either. Keep the secret offline; build the library with\n"
      "make VENDOR_PUBKEY=$(cat PREFIX.pub).\n",
      cli_keygen },
    { "pubkey", "print the public key of a secret key file",
      "usage: lm-license pubkey --key PREFIX.secret\n"
      "Prints the public key as 64 hex digits (the value of make VENDOR_PUBKEY=).\n",
      cli_pubkey },
    { "issue", "sign a license token",
      "usage: lm-license issue --key PREFIX.secret --licensee NAME\n"
      "                        (--days N | --expires DATE | --no-expiry)\n"
      "                        [--not-before DATE] [--max-seq-len N] [--features BITS]\n"
      "                        [--host HOSTID] [--out FILE]\n"
      "DATE is YYYY-MM-DD (00:00 UTC) or unix seconds. --days counts from --not-before\n"
      "(default: now). --max-seq-len is the context the license allows, in tokens\n"
      "(default 0 = unlimited). --features is a bit set (decimal or 0x hex, default 0).\n"
      "--host binds the license to the machine whose `lm-license host-id` printed HOSTID.\n"
      "Prints the token on stdout (or writes it to FILE) and its fields on stderr.\n"
      "Refuses a key file that others can read.\n",
      cli_issue },
    { "verify", "check a token against a public key; exit 0 only when valid",
      "usage: lm-license verify --pubkey HEX|FILE (TOKEN | --file PATH)\n"
      "Checks the signature with the given public key, then the payload, the validity\n"
      "window against the clock, and the host binding against this machine, as the\n"
      "library does. Prints the status (and the reason when refused) and the fields.\n"
      "PATH - reads standard input. Exit status 0 when valid, 1 when refused.\n",
      cli_verify },
    { "show", "decode a token WITHOUT checking it",
      "usage: lm-license show (TOKEN | --file PATH)\n"
      "Prints the fields of a token without checking its signature, labelled UNVERIFIED:\n"
      "for support questions only, never for deciding anything.\n",
      cli_show },
    { "host-id", "print this machine's host id (for issue --host)",
      "usage: lm-license host-id\n"
      "Prints a keyed BLAKE2b-256 hash of /etc/machine-id: the customer sends it to the\n"
      "vendor, who issues a license with --host HOSTID.\n",
      cli_host_id },
};
#define N_COMMANDS (sizeof commands / sizeof *commands)

static void usage(FILE *f)
{
    fprintf(f, "usage: lm-license COMMAND [OPTIONS]   (lm-license COMMAND --help for details)\n"
               "Provisioning tool for Liquid Memory license tokens.\n\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-8s  %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name))
            continue;
        int st = commands[i].run(argc - 1, argv + 1);
        if (st < 0) {
            fputs(commands[i].help, stdout);
            return CLI_OK;
        }
        return st;
    }
    fprintf(stderr, "lm-license: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
}
