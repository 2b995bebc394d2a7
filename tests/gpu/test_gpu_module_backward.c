/*
 * test_gpu_module_backward.c - lm_attn_backward on CUDA (every gradient: the
 * inputs, each projection's weight and bias) against the CPU backend's module
 * backward with the same weights and inputs (itself checked against float64
 * by tests/test_module_backward.c), and, where the float64 reference module
 * is cheap (ref_module_forward, elu+1 normalised), against its directional
 * derivative: for one random direction U over all parameters at once,
 * (loss(p + eps U) - loss(p - eps U)) / 2 eps against <grad, U>, loss =
 * sum(dout * out), relative to sum |grad_j U_j|. Ragged lengths, several
 * slabs (the backward's slabs are 8192 rows: B = 8 makes them 1024 tokens),
 * causal and bidirectional, GQA/MQA, masks, decay, cross-attention, one
 * shared input gradient, sequence-first strides, a caller's stream, dtypes,
 * accumulate, bad calls. Gradient buffers are NaN-poisoned before each call
 * and must be fully written.
 *
 * Bounds on RMS(gpu - cpu) / RMS(cpu) per gradient, the RMS of cpu taken as
 * the largest in the gradient's group (the q, k, v inputs; the q, k, v
 * weights): with one token o = v, so the q and k gradients vanish and both
 * backends give fp32 noise, whose difference is no error. The GPU rounds q,
 * k, v, the attention output, its gradient and dq, dk, dv to the dtype where
 * the CPU keeps fp32, so bf16 is several roundings of 2^-9 / sqrt(3) (bound
 * 1e-2; seen on the H100 <= 4.4e-3), f16 of 2^-12 / sqrt(3) (1.5e-3; seen
 * 4e-4); f32 is fp32 sums in other orders and the attention kernel's 16-bit
 * operand pairs (2e-5; seen 2.6e-6). Directional derivatives, where rounding
 * noise averages out and what remains is a missing or wrong term: bf16 / f16
 * 2e-4 (seen 1.6e-5), f32 2e-7 (seen 3.6e-9; central differences in float64
 * with eps 1e-4 are good to ~1e-8).
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMP_BF16 1e-2
#define CMP_F16 1.5e-3
#define CMP_F32 2e-5
#define DIR_F32 2e-7
#define DIR_LOW 2e-4
/* The directional check runs where B x L is at most this. */
#define DIR_ROWS 600

typedef struct bcase {
    lm_dtype dtype;
    int64_t B, L, Lk, E, Hq, Hkv, D, kdim, vdim;
    int causal, cross, packed, bias, decay, mask, shared, seq_first, stream;
    int fm, normalize;
} bcase;

static bcase base(void)
{
    bcase c = { .dtype = LM_BF16, .B = 2, .L = 150, .E = 256, .Hq = 4, .Hkv = 2, .D = 64, .causal = 1,
                .packed = 1, .bias = 1, .fm = LM_FEATURE_ELU1, .normalize = 1 };
    return c;
}

static void describe(char *s, size_t n, const bcase *c)
{
    snprintf(s, n,
             "dt %d B %lld L %lld/%lld E %lld H %lld/%lld c%d x%d p%d b%d dec%d m%d sh%d sf%d st%d fm%d n%d",
             (int)c->dtype, (long long)c->B, (long long)c->L, (long long)c->Lk, (long long)c->E,
             (long long)c->Hq, (long long)c->Hkv, c->causal, c->cross, c->packed, c->bias, c->decay, c->mask,
             c->shared, c->seq_first, c->stream, c->fm, c->normalize);
}

/* Worst errors, printed last. */
static struct {
    double err;
    char what[200];
} worst_cmp[3], worst_dir[3];

static void note(int dir, lm_dtype dt, double err, const char *desc)
{
    if (err > (dir ? worst_dir : worst_cmp)[dt].err) {
        (dir ? worst_dir : worst_cmp)[dt].err = err;
        snprintf((dir ? worst_dir : worst_cmp)[dt].what, sizeof worst_cmp[0].what, "%s", desc);
    }
}

/* ---- one problem ---- */

/* What has a value and a gradient: the inputs, then lm_weights' buffers
 * (WQ is the packed in_proj_weight when packed; WK, WV then absent). */
