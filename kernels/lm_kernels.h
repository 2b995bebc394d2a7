/*
 * lm_kernels.h - what the CUDA kernels take, in plain C: the parameter structs
 * the host glue (src/cuda_*.c) fills, and the extern "C" launchers. Strides
 * are in elements; every launcher queues work on `stream` and returns an
 * lm_status (launch errors included), never synchronising.
 */
#ifndef LM_KERNELS_H
#define LM_KERNELS_H

#include "liquid_memory.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per chunk of the chunked-parallel algorithm. */
#define LMK_CHUNK 64
/* The longest segment (tokens) of a compensated call on the v2 prefill: its
 * state sums 1,024 chunk increments with plain fp32 adds (worst case
 * 1,024 x 2^-24 relative), the segments are summed with Kahan by the scan
 * (bench/NOTES.md, "Kernel v2 compensated"). */
#define LMK_V2_COMP_SEG 65536
/* Decay values travel by value in the kernel parameters (no copy to the
 * device, so decode stays graph-capturable); this many kv heads at most. */
#define LMK_MAX_DECAY_HEADS 1024
/* Query heads whose gates travel by value in the kernel parameters. */
#define LMK_MAX_HYBRID_HEADS 1024
/* Largest Dk the prefill kernels hold on chip. */
#define LMK_MAX_DK 256

/* fp32 state of n = B * Hkv heads: S [n][Dk][Dv], z [n][Dk]; one copy per
 * segment, seg_S / seg_z floats apart (0 = the same copy for every segment). */
typedef struct lmk_state {
    float *S, *z;
    int64_t seg_S, seg_z;
} lmk_state;

typedef enum lmk_kind {
    LMK_CAUSAL = 0,  /* queries and keys: outputs, final state of the last segment */
    LMK_ABSORB = 1,  /* keys only: each segment's state increment into out_state */
    LMK_READOUT = 2  /* queries only, against the fixed state in `in` (bidirectional) */
} lmk_kind;

typedef struct lmk_attend {
    const void *q, *k, *v; /* [B, L, Hq, Dk], [B, L, Hkv, Dk], [B, L, Hkv, Dv] */
    void *out;             /* [B, L, Hq, Dv] */
    int64_t sq[4], sk[4], sv[4], so[4];
    const uint8_t *mask;   /* [B, L] nonzero = ignore key, or NULL */
    int64_t mask_s[2];
    int dtype;             /* lm_dtype of q, k, v, out */
    int B, Hq, Hkv, Dk, Dv;
    int64_t L;             /* tokens: queries (CAUSAL, READOUT) or keys (ABSORB) */
    int64_t seg_len;       /* tokens per segment, a multiple of LMK_CHUNK */
    int nseg;              /* segments: ceil(L / seg_len) */
    lmk_state in;          /* state each segment starts from; S == NULL: empty */
    lmk_state out_state;   /* CAUSAL: final state (S == NULL: none); ABSORB: increments */
    int feature_map, normalize, compensated;
    float eps, scale;
    int aligned;           /* set by the launcher: 16-byte rows, vector loads */
    int cluster;           /* set by the launcher: CTAs of a head sharing q, k (1 = none) */
    int v2;                /* host: run the v2 kernel where it takes the call (unless LM_ATTEND_KERNEL=v1) */
    int v2_cpasync;        /* host: v2 loads by cp.async even where TMA could (LM_V2_LOADS=cpasync) */
    /* CAUSAL on the v2 kernel only (lmk_attend_v2_runs): each row's normaliser
     * d_i = phi(q_i) . z_i (z_i: the initial z plus phi(k) of the unmasked keys
     * up to row i; no eps) as fp32 at den[(b * Hq + h) * L + i], every row of
     * the call; NULL = none (no store). Internal: the hybrid prefill's body
     * reads it (src/cuda_hybrid.c). A launch that would not run v2 refuses it. */
    float *den;
    /* CAUSAL on the v2 kernel only: the window part of a hybrid prefill fused
     * into this launch (lmk_window below; lmk_attend_window_refusal says where),
     * or NULL. A host pointer: the launcher copies it into the parameters. */
    const struct lmk_window *win;
    int has_decay;
    float decay[LMK_MAX_DECAY_HEADS]; /* per kv head, when has_decay */
} lmk_attend;

