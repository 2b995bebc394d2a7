/*
 * engine_bench.c - lm-engine-bench: the CPU decode of 16 sequences, one token
 * each, the way an engine would do it before and with the state pool:
 *   separate  16 calls of lm_linear_attn_decode, B = 1, each on its
 *             sequence's own state (what an engine does without the pool);
 *   pool-1    16 calls of lm_pool_decode with one row each;
 *   indexed   one lm_pool_decode of 16 rows naming the slots in a shuffled
 *             order (the pool's batched decode).
 * fp32, 2 threads (--threads: the pool's num_threads, and OpenMP's for the
 * core calls, which take OpenMP's count), for two layer shapes: 8
 * heads of 64 (states in cache) and 32 heads of 128 (33 MB of states, read
 * and written every step). Median of --iters steps after warm-up; one JSON
 * record per shape in bench/results/engine-cpu-<date>-<commit>-t<threads>.json with the
 * CPU, the thread count and the three times. make bench-engine runs it.
 */
#define _POSIX_C_SOURCE 200809L
#include <liquid_memory.h>

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROWS = 16 };
static int THREADS = 2; /* --threads */

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp);
    return x[n / 2];
}

static void fill(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
}

#define CHECK(call)                                                                              \
    do {                                                                                         \
        lm_status st_ = (call);                                                                  \
        if (st_) {                                                                               \
            fprintf(stderr, "%s: %s\n", #call, lm_last_error());                                 \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

typedef struct result {
    int H, D;
    double separate, pool1, indexed;
} result;

static result run(int H, int D, int iters)
{
    const size_t nS = (size_t)H * D * D, nz = (size_t)H * D, row = (size_t)H * D;
    float *S = malloc(ROWS * nS * sizeof(float)), *z = malloc(ROWS * nz * sizeof(float));
    float *q = malloc(ROWS * row * sizeof(float)), *k = malloc(ROWS * row * sizeof(float));
    float *v = malloc(ROWS * row * sizeof(float)), *o = malloc(ROWS * row * sizeof(float));
    double *t = malloc((size_t)iters * sizeof(double));
    if (!S || !z || !q || !k || !v || !o || !t) {
        fprintf(stderr, "lm-engine-bench: out of memory\n");
        exit(1);
    }
    fill(q, ROWS * row, 1), fill(k, ROWS * row, 2), fill(v, ROWS * row, 3);
    lm_pool_config cfg;
    CHECK(lm_pool_config_default(&cfg, ROWS, H, D));
    cfg.state = S, cfg.normalizer = z, cfg.num_threads = THREADS;
    lm_pool *pool;
    CHECK(lm_pool_create(&cfg, &pool));
    result r = { H, D, 0, 0, 0 };

    /* separate: one core decode per sequence on its own state (the slot's memory). */
    lm_tensor tq[ROWS], tk[ROWS], tv[ROWS], to[ROWS];
    lm_core_args a[ROWS];
    for (int b = 0; b < ROWS; b++) {
        tq[b] = lm_tensor_4d(q + b * row, LM_F32, LM_CPU, 1, 1, H, D);
        tk[b] = lm_tensor_4d(k + b * row, LM_F32, LM_CPU, 1, 1, H, D);
        tv[b] = lm_tensor_4d(v + b * row, LM_F32, LM_CPU, 1, 1, H, D);
        to[b] = lm_tensor_4d(o + b * row, LM_F32, LM_CPU, 1, 1, H, D);
        CHECK(lm_core_args_default(&a[b]));
        a[b].q = &tq[b], a[b].k = &tk[b], a[b].v = &tv[b], a[b].out = &to[b];
        a[b].state = S + b * nS, a[b].normalizer = z + b * nz; /* OpenMP's threads: see main */
    }
    for (int i = -3; i < iters; i++) {
        const double t0 = now_us();
        for (int b = 0; b < ROWS; b++)
            CHECK(lm_linear_attn_decode(&a[b], NULL));
        if (i >= 0)
            t[i] = now_us() - t0;
    }
    r.separate = median(t, iters);

    /* pool-1: the pool, one row per call. */
    lm_tensor pq[ROWS], pk[ROWS], pv[ROWS], po[ROWS];
    int32_t slot[ROWS];
    lm_decode_args d[ROWS];
    for (int b = 0; b < ROWS; b++) {
        pq[b] = lm_tensor_3d(q + b * row, LM_F32, LM_CPU, 1, H, D);
        pk[b] = lm_tensor_3d(k + b * row, LM_F32, LM_CPU, 1, H, D);
        pv[b] = lm_tensor_3d(v + b * row, LM_F32, LM_CPU, 1, H, D);
        po[b] = lm_tensor_3d(o + b * row, LM_F32, LM_CPU, 1, H, D);
        slot[b] = (b * 7 + 3) % ROWS; /* slots in any order */
        d[b] = (lm_decode_args){ LM_SIZED(lm_decode_args), .q = &pq[b], .k = &pk[b], .v = &pv[b],
                                 .out = &po[b], .slots = &slot[b] };
    }
    for (int i = -3; i < iters; i++) {
        const double t0 = now_us();
        for (int b = 0; b < ROWS; b++)
            CHECK(lm_pool_decode(pool, &d[b], NULL));
        if (i >= 0)
            t[i] = now_us() - t0;
    }
    r.pool1 = median(t, iters);

    /* indexed: one call of 16 rows, with the caller's workspace. */
    lm_tensor bq = lm_tensor_3d(q, LM_F32, LM_CPU, ROWS, H, D), bk = lm_tensor_3d(k, LM_F32, LM_CPU, ROWS, H, D);
    lm_tensor bv = lm_tensor_3d(v, LM_F32, LM_CPU, ROWS, H, D), bo = lm_tensor_3d(o, LM_F32, LM_CPU, ROWS, H, D);
    lm_decode_args all = { LM_SIZED(lm_decode_args), .q = &bq, .k = &bk, .v = &bv, .out = &bo, .slots = slot };
    size_t bytes;
    CHECK(lm_pool_decode_workspace(pool, &all, &bytes));
    all.workspace = malloc(bytes);
    all.workspace_bytes = bytes;
    for (int i = -3; i < iters; i++) {
        const double t0 = now_us();
        CHECK(lm_pool_decode(pool, &all, NULL));
        if (i >= 0)
            t[i] = now_us() - t0;
    }
    r.indexed = median(t, iters);
    free(all.workspace);
    lm_pool_destroy(pool);
    free(S), free(z), free(q), free(k), free(v), free(o), free(t);
    return r;
}

/* The 1-minute load average: timings of a busy machine say little. */
static double load_average(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &l) != 1)
        l = -1;
    if (f)
        fclose(f);
    return l;
}

static void cpu_name(char *buf, size_t n)
{
    snprintf(buf, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            snprintf(buf, n, "%s", c + 2);
            buf[strcspn(buf, "\n")] = 0;
            break;
        }
    }
    if (f)
        fclose(f);
}

