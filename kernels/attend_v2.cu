/*
 * attend_v2.cu - the v2 prefill (sm_90a): one CTA per (batch row, head,
 * segment) with all value columns and three warpgroups, FA3-style:
 *   warpgroup 0  loads and phi (v2_loads.cuh)        72 registers
 *                (1 loader warp: cp.async, or one lane's TMA copies
 *                where tma_maps encodes the call; 3 warps converting)
 *   warpgroup 1  readout: v2_intra.cuh, v2_epilogue   200 registers
 *   warpgroup 2  state: v2_state.cuh                  232 registers
 * ordered by mbarriers: landed / full / empty per stage (3 stages of q, k, v), and
 * s_full / s_free around the one bf16 copy of the state the readout reads.
 * Compensated calls run their own instantiation (COMP), whose state
 * warpgroup folds each chunk's increment from a fresh accumulator
 * (v2_state.cuh, fold_fresh); the host keeps their segments to at most
 * LMK_V2_COMP_SEG tokens and sums them with Kahan in the scan.
 * A pool's varlen prefill runs the same kernel over a table of sequences
 * (P = lmk_attend_pack: one instantiation per D, uncompensated), and
 * lmk_attend_pack_copy_launch moves their final states into the slots.
 * A hybrid prefill's window runs inside the CAUSAL launch where
 * lmk_attend_window_refusal allows it (P = Hyb: v2_window.cuh's readout, the
 * layout's HYB tiles; TMA loads).
 * The kernel body exists only in the sm_90a build; lmk_attend_launch calls
 * this launcher only on compute capability 9.0 (see lmk_attend_v2_takes).
 * Plan, budget and measurements: bench/NOTES.md, "Kernel v2".
 */
#include "device_caps.cuh"
#include "v2_epilogue.cuh"
#include "v2_loads.cuh"
#include "v2_state.cuh"
#include "v2_window.cuh"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <string.h>
#include <type_traits>