/* Prefix over segments of the state increments of LMK_ABSORB.
 *   prefix = 1 (causal): part[s] becomes the state segment s starts from,
 *     part[0] = the initial state, part[s+1] = g^len part[s] + increment[s];
 *     increments are read from part[0 .. nseg-2].
 *   prefix = 0 (fold): total = the initial state carried through every
 *     segment, run = g^len run + increment[s] for part[0 .. nseg-1] (no decay,
 *     bidirectional: initial + sum); the last segment has last_tokens tokens.
 *     total may be the initial state itself (each element is read, then
 *     written, by one thread). */
typedef struct lmk_scan {
    lmk_state part;
    const float *S0, *z0; /* initial state, or NULL = empty */
    float *S_total, *z_total;
    int n, Hkv, Dk, Dv, nseg, prefix, compensated;
    int64_t seg_chunks;   /* chunks per segment (decay over a segment) */
    int64_t last_tokens;  /* prefix = 0 with decay: tokens of the last segment */
    /* With a key padding mask, the decay over each step's segment (it counts
     * unmasked tokens only, lmk_seg_decay): head h, step s reads
     * seg_g[h * seg_g_h + s * seg_g_s]; NULL = g^(seg_chunks * LMK_CHUNK). */
    const float *seg_g;
    int64_t seg_g_h, seg_g_s;
    int has_decay;
    float decay[LMK_MAX_DECAY_HEADS];
} lmk_scan;

/* The decay over each segment of a masked sequence: out[(b * Hkv + h) *
 * nseg + s] = decay[h]^(the unmasked tokens of batch row b in segment s),
 * segments of seg_len tokens over L (a masked key does not decay the state). */
typedef struct lmk_seg_decay {
    const uint8_t *mask;
    int64_t mask_s[2];
    float *out;
    int B, Hkv, nseg;
    int64_t L, seg_len;
    float decay[LMK_MAX_DECAY_HEADS];
} lmk_seg_decay;

lm_status lmk_seg_decay_launch(const lmk_seg_decay *p, void *stream);

/* One decode step, in place on the state. Views are [B, Hq, Dk] etc. (the
 * token dimension dropped): s[0] batch stride, s[1] head stride. */
typedef struct lmk_decode {
    const void *q, *k, *v;
    void *out;
    int64_t sq[2], sk[2], sv[2], so[2];
    const uint8_t *mask; /* [B] nonzero = ignore this token's key, or NULL */
    int64_t mask_s0;
    float *S, *z;        /* [B, Hkv, Dk, Dv], [B, Hkv, Dk] fp32, updated in place; or a pool: */
    /* Pool rows: row b continues slot slots[b] (device; -1 = padding, nothing
     * read or written; >= nslots: refused), whose S [Hkv, Dk, Dv] is at
     * S + slot * S_slot (z likewise). slots NULL: row b is slot b of the
     * contiguous S, z above (S_slot = 0). */
    const int32_t *slots;
    int64_t S_slot, z_slot;
    int nslots;
    int64_t *pos;        /* tokens per slot, advanced by one per row, or NULL */
    int32_t *arrive;     /* per slot, 0 between calls: the row's CTAs counted in */
    int64_t limit;       /* a slot at limit tokens is refused (0: none) */
    int32_t *status;     /* per row: LM_OK, LM_ERR_LICENSE, LM_ERR_INVALID_ARG; or NULL */
    int dtype, B, Hq, Hkv, Dk, Dv;
    int feature_map, normalize;
    float eps, scale;
    int has_decay;
    float decay[LMK_MAX_DECAY_HEADS];
} lmk_decode;

/* Rows given by value (the decode rows of a varlen prefill): row b is token
 * row[b].tok of q, k, v, out, continues slot row[b].slot, from an empty
 * state when row[b].fresh. d.B rows, at most LMK_DECODE_TABLE. */
