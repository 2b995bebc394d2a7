/*
 * test_gpu_den.c - the linear prefill's internal denominator output
 * (lmi_core_params.den, written by the v2 kernel's epilogue; the hybrid
 * prefill's body reads it: src/cuda_hybrid.c): on the CUDA backend's own
 * table, since den is not in the public API.
 *
 * The suite opens the backend library itself (plugin.h) and hands it an error
 * sink of its own, which replaces the core's for the rest of the process:
 * main.c runs this suite last, or alone (`lm-gpu-tests den`).
 *
 * Checked, on ragged L, with and without a mask, a starting state (z0 != 0),
 * segments (few heads: ABSORB + scan + CAUSAL), the compensated kernel, and
 * normalised and unnormalised calls (the hybrid's):
 *   - den (poisoned first) holds every row's d_i against the float64
 *     phi(q_i) . (z0 + sum over unmasked j <= i of phi(k_j)), per row within
 *     den_bound (below);
 *   - out and the final state are bit-identical with and without den
 *     (poisoned outputs, the same starting state);
 *   - a launch v2 does not run (a q view off 16-byte alignment, or a GPU that
 *     is not compute capability 9.0) refuses den: LM_ERR_INTERNAL, out still
 *     poisoned, the state unchanged.
 */
#include "gpu_util.h"
#include "plugin.h"

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char den_msg[512];

static lm_status den_verror(lm_status status, const char *fmt, va_list ap)
{
    vsnprintf(den_msg, sizeof den_msg, fmt, ap);
    return status;
}

/* The CUDA backend's table, from the backend library beside the core. */
static const lmi_backend *cuda_backend(void)
{
    static const lmi_backend *be;
    if (be)
        return be;
    void *h = dlopen(LMI_CUDA_PLUGIN_FILE, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h, "dlopen %s: %s", LMI_CUDA_PLUGIN_FILE, dlerror());
    lmi_plugin_entry entry;
    *(void **)&entry = dlsym(h, LMI_CUDA_PLUGIN_SYMBOL);
    ck_assert_msg(entry, "dlsym %s: %s", LMI_CUDA_PLUGIN_SYMBOL, dlerror());
    const lmi_plugin_host host = { LM_VERSION_NUMBER, LMI_PLUGIN_LAYOUT, den_verror };
    lmi_plugin pl;
    ck_assert_msg(entry(&host, &pl) == LM_OK, "the backend refused the handshake");
    ck_assert_msg(pl.backend(-1, &be) == LM_OK, "backend: %s", den_msg);
    return be;
}

/* Per row, |den - want| <= den_bound * want: every term of the sum is >= 0,
 * so the row's relative error is at most one term's: phi(q) and phi(k)
 * rounded to bf16 for the tensor cores (2^-9 each, the z tile's hi + lo
 * 2^-16), plus fp32 sums over at most L + 64 terms (2^-24 each, doubled). */
static double den_bound(int64_t L)
{
    return ldexp(1.0, -8) + ldexp(1.0, -16) + (double)(L + 64) * ldexp(1.0, -23);
}

typedef struct dcase {
    int64_t B, L, Hq, Hkv, D;
    int mask, comp, normalize, state;
} dcase;

typedef struct dprob {
    dcase c;
    tbuf q, k, v, S0, z0;
    uint8_t *mask;
    int64_t s4q[4], s4k[4], nout, nS, nz, nden;
    void *dq, *dk, *dv, *dout;
    uint8_t *dmask;
    float *dS, *dz, *dden;
} dprob;

static void dprob_init(dprob *p, const dcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L, D = c->D;
    p->q = tbuf_new(LM_BF16, B * L * c->Hq * D + 8); /* 8 more: the misaligned view */
    p->k = tbuf_new(LM_BF16, B * L * c->Hkv * D);
    p->v = tbuf_new(LM_BF16, B * L * c->Hkv * D);
    tbuf_random(&p->q, -1, 1), tbuf_random(&p->k, -1, 1), tbuf_random(&p->v, -1, 1);
    ref_strides4(p->s4q, B, L, c->Hq, D, 0);
    ref_strides4(p->s4k, B, L, c->Hkv, D, 0);
    p->nout = B * L * c->Hq * D, p->nS = B * c->Hkv * D * D, p->nz = B * c->Hkv * D, p->nden = B * c->Hq * L;
    p->S0 = tbuf_new(LM_F32, p->nS), p->z0 = tbuf_new(LM_F32, p->nz);
    tbuf_random(&p->S0, -0.5, 0.5);
    tbuf_random(&p->z0, 0, 20); /* a sum of phi(k): >= 0 */
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.2;
        p->dmask = dupload_bytes(p->mask, (size_t)(B * L));
    }
    p->dq = dupload(&p->q), p->dk = dupload(&p->k), p->dv = dupload(&p->v);
    p->dout = dmalloc((size_t)p->nout * 2);
    p->dS = dmalloc((size_t)p->nS * 4), p->dz = dmalloc((size_t)p->nz * 4);
    p->dden = dmalloc((size_t)p->nden * 4);
}

