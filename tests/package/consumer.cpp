// consumer.cpp - a small C++ program linked through find_package(LiquidMemory)
// (shared or static): the header compiles as C++, the library's version is
// the header's, a causal prefill matches the recurrence, and the status of a
// CUDA handle is printed for check.sh ("cuda: <status>: <message>").
#include <liquid_memory.h>

#include <cmath>
#include <cstdio>

static double phi(double x)
{
    return x > 0 ? x + 1 : std::exp(x);
}

int main()
{
    if (lm_version_number() != LM_VERSION_NUMBER) {
        std::printf("library %d, header %d\n", lm_version_number(), LM_VERSION_NUMBER);
        return 1;
    }
    // q, k, v [B = 1, L = 3, H = 1, D = 2], elu+1, normalised, causal.
    float q[6] = { 0.5f, -1.0f, 0.25f, 2.0f, -0.5f, 1.0f };
    float k[6] = { 1.0f, 0.5f, -2.0f, 0.75f, 0.0f, -1.5f };
    float v[6] = { 1.0f, 2.0f, -1.0f, 0.5f, 3.0f, -2.0f };
    float out[6];
    lm_tensor tq = lm_tensor_4d(q, LM_F32, LM_CPU, 1, 3, 1, 2);
    lm_tensor tk = lm_tensor_4d(k, LM_F32, LM_CPU, 1, 3, 1, 2);
    lm_tensor tv = lm_tensor_4d(v, LM_F32, LM_CPU, 1, 3, 1, 2);
    lm_tensor to = lm_tensor_4d(out, LM_F32, LM_CPU, 1, 3, 1, 2);
    lm_core_args a;
    if (lm_core_args_default(&a) != LM_OK)
        return 1;
    a.q = &tq, a.k = &tk, a.v = &tv, a.out = &to;
    if (lm_linear_attn_prefill(&a, nullptr) != LM_OK) {
        std::printf("prefill: %s\n", lm_last_error());
        return 1;
    }
    double S[2][2] = {}, z[2] = {};
    for (int t = 0; t < 3; t++) {
        for (int d = 0; d < 2; d++) {
            z[d] += phi(k[2 * t + d]);
            for (int e = 0; e < 2; e++)
                S[d][e] += phi(k[2 * t + d]) * v[2 * t + e];
        }
        const double den = phi(q[2 * t]) * z[0] + phi(q[2 * t + 1]) * z[1] + 1e-6;
        for (int e = 0; e < 2; e++) {
            const double want = (phi(q[2 * t]) * S[0][e] + phi(q[2 * t + 1]) * S[1][e]) / den;
            if (std::fabs(out[2 * t + e] - want) > 1e-5 * (1 + std::fabs(want))) {
                std::printf("out[%d][%d] = %g, expected %g\n", t, e, out[2 * t + e], want);
                return 1;
            }
        }
    }
    lm_attn_config cfg;
    if (lm_attn_config_default(&cfg, 8, 2) != LM_OK)
        return 1;
    cfg.device = LM_CUDA;
    lm_attn *h = nullptr;
    const lm_status st = lm_attn_create(&cfg, &h);
    std::printf("cuda: %s: %s\n", lm_status_string(st), st ? lm_last_error() : "");
    lm_attn_destroy(h);
    std::printf("ok\n");
    return 0;
}