int main(int argc, char **argv)
{
    const char *commit = "unknown", *out = NULL;
    int iters = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--commit"))
            commit = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
        else if (!strcmp(argv[i], "--iters"))
            iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            THREADS = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
    }
    if (iters < 1)
        iters = 1;
    omp_set_num_threads(THREADS); /* the core calls' threads */
    result rs[2] = { run(8, 64, iters), run(32, 128, iters / 4 > 10 ? iters / 4 : 10) };
    char cpu[256], date[32];
    cpu_name(cpu, sizeof cpu);
    const time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    const double load = load_average();
    printf("CPU decode of %d sequences, one token each, fp32, %d threads (%s, load average %.1f)\n", ROWS,
           THREADS, cpu, load);
    printf("%-14s %14s %14s %14s %10s\n", "heads x dim", "separate us", "pool-1 us", "indexed us", "ratio");
    for (int i = 0; i < 2; i++)
        printf("%4d x %-7d %14.1f %14.1f %14.1f %10.3f\n", rs[i].H, rs[i].D, rs[i].separate, rs[i].pool1,
               rs[i].indexed, rs[i].indexed / rs[i].separate);
    if (!out)
        return 0;
    char path[512], day[16];
    strftime(day, sizeof day, "%Y%m%d", gmtime(&now));
    snprintf(path, sizeof path, "%s/engine-cpu-%s-%s-t%d.json", out, day, commit, THREADS);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    fprintf(f, "{\n  \"benchmark\": \"cpu indexed decode vs separate calls\",\n  \"date\": \"%s\",\n"
               "  \"commit\": \"%s\",\n  \"cpu\": \"%s\",\n  \"load_average\": %.2f,\n  \"library\": \"%s\",\n  \"threads\": %d,\n"
               "  \"rows\": %d,\n  \"dtype\": \"f32\",\n  \"statistic\": \"median of steps, microseconds\",\n"
               "  \"results\": [\n", date, commit, cpu, load, lm_version(), THREADS, ROWS);
    for (int i = 0; i < 2; i++)
        fprintf(f, "    {\"heads\": %d, \"head_dim\": %d, \"state_mb\": %.1f, \"separate_us\": %.2f, "
                   "\"pool_one_row_us\": %.2f, \"indexed_us\": %.2f, \"indexed_over_separate\": %.4f}%s\n",
                rs[i].H, rs[i].D, ROWS * rs[i].H * rs[i].D * (rs[i].D + 1) * 4.0 / 1e6, rs[i].separate,
                rs[i].pool1, rs[i].indexed, rs[i].indexed / rs[i].separate, i ? "" : ",");
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("wrote %s\n", path);
    return 0;
}
