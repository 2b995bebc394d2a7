/*
 * ref.h - what the test suites share: typed test buffers with a float64
 * shadow, random data, the float64 reference of docs/DESIGN.md §2 (a direct
 * evaluation of the recurrence, independent of the chunked code) and of its
 * backward (ref_backward.c), one tolerance helper, the backend a shared
 * scenario runs on (test_dev) and the check of a call's error status and
 * message.
 */
#ifndef LM_TEST_REF_H
#define LM_TEST_REF_H

#include "liquid_memory.h"

#include <check.h>
#include <stdint.h>
#include <string.h>

/* A buffer of n elements of dtype plus a float64 copy of exactly the values
 * stored (rounded to dtype), so the reference sees the library's inputs. */
typedef struct tbuf {
    lm_dtype dtype;
    int64_t n;
    void *data;
    double *ref;
} tbuf;

tbuf tbuf_new(lm_dtype dtype, int64_t n);
void tbuf_free(tbuf *b);
/* Fills with uniform values in [lo, hi) from the test's random stream. */
void tbuf_random(tbuf *b, double lo, double hi);
/* Sets every element to NaN (outputs, before each call). */
void tbuf_poison(tbuf *b);
/* Reads element i back as double (for outputs). */
double tbuf_get(const tbuf *b, int64_t i);
/* Stores v (rounded to dtype) at i, updating the shadow. */
void tbuf_set(tbuf *b, int64_t i, double v);

/* Deterministic per-test random stream (xorshift), seeded by the test. */
void ref_seed(uint64_t seed);
double ref_uniform(void);

/* Problem for the reference: [B, L, H, D] arrays indexed through strides
 * (in elements) into the shadows. */
typedef struct ref_view {
    const double *p;
    int64_t s[4];
} ref_view;

typedef struct ref_problem {
    int64_t B, L, Lk, Hq, Hkv, Dk, Dv;
    ref_view q, k, v;
    const uint8_t *mask; /* [B, Lk] contiguous, or NULL */
    const double *state; /* [B, Hkv, Dk, Dv] or NULL */
    const double *normalizer;
    const float *decay;
    int causal, feature_map, normalize;
    double eps, scale;
} ref_problem;

/* out [B, L, Hq, Dv] contiguous; state_out/normalizer_out may be NULL. */
void ref_attend(const ref_problem *p, double *out, double *state_out, double *normalizer_out);

/* The state lm_linear_attn_absorb leaves: that of a causal pass over p's
 * keys (p->q, L, Hq, causal are not read; p->state / normalizer are the
 * initial state or NULL). */
void ref_absorb(const ref_problem *p, double *state_out, double *normalizer_out);

/* Hybrid attention (docs/DESIGN.md §9.1) straight from its definition:
 * per query t the window {j < s} u (t - W, t] with softmax weights
 * gamma_h exp(scale q.k - max) (p->scale is the softmax scale), the evicted
 * keys s <= j <= t - W with phi(q).phi(k), one division. From position 0
 * (p->state unused), causal, normalised, no decay. out [B, L, Hq, Dv]
 * contiguous; `final` (or NULL) gets the state after the L tokens in the
 * library's layout (section 2). gate: Hq logits or NULL (= 0); gate_form:
 * gamma_h = sigmoid(g_h) (LM_GATE_SIGMOID) or exp(g_h) (LM_GATE_EXP). */
typedef struct ref_hybrid_state {
    double *S, *z;         /* [B, Hkv, Dk, Dv], [B, Hkv, Dk] */
    double *keys, *values; /* [B, Hkv, s + W, Dk | Dv], zero in empty slots */
    double *pos;           /* [B, Hkv, s + W]: 0, p + 1, or -(p + 1) when masked */
} ref_hybrid_state;
void ref_hybrid(const ref_problem *p, int64_t window, int64_t sinks, const float *gate,
                lm_gate_form gate_form, double *out, const ref_hybrid_state *final);
/* The buffers of a ref_hybrid_state for `heads` (batch x kv heads) of `slots`
 * (s + W) slots, and their release. */
