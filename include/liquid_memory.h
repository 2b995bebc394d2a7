/*
 * liquid_memory.h - the public C API of Liquid Memory: attention in linear time.
 *
 * Liquid Memory replaces softmax attention with kernelised linear attention.
 * Per key/value head h, with feature map phi and decay g_h in (0, 1], it keeps
 * an fp32 state S (Dk x Dv) and normaliser z (Dk):
 *
 *     S_t = g_h S_{t-1} + phi(k_t) v_t^T        z_t = g_h z_{t-1} + phi(k_t)
 *     normalised:   o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)
 *     unnormalised: o_t = scale * phi(q_t)^T S_t
 *
 * Prefill costs O(L) time; decode (`lm_attn_step`) costs O(1) per token on a
 * state of fixed size. Two levels of API:
 *   - the module (`lm_attn_*`): a drop-in for torch.nn.MultiheadAttention,
 *     with its q/k/v/out projections and weight layout;
 *   - the core (`lm_linear_attn_*`): attention on already-projected q, k, v,
 *     for engines that do their own projections.
 *
 * Example (CPU, fp32, causal self-attention then one decode step):
 *
 *     lm_attn_config cfg;
 *     lm_attn_config_default(&cfg, 512, 8);           // E = 512, 8 heads
 *     lm_attn *a;
 *     if (lm_attn_create(&cfg, &a) != LM_OK) { puts(lm_last_error()); ... }
 *     lm_weights w = { .in_proj_weight = w_in, .in_proj_bias = b_in,
 *                      .out_proj_weight = w_out, .out_proj_bias = b_out };
 *     lm_attn_set_weights(a, &w);
 *     lm_tensor x = lm_tensor_3d(xs, LM_F32, LM_CPU, B, L, 512);  // [B, L, E]
 *     lm_tensor y = lm_tensor_3d(ys, LM_F32, LM_CPU, B, L, 512);
 *     lm_forward_opts o = { .is_causal = 1, .keep_state = 1 };
 *     lm_attn_forward(a, &x, &x, &x, &o, &y, NULL);   // prefill, keeps state
 *     lm_tensor t = lm_tensor_2d(tok, LM_F32, LM_CPU, B, 512);    // [B, E]
 *     lm_attn_step(a, &t, &t_out, NULL);              // one more token
 *     lm_attn_destroy(a);
 *
 * Errors: every function that can fail returns an lm_status; the detail of
 * the last failure on the calling thread is in lm_last_error(). A failed call
 * leaves the handle and its state as they were. The library never aborts,
 * exits or prints.
 *
 * Threads: an lm_attn handle may be used by one thread at a time; different
 * handles may be used from different threads at once. The core functions are
 * reentrant.
 */
#ifndef LIQUID_MEMORY_H
#define LIQUID_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LM_API __attribute__((visibility("default")))
/* On every function that returns a status: ignoring one is a compile warning. */
#define LM_NODISCARD __attribute__((warn_unused_result))
#else
#define LM_API
#define LM_NODISCARD
#endif

/* The release this header belongs to. LM_VERSION_NUMBER orders releases
 * (MAJOR * 10000 + MINOR * 100 + PATCH); lm_version_number() gives the
 * library's, so a program can refuse a library older than its header. */
#define LM_VERSION_MAJOR 0
#define LM_VERSION_MINOR 2
#define LM_VERSION_PATCH 0
#define LM_VERSION_STRING "0.2.0"
#define LM_VERSION_NUMBER (LM_VERSION_MAJOR * 10000 + LM_VERSION_MINOR * 100 + LM_VERSION_PATCH)
/* The ABI: the number in the library's soname (libliquidmemory.so.0). It
 * changes only when a call compiled against an older header could break. */
#define LM_ABI_VERSION 0

/* ABI rule for structs: every public struct that can grow starts with
 * `uint32_t struct_size`, which the caller sets to sizeof(the struct) as its
 * header declares it (the *_default() initialisers and LM_SIZED do; the
 * initialisers are inline and hand that size to the library's *_init()). The
 * library reads and writes only that many bytes: fields a caller's older
 * header does not have count as zero, and nothing is written past the
 * caller's struct. A struct_size of 0, or smaller than the struct's first
 * release, is LM_ERR_INVALID_ARG. New fields are only ever added at the end.
 *     lm_forward_opts o = { LM_SIZED(lm_forward_opts), .is_causal = 1 };   */
#define LM_SIZED(type) .struct_size = (uint32_t)sizeof(type)

/* Largest number of dimensions a tensor descriptor holds. */
#define LM_MAX_DIMS 4

/* ------------------------------------------------------------------------ */
/* Status, errors, version                                                  */
/* ------------------------------------------------------------------------ */

typedef enum lm_status {
    LM_OK = 0,
    LM_ERR_INVALID_ARG,   /* a NULL, a size, a shape, a stride or a dtype is wrong */
    LM_ERR_UNSUPPORTED,   /* valid, but linear attention (or this backend) cannot do it */
    LM_ERR_OUT_OF_MEMORY, /* host or device allocation failed; nothing leaked */
    LM_ERR_NO_DEVICE,     /* CUDA asked for, but no CUDA backend or no usable GPU */
    LM_ERR_CUDA,          /* a CUDA or cuBLAS call failed; the text names it */
    LM_ERR_LICENSE,       /* beyond what the license (or evaluation mode) allows */
    LM_ERR_STATE,         /* the handle's state does not fit the call (e.g. batch changed) */
    LM_ERR_INTERNAL       /* a bug in Liquid Memory: please report it */
} lm_status;

/* Static text naming a status; never NULL. */
LM_API const char *lm_status_string(lm_status status);

/* Detail of the last failure (or notice, e.g. evaluation mode) on the calling
 * thread. Valid until the next call into the library on this thread; never
 * NULL ("" when nothing was recorded). */
LM_API const char *lm_last_error(void);

/* Version text, e.g. "0.1.0 (cpu, cuda)", or "0.1.0 (cpu) (development build)"
 * when built with a development license key. */
LM_API const char *lm_version(void);

/* LM_VERSION_NUMBER of the library that is loaded (which may differ from
 * the header a program was compiled with). */
LM_API int lm_version_number(void);

/* ------------------------------------------------------------------------ */
/* Tensors                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum lm_dtype {
    LM_BF16 = 0, /* bfloat16 */
    LM_F16 = 1,  /* IEEE half */
    LM_F32 = 2,  /* IEEE single */
    LM_BOOL = 3  /* one byte, nonzero = true: masks only */
} lm_dtype;

