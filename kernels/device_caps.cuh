/*
 * device_caps.cuh - the current device's compute capability, SM count and
 * opt-in shared memory a block for launchers that consult them on every call
 * (the decode steps, the v2 prefill's eligibility), asked of the driver once
 * per device and then read from a table.
 */
#ifndef LM_DEVICE_CAPS_CUH
#define LM_DEVICE_CAPS_CUH

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace lmk {

struct DeviceCaps {
    int major, minor, sms;
    int smem_optin; /* bytes of shared memory a block may opt in to */
};

/* Devices with an id below this are cached; others are asked every time. */
constexpr int CAPS_DEVICES = 64;

/* One word per device: bit 63 set once filled, then the opt-in shared
 * memory in 16-byte units (bits 32-47), the SM count (16-31), major (8-15)
 * and minor (0-7). A single atomic word needs no lock
 * and no ordering: a reader sees 0 (not yet filled: it asks the driver
 * itself) or a whole entry. Two threads filling the same entry at once
 * store the same value, so the race is benign. An inline function's static
 * is one table for the library, however many files include this. */
inline std::atomic<uint64_t> *caps_table()
{
    static std::atomic<uint64_t> table[CAPS_DEVICES];
    return table;
}

/* *c = the current device's capabilities; a failed query is returned (and
 * nothing cached). cudaGetDevice stays per call: a thread-local lookup of
 * the current context, not a query of the device. */
inline cudaError_t device_caps(DeviceCaps *c)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    std::atomic<uint64_t> *slot = dev >= 0 && dev < CAPS_DEVICES ? &caps_table()[dev] : nullptr;
    const uint64_t w = slot ? slot->load(std::memory_order_relaxed) : 0;
    if (w >> 63) {
        c->major = (int)((w >> 8) & 0xff), c->minor = (int)(w & 0xff), c->sms = (int)((w >> 16) & 0xffff);
        c->smem_optin = (int)((w >> 32) & 0xffff) * 16;
        return cudaSuccess;
    }
    if ((e = cudaDeviceGetAttribute(&c->major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&c->minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
        return e;
    if (slot && c->sms <= 0xffff && c->smem_optin / 16 <= 0xffff) /* else asked every time */
        slot->store(1ull << 63 | (uint64_t)(c->smem_optin / 16) << 32 | (uint64_t)c->sms << 16 |
                        (uint64_t)(c->major & 0xff) << 8 | (uint64_t)(c->minor & 0xff),
                    std::memory_order_relaxed);
    return cudaSuccess;
}

} // namespace lmk

#endif /* LM_DEVICE_CAPS_CUH */
