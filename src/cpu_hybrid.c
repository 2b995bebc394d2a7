/*
 * cpu_hybrid.c - hybrid attention (docs/DESIGN.md §9) on the CPU: prefill and
 * decode step (a decode step is a prefill of one token), one OpenMP task per
 * (batch row, query head), fp32 throughout.
 *
 * Per chunk of n <= C queries at positions t0 .. t0+n-1, a buffer holds the
 * raw keys and values of positions [t0 - W, t0 + n): row r is position
 * t0 - W + r. For query t = t0 + i:
 *   - window: rows i+1 .. i+W (positions (t - W, t]) and the sinks j < s
 *     below them (j <= t - W), softmax weights gamma exp(l - max);
 *   - evicted: S, z hold positions s .. t0-1-W; rows 0 .. i (positions
 *     t0 - W .. t - W, the keys delayed by W, sinks left out) add the
 *     intra-chunk term phi(q).phi(k), as linear mode's chunks do.
 * Both sums share one division. After the chunk, rows 0 .. n-1 fold into
 * S, z (lmi_cpu_absorb, Kahan compensated when asked) and the buffer moves on
 * by n rows. Rows of positions before the call come from the state's window
 * slots; at the end the last W rows and the sinks go back into them. Cost
 * O(L ((s + W + C) D + D^2)) per head; one pass over q, k, v.
 *
 * A decode step takes each row's position from its window (the largest
 * |window_pos|), a prefill the call's `position`.
 *
 * Query heads sharing a kv head each rebuild its state; the first of the group
 * writes the final state to scratch (its siblings may still read the input),
 * committed after all tasks, as cpu_attend.c does.
 */
#include "cpu_chunk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define C LMI_CPU_CHUNK

typedef struct htask {
    lmi_cpu_task t;    /* linear part: t.q = phi(q), t.k = phi(delayed keys), t.S, t.z */
    float *qr;         /* raw query rows [C][Dk] */
    float *wk, *wv;    /* raw keys / values of positions [t0 - W, t0 + n): [W + C][Dk | Dv] */
    uint8_t *wp;       /* 1 where that row holds a key (0: before 0, masked, empty slot) */
    float *sk, *sv;    /* sink keys / values [s][Dk | Dv] */
    uint8_t *sp;       /* sinks present */
    float *lg;         /* logits of one query [s + W] */
    float *num;        /* numerator of one query [Dv] */
    int64_t P0;        /* position of the call's first token */
} htask;

/* Per (batch row, kv head) state: S [Dk][Dv], z [Dk], then s + W slots. */
static int64_t slots(const lmi_core_params *p)
{
    return p->sinks + p->window;
}

/* 4-byte words of one head's state in scratch: floats, then int32 positions. */
static int64_t head_words(const lmi_core_params *p)
{
    return p->Dk * p->Dv + p->Dk + slots(p) * (p->Dk + p->Dv + 1);
}

/* The tokens row b has seen: the largest |position + 1| in its window. */
static int64_t row_position(const lmi_core_params *p, int64_t b)
{
    const int32_t *pos = p->win_pos + b * p->Hkv * slots(p);
    int64_t n = 0;
    for (int64_t i = 0; i < slots(p); i++) {
        const int64_t x = pos[i] < 0 ? -(int64_t)pos[i] : pos[i];
        n = x > n ? x : n;
    }
    return n;
}

/* The state's window slot `slot` of (b, hk) into row dst of keys / values. */
static void load_slot(const lmi_core_params *p, int64_t b, int64_t hk, int64_t slot, float *k,
                      float *v, uint8_t *present)
{
    const int64_t i = (b * p->Hkv + hk) * slots(p) + slot;
    *present = p->win_pos[i] > 0;
    memcpy(k, p->win_k + i * p->Dk, (size_t)p->Dk * sizeof(float));
    memcpy(v, p->win_v + i * p->Dv, (size_t)p->Dv * sizeof(float));
}

