/*
 * lm_bench.c - lm-bench: the sequence-length sweep of the module on the CPU
 * backend. For each length: causal prefill (median of repeats, wall clock),
 * tokens/s, the memory the handle allocates for it, then decode steps
 * continuing that state. Prints a table and writes one JSON file.
 * GPU sweeps with peers in the same run are bench/gpu_bench.py.
 *
 *   lm-bench [--embed 512] [--heads 8] [--batch 1] [--dtype f32|bf16]
 *            [--lengths 1024,2048,...] [--steps 256] [--seconds 1.5]
 *            [--commit ID] [--out DIR]
 */
#include "liquid_memory.h"

#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LENGTHS 32

typedef struct opts {
    int embed, heads, batch, steps;
    lm_dtype dtype;
    int64_t lengths[MAX_LENGTHS];
    int n_lengths;
    double seconds;
    const char *commit, *out_dir;
} opts;

typedef struct row {
    int64_t L;
    double ms, tokens_per_s, step_us;
    long long extra_bytes;
    int reps;
} row;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Bytes allocated through malloc, mapped chunks included (glibc). The slab
 * scratch and the state a handle keeps show up here; resident-set readings
 * do not when malloc reuses pages that are already resident. */
static long long heap_bytes(void)
{
    struct mallinfo2 m = mallinfo2();
    return (long long)(m.uordblks + m.hblkhd);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void fill_random(void *p, lm_dtype dt, int64_t n, double scale, unsigned *seed)
{
    for (int64_t i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        float v = (float)(((double)(*seed >> 8) / 16777216.0 * 2 - 1) * scale);
        if (dt == LM_F32) {
            ((float *)p)[i] = v;
        } else { /* bf16: the high half of the f32 pattern */
            uint32_t u;
            memcpy(&u, &v, 4);
            ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
        }
    }
}

static int parse_lengths(opts *o, const char *s)
{
    o->n_lengths = 0;
    while (*s && o->n_lengths < MAX_LENGTHS) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v <= 0)
            return 0;
        if (*end == 'K' || *end == 'k')
            v *= 1024, end++;
        o->lengths[o->n_lengths++] = v;
        s = *end == ',' ? end + 1 : end;
    }
    return o->n_lengths > 0 && !*s;
}

static int parse(opts *o, int argc, char **argv)
{
    static const int64_t def[] = { 1024, 2048, 4096, 8192, 16384, 32768, 65536 };
    *o = (opts){ .embed = 512, .heads = 8, .batch = 1, .steps = 256, .dtype = LM_F32,
                 .seconds = 1.5, .commit = "unknown", .out_dir = "." };
    memcpy(o->lengths, def, sizeof def);
    o->n_lengths = (int)(sizeof def / sizeof def[0]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 0;
        if (!v)
            return fprintf(stderr, "lm-bench: %s needs a value\n", a), 0;
        i++;
        if (!strcmp(a, "--embed"))
            o->embed = atoi(v);
        else if (!strcmp(a, "--heads"))
            o->heads = atoi(v);
        else if (!strcmp(a, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(a, "--steps"))
            o->steps = atoi(v);
        else if (!strcmp(a, "--seconds"))
            o->seconds = atof(v);
        else if (!strcmp(a, "--commit"))
            o->commit = v;
        else if (!strcmp(a, "--out"))
            o->out_dir = v;
        else if (!strcmp(a, "--lengths") && !parse_lengths(o, v))
            return fprintf(stderr, "lm-bench: bad --lengths '%s'\n", v), 0;
        else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32"))
                o->dtype = LM_F32;
            else if (!strcmp(v, "bf16"))
                o->dtype = LM_BF16;
            else
                return fprintf(stderr, "lm-bench: --dtype is f32 or bf16\n"), 0;
        } else if (strcmp(a, "--lengths"))
            return fprintf(stderr, "lm-bench: unknown option %s\n", a), 0;
    }
    if (o->embed <= 0 || o->heads <= 0 || o->batch <= 0 || o->steps <= 0 || o->seconds <= 0)
        return fprintf(stderr, "lm-bench: sizes, steps and seconds must be > 0\n"), 0;
    return 1;
}

