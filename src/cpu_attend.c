/*
 * cpu_attend.c - the attention core on the CPU: chunked-parallel linear
 * attention, one OpenMP task per (batch row, query head), fp32 throughout.
 *
 * Causal, per chunk of C tokens starting at t0 (i, j local, p = decay):
 *   A[i][j] = phi(q_i).phi(k_j) p^(i-j)  for j <= i        (intra-chunk)
 *   num_i   = p^(i+1) phi(q_i) S + sum_j A[i][j] v_j        (inter + intra)
 *   den_i   = p^(i+1) phi(q_i).z + sum_j A[i][j]
 *   S      <- p^n S + sum_j p^(n-1-j) phi(k_j) v_j^T,  z likewise
 * so the cost is O(L C (Dk + Dv) + L Dk Dv), never O(L^2). With a key
 * padding mask the exponents count unmasked keys only (a masked key is no
 * step of the recurrence: cnt of lmi_chunk_counts), so p^(i-j) is
 * p^(cnt[i+1] - cnt[j+1]). Bidirectional first folds every key into S, z,
 * then reads them out for every query.
 *
 * Tasks of the query heads that share a kv head each rebuild that head's
 * state (cheap next to the readout) so that batch x query heads all run in
 * parallel; the first head of each group writes the final state, into a
 * scratch copy first, because its siblings may still be reading the input.
 */
#include "cpu_chunk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define C LMI_CPU_CHUNK

typedef lmi_cpu_task task;

/* Loads a chunk of keys and values; masked keys become zero rows. */
static void load_kv(task *t, const lmi_core_params *p, int64_t b, int64_t hk, int64_t t0,
                    int64_t n)
{
    lmi_chunk_load(t->k, &p->k, b, t0, n, hk, p->Dk);
    lmi_chunk_load(t->v, &p->v, b, t0, n, hk, p->Dv);
    lmi_phi(t->k, NULL, n * p->Dk, p->feature_map);
    lmi_chunk_counts(t->cnt, p, b, t0, n);
    if (!p->mask)
        return;
    for (int64_t j = 0; j < n; j++) {
        if (p->mask[b * p->mask_s[0] + (t0 + j) * p->mask_s[1]]) {
            memset(t->k + j * p->Dk, 0, (size_t)p->Dk * sizeof(float));
            memset(t->v + j * p->Dv, 0, (size_t)p->Dv * sizeof(float));
        }
    }
}

/* S <- p^n S + sum_j p^(n-1-j) k_j v_j^T over the chunk's n keys; z likewise
 * (exponents counted over unmasked keys). */
LMI_HOT static void absorb(task *t, const lmi_core_params *p, int64_t n, int decayed)
{
    const int64_t Dk = p->Dk, Dv = p->Dv;
    float *S = t->S, *z = t->z;
    if (p->compensated) {
        S = t->dS;
        z = t->dz;
        memset(S, 0, (size_t)(Dk * Dv) * sizeof(float));
        memset(z, 0, (size_t)Dk * sizeof(float));
    } else if (decayed) {
        lmi_scale(S, t->pw[t->cnt[n]], Dk * Dv);
        lmi_scale(z, t->pw[t->cnt[n]], Dk);
    }
    for (int64_t d = 0; d < Dk; d++) {
        float *row = S + d * Dv;
        float zs = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            float kw = t->k[j * Dk + d] * (decayed ? t->pw[t->cnt[n] - t->cnt[j + 1]] : 1.0f);
            lmi_axpy(row, kw, t->v + j * Dv, Dv);
            zs += kw;
        }
        z[d] += zs;
    }
    if (!p->compensated)
        return;
    /* Kahan: S += dS with the rounding error carried in cS. */
    const float g = decayed ? t->pw[t->cnt[n]] : 1.0f;
    const int64_t m = Dk * Dv;
    for (int64_t i = 0; i < m + Dk; i++) {
        float *s = i < m ? &t->S[i] : &t->z[i - m];
        float *c = i < m ? &t->cS[i] : &t->cz[i - m];
        float inc = i < m ? t->dS[i] : t->dz[i - m];
        float base = *s * g;
        float y = inc - *c * g;
        float sum = base + y;
        *c = (sum - base) - y;
        *s = sum;
    }
}

