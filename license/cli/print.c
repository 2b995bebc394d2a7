/*
 * print.c - the fields of a license as the tools print them, one per line.
 * Only fields that passed the payload's rules reach here (the decoder and
 * the issuing tool both apply them), so a licensee is always well-formed
 * UTF-8 without control or bidirectional characters (license/text.c) and is
 * printed as it is.
 */
#include "cli.h"

void cli_print_license(FILE *f, const lml_license *lic)
{
    char id[2 * LML_ID_BYTES + 1], t[64];
    sodium_bin2hex(id, sizeof id, lic->id, LML_ID_BYTES);
    fprintf(f, "licensee:     %s\n", lic->licensee);
    fprintf(f, "license id:   %s\n", id);
    fprintf(f, "format:       LM%d\n", lic->version);
    if (lic->version >= 2) {
        char kid[2 * LML_KEY_ID_BYTES + 1];
        sodium_bin2hex(kid, sizeof kid, lic->key_id, LML_KEY_ID_BYTES);
        fprintf(f, "key id:       %s\n", kid);
    }
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