typedef enum lm_device { LM_CPU = 0, LM_CUDA = 1 } lm_device;

/* A strided view of memory the caller owns. Strides are in elements and may
 * be any non-negative values, so batch-first and sequence-first layouts are
 * both read without a copy (the CUDA backend wants stride 1 on the last
 * dimension). Only the first ndim entries of shape/stride are used. */
typedef struct lm_tensor {
    void *data;
    lm_dtype dtype;
    lm_device device;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    int64_t stride[LM_MAX_DIMS];
} lm_tensor;

/* Size in bytes of one element of dtype, 0 for an unknown dtype. */
LM_API size_t lm_dtype_size(lm_dtype dtype);

/* Contiguous (row-major) descriptors; convenience, they cannot fail. */
LM_API lm_tensor lm_tensor_2d(void *data, lm_dtype dtype, lm_device device,
                              int64_t d0, int64_t d1);
LM_API lm_tensor lm_tensor_3d(void *data, lm_dtype dtype, lm_device device,
                              int64_t d0, int64_t d1, int64_t d2);
LM_API lm_tensor lm_tensor_4d(void *data, lm_dtype dtype, lm_device device,
                              int64_t d0, int64_t d1, int64_t d2, int64_t d3);

/* ------------------------------------------------------------------------ */
/* Options shared by the module and the core                                */
/* ------------------------------------------------------------------------ */

typedef enum lm_feature_map {
    LM_FEATURE_ELU1 = 0,    /* elu(x) + 1: positive, the default */
    LM_FEATURE_RELU = 1,    /* max(x, 0) */
    LM_FEATURE_IDENTITY = 2 /* x (use with normalize = 0) */
} lm_feature_map;

/* Context length (position + tokens of the call) above which
 * LM_PRECISION_AUTO accumulates the state with compensation. */
#define LM_PRECISION_AUTO_TOKENS 65536

typedef enum lm_precision {
    LM_PRECISION_AUTO = 0, /* compensated above LM_PRECISION_AUTO_TOKENS tokens */
    LM_PRECISION_ON = 1,   /* always compensated (Kahan) accumulation of the state; on
                              CUDA the backward then uses its fp32 kernel (gradients at
                              the rounding floor) rather than the faster tensor-core one */
    LM_PRECISION_OFF = 2   /* plain fp32 accumulation */
} lm_precision;

/* Which attention the module or the core computes (docs/DESIGN.md §9). */
typedef enum lm_attention {
    LM_ATTENTION_LINEAR = 0, /* kernelised linear attention over every key: the default */
    LM_ATTENTION_HYBRID = 1  /* exact softmax over the first `sinks` tokens and the last
                                `window` tokens, linear attention over every token that
                                left the window; causal only, normalised, no decay */
} lm_attention;

/* Defaults of the hybrid's window W and sinks s (the _default() initialisers). */
#define LM_HYBRID_WINDOW_DEFAULT 64
#define LM_HYBRID_SINKS_DEFAULT 4

/* The form of the hybrid's per-head window gate gamma_h from its logit g_h
 * (docs/DESIGN.md §9.1). SIGMOID is the normative form (gamma <= 1); EXP lets
 * the window outweigh the linear part without bound, which a converted softmax
 * model needs (§9.7). An EXP gate's logits must lie in
 * [-LM_HYBRID_GATE_EXP_MAX, LM_HYBRID_GATE_EXP_MAX] (else LM_ERR_INVALID_ARG),
 * so that gamma and the window's fp32 sums cannot overflow. */
typedef enum lm_gate_form {
    LM_GATE_SIGMOID = 0, /* gamma_h = sigmoid(g_h) in (0, 1): the default */
    LM_GATE_EXP = 1      /* gamma_h = exp(g_h) in (0, inf) */
} lm_gate_form;
#define LM_HYBRID_GATE_EXP_MAX 40.0f

/* ------------------------------------------------------------------------ */
/* Module: a drop-in for torch.nn.MultiheadAttention                        */
/* ------------------------------------------------------------------------ */

typedef struct lm_attn lm_attn; /* opaque handle */

typedef struct lm_attn_config {
    uint32_t struct_size; /* sizeof(lm_attn_config): see "ABI rule for structs" */
    int embed_dim;    /* E: width of query input and output, > 0 */
    int num_heads;    /* Hq, > 0 */
    int num_kv_heads; /* Hkv: 0 = num_heads; num_heads % num_kv_heads == 0 (GQA/MQA) */
    int head_dim;     /* D: 0 = embed_dim / num_heads (which must divide) */
    int kdim;         /* width of key input: 0 = embed_dim (cross-attention) */
    int vdim;         /* width of value input: 0 = embed_dim */
    lm_feature_map feature_map;
    int normalize;      /* 1: o = phi(q)S / (phi(q)z + eps); 0: o = scale phi(q)S */
    float eps;          /* > 0, default 1e-6 */
    float scale;        /* unnormalised only; 0 = 1/sqrt(head_dim) */
    const float *decay; /* NULL = no decay, else num_kv_heads values in (0, 1]; copied */
    lm_precision precision;
    lm_dtype dtype;  /* dtype of inputs, outputs and weights: BF16, F16 or F32 */
    lm_device device;
    int cuda_device; /* CUDA device ordinal */
    int max_batch;   /* 0 = any; else the largest batch, so CUDA can preallocate */
    /* Hybrid attention (docs/DESIGN.md §9): o_t = (sum over the window of a_j v_j + sum over
     * the evicted tokens of phi(q_t).phi(k_j) v_j) / (the same sums of the weights + eps),
     * a_j = gamma_h exp(scale q_t.k_j - max), gamma_h = sigmoid(g_h) (or exp(g_h): see
     * window_gate_form); the window of token t is the first `sinks` tokens and the tokens
     * (t - window, t]. Read only when attention is
     * LM_ATTENTION_HYBRID; then scale is the softmax scale (0 = 1/sqrt(head_dim)), forwards
     * must be causal, lm_attn_backward is UNSUPPORTED (train through the Python package). */
    lm_attention attention;   /* LM_ATTENTION_LINEAR (default) or LM_ATTENTION_HYBRID */
    int window;               /* W >= 1 (default LM_HYBRID_WINDOW_DEFAULT) */
    int sinks;                /* s >= 0 (default LM_HYBRID_SINKS_DEFAULT) */
    const float *window_gate; /* num_heads logits g_h, NULL = all 0 (gamma = 1/2); copied */
    lm_gate_form window_gate_form; /* gamma from g: LM_GATE_SIGMOID (default; also what an
                                      older caller's shorter struct means) or LM_GATE_EXP */
} lm_attn_config;

