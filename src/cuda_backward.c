/*
 * cuda_backward.c - the core backward on the GPU: how it is cut into the
 * launches of kernels/backward.cu (design and math in backward.cuh) and the
 * segment scan of kernels/scan.cu.
 *
 * The sequence is cut into segments of whole 64-token chunks so that batch x
 * kv heads x segments fills the GPU about twice. Causal:
 *   1. ABSORB_KEYS     each segment's state increment (segments 0 .. n-2);
 *   2. scan            from the initial state, the state each segment starts from;
 *   3. QUERIES         per segment, forwards: 1/d and dd of every token, dq;
 *   4. ABSORB_QUERIES  each segment's adjoint increment (segments 1 .. n-1,
 *                      the last one from dS_out);
 *   5. the same scan over the segments in reverse order (negative stride):
 *                      the adjoint after each segment (the last one's own
 *                      length is inside its increment, so every decay the
 *                      scan applies spans a whole segment);
 *   6. KEYS            per segment, backwards: dk, dv; segment 0 ends at dS_in.
 * Bidirectional: totals instead of prefixes: ABSORB_KEYS over key segments
 * and a sum from the initial state give S, z; QUERIES over query segments;
 * ABSORB_QUERIES and a sum from dS_out give the adjoint (= dS_in); KEYS.
 * With a mask and a decay, both scans apply each segment's decay over its
 * unmasked tokens only (lmk_seg_decay; a masked key does not decay).
 * bf16 causal calls without GQA, mask or decay go to the tensor-core
 * backward of cuda_backward_tc.c instead (unless LM_PRECISION_ON).
 * Workspace (stream-ordered): states at segment starts and adjoints at
 * segment ends, Kahan compensations per CTA when compensated, 2 floats per
 * query token and head.
 */
#include "cuda_impl.h"

#include <string.h>

typedef struct bwd_plan {
    int64_t seg_len, nseg;   /* causal, or bidirectional query segments */
    int64_t kseg_len, nkseg; /* bidirectional key segments */
    int64_t S_slots, R_slots, comp_ctas;
} bwd_plan;

/* n > 0 tokens as segments of whole chunks, about `want` of them: their count. */
static int64_t segments(int64_t n, int64_t want, int64_t *len)
{
    *len = lmi_segment_len(n, want);
    return lmi_cdiv(n, *len);
}

static bwd_plan plan_of(const lmi_core_params *p, int sms, int per_sm)
{
    bwd_plan pl = { 0 };
    const int64_t heads = p->B * p->Hkv, want = 2 * (int64_t)sms * per_sm / heads;
    pl.nseg = segments(p->L, want, &pl.seg_len);
    if (p->causal) {
        pl.S_slots = pl.R_slots = pl.comp_ctas = pl.nseg;
    } else {
        pl.nkseg = segments(p->Lk, want, &pl.kseg_len);
        pl.S_slots = pl.nkseg + 1;
        pl.R_slots = pl.nseg + 1;
        pl.comp_ctas = pl.nkseg > pl.nseg ? pl.nkseg : pl.nseg;
    }
    return pl;
}

static void copy4(int64_t *dst, const lmi_view *v)
{
    memcpy(dst, v->s, 4 * sizeof(int64_t));
}

static void kernel_params(const lmi_core_params *p, const lmi_core_grad_params *g, lmk_bwd *k)
{
    memset(k, 0, offsetof(lmk_bwd, decay));
    k->q = p->q.data, k->k = p->k.data, k->v = p->v.data, k->dout = g->dout.data;
    k->dq = g->dq.data, k->dk = g->dk.data, k->dv = g->dv.data;
    copy4(k->sq, &p->q);
    copy4(k->sk, &p->k);
    copy4(k->sv, &p->v);
    copy4(k->sdo, &g->dout);
    copy4(k->sdq, &g->dq);
    copy4(k->sdk, &g->dk);
    copy4(k->sdv, &g->dv);
    k->mask = p->mask;
    k->mask_s[0] = p->mask_s[0], k->mask_s[1] = p->mask_s[1];
    k->dtype = p->q.dtype;
    k->B = (int)p->B, k->Hq = (int)p->Hq, k->Hkv = (int)p->Hkv, k->Dk = (int)p->Dk, k->Dv = (int)p->Dv;
    k->last_S = g->dstate_out, k->last_z = g->dnormalizer_out;
    k->fin_S = g->dstate_in, k->fin_z = g->dnormalizer_in;
    k->causal = p->causal, k->feature_map = p->feature_map, k->normalize = p->normalize;
    k->eps = p->eps, k->scale = p->scale;
    k->has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(k->decay, p->decay, (size_t)p->Hkv * sizeof(float));
}

