/*
 * cpu_module.c - the module on the CPU: q/k/v/out projections through
 * OpenBLAS sgemm around the attention core (cpu_attend.c), streamed through
 * the sequence in slabs so that extra memory is O(slab), not O(L).
 * Causal: project, attend, out-project one slab at a time, the state carried
 * between slabs. Bidirectional: fold every key slab into the state first,
 * then read it out for every query slab.
 */
#include "cpu_rows.h"
#include "dtype.h"

#include <stdlib.h>
#include <string.h>

typedef struct slab_bufs {
    float *x, *qkv, *o, *y; /* inputs, projections, attention output, module output */
    int64_t ld;             /* row stride of qkv */
} slab_bufs;

static lm_status forward(lm_attn *a, const lmi_forward *f, void *stream)
{
    (void)stream;
    const int64_t B = f->B, E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t conv = lmi_cpu_conversion_floats(a);
    const int64_t wmax = lmi_cpu_max_width(a);
    const int64_t ld = Dq + 2 * Dkv;
    const int64_t per_row = wmax + ld + Dq + E;
    const int64_t n = lmi_cpu_slab_tokens(B, per_row, f->Lq > f->Lk ? f->Lq : f->Lk);

    slab_bufs s = { .ld = ld };
    float *mem = lmi_cpu_scratch(a, (size_t)(conv + B * n * per_row));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a slab of %lld tokens",
                         (long long)n);
    lmi_cpu_weights cw;
    lmi_cpu_weights_get(a, &cw, mem);
    const int fused = cw.packed && lmi_cpu_same_tensor(f->query, f->key) && lmi_cpu_same_tensor(f->key, f->value);
    s.x = mem + conv, s.qkv = s.x + B * n * wmax, s.o = s.qkv + B * n * ld, s.y = s.o + B * n * Dq;
    lm_status st = LM_OK;

    lmi_core_params p;
    lmi_cpu_core_params(a, f, &p);
    for (int pass = f->causal ? 1 : 0; pass < 2 && st == LM_OK; pass++) {
        /* pass 0 (bidirectional): keys into the state; pass 1: queries out. */
        const int64_t L = pass == 0 ? f->Lk : f->Lq;
        for (int64_t t0 = 0; t0 < L && st == LM_OK; t0 += n) {
            const int64_t m = L - t0 < n ? L - t0 : n, R = B * m;
            p.causal = f->causal;
            p.L = pass == 1 ? m : 0;
            p.Lk = (pass == 0 || f->causal) ? m : 0;
            if (pass == 1 && f->causal && fused) {
                lmi_cpu_gather(s.x, f->query, B, t0, m);
                lmi_cpu_project(s.qkv, ld, s.x, R, E, cw.wq, ld, cw.bq);
            } else {
                if (pass == 1) {
                    lmi_cpu_gather(s.x, f->query, B, t0, m);
                    lmi_cpu_project(s.qkv, ld, s.x, R, E, cw.wq, Dq, cw.bq);
                }
                if (p.Lk) {
                    lmi_cpu_gather(s.x, f->key, B, t0, m);
                    lmi_cpu_project(s.qkv + Dq, ld, s.x, R, a->kdim, cw.wk, Dkv, cw.bk);
                    lmi_cpu_gather(s.x, f->value, B, t0, m);
                    lmi_cpu_project(s.qkv + Dq + Dkv, ld, s.x, R, a->vdim, cw.wv, Dkv, cw.bv);
                }
            }
            p.q = lmi_cpu_rows_view(s.qkv, m, ld, 0, D);
            p.k = lmi_cpu_rows_view(s.qkv, m, ld, Dq, D);
            p.v = lmi_cpu_rows_view(s.qkv, m, ld, Dq + Dkv, D);
            p.out = lmi_cpu_rows_view(s.o, m, Dq, 0, D);
            lmi_cpu_slab_mask(&p, p.Lk ? f->key_padding_mask : NULL, t0);
            p.position = f->position + t0; /* hybrid: where the slab starts */
            st = lmi_cpu_core_run(&p, 0);
            if (st == LM_OK && pass == 1) {
                lmi_cpu_project(s.y, E, s.o, R, Dq, cw.wo, E, cw.bo);
                lmi_cpu_scatter(f->out, s.y, B, t0, m, 0);
            }
        }
    }
    return st;
}