/* Row r of the buffer := position pos, which is before the call (pos < P0). */
static void load_old(htask *h, const lmi_core_params *p, int64_t b, int64_t hk, int64_t r,
                     int64_t pos)
{
    float *k = h->wk + r * p->Dk, *v = h->wv + r * p->Dv;
    if (pos < 0 || !p->state) {
        memset(k, 0, (size_t)p->Dk * sizeof(float));
        memset(v, 0, (size_t)p->Dv * sizeof(float));
        h->wp[r] = 0;
        return;
    }
    const int64_t slot = pos < p->sinks ? pos : p->sinks + pos % p->window;
    load_slot(p, b, hk, slot, k, v, &h->wp[r]);
}

/* Rows [W, W + n) := call rows j0 .. j0+n-1 (positions P0 + j0 ..); masked
 * keys become empty rows, sink positions are also kept as sinks. */
static void load_new(htask *h, const lmi_core_params *p, int64_t b, int64_t hk, int64_t j0, int64_t n)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, W = p->window;
    lmi_chunk_load(h->wk + W * Dk, &p->k, b, j0, n, hk, Dk);
    lmi_chunk_load(h->wv + W * Dv, &p->v, b, j0, n, hk, Dv);
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = W + i, pos = h->P0 + j0 + i;
        h->wp[r] = !(p->mask && p->mask[b * p->mask_s[0] + (j0 + i) * p->mask_s[1]]);
        if (!h->wp[r]) {
            memset(h->wk + r * Dk, 0, (size_t)Dk * sizeof(float));
            memset(h->wv + r * Dv, 0, (size_t)Dv * sizeof(float));
        }
        if (pos < p->sinks) {
            memcpy(h->sk + pos * Dk, h->wk + r * Dk, (size_t)Dk * sizeof(float));
            memcpy(h->sv + pos * Dv, h->wv + r * Dv, (size_t)Dv * sizeof(float));
            h->sp[pos] = h->wp[r];
        }
    }
}

/* o_i for query row i of the chunk at t0: window softmax plus linear part. */
LMI_HOT static void query_out(htask *h, const lmi_core_params *p, int64_t i, int64_t t0,
                              float gamma, float *o)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, W = p->window, t = t0 + i;
    const float *fq = h->t.q + i * Dk, *q = h->qr + i * Dk;
    /* Linear: phi(q) S + the delayed rows 0..i. */
    float *num = h->num;
    memset(num, 0, (size_t)Dv * sizeof(float));
    for (int64_t d = 0; d < Dk; d++)
        lmi_axpy(num, fq[d], h->t.S + d * Dv, Dv);
    float den = lmi_dot(fq, h->t.z, Dk);
    for (int64_t r = 0; r <= i; r++) {
        const float w = lmi_dot(fq, h->t.k + r * Dk, Dk);
        lmi_axpy(num, w, h->wv + r * Dv, Dv);
        den += w;
    }
    /* Window: sinks j < min(s, t - W + 1), then rows i+1 .. i+W. */
    const int64_t ns = p->sinks < t - W + 1 ? p->sinks : (t - W + 1 > 0 ? t - W + 1 : 0);
    float m = -INFINITY;
    for (int64_t j = 0; j < ns; j++)
        if (h->sp[j]) {
            h->lg[j] = p->scale * lmi_dot(q, h->sk + j * Dk, Dk);
            m = h->lg[j] > m ? h->lg[j] : m;
        }
    for (int64_t r = i + 1; r <= i + W; r++)
        if (h->wp[r]) {
            float *l = &h->lg[ns + r - i - 1];
            *l = p->scale * lmi_dot(q, h->wk + r * Dk, Dk);
            m = *l > m ? *l : m;
        }
    if (m > -INFINITY) {
        for (int64_t j = 0; j < ns; j++)
            if (h->sp[j]) {
                const float a = gamma * expf(h->lg[j] - m);
                lmi_axpy(num, a, h->sv + j * Dv, Dv);
                den += a;
            }
        for (int64_t r = i + 1; r <= i + W; r++)
            if (h->wp[r]) {
                const float a = gamma * expf(h->lg[ns + r - i - 1] - m);
                lmi_axpy(num, a, h->wv + r * Dv, Dv);
                den += a;
            }
    }
    const float inv = 1.0f / (den + p->eps);
    for (int64_t e = 0; e < Dv; e++)
        o[e] = num[e] * inv;
}

