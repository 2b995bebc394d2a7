/*
 * mma.cuh - thin wrappers over the PTX the kernels use: bf16 tensor-core
 * products (mma.sync m16n8k16, fp32 accumulate), ldmatrix, cp.async, the
 * cluster hand-off (st.async, mbarrier), and the hi/lo bf16 split that keeps
 * products near fp32 precision.
 *
 * Fragment layouts (PTX ISA, m16n8k16; g = lane / 4, t = lane % 4):
 *   A 16x16 row-major: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
 *   B 16x8 (k x n):    b0 (k 2t..2t+1, n g)               b1 (k 2t+8.., n g)
 *   C 16x8:            c0 c1 (g, 2t..2t+1)                c2 c3 (g+8, 2t..2t+1)
 */
#ifndef LM_MMA_CUH
#define LM_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace lmk {

/* d += a * b on bf16 operands, fp32 accumulators. */
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8. */
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n");
}

/* Waits until at most n groups of this thread are still in flight. */
template <int n> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" : : "n"(n));
}

/* Cluster hand-off (sm_90; the kernels take these paths only in a cluster,
 * so other targets compile them empty). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LMK_SM90(x) x
#else
#define LMK_SM90(x)
#endif

/* The shared::cluster address of p's place in CTA `rank` of the cluster. */
__device__ __forceinline__ uint32_t cluster_addr(const void *p, int rank)
{
    uint32_t r = 0;
    LMK_SM90(asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(smem_addr(p)), "r"(rank)));
    return r;
}

/* 16 bytes into a peer's shared memory; their arrival counts on the peer's
 * mbarrier. */
__device__ __forceinline__ void st_async16(uint32_t addr, uint4 v, uint32_t mbar)
{
    LMK_SM90(asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n"
                          :
                          : "r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(mbar)
                          : "memory"));
}

__device__ __forceinline__ void mbar_init(uint64_t *b, int count)
{
    LMK_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" : : "r"(smem_addr(b)), "r"(count) : "memory"));
}

/* The inits visible to the cluster (before the cluster barrier that follows). */
__device__ __forceinline__ void mbar_init_fence()
{
    LMK_SM90(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"));
}

/* One arrival, and `bytes` more to wait for in this phase. */
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes)
{
    LMK_SM90(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                          :
                          : "r"(smem_addr(b)), "r"(bytes)
                          : "memory"));
}

/* Until the phase of the given parity has completed. */
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity)
{
    uint32_t done = 1;
    do {
        LMK_SM90(asm volatile("{\n\t.reg .pred p;\n\t"
                              "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                              "selp.u32 %0, 1, 0, p;\n\t}\n"
                              : "=r"(done)
                              : "r"(smem_addr(b)), "r"(parity)
                              : "memory"));
    } while (!done);
}

#undef LMK_SM90

__device__ __forceinline__ uint32_t pack_bf16(float lo_elem, float hi_elem)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo_elem, hi_elem);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* x = hi + lo with hi = bf16(x): two bf16 terms carry ~16 bits of x. */
__device__ __forceinline__ void split_bf16(float x, __nv_bfloat16 &hi, __nv_bfloat16 &lo)
{
    hi = __float2bfloat16_rn(x);
    lo = __float2bfloat16_rn(x - __bfloat162float(hi));
}

/* Packs (x0, x1) as bf16 pairs hi and lo. */
__device__ __forceinline__ void split_pack(float x0, float x1, uint32_t &hi, uint32_t &lo)
{
    __nv_bfloat16 h0, l0, h1, l1;
    split_bf16(x0, h0, l0);
    split_bf16(x1, h1, l1);
    __nv_bfloat162 h = __halves2bfloat162(h0, h1), l = __halves2bfloat162(l0, l1);
    hi = *reinterpret_cast<uint32_t *>(&h);
    lo = *reinterpret_cast<uint32_t *>(&l);
}

} // namespace lmk

#endif /* LM_MMA_CUH */