#define LMK_DECODE_TABLE 1024
typedef struct lmk_decode_row {
    int32_t tok, slot, fresh;
} lmk_decode_row;
typedef struct lmk_decode_table {
    lmk_decode d;
    lmk_decode_row row[LMK_DECODE_TABLE];
} lmk_decode_table;

/* Positions of a varlen prefill's sequences: pos[slot] = (fresh ? 0 :
 * pos[slot]) + len for each of n entries (at most LMK_POS_TABLE). */
#define LMK_POS_TABLE 1024
typedef struct lmk_pos_update {
    int64_t *pos;
    int n;
    struct {
        int32_t slot, len, fresh;
    } e[LMK_POS_TABLE];
} lmk_pos_update;

lm_status lmk_pos_update_launch(const lmk_pos_update *p, void *stream);

/* The core backward (kernels/backward.cu): one CTA per (batch row, kv head,
 * segment) walks its segment's chunks, over the G query heads of the group.
 * QUERIES goes forwards with the state S|z, KEYS backwards with the adjoint
 * R|r (the gradient of the state); each has an ABSORB kind that computes
 * only the segment's increment of its carry, for the scan. */
typedef enum lmk_bwd_kind {
    LMK_BWD_ABSORB_KEYS = 0,    /* keys: S|z increment of each segment into st (from 0) */
    LMK_BWD_QUERIES = 1,        /* queries: 1/d and dd per token into scal, dq; S|z from st,
                                   carried in place (causal) or fixed (bidirectional) */
    LMK_BWD_ABSORB_QUERIES = 2, /* queries: R|r increment of each segment into st (from 0;
                                   causal: the last segment from last_S|last_z) */
    LMK_BWD_KEYS = 3            /* keys: dk, dv; R|r from st, carried in place (causal: the
                                   last segment from last_S|last_z; segment 0 ends at fin) or
                                   fixed (bidirectional) */
} lmk_bwd_kind;

typedef struct lmk_bwd {
    const void *q, *k, *v, *dout; /* [B, L, Hq, Dk], [B, L, Hkv, Dk], [B, L, Hkv, Dv], [B, L, Hq, Dv] */
    void *dq, *dk, *dv;           /* like q, k, v; any strides (all four dims) */
    int64_t sq[4], sk[4], sv[4], sdo[4], sdq[4], sdk[4], sdv[4];
    const uint8_t *mask;          /* [B, L] nonzero = ignore key, or NULL */
    int64_t mask_s[2];
    int dtype, B, Hq, Hkv, Dk, Dv;
    int64_t L;                    /* tokens walked: queries (QUERIES kinds) or keys */
    int64_t seg_len;              /* tokens per segment, a multiple of LMK_CHUNK */
    int seg0, nseg;               /* this launch: segments seg0 .. seg0 + nseg - 1 */
    int last_seg;                 /* causal: the sequence's last segment */
    lmk_state st;                 /* carry per segment (seg_S = 0: one shared, read-only) */
    float *comp;                  /* Kahan compensation, Dk * Dv floats per CTA, or NULL */
    float *scal;                  /* [B, Hq, L, 2]: 1/(d + eps) (or scale) and dd per token */
    const float *last_S, *last_z; /* adjoint after the last token (dS_out), or NULL = 0 */
    float *fin_S, *fin_z;         /* causal KEYS: the adjoint before token 0 (dS_in), or NULL */
    int causal, feature_map, normalize;
    float eps, scale;
    int has_decay;
    float decay[LMK_MAX_DECAY_HEADS];
} lmk_bwd;

/* The passes of the tensor-core backward (src/cuda_backward_tc.c) besides
 * its attentions (kernels/bwd_parts.cu): causal, Hq == Hkv = H, bf16 views,
 * one CTA per (batch row x head, chunk); nch = ceil(L / LMK_CHUNK). */
typedef enum lmk_bp_kind {
    LMK_BP_PREP = 0,  /* a = phi(q), b = phi(k) as bf16; zs = per-chunk sums of phi(k) */
    LMK_BP_G = 1,     /* g = dout / d (or scale dout) as bf16, h = 1 / d (or 0, rs = 0);
                         reads zc */
    LMK_BP_H = 2,     /* normalised, after the da attention: h = -(phi(q) . da) / d,
                         rs = per-chunk sums of h phi(q) */
    LMK_BP_FINISH = 3 /* dq = (da + h z) phi'(q), dk = (db + r) phi'(k); reads zc, rc */
} lmk_bp_kind;