/* Fills cfg with defaults: E = embed_dim, num_heads heads, elu+1, normalised,
 * eps 1e-6, no decay, precision auto, F32 on the CPU, linear attention (the
 * hybrid's W and s at their defaults); sets struct_size.
 * Returns LM_ERR_INVALID_ARG when cfg is NULL.
 * The _default() initialisers are inline: they pass sizeof the struct as this
 * header declares it to the library's _init(), which writes only that many
 * bytes (ABI rule above), so an older program's shorter struct is never
 * overrun by a newer library. Call _init() directly only from bindings that
 * know the struct's size (cffi's ffi.sizeof). */
LM_API LM_NODISCARD lm_status lm_attn_config_init(lm_attn_config *cfg, size_t size, int embed_dim,
                                                  int num_heads);
LM_NODISCARD static inline lm_status lm_attn_config_default(lm_attn_config *cfg, int embed_dim,
                                                            int num_heads)
{
    return lm_attn_config_init(cfg, sizeof *cfg, embed_dim, num_heads);
}

/* Creates a handle. Checks the configuration, copies it (decay included) and
 * allocates what the backend needs up front. *out is set on success only.
 * Returns INVALID_ARG, UNSUPPORTED, NO_DEVICE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_attn_create(const lm_attn_config *cfg, lm_attn **out);

/* Frees the handle and everything it owns; NULL is ignored. */
LM_API void lm_attn_destroy(lm_attn *attn);

/* Projection weights in torch.nn.MultiheadAttention's layout: row-major,
 * contiguous, in the config's dtype, on the config's device. The pointers are
 * borrowed, not copied: they must stay valid while the handle uses them, and
 * updates to the memory (training) are seen by the next call.
 * With Dq = num_heads*head_dim and Dkv = num_kv_heads*head_dim: */
typedef struct lm_weights {
    uint32_t struct_size; /* sizeof(lm_weights): see "ABI rule for structs" */
    const void *in_proj_weight;  /* [Dq + 2 Dkv, E] packed q;k;v (kdim = vdim = E),
                                    or NULL to use the three below */
    const void *q_proj_weight;   /* [Dq, E] */
    const void *k_proj_weight;   /* [Dkv, kdim] */
    const void *v_proj_weight;   /* [Dkv, vdim] */
    const void *in_proj_bias;    /* [Dq + 2 Dkv] or NULL (no input bias) */
    const void *out_proj_weight; /* [E, Dq] */
    const void *out_proj_bias;   /* [E] or NULL */
} lm_weights;

/* Sets (borrows) the weights. Returns INVALID_ARG when a required pointer is
 * missing or in_proj_weight is given while kdim or vdim differ from E. */
LM_API LM_NODISCARD lm_status lm_attn_set_weights(lm_attn *attn, const lm_weights *w);

typedef struct lm_forward_opts {
    uint32_t struct_size; /* sizeof(lm_forward_opts): see "ABI rule for structs" */
    int is_causal;                     /* 1: token t sees keys 0..t (needs Lq == Lk) */
    const lm_tensor *key_padding_mask; /* [B, Lk] LM_BOOL, nonzero = ignore; NULL = none */
    int use_state;  /* 1: continue from the handle's state instead of an empty one */
    int keep_state; /* 1: keep the final state on the handle (for step / next forward) */
} lm_forward_opts;

/* Attention over a sequence (prefill).
 *   query [B, Lq, E], key [B, Lk, kdim], value [B, Lk, vdim], out [B, Lq, E],
 *   all in the config's dtype on its device, any strides (a sequence-first
 *   tensor [L, B, E] is passed as [B, L, E] with its strides swapped).
 * Self-attention passes the same tensor three times. Without is_causal every
 * query sees every key (and the state, with use_state). opts may be NULL
 * (bidirectional, fresh state, nothing kept). Decay with is_causal = 0 is
 * UNSUPPORTED. use_state with a state of another batch size is LM_ERR_STATE.
 * On the CPU the call is synchronous; on CUDA it is queued on `stream`
 * (a cudaStream_t, NULL = default stream). `out` may not alias the inputs.
 * Returns INVALID_ARG, UNSUPPORTED, STATE, LICENSE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_attn_forward(lm_attn *attn, const lm_tensor *query, const lm_tensor *key,
                                              const lm_tensor *value, const lm_forward_opts *opts,
                                              lm_tensor *out, void *stream);

/* One decode step: x [B, E] -> out [B, E], causal self-attention continuing
 * the handle's state (an empty one if none). A state of another batch size
 * is LM_ERR_STATE until lm_attn_reset. On CUDA it allocates nothing and does
 * not synchronise, so it can be captured in a CUDA graph once the state
 * exists. Returns INVALID_ARG, STATE, LICENSE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_attn_step(lm_attn *attn, const lm_tensor *x, lm_tensor *out, void *stream);

/* Drops the state: the next forward/step starts empty, any batch size. */
LM_API LM_NODISCARD lm_status lm_attn_reset(lm_attn *attn);

/* Size in bytes of the state blob of lm_attn_get_state (header + fp32 S and
 * z for every batch row and kv head; in hybrid mode also the window's keys,
 * values and positions, docs/DESIGN.md §9; then a 32-byte tag keyed per
 * process, docs/DESIGN.md §6.1). LM_ERR_STATE when there is no state. */
LM_API LM_NODISCARD lm_status lm_attn_state_size(const lm_attn *attn, size_t *bytes);

/* Copies the state into host memory buf of `bytes` bytes (at least
 * lm_attn_state_size). Synchronous. Save, restore or fork a conversation. */
LM_API LM_NODISCARD lm_status lm_attn_get_state(const lm_attn *attn, void *buf, size_t bytes);

/* Replaces the state with a blob from lm_attn_get_state of a handle with the
 * same num_kv_heads and head_dim (hybrid: and the same attention, window and
 * sinks; a linear handle also reads a linear blob of the newer format).
 * Checks the blob before changing anything. Under a context cap (evaluation,
 * or a license with max_seq_len) only a blob written by this process,
 * unaltered (its tag verifies), is taken, else LICENSE; an unlimited license
 * takes any well-formed blob, with its tag or without (bytes 32 fewer). */
LM_API LM_NODISCARD lm_status lm_attn_set_state(lm_attn *attn, const void *buf, size_t bytes);

/* Number of tokens absorbed in the state (0 when there is none). */
LM_API LM_NODISCARD lm_status lm_attn_position(const lm_attn *attn, int64_t *tokens);

/* Gradients of lm_attn_forward, for training. Tensors and weight buffers in
 * the config's dtype on its device. */
