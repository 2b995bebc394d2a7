/*
 * cuda_attend.c - the attention core on the GPU: how a prefill is cut into
 * kernel launches (kernels/lm_kernels.h), and the decode step.
 *
 * Causal: one CAUSAL launch, each CTA running through its sequence with the
 * state on chip. When batch x heads x value blocks cannot fill half the SMs,
 * the sequence is cut into segments: ABSORB computes each segment's state
 * increment, a scan turns them into each segment's starting state, and
 * CAUSAL runs the segments in parallel (keys are read twice: worth it only
 * when the GPU would otherwise idle).
 * Bidirectional: ABSORB over key segments, a scan to the total, then READOUT
 * of every query block in parallel against it.
 * Causal with keys alone (L = 0: lm_linear_attn_absorb): the same ABSORB
 * over key segments, the scan folding them into the caller's state in place.
 * The final state goes to scratch first and is copied out at the end, since
 * CTAs that share a kv head still read the initial state from the same place.
 * Two prefill kernels: v1 (kernels/attend.cuh: a head's value columns over 4
 * CTAs) and v2 (kernels/attend_v2.cu: sm_90a, one CTA per head and segment).
 * v2 runs every call it takes (lmk_attend_v2_takes; the rest stays on v1),
 * compensated ones in segments of at most LMK_V2_COMP_SEG tokens;
 * LM_ATTEND_KERNEL=v1 keeps every call on v1 (v2 became the default after it
 * passed the GPU suites and the sanitizers on the H200: bench/NOTES.md);
 * LM_V2_LOADS=cpasync keeps v2's cp.async loads where it would use TMA.
 * With a mask and a decay, a segment decays the state by g^(its unmasked
 * tokens): those factors come from lmk_seg_decay, for the scan.
 * p->den (internal, the hybrid prefill's): v2's CAUSAL epilogue writes each
 * row's normaliser there; lmi_cuda_prefill_den says beforehand whether the
 * call's CAUSAL launch runs on v2 (the same test lmk_attend_launch picks by).
 */
#include "cuda_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct plan {
    int64_t seg_len, nseg;   /* causal segments, or bidirectional query blocks */
    int64_t kseg_len, nkseg; /* bidirectional key segments */
    size_t ws_floats;
} plan;

static int64_t clamp64(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

static int64_t value_blocks(const lmi_core_params *p)
{
    return lmi_cdiv(p->Dv, p->Dk <= 128 ? 32 : 16);
}

/* LM_ATTEND_KERNEL and LM_V2_LOADS, read once per process. */
static int env_v2, env_cpasync;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    const char *e = getenv("LM_ATTEND_KERNEL"), *l = getenv("LM_V2_LOADS");
    env_v2 = !(e && strcmp(e, "v1") == 0);
    env_cpasync = l && strcmp(l, "cpasync") == 0;
}

static void base_params(const lmi_core_params *p, lmk_attend *k);

/* v2 runs this call's CAUSAL or ABSORB launches (planned for one CTA per head). */
static int takes_v2(const lmi_core_params *p)
{
    pthread_once(&env_once, read_env);
    if (!env_v2)
        return 0;
    lmk_attend k;
    base_params(p, &k);
    return lmk_attend_v2_takes(&k, p->causal && p->L > 0 ? LMK_CAUSAL : LMK_ABSORB);
}

/* Segments that spread `ctas` CTAs over the SMs: v2 takes a whole SM per CTA,
 * so it rounds down (one wave), v1 up. */
static int64_t fill(int sms, int64_t ctas, int v2)
{
    return v2 ? (sms / ctas > 1 ? sms / ctas : 1) : lmi_cdiv(sms, ctas);
}

/* A compensated call on v2 sums each segment's chunks with plain fp32 adds
 * and the segments with Kahan (the scan): at least enough segments of n
 * tokens that none is longer than LMK_V2_COMP_SEG. */
static int64_t comp_segments(const lmi_core_params *p, int v2, int64_t n, int64_t want)
{
    const int64_t least = v2 && p->compensated ? lmi_cdiv(n, LMK_V2_COMP_SEG) : 1;
    return want > least ? want : least;
}

