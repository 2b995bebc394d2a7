/*
 * attend_launch.cuh - host side of the attention kernels: the launch of one
 * instance, and the head-dimension dispatch an instance file instantiates.
 */
#ifndef LM_ATTEND_LAUNCH_CUH
#define LM_ATTEND_LAUNCH_CUH

#include "attend.cuh"

#include <cuda_runtime.h>

namespace lmk {

/* With p.cluster > 1 the value blocks of a head run as one cluster; when the
 * GPU cannot place such clusters, the same work runs without them. */
template <int DK, int DT> lm_status launch(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s)
{
    typedef Traits<DK, DT> T;
    LMI_CUDA_TRY(cudaFuncSetAttribute(attend_kernel<DK, DT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)T::SMEM));
    if (p.cluster > 1) {
        LMI_CUDA_TRY(cudaFuncSetAttribute(attend_kernel<DK, DT>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = (unsigned)p.cluster;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.gridDim = dim3((unsigned)ctas);
        cfg.blockDim = dim3(THREADS);
        cfg.dynamicSmemBytes = T::SMEM;
        cfg.stream = s;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        int fits = 0;
        if (cudaOccupancyMaxActiveClusters(&fits, attend_kernel<DK, DT>, &cfg) == cudaSuccess && fits > 0) {
            LMI_CUDA_TRY(cudaLaunchKernelEx(&cfg, attend_kernel<DK, DT>, p, kind));
            return LM_OK;
        }
        cudaGetLastError(); /* not sticky; run without clusters */
        lmk_attend q = p;
        q.cluster = 1;
        attend_kernel<DK, DT><<<(unsigned)ctas, THREADS, T::SMEM, s>>>(q, kind);
        LMI_CUDA_TRY(cudaGetLastError());
        return LM_OK;
    }
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