typedef struct lm_attn_grads {
    uint32_t struct_size; /* sizeof(lm_attn_grads): see "ABI rule for structs" */
    const lm_tensor *dout; /* [B, Lq, E] gradient of out */
    lm_tensor *dquery;     /* [B, Lq, E] written, or NULL when not wanted */
    lm_tensor *dkey;       /* [B, Lk, kdim] written, or NULL */
    lm_tensor *dvalue;     /* [B, Lk, vdim] written, or NULL; when query, key and
                              value are one tensor (self-attention), dquery, dkey
                              and dvalue may be one tensor too: it gets the sum */
    /* Weight gradients in lm_weights' layout (contiguous); NULL skips one.
     * in_proj_weight exactly when the weights were set packed, q/k/v_proj_weight
     * otherwise; a bias gradient only for a bias that was set. */
    void *in_proj_weight, *q_proj_weight, *k_proj_weight, *v_proj_weight;
    void *in_proj_bias, *out_proj_weight, *out_proj_bias;
    int accumulate; /* weights and biases: 1 adds to the buffers (like torch's
                       .grad), 0 overwrites; input gradients are always written */
} lm_attn_grads;

/* Backward of lm_attn_forward: query, key, value and opts as given to the
 * forward, from an empty state (opts->use_state is UNSUPPORTED: the state the
 * forward started from is gone; keep_state is ignored); its output is not
 * needed. Projections and attention are recomputed slab by slab, the state
 * gradient carried between slabs (causal: backwards from per-slab checkpoints
 * of the state), so extra memory is O(slab + L/slab states), not O(L E). The
 * handle's state is not changed. Gradient buffers may not overlap the inputs,
 * the weights or each other (but for the one-tensor case above). Weight
 * gradients are summed in fp32 and rounded to the dtype once. CPU:
 * synchronous. CUDA: queued on `stream` (a cudaStream_t, NULL = default
 * stream), no host sync, scratch from the stream-ordered allocator; tensors
 * need stride 1 on their last dimension and rows at least their width apart
 * (else UNSUPPORTED). Returns INVALID_ARG, UNSUPPORTED, LICENSE,
 * OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_attn_backward(lm_attn *attn, const lm_tensor *query, const lm_tensor *key,
                                               const lm_tensor *value, const lm_forward_opts *opts,
                                               const lm_attn_grads *grads, void *stream);

/* ------------------------------------------------------------------------ */
/* Core: attention on already-projected q, k, v                             */
/* ------------------------------------------------------------------------ */

typedef struct lm_core_args {
    uint32_t struct_size; /* sizeof(lm_core_args): see "ABI rule for structs" */
    const lm_tensor *q;                /* [B, L, Hq, Dk]   BF16/F16/F32 */
    const lm_tensor *k;                /* [B, Lk, Hkv, Dk] same dtype as q */
    const lm_tensor *v;                /* [B, Lk, Hkv, Dv] same dtype as q */
    lm_tensor *out;                    /* [B, L, Hq, Dv]   same dtype as q */
    const lm_tensor *key_padding_mask; /* [B, Lk] LM_BOOL, nonzero = ignore; NULL = none */
    float *state;      /* [B, Hkv, Dk, Dv] fp32 on q's device, read then overwritten
                          with the final state; NULL = start empty, discard */
    float *normalizer; /* [B, Hkv, Dk] fp32, given exactly when state is */
    int64_t position;  /* tokens already absorbed in state (license limits) */
    int is_causal;
    lm_feature_map feature_map;
    int normalize;
    float eps;
    float scale;        /* 0 = 1/sqrt(Dk) */
    const float *decay; /* NULL or Hkv host values in (0, 1] */
    lm_precision precision;
    /* Hybrid attention (docs/DESIGN.md §9; see lm_attn_config). With LM_ATTENTION_HYBRID the
     * call is causal and normalised, without decay; scale is the softmax scale (0 =
     * 1/sqrt(Dk)); state/normalizer hold the evicted tokens only. The window buffers are
     * given exactly when state is, on q's device, read then overwritten like the state
     * (zeros: the empty state). Slot i < sinks holds the sink at position i, slot
     * sinks + (p mod window) the token at position p among the last `window`. A prefill
     * places tokens by `position`, which must be the number of tokens every batch row of
     * the state has seen; a decode step reads each row's own count from its window_pos
     * (so a replayed CUDA graph continues correctly; `position` then only serves the
     * license check). */
    lm_attention attention;    /* LM_ATTENTION_LINEAR (default) or LM_ATTENTION_HYBRID */
    int window;                /* W >= 1 (default LM_HYBRID_WINDOW_DEFAULT) */
    int sinks;                 /* s >= 0 (default LM_HYBRID_SINKS_DEFAULT) */
    const float *window_gate;  /* Hq host logits g_h, NULL = all 0; read per call */
    float *window_keys;        /* [B, Hkv, s + W, Dk] fp32 */
    float *window_values;      /* [B, Hkv, s + W, Dv] fp32 */
    int32_t *window_pos;       /* [B, Hkv, s + W]: 0 = empty, p + 1 = holds the token at
                                  position p, -(p + 1) = position p, whose key was masked */
    /* 1: the call starts a sequence: the library empties state, normalizer (and the
     * window buffers) itself before running, then writes them as usual; position must
     * be 0. Under a context cap (evaluation mode, or a license with max_seq_len) a state
     * is accepted only this way: the core cannot verify the position of a state the
     * caller carries (LM_ERR_LICENSE); sequences continue through an lm_attn handle or
     * an lm_pool, whose positions the library keeps (docs/DESIGN.md, "Per-sequence
     * entitlements"). 0 (default): state holds `position` tokens already. */
    int fresh_state;
    /* Hybrid: the form of gamma_h from window_gate, LM_GATE_SIGMOID (default, and what an
     * older caller's shorter struct means) or LM_GATE_EXP (see lm_gate_form). */
    lm_gate_form window_gate_form;
} lm_core_args;

/* Fills the options of args with defaults (elu+1, normalised, eps 1e-6,
 * causal, precision auto, linear attention; the hybrid's W and s at their
 * defaults), clears its pointers and sets struct_size (inline, through
 * lm_core_args_init: see lm_attn_config_default). */
LM_API LM_NODISCARD lm_status lm_core_args_init(lm_core_args *args, size_t size);
LM_NODISCARD static inline lm_status lm_core_args_default(lm_core_args *args)
{
    return lm_core_args_init(args, sizeof *args);
}