static plan plan_of(const lmi_core_params *p, int sms)
{
    plan pl = { 0 };
    const int64_t heads = p->B * p->Hkv, per = p->Dk * p->Dv + p->Dk;
    const int v2 = takes_v2(p);
    const int64_t nvb = value_blocks(p);
    if (p->causal && p->L > 0) {
        const int64_t ctas = p->B * p->Hq * (v2 ? 1 : nvb), chunks = lmi_cdiv(p->L, LMK_CHUNK);
        int64_t want = 1;
        if (2 * ctas <= sms) /* segments of at least 8 chunks, so ABSORB pays off */
            want = clamp64(fill(sms, ctas, v2), 1, chunks / 8);
        want = comp_segments(p, v2, p->L, want);
        pl.seg_len = lmi_segment_len(p->L, want);
        pl.nseg = lmi_cdiv(p->L, pl.seg_len);
        pl.ws_floats = (size_t)((pl.nseg > 1 ? pl.nseg : 0) + (p->state ? 1 : 0)) * heads * per;
        if (pl.nseg > 1 && p->mask && p->decay)
            pl.ws_floats += (size_t)(heads * pl.nseg); /* segment decays */
    } else { /* bidirectional, or causal keys alone (L = 0) */
        if (p->Lk > 0) {
            const int64_t want = clamp64(fill(sms, p->B * p->Hkv * (v2 ? 1 : nvb), v2), 1,
                                         lmi_cdiv(p->Lk, 4 * LMK_CHUNK));
            pl.kseg_len = lmi_segment_len(p->Lk, comp_segments(p, v2, p->Lk, want));
            pl.nkseg = lmi_cdiv(p->Lk, pl.kseg_len);
        }
        if (p->L > 0) {
            pl.seg_len = lmi_segment_len(p->L, lmi_cdiv(2 * sms, p->B * p->Hq * nvb));
            pl.nseg = lmi_cdiv(p->L, pl.seg_len);
        }
        /* The increments, and the bidirectional total (keys alone fold into p->state). */
        pl.ws_floats = (size_t)((p->causal ? 0 : 1) + pl.nkseg) * heads * per;
        if (p->mask && p->decay) /* keys alone: each key segment's decay */
            pl.ws_floats += (size_t)(heads * pl.nkseg);
    }
    return pl;
}

size_t lmi_cuda_attend_ws(const lmi_core_params *p, int sms)
{
    return plan_of(p, sms).ws_floats * sizeof(float);
}

lm_status lmi_cuda_check_core(const lmi_core_params *p, int device)
{
    const lmi_view *v[] = { &p->q, &p->k, &p->v, &p->out };
    const char *names[] = { "q", "k", "v", "out" };
    for (int i = 0; i < 4; i++)
        if (v[i]->data && v[i]->s[3] != 1)
            return lmi_error(LM_ERR_UNSUPPORTED,
                             "cuda: %s needs stride 1 on its last dimension (has %lld)", names[i],
                             (long long)v[i]->s[3]);
    if (p->Dk > LMK_MAX_DK)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: head dim Dk = %lld, at most %d",
                         (long long)p->Dk, LMK_MAX_DK);
    if (p->decay && p->Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %lld kv heads, at most %d",
                         (long long)p->Hkv, LMK_MAX_DECAY_HEADS);
    int optin = 0;
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const size_t need = lmk_attend_smem(p->q.dtype, (int)p->Dk);
    if (need > (size_t)optin)
        return lmi_error(LM_ERR_UNSUPPORTED,
                         "cuda: this GPU gives a block %d bytes of shared memory, head dim %lld "
                         "needs %zu (an sm_90 GPU has enough)",
                         optin, (long long)p->Dk, need);
    return LM_OK;
}

static void copy_view(int64_t *dst, const lmi_view *v)
{
    memcpy(dst, v->s, 4 * sizeof(int64_t));
}

static void base_params(const lmi_core_params *p, lmk_attend *k)
{
    memset(k, 0, offsetof(lmk_attend, decay));
    k->q = p->q.data, k->k = p->k.data, k->v = p->v.data, k->out = p->out.data;
    copy_view(k->sq, &p->q);
    copy_view(k->sk, &p->k);
    copy_view(k->sv, &p->v);
    copy_view(k->so, &p->out);
    k->mask = p->mask;
    k->mask_s[0] = p->mask_s[0], k->mask_s[1] = p->mask_s[1];
    k->dtype = p->q.dtype;
    k->B = (int)p->B, k->Hq = (int)p->Hq, k->Hkv = (int)p->Hkv, k->Dk = (int)p->Dk, k->Dv = (int)p->Dv;
    k->feature_map = p->feature_map, k->normalize = p->normalize, k->compensated = p->compensated;
    k->eps = p->eps, k->scale = p->scale;
    k->has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(k->decay, p->decay, (size_t)p->Hkv * sizeof(float));
    pthread_once(&env_once, read_env);
    k->v2 = env_v2, k->v2_cpasync = env_cpasync;
    k->den = p->den;
    k->win = p->win;
}

