/*
 * cuda_hybrid.c - hybrid attention (docs/DESIGN.md §9) on the GPU: how a prefill
 * is cut into launches, and the decode step.
 *
 * A call of L tokens from position P0, sh = its rows that are sink positions:
 *   1. head   rows [0, min(L, W + sh)): their evicted keys are the state's
 *             (S0, z0 and ring slots leaving the window), computed whole by
 *             one CTA per row from the state as it is;
 *   2. fold   S, z += the ring slots that leave the window during the call;
 *   3. zsum + chunk scan: z before each 64-row chunk of the delayed keys
 *             (rows sh .. L - W - 1), from the folded z; skipped where step 4
 *             runs on the v2 kernel (lmi_cuda_prefill_den), which writes each
 *             body row's denominator phi(q) . z itself (den), unless
 *             LM_HYBRID_DEN=passA;
 *   4. linear the existing prefill kernel on views shifted by W: queries rows
 *             W + sh .., keys and values rows sh .. L - W - 1, unnormalised with
 *             scale 1, from the folded state (its final state is the new S, z):
 *             it writes each body row's linear numerator into out; no copy;
 *      Where lmk_attend_window_refusal allows it (bf16, v2, W <= 64, s <= 16, no
 *      mask, TMA loads; not under LM_HYBRID_FUSED=off, and =only refuses
 *      every call that cannot fuse: the GPU suite's check), the
 *      window runs inside this launch (kernels/v2_window.cuh), which then
 *      writes the finished output: steps 3 and 5 do not run, and a small
 *      pass first gathers the s sinks as bf16 tiles (LMK_HYBRID_SINKS);
 *   5. body   rows [W + sh, L): the window softmax, the denominator from
 *             step 4's den (or, without it, pass A from step 3), combined with
 *             the numerator in out (bf16 with head dims
 *             64 or 128: registers, kernels/hybrid_body.cu; the rest, and every
 *             call while LM_HYBRID_BODY=wmma: WMMA, kernels/hybrid_window.cu);
 *   6. ring   the call's tokens into the window slots.
 * Without a state, steps 2 and 6 do not run and the head rows have no linear
 * part. Scratch (den, or the chunk sums and their scan) is stream-ordered.
 */
#include "cuda_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void gates(const lmi_core_params *p, float *gamma)
{
    for (int64_t h = 0; h < p->Hq; h++)
        gamma[h] = lmi_gate_gamma(p, h);
}

static void copy4(int64_t *dst, const lmi_view *v)
{
    memcpy(dst, v->s, 4 * sizeof(int64_t));
}

/* A view of rows [r, ..) of a [B, L, H, D] view. */
static lmi_view rows_from(lmi_view v, int64_t r)
{
    v.data = (char *)v.data + r * v.s[1] * (int64_t)lmi_dtype_bytes((lm_dtype)v.dtype);
    return v;
}