/* What window_pos records for position pos: pos + 1, negated when masked. */
static int32_t pos_code(int64_t pos, int present)
{
    return (int32_t)(present ? pos + 1 : -(pos + 1));
}

/* The final state of (b, hk) into so (head_words): S, z, sinks, the ring
 * from the buffer's last W rows (positions [P_end - W, P_end)). */
static void store_state(const htask *h, const lmi_core_params *p, int64_t row0, float *so)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, W = p->window, s = p->sinks, ns = s + W;
    const int64_t end = h->P0 + p->L;
    float *S = so, *z = S + Dk * Dv, *k = z + Dk, *v = k + ns * Dk;
    int32_t *pos = (int32_t *)(v + ns * Dv);
    memcpy(S, h->t.S, (size_t)(Dk * Dv) * sizeof(float));
    memcpy(z, h->t.z, (size_t)Dk * sizeof(float));
    memcpy(k, h->sk, (size_t)(s * Dk) * sizeof(float));
    memcpy(v, h->sv, (size_t)(s * Dv) * sizeof(float));
    for (int64_t j = 0; j < s; j++)
        pos[j] = j < end ? pos_code(j, h->sp[j]) : 0;
    for (int64_t r = row0; r < row0 + W; r++) {
        const int64_t at = end - W + (r - row0), slot = s + (at % W + W) % W;
        const int ring = at >= s; /* positions below s live in the sink slots */
        memcpy(k + slot * Dk, h->wk + r * Dk, (size_t)Dk * sizeof(float));
        memcpy(v + slot * Dv, h->wv + r * Dv, (size_t)Dv * sizeof(float));
        if (!ring) {
            memset(k + slot * Dk, 0, (size_t)Dk * sizeof(float));
            memset(v + slot * Dv, 0, (size_t)Dv * sizeof(float));
        }
        pos[slot] = ring ? pos_code(at, h->wp[r]) : 0;
    }
}

static void run_task(htask *h, const lmi_core_params *p, int decode, int64_t b, int64_t hq,
                     float *state_out)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, W = p->window, G = p->Hq / p->Hkv, hk = hq / G;
    const int64_t P0 = h->P0 = decode ? row_position(p, b) : p->position;
    const float gamma = lmi_gate_gamma(p, hq);
    lmi_cpu_task *t = &h->t;
    lmi_cpu_task_start(t, p, b, hk);
    for (int64_t j = 0; j < p->sinks; j++) {
        if (p->state && j < P0)
            load_slot(p, b, hk, j, h->sk + j * Dk, h->sv + j * Dv, &h->sp[j]);
        else
            h->sp[j] = 0;
    }
    for (int64_t r = 0; r < W; r++)
        load_old(h, p, b, hk, r, P0 - W + r);

    int64_t n = 0; /* rows the last chunk added */
    for (int64_t j0 = 0; j0 < p->L; j0 += n) {
        if (j0 > 0) { /* rows [n, n + W) are positions [t0 - W, t0) of this chunk */
            memmove(h->wk, h->wk + n * Dk, (size_t)(W * Dk) * sizeof(float));
            memmove(h->wv, h->wv + n * Dv, (size_t)(W * Dv) * sizeof(float));
            memmove(h->wp, h->wp + n, (size_t)W);
        }
        n = p->L - j0 < C ? p->L - j0 : C;
        const int64_t t0 = P0 + j0;
        load_new(h, p, b, hk, j0, n);
        lmi_chunk_load(h->qr, &p->q, b, j0, n, hq, Dk);
        memcpy(t->q, h->qr, (size_t)(n * Dk) * sizeof(float));
        lmi_phi(t->q, NULL, n * Dk, p->feature_map);
        /* Delayed keys: rows 0..n-1, phi applied, sinks and empty rows zero. */
        for (int64_t r = 0; r < n; r++) {
            float *fk = t->k + r * Dk;
            if (h->wp[r] && t0 - W + r >= p->sinks) {
                memcpy(fk, h->wk + r * Dk, (size_t)Dk * sizeof(float));
                lmi_phi(fk, NULL, Dk, p->feature_map);
            } else {
                memset(fk, 0, (size_t)Dk * sizeof(float));
            }
        }
        for (int64_t i = 0; i < n; i++)
            query_out(h, p, i, t0, gamma, t->o + i * Dv);
        lmi_chunk_store(&p->out, t->o, b, j0, n, hq, Dv);
        t->v = h->wv; /* the delayed rows' values */
        lmi_cpu_absorb(t, p, n, 0);
    }
    if (state_out && hq % G == 0)
        store_state(h, p, n, state_out + (b * p->Hkv + hk) * head_words(p));
}

