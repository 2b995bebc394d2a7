/*
 * test_gpu_module.c - the module (lm_attn_*) on CUDA against the CPU module
 * and a float64 reference that projects, attends and out-projects: self and
 * cross attention, causal and not, GQA, biases, masks, decay, layouts,
 * dtypes; forward then decode steps (also replayed from a CUDA graph), state
 * save/restore, and a caller's non-blocking stream.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mcase {
    lm_dtype dtype;
    int64_t B, L, Lk, E, Hq, Hkv, D, kdim, vdim;
    int causal, cross, packed, bias, decay, mask, seq_first;
} mcase;

static mcase base(void)
{
    mcase c = { .dtype = LM_BF16, .B = 2, .L = 150, .Lk = 150, .E = 256, .Hq = 4, .Hkv = 4, .D = 64,
                .kdim = 256, .vdim = 256, .causal = 1, .packed = 1, .bias = 1 };
    return c;
}

typedef struct mproblem {
    mcase c;
    float decay[16];
    tbuf xq, xk, xv, wq, wk, wv, wo, bin, bo;
    void *dxq, *dxk, *dxv, *dwq, *dwk, *dwv, *dwo, *dbin, *dbo, *dmask;
    uint8_t *mask;
    double *want;
    int64_t sx[3], sk[3], sv[3];
} mproblem;

static void project(double *y, const double *x, const int64_t *sx, int64_t B, int64_t L, int64_t K,
                    const double *w, int64_t N, const double *bias)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < L; t++)
            for (int64_t n = 0; n < N; n++) {
                double acc = bias ? bias[n] : 0;
                for (int64_t k = 0; k < K; k++)
                    acc += x[b * sx[0] + t * sx[1] + k * sx[2]] * w[n * K + k];
                y[(b * L + t) * N + n] = acc;
            }
}

static void *up(const tbuf *b)
{
    return b->data ? dupload(b) : NULL;
}

static void mproblem_init(mproblem *p, const mcase *c)
{
    memset(p, 0, sizeof *p);
    p->c = *c;
    const int64_t B = c->B, L = c->L, Lk = c->cross ? c->Lk : c->L, E = c->E;
    const int64_t Dq = c->Hq * c->D, Dkv = c->Hkv * c->D;
    const int64_t kdim = c->cross ? c->kdim : E, vdim = c->cross ? c->vdim : E;
    p->c.Lk = Lk, p->c.kdim = kdim, p->c.vdim = vdim;
    for (int h = 0; h < c->Hkv; h++)
        p->decay[h] = (float)(1.0 - ldexp(1.0, -4 - h % 5));
    const double ws = 1.0 / sqrt((double)E);
    p->xq = tbuf_new(c->dtype, B * L * E);
    tbuf_random(&p->xq, -1, 1);
    if (c->cross) {
        p->xk = tbuf_new(c->dtype, B * Lk * kdim);
        p->xv = tbuf_new(c->dtype, B * Lk * vdim);
        tbuf_random(&p->xk, -1, 1);
        tbuf_random(&p->xv, -1, 1);
    }
    p->wq = tbuf_new(c->dtype, (Dq + (c->packed ? 2 * Dkv : 0)) * E);
    tbuf_random(&p->wq, -2 * ws, 2 * ws);
    if (!c->packed) {
        p->wk = tbuf_new(c->dtype, Dkv * kdim);
        p->wv = tbuf_new(c->dtype, Dkv * vdim);
        tbuf_random(&p->wk, -2 * ws, 2 * ws);
        tbuf_random(&p->wv, -2 * ws, 2 * ws);
    }
    p->wo = tbuf_new(c->dtype, E * Dq);
    tbuf_random(&p->wo, -2 * ws, 2 * ws);
    p->bin = tbuf_new(c->dtype, Dq + 2 * Dkv);
    p->bo = tbuf_new(c->dtype, E);
    tbuf_random(&p->bin, -0.5, 0.5);
    tbuf_random(&p->bo, -0.5, 0.5);
    if (c->mask) {
        p->mask = malloc((size_t)(B * Lk));
        for (int64_t i = 0; i < B * Lk; i++)
            p->mask[i] = ref_uniform() < 0.3;
        p->dmask = dupload_bytes(p->mask, (size_t)(B * Lk));
    }
    ref_strides3(p->sx, B, L, E, c->seq_first);
    ref_strides3(p->sk, B, Lk, kdim, c->seq_first);
    ref_strides3(p->sv, B, Lk, vdim, c->seq_first);
    p->dxq = up(&p->xq), p->dxk = up(&p->xk), p->dxv = up(&p->xv);
    p->dwq = up(&p->wq), p->dwk = up(&p->wk), p->dwv = up(&p->wv), p->dwo = up(&p->wo);
    p->dbin = up(&p->bin), p->dbo = up(&p->bo);

    double *q = malloc((size_t)(B * L * Dq) * sizeof(double));
    double *k = malloc((size_t)(B * Lk * Dkv) * sizeof(double));
    double *v = malloc((size_t)(B * Lk * Dkv) * sizeof(double));
    double *o = malloc((size_t)(B * L * Dq) * sizeof(double));
    const double *bq = c->bias ? p->bin.ref : NULL, *bk = c->bias ? p->bin.ref + Dq : NULL,
                 *bv = c->bias ? p->bin.ref + Dq + Dkv : NULL, *bo = c->bias ? p->bo.ref : NULL;
    const double *wk = c->packed ? p->wq.ref + Dq * E : p->wk.ref;
    const double *wv = c->packed ? p->wq.ref + (Dq + Dkv) * E : p->wv.ref;
    const tbuf *xk = c->cross ? &p->xk : &p->xq, *xv = c->cross ? &p->xv : &p->xq;
    project(q, p->xq.ref, p->sx, B, L, E, p->wq.ref, Dq, bq);
    project(k, xk->ref, c->cross ? p->sk : p->sx, B, Lk, kdim, wk, Dkv, bk);
    project(v, xv->ref, c->cross ? p->sv : p->sx, B, Lk, vdim, wv, Dkv, bv);
    ref_problem r = { .B = B, .L = L, .Lk = Lk, .Hq = c->Hq, .Hkv = c->Hkv, .Dk = c->D, .Dv = c->D,
                      .q = { q, { L * Dq, Dq, c->D, 1 } }, .k = { k, { Lk * Dkv, Dkv, c->D, 1 } },
                      .v = { v, { Lk * Dkv, Dkv, c->D, 1 } }, .mask = p->mask,
                      .decay = c->decay ? p->decay : NULL, .causal = c->causal,
                      .feature_map = LM_FEATURE_ELU1, .normalize = 1, .eps = 1e-6,
                      .scale = 1.0 / sqrt((double)c->D) };
    ref_attend(&r, o, NULL, NULL);
    p->want = malloc((size_t)(B * L * E) * sizeof(double));
    const int64_t so[3] = { L * Dq, Dq, 1 };
    project(p->want, o, so, B, L, Dq, p->wo.ref, E, bo);
    free(q), free(k), free(v), free(o);
}

static void mproblem_free(mproblem *p)
{
    tbuf *bs[] = { &p->xq, &p->xk, &p->xv, &p->wq, &p->wk, &p->wv, &p->wo, &p->bin, &p->bo };
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
        if (bs[i]->data)
            tbuf_free(bs[i]);
    void *ds[] = { p->dxq, p->dxk, p->dxv, p->dwq, p->dwk, p->dwv, p->dwo, p->dbin, p->dbo, p->dmask };
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        cudaFree(ds[i]);
    free(p->mask);
    free(p->want);
}

/* A handle on `dev` with the problem's weights (device copies on CUDA);
 * elu+1 and normalised, the config's defaults, as the reference computes. */