enum { XQ, XK, XV, WQ, WK, WV, BIN, WO, BO, NSLOT };
static const char *const slot_names[NSLOT] = { "dquery", "dkey", "dvalue", "dWq / in_proj_weight", "dWk",
                                               "dWv", "in_proj_bias", "out_proj_weight", "out_proj_bias" };

typedef struct bprob {
    bcase c;
    int64_t nv[NSLOT], ng[NSLOT]; /* elements of values and of gradients (0 = none) */
    tbuf val[NSLOT];              /* host values, float64 shadows */
    void *dval[NSLOT];
    tbuf dout;
    void *ddout;
    int64_t sx[3], sk[3], sv[3];  /* strides of query (and dquery), key, value */
    uint8_t *mask;
    void *dmask;
    float decay[16];
} bprob;

typedef struct bgrads {
    tbuf g[NSLOT]; /* one backend's gradients, on the host */
} bgrads;

static void prob_init(bprob *p, const bcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    bcase *k = &p->c;
    if (!c->cross)
        k->Lk = c->L, k->kdim = k->vdim = c->E;
    const int64_t B = k->B, E = k->E, Dq = k->Hq * k->D, Dkv = k->Hkv * k->D, ld = Dq + 2 * Dkv;
    const int64_t nx = B * k->L * E, nk = B * k->Lk * k->kdim, nv = B * k->Lk * k->vdim;
    const int64_t n[NSLOT] = { nx, c->cross ? nk : 0, c->cross ? nv : 0, c->packed ? ld * E : Dq * E,
                               c->packed ? 0 : Dkv * k->kdim, c->packed ? 0 : Dkv * k->vdim,
                               c->bias ? ld : 0, E * Dq, c->bias ? E : 0 };
    const double ws = 2.0 / sqrt((double)E), scale[NSLOT] = { 1, 1, 1, ws, ws, ws, 0.3, ws, 0.3 };
    for (int i = 0; i < NSLOT; i++) {
        p->nv[i] = p->ng[i] = n[i];
        if (!n[i])
            continue;
        p->val[i] = tbuf_new(k->dtype, n[i]);
        tbuf_random(&p->val[i], -scale[i], scale[i]);
        p->dval[i] = dupload(&p->val[i]);
    }
    if (!c->cross && !c->shared) /* self-attention, three input gradients */
        p->ng[XK] = p->ng[XV] = nx;
    p->dout = tbuf_new(k->dtype, B * k->L * E);
    tbuf_random(&p->dout, -1, 1);
    p->ddout = dupload(&p->dout);
    ref_strides3(p->sx, B, k->L, E, c->seq_first);
    ref_strides3(p->sk, B, k->Lk, k->kdim, c->seq_first);
    ref_strides3(p->sv, B, k->Lk, k->vdim, c->seq_first);
    if (c->mask) {
        p->mask = malloc((size_t)(B * k->Lk));
        for (int64_t i = 0; i < B * k->Lk; i++)
            p->mask[i] = ref_uniform() < 0.3;
        p->dmask = dupload_bytes(p->mask, (size_t)(B * k->Lk));
    }
    for (int h = 0; h < 16; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -3 - h % 4));
}

static void prob_free(bprob *p)
{
    for (int i = 0; i < NSLOT; i++)
        if (p->nv[i]) {
            tbuf_free(&p->val[i]);
            cudaFree(p->dval[i]);
        }
    tbuf_free(&p->dout);
    cudaFree(p->ddout);
    free(p->mask);
    cudaFree(p->dmask);
}

static void grads_free(bgrads *g)
{
    for (int i = 0; i < NSLOT; i++)
        if (g->g[i].data)
            tbuf_free(&g->g[i]);
}

/* A handle on `dev` with the problem's weights (device copies on CUDA). */
static lm_attn *make_handle(const bprob *p, lm_device dev)
{
    const bcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    const void *v[NSLOT];
    for (int i = 0; i < NSLOT; i++)
        v[i] = p->nv[i] ? (gpu ? p->dval[i] : p->val[i].data) : NULL;
    const gpu_attn_spec s = {
        .dtype = c->dtype, .device = dev, .E = c->E, .Hq = c->Hq, .Hkv = c->Hkv, .D = c->D, .kdim = c->kdim,
        .vdim = c->vdim, .feature_map = (lm_feature_map)c->fm, .normalize = c->normalize,
        .decay = c->decay ? p->decay : NULL, .packed = c->packed, .wq = v[WQ], .wk = v[WK], .wv = v[WV],
        .bin = v[BIN], .wo = v[WO], .bo = v[BO]
    };
    return gpu_attn_new(&s);
}