/* Prefill on projected q, k, v. Hq % Hkv == 0 (query head h reads kv head
 * h / (Hq / Hkv)). Causal needs L == Lk. A masked key (key_padding_mask)
 * leaves the state exactly as it was, decay included. CPU: synchronous;
 * CUDA: queued on `stream`. Returns INVALID_ARG, UNSUPPORTED, LICENSE,
 * OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_linear_attn_prefill(const lm_core_args *args, void *stream);

/* Bytes of scratch lm_linear_attn_prefill needs for these args (their
 * shapes, options and device; no data is read; on the CPU also OpenMP's
 * thread count), into *bytes. 0 is a valid answer (none needed). Returns
 * the argument checks' statuses. */
LM_API LM_NODISCARD lm_status lm_linear_attn_prefill_workspace(const lm_core_args *args, size_t *bytes);

/* lm_linear_attn_prefill with the caller's scratch: `workspace` of
 * workspace_bytes bytes on q's device, at least the query's answer (else
 * INVALID_ARG). It then allocates nothing, and on CUDA it can be captured
 * in a CUDA graph. */
LM_API LM_NODISCARD lm_status lm_linear_attn_prefill_ws(const lm_core_args *args, void *workspace,
                                                        size_t workspace_bytes, void *stream);

/* One decode step for all B x H heads: L = Lk = 1, causal, state required.
 * On CUDA: no allocation, no host synchronisation, graph-capturable. */
LM_API LM_NODISCARD lm_status lm_linear_attn_decode(const lm_core_args *args, void *stream);

/* Gradients of lm_linear_attn_prefill, for training. */
typedef struct lm_core_grads {
    uint32_t struct_size; /* sizeof(lm_core_grads): see "ABI rule for structs" */
    const lm_tensor *dout;         /* [B, L, Hq, Dv]   gradient of out, q's dtype */
    lm_tensor *dq;                 /* [B, L, Hq, Dk]   written */
    lm_tensor *dk;                 /* [B, Lk, Hkv, Dk] written */
    lm_tensor *dv;                 /* [B, Lk, Hkv, Dv] written */
    const float *dstate_out;       /* [B, Hkv, Dk, Dv] gradient of the final state, or NULL = 0 */
    const float *dnormalizer_out;  /* [B, Hkv, Dk], given exactly with dstate_out */
    float *dstate_in;              /* [B, Hkv, Dk, Dv] gradient of the initial state, or NULL */
    float *dnormalizer_in;         /* [B, Hkv, Dk], given exactly with dstate_in */
} lm_core_grads;

/* Backward of lm_linear_attn_prefill: args exactly as given to the prefill,
 * except that args->state / args->normalizer hold the INITIAL state (or NULL
 * for an empty one) and are only read; args->out is not used (may be NULL).
 * dq, dk, dv are overwritten (dk, dv summed over the query heads of a group,
 * zero for masked keys) and may not alias the inputs, dout or each other;
 * dstate_in may not overlap the state or dstate_out. A sequence split in two
 * chains: the backward of the second part (from the state after the first)
 * gives dstate_in, which is the dstate_out of the first part's backward.
 * Nothing from the forward is needed: states are recomputed from a few
 * checkpoints, so extra memory grows as sqrt(L), never as L (CPU: about
 * 300 KB per thread at L = 128K, Dk = Dv = 64). CPU: synchronous, parallel
 * over batch x kv heads. Returns INVALID_ARG, UNSUPPORTED (a backend without
 * a backward; hybrid attention), LICENSE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_linear_attn_backward(const lm_core_args *args, const lm_core_grads *grads,
                                                      void *stream);

/* Folds keys and values into a state, with no queries and no outputs:
 *     S <- g^Lk S + sum_s g^(Lk-1-s) phi(k_s) v_s^T,   z <- g^Lk z + sum_s g^(Lk-1-s) phi(k_s)
 * per batch row and kv head (masked keys add nothing): the final state a
 * causal prefill over these keys would leave, for the cost of its state
 * update alone. From a zero state it is one segment's contribution, which
 * is how context parallelism (liquid_memory.distributed) combines segments
 * held by different GPUs. Reads args->k, v, key_padding_mask, state and
 * normalizer (both required: [B, Hkv, Dk, Dv] and [B, Hkv, Dk] fp32 on k's
 * device, read then overwritten), position (license), feature_map, decay and
 * precision; q, out and is_causal are not read (q and out may be NULL), and
 * normalize, eps and scale do not change the result. CPU: synchronous; CUDA:
 * queued on `stream`. Returns INVALID_ARG, UNSUPPORTED, LICENSE,
 * OUT_OF_MEMORY, CUDA; a failed call leaves the state as it was. */
LM_API LM_NODISCARD lm_status lm_linear_attn_absorb(const lm_core_args *args, void *stream);

/* ------------------------------------------------------------------------ */
/* Engine: a state pool, packed variable-length prefill, indexed decode     */
/* ------------------------------------------------------------------------ */

/* For inference servers with continuous batching: many sequences at once,
 * joining and leaving every step, prompts packed back to back.
 *
 *   - A pool (lm_pool) holds the recurrent states of N slots of ONE layer in
 *     memory the caller owns: S [N, Hkv, Dk, Dv] and z [N, Hkv, Dk], fp32,
 *     with any distance between slots. The library keeps how many tokens
 *     each slot has absorbed (its position; CUDA: in device memory, updated
 *     by the kernels). A sequence holds one slot per layer for its life.
 *     A hybrid pool (lm_pool_config.attention) also holds each slot's window
 *     (keys, values, positions: see lm_pool_config), which every call and
 *     slot operation below covers.
 *   - lm_pool_prefill takes q, k, v packed as [T, H, D] with cu_seqlens:
 *     sequence i is tokens cu_seqlens[i] .. cu_seqlens[i+1]-1, continuing
 *     the state of slots[i] (or starting it afresh), causal. A decode row is
 *     a sequence of length 1, so prefills and decodes mix in one call.
 *   - lm_pool_decode: one token for each of B rows, row b continuing slot
 *     slots[b] (-1: a padding row, nothing read or written). No allocation,
 *     no host synchronisation; on CUDA the slot indices are read from device
 *     memory by the kernel, so the call can be captured in a CUDA graph
 *     once and replayed with new indices and inputs every step.
 *   - Slots are copied (fork, prefix caching), zeroed, and exported to /
 *     imported from a versioned host blob (save, migrate, swap to host).
 * A pool does no cross-stream ordering: queue a pool's calls on one stream,
 * or order them with events. Pools are independent: one per layer, each its
 * own thread's if wanted; one pool is used by one thread at a time.
 *
 * Per-row failure. Arguments are checked first, whole: a bad pointer, shape,
 * cu_seqlens, slot index (out of range, or one slot twice in a call) or
 * workspace fails the call with nothing written. After that, one row can
 * fail alone only on the license (its context over the limit):
 *   - row_status NULL: the call fails with LM_ERR_LICENSE, nothing written;
 *   - row_status given: the other rows run; the failed row's slot, position
 *     and outputs are left as they were; row_status[i] says LM_OK or
 *     LM_ERR_LICENSE per row (prefill: per sequence); the call returns LM_OK.
 * CUDA decode reads its indices on the device, so its checks run there: a
 * row whose index is out of range, or whose slot is at the license's limit,
 * is skipped (nothing written) and marked in row_status when given (device
 * memory then); two rows naming one slot are not detected there. */

