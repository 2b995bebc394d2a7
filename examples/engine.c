/*
 * engine.c - continuous batching with a state pool: one attention layer of
 * an inference server serving four sequences on three slots.
 *
 *   step 0   A, B and C arrive: their prompts are prefilled packed in one call
 *   steps    the running sequences decode together, one row each, in one call
 *   step 3   B is done: its slot is freed (its decode row becomes padding)
 *   step 5   D arrives and takes B's slot: its prompt is prefilled in the same
 *            call as the others' next tokens (a decode row is a sequence of
 *            length 1 in a packed prefill)
 *
 * Every output is then checked against each sequence run alone through
 * lm_linear_attn_prefill. The tokens' q, k, v stand in for a model's
 * projections (a hash of sequence, position and index). Built and run by
 * `make test`; `make device-build` builds a CUDA copy (engine-cuda) that
 * does the same with every tensor, the pool and the slot indices in device
 * memory (bench/gpu_run.sh, phase engine). Exit status 0 when all agree.
 *
 * `engine --hybrid` runs the same with a hybrid pool (docs/DESIGN.md §9:
 * window W = 8, sinks s = 2, per-head gates): each slot then also holds its
 * window's keys, values and positions, and the check runs each sequence
 * alone through the core's hybrid prefill.
 */
#include <liquid_memory.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef ENGINE_CUDA
#include <cuda_runtime.h>
#define DEVICE LM_CUDA
static void *dev_alloc(size_t n)
{
    void *p = NULL;
    const cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess)
        fprintf(stderr, "engine: cudaMalloc: %s\n", cudaGetErrorString(e));
    return e == cudaSuccess ? p : NULL;
}
static void dev_free(void *p) { cudaFree(p); }
static void to_dev(void *d, const void *h, size_t n) { cudaMemcpy(d, h, n, cudaMemcpyHostToDevice); }
static void to_host(void *h, const void *d, size_t n) { cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost); }
#else
#define DEVICE LM_CPU
static void *dev_alloc(size_t n) { return malloc(n); }
static void dev_free(void *p) { free(p); }
static void to_dev(void *d, const void *h, size_t n) { memcpy(d, h, n); }
static void to_host(void *h, const void *d, size_t n) { memcpy(h, d, n); }
#endif

enum { HQ = 4, HKV = 2, D = 32, SLOTS = 3, NSEQ = 4, MAXT = 256, W = 8, SINKS = 2 };

/* The hybrid layer's gates, one logit per query head. */
static const float gate[HQ] = { 0.5f, -0.25f, 1.0f, 0.0f };

/* A sequence: when it arrives, its prompt and how many tokens it generates. */
typedef struct seq {
    const char *name;
    int arrives, prompt, generate;
    int slot, done;           /* -1: no slot (waiting or finished) */
    int len;                  /* tokens absorbed so far */
    float out[MAXT][HQ * D];  /* its outputs, by position */
} seq;

static seq seqs[NSEQ] = {
    { "A", 0, 37, 10, -1, 0, 0, { { 0 } } },
    { "B", 0, 5, 3, -1, 0, 0, { { 0 } } },
    { "C", 0, 70, 12, -1, 0, 0, { { 0 } } },
    { "D", 5, 20, 6, -1, 0, 0, { { 0 } } },
};

/* The token's q (which 0), k (1) or v (2) value i: a hash in [-1, 1). */
static float value(int s, int t, int which, int i)
{
    uint32_t h = (uint32_t)(s * 1000003 + t * 7919 + which * 104729 + i * 31);
    h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
    return (float)h / 2147483648.0f - 1.0f;
}

/* Row r of the host batch: sequence s's token t. */
static void put_token(float *q, float *k, float *v, int r, int s, int t)
{
    for (int i = 0; i < HQ * D; i++)
        q[r * HQ * D + i] = value(s, t, 0, i);
    for (int i = 0; i < HKV * D; i++) {
        k[r * HKV * D + i] = value(s, t, 1, i);
        v[r * HKV * D + i] = value(s, t, 2, i);
    }
}

