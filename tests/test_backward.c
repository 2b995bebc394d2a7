/*
 * test_backward.c - the core backward (lm_linear_attn_backward) on the CPU
 * against float64 gradients: the shared case grid (backward_cases.c:
 * lengths, every mode, GQA, head dims, dtypes, layouts, long sequences,
 * the tensor-core backward's cases, state gradients chained across a
 * split, masked keys holding NaN) on cpu_dev, and the CPU's own tests: the
 * reference itself against central differences, NaN containment, bad
 * arguments.
 *
 * The reference is ref_backward (ref_backward.c, the grid's on both backends):
 * the quadratic form
 *   o_t = (g^(c_t) phi(q_t)S_0 + sum_{s<=t} g^(c_t-c_s) (phi q_t . phi k_s) v_s) / den_t
 * with c_t the unmasked keys among 0..t (t + 1 without a mask: a masked key
 * is no step of the recurrence, so it does not decay the state either)
 * differentiated by hand in float64, O(L^2), with no chunks. It is itself
 * checked against central differences of a float64 forward that runs the
 * recurrence of docs/DESIGN.md §2 directly (test_reference_fd).
 *
 * Inputs are rounded to their dtype and the reference reads the rounded
 * values, so the error is the library's: fp32 arithmetic, then the rounding
 * of the gradient to its dtype. Error measure (backward_cases.h):
 * ||got - want|| / ||mag||, mag the reference on absolute values. Since
 * |want| <= mag, rounding the gradient to a dtype of unit roundoff u adds
 * at most u. Bounds, every case with its float64 reference:
 *   F32   BOUND_F32 = 2e-6 (fp32 sums; largest seen 1.2e-7)
 *   BF16  2^-8 + BOUND_F32  (2^-8: bf16's unit roundoff)
 *   F16   2^-11 + BOUND_F32
 * and BOUND_F32 for the fp32 state gradients; the same for the two calls of
 * a split (the CPU's forward state at the cut is fp32 too).
 */
#include "backward_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOUND_F32 2e-6

/* The float64 reference on the CPU: where all its heads cost no more than
 * the CPU suite's own largest case (checkpoint blocks at 3000 tokens:
 * 5.8e8, bw_ref_cost x B x Hkv); the grid's GPU-sized cases beyond it
 * (4097 tokens; 3000 with Dk = Dv = 128; 1000 with 4 heads of Dk = Dv >=
 * 64) are left to the GPU suite, whose CPU backend stands in for float64
 * there: 20 cases, the grid says which entries. */
static int has_ref(const bwcase *c)
{
    return (double)(c->B * c->Hkv) * bw_ref_cost(c) <= 6e8;
}

static double bound(const bwcase *c, int which, double floor, int64_t n, int chained)
{
    (void)floor, (void)n, (void)chained;
    const lm_dtype dt = which < 3 ? c->dtype : LM_F32;
    return dt == LM_BF16 ? ldexp(1.0, -8) + BOUND_F32
         : dt == LM_F16  ? ldexp(1.0, -11) + BOUND_F32
                         : BOUND_F32;
}

/* Largest errors seen in this test, printed at its end. */
static double max_err[3];

static void note(const bwcase *c, int which, double err, double floor, const char *desc)
{
    (void)floor, (void)desc;
    const lm_dtype dt = which < 3 ? c->dtype : LM_F32;
    if (err > max_err[dt])
        max_err[dt] = err;
}

static void print_max(const char *test)
{
    printf("backward %s: largest rel. error bf16 %.2e f16 %.2e f32 %.2e\n", test, max_err[LM_BF16],
           max_err[LM_F16], max_err[LM_F32]);
    memset(max_err, 0, sizeof max_err);
}

static const bw_env cpu_env = {
    .dev = &cpu_dev,
    .base = { .dtype = LM_F32, .B = 2, .L = 100, .Lk = 100, .Hq = 4, .Hkv = 2, .Dk = 16, .Dv = 24, .causal = 1,
              .fm = LM_FEATURE_ELU1, .normalize = 1, .dstate_in = 1 },
    .has_ref = has_ref,
    .bound = bound,
    .note = note,
};