/* Descriptors of one lm_attn_backward call on dev, gradients into gp[]. */
typedef struct call {
    lm_tensor q, k, v, dout, dq, dk, dv, mask;
    lm_forward_opts opts;
    lm_attn_grads g;
} call;

static void call_init(call *k, const bprob *p, lm_device dev, void *const *gp, int accumulate)
{
    const bcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    int64_t so[3];
    ref_strides3(so, c->B, c->L, c->E, 0);
    memset(k, 0, sizeof *k);
    k->q = view3(gpu ? p->dval[XQ] : p->val[XQ].data, c->dtype, dev, p->sx, c->B, c->L, c->E);
    k->k = k->v = k->q;
    if (c->cross) {
        k->k = view3(gpu ? p->dval[XK] : p->val[XK].data, c->dtype, dev, p->sk, c->B, c->Lk, c->kdim);
        k->v = view3(gpu ? p->dval[XV] : p->val[XV].data, c->dtype, dev, p->sv, c->B, c->Lk, c->vdim);
    }
    k->dout = view3(gpu ? p->ddout : p->dout.data, c->dtype, dev, so, c->B, c->L, c->E);
    k->dq = view3(gp[XQ], c->dtype, dev, p->sx, c->B, c->L, c->E);
    k->dk = view3(gp[XK], c->dtype, dev, c->cross ? p->sk : p->sx, c->B, c->Lk, c->kdim);
    k->dv = view3(gp[XV], c->dtype, dev, c->cross ? p->sv : p->sx, c->B, c->Lk, c->vdim);
    k->opts.struct_size = sizeof k->opts;
    k->opts.is_causal = c->causal;
    if (p->mask) {
        k->mask = lm_tensor_2d(gpu ? p->dmask : p->mask, LM_BOOL, dev, c->B, c->Lk);
        k->opts.key_padding_mask = &k->mask;
    }
    lm_attn_grads *g = &k->g;
    g->struct_size = sizeof *g;
    g->dout = &k->dout, g->dquery = &k->dq, g->dkey = &k->dk, g->dvalue = &k->dv;
    if (c->shared)
        g->dkey = g->dvalue = &k->dq;
    if (c->packed)
        g->in_proj_weight = gp[WQ];
    else
        g->q_proj_weight = gp[WQ], g->k_proj_weight = gp[WK], g->v_proj_weight = gp[WV];
    g->in_proj_bias = gp[BIN], g->out_proj_weight = gp[WO], g->out_proj_bias = gp[BO];
    g->accumulate = accumulate;
}

static lm_status call_run(call *k, lm_attn *a, void *stream)
{
    return lm_attn_backward(a, &k->q, &k->k, &k->v, &k->opts, &k->g, stream);
}

static void grads_new(bgrads *out, const bprob *p)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < NSLOT; i++)
        if (p->ng[i])
            out->g[i] = tbuf_new(p->c.dtype, p->ng[i]);
}

/* The backward on dev into out (NaN first). */
static void run_backward(const bprob *p, lm_device dev, bgrads *out)
{
    const bcase *c = &p->c;
    const size_t es = lm_dtype_size(c->dtype);
    grads_new(out, p);
    lm_attn *a = make_handle(p, dev);
    void *gp[NSLOT] = { 0 };
    for (int i = 0; i < NSLOT; i++)
        if (p->ng[i]) {
            gp[i] = dev == LM_CUDA ? dmalloc((size_t)p->ng[i] * es) : out->g[i].data;
            if (dev == LM_CUDA)
                dpoison(gp[i], (size_t)p->ng[i] * es);
            else
                tbuf_poison(&out->g[i]);
        }
    call k;
    call_init(&k, p, dev, gp, 0);
    cudaStream_t s = NULL;
    if (dev == LM_CUDA && c->stream)
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ck_assert_msg(call_run(&k, a, s) == LM_OK, "%s backward: %s", dev == LM_CUDA ? "cuda" : "cpu",
                  lm_last_error());
    if (dev == LM_CUDA) {
        for (int i = 0; i < NSLOT; i++)
            if (gp[i]) {
                ddownload(&out->g[i], gp[i]);
                cudaFree(gp[i]);
            }
    }
    if (s)
        CUDA_OK(cudaStreamDestroy(s));
    lm_attn_destroy(a);
}