void ref_hybrid_state_alloc(ref_hybrid_state *st, int64_t heads, int64_t Dk, int64_t Dv, int64_t slots);
void ref_hybrid_state_free(ref_hybrid_state *st);

/* The module of docs/DESIGN.md §2 in float64 (elu+1, normalised, eps 1e-6):
 * out = attend(x_q Wq^T + bq, x_k Wk^T + bk, x_v Wv^T + bv) Wo^T + bo.
 * Inputs are read through strides (elements); biases may be NULL. */
typedef struct ref_module {
    int64_t B, Lq, Lk, E, kdim, vdim, Hq, Hkv, D;
    const double *xq, *xk, *xv;
    int64_t sq[3], sk[3], sv[3];
    const double *wq, *wk, *wv, *wo; /* [Dq, E] [Dkv, kdim] [Dkv, vdim] [E, Dq] */
    const double *bq, *bk, *bv, *bo;
    const uint8_t *mask; /* [B, Lk] contiguous, or NULL */
    const float *decay;
    int causal;
    int hybrid;           /* 1: ref_hybrid with window, sinks, gate instead of ref_attend */
    int64_t window, sinks;
    const float *gate;
    lm_gate_form gate_form;
} ref_module;

/* out [B, Lq, E] contiguous. */
void ref_module_forward(const ref_module *m, double *out);

/* The core backward (lm_linear_attn_backward) in float64 (ref_backward.c):
 * the gradients of sum dout . o + <dstate_out, S_final> + <dnormalizer_out,
 * z_final> for problem p (p->state, p->normalizer: the initial state or
 * NULL; decay only when causal). dq, dk, dv are written at the offsets of
 * p->q, p->k, p->v's views (buffers as large as those), dstate_in and
 * dnormalizer_in [B, Hkv, Dk, Dv], [B, Hkv, Dk] contiguous. With `mag`, the
 * magnitudes instead: every factor |x|, dden = +|dout|.|num| / den^2 (the
 * normaliser a sum of non-negative terms), the scale of rounding error in
 * the sums, for error measures where terms cancel. */
typedef struct ref_grads {
    ref_view dout;                              /* [B, L, Hq, Dv] */
    const double *dstate_out, *dnormalizer_out; /* or NULL: zero */
    double *dq, *dk, *dv, *dstate_in, *dnormalizer_in;
} ref_grads;
void ref_backward(const ref_problem *p, const ref_grads *g, int mag);

/* The feature map phi (lm_feature_map fm) in float64. */
double ref_phi(double x, int fm);

/* ||got - want|| / ||want|| over n elements read through tbuf_get / an
 * array, and whether every element of got is finite where want is. */
typedef struct ref_err {
    double rel;
    int64_t unwritten; /* elements that are NaN in got but finite in want */
} ref_err;
ref_err ref_compare(const tbuf *got, const double *want, int64_t n);
ref_err ref_compare_f32(const float *got, const double *want, int64_t n);

