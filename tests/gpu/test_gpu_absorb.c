/*
 * test_gpu_absorb.c - lm_linear_attn_absorb on CUDA (ABSORB over key
 * segments, folded into the state by the scan) against the float64
 * reference and the CPU backend: lengths around the chunk and segment sizes
 * (a ragged last segment of one token included), feature maps, decay, masks,
 * initial states, head dims, dtypes, compensated accumulation; segments
 * absorbed one after another equal one call; the state is NaN-poisoned
 * where the call must write it all.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Hkv, Dk, Dv;
    int fm, decay, mask, state_in;
    lm_precision precision;
} bcase;

static bcase base_case(void)
{
    bcase c = { .dtype = LM_BF16, .B = 2, .L = 300, .Hkv = 2, .Dk = 64, .Dv = 64, .fm = LM_FEATURE_ELU1 };
    return c;
}

static void describe(char *s, size_t n, const bcase *c)
{
    snprintf(s, n, "absorb dt %d B %lld L %lld Hkv %lld D %lld/%lld fm%d dec%d m%d st%d prec%d", (int)c->dtype,
             (long long)c->B, (long long)c->L, (long long)c->Hkv, (long long)c->Dk, (long long)c->Dv, c->fm,
             c->decay, c->mask, c->state_in, (int)c->precision);
}

typedef struct problem {
    bcase c;
    tbuf k, v;
    uint8_t *mask;
    float decay[64];
    float *S0, *z0;
    double *want_S, *want_z;
    int64_t s4k[4], s4v[4], nS, nz;
    void *dk, *dv, *dmask;
} problem;

static void problem_init(problem *p, const bcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L;
    const double lo = c->fm == LM_FEATURE_ELU1 ? -2.0 : -0.5, hi = c->fm == LM_FEATURE_ELU1 ? 2.0 : 1.5;
    p->k = tbuf_new(c->dtype, B * L * c->Hkv * c->Dk);
    p->v = tbuf_new(c->dtype, B * L * c->Hkv * c->Dv);
    tbuf_random(&p->k, lo, hi);
    tbuf_random(&p->v, -1.0, 1.0);
    ref_strides4(p->s4k, B, L, c->Hkv, c->Dk, 0);
    ref_strides4(p->s4v, B, L, c->Hkv, c->Dv, 0);
    if (c->mask) {
        p->mask = malloc((size_t)(B * L));
        for (int64_t i = 0; i < B * L; i++)
            p->mask[i] = ref_uniform() < 0.25;
    }
    for (int64_t h = 0; h < c->Hkv; h++)
        p->decay[h] = c->decay ? (float)(1.0 - ldexp(1.0, -3 - (int)(h % 6))) : 1.0f;
    p->nS = B * c->Hkv * c->Dk * c->Dv, p->nz = B * c->Hkv * c->Dk;
    p->S0 = calloc((size_t)p->nS, sizeof(float));
    p->z0 = calloc((size_t)p->nz, sizeof(float));
    double *S0d = calloc((size_t)p->nS, sizeof(double)), *z0d = calloc((size_t)p->nz, sizeof(double));
    for (int64_t i = 0; c->state_in && i < p->nS; i++)
        S0d[i] = p->S0[i] = (float)(ref_uniform() * 2 - 1);
    for (int64_t i = 0; c->state_in && i < p->nz; i++)
        z0d[i] = p->z0[i] = (float)(1 + 4 * ref_uniform());
    p->want_S = malloc((size_t)p->nS * sizeof(double));
    p->want_z = malloc((size_t)p->nz * sizeof(double));
    ref_problem r = { .B = B, .Lk = L, .Hkv = c->Hkv, .Dk = c->Dk, .Dv = c->Dv,
                      .k = { p->k.ref, { p->s4k[0], p->s4k[1], p->s4k[2], p->s4k[3] } },
                      .v = { p->v.ref, { p->s4v[0], p->s4v[1], p->s4v[2], p->s4v[3] } },
                      .mask = p->mask, .state = S0d, .normalizer = z0d,
                      .decay = c->decay ? p->decay : NULL, .feature_map = c->fm };
    ref_absorb(&r, p->want_S, p->want_z);
    free(S0d);
    free(z0d);
    p->dk = dupload(&p->k);
    p->dv = dupload(&p->v);
    if (p->mask)
        p->dmask = dupload_bytes(p->mask, (size_t)(B * L));
}

static void problem_free(problem *p)
{
    tbuf_free(&p->k);
    tbuf_free(&p->v);
    free(p->mask);
    free(p->S0);
    free(p->z0);
    free(p->want_S);
    free(p->want_z);
    cudaFree(p->dk);
    cudaFree(p->dv);
    cudaFree(p->dmask);
}

typedef struct call {
    lm_tensor k, v, mask;
    lm_core_args a;
} call;

/* Absorb of tokens [t0, t0 + n) on `dev` into S, z. */
static void call_init(call *k, const problem *p, lm_device dev, float *S, float *z, int64_t t0, int64_t n)
{
    const bcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    k->k = ref_tokens(ref_tensor4(gpu ? p->dk : p->k.data, c->dtype, dev, p->s4k, c->B, c->L, c->Hkv, c->Dk), t0, n);
    k->v = ref_tokens(ref_tensor4(gpu ? p->dv : p->v.data, c->dtype, dev, p->s4v, c->B, c->L, c->Hkv, c->Dv), t0, n);
    ck_assert_int_eq(lm_core_args_default(&k->a), LM_OK);
    k->a.k = &k->k, k->a.v = &k->v;
    if (p->mask) {
        k->mask = lm_tensor_2d((uint8_t *)(gpu ? p->dmask : p->mask) + t0, LM_BOOL, dev, c->B, n);
        k->mask.stride[0] = c->L;
        k->a.key_padding_mask = &k->mask;
    }
    k->a.state = S, k->a.normalizer = z, k->a.position = t0;
    k->a.feature_map = (lm_feature_map)c->fm;
    k->a.decay = c->decay ? p->decay : NULL;
    k->a.precision = c->precision;
}

