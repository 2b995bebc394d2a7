/*
 * cuda_backward_tc.c - the core backward on the tensor cores, composed from
 * the forward's attention kernel (cuda_attend.c) and the passes of
 * kernels/bwd_parts.cu. With a = phi(q), b = phi(k), d_t = a_t.z_t + eps,
 * g_t = dO_t / d_t and h_t = -(g_t.o_t) (unnormalised: g = scale dO, h = 0),
 * R, r the gradients of the final state (dS_out, dz_out), S0, z0 the initial:
 *   dv_s = R^T b_s + sum_{t>=s} (a_t.b_s) g_t      anti-causal: q b, k a, v g, from R
 *   db_s = R v_s + sum_{t>=s} (g_t.v_s) a_t + r_s  anti-causal: q v, k g, v a, from R^T
 *   da_t = S0^T g_t + sum_{s<=t} (v_s.g_t) b_s + h_t z_t   causal: q g, k v, v b, from S0^T
 * with r_s = r + sum_{t>=s} h_t a_t; dq = da phi'(q), dk = db phi'(k). The
 * dv attention's final state is dS_in, r before token 0 is dz_in. o is not
 * recomputed: g.o = a.(S g) / d, and S g is the da attention's output before
 * its h z term, so h comes from that output. Three unnormalised attentions
 * (identity feature map) on the bf16 tensor cores; anti-causal is causal on
 * the reversed sequence (views with a negative token stride). Every attention
 * runs the forward kernel, so this backward gains whatever the forward gains.
 *
 * Precision: a, b, g enter the tensor cores as bf16; h is computed from the
 * da attention's own output, so where the terms of da and db cancel (they
 * are sums of (v_s - o_t).g_t in disguise) both sides carry the same
 * roundings. The fp32 kernel of
 * cuda_backward.c stays at the rounding floor; this one is bounded in
 * tests/gpu/test_gpu_backward.c. It runs for bf16, causal, one kv head per
 * query head, no key mask and no decay, unless the caller asked for
 * LM_PRECISION_ON; everything else takes the fp32 kernel.
 *
 * Scratch (one cudaMallocAsync): a, b, g, da, db as bf16 (5 L E elements per
 * batch row), per-token h, per-chunk sums and prefixes, transposed states.
 */
#include "cuda_impl.h"

#include <string.h>

int lmi_cuda_backward_tc_ok(const lmi_core_params *p, const lmi_core_grad_params *g)
{
    const lmi_view *v[] = { &p->q, &p->k, &p->v, &g->dout, &g->dq, &g->dk, &g->dv };
    for (int i = 0; i < 7; i++)
        if (v[i]->s[3] != 1)
            return 0;
    return p->causal && !p->exact && p->q.dtype == LM_BF16 && p->Hq == p->Hkv && !p->mask && !p->decay &&
           p->L > 0 && p->B * p->Hq <= 65535;
}

/* A bump allocator over the scratch; sizes rounded to 256 bytes. */
typedef struct arena {
    char *base;
    size_t used;
} arena;

static void *take(arena *a, size_t bytes)
{
    static char sizing; /* sizing pass: any non-NULL pointer, so NULL still means "none" */
    void *p = a->base ? (void *)(a->base + a->used) : (void *)&sizing;
    a->used += (bytes + 255) / 256 * 256;
    return p;
}

static lmi_view scratch_view(void *data, const lmi_core_params *p, int64_t D)
{
    lmi_view v = { .data = data, .dtype = LM_BF16, .s = { p->L * p->Hq * D, p->Hq * D, D, 1 } };
    return v;
}

/* The same view with its tokens in reverse order. */
static lmi_view reversed(lmi_view v, int64_t L)
{
    v.data = (char *)v.data + (L - 1) * v.s[1] * 2;
    v.s[1] = -v.s[1];
    return v;
}

/* An unnormalised causal attention of p's sizes with head dims Dk x Dv. */
static lmi_core_params plain(const lmi_core_params *p, lmi_view q, lmi_view k, lmi_view v, lmi_view out,
                             int64_t Dk, int64_t Dv, float *S, float *z)
{
    lmi_core_params a = *p;
    a.q = q, a.k = k, a.v = v, a.out = out;
    a.Dk = Dk, a.Dv = Dv;
    a.mask = NULL, a.decay = NULL;
    a.feature_map = LM_FEATURE_IDENTITY, a.normalize = 0, a.scale = 1.0f;
    a.state = S, a.normalizer = z;
    return a;
}