/* Grid entry _i (bw_grids) on the CPU. */
START_TEST(test_grid)
{
    bw_grid_run(_i, &cpu_env, 1);
    print_max(bw_grids[_i].name);
}
END_TEST

/* ---- the reference against finite differences ---- */

static double gamma_of(const bwprob *p, int64_t hk)
{
    return p->c.decay ? (double)p->decay[hk] : 1.0;
}

/* f = sum dout . o + <dS_out, S_final> + <dz_out, z_final>, by the
 * recurrence, from the shadows (batch-first: logical order). */
static double direct_loss(const bwprob *p)
{
    const bwcase *c = &p->c;
    const int64_t L = c->L, Lk = c->Lk, Hq = c->Hq, Hkv = c->Hkv, Dk = c->Dk, Dv = c->Dv, G = Hq / Hkv;
    const double *q = p->q.ref, *k = p->k.ref, *v = p->v.ref, *dout = p->dout.ref;
    const double eps = (double)1e-6f, scale = (double)(1.0f / sqrtf((float)Dk));
    double f = 0, S[64], z[8];
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const double g = gamma_of(p, hk);
            const int64_t bh = b * Hkv + hk;
            memcpy(S, p->S0d + bh * Dk * Dv, (size_t)(Dk * Dv) * sizeof(double));
            memcpy(z, p->z0d + bh * Dk, (size_t)Dk * sizeof(double));
            /* absorbs key s into S, z; a masked key leaves them as they were */
#define ABSORB(s)                                                                          \
    do {                                                                                   \
        const int m_ = p->mask && p->mask[b * Lk + (s)];                                   \
        for (int64_t d = 0; d < Dk && !m_; d++) {                                          \
            double kd = ref_phi(k[((b * Lk + (s)) * Hkv + hk) * Dk + d], c->fm);           \
            z[d] = g * z[d] + kd;                                                          \
            for (int64_t e = 0; e < Dv; e++)                                               \
                S[d * Dv + e] = g * S[d * Dv + e] + kd * v[((b * Lk + (s)) * Hkv + hk) * Dv + e]; \
        }                                                                                  \
    } while (0)
            if (!c->causal)
                for (int64_t s = 0; s < Lk; s++)
                    ABSORB(s);
            for (int64_t t = 0; t < L; t++) {
                if (c->causal)
                    ABSORB(t);
                for (int64_t h = hk * G; h < (hk + 1) * G; h++) {
                    const double *qr = q + ((b * L + t) * Hq + h) * Dk;
                    double den = eps;
                    for (int64_t d = 0; d < Dk; d++)
                        den += ref_phi(qr[d], c->fm) * z[d];
                    for (int64_t e = 0; e < Dv; e++) {
                        double n = 0;
                        for (int64_t d = 0; d < Dk; d++)
                            n += ref_phi(qr[d], c->fm) * S[d * Dv + e];
                        double o = c->normalize ? n / den : scale * n;
                        f += dout[((b * L + t) * Hq + h) * Dv + e] * o;
                    }
                }
            }
#undef ABSORB
            for (int64_t i = 0; i < Dk * Dv; i++)
                f += p->dSod[bh * Dk * Dv + i] * S[i];
            for (int64_t d = 0; d < Dk; d++)
                f += p->dzod[bh * Dk + d] * z[d];
        }
    return f;
}

/* Central differences of direct_loss over every element of x against want. */
static void fd_check(bwprob *p, double *x, int64_t n, const double *want, const char *what)
{
    char desc[240];
    bw_describe(desc, sizeof desc, &p->c);
    for (int64_t i = 0; i < n; i++) {
        const double x0 = x[i], h = 1e-6;
        x[i] = x0 + h;
        double fp = direct_loss(p);
        x[i] = x0 - h;
        double fm = direct_loss(p);
        x[i] = x0;
        double fd = (fp - fm) / (2 * h);
        ck_assert_msg(fabs(fd - want[i]) <= 1e-6 * (1 + fabs(want[i])),
                      "%s[%lld]: reference %.9g, finite differences %.9g (%s)", what, (long long)i, want[i], fd,
                      desc);
    }
}

