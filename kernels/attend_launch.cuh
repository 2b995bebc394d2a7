/*
 * attend_launch.cuh - host side of the attention kernels: the launch of one
 * instance, and the head-dimension dispatch an instance file instantiates.
 */
#ifndef LM_ATTEND_LAUNCH_CUH
#define LM_ATTEND_LAUNCH_CUH

#include "attend.cuh"

#include <cuda_runtime.h>

namespace lmk {

template <int DK, int DT> lm_status launch(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s)
{
    typedef Traits<DK, DT> T;
    LMI_CUDA_TRY(cudaFuncSetAttribute(attend_kernel<DK, DT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)T::SMEM));
    attend_kernel<DK, DT><<<(unsigned)ctas, THREADS, T::SMEM, s>>>(p, kind);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

/* Dk is padded up to the next instance: 64, 128 or 256. */
template <int DT> lm_status launch_dt(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s)
{
    if (p.Dk <= 64)
        return launch<64, DT>(p, kind, ctas, s);
    if (p.Dk <= 128)
        return launch<128, DT>(p, kind, ctas, s);
    return launch<256, DT>(p, kind, ctas, s);
}

lm_status attend_bf16(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s);
lm_status attend_f16(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s);
lm_status attend_f32(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s);

} // namespace lmk

#endif /* LM_ATTEND_LAUNCH_CUH */