static lm_status check(const lmi_core_params *p)
{
    if (p->Hq > LMK_MAX_HYBRID_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: hybrid attention with %lld query heads, at most %d",
                         (long long)p->Hq, LMK_MAX_HYBRID_HEADS);
    if (p->position + p->L > INT32_MAX || p->window + p->sinks > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: hybrid positions beyond 2^31 tokens");
    return LM_OK;
}

/* Whether environment variable `name` is `value`. Read at every prefill (a
 * scan of the environment, next to seven launches), not once per process:
 * the GPU suite runs the same cases through every path.
 * LM_HYBRID_BODY=wmma keeps the body on the WMMA kernel; LM_HYBRID_DEN=passA
 * keeps the body's denominator on steps 3 and 5's pass A even where the
 * linear call could write it. */
static int env_is(const char *name, const char *value)
{
    const char *e = getenv(name);
    return e && strcmp(e, value) == 0;
}

/* NULL where the linear call c runs with the window fused (its sink tiles
 * and bits still to be set in *w), else why not: LM_HYBRID_FUSED=off keeps
 * the separate body. */
static const char *fuse(const lmi_core_params *p, const lmi_core_params *c, lmk_window *w)
{
    if (env_is("LM_HYBRID_FUSED", "off"))
        return "LM_HYBRID_FUSED=off";
    memset(w, 0, offsetof(lmk_window, gamma));
    w->Lk = c->L + p->window;
    w->W = p->window > LMK_WINDOW_MAX ? 0 : (int)p->window; /* 0: refused as out of range */
    w->ns = p->sinks > LMK_WINDOW_SINKS ? -1 : (int)p->sinks;
    w->scale = p->scale;
    gates(p, w->gamma);
    lmk_attend a;
    lmi_cuda_attend_params(c, &a);
    a.L = c->L; /* the launch's rows (the maps' extent), set per launch by the linear prefill */
    return lmk_attend_window_refusal(&a, w);
}

/* A prefill's kernel parameters *k and linear call *c (its body rows over
 * the delayed keys, when *nb_out > 0), and whether that call writes the body
 * rows' denominators (*den_out) or fuses the window (*fuse_out, with *w),
 * checked: everything refused is refused here, before any pass changes the
 * state. */
static lm_status plan(const lmi_core_params *p, lmk_hybrid *k, lmi_core_params *c, int64_t *nb_out, int *den_out,
                      int *fuse_out, lmk_window *w)
{
    lm_status st = check(p);
    if (st)
        return st;
    const int64_t L = p->L, W = p->window, P0 = p->position;
    int64_t sh = p->sinks - P0;
    sh = sh < 0 ? 0 : sh > L ? L : sh;
    memset(k, 0, offsetof(lmk_hybrid, gamma));
    k->q = p->q.data, k->k = p->k.data, k->v = p->v.data, k->out = p->out.data;
    copy4(k->sq, &p->q), copy4(k->sk, &p->k), copy4(k->sv, &p->v), copy4(k->so, &p->out);
    k->mask = p->mask;
    k->mask_s[0] = p->mask_s[0], k->mask_s[1] = p->mask_s[1];
    k->dtype = p->q.dtype;
    k->B = (int)p->B, k->Hq = (int)p->Hq, k->Hkv = (int)p->Hkv, k->Dk = (int)p->Dk, k->Dv = (int)p->Dv;
    k->feature_map = p->feature_map;
    k->L = L, k->P0 = P0, k->W = W, k->s = p->sinks, k->sh = sh;
    k->S = p->state, k->z = p->normalizer;
    k->win_k = p->win_k, k->win_v = p->win_v, k->win_pos = p->win_pos;
    k->eps = p->eps, k->scale = p->scale;
    k->body_wmma = env_is("LM_HYBRID_BODY", "wmma");
    gates(p, k->gamma);

    const int64_t nb = *nb_out = L - W - sh; /* body rows, and delayed keys */
    *c = *p;                                  /* linear attention of the body rows over the delayed keys */
    c->hybrid = 0;
    c->normalize = 0, c->scale = 1.0f, c->decay = NULL;
    if (nb > 0) {
        c->L = c->Lk = nb;
        c->q = rows_from(p->q, W + sh);
        c->out = rows_from(p->out, W + sh);
        c->k = rows_from(p->k, sh);
        c->v = rows_from(p->v, sh);
        if (p->mask)
            c->mask = p->mask + sh * p->mask_s[1];
    }
    const char *why = nb > 0 ? fuse(p, c, w) : "no body rows";
    *fuse_out = !why;
    if (nb > 0 && why && env_is("LM_HYBRID_FUSED", "only")) /* the GPU suite's proof that it fused */
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: LM_HYBRID_FUSED=only, and this call's window cannot run "
                                             "fused: %s", why);
    *den_out = nb > 0 && !*fuse_out && !env_is("LM_HYBRID_DEN", "passA") && lmi_cuda_prefill_den(c);
    int dev;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    if ((st = lmk_hybrid_check(k)))
        return st;
    return nb > 0 ? lmi_cuda_check_core(c, dev) : LM_OK;
}

lm_status lmi_cuda_hybrid_check(const lmi_core_params *p)
{
    lmk_hybrid k;
    lmk_window w;
    lmi_core_params c;
    int64_t nb;
    int den, fused;
    return p->L ? plan(p, &k, &c, &nb, &den, &fused, &w) : check(p);
}