/* ---- checks ---- */

/* Sum of squares of got - want (NaN in got where want is finite counts as
 * unwritten), and of want. */
static void sq_diff(const tbuf *got, const tbuf *want, double *num, double *den, int64_t *unwritten)
{
    *num = *den = 0;
    for (int64_t i = 0; i < got->n; i++) {
        const double x = tbuf_get(got, i), y = tbuf_get(want, i);
        if (isnan(x) && isfinite(y))
            (*unwritten)++;
        else
            *num += (x - y) * (x - y);
        *den += y * y;
    }
}

/* The in-projections' slots go together: q, k, v inputs; q, k, v weights. */
static int group_of(int slot)
{
    return slot <= XV ? XQ : slot <= WV ? WQ : slot;
}

static double cmp_bound(lm_dtype dt)
{
    return dt == LM_BF16 ? CMP_BF16 : dt == LM_F16 ? CMP_F16 : CMP_F32;
}

/* loss = sum(dout * out) of the float64 module on the parameter values v[]. */
static double loss_of(const bprob *p, double *const *v)
{
    const bcase *c = &p->c;
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D, n = c->B * c->L * c->E;
    const double *x = v[XQ];
    ref_module m = { .B = c->B, .Lq = c->L, .Lk = c->Lk, .E = c->E, .kdim = c->kdim, .vdim = c->vdim,
                     .Hq = c->Hq, .Hkv = c->Hkv, .D = c->D, .xq = x, .xk = c->cross ? v[XK] : x,
                     .xv = c->cross ? v[XV] : x, .wq = v[WQ],
                     .wk = c->packed ? v[WQ] + Dq * c->E : v[WK],
                     .wv = c->packed ? v[WQ] + (Dq + Dkv) * c->E : v[WV], .wo = v[WO],
                     .bq = v[BIN], .bk = v[BIN] ? v[BIN] + Dq : NULL, .bv = v[BIN] ? v[BIN] + Dq + Dkv : NULL,
                     .bo = v[BO], .mask = p->mask, .decay = c->decay ? p->decay : NULL, .causal = c->causal };
    memcpy(m.sq, p->sx, sizeof m.sq);
    memcpy(m.sk, c->cross ? p->sk : p->sx, sizeof m.sk);
    memcpy(m.sv, c->cross ? p->sv : p->sx, sizeof m.sv);
    double *out = malloc((size_t)n * sizeof(double)), s = 0;
    ref_module_forward(&m, out);
    for (int64_t i = 0; i < n; i++)
        s += out[i] * p->dout.ref[i];
    free(out);
    return s;
}

/* The gradient paired with value slot i, element j: self-attention's one
 * input gets the three input gradients (or the shared one). */
static double grad_of(const bprob *p, const bgrads *g, int i, int64_t j)
{
    double x = tbuf_get(&g->g[i], j);
    if (i == XQ && !p->c.cross && !p->c.shared)
        x += tbuf_get(&g->g[XK], j) + tbuf_get(&g->g[XV], j);
    return x;
}

/* |fd - <grad, U>| / sum |grad_j U_j| for one random direction U. */
static double directional_error(const bprob *p, const bgrads *g)
{
    const double eps = 1e-4;
    double *u[NSLOT] = { 0 }, *v[NSLOT] = { 0 }, an = 0, mag = 0, l[2];
    for (int i = 0; i < NSLOT; i++) {
        if (!p->nv[i])
            continue;
        u[i] = malloc((size_t)p->nv[i] * sizeof(double));
        v[i] = malloc((size_t)p->nv[i] * sizeof(double));
        for (int64_t j = 0; j < p->nv[i]; j++) {
            u[i][j] = ref_uniform() * 2 - 1;
            const double gu = grad_of(p, g, i, j) * u[i][j];
            an += gu;
            mag += fabs(gu);
        }
    }
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < NSLOT; i++)
            for (int64_t j = 0; j < p->nv[i]; j++)
                v[i][j] = p->val[i].ref[j] + (s ? -eps : eps) * u[i][j];
        l[s] = loss_of(p, v);
    }
    for (int i = 0; i < NSLOT; i++)
        free(u[i]), free(v[i]);
    return fabs((l[0] - l[1]) / (2 * eps) - an) / mag;
}