typedef struct lmk_bparts {
    const void *q, *k, *dout;     /* [B, L, H, Dk|Dk|Dv] */
    int64_t sq[4], sk[4], sdo[4];
    void *dq, *dk;                /* [B, L, H, Dk] */
    int64_t sdq[4], sdk[4];
    void *a, *b, *g;              /* bf16 scratch [B, L, H, Dk|Dk|Dv], contiguous */
    const void *da, *db;          /* bf16 scratch [B, L, H, Dk], contiguous */
    float *h;                     /* [B H][L] */
    float *zs, *zc;               /* [B H][nch][Dk]: sums of phi(k) per chunk; z before chunk c */
    float *rs, *rc;               /* the same of h phi(q); its sum after chunk c plus dz_out */
    int B, H, Dk, Dv;
    int64_t L;
    int feature_map, normalize;
    float eps, scale;
} lmk_bparts;

lm_status lmk_bparts_launch(const lmk_bparts *p, lmk_bp_kind kind, void *stream);
/* out[head][c] = init[head] + sums[head][c'] over the chunks c' before c
 * (reverse: after c), for n heads x D columns; total = init + all of them
 * (either pointer may be NULL: 0, none). */
lm_status lmk_chunk_scan_launch(const float *sums, float *out, const float *init, float *total,
                                int64_t n, int64_t nch, int D, int reverse, void *stream);
/* dst[i] = src[i]^T for n row-major rows x cols fp32 matrices. */
lm_status lmk_transpose_launch(const float *src, float *dst, int64_t n, int rows, int cols, void *stream);

/* CTAs of the backward kernel that fit on one SM for these head dims (0:
 * none, the GPU has too little shared memory), for planning segments. */
lm_status lmk_backward_blocks_per_sm(int Dk, int Dv, int *blocks);
lm_status lmk_backward_launch(const lmk_bwd *p, lmk_bwd_kind kind, void *stream);

/* Grid of an attention launch, for workspace sizing: number of CTAs. */
int64_t lmk_attend_ctas(const lmk_attend *p, lmk_kind kind);
/* Dynamic shared memory (bytes) the attention kernels need for dtype and Dk,
 * or 0 when that combination is not built. */
size_t lmk_attend_smem(int dtype, int Dk);

lm_status lmk_attend_launch(const lmk_attend *p, lmk_kind kind, void *stream);
/* The v2 prefill (kernels/attend_v2.cu, sm_90a): whether it takes calls of
 * this shape and kind on the current GPU (bf16, Dk = Dv = 64 or 128, no decay,
 * CAUSAL or ABSORB, compute capability 9.0; compensated calls too, with
 * segments of at most LMK_V2_COMP_SEG tokens), judged on the
 * structure alone; lmk_attend_launch also needs 16-byte rows for it and
 * falls back to v1 otherwise. */
int lmk_attend_v2_takes(const lmk_attend *p, lmk_kind kind);
/* Whether lmk_attend_launch runs this launch on v2: p->v2 (LM_ATTEND_KERNEL
 * not v1), lmk_attend_v2_takes and 16-byte rows; the one test both it and
 * the callers that need v2's den (the hybrid prefill) ask. */
int lmk_attend_v2_runs(const lmk_attend *p, lmk_kind kind);
lm_status lmk_attend_v2_launch(const lmk_attend *p, lmk_kind kind, void *stream);

/* The window part of a hybrid prefill (docs/DESIGN.md §9.3) inside v2's
 * CAUSAL launch over the body rows (src/cuda_hybrid.c: queries from row
 * W + sh of the call, keys and values from row sh, the delayed keys). Chunk c
 * of the delayed keys is also the window of the queries of chunk c (keys j > i
 * up to i + W) and, with chunk c + 1 (keys j <= i + W - 64), the whole window
 * of each body row: so W <= LMK_WINDOW_MAX. The sinks (positions < s) are a
 * 16-row tile, gathered beforehand (LMK_HYBRID_SINKS). The launch then writes
 * the normalised output o = (N + window) / (d + window sum + eps); its
 * lmk_attend says normalize = 1 and eps. */
