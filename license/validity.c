/*
 * validity.c - whether a verified license applies here and now: its time
 * window against the clock (and the clock against the license's issue
 * time), and its host binding against this machine.
 */
#include "license.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void lml_format_time(char *out, size_t len, int64_t t)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (!gmtime_r(&tt, &tm) || !strftime(out, len, "%Y-%m-%d %H:%M:%S UTC", &tm))
        snprintf(out, len, "%lld (unix seconds)", (long long)t);
}

lml_result lml_license_check_time(const lml_license *lic, int64_t now, char *why, size_t why_len)
{
    char when[64];
    /* Only a license that expires gains from a clock set back, so only such
     * a license is refused for it: a wrong clock never locks out a license
     * without an expiry. issued >= 0, so the subtraction cannot overflow. */
    if (lic->expires && now < lic->issued - LML_CLOCK_SKEW) {
        lml_format_time(when, sizeof when, lic->issued);
        snprintf(why, why_len,
                 "the clock is more than a day behind the license's issue time %s: set the "
                 "clock right",
                 when);
        return LML_ERR_CLOCK;
    }
    if (now < lic->not_before) {
        lml_format_time(when, sizeof when, lic->not_before);
        snprintf(why, why_len, "the license is not valid before %s", when);
        return LML_ERR_NOT_YET_VALID;
    }
    if (lic->expires && now >= lic->expires) {
        lml_format_time(when, sizeof when, lic->expires);
        snprintf(why, why_len, "the license expired on %s", when);
        return LML_ERR_EXPIRED;
    }
    return LML_VALID;
}

lml_result lml_license_check_host(const lml_license *lic, char *why, size_t why_len)
{
    if (!lic->host_bound)
        return LML_VALID;
    uint8_t here[LML_HOST_BYTES];
    if (lml_host_id(here, why, why_len))
        return LML_ERR_HOST;
    if (sodium_memcmp(here, lic->host, LML_HOST_BYTES) != 0) {
        char hex[2 * LML_HOST_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, here, LML_HOST_BYTES);
        snprintf(why, why_len,
                 "the license is bound to another machine (this one's host id is %s)", hex);
        return LML_ERR_HOST;
    }
    return LML_VALID;
}