/* The CUDA backward of case c against the CPU's, and float64 where cheap. */
static void check_case(const bcase *c)
{
    bprob p;
    prob_init(&p, c);
    char desc[200];
    describe(desc, sizeof desc, &p.c);
    bgrads gpu, cpu;
    run_backward(&p, LM_CUDA, &gpu);
    run_backward(&p, LM_CPU, &cpu);
    const lm_dtype dt = p.c.dtype;
    double num[NSLOT] = { 0 }, den[NSLOT] = { 0 }, scale[NSLOT] = { 0 }, worst = 0;
    int64_t unwritten[NSLOT] = { 0 };
    for (int i = 0; i < NSLOT; i++)
        if (p.ng[i]) {
            sq_diff(&gpu.g[i], &cpu.g[i], &num[i], &den[i], &unwritten[i]);
            const double rms = sqrt(den[i] / (double)p.ng[i]);
            scale[group_of(i)] = rms > scale[group_of(i)] ? rms : scale[group_of(i)];
        }
    for (int i = 0; i < NSLOT; i++) {
        if (!p.ng[i])
            continue;
        const double e = sqrt(num[i] / (double)p.ng[i]) / scale[group_of(i)];
        CHECK(unwritten[i] == 0, "%s: %lld elements not written (%s)", slot_names[i], (long long)unwritten[i],
              desc);
        CHECK(e <= cmp_bound(dt), "%s vs cpu %.3g > %.3g (%s)", slot_names[i], e, cmp_bound(dt), desc);
        worst = e > worst ? e : worst;
    }
    note(0, dt, worst, desc);
    printf("  %s: vs cpu %.3g", desc, worst);
    if (p.c.fm == LM_FEATURE_ELU1 && p.c.normalize && p.c.B * (p.c.L > p.c.Lk ? p.c.L : p.c.Lk) <= DIR_ROWS) {
        const double e = directional_error(&p, &gpu), bound = dt == LM_F32 ? DIR_F32 : DIR_LOW;
        CHECK(e <= bound, "directional derivative error %.3g > %.3g (%s)", e, bound, desc);
        note(1, dt, e, desc);
        printf(", directional %.3g", e);
    }
    printf("\n");
    grads_free(&gpu);
    grads_free(&cpu);
    prob_free(&p);
}

/* ---- tests ---- */

START_TEST(test_mbwd_lengths)
{
    static const int64_t Ls[] = { 1, 65, 63, 1000 };
    ref_seed(301);
    for (int i = 0; i < 4; i++)
        for (int causal = 1; causal >= 0; causal--) {
            bcase c = base();
            c.L = Ls[i], c.causal = causal;
            c.mask = i >= 2, c.decay = causal && i % 2, c.packed = (i + causal) % 2;
            check_case(&c);
        }
    gpu_end_test();
}
END_TEST

/* B = 8: slabs of 1024 tokens, so 3000 tokens are three (the last ragged),
 * 2049 are three with a last slab of one token. */