static const char *dtype_name(lm_dtype d)
{
    return d == LM_F32 ? "f32" : "bf16";
}

static void cpu_model(char *buf, size_t n)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(buf, n, "unknown");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                snprintf(buf, n, "%s", c + 2);
                buf[strcspn(buf, "\n")] = 0;
            }
            break;
        }
    if (f)
        fclose(f);
}

#define CHECK(call)                                                                           \
    do {                                                                                      \
        lm_status st_ = (call);                                                               \
        if (st_ != LM_OK) {                                                                   \
            fprintf(stderr, "lm-bench: %s: %s: %s\n", #call, lm_status_string(st_),           \
                    lm_last_error());                                                         \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

/* Times one length on a fresh handle: prefill repeats, then decode steps on
 * the kept state. */
static int measure(const lm_attn_config *cfg, const lm_weights *w, const opts *o, int64_t L,
                   row *r)
{
    lm_attn *a;
    CHECK(lm_attn_create(cfg, &a));
    CHECK(lm_attn_set_weights(a, w));
    const int64_t B = o->batch, E = o->embed;
    const size_t es = lm_dtype_size(o->dtype);
    unsigned seed = 12345u + (unsigned)L;
    void *x = malloc((size_t)(B * L * E) * es), *y = malloc((size_t)(B * L * E) * es);
    void *xs = malloc((size_t)(B * E) * es), *ys = malloc((size_t)(B * E) * es);
    if (!x || !y || !xs || !ys)
        return fprintf(stderr, "lm-bench: no memory for L = %lld\n", (long long)L), 1;
    fill_random(x, o->dtype, B * L * E, 1.0, &seed);
    fill_random(xs, o->dtype, B * E, 1.0, &seed);
    memset(y, 0xff, (size_t)(B * L * E) * es); /* NaN: an unwritten output would show */
    lm_tensor tx = lm_tensor_3d(x, o->dtype, LM_CPU, B, L, E);
    lm_tensor ty = lm_tensor_3d(y, o->dtype, LM_CPU, B, L, E);
    lm_tensor txs = lm_tensor_2d(xs, o->dtype, LM_CPU, B, E);
    lm_tensor tys = lm_tensor_2d(ys, o->dtype, LM_CPU, B, E);
    lm_forward_opts fo = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };

    /* The warm-up call on a fresh handle is where the library allocates what
     * it keeps (slab scratch, state): the growth of the heap is its extra memory. */
    long long heap = heap_bytes();
    CHECK(lm_attn_forward(a, &tx, &tx, &tx, &fo, &ty, NULL));
    r->extra_bytes = heap_bytes() - heap;
    double t[64];
    int n = 0;
    double t_end = now_s() + o->seconds;
    while (n < 64 && (n < 3 || now_s() < t_end)) {
        double t0 = now_s();
        CHECK(lm_attn_forward(a, &tx, &tx, &tx, &fo, &ty, NULL));
        t[n++] = now_s() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    r->L = L;
    r->reps = n;
    r->ms = 1e3 * t[n / 2];
    r->tokens_per_s = (double)(B * L) / t[n / 2];

    CHECK(lm_attn_step(a, &txs, &tys, NULL)); /* warm-up */
    double s[9];
    for (int k = 0; k < 9; k++) {
        double t0 = now_s();
        for (int i = 0; i < o->steps; i++)
            CHECK(lm_attn_step(a, &txs, &tys, NULL));
        s[k] = (now_s() - t0) / o->steps;
    }
    qsort(s, 9, sizeof s[0], cmp_double);
    r->step_us = 1e6 * s[4];
    lm_attn_destroy(a);
    free(x), free(y), free(xs), free(ys);
    return 0;
}

static int write_json(const opts *o, const row *rows, int n, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return fprintf(stderr, "lm-bench: cannot write %s: %s\n", path, strerror(errno)), 1;
    char cpu[256], date[32];
    cpu_model(cpu, sizeof cpu);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(f, "{\n  \"tool\": \"lm-bench\",\n  \"date\": \"%s\",\n  \"commit\": \"%s\",\n", date,
            o->commit);
    fprintf(f, "  \"version\": \"%s\",\n", lm_version());
    fprintf(f, "  \"machine\": {\"device\": \"cpu\", \"cpu\": \"%s\", \"cores\": %ld},\n", cpu,
            sysconf(_SC_NPROCESSORS_ONLN));
    fprintf(f, "  \"config\": {\"embed_dim\": %d, \"num_heads\": %d, \"batch\": %d, "
               "\"dtype\": \"%s\", \"causal\": true, \"feature_map\": \"elu1\", "
               "\"normalize\": true, \"decode_steps_per_sample\": %d},\n",
            o->embed, o->heads, o->batch, dtype_name(o->dtype), o->steps);
    fprintf(f, "  \"prefill\": [\n");
    for (int i = 0; i < n; i++)
        fprintf(f,
                "    {\"L\": %lld, \"ms\": %.4f, \"tokens_per_s\": %.1f, "
                "\"extra_bytes\": %lld, \"repeats\": %d}%s\n",
                (long long)rows[i].L, rows[i].ms, rows[i].tokens_per_s, rows[i].extra_bytes,
                rows[i].reps, i + 1 < n ? "," : "");
    fprintf(f, "  ],\n  \"decode\": [\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "    {\"context\": %lld, \"us_per_step\": %.3f}%s\n", (long long)rows[i].L,
                rows[i].step_us, i + 1 < n ? "," : "");
    fprintf(f, "  ]\n}\n");
    return fclose(f) ? 1 : 0;
}

int main(int argc, char **argv)
{
    opts o;
    if (!parse(&o, argc, argv)) {
        fprintf(stderr, "usage: lm-bench [--embed N] [--heads N] [--batch N] [--dtype f32|bf16]\n"
                        "                [--lengths 1K,2K,...] [--steps N] [--seconds S]\n"
                        "                [--commit ID] [--out DIR]\n");
        return 2;
    }
    lm_attn_config cfg;
    CHECK(lm_attn_config_default(&cfg, o.embed, o.heads));
    cfg.dtype = o.dtype;
    const int64_t E = o.embed;
    const size_t es = lm_dtype_size(o.dtype);
    void *w_in = malloc((size_t)(3 * E * E) * es), *w_out = malloc((size_t)(E * E) * es);
    unsigned seed = 7;
    fill_random(w_in, o.dtype, 3 * E * E, 1.0 / sqrt((double)E), &seed);
    fill_random(w_out, o.dtype, E * E, 1.0 / sqrt((double)E), &seed);
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = w_in, .out_proj_weight = w_out };

    printf("lm-bench %s: module prefill (causal, elu+1, normalised), CPU, E=%d, %d heads, "
           "batch %d, %s\n",
           lm_version(), o.embed, o.heads, o.batch, dtype_name(o.dtype));
    printf("%10s %12s %14s %14s %16s\n", "L", "prefill ms", "tokens/s", "extra MB",
           "decode us/step");
    row rows[MAX_LENGTHS];
    for (int i = 0; i < o.n_lengths; i++) {
        fprintf(stderr, "[%d/%d] L = %lld ...\r", i + 1, o.n_lengths, (long long)o.lengths[i]);
        if (measure(&cfg, &w, &o, o.lengths[i], &rows[i]))
            return 1;
        printf("%10lld %12.2f %14.0f %14.1f %16.1f\n", (long long)rows[i].L, rows[i].ms,
               rows[i].tokens_per_s, rows[i].extra_bytes / 1048576.0, rows[i].step_us);
        fflush(stdout);
    }
    for (int i = 0; i < o.n_lengths; i++)
        for (int j = 0; j < o.n_lengths; j++)
            if (rows[j].L == 8 * rows[i].L && rows[i].L >= 1024)
                printf("scaling: time(%lld) / time(%lld) = %.2f (linear: 8)\n",
                       (long long)rows[j].L, (long long)rows[i].L, rows[j].ms / rows[i].ms);
    char path[1024], date[16];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y%m%d", gmtime(&now));
    mkdir(o.out_dir, 0755);
    snprintf(path, sizeof path, "%s/lm-bench-cpu-%s-%s.json", o.out_dir, dtype_name(o.dtype), date);
    if (write_json(&o, rows, o.n_lengths, path))
        return 1;
    printf("wrote %s\n", path);
    free(w_in);
    free(w_out);
    return 0;
}
