/*
 * main.c - lm-license-vendor, the vendor's tool: makes key pairs, issues
 * license tokens and signs releases. It reads secret keys and stays with the
 * vendor; customers get lm-license, which only verifies.
 */
#include "vendor.h"

static const cli_command commands[] = {
    { "keygen", "make a new signing key pair (license or release key)",
      "usage: lm-license-vendor keygen --out PREFIX\n"
      "Writes PREFIX.secret (the secret key, mode 0600) and PREFIX.pub (the public key as\n"
      "hex) and prints the key id. Refuses to overwrite either. Keep the secret offline.\n"
      "A license key goes into the library with make VENDOR_PUBKEY=$(cat PREFIX.pub)\n"
      "(or VENDOR_NEXT_PUBKEY= during a rotation); a release key signs make dist.\n"
      "Use separate key pairs for licenses and for releases.\n",
      cli_keygen },
    { "pubkey", "print the public key of a secret key file",
      "usage: lm-license-vendor pubkey --key PREFIX.secret\n"
      "Prints the public key as 64 hex digits on stdout (the value of make\n"
      "VENDOR_PUBKEY=) and its key id on stderr.\n",
      cli_pubkey },
    { "issue", "sign a license token",
      "usage: lm-license-vendor issue --key PREFIX.secret --licensee NAME\n"
      "                        (--days N | --expires DATE | --never-expires)\n"
      "                        [--not-before DATE] [--max-seq-len N] [--features BITS]\n"
      "                        [--host HOSTID] [--out FILE]\n"
      "DATE is YYYY-MM-DD (00:00 UTC) or unix seconds, after 1970-01-01. --days counts\n"
      "from --not-before (default: now). A license without expiry needs --never-expires.\n"
      "--licensee is 1 to 128 bytes of UTF-8 without control, bidirectional-override or\n"
      "line-separator characters. --max-seq-len is the context the license allows, in\n"
      "tokens (default 0 = unlimited). --features is a bit set (decimal or 0x hex,\n"
      "default 0). --host binds the license to the machine whose `lm-license host-id`\n"
      "printed HOSTID. Prints the token (format LM2, naming the key's id) on stdout, or\n"
      "writes it to FILE, which must not exist: --out never replaces a file and never\n"
      "writes through a symbolic link (and never names the --key file). The fields go\n"
      "to stderr. Refuses a key file that others can read.\n"
      "Exit status 0 when issued, 1 when it failed, 2 for a usage error.\n",
      cli_issue },
    { "sign-release", "write and sign the MANIFEST of a release folder",
      "usage: lm-license-vendor sign-release --key RELEASE.secret DIR\n"
      "Writes DIR/MANIFEST (the SHA-256 of every file under DIR, sorted by path; no\n"
      "symbolic links allowed) and DIR/MANIFEST.sig (its Ed25519 signature by the\n"
      "release key). Neither may exist yet. Customers check the folder with\n"
      "lm-license verify-release --pubkey RELEASE.pub DIR.\n",
      cli_sign_release },
};

int main(int argc, char **argv)
{
    return cli_run("lm-license-vendor",
                   "The vendor's tool for Liquid Memory: keys, license tokens, signed releases.",
                   commands, sizeof commands / sizeof *commands, argc, argv);
}
