/*
 * policy.c - the license in force, and the gate the rest of the library
 * calls (lmi_license_check) before every prefill and decode step.
 *
 * The token is looked up and verified once per process, and again at each
 * lm_license_reload (signature against the keyring, payload, revocation
 * list, host binding, clock mark: the only I/O), then kept in a cache
 * guarded by one mutex. A check afterwards is a lock, a clock read and a few
 * comparisons, so it is cheap enough for every decode step, also inside CUDA
 * graph capture (it makes no CUDA call). The time window and the clock are
 * checked on every call, so expiry is honoured during long runs, and a clock
 * set back more than LML_CLOCK_SKEW behind the latest time seen (in this
 * process, or recorded in the clock mark file) refuses a license that
 * expires. The cache is the library's only mutable global besides the
 * thread-local error text.
 */
#include "lm_impl.h"
#include "license.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define INSTALL_HINT                                                                             \
    "install a license with lm_license_set(), the environment variable LM_LICENSE (the token) " \
    "or LM_LICENSE_FILE (its path), or the file ~/.config/liquid-memory/license"

/* A license found somewhere, after verification. */
typedef struct held {
    int present;       /* a token, or a configured source that could not be read */
    lml_result result; /* LML_VALID once signature, payload and host binding verified */
    lml_license lic;   /* the fields, when result is LML_VALID or a time error */
    char source[256];
    char reason[256];  /* why result is not LML_VALID */
} held;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static held from_set;   /* installed by lm_license_set; wins when present */
static held from_env;   /* found by lml_lookup on first need or lm_license_reload */
static int env_looked;  /* from_env is filled */
static int64_t latest;  /* the latest time seen: clocks, and the mark file */
static _Thread_local int eval_noticed; /* this thread was told about evaluation mode */

/* Verifies len bytes of tok into h: everything but the time window. */
static void verify(held *h, const char *tok, size_t len)
{
    h->result = lml_token_verify(tok, len, lml_keyring, lml_keyring_size, &h->lic, h->reason,
                                 sizeof h->reason);
    if (h->result == LML_VALID)
        h->result = lml_license_check_revoked(&h->lic, h->reason, sizeof h->reason);
    if (h->result == LML_VALID)
        h->result = lml_license_check_host(&h->lic, h->reason, sizeof h->reason);
}

/* The environment's license (LM_LICENSE, LM_LICENSE_FILE, the default file)
 * into h, verified. I/O: lm_license_reload does it before taking the lock;
 * the first lookup (in_force) does it under the lock, once. */
static void look_up(held *h)
{
    lml_found f;
    lml_lookup(&f);
    memset(h, 0, sizeof *h);
    h->present = f.present;
    snprintf(h->source, sizeof h->source, "%s", f.source);
    if (f.present && f.error != LML_VALID) {
        h->result = f.error;
        snprintf(h->reason, sizeof h->reason, "%s", f.why);
    } else if (f.present) {
        verify(h, f.token, f.len);
    }
}

/* A license that expires is what a clock set back would stretch: for one,
 * returns the latest time recorded on this machine (to join the ones seen
 * here) and records now. I/O, as look_up. */
static int64_t clock_mark_for(const held *h, int64_t now)
{
    if (!h->present || h->result != LML_VALID || !h->lic.expires)
        return 0;
    int64_t mark = lml_clock_mark_read();
    lml_clock_mark_write(now);
    return mark;
}

/* Adopts the latest time seen. Locked. */
static void see(int64_t t)
{
    if (t > latest)
        latest = t;
}

/* The license in force; looks in the environment the first time. Locked. */
static const held *in_force(void)
{
    if (from_set.present)
        return &from_set;
    if (!env_looked) {
        look_up(&from_env);
        see(clock_mark_for(&from_env, (int64_t)time(NULL)));
        env_looked = 1;
    }
    return &from_env;
}

/* The time window and the clock of h's license at now. Locked. */
static lml_result check_clock(const held *h, int64_t now, char *why, size_t why_len)
{
    lml_result r = lml_license_check_time(&h->lic, now, why, why_len);
    if (r == LML_VALID && h->lic.expires && now < latest - LML_CLOCK_SKEW) {
        char when[64];
        lml_format_time(when, sizeof when, latest);
        snprintf(why, why_len,
                 "the clock is more than a day behind %s, a time this machine has already "
                 "seen: set the clock right",
                 when);
        r = LML_ERR_CLOCK;
    }
    see(now);
    return r;
}

static lm_status check_locked(int64_t tokens)
{
    const held *h = in_force();
    if (!h->present) {
        if (tokens > LM_EVAL_MAX_TOKENS)
            return lmi_error(LM_ERR_LICENSE,
                             "evaluation mode allows %d tokens of context and this call needs "
                             "%lld: " INSTALL_HINT,
                             LM_EVAL_MAX_TOKENS, (long long)tokens);
        if (!eval_noticed) {
            eval_noticed = 1;
            lmi_notice("evaluation mode: no license found, context is limited to %d tokens; "
                       "to lift the limit, " INSTALL_HINT,
                       LM_EVAL_MAX_TOKENS);
        }
        return LM_OK;
    }
    if (h->result != LML_VALID)
        return lmi_error(LM_ERR_LICENSE,
                         "the license from %s was refused (%s): %s. Install a valid license, "
                         "or remove this one to run in evaluation mode",
                         h->source, lml_result_string(h->result), h->reason);
    char why[192];
    lml_result r = check_clock(h, (int64_t)time(NULL), why, sizeof why);
    if (r != LML_VALID)
        return lmi_error(LM_ERR_LICENSE, "the license from %s for %s is %s: %s", h->source,
                         h->lic.licensee, lml_result_string(r), why);
    if (h->lic.max_seq_len && tokens > h->lic.max_seq_len)
        return lmi_error(LM_ERR_LICENSE,
                         "the license for %s allows %lld tokens of context and this call needs "
                         "%lld: ask your vendor for a license with a longer sequence length",
                         h->lic.licensee, (long long)h->lic.max_seq_len, (long long)tokens);
    return LM_OK;
}