/* Asserts err within bound, naming what; records the largest error per dtype. */
#define REF_CHECK(err, bound, what, ...)                                                     \
    do {                                                                                     \
        ck_assert_msg((err).unwritten == 0, "%s: %lld outputs not written " what,            \
                      __func__, (long long)(err).unwritten, ##__VA_ARGS__);                 \
        ck_assert_msg((err).rel <= (bound), "%s: rel. error %.3g > %.3g " what, __func__,   \
                      (err).rel, (double)(bound), ##__VA_ARGS__);                            \
    } while (0)

/* Error bounds against the float64 reference, per dtype of the inputs and
 * outputs: f32 2e-6, f16 5e-4, bf16 3e-3. The inputs are exactly
 * representable; what remains is fp32 arithmetic (seen: <= 2.4e-7) plus the
 * rounding of the output to its dtype, norm-wise about 2^-9 / sqrt(3) for
 * bf16 (seen: <= 1.9e-3) and 2^-12 / sqrt(3) for f16 (seen: <= 2.2e-4). */
double ref_bound(lm_dtype dtype);

/* A backend a shared scenario runs on (pool_cases.c, hybrid_cases.c): where
 * memory lives, how it is copied, the error bounds. The CPU suites use
 * cpu_dev, the GPU suites gpu_dev (gpu/gpu_util.h). */
typedef struct test_dev {
    lm_device device;
    void *(*alloc)(size_t bytes);
    void (*release)(void *ptr);
    void (*upload)(void *dst, const void *src, size_t bytes);
    void (*download)(void *dst, const void *src, size_t bytes);
    /* Bounds against float64: a call's outputs (want: its n values), the
     * fp32 states carried over calls. */
    double (*out_bound)(lm_dtype dtype, const double *want, int64_t n);
    double (*state_bound)(lm_dtype dtype);
    /* Records an output's error for the suite's summary (NULL: none). */
    void (*note)(const char *what, lm_dtype dtype, const double *want, int64_t n, double rel);
    /* A hybrid call's outputs, where they round more than a linear call's
     * (NULL: out_bound). */
    double (*hybrid_out_bound)(lm_dtype dtype, const double *want, int64_t n);
} test_dev;

/* Host memory, ref_bound, 2e-5 for the fp32 state (test_attend's bound), ref_note. */
extern const test_dev cpu_dev;

/* The bytes of a test buffer's data; a copy of host bytes on dev (release
 * it with dev->release). */
size_t tbuf_bytes(const tbuf *b);
void *test_dev_upload(const test_dev *dev, const void *src, size_t bytes);
/* A case's input where dev's calls read it: host itself on the CPU, else a
 * copy on dev (NULL stays NULL); test_dev_drop releases such a copy. */
void *test_dev_input(const test_dev *dev, void *host, size_t bytes);
void test_dev_drop(const test_dev *dev, void *d);

/* Strides (elements) of a [B, L, W] view with unit last stride: batch-first,
 * or sequence-first memory ([L, B, W]) when seq_first. */
void ref_strides3(int64_t *s, int64_t B, int64_t L, int64_t W, int seq_first);

/* Strides (elements) of a [B, L, H, D] view with unit last stride:
 * batch-first, or sequence-first memory ([L, B, H, D]) when seq_first. */
void ref_strides4(int64_t *s, int64_t B, int64_t L, int64_t H, int64_t D, int seq_first);
/* A CPU descriptor of test buffer b as [B, L, H, D] with strides s. */
lm_tensor ref_view4(const tbuf *b, const int64_t *s, int64_t B, int64_t L, int64_t H, int64_t D);
/* A descriptor of [B, L, H, D] memory on dev with strides s. */
lm_tensor ref_tensor4(void *data, lm_dtype dtype, lm_device dev, const int64_t *s, int64_t B, int64_t L,
                      int64_t H, int64_t D);
/* A descriptor of [B, L, W] memory on dev with strides s (elements). */
lm_tensor ref_tensor3(void *data, lm_dtype dtype, lm_device dev, const int64_t *s, int64_t B, int64_t L,
                      int64_t W);
/* Tokens [t0, t0 + n) of a descriptor whose dimension 1 is the sequence. */
lm_tensor ref_tokens(lm_tensor t, int64_t t0, int64_t n);

/* Records the error for the summary printed at the end of lm-tests. */
void ref_note(lm_dtype dtype, double rel);
void ref_print_summary(void);

/* Asserts that call returns status st and that lm_last_error() mentions needle. */
#define EXPECT_ERR(call, st, needle)                                                          \
    do {                                                                                      \
        lm_status got_ = (call);                                                              \
        ck_assert_msg(got_ == (st), "%s: got %s (%s), expected %s", #call,                    \
                      lm_status_string(got_), lm_last_error(), lm_status_string(st));         \
        ck_assert_msg(strstr(lm_last_error(), (needle)) != NULL,                              \
                      "%s: message \"%s\" does not mention \"%s\"", #call, lm_last_error(),   \
                      (needle));                                                              \
    } while (0)

#endif /* LM_TEST_REF_H */
