/*
 * engine_gpu_bench.c - lm-engine-gpu-bench: the engine API on the GPU
 * (bench/gpu_run.sh, phase engine). 32 heads of 128, bf16 inputs, fp32
 * states, CUDA events around whole calls, median of the repeats:
 *   decode-256     lm_pool_decode of 256 rows (slots in a shuffled order) in a
 *                  CUDA graph, against its byte floor: every slot's S and z
 *                  read and written once, at 3.0 TB/s (target: within 1.5x);
 *   decode-1       the same with 1 row, and lm_linear_attn_decode at B = 1,
 *                  both in a graph (target for the core decode: <= 5 us);
 *   varlen-128K    lm_pool_prefill of 64 fresh sequences of mixed lengths,
 *                  131072 tokens in all, with the caller's workspace, on both
 *                  of the CUDA pool's paths (LM_POOL_PREFILL=each: a core
 *                  prefill per sequence; packed: one launch over them all; a
 *                  pool of each, same inputs, their outputs and states
 *                  compared), against lm_linear_attn_prefill of one
 *                  131072-token sequence (target: within 1.2x).
 * Prints a table; --out writes the JSON record (date, commit, GPU, results).
 */
#define _POSIX_C_SOURCE 200809L
#include <liquid_memory.h>

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { H = 32, D = 128, SLOTS = 256, NSEQ = 64, TOTAL = 131072 };
#define FLOOR_TBPS 3.0