/* Absorbs the sequence cut at cuts[0 .. ncut-1] (the last = L) on the GPU;
 * checks the state against float64 and the CPU backend's. */
static void check_cuts(const bcase *c, const int64_t *cuts, int ncut)
{
    problem p;
    problem_init(&p, c);
    float *dS = dupload_bytes(p.S0, (size_t)p.nS * sizeof(float));
    float *dz = dupload_bytes(p.z0, (size_t)p.nz * sizeof(float));
    for (int s = 0; s < ncut; s++) {
        const int64_t t0 = s ? cuts[s - 1] : 0;
        call k;
        call_init(&k, &p, LM_CUDA, dS, dz, t0, cuts[s] - t0);
        ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "gpu absorb: %s", lm_last_error());
    }
    float *S = malloc((size_t)p.nS * sizeof(float)), *z = malloc((size_t)p.nz * sizeof(float));
    ddownload_bytes(S, dS, (size_t)p.nS * sizeof(float));
    ddownload_bytes(z, dz, (size_t)p.nz * sizeof(float));
    char desc[160];
    describe(desc, sizeof desc, c);
    const ref_err es = ref_compare_f32(S, p.want_S, p.nS), ez = ref_compare_f32(z, p.want_z, p.nz);
    CHECK(es.unwritten == 0 && es.rel <= state_bound(c->dtype), "S error %.3g > %.3g, %lld NaN (%s, %d calls)",
          es.rel, state_bound(c->dtype), (long long)es.unwritten, desc, ncut);
    CHECK(ez.unwritten == 0 && ez.rel <= state_bound(c->dtype), "z error %.3g > %.3g, %lld NaN (%s, %d calls)",
          ez.rel, state_bound(c->dtype), (long long)ez.unwritten, desc, ncut);
    if (!gpu_small && c->L <= 5000) { /* the CPU backend (one call) agrees */
        call k;
        call_init(&k, &p, LM_CPU, p.S0, p.z0, 0, c->L);
        ck_assert_msg(lm_linear_attn_absorb(&k.a, NULL) == LM_OK, "cpu absorb: %s", lm_last_error());
        double *cpu = malloc((size_t)p.nS * sizeof(double));
        for (int64_t i = 0; i < p.nS; i++)
            cpu[i] = p.S0[i];
        const ref_err d = ref_compare_f32(S, cpu, p.nS);
        CHECK(d.rel <= state_bound(c->dtype), "gpu S vs cpu S %.3g > %.3g (%s)", d.rel, state_bound(c->dtype),
              desc);
        free(cpu);
    }
    free(S);
    free(z);
    cudaFree(dS);
    cudaFree(dz);
    problem_free(&p);
}