/* Buffers of a task beside lmi_cpu_task's; returns the allocation or NULL. */
static void *htask_alloc(htask *h, const lmi_core_params *p)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, W = p->window, s = p->sinks;
    const int64_t floats = C * Dk + (W + C) * (Dk + Dv) + s * (Dk + Dv) + s + W + Dv;
    char *m = malloc((size_t)floats * sizeof(float) + (size_t)(W + C + s));
    if (!m)
        return NULL;
    float *f = (float *)m;
    h->qr = f, f += C * Dk;
    h->wk = f, f += (W + C) * Dk;
    h->wv = f, f += (W + C) * Dv;
    h->sk = f, f += s * Dk;
    h->sv = f, f += s * Dv;
    h->lg = f, f += s + W;
    h->num = f, f += Dv;
    h->wp = (uint8_t *)f;
    h->sp = h->wp + W + C;
    return m;
}

/* Commits the scratch state of every (b, hk) into the caller's buffers. */
static void commit(const lmi_core_params *p, const float *so)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, ns = slots(p), per = head_words(p);
    for (int64_t i = 0; i < p->B * p->Hkv; i++, so += per) {
        const float *z = so + Dk * Dv, *k = z + Dk, *v = k + ns * Dk;
        memcpy(p->state + i * Dk * Dv, so, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(p->normalizer + i * Dk, z, (size_t)Dk * sizeof(float));
        memcpy(p->win_k + i * ns * Dk, k, (size_t)(ns * Dk) * sizeof(float));
        memcpy(p->win_v + i * ns * Dv, v, (size_t)(ns * Dv) * sizeof(float));
        memcpy(p->win_pos + i * ns, v + ns * Dv, (size_t)ns * sizeof(int32_t));
    }
}

lm_status lmi_cpu_hybrid(const lmi_core_params *p, int decode)
{
    const int64_t ntask = p->B * p->Hq;
    float *state_out = NULL;
    if (p->state) {
        state_out = malloc((size_t)(p->B * p->Hkv * head_words(p)) * sizeof(float));
        if (!state_out)
            return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for the hybrid state");
    }
    /* Small calls (decode steps) are not worth waking a thread team for. */
    const int64_t work = ntask * p->L * (slots(p) + C + p->Dk) * (p->Dk + p->Dv);
    const int team = ntask > 1 && work > (1 << 20) ? (int)lmi_cpu_threads(p->num_threads) : 1;
    int failed = 0;
#pragma omp parallel num_threads(team) reduction(| : failed)
    {
        htask h;
        float *mem = malloc((size_t)lmi_cpu_task_floats(p, p->compensated) * sizeof(float));
        if (mem)
            lmi_cpu_task_carve(&h.t, p, p->compensated, mem);
        void *hmem = mem ? htask_alloc(&h, p) : NULL;
        if (!hmem)
            failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < ntask; i++)
            if (hmem)
                run_task(&h, p, decode, i / p->Hq, i % p->Hq, state_out);
        free(hmem);
        free(mem);
    }
    if (failed) {
        free(state_out);
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for hybrid chunk buffers");
    }
    if (state_out) {
        commit(p, state_out);
        free(state_out);
    }
    return LM_OK;
}