static void dprob_free(dprob *p)
{
    tbuf_free(&p->q), tbuf_free(&p->k), tbuf_free(&p->v), tbuf_free(&p->S0), tbuf_free(&p->z0);
    free(p->mask);
    cudaFree(p->dq), cudaFree(p->dk), cudaFree(p->dv), cudaFree(p->dout), cudaFree(p->dmask);
    cudaFree(p->dS), cudaFree(p->dz), cudaFree(p->dden);
}

static lmi_view view(void *data, const int64_t *s)
{
    lmi_view v = { data, LM_BF16, { s[0], s[1], s[2], s[3] } };
    return v;
}

/* A refusal of den: LM_ERR_INTERNAL, the message saying why. */
static void expect_refused(lm_status st, int i)
{
    ck_assert_msg(st == LM_ERR_INTERNAL, "case %d: den on a launch v2 does not run gave %s (%s)", i,
                  lm_status_string(st), den_msg);
    ck_assert_msg(strstr(den_msg, "denominator"), "case %d: message \"%s\"", i, den_msg);
}

/* One prefill of the case on the backend: out poisoned, the starting state
 * uploaded, den (poisoned) when asked; q_off elements into q's buffer. */
static lm_status run(const dprob *p, int with_den, int64_t q_off)
{
    const dcase *c = &p->c;
    lmi_core_params a;
    memset(&a, 0, sizeof a);
    a.B = c->B, a.L = a.Lk = c->L, a.Hq = c->Hq, a.Hkv = c->Hkv, a.Dk = a.Dv = c->D;
    a.q = view((char *)p->dq + 2 * q_off, p->s4q), a.out = view(p->dout, p->s4q);
    a.k = view(p->dk, p->s4k), a.v = view(p->dv, p->s4k);
    a.mask = p->dmask, a.mask_s[0] = c->L, a.mask_s[1] = 1;
    dpoison(p->dout, (size_t)p->nout * 2);
    if (c->state) {
        CUDA_OK(cudaMemcpy(p->dS, p->S0.data, (size_t)p->nS * 4, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(p->dz, p->z0.data, (size_t)p->nz * 4, cudaMemcpyHostToDevice));
        a.state = p->dS, a.normalizer = p->dz;
    }
    a.causal = 1, a.feature_map = LM_FEATURE_ELU1, a.normalize = c->normalize, a.compensated = c->comp;
    a.eps = 1e-6f, a.scale = c->normalize ? 1.0f : 0.5f;
    if (with_den) {
        dpoison(p->dden, (size_t)p->nden * 4);
        a.den = p->dden;
    }
    den_msg[0] = 0;
    const lm_status st = cuda_backend()->prefill(&a, NULL);
    CUDA_OK(cudaDeviceSynchronize());
    return st;
}

/* The largest of |den - want| / (den_bound * want) over the rows (<= 1 passes). */
static double den_check(const dprob *p)
{
    const dcase *c = &p->c;
    const int64_t D = c->D, G = c->Hq / c->Hkv;
    float *den = malloc((size_t)p->nden * 4);
    ddownload_bytes(den, p->dden, (size_t)p->nden * 4);
    double *z = malloc((size_t)D * sizeof(double)), worst = 0;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++) {
            const int64_t hk = h / G;
            for (int64_t d = 0; d < D; d++)
                z[d] = c->state ? tbuf_get(&p->z0, (b * c->Hkv + hk) * D + d) : 0.0;
            for (int64_t t = 0; t < c->L; t++) {
                if (!(p->mask && p->mask[b * c->L + t]))
                    for (int64_t d = 0; d < D; d++)
                        z[d] += ref_phi(tbuf_get(&p->k, b * p->s4k[0] + t * p->s4k[1] + hk * D + d), LM_FEATURE_ELU1);
                double want = 0;
                for (int64_t d = 0; d < D; d++)
                    want += ref_phi(tbuf_get(&p->q, b * p->s4q[0] + t * p->s4q[1] + h * D + d), LM_FEATURE_ELU1) * z[d];
                const double got = den[(b * c->Hq + h) * c->L + t];
                const double r = fabs(got - want) / (den_bound(c->L) * want + 1e-30); /* NaN stays NaN */
                worst = isnan(r) || r > worst ? r : worst;
                if (isnan(worst))
                    goto done;
            }
        }
done:
    free(den), free(z);
    return worst;
}

