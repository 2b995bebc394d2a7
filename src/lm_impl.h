/*
 * lm_impl.h - internal declarations shared by the host sources: the handle's
 * body, the parameter structs handed to backends, the backend table and the
 * cross-file helpers (prefix lmi_). Not installed.
 */
#ifndef LM_IMPL_H
#define LM_IMPL_H

#include "liquid_memory.h"
#include "lm_params.h"

#include <stdarg.h>
#include <stddef.h>

/* Chunk length of the chunked-parallel algorithm on the CPU. */
#define LMI_CPU_CHUNK 64
/* Sanity limits on sizes, so products of sizes never overflow int64. */
#define LMI_MAX_HEADS 4096
#define LMI_MAX_HEAD_DIM 4096
#define LMI_MAX_WIDTH (1 << 20)

/* ---- errors (error.c) ---- */

/* Records a printf-style message for lm_last_error and returns status. */
lm_status lmi_error(lm_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same with a va_list (the CUDA backend's messages come through it). */
lm_status lmi_verror(lm_status status, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* INVALID_ARG for a caller's workspace of `has` bytes where the call needs
 * `needs`; `query` names the size query to call, or NULL. Inline: the CUDA
 * backend links to no symbol of the core (it has an lmi_error of its own). */
static inline lm_status lmi_ws_short(size_t has, size_t needs, const char *query)
{
    return query ? lmi_error(LM_ERR_INVALID_ARG, "the workspace has %zu bytes, this call needs %zu (see %s)",
                             has, needs, query)
                 : lmi_error(LM_ERR_INVALID_ARG, "the workspace has %zu bytes, this call needs %zu", has,
                             needs);
}
/* Records a notice (e.g. evaluation mode) without failing. */
void lmi_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- sized public structs (sized.c) ---- */

/* Copies the caller's struct src (src->struct_size bytes) into dst, a full
 * struct of dst_size bytes: missing trailing fields become zero, dst's
 * struct_size becomes dst_size. INVALID_ARG (naming `type`) when struct_size
 * is 0 or below min_size, the size of the struct's first release. */
lm_status lmi_sized_in(void *dst, size_t dst_size, size_t min_size, const void *src,
                       const char *type);
/* Writes src (a full struct of src_size bytes) into the caller's dst, at most
 * dst->struct_size bytes; same checks. */
lm_status lmi_sized_out(void *dst, const void *src, size_t src_size, size_t min_size,
                        const char *type);
/* The size of a struct's first release: up to and including its field `last`. */
#define LMI_SIZE_UNTIL(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))
/* dst = the caller's *src of type T, whose first release ended at field `last`. */
#define LMI_SIZED_IN(dst, src, T, last) \
    lmi_sized_in((dst), sizeof(T), LMI_SIZE_UNTIL(T, last), (src), #T)
/* An initialiser's output: the library's defaults `src` copied into the
 * caller's struct of `size` bytes (zero past what the library knows),
 * struct_size = size; sizes below the first release are refused. */
lm_status lmi_sized_init(void *dst, size_t size, size_t min_size, const void *src, size_t src_size,
                         const char *type);
#define LMI_SIZED_INIT(dst, size, src, T, last) \
    lmi_sized_init((dst), (size), LMI_SIZE_UNTIL(T, last), (src), sizeof(T), #T)

/* ---- tensors (tensor.c) ---- */

/* lm_dtype_size, inline: the CUDA backend links to no symbol of the core. */
static inline size_t lmi_dtype_bytes(lm_dtype dtype)
{
    return dtype == LM_BF16 || dtype == LM_F16 ? 2 : dtype == LM_F32 ? 4 : dtype == LM_BOOL ? 1 : 0;
}

/* Checks that t is a usable descriptor of ndim dims of one of the float
 * dtypes on device; `what` names it in messages. */
lm_status lmi_check_tensor(const lm_tensor *t, const char *what, int ndim, lm_device device);
/* Index (in elements) of the farthest element a strided view can touch. */
int64_t lmi_tensor_extent(const lm_tensor *t);
/* View of a tensor as an lmi_view (pointer, dtype, strides). */
lmi_view lmi_view_of(const lm_tensor *t);

/* ---- checks shared by module and core (options.c) ---- */

lm_status lmi_check_options(lm_feature_map fm, int normalize, float eps, float scale,
                            const float *decay, int64_t n_decay, lm_precision precision);
/* INVALID_ARG unless t's 4 dims are shape; names spells the shape, e.g. "[B, L, H, D]". */
lm_status lmi_check_shape4(const lm_tensor *t, const char *what, const int64_t *shape,
                           const char *names);
lm_status lmi_check_mask(const lm_tensor *mask, lm_device device, int64_t B, int64_t Lk);
/* INVALID_ARG when out's memory overlaps one of the n inputs (NULLs skipped). */
lm_status lmi_check_no_alias(const lm_tensor *out, const lm_tensor *const *inputs,
                             const char *const *names, int n);
/* Whether a context of `tokens` tokens uses compensated accumulation
 * (inline: the CUDA backend links to no symbol of the core). */
static inline int lmi_compensated(lm_precision precision, int64_t tokens)
{
    return precision == LM_PRECISION_ON ||
           (precision == LM_PRECISION_AUTO && tokens > LM_PRECISION_AUTO_TOKENS);
}

/* ---- core API (core.c) ---- */

struct lmi_backend;
/* Which core call lmi_core_fill checks for: the backward reads no `out`. */
typedef enum lmi_core_call { LMI_CORE_PREFILL, LMI_CORE_DECODE, LMI_CORE_BACKWARD } lmi_core_call;
/* Validates the caller's core arguments (copied into *full, the ABI rule),
 * fills *p and picks the backend of the tensors' device. */
lm_status lmi_core_fill(const lm_core_args *args, lmi_core_call call, lm_core_args *full,
                        lmi_core_params *p, const struct lmi_backend **be);

/* ---- license (license/) ---- */

/* LM_OK when a context of `tokens` tokens is allowed by the license in force
 * (or evaluation mode); else LM_ERR_LICENSE with a message. */
lm_status lmi_license_check(int64_t tokens);
/* The entitlements in force, for the checks that a bare context length does
 * not cover (state blobs, carried core states, CUDA graph capture). */
typedef struct lmi_limits {
    int64_t cap;    /* tokens of context per sequence; 0 = unlimited */
    int evaluation; /* no license: cap = LM_EVAL_MAX_TOKENS */
    int expiring;   /* the license has an expiry date */
} lmi_limits;
/* Fills *out and returns what lmi_license_check(1) returns: LM_ERR_LICENSE
 * when nothing may run (a refused or expired license). */
lm_status lmi_license_limits(lmi_limits *out);
/* " (development build)" or "", for lm_version. */
const char *lmi_license_build_note(void);

/* ---- the handle ---- */

struct lm_attn {
    lm_attn_config cfg;          /* copy; cfg.decay points at decay below */
    float *decay;                /* owned copy, num_kv_heads values, or NULL */
    int64_t E, Hq, Hkv, D, kdim, vdim; /* resolved sizes */
    lm_weights w;                /* borrowed */
    int has_weights;

    /* State: S [B, Hkv, D, D] then z [B, Hkv, D], fp32, on the backend's device. */
    float *state;                /* NULL when there is none */
    float *work;                 /* scratch state a forward runs on, committed on success */
    int64_t state_batch;         /* batch the state holds; 0 = none */
    int64_t state_cap, work_cap; /* batch each buffer was allocated for */
    int64_t position;            /* tokens absorbed in state */

    const struct lmi_backend *be;
    void *be_ctx;                /* backend's per-handle resources */
    float *window_gate;          /* hybrid: owned copy of num_heads logits, or NULL */
};

/* Floats of the window part of the handle's state for batch B (hybrid: keys,
 * values and int32 positions, 4 bytes each; 0 in linear mode). Inline, like
 * the next two: the CUDA backend links to no symbol of the core. */
static inline int64_t lmi_hybrid_window_floats(const lm_attn *a, int64_t batch)
{
    if (a->cfg.attention != LM_ATTENTION_HYBRID)
        return 0;
    return batch * a->Hkv * ((int64_t)a->cfg.sinks + a->cfg.window) * (2 * a->D + 1);
}

/* Number of floats of the state for batch B. */
static inline int64_t lmi_state_floats(const lm_attn *a, int64_t batch)
{
    return batch * a->Hkv * (a->D * a->D + a->D) + lmi_hybrid_window_floats(a, batch);
}

/* Sets the hybrid fields of p for the handle's state buffer `state` (S, z,
 * then the window's keys, values and positions) of batch B, the call
 * starting at `position`; nothing in linear mode. */
static inline void lmi_hybrid_module_params(const lm_attn *a, float *state, int64_t B, int64_t position,
                                            lmi_core_params *p)
{
    if (a->cfg.attention != LM_ATTENTION_HYBRID)
        return;
    const int64_t n = B * a->Hkv * ((int64_t)a->cfg.sinks + a->cfg.window);
    float *w = state ? state + B * a->Hkv * (a->D * a->D + a->D) : NULL;
    p->hybrid = 1;
    p->window = a->cfg.window;
    p->sinks = a->cfg.sinks;
    p->position = position;
    p->gate = a->window_gate;
    p->gate_form = (int)a->cfg.window_gate_form;
    p->decay = NULL;
    p->win_k = w;
    p->win_v = w ? w + n * a->D : NULL;
    p->win_pos = w ? (int32_t *)(w + 2 * n * a->D) : NULL; /* int32, a float's 4 bytes */
}

/* What the module forward hands a backend, after validation. */
typedef struct lmi_forward {
    const lm_tensor *query, *key, *value; /* [B, Lq, E], [B, Lk, kdim], [B, Lk, vdim] */
    lm_tensor *out;                       /* [B, Lq, E] */
    const lm_tensor *key_padding_mask;    /* [B, Lk] or NULL */
    int64_t B, Lq, Lk;
    int causal;
    int compensated;                      /* precision-safe accumulation */
    float *state;                         /* [B, Hkv, D, D] then z; in/out, never NULL
                                             (hybrid: then the window, hybrid.c) */
    int64_t position;                     /* tokens the state has seen (hybrid places by it) */
} lmi_forward;

/* Checks tensor t of the handle's dtype and device; shape entries < 0 are free. */
lm_status lmi_attn_check_io(const lm_attn *a, const lm_tensor *t, const char *what, int ndim,
                            const int64_t *shape);
/* The caller's options (NULL = all defaults) as a full struct. */
lm_status lmi_forward_opts_in(lm_forward_opts *full, const lm_forward_opts *opts);
/* Checks a forward's inputs and options (out may be NULL: the backward has
 * none) and fills the sizes and flags of *f; the state is not looked at. */
lm_status lmi_attn_check_inputs(const lm_attn *a, const lm_tensor *query, const lm_tensor *key,
                                const lm_tensor *value, const lm_forward_opts *opts,
                                const lm_tensor *out, lmi_forward *f);

/* ---- the engine's state pool (pool.c) ---- */

/* Parts of a slot: S, z, window keys, window values, window positions. */
#define LMI_POOL_PARTS 5

struct lm_pool {
    lm_pool_config cfg;       /* copy; cfg.decay points at decay below */
    float *decay;             /* owned copy, Hkv values, or NULL */
    int64_t N, Hkv, Dk, Dv;   /* resolved sizes */
    int64_t S_stride, z_stride; /* floats between slots */
    float scale;              /* resolved */
    /* Tokens absorbed per slot. CPU: the truth. CUDA: the truth is pos_dev,
     * kept by the kernels; pos is what the host has seen (prefills, slot
     * operations), refreshed from the device when a license limit needs it. */
    int64_t *pos;
    int64_t *pos_dev;
    int stale;                /* CUDA: decodes ran since pos was last read from the device */
    uint32_t *mark, epoch;    /* duplicate-slot check: mark[slot] == epoch */
    const struct lmi_pool_ops *ops; /* the backend's */
    void *ctx;                /* the backend's per-pool state */
    const struct lmi_backend *be; /* the backend: capture queries */
    /* Hybrid pools (cfg.attention): W, s, Hq of the calls (0 = any) and the
     * owned gate copy (Hq logits, or NULL = 0). */
    int hybrid;
    int64_t W, s, Hq;
    float *gate;
    /* A slot's parts, 4-byte words each: S, z (and hybrid: the window's keys,
     * values, positions); slot i's part j at part[j].base + i * stride words,
     * `words` long. The slot operations and the blob's body go through them. */
    int nparts;
    struct lmi_pool_part {
        void *base;
        int64_t stride, words;
    } part[LMI_POOL_PARTS];
};

/* Fills p->part and p->nparts from the resolved sizes (Hkv, Dk, Dv, hybrid,
 * W, s) and the configuration's memory and strides (0 = packed). */
static inline void lmi_pool_layout(lm_pool *p)
{
    const int64_t ns = p->hybrid ? p->s + p->W : 0;
    const int64_t words[LMI_POOL_PARTS] = { p->Hkv * p->Dk * p->Dv, p->Hkv * p->Dk, p->Hkv * ns * p->Dk,
                                            p->Hkv * ns * p->Dv, p->Hkv * ns };
    void *base[LMI_POOL_PARTS] = { p->cfg.state, p->cfg.normalizer, p->cfg.window_keys,
                                   p->cfg.window_values, p->cfg.window_pos };
    const int64_t stride[LMI_POOL_PARTS] = { p->cfg.state_stride, p->cfg.normalizer_stride,
                                             p->cfg.window_keys_stride, p->cfg.window_values_stride,
                                             p->cfg.window_pos_stride };
    p->nparts = p->hybrid ? 5 : 2;
    for (int j = 0; j < p->nparts; j++)
        p->part[j] = (struct lmi_pool_part){ base[j], stride[j] ? stride[j] : words[j], words[j] };
}

/* 4-byte words of a slot's parts (the slot blob's body without its header). */
static inline int64_t lmi_pool_slot_words(const lm_pool *p)
{
    int64_t n = 0;
    for (int j = 0; j < p->nparts; j++)
        n += p->part[j].words;
    return n;
}

/* The address of slot i's part j. */
static inline void *lmi_pool_part_at(const lm_pool *p, int j, int64_t slot)
{
    return (char *)p->part[j].base + slot * p->part[j].stride * 4;
}

/* A checked lm_pool_prefill call, for the backend. Sequence i is tokens
 * cu[i] .. cu[i+1]-1 of the [1, T, H, D] views; slot[i] (-1: none); fresh[i]
 * (or NULL); skip[i] nonzero: refused by the license, not run (or NULL). */
typedef struct lmi_varlen {
    lmi_view q, k, v, out;
    int64_t T, Hq, n;
    const int32_t *cu, *slot;
    const uint8_t *flags;
    const lm_status *skip;
    void *ws;
    size_t ws_bytes;
} lmi_varlen;


/* A checked lm_pool_decode call (or the length-1 sequences of a prefill):
 * row b reads token tok[b] (NULL: b) of the [B, 1, H, D] views and
 * continues slot slot[b] (-1: padding), from empty when fresh[b]; skip[b]
 * nonzero (host, CPU): refused, not run. On CUDA slot and status are in
 * device memory and the kernel applies limit (0: none) itself. */
typedef struct lmi_rows {
    lmi_view q, k, v, out;
    int64_t B, Hq;
    const int32_t *tok, *slot;
    const uint8_t *fresh;
    const int32_t *skip;
    int32_t *status;
    int64_t limit;
    void *ws;
    size_t ws_bytes;
} lmi_rows;

/* A backend's engine pools: what lm_pool_* calls after its checks. */
typedef struct lmi_pool_ops {
    /* Positions and empty slots at creation; their release. */
    lm_status (*init)(lm_pool *pool);
    void (*fini)(lm_pool *pool);
    /* Varlen prefill and indexed decode (checked), and their scratch bytes. */
    lm_status (*prefill)(lm_pool *pool, const lmi_varlen *v, void *stream);
    lm_status (*prefill_ws)(const lm_pool *pool, const lmi_varlen *v, size_t *bytes);
    lm_status (*decode)(lm_pool *pool, const lmi_rows *r, void *stream);
    lm_status (*decode_ws)(const lm_pool *pool, const lmi_rows *r, size_t *bytes);
    /* Slot operations (indices checked); positions included. get/set move a
     * slot's parts (pool->part, back to back: lmi_pool_slot_words words; NULL
     * in get: the position only) and position to / from host memory,
     * synchronously. */
    lm_status (*slot_zero)(lm_pool *pool, int64_t slot, void *stream);
    lm_status (*slot_copy)(lm_pool *pool, int64_t dst, int64_t src, void *stream);
    lm_status (*slot_get)(const lm_pool *pool, int64_t slot, void *data, int64_t *pos, void *stream);
    lm_status (*slot_set)(lm_pool *pool, int64_t slot, const void *data, int64_t pos, void *stream);
    /* Optional (CUDA): pool->pos refreshed from the device's positions,
     * synchronously (the license's limit needs them). */
    lm_status (*positions)(lm_pool *pool, void *stream);
} lmi_pool_ops;

/* A backend: the host side validates, then calls through this table. */
typedef struct lmi_backend {
    const char *name;
    /* Per-handle resources (cuBLAS handle, workspaces); called by create. */
    lm_status (*init)(lm_attn *a);
    void (*fini)(lm_attn *a);
    /* Memory on the backend's device for states. */
    lm_status (*alloc)(lm_attn *a, size_t bytes, void **ptr);
    void (*free)(lm_attn *a, void *ptr);
    /* dir: 0 device->device, 1 host->device, 2 device->host. Copies that touch
     * the host are synchronous; device->device copies and zeroing are ordered
     * with the handle's work (CUDA: queued on the stream of its last call). */
    lm_status (*copy)(lm_attn *a, void *dst, const void *src, size_t bytes, int dir);
    lm_status (*zero)(lm_attn *a, void *ptr, size_t bytes);
    /* Module prefill with projections; state in f->state is read and updated. */
    lm_status (*forward)(lm_attn *a, const lmi_forward *f, void *stream);
    /* Module decode step: x [B, E] -> out [B, E], updates a->state in place. */
    lm_status (*step)(lm_attn *a, const lm_tensor *x, lm_tensor *out, void *stream);
    /* Core prefill / decode on projected q, k, v; the prefill's scratch
     * bytes (p->ws, when given, holds at least that many). */
    lm_status (*prefill)(const lmi_core_params *p, void *stream);
    lm_status (*prefill_ws)(const lmi_core_params *p, size_t *bytes);
    lm_status (*decode)(const lmi_core_params *p, void *stream);
    /* Core backward: dq, dk, dv (and the initial state's gradient). Optional:
     * NULL = this backend cannot train (UNSUPPORTED). */
    lm_status (*backward)(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream);
    /* Module backward (optional): the gradients of forward f (from an empty
     * state; f->state unused) for grads g, already checked. */
    lm_status (*attn_backward)(lm_attn *a, const lmi_forward *f, const lm_attn_grads *g,
                               void *stream);
    /* Engine pools (pool.c), or NULL: this backend has none. */
    const struct lmi_pool_ops *pool;
    /* Hybrid attention core prefill / decode (p->hybrid set). Optional: NULL =
     * UNSUPPORTED. The module's forward and step handle hybrid themselves. */
    lm_status (*hybrid_prefill)(const lmi_core_params *p, void *stream);
    lm_status (*hybrid_decode)(const lmi_core_params *p, void *stream);
    /* Whether `stream` is being captured into a CUDA graph (NULL: never). */
    lm_status (*capturing)(void *stream, int *yes);
    /* Zeroes bytes at ptr on the backend's device, ordered on `stream` (a
     * core call's fresh_state). */
    lm_status (*zero_async)(void *ptr, size_t bytes, void *stream);
} lmi_backend;

extern const lmi_backend lmi_cpu_backend;
extern const lmi_pool_ops lmi_cpu_pool; /* cpu_pool.c */
/* The CUDA backend (loaded on first use, load_cuda.c), or NO_DEVICE /
 * UNSUPPORTED with a message when it is not built, not installed or no GPU. */
lm_status lmi_cuda_backend(int cuda_device, const lmi_backend **out);

/* ---- CPU backend pieces (cpu_*.c) ---- */

/* Chunked attention on the CPU, parallel over batch x query heads. */
lm_status lmi_cpu_attend(const lmi_core_params *p);
/* n calls of the same head dims in one parallel region, over all their
 * batch rows x query heads (ps[0].num_threads threads; scratch ws of
 * ws_bytes, or NULL: allocated); and the scratch bytes it needs. */
lm_status lmi_cpu_attend_many(const lmi_core_params *ps, int64_t n, void *ws, size_t ws_bytes);
size_t lmi_cpu_attend_ws(const lmi_core_params *ps, int64_t n);
/* Its backward, parallel over batch x kv heads; synchronous, stream unused. */
lm_status lmi_cpu_backward(const lmi_core_params *p, const lmi_core_grad_params *g, void *stream);
/* The module backward on the CPU (cpu_module_backward.c). */
lm_status lmi_cpu_attn_backward(lm_attn *a, const lmi_forward *f, const lm_attn_grads *g,
                                void *stream);
/* Hybrid attention on the CPU (cpu_hybrid.c): prefill, or a decode step
 * (positions from the window), synchronous, parallel over batch x query heads. */
lm_status lmi_cpu_hybrid(const lmi_core_params *p, int decode);

/* ---- hybrid attention (hybrid.c; docs/DESIGN.md §9) ---- */

/* Checks the hybrid fields of a config when it asks for hybrid. */
lm_status lmi_hybrid_check_config(const lm_attn_config *c);
/* Checks the hybrid fields of core arguments (attention != LINEAR) for a call
 * that is causal or not, with Hq query heads; then lmi_hybrid_fill copies
 * them into p. */
lm_status lmi_hybrid_check_core(const lm_core_args *a, int causal, int64_t Hq);
void lmi_hybrid_fill(const lm_core_args *a, lmi_core_params *p);
/* Runs a checked hybrid core call on backend be (decode: one step). */
lm_status lmi_hybrid_run(const struct lmi_backend *be, const lmi_core_params *p, int decode,
                         void *stream);
/* The handle's hybrid parts: owned gate copy at create, freed at destroy. */
lm_status lmi_hybrid_create(lm_attn *a);
void lmi_hybrid_destroy(lm_attn *a);
/* UNSUPPORTED for a bidirectional module forward in hybrid mode. */
lm_status lmi_hybrid_check_forward(const lm_attn *a, int is_causal);
/* UNSUPPORTED (naming `what`, saying `why`) when hybrid is set: for the calls
 * that have no hybrid form. */
lm_status lmi_hybrid_linear_only(int hybrid, const char *what, const char *why);
/* UNSUPPORTED for any backward in hybrid mode (what = which API). */
lm_status lmi_hybrid_no_backward(int hybrid, const char *what);

/* ---- state blobs (state_blob.c) ---- */

/* What a blob's header says. */
typedef struct lmi_blob_info {
    int64_t batch, kv_heads, dk, dv, position;
    size_t header_bytes, data_bytes;
} lmi_blob_info;
/* Bytes of the header lm_attn_get_state writes for the handle: format 1
 * ("LMSTATE1") in linear mode, format 2 ("LMSTATE2", with the attention, W
 * and s) in hybrid mode. */
size_t lmi_blob_header_bytes(const lm_attn *a);
/* Writes that header for the handle's state into buf. */
void lmi_blob_header_write(const lm_attn *a, void *buf);
/* Parses a blob of either format coming back to the handle into *info:
 * magic, mode (and hybrid W, s), shapes, batch, position and size are the
 * handle's and in bounds, and lmi_blob_admit lets it in. */
lm_status lmi_blob_read(const lm_attn *a, const void *buf, size_t bytes, lmi_blob_info *info);
#define LMI_MAX_BLOB_BATCH (1 << 24)

/* ---- the pool's slot blob (slot_blob.c) ---- */

/* Header bytes of format 1 (linear pools) and format 2 (hybrid pools: the
 * attention, W and s added). */
#define LMI_SLOT_HEADER_BYTES 56
#define LMI_SLOT_HEADER2_BYTES 88
/* Header bytes of the blob pool p writes. */
size_t lmi_slot_blob_header(const lm_pool *p);
/* Bytes of a slot blob of pool p: header, the slot's parts, tag. */
size_t lmi_slot_blob_bytes(const lm_pool *p);
/* Writes the header (the slot at `position`) into buf, whose parts are
 * written after lmi_slot_blob_header bytes, and the tag over both. */
lm_status lmi_slot_blob_seal(const lm_pool *p, int64_t position, void *buf);
/* Parses a slot blob coming back to pool p (magic, byte order, format,
 * shapes, attention, W, s, position, size) and lets lmi_blob_admit judge
 * it; *position is the slot's, *data its parts (after the header). */
lm_status lmi_slot_blob_read(const lm_pool *p, const void *buf, size_t bytes, int64_t *position,
                             const void **data);

/* ---- blob authentication (blob_auth.c) ---- */

/* Bytes of the keyed BLAKE2b tag that ends every state blob. */
#define LMI_BLOB_TAG_BYTES 32
/* Writes the tag of blob[0..body_bytes) at blob + body_bytes. */
lm_status lmi_blob_sign(void *blob, size_t body_bytes);
/* Whether a blob of `bytes` bytes, whose body (everything but the tag) has
 * body_bytes, may come back: its size is the body's with or without a tag,
 * and under a context cap the tag must be this process's (LICENSE
 * otherwise, naming `what` and the blob's position). */
lm_status lmi_blob_admit(const void *blob, size_t bytes, size_t body_bytes, int64_t position,
                         const char *what);

/* ---- entitlements beyond a context length (entitle.c) ---- */

/* Under a context cap, refuses (LICENSE, naming `what`) a call being
 * captured into a CUDA graph whose count the host keeps (fixed = 0: it
 * continues a sequence, so each replay would add tokens the library never
 * sees). Calls of fixed = 1 start fresh with the lengths the graph bakes
 * in: counted at capture, they count the same on every replay. */
lm_status lmi_capture_check(const struct lmi_backend *be, void *stream, int fixed, const char *what);
/* The core API's rule for a state the caller carries (docs/DESIGN.md): under
 * a context cap a state is accepted only with fresh_state (the library
 * empties it: position 0); a carried state's position cannot be verified.
 * fresh_state needs a state and position 0. Called after the context check. */
lm_status lmi_core_entitle(const lm_core_args *a);
/* With a->fresh_state, empties the state, normalizer and window buffers of
 * p on `stream`, just before the call runs. */
lm_status lmi_core_fresh(const lm_core_args *a, const struct lmi_backend *be, const lmi_core_params *p,
                         void *stream);

/* ---- positions ---- */

/* The largest position a state may claim: far beyond any real context, and
 * far enough from INT64_MAX that position + a call's tokens cannot overflow. */
#define LMI_MAX_POSITION ((int64_t)1 << 62)
/* *ctx = position + tokens, or INVALID_ARG (naming `what`) when position is
 * outside 0..LMI_MAX_POSITION or the sum would overflow. */
lm_status lmi_context(int64_t position, int64_t tokens, const char *what, int64_t *ctx);

#endif /* LM_IMPL_H */