START_TEST(test_reference_fd)
{
    ref_seed(1);
    for (int causal = 0; causal < 2; causal++)
        for (int norm = 0; norm < 2; norm++)
            for (int fm = 0; fm < 3; fm++)
                for (int decay = 0; decay <= causal; decay++) {
                    bwcase c = cpu_env.base;
                    c.B = 2, c.L = 5, c.Lk = causal ? 5 : 3, c.Hq = 2, c.Hkv = 1, c.Dk = 3, c.Dv = 2;
                    c.causal = causal, c.normalize = norm, c.fm = fm, c.decay = decay;
                    c.mask = 1, c.state_in = 1, c.dstate_out = 1;
                    bwprob p;
                    bwprob_init(&p, &cpu_dev, &c);
                    /* keep inputs off relu's kink (the reference reads the shadows) */
                    for (int64_t i = 0; i < p.q.n; i++)
                        p.q.ref[i] += fabs(p.q.ref[i]) < 0.05 ? 0.1 : 0;
                    for (int64_t i = 0; i < p.k.n; i++)
                        p.k.ref[i] += fabs(p.k.ref[i]) < 0.05 ? 0.1 : 0;
                    p.mask[1] = 1, p.mask[2] = 0;
                    bwprob_reference(&p);
                    fd_check(&p, p.q.ref, p.q.n, p.want[BW_DQ], "dq");
                    fd_check(&p, p.k.ref, p.k.n, p.want[BW_DK], "dk");
                    fd_check(&p, p.v.ref, p.v.n, p.want[BW_DV], "dv");
                    fd_check(&p, p.S0d, p.n[BW_DS], p.want[BW_DS], "dstate_in");
                    fd_check(&p, p.z0d, p.n[BW_DZ], p.want[BW_DZ], "dnormalizer_in");
                    bwprob_free(&p);
                }
}
END_TEST

/* ---- the CPU's own ---- */

/* A NaN in one batch row's keys reaches that row's gradients only; the
 * other rows stay within 1e-5 of float64 (relative to the magnitudes). */
START_TEST(test_nan_containment)
{
    ref_seed(12);
    for (int causal = 0; causal < 2; causal++) {
        bwcase c = cpu_env.base;
        c.causal = causal, c.B = 3, c.L = c.Lk = 90, c.dstate_in = 0;
        bwprob p;
        bwprob_init(&p, &cpu_dev, &c);
        bwprob_reference(&p);
        tbuf_set(&p.k, 1 * p.sk[0] + 40 * p.sk[1], NAN); /* batch 1, token 40, head 0, dim 0 */
        bwrun r;
        bwrun_new(&r, &p, &cpu_dev);
        bw_run(&p, &r);
        bwgrads got;
        bwgrads_read(&got, &p, &r);
        for (int i = 0; i < 3; i++) {
            double *g = bwgrads_values(&got, &p, i);
            const double *want = p.want[i], *mag = p.mag[i];
            const int64_t row = p.n[i] / c.B;
            int64_t nan_row1 = 0;
            for (int64_t j = 0; j < p.n[i]; j++) {
                if (j / row == 1) {
                    nan_row1 += isnan(g[j]);
                    continue;
                }
                ck_assert_msg(fabs(g[j] - want[j]) <= 1e-5 * (mag[j] + 1e-3), "%s of row %lld: %g, want %g",
                              bw_grad_names[i], (long long)(j / row), g[j], want[j]);
            }
            ck_assert_msg(nan_row1 > 0, "%s of row 1 has no NaN", bw_grad_names[i]);
            free(g);
        }
        bwgrads_free(&got);
        bwrun_free(&r);
        bwprob_free(&p);
    }
}
END_TEST

/* ---- bad arguments ---- */