lm_status lmi_license_check(int64_t tokens)
{
    pthread_mutex_lock(&lock);
    lm_status st = check_locked(tokens);
    pthread_mutex_unlock(&lock);
    return st;
}

lm_status lmi_license_limits(lmi_limits *out)
{
    pthread_mutex_lock(&lock);
    lm_status st = check_locked(1);
    const held *h = in_force();
    if (!h->present)
        *out = (lmi_limits){ .cap = LM_EVAL_MAX_TOKENS, .evaluation = 1 };
    else
        *out = (lmi_limits){ .cap = h->lic.max_seq_len, .expiring = h->lic.expires != 0 };
    pthread_mutex_unlock(&lock);
    return st;
}

const char *lmi_license_build_note(void)
{
    return lml_development_build ? " (development build)" : "";
}

/* Not a token at all is a bad argument; a token refused is a license error. */
static lm_status status_of(lml_result r)
{
    switch (r) {
    case LML_ERR_EMPTY:
    case LML_ERR_TOO_LONG:
    case LML_ERR_FORMAT:
    case LML_ERR_BASE64: return LM_ERR_INVALID_ARG;
    default: return LM_ERR_LICENSE;
    }
}

/* Installs h (verified, not yet checked against the clock) into *slot, and
 * marks the environment as looked at when `looked` is given, if h is in force
 * now; else leaves both as they were and says why. */
static lm_status adopt(held *h, held *slot, int *looked, const char *caller)
{
    const int64_t now = (int64_t)time(NULL), mark = clock_mark_for(h, now);
    pthread_mutex_lock(&lock);
    see(mark);
    if (h->result == LML_VALID)
        h->result = check_clock(h, now, h->reason, sizeof h->reason);
    if (h->result == LML_VALID) {
        *slot = *h;
        if (looked)
            *looked = 1;
    }
    pthread_mutex_unlock(&lock);
    if (h->result != LML_VALID)
        return lmi_error(status_of(h->result),
                         "%s: the token%s%s was refused (%s): %s; the license in force is "
                         "unchanged",
                         caller, looked ? " from " : "", looked ? h->source : "",
                         lml_result_string(h->result), h->reason);
    return LM_OK;
}

lm_status lm_license_set(const char *token)
{
    if (!token) {
        pthread_mutex_lock(&lock);
        memset(&from_set, 0, sizeof from_set);
        pthread_mutex_unlock(&lock);
        return LM_OK;
    }
    size_t n = strnlen(token, LML_INPUT_MAX + 1);
    if (n > LML_INPUT_MAX)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "lm_license_set: the token is longer than %d bytes: not a license token",
                         LML_INPUT_MAX);
    char text[LML_INPUT_MAX + 1];
    memcpy(text, token, n);
    lml_trim(text, &n);
    /* Verified before taking the lock: a slow verification never stalls a check. */
    held h;
    memset(&h, 0, sizeof h);
    h.present = 1;
    snprintf(h.source, sizeof h.source, "lm_license_set");
    verify(&h, text, n);
    return adopt(&h, &from_set, NULL, "lm_license_set");
}

lm_status lm_license_reload(void)
{
    /* Looked up and verified before taking the lock, as in lm_license_set. */
    held h;
    look_up(&h);
    if (!h.present)
        return lmi_error(LM_ERR_LICENSE,
                         "lm_license_reload: no license found to reload (LM_LICENSE, "
                         "LM_LICENSE_FILE, ~/.config/liquid-memory/license); the license in "
                         "force is unchanged");
    return adopt(&h, &from_env, &env_looked, "lm_license_reload");
}

static void copy_fields(lm_license_details *out, const lml_license *lic)
{
    snprintf(out->licensee, sizeof out->licensee, "%s", lic->licensee);
    sodium_bin2hex(out->license_id, sizeof out->license_id, lic->id, LML_ID_BYTES);
    out->issued = lic->issued;
    out->not_before = lic->not_before;
    out->expires = lic->expires;
    out->max_seq_len = lic->max_seq_len;
    out->features = lic->features;
    if (lic->version >= 2)
        sodium_bin2hex(out->key_id, sizeof out->key_id, lic->key_id, LML_KEY_ID_BYTES);
}

lm_status lm_license_info(lm_license_details *caller)
{
    if (!caller)
        return lmi_error(LM_ERR_INVALID_ARG, "out is NULL");
    lm_license_details full, *out = &full;
    memset(out, 0, sizeof *out);
    out->development_build = lml_development_build;
    pthread_mutex_lock(&lock);
    const held *h = in_force();
    if (!h->present) {
        out->mode = LM_LICENSE_EVALUATION;
        out->max_seq_len = LM_EVAL_MAX_TOKENS;
        snprintf(out->source, sizeof out->source, "none");
    } else {
        snprintf(out->source, sizeof out->source, "%s", h->source);
        lml_result r = h->result;
        snprintf(out->reason, sizeof out->reason, "%s", h->reason);
        if (r == LML_VALID) {
            copy_fields(out, &h->lic);
            r = check_clock(h, (int64_t)time(NULL), out->reason, sizeof out->reason);
        }
        out->mode = r == LML_VALID ? LM_LICENSE_LICENSED : LM_LICENSE_INVALID;
    }
    pthread_mutex_unlock(&lock);
    return lmi_sized_out(caller, out, sizeof *out, LMI_SIZE_UNTIL(lm_license_details, reason),
                         "lm_license_details");
}