lm_status lmi_cuda_hybrid_prefill(const lmi_core_params *p, cudaStream_t s)
{
    if (p->L == 0)
        return check(p);
    lmk_hybrid k;
    lmk_window w;
    lmi_core_params c;
    int64_t nb;
    int den, fused;
    lm_status st = plan(p, &k, &c, &nb, &den, &fused, &w);
    if (st)
        return st;
    const int64_t L = p->L, W = p->window, sh = k.sh;
    k.r0 = 0, k.r1 = W + sh < L ? W + sh : L;
    if ((st = lmk_hybrid_launch(&k, LMK_HYBRID_HEAD, s)))
        return st;
    if (p->state && (st = lmk_hybrid_launch(&k, LMK_HYBRID_FOLD, s)))
        return st;
    if (nb > 0) {
        const int64_t nch = lmi_cdiv(nb, LMK_CHUNK), heads = p->B * p->Hkv;
        /* The sink tiles and bits (fused), the linear call's denominators [B,
         * Hq, nb], or the chunk sums and their scan. */
        const size_t sink_k = (size_t)(heads * LMK_WINDOW_SINKS * p->Dk) * 2,
                     sink_v = (size_t)(heads * LMK_WINDOW_SINKS * p->Dv) * 2;
        const size_t bytes = fused ? sink_k + sink_v + (size_t)heads * sizeof(uint32_t)
                             : (den ? (size_t)(p->B * p->Hq * nb) : 2 * (size_t)(heads * nch * p->Dk)) * sizeof(float);
        float *ws = NULL;
        LMI_CUDA_TRY(cudaMallocAsync((void **)&ws, bytes, s));
        if (fused) {
            k.sink_k = ws, k.sink_v = (char *)ws + sink_k, k.sink_bits = (uint32_t *)((char *)ws + sink_k + sink_v);
            w.sink_k = k.sink_k, w.sink_v = k.sink_v, w.sink_bits = k.sink_bits;
            c.win = &w, c.normalize = 1, c.eps = p->eps;
            if (p->sinks > 0)
                st = lmk_hybrid_launch(&k, LMK_HYBRID_SINKS, s);
        } else if (den) {
            c.den = ws, k.den = ws;
        } else {
            k.zs = ws;
            k.zc = ws + heads * nch * p->Dk;
            st = lmk_hybrid_launch(&k, LMK_HYBRID_ZSUM, s);
            if (st == LM_OK)
                st = lmk_chunk_scan_launch(k.zs, (float *)k.zc, p->normalizer, NULL, heads, nch, (int)p->Dk, 0, s);
        }
        if (st == LM_OK)
            st = lmi_cuda_prefill(&c, s);
        if (st == LM_OK && !fused) {
            k.r0 = W + sh, k.r1 = L;
            st = lmk_hybrid_launch(&k, LMK_HYBRID_BODY, s);
        }
        const cudaError_t e = cudaFreeAsync(ws, s);
        if (st == LM_OK && e != cudaSuccess)
            st = lmi_cuda_fail(e, "cudaFreeAsync(hybrid scratch)", __FILE__, __LINE__);
        if (st)
            return st;
    }
    return p->state ? lmk_hybrid_launch(&k, LMK_HYBRID_RING, s) : LM_OK;
}

lm_status lmi_cuda_hybrid_decode_params(const lmi_core_params *p, lmk_hybrid_decode *d)
{
    lm_status st = check(p);
    if (st)
        return st;
    memset(d, 0, offsetof(lmk_hybrid_decode, gamma));
    LMI_DECODE_COMMON(*d, p);
    d->win_k = p->win_k, d->win_v = p->win_v, d->win_pos = p->win_pos;
    d->W = (int)p->window, d->s = (int)p->sinks;
    gates(p, d->gamma);
    return LM_OK;
}

lm_status lmi_cuda_hybrid_decode(const lmi_core_params *p, cudaStream_t s)
{
    lmk_hybrid_decode d;
    lm_status st = lmi_cuda_hybrid_decode_params(p, &d);
    return st ? st : lmk_hybrid_decode_launch(&d, s);
}