START_TEST(test_errors)
{
    ref_seed(11);
    bwcase c = cpu_env.base;
    c.L = c.Lk = 20;
    c.state_in = 1;
    bwprob p;
    bwprob_init(&p, &cpu_dev, &c);
    bwprob_reference(&p);
    bwrun r;
    bwrun_new(&r, &p, &cpu_dev);
    bwcall k;

    bwcall_init(&k, &p, &r, 0, c.L);
    EXPECT_ERR(lm_linear_attn_backward(NULL, &k.g, NULL), LM_ERR_INVALID_ARG, "args is NULL");
    EXPECT_ERR(lm_linear_attn_backward(&k.a, NULL, NULL), LM_ERR_INVALID_ARG, "grads is NULL");
    k.g.dout = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dout is NULL");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.g.dq = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq is NULL");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.a.k = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "k is NULL");

    /* shapes */
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dq.shape[3] = c.Dk + 1;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq is [");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dk.shape[2] = c.Hq;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "[B, Lk, Hkv, Dk]");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dout.shape[1] = c.L - 1;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dout is [");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dv.ndim = 3;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv has 3 dimensions");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.k.shape[1] = c.L - 1, k.v.shape[1] = c.L - 1, k.dk.shape[1] = c.L - 1,
    k.dv.shape[1] = c.L - 1, k.a.key_padding_mask = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "L == Lk");

    /* dtypes and devices */
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dk.dtype = LM_F16;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dk must have q's dtype");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dout.dtype = LM_BOOL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG,
           "dout must have q's dtype");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dv.device = LM_CUDA;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv is on cuda");

    /* state gradients in pairs, no overlaps */
    bwcall_init(&k, &p, &r, 0, c.L);
    k.g.dstate_out = r.S, k.g.dnormalizer_out = NULL, k.g.dstate_in = NULL,
    k.g.dnormalizer_in = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "go together");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.g.dnormalizer_in = NULL;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "go together");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.g.dstate_in = p.S0;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "must not overlap");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.a.state = k.a.normalizer = NULL;
    k.g.dstate_out = k.g.dstate_in, k.g.dnormalizer_out = k.g.dnormalizer_in;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "must not overlap");

    /* aliasing */
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dq.data = p.q.data;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dq overlaps q");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dv = k.dout;
    k.dv.shape[1] = c.L, k.dv.shape[2] = c.Hkv;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dv overlaps dout");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.dk.data = r.g[0];
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "dk overlaps dq");

    /* options */
    bwcall_init(&k, &p, &r, 0, c.L);
    k.a.is_causal = 0, k.a.decay = p.decay;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_UNSUPPORTED, "decay");
    bwcall_init(&k, &p, &r, 0, c.L);
    k.a.feature_map = (lm_feature_map)7;
    EXPECT_ERR(lm_linear_attn_backward(&k.a, &k.g, NULL), LM_ERR_INVALID_ARG, "feature_map");

    /* nothing was written by the failed calls */
    bwgrads got;
    bwgrads_read(&got, &p, &r);
    for (int i = 0; i < 3; i++)
        for (int64_t j = 0; j < got.g[i].n; j++)
            ck_assert_msg(isnan(tbuf_get(&got.g[i], j)), "%s[%lld] written by a failed call", bw_grad_names[i],
                          (long long)j);
    bwgrads_free(&got);

    /* out is not needed, and may even be malformed */
    bwcall_init(&k, &p, &r, 0, c.L);
    lm_tensor bad = k.dout;
    bad.shape[0] = 99;
    k.a.out = &bad;
    ck_assert_msg(lm_linear_attn_backward(&k.a, &k.g, NULL) == LM_OK, "%s", lm_last_error());
    bwgrads_read(&got, &p, &r);
    bw_check(&cpu_env, &p, &got, 0, "out ignored");
    bwgrads_free(&got);
    bwrun_free(&r);
    bwprob_free(&p);
}
END_TEST

Suite *backward_suite(void)
{
    Suite *s = suite_create("backward");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_reference_fd);
    tcase_add_loop_test(tc, test_grid, 0, bw_ngrids);
    tcase_add_test(tc, test_nan_containment);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return s;
}