#define LMK_WINDOW_MAX 64
#define LMK_WINDOW_SINKS 16
typedef struct lmk_window {
    int64_t Lk;                   /* rows of k and v from the launch's key base the window may
                                     read: the delayed keys + W (beyond: zeros) */
    const void *sink_k, *sink_v;  /* [B, Hkv, LMK_WINDOW_SINKS, Dk | Dv] bf16, contiguous */
    const uint32_t *sink_bits;    /* [B * Hkv]: bit j set = sink j is present */
    int W, ns;                    /* window (1 .. LMK_WINDOW_MAX), sinks (0 .. LMK_WINDOW_SINKS) */
    float scale;                  /* the softmax scale */
    float gamma[LMK_MAX_HYBRID_HEADS]; /* the gate per query head */
} lmk_window;
/* NULL where v2 runs p's CAUSAL launch with the window w fused
 * (lmk_attend_v2_runs, no key mask, W and ns in range, Hq <=
 * LMK_MAX_HYBRID_HEADS, TMA maps of q and of k and v over w->Lk rows
 * encodable), else why not (a constant string). */
const char *lmk_attend_window_refusal(const lmk_attend *p, const lmk_window *w);
lm_status lmk_scan_launch(const lmk_scan *p, void *stream);
lm_status lmk_decode_launch(const lmk_decode *p, void *stream);
lm_status lmk_decode_table_launch(const lmk_decode_table *p, void *stream);

/* A pool's varlen prefill as one CAUSAL launch of the v2 kernel
 * (kernels/attend_v2.cu): entry e is tokens t0 .. t0 + len - 1 of the packed
 * [1, T, H, D] views of `a`, run as one segment that continues slot `slot`
 * (-1: none, no state read or written; fresh: from an empty state). CTA x
 * runs entry x / Hq, query head x % Hq; the host orders the entries longest
 * first, so the grid's tail is short work. The table travels by value in
 * the kernel parameters (no copy from the host: graph-capturable, no sync);
 * lmk_attend alone is 4.4 KB (its decay array), so the block relies on the
 * 32 KB parameter limit of CUDA 12.1+ on Volta and newer, as
 * lmk_decode_table does: 512 entries of 16 bytes, 12.7 KB in all. */
#define LMK_PACK_TABLE 512
typedef struct lmk_pack_entry {
    int32_t t0, len, slot, fresh;
} lmk_pack_entry;
typedef struct lmk_attend_pack {
    lmk_attend a;         /* views, head counts, options (B = 1; L, seg_len, nseg, in, out_state unused) */
    float *S, *z;         /* the pool: slot s's S [Hkv, Dk, Dv] at S + s * S_slot, its z at z + s * z_slot */
    int64_t S_slot, z_slot;
    /* Entry e's final state at fin_S + e * Hkv * Dk * Dv (z: e * Hkv * Dk),
     * into the slots by lmk_attend_pack_copy_launch afterwards (with GQA the
     * query heads of a kv head each read its initial state, so none may
     * overwrite it). NULL: straight into the slot (Hq == Hkv only: one CTA
     * per kv head reads the slot's state, then writes it). */
    float *fin_S, *fin_z;
    int n;
    lmk_pack_entry e[LMK_PACK_TABLE];
} lmk_attend_pack;
/* Whether the packed launch takes calls of this shape on the current GPU:
 * lmk_attend_v2_takes for CAUSAL, not compensated, no key mask, 16-byte
 * rows (base and token / head strides of q, k, v, out). */
int lmk_attend_pack_takes(const lmk_attend *a);
lm_status lmk_attend_pack_launch(const lmk_attend_pack *p, void *stream);
/* Every entry's final state from fin_S, fin_z into its slot (slot >= 0). */
lm_status lmk_attend_pack_copy_launch(const lmk_attend_pack *p, void *stream);

/* ---- hybrid attention (docs/DESIGN.md §9; kernels/hybrid_*.cu) ---- */