static lm_attn *make_handle(const mproblem *p, lm_device dev)
{
    const mcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    const gpu_attn_spec s = {
        .dtype = c->dtype, .device = dev, .E = c->E, .Hq = c->Hq, .Hkv = c->Hkv, .D = c->D, .kdim = c->kdim,
        .vdim = c->vdim, .feature_map = LM_FEATURE_ELU1, .normalize = 1, .decay = c->decay ? p->decay : NULL,
        .packed = c->packed, .wq = gpu ? p->dwq : p->wq.data, .wk = gpu ? p->dwk : p->wk.data,
        .wv = gpu ? p->dwv : p->wv.data, .wo = gpu ? p->dwo : p->wo.data,
        .bin = c->bias ? (gpu ? p->dbin : p->bin.data) : NULL, .bo = c->bias ? (gpu ? p->dbo : p->bo.data) : NULL
    };
    return gpu_attn_new(&s);
}

/* Forward over tokens [t0, t0 + n) into out (contiguous [B, L, E] on dev). */
static void forward_part(const mproblem *p, lm_attn *a, lm_device dev, void *out, int64_t t0, int64_t n,
                         int use_state, int keep_state, void *stream)
{
    const mcase *c = &p->c;
    const int gpu = dev == LM_CUDA;
    int64_t so[3];
    ref_strides3(so, c->B, c->L, c->E, 0);
    lm_tensor q = ref_tokens(view3(gpu ? p->dxq : p->xq.data, c->dtype, dev, p->sx, c->B, c->L, c->E), t0, n);
    lm_tensor k = q, v = q, o = ref_tokens(view3(out, c->dtype, dev, so, c->B, c->L, c->E), t0, n), m;
    if (c->cross) {
        k = view3(gpu ? p->dxk : p->xk.data, c->dtype, dev, p->sk, c->B, c->Lk, c->kdim);
        v = view3(gpu ? p->dxv : p->xv.data, c->dtype, dev, p->sv, c->B, c->Lk, c->vdim);
    }
    lm_forward_opts opts = { LM_SIZED(lm_forward_opts), .is_causal = c->causal, .use_state = use_state, .keep_state = keep_state };
    if (p->mask) {
        m = lm_tensor_2d((uint8_t *)(gpu ? p->dmask : p->mask) + (c->causal ? t0 : 0), LM_BOOL, dev, c->B,
                         c->causal ? n : c->Lk);
        m.stride[0] = c->Lk;
        opts.key_padding_mask = &m;
    }
    ck_assert_msg(lm_attn_forward(a, &q, &k, &v, &opts, &o, stream) == LM_OK, "forward: %s", lm_last_error());
}