static unsigned char *fetch(const void *d, size_t n)
{
    unsigned char *h = malloc(n);
    ddownload_bytes(h, d, n);
    return h;
}

START_TEST(test_den_rows)
{
    static const dcase cases[] = {
        /* B, L, Hq, Hkv, D, mask, comp, normalize, state */
        { 2, 1, 4, 2, 64, 0, 0, 1, 0 },     { 1, 63, 2, 2, 128, 1, 0, 0, 1 },   { 2, 65, 4, 1, 64, 1, 0, 0, 1 },
        { 1, 1000, 4, 2, 128, 0, 1, 1, 1 }, { 1, 4097, 2, 2, 64, 1, 0, 0, 1 },  { 2, 3000, 8, 2, 128, 1, 1, 0, 1 },
        { 4, 700, 40, 8, 64, 0, 0, 0, 1 },  { 1, 130, 4, 4, 128, 0, 0, 0, 0 } };
    int major = 0, minor = 0, dev = 0;
    CUDA_OK(cudaGetDevice(&dev));
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    const int v2 = major == 9 && minor == 0 && !(getenv("LM_ATTEND_KERNEL") && !strcmp(getenv("LM_ATTEND_KERNEL"), "v1"));
    ref_seed(1601);
    const int n = gpu_small ? 4 : (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        dprob p;
        dprob_init(&p, &cases[i]);
        const size_t ob = (size_t)p.nout * 2, sb = (size_t)p.nS * 4, zb = (size_t)p.nz * 4;
        ck_assert_msg(run(&p, 0, 0) == LM_OK, "case %d without den: %s", i, den_msg);
        unsigned char *out0 = fetch(p.dout, ob), *S0 = fetch(p.dS, sb), *z0 = fetch(p.dz, zb);
        /* q off 16-byte alignment: never v2, so den is refused before anything changes. */
        const int64_t off = 1;
        for (int64_t x = p.nout - 1; x >= 0; x--) /* the same values, one element on */
            tbuf_set(&p.q, x + off, tbuf_get(&p.q, x));
        CUDA_OK(cudaMemcpy(p.dq, p.q.data, tbuf_bytes(&p.q), cudaMemcpyHostToDevice));
        expect_refused(run(&p, 1, off), i);
        unsigned char *out1 = fetch(p.dout, ob), *S1 = fetch(p.dS, sb), *z1 = fetch(p.dz, zb);
        int64_t touched = 0;
        for (size_t x = 0; x < ob; x++)
            touched += out1[x] != 0xff;
        CHECK(touched == 0, "case %d: a refused den wrote %lld bytes of out", i, (long long)touched);
        if (p.c.state) {
            CHECK(!memcmp(S1, p.S0.data, sb) && !memcmp(z1, p.z0.data, zb), "case %d: a refused den changed the state", i);
        }
        free(out1), free(S1), free(z1);
        for (int64_t x = 0; x < p.nout; x++) /* back in place */
            tbuf_set(&p.q, x, tbuf_get(&p.q, x + off));
        CUDA_OK(cudaMemcpy(p.dq, p.q.data, tbuf_bytes(&p.q), cudaMemcpyHostToDevice));
        if (v2) {
            ck_assert_msg(run(&p, 1, 0) == LM_OK, "case %d with den: %s", i, den_msg);
            unsigned char *out2 = fetch(p.dout, ob), *S2 = fetch(p.dS, sb), *z2 = fetch(p.dz, zb);
            CHECK(!memcmp(out0, out2, ob), "case %d: out differs with den", i);
            CHECK(!memcmp(S0, S2, sb) && !memcmp(z0, z2, zb), "case %d: the final state differs with den", i);
            const double r = den_check(&p);
            CHECK(r <= 1.0, "case %d (L %lld): den off by %.3g x its bound %.3g", i, (long long)p.c.L, r,
                  den_bound(p.c.L));
            free(out2), free(S2), free(z2);
        } else { /* not v2 here: den is refused on aligned views too */
            expect_refused(run(&p, 1, 0), i);
        }
        free(out0), free(S0), free(z0);
        dprob_free(&p);
    }
    gpu_end_test();
}
END_TEST

Suite *gpu_den_suite(void)
{
    Suite *s = suite_create("gpu_den");
    TCase *tc = tcase_create("den");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_den_rows);
    suite_add_tcase(s, tc);
    return s;
}