#define CHECK(call)                                                                    \
    do {                                                                               \
        lm_status st_ = (call);                                                        \
        if (st_ != LM_OK) {                                                            \
            fprintf(stderr, "%s: %s (%s)\n", #call, lm_status_string(st_), lm_last_error()); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* Device copies of one batch of T rows, and the tensors over them. */
typedef struct batch {
    float hq[MAXT * HQ * D], hk[MAXT * HKV * D], hv[MAXT * HKV * D], ho[MAXT * HQ * D];
    void *q, *k, *v, *o;
    lm_tensor tq, tk, tv, to;
} batch;

static void batch_upload(batch *b, int T)
{
    to_dev(b->q, b->hq, sizeof(float) * (size_t)T * HQ * D);
    to_dev(b->k, b->hk, sizeof(float) * (size_t)T * HKV * D);
    to_dev(b->v, b->hv, sizeof(float) * (size_t)T * HKV * D);
    b->tq = lm_tensor_3d(b->q, LM_F32, DEVICE, T, HQ, D);
    b->tk = lm_tensor_3d(b->k, LM_F32, DEVICE, T, HKV, D);
    b->tv = lm_tensor_3d(b->v, LM_F32, DEVICE, T, HKV, D);
    b->to = lm_tensor_3d(b->o, LM_F32, DEVICE, T, HQ, D);
}

static int free_slot(void)
{
    for (int s = 0; s < SLOTS; s++) {
        int used = 0;
        for (int i = 0; i < NSEQ; i++)
            used |= seqs[i].slot == s;
        if (!used)
            return s;
    }
    return -1;
}

int main(int argc, char **argv)
{
    const int hybrid = argc > 1 && !strcmp(argv[1], "--hybrid");
    /* The pool: S [SLOTS, HKV, D, D] and z [SLOTS, HKV, D] in the caller's memory;
     * hybrid: the window's keys, values [SLOTS, HKV, SINKS + W, D], positions
     * [SLOTS, HKV, SINKS + W] too. */
    const size_t nw = (size_t)SLOTS * HKV * (SINKS + W);
    float *S = dev_alloc(sizeof(float) * SLOTS * HKV * D * D), *z = dev_alloc(sizeof(float) * SLOTS * HKV * D);
    float *wk = dev_alloc(sizeof(float) * nw * D), *wv = dev_alloc(sizeof(float) * nw * D);
    int32_t *wp = dev_alloc(sizeof(int32_t) * nw);
    int32_t *dslots = dev_alloc(sizeof(int32_t) * SLOTS);
    static batch b;
    b.q = dev_alloc(sizeof b.hq), b.k = dev_alloc(sizeof b.hk), b.v = dev_alloc(sizeof b.hv);
    b.o = dev_alloc(sizeof b.ho);
    if (!S || !z || !wk || !wv || !wp || !dslots || !b.q || !b.k || !b.v || !b.o) {
        fprintf(stderr, "engine: no memory for the pool and the batch\n");
        return 1;
    }
    lm_pool_config cfg;
    CHECK(lm_pool_config_default(&cfg, SLOTS, HKV, D));
    cfg.device = DEVICE;
    cfg.state = S, cfg.normalizer = z;
    if (hybrid) {
        cfg.attention = LM_ATTENTION_HYBRID, cfg.window = W, cfg.sinks = SINKS;
        cfg.num_heads = HQ, cfg.window_gate = gate;
        cfg.window_keys = wk, cfg.window_values = wv, cfg.window_pos = wp;
    }
    lm_pool *pool;
    CHECK(lm_pool_create(&cfg, &pool));

    int prefills = 0, decodes = 0;
    for (int step = 0;; step++) {
        /* Arrivals take free slots; finished sequences gave theirs back. */
        int waiting = 0, running = 0;
        for (int i = 0; i < NSEQ; i++) {
            seq *s = &seqs[i];
            if (!s->done && s->slot < 0 && s->arrives <= step)
                s->slot = free_slot();
            waiting += !s->done && s->slot < 0;
            running += s->slot >= 0;
        }
        if (!running && !waiting)
            break;
        /* A newcomer's whole prompt: a packed prefill, the others' next
         * tokens riding along as sequences of length 1. */
        int any_prompt = 0;
        for (int i = 0; i < NSEQ; i++)
            any_prompt |= seqs[i].slot >= 0 && seqs[i].len == 0;
        int32_t rowslot[SLOTS]; /* decode: row r is slot r, -1 (padding) when it is free */
        int T = 0;
        if (any_prompt) {
            int32_t cu[NSEQ + 1] = { 0 }, slots[NSEQ];
            uint8_t flags[NSEQ];
            int n = 0;
            for (int i = 0; i < NSEQ; i++) {
                seq *s = &seqs[i];
                if (s->slot < 0)
                    continue;
                const int len = s->len == 0 ? s->prompt : 1;
                for (int t = 0; t < len; t++)
                    put_token(b.hq, b.hk, b.hv, T + t, i, s->len + t);
                flags[n] = s->len == 0 ? LM_SEQ_FRESH : 0; /* a reused slot starts afresh */
                slots[n++] = s->slot;
                cu[n] = T += len;
            }
            batch_upload(&b, T);
            lm_prefill_args a = { LM_SIZED(lm_prefill_args), .q = &b.tq, .k = &b.tk, .v = &b.tv, .out = &b.to,
                                  .num_seqs = n, .cu_seqlens = cu, .slots = slots, .flags = flags };
            CHECK(lm_pool_prefill(pool, &a, NULL));
            prefills++;
        } else { /* one row per slot, as a captured CUDA graph would have it */
            T = SLOTS;
            for (int r = 0; r < SLOTS; r++) {
                rowslot[r] = -1;
                put_token(b.hq, b.hk, b.hv, r, NSEQ, step); /* a padding row's data: ignored */
                for (int i = 0; i < NSEQ; i++)
                    if (seqs[i].slot == r) {
                        rowslot[r] = r;
                        put_token(b.hq, b.hk, b.hv, r, i, seqs[i].len);
                    }
            }
            batch_upload(&b, T);
            to_dev(dslots, rowslot, sizeof rowslot); /* the indices live in device memory */
            lm_decode_args a = { LM_SIZED(lm_decode_args), .q = &b.tq, .k = &b.tk, .v = &b.tv, .out = &b.to,
                                 .slots = dslots };
            CHECK(lm_pool_decode(pool, &a, NULL));
            decodes++;
        }
        to_host(b.ho, b.o, sizeof(float) * (size_t)T * HQ * D);
        for (int i = 0, r = 0; i < NSEQ; i++) {
            seq *s = &seqs[i];
            if (s->slot < 0)
                continue;
            const int len = s->len == 0 ? s->prompt : 1;
            const int row = any_prompt ? r : s->slot;
            memcpy(s->out[s->len], b.ho + (size_t)row * HQ * D, sizeof(float) * (size_t)len * HQ * D);
            r += len;
            s->len += len;
            if (s->len == s->prompt + s->generate) { /* done: the slot is free again */
                s->slot = -1;
                s->done = 1;
            }
        }
    }

    /* Each sequence alone, from an empty state: the same outputs. */
    double worst = 0;
    for (int i = 0; i < NSEQ; i++) {
        seq *s = &seqs[i];
        static batch one;
        one.q = b.q, one.k = b.k, one.v = b.v, one.o = b.o;
        for (int t = 0; t < s->len; t++)
            put_token(one.hq, one.hk, one.hv, t, i, t);
        batch_upload(&one, s->len);
        lm_tensor q = lm_tensor_4d(one.q, LM_F32, DEVICE, 1, s->len, HQ, D);
        lm_tensor k = lm_tensor_4d(one.k, LM_F32, DEVICE, 1, s->len, HKV, D);
        lm_tensor v = lm_tensor_4d(one.v, LM_F32, DEVICE, 1, s->len, HKV, D);
        lm_tensor o = lm_tensor_4d(one.o, LM_F32, DEVICE, 1, s->len, HQ, D);
        lm_core_args a;
        CHECK(lm_core_args_default(&a));
        a.q = &q, a.k = &k, a.v = &v, a.out = &o;
        if (hybrid) {
            a.attention = LM_ATTENTION_HYBRID, a.window = W, a.sinks = SINKS;
            a.window_gate = gate;
        }
        CHECK(lm_linear_attn_prefill(&a, NULL));
        to_host(one.ho, one.o, sizeof(float) * (size_t)s->len * HQ * D);
        double num = 0, den = 0;
        for (int t = 0; t < s->len; t++)
            for (int x = 0; x < HQ * D; x++) {
                const double d = (double)s->out[t][x] - one.ho[t * HQ * D + x];
                num += d * d, den += (double)one.ho[t * HQ * D + x] * one.ho[t * HQ * D + x];
            }
        const double rel = sqrt(num / den);
        worst = rel > worst ? rel : worst;
        printf("sequence %s: %d tokens (prompt %d), rel. difference to it alone %.2e\n", s->name, s->len,
               s->prompt, rel);
    }
    lm_pool_destroy(pool);
    dev_free(S), dev_free(z), dev_free(wk), dev_free(wv), dev_free(wp), dev_free(dslots), dev_free(b.q), dev_free(b.k), dev_free(b.v), dev_free(b.o);
    /* fp32 throughout; the packed calls sum in another order than one sequence alone. */
    const int ok = worst <= 1e-5;
    printf("engine (%s, %s): %d prefill calls, %d decode calls, largest difference %.2e: %s\n",
           DEVICE == LM_CUDA ? "cuda" : "cpu", hybrid ? "hybrid" : "linear", prefills, decodes, worst,
           ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