/* What the hybrid prefill kernels share. The call covers positions P0 ..
 * P0 + L - 1; row r of q, k, v, out is position P0 + r. The window slots are
 * the state's (slot i < s: sink i; slot s + p % W: position p), read before
 * lmk_hybrid_ring writes the call's tokens into them. */
typedef struct lmk_hybrid {
    const void *q, *k, *v;  /* [B, L, Hq, Dk], [B, L, Hkv, Dk], [B, L, Hkv, Dv] */
    void *out;              /* [B, L, Hq, Dv] */
    int64_t sq[4], sk[4], sv[4], so[4];
    const uint8_t *mask;    /* [B, L] nonzero = ignore key, or NULL */
    int64_t mask_s[2];
    int dtype, B, Hq, Hkv, Dk, Dv, feature_map;
    int64_t L, P0, W, s;    /* the call's tokens, its first position, window, sinks */
    int64_t sh;             /* rows of the call that are sinks: max(0, min(L, s - P0)) */
    int64_t r0, r1;         /* rows this launch computes */
    float *S, *z;           /* [B, Hkv, Dk, Dv], [B, Hkv, Dk] the evicted tokens' state,
                               or NULL (head: read; fold: updated) */
    float *win_k, *win_v;   /* [B, Hkv, s + W, Dk | Dv], or NULL (no state) */
    int32_t *win_pos;       /* [B, Hkv, s + W] */
    float *zs;              /* [B Hkv][nch][Dk]: zsum writes the sums of phi(k) of each
                               64-row chunk of the delayed keys (rows sh .. L - W - 1) */
    const float *zc;        /* body: z before each of those chunks (lmk_chunk_scan_launch) */
    const float *den;       /* body: each row's phi(q) . z from the linear call's v2 epilogue,
                               [B, Hq, L - W - sh] (row r at r - W - sh), or NULL: pass A
                               computes it from zc (hybrid.cuh, hybrid_den) */
    int qb;                 /* body: query rows per CTA, 16, 32 or 64 (set by the launcher) */
    float eps, scale;       /* scale: the softmax scale */
    void *sink_k, *sink_v;  /* sinks: the window's sink tiles [B, Hkv, LMK_WINDOW_SINKS, Dk | Dv] bf16 */
    uint32_t *sink_bits;    /* sinks: [B * Hkv], bit j = sink j present (lmk_window) */
    int body_wmma;          /* host: the body stays on the WMMA kernel (hybrid_window.cu) even
                               where the register one (hybrid_body.cu) would take it
                               (LM_HYBRID_BODY=wmma) */
    float gamma[LMK_MAX_HYBRID_HEADS]; /* sigmoid(g_h) per query head */
} lmk_hybrid;

typedef enum lmk_hybrid_kind {
    LMK_HYBRID_HEAD = 0, /* rows [r0, r1) complete: window, S and z, the evicted ring slots */
    LMK_HYBRID_BODY = 1, /* rows [r0, r1) >= W + sh: window + the linear numerator already in
                            out (the linear kernel's) + den (or phi(q) . (zc + the chunk's sum)) */
    LMK_HYBRID_ZSUM = 2, /* zs: per-chunk sums of phi(k) of the delayed keys */
    LMK_HYBRID_FOLD = 3, /* S, z += the ring slots of positions P0 - W .. P0 - W + min(L, W) - 1 */
    LMK_HYBRID_RING = 4, /* the call's tokens into the window slots (sinks, the last W) */
    LMK_HYBRID_SINKS = 5 /* sink_k, sink_v, sink_bits: the s <= LMK_WINDOW_SINKS sinks as bf16
                            (state slots rounded, call rows copied), zero rows past s */
} lmk_hybrid_kind;

/* Bytes of shared memory the body kernel needs for these sizes and qb rows,
 * for the launcher's choice of qb (0: the window does not fit). */
size_t lmk_hybrid_body_smem(const lmk_hybrid *p, int qb);
/* UNSUPPORTED (with the reason) when some pass of the prefill cannot run
 * these sizes on the current GPU: checked before anything is queued. */
