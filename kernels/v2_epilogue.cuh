/*
 * v2_epilogue.cuh - the end of a chunk for the readout warpgroup of the v2
 * prefill: the normaliser d_i = phi(q_i).(z_hi + z_lo) + rowsum(A)_i (and
 * d itself to p.den where the caller asked: fp32, one store per row, the
 * hybrid prefill's denominator), O / (d + eps) (or scale O), staged as bf16
 * in the chunk's q tile (the readout is the only reader of q and is done
 * with it; swizzled, so the eight rows of one store sit in eight different
 * pieces), then 16-byte coalesced stores of the rows inside the segment, and
 * the stage handed back.
 */
#ifndef LM_V2_EPILOGUE_CUH
#define LM_V2_EPILOGUE_CUH

#include "v2_intra.cuh"

namespace lmk {
namespace v2 {

__device__ __forceinline__ float quad_sum(float x)
{
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

/* x: the chunk's Intra or Fused (v2_window.cuh): o, n, rs alike. */
template <class T, class X>
__device__ void epilogue(const lmk_attend &p, const Job &j, const Smem<T> &sm, const X &x, int ci, int st)
{
    const int lane = threadIdx.x & 31, w = (threadIdx.x & (GROUP - 1)) >> 5;
    const int g = lane >> 2, t = lane & 3;
    float f[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        /* columns 0 and 1 of the normaliser sit in the quad's lane t = 0 */
        const float zq = __shfl_sync(0xffffffffu, x.n[2 * h] + x.n[2 * h + 1], lane & ~3);
        const float d = zq + quad_sum(x.rs[h]);
        f[h] = p.normalize ? 1.0f / (d + p.eps) : p.scale;
        if (p.den && t == 0) { /* row 16 w + g + 8 h's d, for the hybrid prefill (lm_kernels.h) */
            const int64_t r = j.t_begin + (int64_t)ci * C + 16 * w + g + 8 * h;
            if (r < j.t_end)
                p.den[((int64_t)j.b * p.Hq + j.h) * p.L + r] = d;
        }
    }
    readout_sync(); /* every warp's wgmma done reading q */
#pragma unroll
    for (int r = 0; r < T::D / 2; r += 2) {
        const int i = 16 * w + g + 8 * ((r >> 1) & 1), e = 8 * (r >> 2) + 2 * t;
        *(uint32_t *)(sm.p + sm.q(st) + T::at(T::BLOCK, i, e)) =
            pack_bf16(x.o[r] * f[(r >> 1) & 1], x.o[r + 1] * f[(r >> 1) & 1]);
    }
    readout_sync();
    const int tt = threadIdx.x & (GROUP - 1), cv = tt % T::VPR;
    const int64_t t0 = j.t_begin + (int64_t)ci * C;
#pragma unroll
    for (int m = 0; m < T::VPT; m++) {
        const int i = tt / T::VPR + m * T::RSTEP;
        if (t0 + i < j.t_end)
            *(uint4 *)(j.o + (t0 + i) * p.so[1] + cv * 8) = *(const uint4 *)(sm.p + sm.q(st) + T::at(T::BLOCK, i, cv * 8));
    }
}

} // namespace v2
} // namespace lmk

#endif /* LM_V2_EPILOGUE_CUH */
