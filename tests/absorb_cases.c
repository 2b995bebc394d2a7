/*
 * absorb_cases.c - lm_linear_attn_absorb's problems and shared scenario
 * (absorb_cases.h), for any backend.
 *
 * Inputs: k uniform in [-2, 2) for elu+1 (else [-0.5, 1.5): relu keeps the
 * normaliser away from zero), v in [-1, 1), a mask of 25% of the keys,
 * decays 1 - 2^-(3 + h % 6) per kv head, an initial state S in [-1, 1) and
 * z in [1, 5). The state is read by the call, so it cannot be poisoned: a
 * NaN left in it counts as unwritten.
 */
#include "absorb_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void aprob_init(aprob *p, const test_dev *dev, const acase *c)
{
    memset(p, 0, sizeof *p);
    p->dev = dev;
    p->c = *c;
    const int64_t B = c->B, L = c->L;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->sk, B, L, c->Hkv, c->Dk, c->seq_first);
    ref_strides4(p->sv, B, L, c->Hkv, c->Dv, c->seq_first);
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        ck_assert_ptr_nonnull(p->mask);
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    ck_assert(c->Hkv <= 64);
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->S0 = calloc((size_t)p->nS, sizeof(float));
    p->z0 = calloc((size_t)p->nz, sizeof(float));
    double *S0d = calloc((size_t)p->nS, sizeof(double)), *z0d = calloc((size_t)p->nz, sizeof(double));
    p->want_S = malloc((size_t)p->nS * sizeof(double));
    p->want_z = malloc((size_t)p->nz * sizeof(double));
    ck_assert(p->S0 && p->z0 && S0d && z0d && p->want_S && p->want_z);
    for (int64_t i = 0; c->state_in && i < p->nS; i++)
        S0d[i] = p->S0[i] = (float)(ref_uniform() * 2 - 1);
    for (int64_t i = 0; c->state_in && i < p->nz; i++)
        z0d[i] = p->z0[i] = (float)(1 + 4 * ref_uniform());
    ref_problem r = { .B = B, .Lk = L, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .k = { p->k.ref, { p->sk[0], p->sk[1], p->sk[2], p->sk[3] } },
                      .v = { p->v.ref, { p->sv[0], p->sv[1], p->sv[2], p->sv[3] } },
                      .mask = p->mask, .state = S0d, .normalizer = z0d,
                      .decay = c->decay ? p->decay : NULL, .feature_map = c->fm };
    ref_absorb(&r, p->want_S, p->want_z);
    free(S0d);
    free(z0d);
    p->dk = test_dev_input(dev, p->k.data, tbuf_bytes(&p->k));
    p->dv = test_dev_input(dev, p->v.data, tbuf_bytes(&p->v));
    p->dmask = test_dev_input(dev, p->mask, (size_t)(B * L));
}

void aprob_free(aprob *p)
{
    test_dev_drop(p->dev, p->dk), test_dev_drop(p->dev, p->dv), test_dev_drop(p->dev, p->dmask);
    tbuf_free(&p->k), tbuf_free(&p->v);
    free(p->mask);
    free(p->S0), free(p->z0);
    free(p->want_S), free(p->want_z);
}

void aprob_state0(const aprob *p, float **S, float **z)
{
    *S = malloc((size_t)p->nS * sizeof(float));
    *z = malloc((size_t)p->nz * sizeof(float));
    ck_assert(*S && *z);
    memcpy(*S, p->S0, (size_t)p->nS * sizeof(float));
    memcpy(*z, p->z0, (size_t)p->nz * sizeof(float));
}

void acall_init(acall *k, const aprob *p, lm_device where, float *S, float *z, int64_t t0, int64_t n)
{
    const acase *c = &p->c;
    const int host = where == LM_CPU;
    memset(k, 0, sizeof *k);
    k->k = ref_tokens(ref_tensor4(host ? p->k.data : p->dk, c->dtype, where, p->sk, c->B, c->L, c->Hkv, c->Dk), t0, n);
    k->v = ref_tokens(ref_tensor4(host ? p->v.data : p->dv, c->dtype, where, p->sv, c->B, c->L, c->Hkv, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d((host ? p->mask : p->dmask) + t0, LM_BOOL, where, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = S, k->a.normalizer = z, k->a.position = t0;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

void absorb_run(const aprob *p, const test_dev *dev, const int64_t *cuts, int n, float **S, float **z)
{
    const size_t bS = (size_t)p->nS * sizeof(float), bz = (size_t)p->nz * sizeof(float);
    float *dS = test_dev_upload(dev, p->S0, bS), *dz = test_dev_upload(dev, p->z0, bz);
    for (int s = 0; s < n; s++) {
        const int64_t t0 = s ? cuts[s - 1] : 0;
        acall k;
        acall_init(&k, p, dev->device, dS, dz, t0, cuts[s] - t0);
        ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "absorb [%lld, %lld) on device %d: %s",
                      (long long)t0, (long long)cuts[s], (int)dev->device, lm_last_error());
    }
    *S = malloc(bS ? bS : 1), *z = malloc(bz ? bz : 1);
    ck_assert(*S && *z);
    dev->download(*S, dS, bS);
    dev->download(*z, dz, bz);
    dev->release(dS), dev->release(dz);
}

void absorb_check_state(const aprob *p, const float *S, const float *z, const char *what)
{
    const acase *c = &p->c;
    char d[256];
    snprintf(d, sizeof d, "%s: dtype %d B %lld L %lld Hkv %lld D %lld/%lld fm %d decay %d mask %d state %d "
             "seq_first %d precision %d", what, (int)c->dtype, (long long)c->B, (long long)c->L,
             (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->fm, c->decay, c->mask, c->state_in,
             c->seq_first, (int)c->precision);
    const double bound = p->dev->state_bound(c->dtype);
    const ref_err es = ref_compare_f32(S, p->want_S, p->nS), ez = ref_compare_f32(z, p->want_z, p->nz);
    REF_CHECK(es, bound, "(S, %s)", d);
    REF_CHECK(ez, bound, "(z, %s)", d);
}

void absorb_case_modes(const acase *base, int full, void (*check)(const acase *c))
{
    for (int fm = 0; fm < 3; fm++)
        for (int decay = 0; decay < 2; decay++)
            for (int mask = 0; mask < 2; mask++)
                for (int st = 0; st < 2; st++) {
                    if (!full && (st || fm == LM_FEATURE_RELU))
                        continue;
                    acase c = *base;
                    c.fm = fm, c.decay = decay, c.mask = mask, c.state_in = st;
                    c.Hkv = 4;
                    check(&c);
                }
}