typedef struct lm_pool lm_pool; /* opaque */

typedef struct lm_pool_config {
    uint32_t struct_size; /* sizeof(lm_pool_config): see "ABI rule for structs" */
    int64_t num_slots;    /* N > 0 */
    int num_kv_heads;     /* Hkv > 0 */
    int head_dim;         /* Dk > 0 */
    int head_dim_v;       /* Dv: 0 = head_dim */
    lm_device device;
    int cuda_device;      /* CUDA device ordinal of the memory, -1 = the current one */
    /* The caller's memory, fp32 on `device`, borrowed for the pool's life:
     * slot i's S [Hkv, Dk, Dv] (contiguous) starts at state + i * state_stride,
     * its z [Hkv, Dk] at normalizer + i * normalizer_stride (the slots may
     * interleave with other data, e.g. every layer's slot i side by side). */
    float *state;
    float *normalizer;
    int64_t state_stride;      /* floats between slots of S: 0 = Hkv * Dk * Dv */
    int64_t normalizer_stride; /* floats between slots of z: 0 = Hkv * Dk */
    /* The attention of every call on the pool (the layer's options). */
    lm_feature_map feature_map;
    int normalize;
    float eps;
    float scale;          /* 0 = 1/sqrt(Dk) */
    const float *decay;   /* NULL or Hkv host values in (0, 1]; copied */
    lm_precision precision;
    int num_threads;      /* CPU: OpenMP threads per call, 0 = the OpenMP default */
    /* Hybrid pools (docs/DESIGN.md §7 "The hybrid mode in the pool", §9): with
     * LM_ATTENTION_HYBRID every call on the pool is hybrid attention (window W,
     * sinks s; normalize = 1 and no decay, else INVALID_ARG / UNSUPPORTED as
     * for the core), and each slot also holds the window of §9.2 in the
     * caller's memory: its keys [Hkv, s + W, Dk] and values [Hkv, s + W, Dv]
     * (fp32) and positions [Hkv, s + W] (int32), slot i's at base + i * stride
     * elements (0 = packed), like S and z. lm_pool_create empties them too.
     * The gate is per query head and belongs to the layer like decay, so it
     * lives here (copied at create; a decode passes it to the kernel by value,
     * nothing per call), and the pool then needs the layer's query heads:
     * num_heads (Hq, a multiple of Hkv) is required with window_gate and makes
     * every call's q have Hq heads; 0 = any Hq, every gate 0 (gamma = 1/2).
     * A struct_size that ends before `attention` (a caller of an older
     * header) gets a linear pool. */
    lm_attention attention;   /* LM_ATTENTION_LINEAR (default) or LM_ATTENTION_HYBRID */
    int window;               /* W >= 1 (default LM_HYBRID_WINDOW_DEFAULT) */
    int sinks;                /* s >= 0 (default LM_HYBRID_SINKS_DEFAULT) */
    int num_heads;            /* Hq of the calls, 0 = any (then no window_gate) */
    const float *window_gate; /* num_heads logits g_h, NULL = all 0; copied */
    float *window_keys;       /* slot i: [Hkv, s + W, Dk] at window_keys + i * window_keys_stride */
    float *window_values;     /* slot i: [Hkv, s + W, Dv] */
    int32_t *window_pos;      /* slot i: [Hkv, s + W]: 0 empty, p + 1, -(p + 1) masked */
    int64_t window_keys_stride;   /* floats between slots: 0 = Hkv (s + W) Dk */
    int64_t window_values_stride; /* floats: 0 = Hkv (s + W) Dv */
    int64_t window_pos_stride;    /* int32s: 0 = Hkv (s + W) */
    /* Hybrid: the form of gamma_h from window_gate (lm_gate_form; as lm_attn_config's):
     * LM_GATE_SIGMOID (default, and what an older caller's shorter struct means) or
     * LM_GATE_EXP (|g_h| <= LM_HYBRID_GATE_EXP_MAX). */
    lm_gate_form window_gate_form;
} lm_pool_config;

/* Fills cfg with defaults (elu+1, normalised, eps 1e-6, no decay, precision
 * auto, CPU, contiguous slots, no memory: set state and normalizer) and
 * sets struct_size (inline, through lm_pool_config_init: see
 * lm_attn_config_default). Returns INVALID_ARG when cfg is NULL. */
LM_API LM_NODISCARD lm_status lm_pool_config_init(lm_pool_config *cfg, size_t size, int64_t num_slots,
                                                  int num_kv_heads, int head_dim);
LM_NODISCARD static inline lm_status lm_pool_config_default(lm_pool_config *cfg, int64_t num_slots,
                                                            int num_kv_heads, int head_dim)
{
    return lm_pool_config_init(cfg, sizeof *cfg, num_slots, num_kv_heads, head_dim);
}

/* Creates a pool over the caller's memory: checks the configuration,
 * allocates the per-slot positions (CUDA: N int64 in device memory) and
 * empties every slot (zeroes the slots' bytes of S and z, nothing between
 * them; synchronous).
 * Returns INVALID_ARG, NO_DEVICE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_pool_create(const lm_pool_config *cfg, lm_pool **out);

/* Frees the pool (not the caller's memory); NULL is ignored. CUDA: call it
 * once the pool's queued work is done. */
LM_API void lm_pool_destroy(lm_pool *pool);

/* Sequence flag of lm_prefill_args.flags. */
#define LM_SEQ_FRESH 1u /* start from an empty state: the slot's state and position are dropped */

