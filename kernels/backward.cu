/*
 * backward.cu - the extern "C" entry of the core backward's kernel (device
 * code and design in backward.cuh): the chunk length that fits the GPU's
 * shared memory, occupancy for planning, and the launch of one kind.
 */
#include "backward.cuh"

#include <cuda_runtime.h>

using namespace lmk::bwd;

namespace {

/* ptxas (sm_90a): 255 registers, 4 bytes spilled, at one CTA per SM; capped at
 * 128 for two it spills 444 bytes, and at Dk = Dv = 128 the chunk's 125 KB
 * of shared memory allow only one CTA anyway. */
__global__ void __launch_bounds__(THREADS, 1) backward_kernel(const __grid_constant__ lmk_bwd p, int kind,
                                                           int bc)
{
    extern __shared__ float smem[];
    run(p, kind, bc, smem);
}

/* Chunk of 32 tokens where its layout fits in 160 KB (Dk + Dv <= 256), else
 * 16; 0 when not even that fits the GPU. */
lm_status chunk_of(int Dk, int Dv, int *bc, size_t *bytes)
{
    int dev = 0, optin = 0;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    *bc = 32;
    *bytes = (size_t)shape_of(Dk, Dv, 32).total * sizeof(float);
    if (*bytes > (size_t)optin || *bytes > (160u << 10)) {
        *bc = 16;
        *bytes = (size_t)shape_of(Dk, Dv, 16).total * sizeof(float);
    }
    if (*bytes > (size_t)optin)
        return lmi_error(LM_ERR_UNSUPPORTED,
                         "cuda: the backward needs %zu bytes of shared memory per block at head dims "
                         "%d, %d; this GPU gives %d",
                         *bytes, Dk, Dv, optin);
    LMI_CUDA_TRY(cudaFuncSetAttribute(backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)*bytes));
    return LM_OK;
}

} // namespace

extern "C" lm_status lmk_backward_blocks_per_sm(int Dk, int Dv, int *blocks)
{
    int bc = 0;
    size_t bytes = 0;
    lm_status st = chunk_of(Dk, Dv, &bc, &bytes);
    if (st)
        return st;
    LMI_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, backward_kernel, THREADS, bytes));
    return LM_OK;
}

extern "C" lm_status lmk_backward_launch(const lmk_bwd *p, lmk_bwd_kind kind, void *stream)
{
    if (p->Dk < 1 || p->Dk > LMK_MAX_DK || p->Dv < 1 || p->Dv > LMK_MAX_DK)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: the backward takes head dims 1..%d (Dk %d, Dv %d)",
                         LMK_MAX_DK, p->Dk, p->Dv);
    if (p->has_decay && p->Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %d kv heads (at most %d)", p->Hkv,
                         LMK_MAX_DECAY_HEADS);
    const int64_t ctas = (int64_t)p->B * p->Hkv * p->nseg;
    if (ctas < 1 || ctas > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %lld blocks do not fit a grid", (long long)ctas);
    int bc = 0;
    size_t bytes = 0;
    lm_status st = chunk_of(p->Dk, p->Dv, &bc, &bytes);
    if (st)
        return st;
    backward_kernel<<<(unsigned)ctas, THREADS, bytes, (cudaStream_t)stream>>>(*p, (int)kind, bc);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