typedef struct tc {
    const lmi_core_params *p;
    const lmi_core_grad_params *g;
    int64_t n, nch, Dk, Dv;
    lmk_bparts k;
    lmi_view a, b, gg, da, db;
    float *S0t, *Rt, *zt; /* S0^T, R^T [n][Dv][Dk], normalisers for them [2][n][Dv] */
    float *Sdv, *zdv;     /* the dv attention's state: R in, dS_in out (or NULL) */
    void *ws;             /* the attentions' own scratch */
} tc;

enum { DA, DB, DV, NATT };

/* The three attentions of the gradients. */
static void attentions(const tc *t, lmi_core_params at[NATT])
{
    const lmi_core_params *p = t->p;
    const int64_t L = p->L, n = t->n;
    at[DA] = plain(p, t->gg, p->v, t->b, t->da, t->Dv, t->Dk, t->S0t, t->S0t ? t->zt : NULL);
    at[DB] = plain(p, reversed(p->v, L), reversed(t->gg, L), reversed(t->a, L), reversed(t->db, L), t->Dv,
                   t->Dk, t->Rt, t->Rt ? t->zt + n * t->Dv : NULL);
    at[DV] = plain(p, reversed(t->b, L), reversed(t->a, L), reversed(t->gg, L), reversed(t->g->dv, L), t->Dk,
                   t->Dv, t->Sdv, t->Sdv ? t->zdv : NULL);
}

/* Lays the scratch out (base NULL: only sizes it) and sets every pointer. */
static size_t layout(tc *t, char *base, int sms)
{
    const lmi_core_params *p = t->p;
    const lmi_core_grad_params *g = t->g;
    arena ar = { base, 0 };
    const size_t rowsk = (size_t)(p->B * p->L * p->Hq * t->Dk) * 2;
    const size_t rowsv = (size_t)(p->B * p->L * p->Hq * t->Dv) * 2;
    t->a = scratch_view(take(&ar, rowsk), p, t->Dk);
    t->b = scratch_view(take(&ar, rowsk), p, t->Dk);
    t->gg = scratch_view(take(&ar, rowsv), p, t->Dv);
    t->da = scratch_view(take(&ar, rowsk), p, t->Dk);
    t->db = scratch_view(take(&ar, rowsk), p, t->Dk);
    const size_t perchunk = (size_t)(t->n * t->nch * t->Dk) * sizeof(float);
    t->k.h = take(&ar, (size_t)(t->n * p->L) * sizeof(float));
    t->k.zs = take(&ar, perchunk), t->k.zc = take(&ar, perchunk);
    t->k.rs = take(&ar, perchunk), t->k.rc = take(&ar, perchunk);
    const size_t state = (size_t)(t->n * t->Dk * t->Dv) * sizeof(float);
    t->S0t = t->Rt = t->Sdv = NULL;
    if (p->state)
        t->S0t = take(&ar, state);
    if (g->dstate_out)
        t->Rt = take(&ar, state);
    if (g->dstate_in)
        t->Sdv = g->dstate_in;
    else if (g->dstate_out)
        t->Sdv = take(&ar, state);
    t->zt = take(&ar, 2 * (size_t)(t->n * t->Dv) * sizeof(float));
    t->zdv = take(&ar, (size_t)(t->n * t->Dk) * sizeof(float));
    lmi_core_params at[NATT];
    attentions(t, at);
    size_t w = 0;
    for (int i = 0; i < NATT; i++) {
        const size_t x = lmi_cuda_attend_ws(&at[i], sms);
        w = x > w ? x : w;
    }
    t->ws = take(&ar, w);
    return ar.used;
}

