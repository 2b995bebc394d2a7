/*
 * attend_launch.cuh - host side of the attention kernels: the launch of one
 * instance, and the head-dimension dispatch an instance file instantiates.
 */
#ifndef LM_ATTEND_LAUNCH_CUH
#define LM_ATTEND_LAUNCH_CUH

#include "attend.cuh"

#include <cuda_runtime.h>

namespace lmk {

/* Cluster of the largest size <= want (2, 4, 8) that still runs the grid in as
 * few waves as without clusters (one CTA per SM). On the H100 only 30 clusters
 * of 4 fit at once: 32 heads x 4 value blocks ran in two waves, 1.47x slower
 * than pairs would (measured: 2.21 ms at 8K, 128 chunks). 1 = no cluster. */
template <int DK, int DT> int pick_cluster(int want, int64_t ctas, cudaLaunchConfig_t cfg)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        return 1;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    for (int c = want; c >= 2; c /= 2) {
        attr.val.clusterDim.x = (unsigned)c;
        int fits = 0;
        if (cudaOccupancyMaxActiveClusters(&fits, attend_kernel<DK, DT>, &cfg) != cudaSuccess) {
            cudaGetLastError(); /* not sticky: try a smaller cluster */
            continue;
        }
        if (fits > 0 && (ctas + (int64_t)fits * c - 1) / ((int64_t)fits * c) <= (ctas + sms - 1) / sms)
            return c;
    }
    return 1;
}

template <int DK, int DT> lm_status launch(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s)
{
    typedef Traits<DK, DT> T;
    LMI_CUDA_TRY(cudaFuncSetAttribute(attend_kernel<DK, DT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)T::SMEM));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)ctas);
    cfg.blockDim = dim3(THREADS);
    cfg.dynamicSmemBytes = T::SMEM;
    cfg.stream = s;
    lmk_attend q = p;
    q.cluster = p.cluster > 1 ? pick_cluster<DK, DT>(p.cluster, ctas, cfg) : 1;
    if (q.cluster > 1) {
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = (unsigned)q.cluster;
        attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        LMI_CUDA_TRY(cudaLaunchKernelEx(&cfg, attend_kernel<DK, DT>, q, kind));
        return LM_OK;
    }
    attend_kernel<DK, DT><<<(unsigned)ctas, THREADS, T::SMEM, s>>>(q, kind);
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