static void scan_params(const lmi_core_params *p, lmk_scan *s)
{
    memset(s, 0, offsetof(lmk_scan, decay));
    s->n = (int)(p->B * p->Hkv), s->Hkv = (int)p->Hkv, s->Dk = (int)p->Dk, s->Dv = (int)p->Dv;
    s->compensated = p->compensated;
    s->has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(s->decay, p->decay, (size_t)p->Hkv * sizeof(float));
}

/* Slots of S [heads][Dk][Dv] then z [heads][Dk], `seg` floats apart. */
static lmk_state slots(float *base, const lmi_core_params *p, int64_t seg)
{
    lmk_state s = { base, base + p->B * p->Hkv * p->Dk * p->Dv, seg, seg };
    return s;
}

/* One kind over segments seg0 .. seg0 + nseg - 1 of L tokens. */
static lm_status launch(lmk_bwd *k, lmk_bwd_kind kind, int64_t L, int64_t seg_len, int64_t seg0,
                        int64_t nseg, lmk_state st, cudaStream_t s)
{
    if (nseg < 1)
        return LM_OK;
    k->L = L, k->seg_len = seg_len, k->seg0 = (int)seg0, k->nseg = (int)nseg, k->st = st;
    return lmk_backward_launch(k, kind, s);
}

/* Causal; seg_g: room for the segments' decays (with a mask and a decay). */
static lm_status causal(const lmi_core_params *p, const bwd_plan *pl, lmk_bwd *k, float *ws, float *seg_g,
                        cudaStream_t s)
{
    const int64_t n = pl->nseg, seg = p->B * p->Hkv * (p->Dk * p->Dv + p->Dk);
    const lmk_state S = slots(ws, p, seg), R = slots(ws + n * seg, p, seg);
    k->last_seg = (int)(n - 1);
    lmk_scan sc;
    scan_params(p, &sc);
    sc.nseg = (int)n, sc.prefix = 1, sc.seg_chunks = pl->seg_len / LMK_CHUNK;
    sc.part = S, sc.S0 = p->state, sc.z0 = p->normalizer;
    lm_status st;
    if (seg_g) { /* step s of the forward scan spans segment s */
        if ((st = lmi_cuda_seg_decay(p, p->L, pl->seg_len, n, seg_g, s)))
            return st;
        sc.seg_g = seg_g, sc.seg_g_h = n, sc.seg_g_s = 1;
    }
    if ((st = launch(k, LMK_BWD_ABSORB_KEYS, p->L, pl->seg_len, 0, n - 1, S, s)) ||
        (st = lmk_scan_launch(&sc, s)) ||
        (st = launch(k, LMK_BWD_QUERIES, p->L, pl->seg_len, 0, n, S, s)) ||
        (st = launch(k, LMK_BWD_ABSORB_QUERIES, p->L, pl->seg_len, 1, n - 1, R, s)))
        return st;
    if (n > 1) {
        const lmk_state rev = { R.S + (n - 1) * seg, R.z + (n - 1) * seg, -seg, -seg };
        sc.part = rev, sc.S0 = NULL, sc.z0 = NULL;
        if (seg_g) /* step s of the reverse scan spans segment n - 1 - s */
            sc.seg_g = seg_g + (n - 1), sc.seg_g_s = -1;
        if ((st = lmk_scan_launch(&sc, s)))
            return st;
    }
    return launch(k, LMK_BWD_KEYS, p->L, pl->seg_len, 0, n, R, s);
}

