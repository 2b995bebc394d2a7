/*
 * hostid.c - the host id a license can be bound to: BLAKE2b-256, keyed with
 * a Liquid Memory string, of the systemd/D-Bus machine id. Hashing keeps the
 * machine id itself out of tokens and makes the value useless elsewhere.
 */
#include "license.h"

#include <stdio.h>
#include <string.h>

static const char *const id_files[] = { "/etc/machine-id", "/var/lib/dbus/machine-id" };
static const char host_key[] = "liquid-memory-host-v1";

int lml_host_id(uint8_t out[LML_HOST_BYTES], char *why, size_t why_len)
{
    if (lml_crypto_init()) {
        snprintf(why, why_len, "libsodium could not start");
        return -1;
    }
    for (size_t i = 0; i < sizeof id_files / sizeof *id_files; i++) {
        char buf[LML_INPUT_MAX + 1];
        size_t n;
        char err[160];
        if (lml_read_small_file(id_files[i], buf, &n, err, sizeof err) != LML_VALID || n == 0)
            continue;
        crypto_generichash(out, LML_HOST_BYTES, (const unsigned char *)buf, n,
                           (const unsigned char *)host_key, sizeof host_key - 1);
        return 0;
    }
    snprintf(why, why_len, "this machine has no machine id (%s or %s) to check a host binding against",
             id_files[0], id_files[1]);
    return -1;
}
