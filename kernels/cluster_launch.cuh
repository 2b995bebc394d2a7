/*
 * cluster_launch.cuh - a kernel launched in clusters of CTAs along x (sm_90
 * thread block clusters): the one place that fills cudaLaunchConfig_t's
 * cluster attribute for the decode kernels.
 */
#ifndef LM_CLUSTER_LAUNCH_CUH
#define LM_CLUSTER_LAUNCH_CUH

#include <cuda_runtime.h>

#include <utility>

namespace lmk {

/* kernel<<<blocks, threads, smem, s>>>(args...) in clusters of `cluster` CTAs
 * (blocks a multiple of it). Returns the launch's error. */
template <class... Params, class... Args>
cudaError_t launch_clustered(void (*kernel)(Params...), unsigned blocks, unsigned threads, size_t smem,
                             cudaStream_t s, unsigned cluster, Args &&...args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

} // namespace lmk

#endif /* LM_CLUSTER_LAUNCH_CUH */