int lmi_cuda_prefill_den(const lmi_core_params *p)
{
    if (!p->causal || p->L < 1)
        return 0;
    lmk_attend k;
    base_params(p, &k);
    return lmk_attend_v2_runs(&k, LMK_CAUSAL);
}

void lmi_cuda_attend_params(const lmi_core_params *p, lmk_attend *k)
{
    base_params(p, k);
}

static lmk_state state_at(float *base, int64_t heads, const lmi_core_params *p, int64_t seg)
{
    lmk_state s = { base, base + heads * p->Dk * p->Dv, seg, seg };
    return s;
}

static void scan_params(const lmi_core_params *p, lmk_scan *s)
{
    memset(s, 0, offsetof(lmk_scan, decay));
    if (!p->fresh) /* fresh: the state is written only */
        s->S0 = p->state, s->z0 = p->normalizer;
    s->n = (int)(p->B * p->Hkv), s->Hkv = (int)p->Hkv, s->Dk = (int)p->Dk, s->Dv = (int)p->Dv;
    s->compensated = p->compensated;
    s->has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(s->decay, p->decay, (size_t)p->Hkv * sizeof(float));
}

/* The final state from scratch into the caller's S and z. */
static lm_status copy_out(const lmi_core_params *p, const lmk_state *fin, cudaStream_t stream)
{
    const size_t heads = (size_t)(p->B * p->Hkv);
    LMI_CUDA_TRY(cudaMemcpyAsync(p->state, fin->S, heads * (size_t)(p->Dk * p->Dv) * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream));
    LMI_CUDA_TRY(cudaMemcpyAsync(p->normalizer, fin->z, heads * (size_t)p->Dk * sizeof(float),
                                 cudaMemcpyDeviceToDevice, stream));
    return LM_OK;
}

static lm_status causal(const lmi_core_params *p, const plan *pl, float *ws, cudaStream_t stream)
{
    const int64_t heads = p->B * p->Hkv, per = p->Dk * p->Dv + p->Dk;
    lmk_attend k;
    base_params(p, &k);
    lm_status st;
    lmk_state fin = { 0 };
    if (pl->nseg > 1) {
        const lmk_state part = state_at(ws, heads, p, heads * per);
        lmk_attend a = k;
        a.L = (pl->nseg - 1) * pl->seg_len, a.seg_len = pl->seg_len, a.nseg = (int)(pl->nseg - 1);
        a.out_state = part, a.den = NULL, a.win = NULL;
        if ((st = lmk_attend_launch(&a, LMK_ABSORB, stream)))
            return st;
        lmk_scan s;
        scan_params(p, &s);
        s.part = part, s.nseg = (int)pl->nseg, s.prefix = 1, s.seg_chunks = pl->seg_len / LMK_CHUNK;
        ws += pl->nseg * heads * per;
        if (p->mask && p->decay) {
            if ((st = lmi_cuda_seg_decay(p, p->L, pl->seg_len, pl->nseg, ws, stream)))
                return st;
            s.seg_g = ws, s.seg_g_h = pl->nseg, s.seg_g_s = 1;
            ws += heads * pl->nseg;
        }
        if ((st = lmk_scan_launch(&s, stream)))
            return st;
        k.in = part;
    } else if (!p->fresh) {
        k.in.S = p->state, k.in.z = p->normalizer;
    }
    if (p->state)
        fin = state_at(ws, heads, p, 0);
    k.out_state = fin;
    k.L = p->L, k.seg_len = pl->seg_len, k.nseg = (int)pl->nseg;
    if ((st = lmk_attend_launch(&k, LMK_CAUSAL, stream)))
        return st;
    return p->state ? copy_out(p, &fin, stream) : LM_OK;
}

/* ABSORB of the key segments of pl into scratch `part` (their increments),
 * then the scan folds them into the initial state (p->state, or empty) and
 * writes the result to S_total, z_total (which may be p->state itself). With
 * a mask and a decay, each segment decays by its unmasked keys alone (their
 * decays follow the increments in the scratch). */