/* Module bound: q, k, v and the attention output are rounded to the dtype on
 * their way through cuBLAS (~sqrt(3) x the floor); fla's module is 2.35 x. */
static double module_bound(lm_dtype dt, double floor, int64_t n)
{
    return dt == LM_F32 ? 3e-5 : floor * (2.2 + 3.0 / sqrt((double)n)) + 1e-6;
}

static void check_out(const mproblem *p, const void *dout, const char *what)
{
    const mcase *c = &p->c;
    const int64_t n = c->B * c->L * c->E;
    tbuf got = tbuf_new(c->dtype, n);
    ddownload(&got, dout);
    const ref_err e = ref_compare(&got, p->want, n);
    const double floor = out_floor(c->dtype, p->want, n);
    char desc[128];
    snprintf(desc, sizeof desc, "module %s dt %d L %lld H %lld/%lld c%d x%d p%d b%d d%d m%d sf%d", what,
             (int)c->dtype, (long long)c->L, (long long)c->Hq, (long long)c->Hkv, c->causal, c->cross,
             c->packed, c->bias, c->decay, c->mask, c->seq_first);
    gpu_note(desc, c->dtype, e.rel, floor);
    ck_assert_msg(e.unwritten == 0, "%s: %lld outputs not written", desc, (long long)e.unwritten);
    ck_assert_msg(e.rel <= module_bound(c->dtype, floor, n), "%s: error %.3g (floor %.3g)", desc, e.rel, floor);
    tbuf_free(&got);
}

/* The CPU module's error (fp32 throughout), beside which the GPU's is printed. */
static double cpu_module_error(const mproblem *p)
{
    const mcase *c = &p->c;
    lm_attn *a = make_handle(p, LM_CPU);
    tbuf out = tbuf_new(c->dtype, c->B * c->L * c->E);
    forward_part(p, a, LM_CPU, out.data, 0, c->L, 0, 0, NULL);
    const double e = ref_compare(&out, p->want, out.n).rel;
    tbuf_free(&out);
    lm_attn_destroy(a);
    return e;
}