/* Output rows of a query chunk of n rows: o = phi(q) S (+ intra), normalised. */
LMI_HOT static void readout(task *t, const lmi_core_params *p, int64_t n, int causal, int decayed)
{
    const int64_t Dk = p->Dk, Dv = p->Dv;
    for (int64_t i = 0; i < n; i++) {
        const float *qi = t->q + i * Dk;
        float *oi = t->o + i * Dv;
        memset(oi, 0, (size_t)Dv * sizeof(float));
        for (int64_t d = 0; d < Dk; d++)
            lmi_axpy(oi, qi[d], t->S + d * Dv, Dv);
        float den = lmi_dot(qi, t->z, Dk);
        if (decayed) {
            lmi_scale(oi, t->pw[t->cnt[i + 1]], Dv);
            den *= t->pw[t->cnt[i + 1]];
        }
        if (causal) {
            float *ai = t->a + i * C;
            for (int64_t j = 0; j <= i; j++)
                ai[j] = lmi_dot(qi, t->k + j * Dk, Dk) *
                        (decayed ? t->pw[t->cnt[i + 1] - t->cnt[j + 1]] : 1.0f);
            for (int64_t j = 0; j <= i; j++) {
                lmi_axpy(oi, ai[j], t->v + j * Dv, Dv);
                den += ai[j];
            }
        }
        if (p->normalize)
            lmi_scale(oi, 1.0f / (den + p->eps), Dv);
        else
            lmi_scale(oi, p->scale, Dv);
    }
}