static void parts_params(tc *t)
{
    const lmi_core_params *p = t->p;
    const lmi_core_grad_params *g = t->g;
    lmk_bparts *k = &t->k;
    k->q = p->q.data, k->k = p->k.data, k->dout = g->dout.data;
    memcpy(k->sq, p->q.s, sizeof k->sq);
    memcpy(k->sk, p->k.s, sizeof k->sk);
    memcpy(k->sdo, g->dout.s, sizeof k->sdo);
    k->dq = g->dq.data, k->dk = g->dk.data;
    memcpy(k->sdq, g->dq.s, sizeof k->sdq);
    memcpy(k->sdk, g->dk.s, sizeof k->sdk);
    k->a = t->a.data, k->b = t->b.data, k->g = t->gg.data;
    k->da = t->da.data, k->db = t->db.data;
    k->B = (int)p->B, k->H = (int)p->Hq, k->Dk = (int)t->Dk, k->Dv = (int)t->Dv;
    k->L = p->L;
    k->feature_map = p->feature_map, k->normalize = p->normalize;
    k->eps = p->eps, k->scale = p->scale;
}

static lm_status copy(void *dst, const void *src, size_t bytes, cudaStream_t s)
{
    LMI_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    return LM_OK;
}

static lm_status run(tc *t, int sms, cudaStream_t s)
{
    const lmi_core_params *p = t->p;
    const lmi_core_grad_params *g = t->g;
    const int64_t n = t->n, Dk = t->Dk, Dv = t->Dv;
    const size_t state = (size_t)(n * Dk * Dv) * sizeof(float), zk = (size_t)(n * Dk) * sizeof(float);
    lmi_core_params at[NATT];
    attentions(t, at);
    lm_status st;
    /* a, b; z before each chunk; g (and 1/d); the states that start the attentions:
     * transposed for the two whose state is [Dv][Dk], R in for the dv one. */
    if ((st = lmk_bparts_launch(&t->k, LMK_BP_PREP, s)) ||
        (st = lmk_chunk_scan_launch(t->k.zs, t->k.zc, p->normalizer, NULL, n, t->nch, (int)Dk, 0, s)) ||
        (st = lmk_bparts_launch(&t->k, LMK_BP_G, s)))
        return st;
    LMI_CUDA_TRY(cudaMemsetAsync(t->zt, 0, 2 * (size_t)(n * Dv) * sizeof(float), s));
    if (p->state && (st = lmk_transpose_launch(p->state, t->S0t, n, (int)Dk, (int)Dv, s)))
        return st;
    if (g->dstate_out && (st = lmk_transpose_launch(g->dstate_out, t->Rt, n, (int)Dk, (int)Dv, s)))
        return st;
    if (t->Sdv) {
        LMI_CUDA_TRY(cudaMemsetAsync(t->zdv, 0, zk, s));
        if (!g->dstate_out)
            LMI_CUDA_TRY(cudaMemsetAsync(t->Sdv, 0, state, s));
        else if ((st = copy(t->Sdv, g->dstate_out, state, s)))
            return st;
    }
    /* da's attention, then h from it; the adjoint of z after each chunk (and dz_in). */
    if ((st = lmi_cuda_attend(&at[DA], sms, t->ws, s)) ||
        (p->normalize && (st = lmk_bparts_launch(&t->k, LMK_BP_H, s))) ||
        (st = lmk_chunk_scan_launch(t->k.rs, t->k.rc, g->dnormalizer_out, g->dnormalizer_in, n, t->nch,
                                    (int)Dk, 1, s)) ||
        (st = lmi_cuda_attend(&at[DB], sms, t->ws, s)) || (st = lmi_cuda_attend(&at[DV], sms, t->ws, s)))
        return st;
    return lmk_bparts_launch(&t->k, LMK_BP_FINISH, s);
}

lm_status lmi_cuda_backward_tc(const lmi_core_params *p, const lmi_core_grad_params *g, cudaStream_t s)
{
    int dev, sms;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    tc t;
    memset(&t, 0, sizeof t);
    t.p = p, t.g = g;
    t.n = p->B * p->Hq, t.nch = lmi_cdiv(p->L, LMK_CHUNK), t.Dk = p->Dk, t.Dv = p->Dv;
    const size_t bytes = layout(&t, NULL, sms);
    char *base = NULL;
    LMI_CUDA_TRY(cudaMallocAsync((void **)&base, bytes, s));
    layout(&t, base, sms);
    parts_params(&t);
    lm_status st = run(&t, sms, s);
    cudaError_t e = cudaFreeAsync(base, s);
    if (st == LM_OK && e != cudaSuccess)
        st = lmi_cuda_fail(e, "cudaFreeAsync(backward scratch)", __FILE__, __LINE__);
    return st;
}