static lm_status bidirectional(const lmi_core_params *p, const lmi_core_grad_params *g,
                               const bwd_plan *pl, lmk_bwd *k, float *ws, cudaStream_t s)
{
    const int64_t nk = pl->nkseg, nq = pl->nseg, seg = p->B * p->Hkv * (p->Dk * p->Dv + p->Dk);
    float *wR = ws + pl->S_slots * seg;
    const lmk_state Sp = slots(ws, p, seg), St = slots(ws + nk * seg, p, 0);
    const lmk_state Rp = slots(wR, p, seg), Rt = slots(wR + nq * seg, p, 0);
    lmk_scan sc;
    scan_params(p, &sc);
    sc.prefix = 0;
    lm_status st;
    if ((st = launch(k, LMK_BWD_ABSORB_KEYS, p->Lk, pl->kseg_len, 0, nk, Sp, s)))
        return st;
    sc.part = Sp, sc.nseg = (int)nk, sc.S0 = p->state, sc.z0 = p->normalizer;
    sc.S_total = St.S, sc.z_total = St.z;
    if ((st = lmk_scan_launch(&sc, s)) ||
        (st = launch(k, LMK_BWD_QUERIES, p->L, pl->seg_len, 0, nq, St, s)) ||
        (st = launch(k, LMK_BWD_ABSORB_QUERIES, p->L, pl->seg_len, 0, nq, Rp, s)))
        return st;
    sc.part = Rp, sc.nseg = (int)nq, sc.S0 = g->dstate_out, sc.z0 = g->dnormalizer_out;
    sc.S_total = Rt.S, sc.z_total = Rt.z;
    if ((st = lmk_scan_launch(&sc, s)) ||
        (st = launch(k, LMK_BWD_KEYS, p->Lk, pl->kseg_len, 0, nk, Rt, s)))
        return st;
    if (g->dstate_in) { /* every query saw the whole sequence: dS_in is the total */
        const size_t nS = (size_t)(p->B * p->Hkv * p->Dk * p->Dv), nz = (size_t)(p->B * p->Hkv * p->Dk);
        LMI_CUDA_TRY(cudaMemcpyAsync(g->dstate_in, Rt.S, nS * sizeof(float), cudaMemcpyDeviceToDevice, s));
        LMI_CUDA_TRY(cudaMemcpyAsync(g->dnormalizer_in, Rt.z, nz * sizeof(float), cudaMemcpyDeviceToDevice, s));
    }
    return LM_OK;
}

lm_status lmi_cuda_backward(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream)
{
    cudaStream_t s = (cudaStream_t)stream;
    if (p->Dk > LMK_MAX_DK || p->Dv > LMK_MAX_DK)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: the backward takes head dims up to %d (Dk %lld, Dv %lld)",
                         LMK_MAX_DK, (long long)p->Dk, (long long)p->Dv);
    if (lmi_cuda_backward_tc_ok(p, g))
        return lmi_cuda_backward_tc(p, g, s);
    if (p->decay && p->Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %lld kv heads, at most %d",
                         (long long)p->Hkv, LMK_MAX_DECAY_HEADS);
    int dev, sms, per_sm = 0;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    lm_status st = lmk_backward_blocks_per_sm((int)p->Dk, (int)p->Dv, &per_sm);
    if (st)
        return st;
    const bwd_plan pl = plan_of(p, sms, per_sm > 0 ? per_sm : 1);
    const int64_t heads = p->B * p->Hkv, per = p->Dk * p->Dv + p->Dk;
    const int64_t comp = p->compensated ? pl.comp_ctas * heads * p->Dk * p->Dv : 0;
    const int64_t carries = (pl.S_slots + pl.R_slots) * heads * per;
    const int64_t segs = p->causal && p->mask && p->decay ? heads * pl.nseg : 0;
    const size_t bytes = (size_t)(carries + comp + 2 * p->B * p->Hq * p->L + segs) * sizeof(float);
    float *ws = NULL;
    LMI_CUDA_TRY(cudaMallocAsync((void **)&ws, bytes, s));
    lmk_bwd k;
    kernel_params(p, g, &k);
    k.comp = comp ? ws + carries : NULL;
    k.scal = ws + carries + comp;
    float *seg_g = segs ? k.scal + 2 * p->B * p->Hq * p->L : NULL;
    st = p->causal ? causal(p, &pl, &k, ws, seg_g, s) : bidirectional(p, g, &pl, &k, ws, s);
    cudaError_t e = cudaFreeAsync(ws, s);
    if (st == LM_OK && e != cudaSuccess)
        st = lmi_cuda_fail(e, "cudaFreeAsync(backward workspace)", __FILE__, __LINE__);
    return st;
}