typedef struct lm_prefill_args {
    uint32_t struct_size;  /* sizeof(lm_prefill_args): see "ABI rule for structs" */
    const lm_tensor *q;    /* [T, Hq, Dk]  BF16/F16/F32 on the pool's device, packed */
    const lm_tensor *k;    /* [T, Hkv, Dk] same dtype */
    const lm_tensor *v;    /* [T, Hkv, Dv] same dtype */
    lm_tensor *out;        /* [T, Hq, Dv]  same dtype; may not overlap q, k, v */
    int32_t num_seqs;      /* N >= 1 sequences */
    const int32_t *cu_seqlens; /* host, N + 1: 0 = cu_seqlens[0] <= ... <= cu_seqlens[N] = T */
    const int32_t *slots;  /* host, N: sequence i's slot, each slot at most once per call;
                              -1 = no slot (starts empty, its final state is dropped) */
    const uint8_t *flags;  /* host, N: LM_SEQ_* bits per sequence, or NULL = all 0
                              (every sequence continues its slot) */
    void *workspace;       /* lm_pool_prefill_workspace bytes on the pool's device, or NULL:
                              the call allocates its own (CPU malloc, CUDA stream-ordered) */
    size_t workspace_bytes;
    lm_status *row_status; /* host, N, or NULL: see "Per-row failure" */
} lm_prefill_args;

/* Bytes of workspace lm_pool_prefill needs for args (their lengths, shapes
 * and the pool's thread count; no tensor data is read). 0 is a valid answer
 * (always, for a hybrid pool: the hybrid core allocates its own scratch). */
LM_API LM_NODISCARD lm_status lm_pool_prefill_workspace(const lm_pool *pool, const lm_prefill_args *args,
                                                        size_t *bytes);

/* Causal attention over every sequence of args, each from its slot's state
 * (or an empty one: LM_SEQ_FRESH, slot -1), leaving its final state in the
 * slot and the slot's position advanced by its length (set to it when
 * fresh). A sequence of length 0 with LM_SEQ_FRESH empties its slot. The
 * result equals each sequence run alone through lm_linear_attn_prefill
 * from the slot's state, within rounding. Precision auto is decided per
 * sequence. CPU: synchronous. CUDA: queued on `stream` (a cudaStream_t, NULL
 * = default); tensors need stride 1 on their last dimension; sequences of
 * length 1 continuing a slot run as one decode launch, longer ones as
 * prefills of their own. A hybrid pool runs every sequence through the
 * hybrid core prefill on its slot, but on CUDA its sequences of length 1
 * with a slot (continuing or fresh) run as one hybrid decode launch, as a
 * linear pool's do; on CUDA, a hybrid prefill continuing a slot after
 * decode steps first reads the slots' positions back (a synchronisation:
 * UNSUPPORTED under graph capture), and a slot stops at 2^31 - 1 tokens
 * (UNSUPPORTED). Returns INVALID_ARG, UNSUPPORTED, LICENSE,
 * OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_pool_prefill(lm_pool *pool, const lm_prefill_args *args, void *stream);

typedef struct lm_decode_args {
    uint32_t struct_size;  /* sizeof(lm_decode_args): see "ABI rule for structs" */
    const lm_tensor *q;    /* [B, Hq, Dk]  one token per row, BF16/F16/F32 */
    const lm_tensor *k;    /* [B, Hkv, Dk] */
    const lm_tensor *v;    /* [B, Hkv, Dv] */
    lm_tensor *out;        /* [B, Hq, Dv]; a padding row's is not written */
    const int32_t *slots;  /* B indices on the pool's device (CUDA: device memory): row b
                              continues slot slots[b]; -1 = padding row; distinct otherwise */
    void *workspace;       /* lm_pool_decode_workspace bytes (CPU; CUDA needs none), or
                              NULL: the call allocates its own */
    size_t workspace_bytes;
    int32_t *row_status;   /* B lm_status values on the pool's device, or NULL: see
                              "Per-row failure" (padding rows: LM_OK) */
} lm_decode_args;

/* Bytes of workspace lm_pool_decode needs for B rows (CPU: scratch per
 * thread, 0 for a hybrid pool, whose steps allocate their own; CUDA: 0). */
LM_API LM_NODISCARD lm_status lm_pool_decode_workspace(const lm_pool *pool, const lm_decode_args *args,
                                                       size_t *bytes);

/* One decode step for every non-padding row, in place on its slot: the
 * state absorbs the row's key and value, the output reads it, the slot's
 * position grows by one. CPU: synchronous, parallel over rows x kv heads.
 * CUDA: queued on `stream`, no allocation, no host synchronisation, no
 * host read of the indices: graph-capturable (the license's limit and the
 * pool's options are taken when the call is made, or captured). Returns
 * INVALID_ARG, UNSUPPORTED, LICENSE, OUT_OF_MEMORY, CUDA. */
LM_API LM_NODISCARD lm_status lm_pool_decode(lm_pool *pool, const lm_decode_args *args, void *stream);

/* Empties slot `slot` (state and position 0). CUDA: queued on `stream`. */
LM_API LM_NODISCARD lm_status lm_pool_slot_zero(lm_pool *pool, int64_t slot, void *stream);

/* Slot dst becomes a copy of slot src, state and position (fork a sequence,
 * or reuse a cached prefix). dst == src does nothing. CUDA: queued on
 * `stream`, no host synchronisation. */
LM_API LM_NODISCARD lm_status lm_pool_slot_copy(lm_pool *pool, int64_t dst, int64_t src, void *stream);

/* Tokens absorbed in slot `slot`, into *tokens. CUDA: waits for `stream`. */
LM_API LM_NODISCARD lm_status lm_pool_slot_position(const lm_pool *pool, int64_t slot, int64_t *tokens,
                                                    void *stream);

/* Size in bytes of a slot's blob (header, position, fp32 S and z, a hybrid
 * pool's window, and a 32-byte tag keyed per process). */
LM_API LM_NODISCARD lm_status lm_pool_slot_blob_size(const lm_pool *pool, size_t *bytes);

/* Copies slot `slot` into host memory buf (at least lm_pool_slot_blob_size
 * bytes): a versioned blob ("LMSLOT01", format version, head counts and
 * dims, position, then S and z), readable by lm_pool_slot_import of any
 * pool with the same Hkv, Dk and Dv, on any device. A hybrid pool writes
 * format 2 (the header adds the attention, W and s; the window's keys,
 * values and positions follow z), read only by hybrid pools of the same W
 * and s; a linear pool still writes format 1 and reads both. CUDA: waits
 * for `stream`. */
LM_API LM_NODISCARD lm_status lm_pool_slot_export(const lm_pool *pool, int64_t slot, void *buf, size_t bytes,
                                                  void *stream);