#define CK(call)                                                                                 \
    do {                                                                                         \
        long long r_ = (long long)(call);                                                        \
        if (r_) {                                                                                \
            fprintf(stderr, "%s failed (%lld): %s\n", #call, r_, lm_last_error());               \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

static int cmp(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median time (us) of n runs of fn(ctx) on stream s, after 3 warm-ups. */
static double time_us(void (*fn)(void *), void *ctx, cudaStream_t s, int n)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float *ms = malloc((size_t)n * sizeof(float));
    for (int i = -3; i < n; i++) {
        CK(cudaEventRecord(a, s));
        fn(ctx);
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        if (i >= 0)
            CK(cudaEventElapsedTime(&ms[i], a, b));
    }
    qsort(ms, (size_t)n, sizeof *ms, cmp);
    const double r = ms[n / 2] * 1e3;
    free(ms);
    cudaEventDestroy(a), cudaEventDestroy(b);
    return r;
}

static void *dalloc(size_t n)
{
    void *p = NULL;
    CK(cudaMalloc(&p, n ? n : 1));
    return p;
}

/* Device bf16 values of a hash in [-1, 1). */
static void *drandom_bf16(size_t n, unsigned seed)
{
    uint16_t *h = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        float f = (float)(seed >> 8) / 8388608.0f - 1.0f;
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    void *d = dalloc(n * sizeof(uint16_t));
    CK(cudaMemcpy(d, h, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    free(h);
    return d;
}

typedef struct graph_ctx {
    cudaGraphExec_t exec;
    cudaStream_t s;
} graph_ctx;

static void replay(void *c)
{
    graph_ctx *g = c;
    CK(cudaGraphLaunch(g->exec, g->s));
}

/* The decode of args on pool (or, pool NULL, the core decode of core) in a graph. */
static graph_ctx capture(lm_pool *pool, lm_decode_args *args, lm_core_args *core, cudaStream_t s)
{
    graph_ctx g = { NULL, s };
    CK(pool ? lm_pool_decode(pool, args, s) : lm_linear_attn_decode(core, s)); /* warm, outside */
    CK(cudaStreamSynchronize(s));
    cudaGraph_t graph;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    const lm_status st = pool ? lm_pool_decode(pool, args, s) : lm_linear_attn_decode(core, s);
    CK(cudaStreamEndCapture(s, &graph));
    CK(st);
    CK(cudaGraphInstantiate(&g.exec, graph, 0));
    CK(cudaGraphDestroy(graph));
    return g;
}

typedef struct prefill_ctx {
    lm_pool *pool;      /* the varlen call's */
    lm_prefill_args *pa;
    lm_core_args *ca;
    void *ws;
    size_t ws_bytes;
    cudaStream_t s;
} prefill_ctx;

static void run_varlen(void *c)
{
    prefill_ctx *p = c;
    CK(lm_pool_prefill(p->pool, p->pa, p->s));
}

static void run_one(void *c)
{
    prefill_ctx *p = c;
    CK(lm_linear_attn_prefill_ws(p->ca, p->ws, p->ws_bytes, p->s));
}

/* A pool of SLOTS slots over new memory, made under LM_POOL_PREFILL=path. */
static lm_pool *new_pool(const char *path, float **S, float **z)
{
    const size_t nS = (size_t)H * D * D, nz = (size_t)H * D;
    *S = dalloc(SLOTS * nS * sizeof(float)), *z = dalloc(SLOTS * nz * sizeof(float));
    setenv("LM_POOL_PREFILL", path, 1); /* read when the pool is created */
    lm_pool_config cfg;
    CK(lm_pool_config_default(&cfg, SLOTS, H, D));
    cfg.device = LM_CUDA, cfg.state = *S, cfg.normalizer = *z;
    lm_pool *pool;
    CK(lm_pool_create(&cfg, &pool));
    return pool;
}

/* ||a - b|| / ||b|| of n device values (bf16 when bf16, else fp32). */
static double rel_diff(const void *a, const void *b, size_t n, int bf16)
{
    const size_t es = bf16 ? 2 : 4;
    unsigned char *ha = malloc(n * es), *hb = malloc(n * es);
    CK(cudaMemcpy(ha, a, n * es, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hb, b, n * es, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        float x, y;
        if (bf16) {
            uint32_t u = (uint32_t)((uint16_t *)ha)[i] << 16, w = (uint32_t)((uint16_t *)hb)[i] << 16;
            memcpy(&x, &u, 4), memcpy(&y, &w, 4);
        } else {
            x = ((float *)ha)[i], y = ((float *)hb)[i];
        }
        num += ((double)x - y) * ((double)x - y), den += (double)y * y;
    }
    free(ha), free(hb);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int main(int argc, char **argv)
{
    const char *out = NULL, *commit = "unknown";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
        else if (!strcmp(argv[i], "--commit"))
            commit = argv[i + 1];
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    /* Two pools of 256 slots of [32, 128, 128] fp32 (541 MB with z each),
     * one per varlen path; the decodes run on the first. */
    const size_t nS = (size_t)H * D * D, nz = (size_t)H * D, row = (size_t)H * D;
    float *S, *z, *S2, *z2;
    lm_pool *pool = new_pool("each", &S, &z), *pool2 = new_pool("packed", &S2, &z2);

    /* decode-256 and decode-1, slots in a shuffled order. */
    void *q = drandom_bf16(SLOTS * row, 1), *k = drandom_bf16(SLOTS * row, 2), *v = drandom_bf16(SLOTS * row, 3);
    void *o = dalloc(SLOTS * row * 2);
    int32_t hslots[SLOTS];
    for (int i = 0; i < SLOTS; i++)
        hslots[i] = (i * 97 + 13) % SLOTS;
    int32_t *dslots = dalloc(sizeof hslots);
    CK(cudaMemcpy(dslots, hslots, sizeof hslots, cudaMemcpyHostToDevice));
    double t_dec[2];
    const int rows[2] = { SLOTS, 1 };
    for (int i = 0; i < 2; i++) {
        lm_tensor tq = lm_tensor_3d(q, LM_BF16, LM_CUDA, rows[i], H, D), tk = lm_tensor_3d(k, LM_BF16, LM_CUDA, rows[i], H, D);
        lm_tensor tv = lm_tensor_3d(v, LM_BF16, LM_CUDA, rows[i], H, D), to = lm_tensor_3d(o, LM_BF16, LM_CUDA, rows[i], H, D);
        lm_decode_args d = { LM_SIZED(lm_decode_args), .q = &tq, .k = &tk, .v = &tv, .out = &to, .slots = dslots };
        graph_ctx g = capture(pool, &d, NULL, s);
        t_dec[i] = time_us(replay, &g, s, i ? 2000 : 200);
        CK(cudaGraphExecDestroy(g.exec));
    }
    /* The core decode at B = 1, on slot 0's memory, in a graph. */
    lm_tensor cq = lm_tensor_4d(q, LM_BF16, LM_CUDA, 1, 1, H, D), ck = lm_tensor_4d(k, LM_BF16, LM_CUDA, 1, 1, H, D);
    lm_tensor cv = lm_tensor_4d(v, LM_BF16, LM_CUDA, 1, 1, H, D), co = lm_tensor_4d(o, LM_BF16, LM_CUDA, 1, 1, H, D);
    lm_core_args ca;
    CK(lm_core_args_default(&ca));
    ca.q = &cq, ca.k = &ck, ca.v = &cv, ca.out = &co, ca.state = S, ca.normalizer = z;
    graph_ctx g1 = capture(NULL, NULL, &ca, s);
    const double t_core1 = time_us(replay, &g1, s, 2000);
    CK(cudaGraphExecDestroy(g1.exec));
    const double floor_bytes = 2.0 * SLOTS * (double)(nS + nz) * sizeof(float);
    const double floor_us = floor_bytes / (FLOOR_TBPS * 1e12) * 1e6;
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o);

    /* varlen-128K: 64 fresh sequences of mixed lengths, against one sequence. */
    int32_t cu[NSEQ + 1], slots[NSEQ];
    uint8_t flags[NSEQ];
    double wsum = 0;
    for (int i = 0; i < NSEQ; i++)
        wsum += 1 + (i * 37) % 61;
    cu[0] = 0;
    int shortest = TOTAL, longest = 0;
    for (int i = 0; i < NSEQ; i++) {
        cu[i + 1] = i == NSEQ - 1 ? TOTAL : cu[i] + (int32_t)(TOTAL * (1 + (i * 37) % 61) / wsum);
        const int len = cu[i + 1] - cu[i];
        shortest = len < shortest ? len : shortest, longest = len > longest ? len : longest;
        slots[i] = (i * 5 + 1) % SLOTS, flags[i] = LM_SEQ_FRESH;
    }
    q = drandom_bf16((size_t)TOTAL * row, 4), k = drandom_bf16((size_t)TOTAL * row, 5);
    v = drandom_bf16((size_t)TOTAL * row, 6), o = dalloc((size_t)TOTAL * row * 2);
    lm_tensor pq = lm_tensor_3d(q, LM_BF16, LM_CUDA, TOTAL, H, D), pk = lm_tensor_3d(k, LM_BF16, LM_CUDA, TOTAL, H, D);
    lm_tensor pv = lm_tensor_3d(v, LM_BF16, LM_CUDA, TOTAL, H, D), po = lm_tensor_3d(o, LM_BF16, LM_CUDA, TOTAL, H, D);
    lm_prefill_args pa = { LM_SIZED(lm_prefill_args), .q = &pq, .k = &pk, .v = &pv, .out = &po, .num_seqs = NSEQ,
                           .cu_seqlens = cu, .slots = slots, .flags = flags };
    size_t bytes, bytes2;
    CK(lm_pool_prefill_workspace(pool, &pa, &bytes));
    CK(lm_pool_prefill_workspace(pool2, &pa, &bytes2));
    pa.workspace = dalloc(bytes > bytes2 ? bytes : bytes2), pa.workspace_bytes = bytes > bytes2 ? bytes : bytes2;
    lm_tensor oq = lm_tensor_4d(q, LM_BF16, LM_CUDA, 1, TOTAL, H, D), ok = lm_tensor_4d(k, LM_BF16, LM_CUDA, 1, TOTAL, H, D);
    lm_tensor ov = lm_tensor_4d(v, LM_BF16, LM_CUDA, 1, TOTAL, H, D), oo = lm_tensor_4d(o, LM_BF16, LM_CUDA, 1, TOTAL, H, D);
    lm_core_args one;
    CK(lm_core_args_default(&one));
    one.q = &oq, one.k = &ok, one.v = &ov, one.out = &oo, one.state = S, one.normalizer = z;
    CK(lm_linear_attn_prefill_workspace(&one, &bytes));
    void *one_ws = dalloc(bytes);
    size_t one_bytes = bytes;
    prefill_ctx pc = { pool, &pa, &one, one_ws, one_bytes, s }, pc2 = pc;
    pc2.pool = pool2;
    const double t_varlen = time_us(run_varlen, &pc, s, 7), t_packed = time_us(run_varlen, &pc2, s, 7);
    const double t_one = time_us(run_one, &pc, s, 7);
    /* The paths on the same call: outputs, and the 64 slots' states. */
    void *o2 = dalloc((size_t)TOTAL * row * 2);
    CK(lm_pool_prefill(pool, &pa, s));
    CK(cudaMemcpyAsync(o2, o, (size_t)TOTAL * row * 2, cudaMemcpyDeviceToDevice, s));
    CK(lm_pool_prefill(pool2, &pa, s));
    CK(cudaStreamSynchronize(s));
    const double d_out = rel_diff(o, o2, (size_t)TOTAL * row, 1);
    double d_state = 0;
    for (int i = 0; i < NSEQ; i++) {
        const double dS = rel_diff(S2 + (size_t)slots[i] * nS, S + (size_t)slots[i] * nS, nS, 0);
        const double dz = rel_diff(z2 + (size_t)slots[i] * nz, z + (size_t)slots[i] * nz, nz, 0);
        d_state = dS > d_state ? dS : d_state, d_state = dz > d_state ? dz : d_state;
    }

    printf("engine on %s (32 heads x 128, bf16 inputs, fp32 state; median, CUDA events)\n", prop.name);
    printf("%-40s %12s %12s %10s\n", "", "us", "reference", "ratio");
    printf("%-40s %12.1f %12.1f %10.3f   floor: %.0f MB r+w at %.1f TB/s (target <= 1.5)\n",
           "decode 256 slots, graph", t_dec[0], floor_us, t_dec[0] / floor_us, floor_bytes / 1e6, FLOOR_TBPS);
    printf("%-40s %12.2f %12s %10s\n", "decode 1 slot (pool), graph", t_dec[1], "", "");
    printf("%-40s %12.2f %12s %10s   target <= 5 us\n", "core decode B = 1, graph", t_core1, "", "");
    printf("%-40s %12.1f %12.1f %10.3f   vs one 131072-token prefill (target <= 1.2)\n",
           "varlen prefill, 64 seqs, each", t_varlen, t_one, t_varlen / t_one);
    printf("%-40s %12.1f %12.1f %10.3f   vs one 131072-token prefill (target <= 1.2)\n",
           "varlen prefill, 64 seqs, packed", t_packed, t_one, t_packed / t_one);
    printf("(sequence lengths %d .. %d, 131072 tokens; packed against each: outputs %.3g, "
           "final states %.3g relative, largest slot)\n", shortest, longest, d_out, d_state);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) {
            perror(out);
            return 1;
        }
        char date[32];
        const time_t now = time(NULL);
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
        fprintf(f, "{\n  \"benchmark\": \"engine api on the gpu\",\n  \"date\": \"%s\",\n  \"commit\": \"%s\",\n"
                   "  \"gpu\": \"%s\",\n  \"library\": \"%s\",\n  \"heads\": %d,\n  \"head_dim\": %d,\n"
                   "  \"dtype\": \"bf16\",\n  \"statistic\": \"median, microseconds, CUDA events\",\n"
                   "  \"decode_256_graph_us\": %.2f,\n  \"decode_256_floor_us\": %.2f,\n"
                   "  \"decode_256_over_floor\": %.4f,\n  \"floor_tb_per_s\": %.1f,\n"
                   "  \"decode_1_pool_graph_us\": %.3f,\n  \"decode_1_core_graph_us\": %.3f,\n"
                   "  \"varlen_64_seqs_us\": %.1f,\n  \"prefill_one_131072_us\": %.1f,\n"
                   "  \"varlen_over_one\": %.4f,\n  \"varlen_lengths\": [%d, %d],\n"
                   "  \"varlen_packed_us\": %.1f,\n  \"varlen_packed_over_one\": %.4f,\n"
                   "  \"varlen_packed_vs_each_out_rel\": %.3g,\n  \"varlen_packed_vs_each_state_rel\": %.3g\n}\n",
                date, commit, prop.name, lm_version(), H, D, t_dec[0], floor_us, t_dec[0] / floor_us, FLOOR_TBPS,
                t_dec[1], t_core1, t_varlen, t_one, t_varlen / t_one, shortest, longest, t_packed,
                t_packed / t_one, d_out, d_state);
        fclose(f);
    }
    lm_pool_destroy(pool), lm_pool_destroy(pool2);
    cudaFree(S), cudaFree(z), cudaFree(S2), cudaFree(z2), cudaFree(o2);
    cudaFree(dslots), cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o);
    cudaFree(pa.workspace), cudaFree(one_ws);
    return 0;
}
