/*
 * pool_seq.h - one sequence of a checked varlen prefill (lmi_varlen) as the
 * core's parameters, for pool.c and both backends' pools; inline because
 * the CUDA backend links to no symbol of the core.
 */
#ifndef LM_POOL_SEQ_H
#define LM_POOL_SEQ_H

#include "lm_impl.h"

#include <string.h>

/* Whether sequence i starts empty: no slot, or LM_SEQ_FRESH. */
static inline int lmi_pool_seq_fresh(const lmi_varlen *v, int64_t i)
{
    return v->slot[i] < 0 || (v->flags && (v->flags[i] & LM_SEQ_FRESH));
}

/* The hybrid fields of core parameters p (B = 1) for slot `slot` (-1: no
 * state) of a hybrid pool, the call starting at `position`: the slot's window
 * buffers, the pool's W, s, gate and gate form; decay off (the pool refuses it); not
 * `fresh`: the caller empties a fresh slot (all five parts) first, so the
 * hybrid core runs exactly as lm_linear_attn_prefill with fresh_state. */
static inline void lmi_pool_hybrid_params(const lm_pool *pool, int64_t slot, int64_t position,
                                          lmi_core_params *p)
{
    p->hybrid = 1;
    p->fresh = 0; /* a fresh slot is emptied by the caller first, as the core's fresh_state does */
    p->window = pool->W, p->sinks = pool->s;
    p->gate = pool->gate;
    p->gate_form = (int)pool->cfg.window_gate_form;
    p->decay = NULL;
    p->position = slot >= 0 ? position : 0;
    p->win_k = slot >= 0 ? (float *)lmi_pool_part_at(pool, 2, slot) : NULL;
    p->win_v = slot >= 0 ? (float *)lmi_pool_part_at(pool, 3, slot) : NULL;
    p->win_pos = slot >= 0 ? (int32_t *)lmi_pool_part_at(pool, 4, slot) : NULL;
}

/* Sequence i as core parameters: B = 1 over its tokens of the packed views,
 * causal, the slot's state (written only when fresh), the pool's options,
 * precision decided on its own context; a hybrid pool's window
 * (lmi_pool_hybrid_params). */
static inline void lmi_pool_seq_params(const lm_pool *pool, const lmi_varlen *v, int64_t i, lmi_core_params *p)
{
    const int64_t t0 = v->cu[i], len = v->cu[i + 1] - t0, slot = v->slot[i];
    const int fresh = lmi_pool_seq_fresh(v, i);
    memset(p, 0, sizeof *p);
    p->B = 1, p->L = p->Lk = len, p->Hq = v->Hq, p->Hkv = pool->Hkv, p->Dk = pool->Dk, p->Dv = pool->Dv;
    const lmi_view *src[] = { &v->q, &v->k, &v->v, &v->out };
    lmi_view *dst[] = { &p->q, &p->k, &p->v, &p->out };
    for (int x = 0; x < 4; x++) {
        *dst[x] = *src[x];
        dst[x]->data = (char *)src[x]->data + t0 * src[x]->s[1] * (int64_t)lmi_dtype_bytes((lm_dtype)src[x]->dtype);
    }
    if (slot >= 0) {
        p->state = pool->cfg.state + slot * pool->S_stride;
        p->normalizer = pool->cfg.normalizer + slot * pool->z_stride;
        p->fresh = fresh;
    }
    p->decay = pool->decay;
    p->causal = 1;
    p->feature_map = pool->cfg.feature_map;
    p->normalize = pool->cfg.normalize;
    p->compensated = lmi_compensated(pool->cfg.precision, (fresh ? 0 : pool->pos[slot]) + len);
    p->exact = pool->cfg.precision == LM_PRECISION_ON;
    p->eps = pool->cfg.eps;
    p->scale = pool->scale;
    p->num_threads = pool->cfg.num_threads;
    if (pool->hybrid)
        lmi_pool_hybrid_params(pool, slot, fresh ? 0 : pool->pos[slot], p);
}

#endif /* LM_POOL_SEQ_H */
