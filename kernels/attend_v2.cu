/*
 * attend_v2.cu - the v2 prefill (sm_90a): one CTA per (batch row, head,
 * segment) with all value columns and three warpgroups, FA3-style:
 *   warpgroup 0  loads and phi (v2_loads.cuh)        72 registers
 *   warpgroup 1  readout: v2_intra.cuh, v2_epilogue   200 registers
 *   warpgroup 2  state: v2_state.cuh                  232 registers
 * ordered by mbarriers: full / empty per stage (3 stages of q, k, v), and
 * s_full / s_free around the one bf16 copy of the state the readout reads.
 * Compensated calls run their own instantiation (COMP), whose state
 * warpgroup folds each chunk's increment from a fresh accumulator
 * (v2_state.cuh, fold_fresh); the host keeps their segments to at most
 * LMK_V2_COMP_SEG tokens and sums them with Kahan in the scan.
 * The kernel body exists only in the sm_90a build; lmk_attend_launch calls
 * this launcher only on compute capability 9.0 (see lmk_attend_v2_takes).
 * Plan, budget and measurements: bench/NOTES.md, "Kernel v2".
 */
#include "device_caps.cuh"
#include "v2_epilogue.cuh"
#include "v2_loads.cuh"
#include "v2_state.cuh"

#include <cuda_runtime.h>

namespace lmk {
namespace v2 {

template <int D, bool COMP> __global__ void __launch_bounds__(THREADS, 1) kernel(const __grid_constant__ lmk_attend p, int kind)
{
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef Shape<D> T;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t pad = (1024 - (raw & 1023)) & 1023; /* swizzled tiles start 1024-aligned */
    const Smem<T> sm = { smem_raw + pad, raw + pad };
    const Job j = job_of(p, kind);
    const int role = threadIdx.x / GROUP;

    if (threadIdx.x == 0) {
        for (int st = 0; st < STAGES; st++) {
            cuda::ptx::mbarrier_init(sm.full(st), GROUP);
            cuda::ptx::mbarrier_init(sm.empty(st), j.causal ? 2 * GROUP : GROUP);
        }
        cuda::ptx::mbarrier_init(sm.s_full(), GROUP);
        cuda::ptx::mbarrier_init(sm.s_free(), GROUP);
    }
    /* z tile (rows 2-7 stay 0) and ones tile (row 0 = 1, the rest 0). */
    for (int i = threadIdx.x; i < (int)((T::BARS - T::ZT) / 4); i += THREADS) {
        const uint32_t o = T::ZT + 4 * i;
        *(uint32_t *)(sm.p + o) = o >= T::ONES && o < T::ONES + 128 ? 0x3f803f80u : 0u;
    }
    to_async_proxy();
    __syncthreads();

    if (role == 0) {
        regs_lower<REGS_LOAD>();
        const Loads<T> ld = { p, j, sm, (int)threadIdx.x };
        ld.run();
    } else if (role == 1) {
        regs_raise<REGS_READ>();
        if (!j.causal)
            return;
        Intra<T> x;
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            wait(sm.full(st), (uint32_t)((c / STAGES) & 1));
            wait(sm.s_full(), (uint32_t)(c & 1));
            x.run(sm, st);
            epilogue(p, j, sm, x, c, st);
            arrive(sm.empty(st));
        }
    } else {
        regs_raise<REGS_STATE>();
        State<T, COMP> s;
        s.run(p, j, sm);
    }
#endif
}

template <int D, bool COMP> lm_status launch(const lmk_attend &p, int kind, cudaStream_t stream)
{
    const int64_t ctas = (int64_t)p.B * (kind == LMK_ABSORB ? p.Hkv : p.Hq) * p.nseg;
    if (ctas < 1 || ctas > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %lld blocks do not fit a grid", (long long)ctas);
    LMI_CUDA_TRY(cudaFuncSetAttribute(kernel<D, COMP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Shape<D>::SMEM));
    kernel<D, COMP><<<(unsigned)ctas, THREADS, Shape<D>::SMEM, stream>>>(p, kind);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

} // namespace v2
} // namespace lmk

extern "C" int lmk_attend_v2_takes(const lmk_attend *p, lmk_kind kind)
{
    if (kind == LMK_READOUT || p->dtype != LM_BF16 || p->Dk != p->Dv || (p->Dk != 64 && p->Dk != 128) ||
        p->has_decay)
        return 0;
    lmk::DeviceCaps caps; /* cached per device (device_caps.cuh) */
    if (lmk::device_caps(&caps) != cudaSuccess)
        return 0;
    return caps.major == 9 && caps.minor == 0; /* sm_90a code runs on 9.0 only */
}

extern "C" lm_status lmk_attend_v2_launch(const lmk_attend *p, lmk_kind kind, void *stream)
{
    const cudaStream_t s = (cudaStream_t)stream;
    if (p->compensated) /* its own kernel: the state warpgroup's registers differ */
        return p->Dk == 64 ? lmk::v2::launch<64, true>(*p, kind, s) : lmk::v2::launch<128, true>(*p, kind, s);
    return p->Dk == 64 ? lmk::v2::launch<64, false>(*p, kind, s) : lmk::v2::launch<128, false>(*p, kind, s);
}