lm_status lmk_hybrid_check(const lmk_hybrid *p);
lm_status lmk_hybrid_launch(const lmk_hybrid *p, lmk_hybrid_kind kind, void *stream);

/* One hybrid decode step for every (batch row, kv head), in place on the
 * state; each row's position is the largest |win_pos| of its slots, so a
 * replayed graph continues. Views are [B, H, D] (token dimension dropped). */
typedef struct lmk_hybrid_decode {
    const void *q, *k, *v;
    void *out;
    int64_t sq[2], sk[2], sv[2], so[2];
    const uint8_t *mask;    /* [B], or NULL */
    int64_t mask_s0;
    float *S, *z, *win_k, *win_v;
    int32_t *win_pos;
    int dtype, B, Hq, Hkv, Dk, Dv, feature_map;
    int W, s;
    float eps, scale;
    /* Pool rows (lm_pool_decode on a hybrid pool), as lmk_decode's: row b
     * continues slot slots[b] (device; -1 = padding, nothing read or written;
     * >= nslots: refused), whose parts start at S + slot * S_slot, z + slot *
     * z_slot, win_k + slot * wk_slot, win_v + slot * wv_slot and win_pos +
     * slot * wp_slot (elements). slots NULL: row b is batch row b of the
     * contiguous buffers above. pos, arrive, limit, status: pool_row.cuh. */
    const int32_t *slots;
    int64_t S_slot, z_slot, wk_slot, wv_slot, wp_slot;
    int nslots;
    int64_t *pos;
    int32_t *arrive;
    int64_t limit;
    int32_t *status;
    float gamma[LMK_MAX_HYBRID_HEADS];
} lmk_hybrid_decode;

lm_status lmk_hybrid_decode_launch(const lmk_hybrid_decode *p, void *stream);
/* UNSUPPORTED (with the reason) when the launch of p would refuse its sizes
 * (query heads, Dv, shared memory for W + s): nothing queued, so a pool's
 * prefill checks its decode rows before anything runs. */
lm_status lmk_hybrid_decode_check(const lmk_hybrid_decode *p);

/* Rows given by value (the length-1 sequences of a hybrid pool's varlen
 * prefill), as lmk_decode_table's: row b is token row[b].tok of q, k, v,
 * out, continues slot row[b].slot (d.slots unused; d's slot strides, pos and
 * arrive as lm_pool_decode's), from an empty slot when row[b].fresh: the
 * caller has emptied its five parts first (stream-ordered), so the kernel
 * only restarts its position (0 before the step). d.B rows, at most
 * LMK_HYBRID_DECODE_TABLE. The block travels in the kernel parameters (no
 * copy from the host: no sync): lmk_hybrid_decode is 4,384 bytes (its
 * gates: 4 KB), 1024 rows of 12 bytes bring the block to 16,672, within the
 * 32 KB (32,764 bytes) parameter limit of CUDA 12.1+ on Volta and newer (a
 * static_assert in hybrid_decode.cu holds it there). */
#define LMK_HYBRID_DECODE_TABLE 1024
typedef struct lmk_hybrid_decode_table {
    lmk_hybrid_decode d;
    lmk_decode_row row[LMK_HYBRID_DECODE_TABLE];
} lmk_hybrid_decode_table;

lm_status lmk_hybrid_decode_table_launch(const lmk_hybrid_decode_table *p, void *stream);

/* ---- errors: a CUDA call that fails becomes an lm_status naming it ---- */

/* src/error.c (also in lm_impl.h): records the message, returns status. */
lm_status lmi_error(lm_status status, const char *fmt, ...);

/* Maps a cudaError_t (as int) to OUT_OF_MEMORY / NO_DEVICE / CUDA, recording
 * "what failed at file:line: the CUDA error" (src/cuda_error.c). */
lm_status lmi_cuda_fail(int err, const char *what, const char *file, int line);

#define LMI_CUDA_TRY(call)                                                  \
    do {                                                                    \
        int lmi_e_ = (int)(call);                                           \
        if (lmi_e_ != 0)                                                    \
            return lmi_cuda_fail(lmi_e_, #call, __FILE__, __LINE__);        \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif /* LM_KERNELS_H */