static lm_status step(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream)
{
    (void)stream;
    const int64_t B = x->shape[0], E = a->E, D = a->D, Dq = a->Hq * D, Dkv = a->Hkv * D;
    const int64_t ld = Dq + 2 * Dkv;
    const int64_t conv = lmi_cpu_conversion_floats(a);
    float *mem = lmi_cpu_scratch(a, (size_t)(conv + B * (E + ld + Dq + E)));
    if (!mem)
        return lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: no memory for a decode step");
    lmi_cpu_weights cw;
    lmi_cpu_weights_get(a, &cw, mem);
    float *xs = mem + conv, *qkv = xs + B * E, *o = qkv + B * ld, *y = o + B * Dq;
    for (int64_t b = 0; b < B; b++)
        lmi_load_row(xs + b * E, lmi_elem(x->data, x->dtype, b * x->stride[0]), x->dtype, E,
                     x->stride[1]);
    if (cw.packed) {
        lmi_cpu_project(qkv, ld, xs, B, E, cw.wq, ld, cw.bq);
    } else {
        lmi_cpu_project(qkv, ld, xs, B, E, cw.wq, Dq, cw.bq);
        lmi_cpu_project(qkv + Dq, ld, xs, B, E, cw.wk, Dkv, cw.bk);
        lmi_cpu_project(qkv + Dq + Dkv, ld, xs, B, E, cw.wv, Dkv, cw.bv);
    }
    lmi_forward f = { .B = B, .state = a->state, .position = a->position };
    lmi_core_params p;
    lmi_cpu_core_params(a, &f, &p);
    p.L = p.Lk = 1;
    p.causal = 1;
    p.q = lmi_cpu_rows_view(qkv, 1, ld, 0, D);
    p.k = lmi_cpu_rows_view(qkv, 1, ld, Dq, D);
    p.v = lmi_cpu_rows_view(qkv, 1, ld, Dq + Dkv, D);
    p.out = lmi_cpu_rows_view(o, 1, Dq, 0, D);
    lm_status st = lmi_cpu_core_run(&p, 1);
    if (st == LM_OK) {
        lmi_cpu_project(y, E, o, B, Dq, cw.wo, E, cw.bo);
        for (int64_t b = 0; b < B; b++)
            lmi_store_row(lmi_elem(out->data, out->dtype, b * out->stride[0]), out->dtype,
                          y + b * E, E, out->stride[1]);
    }
    return st;
}

/* ---- the rest of the backend table: host memory ---- */

static lm_status cpu_init(lm_attn *a)
{
    a->be_ctx = calloc(1, sizeof(lmi_cpu_ctx));
    return a->be_ctx ? LM_OK : lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: cannot allocate a context");
}

static void cpu_fini(lm_attn *a)
{
    lmi_cpu_ctx *c = a->be_ctx;
    if (c)
        free(c->buf);
    free(c);
}

static lm_status cpu_alloc(lm_attn *a, size_t bytes, void **ptr)
{
    (void)a;
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? LM_OK : lmi_error(LM_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes", bytes);
}

static void cpu_free(lm_attn *a, void *ptr)
{
    (void)a;
    free(ptr);
}

static lm_status cpu_copy(lm_attn *a, void *dst, const void *src, size_t bytes, int dir)
{
    (void)a, (void)dir;
    memmove(dst, src, bytes);
    return LM_OK;
}

static lm_status cpu_zero(lm_attn *a, void *ptr, size_t bytes)
{
    (void)a;
    memset(ptr, 0, bytes);
    return LM_OK;
}

static lm_status cpu_zero_async(void *ptr, size_t bytes, void *stream)
{
    (void)stream;
    memset(ptr, 0, bytes);
    return LM_OK;
}

static lm_status cpu_core(const lmi_core_params *p, void *stream)
{
    (void)stream;
    return lmi_cpu_attend(p);
}

static lm_status cpu_core_ws(const lmi_core_params *p, size_t *bytes)
{
    *bytes = lmi_cpu_attend_ws(p, 1);
    return LM_OK;
}

static lm_status cpu_hybrid_prefill(const lmi_core_params *p, void *stream)
{
    (void)stream;
    return lmi_cpu_hybrid(p, 0);
}

static lm_status cpu_hybrid_decode(const lmi_core_params *p, void *stream)
{
    (void)stream;
    return lmi_cpu_hybrid(p, 1);
}

const lmi_backend lmi_cpu_backend = {
    .name = "cpu",
    .init = cpu_init,
    .fini = cpu_fini,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .forward = forward,
    .step = step,
    .prefill = cpu_core,
    .prefill_ws = cpu_core_ws,
    .decode = cpu_core,
    .backward = lmi_cpu_backward,
    .attn_backward = lmi_cpu_attn_backward,
    .pool = &lmi_cpu_pool,
    .hybrid_prefill = cpu_hybrid_prefill,
    .hybrid_decode = cpu_hybrid_decode,
    .zero_async = cpu_zero_async, /* no .capturing: nothing on the CPU is captured */
};