START_TEST(test_mbwd_slabs)
{
    ref_seed(302);
    for (int i = 0; i < 4; i++) {
        bcase c = base();
        c.B = 8, c.L = i < 2 ? 3000 : 2049;
        c.causal = i % 2 == 0;
        c.dtype = i == 1 || i == 2 ? LM_F32 : LM_BF16;
        c.mask = 1, c.decay = c.causal && i == 0, c.shared = i == 3;
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

START_TEST(test_mbwd_variants)
{
    ref_seed(303);
    for (int i = 0; i < 10; i++) {
        bcase c = base();
        c.L = 130;
        switch (i) {
        case 0: /* cross-attention, several key slabs, one query slab */
            c.cross = 1, c.causal = 0, c.packed = 0, c.mask = 1, c.B = 8, c.L = 50, c.Lk = 2100;
            c.kdim = 96, c.vdim = 160, c.Hkv = 1;
            break;
        case 1: /* cross-attention, small enough for float64 */
            c.cross = 1, c.causal = 0, c.packed = 0, c.mask = 1, c.L = 40, c.Lk = 90;
            c.kdim = 96, c.vdim = 160;
            c.dtype = LM_F32;
            break;
        case 2: c.shared = 1, c.mask = 1, c.decay = 1; break;
        case 3: c.shared = 1, c.packed = 0, c.causal = 0; break;
        case 4: c.bias = 0, c.Hkv = 1; break;
        case 5: c.seq_first = 1, c.mask = 1, c.stream = 1; break;
        case 6: c.seq_first = 1, c.causal = 0, c.shared = 1, c.dtype = LM_F32; break;
        case 7: c.dtype = LM_F16, c.decay = 1; break;
        case 8: c.fm = LM_FEATURE_RELU, c.normalize = 0, c.mask = 1; break;
        case 9: c.Hq = c.Hkv = 2, c.D = 128, c.dtype = LM_F32, c.causal = 0; break;
        }
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

/* accumulate = 1 adds to the weight buffers: two calls give twice one, up to
 * fp32 sums in another order (1e-6); input gradients are written anew, the
 * same bits (the kernels and cuBLASLt's plans are deterministic). */
START_TEST(test_mbwd_accumulate)
{
    ref_seed(304);
    bcase c = base();
    c.dtype = LM_F32, c.B = 8, c.L = 1500, c.mask = 1;
    bprob p;
    prob_init(&p, &c);
    lm_attn *a = make_handle(&p, LM_CUDA);
    void *gp[NSLOT] = { 0 };
    for (int i = 0; i < NSLOT; i++)
        if (p.ng[i]) {
            gp[i] = dmalloc((size_t)p.ng[i] * 4);
            dpoison(gp[i], (size_t)p.ng[i] * 4);
        }
    bgrads once, twice;
    grads_new(&once, &p);
    grads_new(&twice, &p);
    call k;
    for (int round = 0; round < 2; round++) {
        call_init(&k, &p, LM_CUDA, gp, round);
        ck_assert_msg(call_run(&k, a, NULL) == LM_OK, "%s", lm_last_error());
        for (int i = 0; i < NSLOT; i++)
            if (gp[i])
                ddownload(round ? &twice.g[i] : &once.g[i], gp[i]);
    }
    for (int i = 0; i < NSLOT; i++) {
        if (!p.ng[i])
            continue;
        double num = 0, den = 0;
        for (int64_t j = 0; j < p.ng[i]; j++) {
            const double x = tbuf_get(&once.g[i], j), y = tbuf_get(&twice.g[i], j);
            const double want = i <= XV ? x : 2 * x;
            num += (y - want) * (y - want), den += want * want;
        }
        const double e = sqrt(num / den), bound = i <= XV ? 0.0 : 1e-6;
        CHECK(e <= bound, "%s after the second call: %.3g from the expected, > %.3g", slot_names[i], e,
              bound);
    }
    grads_free(&once);
    grads_free(&twice);
    for (int i = 0; i < NSLOT; i++)
        cudaFree(gp[i]);
    lm_attn_destroy(a);
    prob_free(&p);
    gpu_end_test();
}
END_TEST

/* Bad calls, and the handle's state untouched by a backward. */
START_TEST(test_mbwd_errors)
{
    ref_seed(305);
    bcase c = base();
    c.L = 40;
    bprob p;
    prob_init(&p, &c);
    lm_attn *a = make_handle(&p, LM_CUDA);
    const size_t bytes = (size_t)p.ng[XQ] * 2;
    void *gp[NSLOT] = { 0 };
    gp[XQ] = dmalloc(bytes), gp[XK] = dmalloc(bytes), gp[XV] = dmalloc(bytes);
    call k;
    call_init(&k, &p, LM_CUDA, gp, 0);

    /* a state on the handle, which the backward must leave alone */
    void *dy = dmalloc(bytes);
    lm_tensor y = k.dout;
    y.data = dy;
    lm_forward_opts keep = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    ck_assert_msg(lm_attn_forward(a, &k.q, &k.q, &k.q, &keep, &y, NULL) == LM_OK, "%s", lm_last_error());
    size_t sz;
    ck_assert(lm_attn_state_size(a, &sz) == LM_OK);
    char *before = malloc(sz), *after = malloc(sz);
    ck_assert(lm_attn_get_state(a, before, sz) == LM_OK);

    call bad = k;
    bad.opts.use_state = 1;
    EXPECT_ERR(call_run(&bad, a, NULL), LM_ERR_UNSUPPORTED, "use_state");
    bad = k;
    bad.dq.device = LM_CPU;
    bad.g.dquery = &bad.dq;
    EXPECT_ERR(call_run(&bad, a, NULL), LM_ERR_INVALID_ARG, "dquery is on");
    bad = k; /* every other element of a buffer twice the size */
    void *wide = dmalloc(2 * bytes);
    bad.dq.data = wide, bad.dq.stride[0] *= 2, bad.dq.stride[1] *= 2, bad.dq.stride[2] = 2;
    bad.g.dquery = &bad.dq;
    EXPECT_ERR(call_run(&bad, a, NULL), LM_ERR_UNSUPPORTED, "stride 1");
    bad = k; /* one row of dout for every token */
    bad.dout.stride[1] = 0;
    bad.g.dout = &bad.dout;
    EXPECT_ERR(call_run(&bad, a, NULL), LM_ERR_UNSUPPORTED, "width apart");
    ck_assert(lm_attn_get_state(a, after, sz) == LM_OK);
    ck_assert_msg(!memcmp(before, after, sz), "a failed backward changed the state");
    ck_assert_msg(call_run(&k, a, NULL) == LM_OK, "%s", lm_last_error());
    ck_assert(lm_attn_get_state(a, after, sz) == LM_OK);
    ck_assert_msg(!memcmp(before, after, sz), "the backward changed the state");
    free(before), free(after);
    cudaFree(wide), cudaFree(dy);
    for (int i = 0; i < NSLOT; i++)
        cudaFree(gp[i]);
    lm_attn_destroy(a);
    prob_free(&p);
}
END_TEST

/* The reduced grid of the compute-sanitizer pass: everything on, one causal
 * and one bidirectional case, two slabs each (B = 8: 1024-token slabs). */
START_TEST(test_mbwd_small)
{
    ref_seed(306);
    for (int causal = 1; causal >= 0; causal--) {
        bcase c = base();
        c.B = 8, c.L = 1030, c.E = 64, c.Hq = 2, c.Hkv = 1, c.D = 32;
        c.causal = causal, c.decay = causal, c.mask = 1, c.shared = 1;
        check_case(&c);
    }
    gpu_end_test();
}
END_TEST

START_TEST(test_mbwd_summary)
{
    static const char *dts[] = { "bf16", "f16", "f32" };
    for (int dt = 0; dt < 3; dt++) {
        if (worst_cmp[dt].err > 0)
            printf("module backward: worst %s gradient vs cpu %.3g (bound %.3g) (%s)\n", dts[dt],
                   worst_cmp[dt].err, cmp_bound((lm_dtype)dt), worst_cmp[dt].what);
        if (worst_dir[dt].err > 0)
            printf("module backward: worst %s directional-derivative error vs float64 %.3g "
                   "(bound %.3g) (%s)\n",
                   dts[dt], worst_dir[dt].err, dt == LM_F32 ? DIR_F32 : DIR_LOW, worst_dir[dt].what);
    }
}
END_TEST

Suite *gpu_module_backward_suite(void)
{
    Suite *s = suite_create("gpu_module_backward");
    TCase *tc = tcase_create("module_backward");
    tcase_set_timeout(tc, 600);
    if (gpu_small) {
        tcase_add_test(tc, test_mbwd_small);
    } else {
        tcase_add_test(tc, test_mbwd_lengths);
        tcase_add_test(tc, test_mbwd_slabs);
        tcase_add_test(tc, test_mbwd_variants);
        tcase_add_test(tc, test_mbwd_accumulate);
        tcase_add_test(tc, test_mbwd_errors);
        tcase_add_test(tc, test_mbwd_small);
    }
    tcase_add_test(tc, test_mbwd_summary);
    suite_add_tcase(s, tc);
    return s;
}
