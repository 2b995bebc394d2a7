/*
 * keyring.c - what the build compiles in: the vendor public keys the
 * library trusts (the current one, then the next one when a rotation is
 * under way) and the license ids it refuses although they verify. The
 * values come from a header the build generates (license/gen_key_header.sh,
 * mk/license.mk): `make VENDOR_PUBKEY=<hex> [VENDOR_NEXT_PUBKEY=<hex>]
 * [LICENSE_REVOKED=<file>]`, or else development keys made under build/.
 */
#include "license.h"
#include "lm_vendor_key.h"

#include <stdio.h>
#include <string.h>

const lml_key lml_keyring[] = LML_KEYRING;
const size_t lml_keyring_size = sizeof lml_keyring / sizeof *lml_keyring;
const int lml_development_build = LML_DEVELOPMENT_BUILD;

/* C has no empty arrays: an empty list is one zero id and a count of 0. */
const uint8_t lml_revoked_ids[][LML_ID_BYTES] = LML_REVOKED_IDS;
const size_t lml_revoked_count = LML_REVOKED_COUNT;

lml_result lml_license_check_revoked(const lml_license *lic, char *why, size_t why_len)
{
    for (size_t i = 0; i < lml_revoked_count; i++) {
        if (memcmp(lml_revoked_ids[i], lic->id, LML_ID_BYTES) != 0)
            continue;
        char hex[2 * LML_ID_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, lic->id, LML_ID_BYTES);
        snprintf(why, why_len,
                 "the license %s has been revoked by the vendor; ask the vendor for a new one",
                 hex);
        return LML_ERR_REVOKED;
    }
    return LML_VALID;
}
