/*
 * seg_decay.cu - the decay over each segment of a masked sequence, for the
 * scans that hand states across segments (scan.cu): with a key padding mask
 * a masked key is no step of the recurrence, so a segment decays the state
 * by g^(its unmasked tokens), not g^(its length). One CTA per (batch row,
 * segment) counts the unmasked tokens, then writes g^count for every kv head
 * (by squaring: a few roundings, against the chunks' repeated products;
 * both are within fp32's last bits of g^count).
 */
#include "lm_kernels.h"

#include <cuda_runtime.h>

namespace {

constexpr int SD_THREADS = 256;

__device__ float pow_count(float g, int n)
{
    float r = 1.0f;
    for (; n; n >>= 1, g *= g)
        if (n & 1)
            r *= g;
    return r;
}

__global__ void seg_decay_kernel(const __grid_constant__ lmk_seg_decay p)
{
    __shared__ int total;
    const int b = blockIdx.x / p.nseg, s = blockIdx.x % p.nseg;
    const int64_t t0 = (int64_t)s * p.seg_len, t1 = min(p.L, t0 + p.seg_len);
    int n = 0;
    for (int64_t t = t0 + threadIdx.x; t < t1; t += SD_THREADS)
        n += !p.mask[b * p.mask_s[0] + t * p.mask_s[1]];
    if (threadIdx.x == 0)
        total = 0;
    __syncthreads();
    atomicAdd(&total, n);
    __syncthreads();
    for (int h = threadIdx.x; h < p.Hkv; h += SD_THREADS)
        p.out[((int64_t)b * p.Hkv + h) * p.nseg + s] = pow_count(p.decay[h], total);
}

} // namespace

extern "C" lm_status lmk_seg_decay_launch(const lmk_seg_decay *p, void *stream)
{
    const int64_t blocks = (int64_t)p->B * p->nseg;
    if (blocks < 1)
        return LM_OK;
    if (blocks > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %lld segments", (long long)blocks);
    seg_decay_kernel<<<(unsigned)blocks, SD_THREADS, 0, (cudaStream_t)stream>>>(*p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
