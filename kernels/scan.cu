/*
 * scan.cu - the prefix (causal segments) or the fold (bidirectional keys,
 * lm_linear_attn_absorb) over sequence segments of the state increments that
 * LMK_ABSORB writes (see lmk_scan in lm_kernels.h). One thread per element of
 * S and z, sequential over segments in fp32 (Kahan when compensated). It
 * moves nseg x 66 KiB per head (Dk = Dv = 128) once: cheap next to the pass
 * over q, k, v that it makes parallel.
 */
#include "lm_kernels.h"

#include <cuda_runtime.h>

namespace {

constexpr int SCAN_THREADS = 256;

__global__ void scan_kernel(const __grid_constant__ lmk_scan p)
{
    const int64_t SS = (int64_t)p.Dk * p.Dv, per = SS + p.Dk;
    const int64_t gid = (int64_t)blockIdx.x * SCAN_THREADS + threadIdx.x;
    if (gid >= (int64_t)p.n * per)
        return;
    const int64_t head = gid / per, i = gid % per;
    float *part;
    int64_t stride;
    const float *init;
    float *total;
    if (i < SS) {
        part = p.part.S + head * SS + i, stride = p.part.seg_S;
        init = p.S0 ? p.S0 + head * SS + i : nullptr;
        total = p.S_total ? p.S_total + head * SS + i : nullptr;
    } else {
        part = p.part.z + head * p.Dk + (i - SS), stride = p.part.seg_z;
        init = p.z0 ? p.z0 + head * p.Dk + (i - SS) : nullptr;
        total = p.z_total ? p.z_total + head * p.Dk + (i - SS) : nullptr;
    }
    /* Decay over a whole segment: its chunks' g^64, multiplied as the chunks
     * do; over the last one (fold): its whole chunks', then g per token. With
     * a mask, per segment from lmk_seg_decay (a masked key is no step). */
    float gs = 1.0f, gl = 1.0f;
    const float *seg_g = p.seg_g ? p.seg_g + head * p.seg_g_h : nullptr;
    if (p.has_decay && !seg_g) {
        const float g = p.decay[head % p.Hkv];
        float g64 = 1.0f;
        for (int k = 0; k < LMK_CHUNK; k++)
            g64 *= g;
        for (int64_t k = 0; k < p.seg_chunks; k++)
            gs *= g64;
        if (!p.prefix) {
            for (int64_t k = 0; k < p.last_tokens / LMK_CHUNK; k++)
                gl *= g64;
            for (int64_t k = 0; k < p.last_tokens % LMK_CHUNK; k++)
                gl *= g;
        }
    }
    float run = init ? *init : 0.0f, c = 0.0f;
    for (int s = 0; s < p.nseg; s++) {
        float *ps = part + s * stride;
        float d;
        if (p.prefix) {
            d = s < p.nseg - 1 ? *ps : 0.0f;
            *ps = run;
            if (s == p.nseg - 1)
                break;
        } else {
            d = *ps;
        }
        const float g = seg_g ? seg_g[s * p.seg_g_s] : p.prefix || s < p.nseg - 1 ? gs : gl;
        if (p.compensated) {
            const float base = run * g, y = d - c * g, sum = base + y;
            c = (sum - base) - y;
            run = sum;
        } else {
            run = run * g + d;
        }
    }
    if (!p.prefix && total)
        *total = run;
}

} // namespace

extern "C" lm_status lmk_scan_launch(const lmk_scan *p, void *stream)
{
    const int64_t n = (int64_t)p->n * ((int64_t)p->Dk * p->Dv + p->Dk);
    const int64_t blocks = (n + SCAN_THREADS - 1) / SCAN_THREADS;
    if (blocks > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: state of %lld floats is too large", (long long)n);
    scan_kernel<<<(unsigned)blocks, SCAN_THREADS, 0, (cudaStream_t)stream>>>(*p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