/* Replaces slot `slot` with a blob of lm_pool_slot_export; the blob is
 * checked (magic, version, sizes, mode, position; hybrid: the window's
 * positions agree with it) before anything changes. Under
 * a context cap only this process's unaltered blobs are taken (LICENSE), as
 * for lm_attn_set_state.
 * CUDA: the copy is queued on `stream` and complete when the call returns. */
LM_API LM_NODISCARD lm_status lm_pool_slot_import(lm_pool *pool, int64_t slot, const void *buf, size_t bytes,
                                                  void *stream);

/* ------------------------------------------------------------------------ */
/* License                                                                  */
/* ------------------------------------------------------------------------ */

/* Liquid Memory is licensed per customer with signed tokens
 * ("LM2.<payload>.<signature>", Ed25519; "LM1." tokens are still read;
 * README_INTEGRATION.md, "Licensing and provisioning", has the format and
 * how to get one). The library trusts a small compiled-in keyring (the
 * vendor's current key and, during a rotation, the next one) and refuses
 * the license ids on a compiled-in revocation list.
 *
 * The token in force comes from, in this order: lm_license_set; else the
 * environment variable LM_LICENSE (the token itself); else LM_LICENSE_FILE
 * (the path of a file holding it); else ~/.config/liquid-memory/license.
 * An empty variable counts as unset; whitespace around a token is ignored.
 *
 * Three modes:
 *   - evaluation: no token anywhere. Everything works up to
 *     LM_EVAL_MAX_TOKENS tokens of context; beyond, LM_ERR_LICENSE with a
 *     message saying how to install a license. The first call on each
 *     thread leaves an "evaluation mode" notice in lm_last_error().
 *   - licensed: a valid token. Its max_seq_len (0 = unlimited) applies.
 *   - invalid: a token was found but refused (altered or foreign signature,
 *     unknown version or key, revoked, expired, not yet valid, clock set
 *     back, bound to another machine, or LM_LICENSE_FILE / the default file
 *     unreadable). Every call that the gate guards then fails with
 *     LM_ERR_LICENSE and the reason: a broken license is never quietly
 *     treated as evaluation. Remove it to evaluate.
 * "Context" is the prefill length (the longer of queries and keys), plus
 * the tokens already in the state when a forward continues it; a decode
 * step needs position + 1 (a step after a 4096-token forward is token 4097).
 * A refused call changes nothing. Context is counted per sequence (batch
 * rows and pool slots each on their own); under a cap the library also
 * refuses what would reset a count: an altered or foreign state blob, a
 * core call with a carried state (fresh_state = 0), and capturing into a
 * CUDA graph a call that continues a host-counted sequence (docs/DESIGN.md
 * §6.1). A replayed graph checks no license; lm_pool_decode's kernel keeps
 * the slot count on the device.
 *
 * The token is looked up and its signature verified once per process, on
 * first use; after that a check reads no file or variable (changing them
 * has no effect until lm_license_reload, lm_license_set or a restart),
 * costs a lock and a clock read, and makes no CUDA call, so it is safe in
 * the decode hot path and inside CUDA graph capture. Expiry is checked on
 * every call, so a license that expires during a run stops working then;
 * a CUDA graph's replays run no host code and are not checked (the next
 * call outside a graph, and the next capture, are).
 * Clock: a license that expires is refused while the clock is more than a
 * day behind its issue time or behind the latest time already seen (in this
 * process, or recorded in ~/.config/liquid-memory/clock, which the library
 * keeps best-effort when that directory can be written).
 *
 * Threads: every function in this section is thread-safe. */
#define LM_EVAL_MAX_TOKENS 4096

typedef enum lm_license_mode {
    LM_LICENSE_EVALUATION = 0, /* no license found: capped at LM_EVAL_MAX_TOKENS */
    LM_LICENSE_LICENSED = 1,   /* a valid license applies */
    LM_LICENSE_INVALID = 2     /* a license was found but refused: `reason` says why */
} lm_license_mode;

typedef struct lm_license_details {
    uint32_t struct_size; /* sizeof(lm_license_details): see "ABI rule for structs" */
    lm_license_mode mode;
    int development_build;  /* 1: built with a development key, not the vendor's */
    char licensee[129];     /* NUL-terminated UTF-8, "" when unknown */
    char license_id[33];    /* 16 bytes as hex, "" when unknown */
    int64_t issued, not_before, expires; /* unix seconds (UTC); expires 0 = never */
    int64_t max_seq_len;    /* tokens of context: the license's (0 = unlimited), or
                               LM_EVAL_MAX_TOKENS in evaluation mode */
    uint64_t features;      /* feature bits of the license */
    char source[256];       /* "lm_license_set", "LM_LICENSE", "LM_LICENSE_FILE=<path>",
                               the default file's path, or "none" */
    char reason[256];       /* why it was refused, when mode is INVALID; else "" */
    char key_id[17];        /* the signing key's id as hex (payload format 2), "" for a
                               format 1 token or when unknown */
} lm_license_details;

/* Installs a license token for this process, verified now (signature,
 * fields, validity window, host binding). It takes precedence over the
 * environment and the default file. NULL forgets a token set before, so the
 * lookup above applies again. On failure the license in force is unchanged.
 * Returns INVALID_ARG when `token` is not a token at all (empty, too long,
 * malformed, bad base64), LICENSE when it is refused (signature, version,
 * unknown key, fields, revoked, expired, not yet valid, clock set back,
 * other machine); lm_last_error says why. */
LM_API LM_NODISCARD lm_status lm_license_set(const char *token);

/* Fills *out with the license in force, for UIs and logs; in mode INVALID
 * the fields are those of the refused token when its signature verified
 * (e.g. an expired license), else empty. Returns INVALID_ARG for NULL. */
LM_API LM_NODISCARD lm_status lm_license_info(lm_license_details *out);

/* Looks up the license again (LM_LICENSE, LM_LICENSE_FILE, the default
 * file: the order above) and verifies it, for long-running servers that
 * receive a renewed license (e.g. on SIGHUP) without restarting. The found
 * license replaces the one from the environment only when it is in force
 * now; otherwise nothing changes, so a bad or missing file never takes away
 * a license that still works. A token installed with lm_license_set keeps
 * precedence (lm_license_set(NULL) lets the reloaded one apply). Reads the
 * environment: do not call it while another thread changes variables.
 * Returns LICENSE when no license is found or the found one is refused
 * (lm_last_error says why, as for lm_license_set), INVALID_ARG when the
 * text found is not a token at all. */
LM_API LM_NODISCARD lm_status lm_license_reload(void);

#ifdef __cplusplus
}
#endif

#endif /* LIQUID_MEMORY_H */