namespace lmk {
namespace v2 {

/* The layout of a launch with parameters P: with the hybrid window's tiles for Hyb. */
template <int D, class P> using ShapeOf = Shape<D, std::is_same<P, Hyb>::value>;

/* The readout warpgroup's chunks: Intra, or Fused with the hybrid window
 * (which also waits for the next chunk's keys, its window's last). */
template <class T, class P> __device__ void readout(const P &pp, const lmk_attend &p, const Job &j, const Smem<T> &sm)
{
    if constexpr (T::HYB) {
        const lmk_window &w = *window_of(pp);
        const uint32_t bits = w.ns > 0 ? w.sink_bits[j.head] : 0u;
        Fused<T> x;
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES, sn = (c + 1) % STAGES;
            wait(sm.landed(st), (uint32_t)((c / STAGES) & 1)); /* raw q, k, v: read here, not converted */
            wait(sm.full(st), (uint32_t)((c / STAGES) & 1));
            wait(sm.s_full(), (uint32_t)(c & 1));
            wait(sm.landed(sn), (uint32_t)(((c + 1) / STAGES) & 1));
            x.run(p, w, w.gamma[j.h], bits, sm, c, st, sn);
            epilogue(p, j, sm, x, c, st);
            arrive(sm.empty(st));
        }
    } else {
        Intra<T> x;
        for (int c = 0; c < j.nch; c++) {
            const int st = c % STAGES;
            wait(sm.full(st), (uint32_t)((c / STAGES) & 1));
            wait(sm.s_full(), (uint32_t)(c & 1));
            x.run(sm, st);
            epilogue(p, j, sm, x, c, st);
            arrive(sm.empty(st));
        }
    }
}

template <int D, bool COMP, class P>
__global__ void __launch_bounds__(THREADS, 1) kernel(const __grid_constant__ P pp, const __grid_constant__ Tma tm,
                                                     int kind)
{
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef ShapeOf<D, P> T;
    const lmk_attend &p = attend_of(pp);
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t pad = (1024 - (raw & 1023)) & 1023; /* swizzled tiles start 1024-aligned */
    const Smem<T> sm = { smem_raw + pad, raw + pad };
    const Job j = job_of(pp, kind);
    const int role = threadIdx.x / GROUP;

    if (threadIdx.x == 0) {
        for (int st = 0; st < STAGES; st++) {
            cuda::ptx::mbarrier_init(sm.full(st), CONVERTERS);
            cuda::ptx::mbarrier_init(sm.landed(st), landed_count(tm));
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
        produce<T>(p, tm, j, sm, window_of(pp));
    } else if (role == 1) {
        regs_raise<REGS_READ>();
        if (!j.causal)
            return;
        readout<T>(pp, p, j, sm);
    } else {
        regs_raise<REGS_STATE>();
        State<T, COMP> s;
        s.run(j, state_io(pp, j), sm);
    }
#endif
}

template <int D, bool COMP, class P>
lm_status launch(const P &p, const Tma &tm, int64_t ctas, int kind, cudaStream_t stream)
{
    if (ctas < 1 || ctas > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %lld blocks do not fit a grid", (long long)ctas);
    const size_t smem = ShapeOf<D, P>::SMEM;
    LMI_CUDA_TRY(cudaFuncSetAttribute(kernel<D, COMP, P>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<D, COMP, P><<<(unsigned)ctas, THREADS, smem, stream>>>(p, tm, kind);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

/* cuTensorMapEncodeTiled from the driver (the runtime's entry point: no
 * link against libcuda); NULL where the driver lacks it. */
static PFN_cuTensorMapEncodeTiled_v12000 encoder()
{
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *f = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            f = nullptr;
        return (PFN_cuTensorMapEncodeTiled_v12000)f;
    }();
    return fn;
}

/* A [B, L, H, D] bf16 view (strides s in elements, D contiguous) as a map
 * of 64 x 64 boxes; NULL, or why TMA cannot take it (base not 16-byte
 * aligned, a stride not a positive multiple of 16 bytes, no encoder, the
 * encoder's refusal). */
static const char *map_of(CUtensorMap *m, const void *base, const int64_t *s, int64_t L, int H, int B, int D)
{
    const PFN_cuTensorMapEncodeTiled_v12000 enc = encoder();
    if (!enc)
        return "the driver has no cuTensorMapEncodeTiled";
    if ((uintptr_t)base % 16 != 0)
        return "a base address is not 16-byte aligned";
    for (int i = 0; i < 3; i++)
        if (s[i] <= 0 || s[i] % 8 != 0 || s[i] >= ((int64_t)1 << 39))
            return "a token, head or batch stride is not a positive multiple of 16 bytes";
    const cuuint64_t dim[4] = { (cuuint64_t)D, (cuuint64_t)L, (cuuint64_t)H, (cuuint64_t)B };
    const cuuint64_t stride[3] = { (cuuint64_t)s[1] * 2, (cuuint64_t)s[2] * 2, (cuuint64_t)s[0] * 2 };
    const cuuint32_t box[4] = { 64, (cuuint32_t)C, 1, 1 }, one[4] = { 1, 1, 1, 1 };
    return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void *>(base), dim, stride, box, one,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS
               ? nullptr
               : "cuTensorMapEncodeTiled refused a view";
}

/* The call's maps where TMA takes every tensor the launch reads (q only for
 * CAUSAL; k and v over the window's Lk rows where one is fused); on = 0
 * otherwise (*why says why, where given): masked keys need cp.async's
 * zero-fill, and coordinates are 32-bit. A fused window needs TMA (its
 * loader has no cp.async path): the host asks lmk_attend_window_refusal first,
 * which asks this. */
static Tma tma_maps(const lmk_attend &p, int kind, const char **why = nullptr)
{
    Tma m;
    memset(&m, 0, sizeof m);
    const int64_t Lk = p.win ? p.win->Lk : p.L;
    const char *no = nullptr;
    if (p.v2_cpasync && !p.win)
        no = "LM_V2_LOADS=cpasync";
    else if (p.mask)
        no = "a key mask";
    else if (Lk > INT32_MAX)
        no = "over 2^31 rows";
    else if (kind == LMK_CAUSAL && (no = map_of(&m.q, p.q, p.sq, p.L, p.Hq, p.B, p.Dk)))
        ;
    else if (!(no = map_of(&m.k, p.k, p.sk, Lk, p.Hkv, p.B, p.Dk)))
        no = map_of(&m.v, p.v, p.sv, Lk, p.Hkv, p.B, p.Dv);
    m.on = !no;
    if (why)
        *why = no;
    return m;
}

template <int D, bool COMP> lm_status launch(const lmk_attend &p, int kind, cudaStream_t stream)
{
    return launch<D, COMP>(p, tma_maps(p, kind), (int64_t)p.B * (kind == LMK_ABSORB ? p.Hkv : p.Hq) * p.nseg, kind,
                           stream);
}

/* The fused hybrid launch: the call and a copy of its window travel by value. */
template <int D> lm_status launch_window(const lmk_attend &p, cudaStream_t stream)
{
    const Tma m = tma_maps(p, LMK_CAUSAL);
    if (!m.on)
        return lmi_error(LM_ERR_INTERNAL, "cuda: a fused hybrid window on a launch TMA cannot load "
                                          "(ask lmk_attend_window_refusal first)");
    Hyb h;
    h.a = p;
    h.w = *p.win;
    const int64_t ctas = (int64_t)p.B * p.Hq * p.nseg;
    return p.compensated ? launch<D, true>(h, m, ctas, LMK_CAUSAL, stream)
                         : launch<D, false>(h, m, ctas, LMK_CAUSAL, stream);
}

static_assert(sizeof(Hyb) + sizeof(Tma) + sizeof(int) <= 32764, "Hyb over the kernel parameter limit");

/* The packed launch's parameters (its table) within the 32,764 bytes a
 * kernel may take on CUDA 12.1+ (Volta and newer). */
static_assert(sizeof(lmk_attend_pack) + sizeof(Tma) + sizeof(int) <= 32764,
              "lmk_attend_pack over the kernel parameter limit");

/* Every entry's final state from its scratch into its slot: blockIdx.y is
 * the entry, the x blocks stride over its Hkv (Dk Dv + Dk) floats. */
__global__ void pack_copy(const __grid_constant__ lmk_attend_pack p)
{
    const lmk_pack_entry &e = p.e[blockIdx.y];
    if (e.slot < 0)
        return;
    const int64_t nS = (int64_t)p.a.Hkv * p.a.Dk * p.a.Dv, nz = (int64_t)p.a.Hkv * p.a.Dk;
    const float *fS = p.fin_S + blockIdx.y * nS, *fz = p.fin_z + blockIdx.y * nz;
    float *S = p.S + e.slot * p.S_slot, *z = p.z + e.slot * p.z_slot;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nS + nz; i += (int64_t)gridDim.x * blockDim.x) {
        if (i < nS)
            S[i] = fS[i];
        else
            z[i - nS] = fz[i - nS];
    }
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

/* Base and the token and head strides of a [1, T, H, D] bf16 view in
 * 16-byte units (the producer's cp.async rows). */
static bool rows16(const void *base, const int64_t *s)
{
    return (uintptr_t)base % 16 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0;
}

extern "C" int lmk_attend_pack_takes(const lmk_attend *a)
{
    return lmk_attend_v2_takes(a, LMK_CAUSAL) && !a->compensated && !a->mask && rows16(a->q, a->sq) &&
           rows16(a->k, a->sk) && rows16(a->v, a->sv) && rows16(a->out, a->so);
}

extern "C" lm_status lmk_attend_pack_launch(const lmk_attend_pack *p, void *stream)
{
    if (p->n < 1)
        return LM_OK;
    const cudaStream_t s = (cudaStream_t)stream;
    const int64_t ctas = (int64_t)p->n * p->a.Hq;
    lmk::v2::Tma off; /* rows past an entry's end are the next sequence's: cp.async zero-fills them */
    memset(&off, 0, sizeof off);
    return p->a.Dk == 64 ? lmk::v2::launch<64, false>(*p, off, ctas, LMK_CAUSAL, s)
                         : lmk::v2::launch<128, false>(*p, off, ctas, LMK_CAUSAL, s);
}

extern "C" lm_status lmk_attend_pack_copy_launch(const lmk_attend_pack *p, void *stream)
{
    if (p->n < 1 || !p->fin_S)
        return LM_OK;
    const int64_t floats = (int64_t)p->a.Hkv * (p->a.Dk * p->a.Dv + p->a.Dk), threads = 256;
    const int64_t blocks = (floats + 16 * threads - 1) / (16 * threads); /* 16 floats a thread */
    lmk::v2::pack_copy<<<dim3((unsigned)(blocks < 1024 ? blocks : 1024), (unsigned)p->n), (unsigned)threads, 0,
                         (cudaStream_t)stream>>>(*p);
    LMI_CUDA_TRY(cudaGetLastError());
    return LM_OK;
}

extern "C" const char *lmk_attend_window_refusal(const lmk_attend *p, const lmk_window *w)
{
    if (!lmk_attend_v2_runs(p, LMK_CAUSAL))
        return "the call does not run on kernel v2 (bf16, Dk = Dv in {64, 128}, 16-byte rows, "
               "compute capability 9.0, LM_ATTEND_KERNEL not v1)";
    if (p->mask)
        return "a key mask";
    if (w->W < 1 || w->W > LMK_WINDOW_MAX)
        return "the window is over 64";
    if (w->ns < 0 || w->ns > LMK_WINDOW_SINKS)
        return "more than 16 sinks";
    if (p->Hq > LMK_MAX_HYBRID_HEADS)
        return "too many query heads";
    lmk_attend a = *p;
    a.win = w;
    const char *why = nullptr;
    (void)lmk::v2::tma_maps(a, LMK_CAUSAL, &why);
    return why;
}

extern "C" lm_status lmk_attend_v2_launch(const lmk_attend *p, lmk_kind kind, void *stream)
{
    const cudaStream_t s = (cudaStream_t)stream;
    if (p->win && kind == LMK_CAUSAL)
        return p->Dk == 64 ? lmk::v2::launch_window<64>(*p, s) : lmk::v2::launch_window<128>(*p, s);
    if (p->compensated) /* its own kernel: the state warpgroup's registers differ */
        return p->Dk == 64 ? lmk::v2::launch<64, true>(*p, kind, s) : lmk::v2::launch<128, true>(*p, kind, s);
    return p->Dk == 64 ? lmk::v2::launch<64, false>(*p, kind, s) : lmk::v2::launch<128, false>(*p, kind, s);
}