static void check_forward(const mcase *c)
{
    mproblem p;
    mproblem_init(&p, c);
    lm_attn *a = make_handle(&p, LM_CUDA);
    const size_t bytes = (size_t)(c->B * c->L * c->E) * lm_dtype_size(c->dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    forward_part(&p, a, LM_CUDA, dout, 0, c->L, 0, 0, NULL);
    check_out(&p, dout, "forward");
    if (!gpu_small) {
        const double ec = cpu_module_error(&p);
        tbuf got = tbuf_new(c->dtype, c->B * c->L * c->E);
        ddownload(&got, dout);
        const double eg = ref_compare(&got, p.want, got.n).rel;
        printf("  module dt %d c%d x%d: gpu %.3g, cpu %.3g vs float64\n", (int)c->dtype, c->causal, c->cross,
               eg, ec);
        tbuf_free(&got);
    }
    cudaFree(dout);
    lm_attn_destroy(a);
    mproblem_free(&p);
}

START_TEST(test_forward_grid)
{
    ref_seed(201);
    for (int i = 0; i < (gpu_small ? 3 : 12); i++) {
        mcase c = base();
        c.causal = i % 2 == 0;
        c.cross = i % 4 == 1;
        c.packed = !c.cross && i % 3 != 2;
        c.bias = i % 5 != 4;
        c.Hkv = i % 3 == 1 ? 2 : 4;
        c.decay = c.causal && i % 4 == 2;
        c.mask = i % 3 == 0;
        c.seq_first = i % 4 == 3;
        c.dtype = i >= 10 ? LM_F32 : i == 9 ? LM_F16 : LM_BF16;
        if (c.cross)
            c.Lk = 90, c.kdim = 96, c.vdim = 160;
        c.L = i == 5 ? 1 : i == 7 ? 1300 : 150;
        check_forward(&c);
    }
}
END_TEST

/* A causal forward keeping its state, then steps; replayed from a graph on a
 * non-blocking stream; then the state saved, the handle reset and restored. */
START_TEST(test_forward_then_steps)
{
    ref_seed(202);
    for (int graph = 0; graph < 2; graph++) {
        mcase c = base();
        c.L = 80, c.Hkv = 2, c.decay = graph;
        mproblem p;
        mproblem_init(&p, &c);
        lm_attn *a = make_handle(&p, LM_CUDA);
        const size_t bytes = (size_t)(c.B * c.L * c.E) * lm_dtype_size(c.dtype);
        char *dout = dmalloc(bytes);
        dpoison(dout, bytes);
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        const int64_t L0 = 70;
        forward_part(&p, a, LM_CUDA, dout, 0, L0, 0, 1, s);
        const size_t es = lm_dtype_size(c.dtype);
        for (int64_t t = L0; t < c.L; t++) {
            lm_tensor x = lm_tensor_2d(p.dxq, c.dtype, LM_CUDA, c.B, c.E), y;
            x.data = (char *)p.dxq + t * p.sx[1] * (int64_t)es;
            x.stride[0] = p.sx[0];
            y = lm_tensor_2d(dout + t * c.E * es, c.dtype, LM_CUDA, c.B, c.E);
            y.stride[0] = c.L * c.E;
            if (!graph || t == L0) { /* the first step also makes the step's buffers */
                ck_assert_msg(lm_attn_step(a, &x, &y, s) == LM_OK, "step: %s", lm_last_error());
                continue;
            }
            cudaGraph_t gr;
            cudaGraphExec_t ex;
            CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            ck_assert_msg(lm_attn_step(a, &x, &y, s) == LM_OK, "step in capture: %s", lm_last_error());
            CUDA_OK(cudaStreamEndCapture(s, &gr));
            CUDA_OK(cudaGraphInstantiate(&ex, gr, 0));
            CUDA_OK(cudaGraphLaunch(ex, s));
            CUDA_OK(cudaGraphExecDestroy(ex));
            CUDA_OK(cudaGraphDestroy(gr));
        }
        CUDA_OK(cudaStreamSynchronize(s));
        check_out(&p, dout, graph ? "forward + steps in graphs" : "forward + steps");

        /* Save, reset, restore: the next forward continues from the saved state. */
        size_t sz;
        ck_assert(lm_attn_state_size(a, &sz) == LM_OK);
        void *blob = malloc(sz);
        ck_assert_msg(lm_attn_get_state(a, blob, sz) == LM_OK, "%s", lm_last_error());
        ck_assert_int_eq(lm_attn_reset(a), LM_OK);
        ck_assert_msg(lm_attn_set_state(a, blob, sz) == LM_OK, "%s", lm_last_error());
        void *blob2 = malloc(sz);
        ck_assert_msg(lm_attn_get_state(a, blob2, sz) == LM_OK, "%s", lm_last_error());
        ck_assert(!memcmp(blob, blob2, sz));
        free(blob);
        free(blob2);
        CUDA_OK(cudaStreamDestroy(s));
        cudaFree(dout);
        lm_attn_destroy(a);
        mproblem_free(&p);
    }
}
END_TEST

/* A long causal forward in two pieces (use_state) equals the reference. */
START_TEST(test_forward_pieces)
{
    ref_seed(203);
    mcase c = base();
    c.L = gpu_small ? 200 : 700, c.mask = 1, c.Hkv = 2;
    mproblem p;
    mproblem_init(&p, &c);
    lm_attn *a = make_handle(&p, LM_CUDA);
    const size_t bytes = (size_t)(c.B * c.L * c.E) * lm_dtype_size(c.dtype);
    void *dout = dmalloc(bytes);
    dpoison(dout, bytes);
    forward_part(&p, a, LM_CUDA, dout, 0, 129, 0, 1, NULL);
    forward_part(&p, a, LM_CUDA, dout, 129, c.L - 129, 1, 1, NULL);
    check_out(&p, dout, "two forwards");
    cudaFree(dout);
    lm_attn_destroy(a);
    mproblem_free(&p);
}
END_TEST

Suite *gpu_module_suite(void)
{
    Suite *s = suite_create("gpu_module");
    TCase *tc = tcase_create("module");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_forward_grid);
    tcase_add_test(tc, test_forward_then_steps);
    tcase_add_test(tc, test_forward_pieces);
    suite_add_tcase(s, tc);
    return s;
}
