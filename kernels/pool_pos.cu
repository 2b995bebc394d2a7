/*
 * pool_pos.cu - the positions of a pool's slots after a varlen prefill: one
 * thread per sequence sets pos[slot] = (fresh ? 0 : pos[slot]) + len, from a
 * table passed by value (no copy from the host: graph-capturable). The
 * decode kernel advances positions of its own rows (decode.cu).
 */
#include "lm_kernels.h"

#include <cuda_runtime.h>

namespace {

__global__ void pos_update_kernel(const __grid_constant__ lmk_pos_update p)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n)
        return;
    int64_t *pos = p.pos + p.e[i].slot;
    *pos = (p.e[i].fresh ? 0 : *pos) + p.e[i].len;
}

} // namespace

extern "C" lm_status lmk_pos_update_launch(const lmk_pos_update *p, void *stream)
{
    if (p->n < 1)
        return LM_OK;
    pos_update_kernel<<<(p->n + 255) / 256, 256, 0, (cudaStream_t)stream>>>(*p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}
