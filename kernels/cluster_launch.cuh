/*
 * cluster_launch.cuh - a kernel launched in clusters of CTAs along x (sm_90
 * thread block clusters): the one place that fills cudaLaunchConfig_t's
 * cluster attribute for the decode kernels, and how many CTAs a decode
 * head gets (decode_cluster).
 */
#ifndef LM_CLUSTER_LAUNCH_CUH
#define LM_CLUSTER_LAUNCH_CUH

#include "device_caps.cuh"

#include <cuda_runtime.h>

#include <cstdint>
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

/* CTAs per (row, kv head) of a decode step (decode.cu, hybrid_decode.cu),
 * each taking 32 of the Dv value columns, at most 8: clusters only on sm_90
 * and only while the pairs are too few to fill the GPU (< 4 x SMs). With
 * more pairs one CTA per pair reads q, k, z and computes phi once: at 8192
 * pairs it measured 2.4x faster than clusters (bench/NOTES.md). */
inline int decode_cluster(const DeviceCaps &caps, int64_t pairs, int Dv)
{
    if (caps.major < 9 || pairs >= 4 * (int64_t)caps.sms)
        return 1;
    const int n = (Dv + 31) / 32;
    return n > 8 ? 8 : n;
}

} // namespace lmk

#endif /* LM_CLUSTER_LAUNCH_CUH */