static void run_task(task *t, const lmi_core_params *p, int64_t b, int64_t h, float *state_out)
{
    const int64_t Dk = p->Dk, Dv = p->Dv, G = p->Hq / p->Hkv, hk = h / G;
    const float g = p->decay ? p->decay[hk] : 1.0f;
    const int decayed = g != 1.0f;
    t->pw[0] = 1.0f;
    for (int i = 1; i <= C; i++)
        t->pw[i] = t->pw[i - 1] * g;

    lmi_cpu_task_start(t, p, b, hk);

    if (p->causal) {
        /* L == Lk, or L == 0: keys only, the state advanced without outputs
         * (the module backward's checkpoints). */
        for (int64_t t0 = 0; t0 < p->Lk; t0 += C) {
            int64_t n = p->Lk - t0 < C ? p->Lk - t0 : C;
            load_kv(t, p, b, hk, t0, n);
            if (p->L) {
                lmi_chunk_load(t->q, &p->q, b, t0, n, h, Dk);
                lmi_phi(t->q, NULL, n * Dk, p->feature_map);
                readout(t, p, n, 1, decayed);
                lmi_chunk_store(&p->out, t->o, b, t0, n, h, p->Dv);
            }
            absorb(t, p, n, decayed);
        }
    } else {
        for (int64_t t0 = 0; t0 < p->Lk; t0 += C) {
            int64_t n = p->Lk - t0 < C ? p->Lk - t0 : C;
            load_kv(t, p, b, hk, t0, n);
            absorb(t, p, n, 0);
        }
        for (int64_t t0 = 0; t0 < p->L; t0 += C) {
            int64_t n = p->L - t0 < C ? p->L - t0 : C;
            lmi_chunk_load(t->q, &p->q, b, t0, n, h, Dk);
            lmi_phi(t->q, NULL, n * Dk, p->feature_map);
            readout(t, p, n, 0, 0);
            lmi_chunk_store(&p->out, t->o, b, t0, n, h, p->Dv);
        }
    }

    if (state_out && h % G == 0) {
        float *so = state_out + (b * p->Hkv + hk) * (Dk * Dv + Dk);
        memcpy(so, t->S, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(so + Dk * Dv, t->z, (size_t)Dk * sizeof(float));
    }
}

/* Not a target clone itself: the clones' ifunc would be exported from the
 * library (GCC gives it default visibility). */
void lmi_cpu_absorb(task *t, const lmi_core_params *p, int64_t n, int decayed)
{
    absorb(t, p, n, decayed);
}

void lmi_cpu_task_start(task *t, const lmi_core_params *p, int64_t b, int64_t hk)
{
    const int64_t Dk = p->Dk, Dv = p->Dv;
    if (p->state && !p->fresh) {
        memcpy(t->S, p->state + (b * p->Hkv + hk) * Dk * Dv, (size_t)(Dk * Dv) * sizeof(float));
        memcpy(t->z, p->normalizer + (b * p->Hkv + hk) * Dk, (size_t)Dk * sizeof(float));
    } else {
        memset(t->S, 0, (size_t)(Dk * Dv) * sizeof(float));
        memset(t->z, 0, (size_t)Dk * sizeof(float));
    }
    if (p->compensated) {
        memset(t->cS, 0, (size_t)(Dk * Dv) * sizeof(float));
        memset(t->cz, 0, (size_t)Dk * sizeof(float));
    }
}

int64_t lmi_cpu_task_floats(const lmi_core_params *p, int compensated)
{
    const int64_t Dk = p->Dk, Dv = p->Dv;
    int64_t n = C * (2 * Dk + 2 * Dv) + C * C + Dk * Dv + Dk;
    return compensated ? n + 2 * (Dk * Dv + Dk) : n;
}

void lmi_cpu_task_carve(task *t, const lmi_core_params *p, int compensated, float *c)
{
    const int64_t Dk = p->Dk, Dv = p->Dv;
    t->q = c, c += C * Dk;
    t->k = c, c += C * Dk;
    t->v = c, c += C * Dv;
    t->o = c, c += C * Dv;
    t->a = c, c += C * C;
    t->S = c, c += Dk * Dv;
    t->z = c, c += Dk;
    t->cS = t->cz = t->dS = t->dz = NULL;
    if (compensated) {
        t->cS = c, c += Dk * Dv;
        t->cz = c, c += Dk;
        t->dS = c, c += Dk * Dv;
        t->dz = c;
    }
}

/* The work of lmi_cpu_attend_many: its calls (same head dims), their tasks
 * (batch row x query head of each) numbered one after the other, and the
 * scratch: where each call's tasks and final state start, the final states,
 * then one task buffer per thread. */
typedef struct plan {
    const lmi_core_params *ps;
    int64_t n, ntask, per_task, threads, work, states;
    int compensated;
    size_t bytes;
} plan;

static plan plan_of(const lmi_core_params *ps, int64_t n)
{
    plan pl = { .ps = ps, .n = n };
    for (int64_t i = 0; i < n; i++) {
        const lmi_core_params *p = &ps[i];
        pl.ntask += p->B * p->Hq;
        pl.work += p->B * p->Hq * (p->L + p->Lk) * p->Dk * p->Dv;
        pl.compensated |= p->compensated;
        if (p->state)
            pl.states += p->B * p->Hkv * (p->Dk * p->Dv + p->Dk);
    }
    pl.threads = lmi_cpu_threads(ps[0].num_threads);
    pl.per_task = lmi_cpu_task_floats(&ps[0], pl.compensated);
    pl.bytes = (size_t)(2 * n + 1) * sizeof(int64_t) +
               (size_t)(pl.states + pl.threads * pl.per_task) * sizeof(float);
    return pl;
}

size_t lmi_cpu_attend_ws(const lmi_core_params *ps, int64_t n)
{
    return n ? plan_of(ps, n).bytes : 0;
}

/* The call and (b, h) of task x: the calls' tasks follow one another. */
static const lmi_core_params *task_of(const plan *pl, const int64_t *first, int64_t x, int64_t *b,
                                      int64_t *h)
{
    int64_t lo = 0, hi = pl->n - 1;
    while (lo < hi) { /* the last call whose first task is <= x */
        const int64_t mid = (lo + hi + 1) / 2;
        if (first[mid] <= x)
            lo = mid;
        else
            hi = mid - 1;
    }
    const lmi_core_params *p = &pl->ps[lo];
    *b = (x - first[lo]) / p->Hq;
    *h = (x - first[lo]) % p->Hq;
    return p;
}

lm_status lmi_cpu_attend_many(const lmi_core_params *ps, int64_t n, void *ws, size_t ws_bytes)
{
    if (n == 0)
        return LM_OK;
    const plan pl = plan_of(ps, n);
    if (ws && ws_bytes < pl.bytes)
        return lmi_ws_short(ws_bytes, pl.bytes, NULL);
    void *mem = ws ? ws : malloc(pl.bytes);
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for the attention's scratch (%zu bytes)",
                         pl.bytes);
    int64_t *first = mem, *soff = first + n + 1;
    float *states = (float *)(soff + n), *bufs = states + pl.states;
    first[0] = 0;
    for (int64_t i = 0, off = 0; i < n; i++) {
        first[i + 1] = first[i] + ps[i].B * ps[i].Hq;
        soff[i] = off;
        off += ps[i].state ? ps[i].B * ps[i].Hkv * (ps[i].Dk * ps[i].Dv + ps[i].Dk) : 0;
    }
    /* Small calls (decode steps) are not worth waking a thread team for. */
    const int team = pl.ntask > 1 && pl.work > (1 << 20) ? (int)pl.threads : 1;
#pragma omp parallel num_threads(team)
    {
        task t;
        lmi_cpu_task_carve(&t, &ps[0], pl.compensated, bufs + (int64_t)omp_get_thread_num() * pl.per_task);
#pragma omp for schedule(dynamic, 1)
        for (int64_t x = 0; x < pl.ntask; x++) {
            int64_t b, h;
            const lmi_core_params *p = task_of(&pl, first, x, &b, &h);
            /* Final states go to scratch first: the sibling heads of a kv
             * head may still be reading the initial state. */
            run_task(&t, p, b, h, p->state ? states + soff[p - ps] : NULL);
        }
    }
    float *so = states;
    for (int64_t i = 0; i < n; i++) {
        const lmi_core_params *p = &ps[i];
        for (int64_t r = 0; p->state && r < p->B * p->Hkv; r++, so += p->Dk * p->Dv + p->Dk) {
            memcpy(p->state + r * p->Dk * p->Dv, so, (size_t)(p->Dk * p->Dv) * sizeof(float));
            memcpy(p->normalizer + r * p->Dk, so + p->Dk * p->Dv, (size_t)p->Dk * sizeof(float));
        }
    }
    if (!ws)
        free(mem);
    return LM_OK;
}

lm_status lmi_cpu_attend(const lmi_core_params *p)
{
    return lmi_cpu_attend_many(p, 1, p->ws, p->ws_bytes);
}
