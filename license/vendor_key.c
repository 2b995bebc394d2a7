/*
 * vendor_key.c - the one public key the library trusts. The value comes from
 * a header the build generates (mk/license.mk): the vendor's key given as
 * `make VENDOR_PUBKEY=<hex>`, or else a development key made under build/.
 */
#include "license.h"
#include "lm_vendor_key.h"

const uint8_t lml_vendor_public_key[LML_PUBLIC_KEY_BYTES] = LML_VENDOR_PUBLIC_KEY;
const int lml_development_build = LML_DEVELOPMENT_BUILD;