static void check_case(const bcase *c)
{
    check_cuts(c, &c->L, 1);
}

/* Around the chunk (64) and the segment sizes the planner picks; B = Hkv = 1
 * and Dv = 64 make it cut the keys into as many segments as it can, so the
 * last one is ragged (4097: 17 segments, the last of one token). */
START_TEST(test_lengths)
{
    static const int64_t Ls[] = { 1, 63, 64, 65, 127, 257, 1000, 4097, 20000 };
    ref_seed(301);
    const int n = gpu_small ? 5 : 9;
    for (int i = 0; i < n; i++)
        for (int mode = 0; mode < 2; mode++) {
            bcase c = base_case();
            c.L = Ls[i];
            c.B = c.Hkv = 1;
            c.decay = c.mask = c.state_in = mode;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_modes)
{
    ref_seed(302);
    for (int fm = 0; fm < 3; fm++)
        for (int decay = 0; decay < 2; decay++)
            for (int mask = 0; mask < 2; mask++)
                for (int st = 0; st < 2; st++) {
                    if (gpu_small && (st || fm == LM_FEATURE_RELU))
                        continue;
                    bcase c = base_case();
                    c.fm = fm, c.decay = decay, c.mask = mask, c.state_in = st;
                    c.Hkv = 4;
                    check_case(&c);
                }
    gpu_end_test();
}
END_TEST

START_TEST(test_dtypes_dims)
{
    static const lm_dtype dts[] = { LM_BF16, LM_F16, LM_F32 };
    static const int64_t dims[][2] = { { 64, 64 }, { 128, 128 }, { 256, 256 }, { 64, 128 }, { 96, 40 } };
    ref_seed(303);
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < (gpu_small ? 2 : 5); d++) {
            bcase c = base_case();
            c.dtype = dts[i];
            c.Dk = dims[d][0], c.Dv = dims[d][1];
            c.L = 1000;
            c.decay = c.mask = c.state_in = d & 1;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

START_TEST(test_precision)
{
    ref_seed(304);
    for (int on = 0; on < 2; on++) {
        bcase c = base_case();
        c.B = c.Hkv = 1;
        c.L = gpu_small ? 5000 : 70000;
        c.precision = on ? LM_PRECISION_ON : LM_PRECISION_AUTO;
        c.decay = on;
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

/* Ragged segments one after another == one call (the context-parallel use). */
START_TEST(test_segments)
{
    static const int64_t cuts[][3] = { { 1, 2, 3000 }, { 65, 1000, 3000 }, { 1500, 2999, 3000 } }; /* segments of 1 token at either end; an empty one is refused (shapes are >= 1) */
    ref_seed(305);
    for (int i = 0; i < 3; i++) {
        bcase c = base_case();
        c.L = 3000;
        c.decay = c.mask = c.state_in = 1;
        check_cuts(&c, cuts[i], 3);
    }
    gpu_end_test();
}
END_TEST

Suite *gpu_absorb_suite(void)
{
    Suite *s = suite_create("gpu_absorb");
    TCase *tc = tcase_create("absorb");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_modes);
    tcase_add_test(tc, test_dtypes_dims);
    tcase_add_test(tc, test_precision);
    tcase_add_test(tc, test_segments);
    suite_add_tcase(s, tc);
    return s;
}
