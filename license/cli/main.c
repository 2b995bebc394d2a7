/*
 * main.c - lm-license, the customer's tool: checks license tokens and
 * releases, prints the host id. It holds no secret and cannot sign
 * anything; issuing is lm-license-vendor's (license/vendor/main.c).
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
        fprintf(stderr, "%s host-id: %s\n", cli_tool, why);
        return CLI_FAIL;
    }
    sodium_bin2hex(hex, sizeof hex, id, LML_HOST_BYTES);
    printf("%s\n", hex);
    return CLI_OK;
}

static const cli_command commands[] = {
    { "verify", "check a token as the library does; exit 0 only when valid",
      "usage: lm-license verify [--pubkey HEX|FILE] (TOKEN | --file PATH)\n"
      "Checks the signature with the keys built into this tool (the library's keyring),\n"
      "or with the one public key --pubkey gives, then the payload, the revocation list,\n"
      "the validity window and clock against this machine's clock, and the host binding\n"
      "against this machine, as the library does. Prints the status (and the reason\n"
      "when refused) and the signed fields. PATH - reads standard input.\n"
      "Exit status 0 when valid, 1 when refused, 2 for a usage error.\n",
      cli_verify },
    { "show", "decode a token WITHOUT checking it",
      "usage: lm-license show (TOKEN | --file PATH)\n"
      "Prints the fields of a token without checking its signature, labelled UNVERIFIED:\n"
      "for support questions only, never for deciding anything. A token whose fields\n"
      "break the format's rules (e.g. a licensee that is not clean UTF-8) is not shown.\n"
      "Exit status 0 when decoded, 1 when not, 2 for a usage error.\n",
      cli_show },
    { "host-id", "print this machine's host id (for a host-bound license)",
      "usage: lm-license host-id\n"
      "Prints a keyed BLAKE2b-256 hash of /etc/machine-id: send it to the vendor, who\n"
      "issues a license bound to this machine.\n",
      cli_host_id },
    { "verify-release", "check an unpacked release against its signed MANIFEST",
      "usage: lm-license verify-release --pubkey HEX|FILE DIR\n"
      "Checks that DIR/MANIFEST.sig is the signature of DIR/MANIFEST by the release key\n"
      "--pubkey gives (the vendor's release key, from a source you trust), that every\n"
      "file MANIFEST lists has its SHA-256, and that DIR holds no other file and no\n"
      "symbolic link. Exit status 0 when the release is intact, 1 when not, 2 for a\n"
      "usage error.\n",
      cli_verify_release },
};

int main(int argc, char **argv)
{
    return cli_run("lm-license", "Checks Liquid Memory license tokens and releases.", commands,
                   sizeof commands / sizeof *commands, argc, argv);
}