static lm_status fold_keys(const lmi_core_params *p, const plan *pl, float *part_ws, float *S_total,
                           float *z_total, cudaStream_t stream)
{
    const int64_t heads = p->B * p->Hkv, per = p->Dk * p->Dv + p->Dk;
    const lmk_state part = state_at(part_ws, heads, p, heads * per);
    lmk_attend a;
    base_params(p, &a);
    a.L = p->Lk, a.seg_len = pl->kseg_len, a.nseg = (int)pl->nkseg;
    a.out_state = part;
    lm_status st = lmk_attend_launch(&a, LMK_ABSORB, stream);
    if (st)
        return st;
    lmk_scan s;
    scan_params(p, &s);
    s.part = part, s.nseg = (int)pl->nkseg, s.prefix = 0;
    s.seg_chunks = pl->kseg_len / LMK_CHUNK;
    s.last_tokens = p->Lk - (pl->nkseg - 1) * pl->kseg_len;
    s.S_total = S_total, s.z_total = z_total;
    if (p->mask && p->decay) {
        float *seg_g = part_ws + pl->nkseg * heads * per;
        if ((st = lmi_cuda_seg_decay(p, p->Lk, pl->kseg_len, pl->nkseg, seg_g, stream)))
            return st;
        s.seg_g = seg_g, s.seg_g_h = pl->nkseg, s.seg_g_s = 1;
    }
    return lmk_scan_launch(&s, stream);
}

static lm_status bidirectional(const lmi_core_params *p, const plan *pl, float *ws,
                               cudaStream_t stream)
{
    const int64_t heads = p->B * p->Hkv, per = p->Dk * p->Dv + p->Dk;
    const lmk_state total = state_at(ws, heads, p, 0);
    lmk_attend k;
    base_params(p, &k);
    lm_status st;
    if (p->Lk > 0) {
        if ((st = fold_keys(p, pl, ws + heads * per, total.S, total.z, stream)))
            return st;
    } else if (p->state && !p->fresh) {
        LMI_CUDA_TRY(cudaMemcpyAsync(total.S, p->state, (size_t)(heads * p->Dk * p->Dv) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream));
        LMI_CUDA_TRY(cudaMemcpyAsync(total.z, p->normalizer, (size_t)(heads * p->Dk) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream));
    } else {
        LMI_CUDA_TRY(cudaMemsetAsync(ws, 0, (size_t)(heads * per) * sizeof(float), stream));
    }
    if (p->L > 0) {
        k.in = total;
        k.L = p->L, k.seg_len = pl->seg_len, k.nseg = (int)pl->nseg;
        if ((st = lmk_attend_launch(&k, LMK_READOUT, stream)))
            return st;
    }
    return p->state ? copy_out(p, &total, stream) : LM_OK;
}

lm_status lmi_cuda_seg_decay(const lmi_core_params *p, int64_t L, int64_t seg_len, int64_t nseg, float *out,
                             cudaStream_t stream)
{
    lmk_seg_decay d;
    memset(&d, 0, offsetof(lmk_seg_decay, decay));
    d.mask = p->mask, d.mask_s[0] = p->mask_s[0], d.mask_s[1] = p->mask_s[1];
    d.out = out;
    d.B = (int)p->B, d.Hkv = (int)p->Hkv, d.nseg = (int)nseg;
    d.L = L, d.seg_len = seg_len;
    memcpy(d.decay, p->decay, (size_t)p->Hkv * sizeof(float));
    return lmk_seg_decay_launch(&d, stream);
}

lm_status lmi_cuda_attend(const lmi_core_params *p, int sms, void *ws, cudaStream_t stream)
{
    const plan pl = plan_of(p, sms);
    if (p->causal && p->L > 0)
        return causal(p, &pl, ws, stream);
    if (p->causal) /* keys alone: folded into the caller's state in place */
        return p->Lk > 0 && p->state ? fold_keys(p, &pl, ws, p->state, p->normalizer, stream) : LM_OK;
    return bidirectional(p, &pl, ws, stream);
}

lm_status lmi_cuda_decode(const lmi_core_params *p, cudaStream_t stream)
{
    lmk_decode d;
    memset(&d, 0, offsetof(lmk_decode, decay));
    LMI_DECODE_COMMON(d, p);
    d.normalize = p->normalize;
    d.has_decay = p->decay != NULL;
    if (p->decay)
        memcpy(d.decay, p->decay, (size_t)p->Hkv * sizeof(float));
    return lmk_decode_launch(&d, stream);
}
