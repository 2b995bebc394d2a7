/*
 * mma.cuh - thin wrappers over the PTX the kernels use: bf16 tensor-core
 * products (mma.sync m16n8k16, fp32 accumulate), ldmatrix, cp.async, the
 * cluster hand-off (st.async, mbarrier), the hi/lo bf16 split that keeps
 * products near fp32 precision, and for v2 (sm_90a, at the end) warpgroup
 * MMA on 128-byte-swizzled tiles: the swizzle, descriptors, wgmma and its
 * fences, setmaxnreg (cuda::ptx wraps none of these; v2's mbarriers and
 * proxy fences come from <cuda/ptx>).
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

/* Tile loads for m16n8k16 (bf16 tiles in shared memory, `pitch` elements a
 * row, rows 16-byte aligned), in the fragment layouts above.
 * The A fragment of the 16x16 tile at `tile` (row-major: rows = m, columns = k). */
__device__ __forceinline__ void ldsm_a16(uint32_t (&a)[4], const __nv_bfloat16 *tile, int pitch)
{
    const int l = threadIdx.x & 31;
    ldsm_x4(a, tile + (l & 15) * pitch + (l >> 4) * 8);
}

/* The B fragments of a k16 x n16 pair (two n8 tiles: b[0], b[1] of columns
 * n..n+7, b[2], b[3] of n+8..n+15) from a tile stored n-major (row n holds
 * its 16 k: the keys of Q K^T). */
__device__ __forceinline__ void ldsm_b16_nmajor(uint32_t (&b)[4], const __nv_bfloat16 *tile, int pitch)
{
    const int l = threadIdx.x & 31;
    ldsm_x4(b, tile + ((l & 7) + (l >> 4) * 8) * pitch + ((l >> 3) & 1) * 8);
}

/* The same pair from a tile stored k-major (row k holds its 16 n: the values
 * of P V), through the transposing load. */
__device__ __forceinline__ void ldsm_b16_kmajor(uint32_t (&b)[4], const __nv_bfloat16 *tile, int pitch)
{
    const int l = threadIdx.x & 31;
    ldsm_x4_t(b, tile + ((l & 7) + ((l >> 3) & 1) * 8) * pitch + (l >> 4) * 8);
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

/* 4 bytes global -> shared, asynchronously (4-byte alignment suffices). */
__device__ __forceinline__ void cp_async4(void *dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" : : "r"(smem_addr(dst)), "l"(src));
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

/* The A fragment (as bf16 hi + lo, split_pack) of the 16x16 tile that two
 * n8 accumulators c0 (columns 0-7) and c1 (8-15) of m16n8k16 hold: a product's
 * result as the next product's A operand (P V after S = Q K^T). */
__device__ __forceinline__ void c_to_a_split(const float (&c0)[4], const float (&c1)[4], uint32_t (&hi)[4],
                                             uint32_t (&lo)[4])
{
    split_pack(c0[0], c0[1], hi[0], lo[0]);
    split_pack(c0[2], c0[3], hi[1], lo[1]);
    split_pack(c1[0], c1[1], hi[2], lo[2]);
    split_pack(c1[2], c1[3], hi[3], lo[3]);
}

/* ---- Hopper (sm_90a): warpgroup MMA on shared-memory tiles ----
 * Every wrapper below assembles only for sm_90a (wgmma and setmaxnreg do not
 * exist elsewhere); other targets compile them empty, and the host never
 * launches their callers there (attend_v2.cu).
 *
 * Tiles: rows of 64 bf16 (128 bytes) with the 128-byte swizzle (16-byte piece
 * c of row r stored at piece c ^ (r % 8); tile bases 1024-aligned); a wider
 * row is cut into blocks of 64 columns, each block all rows deep.
 *   K-major operand (rows = M or N, the 64 columns = K): descriptor
 *     desc_kmajor, 8-row groups 1024 bytes apart; k-step s of 16 starts at
 *     block s / 4, byte (s % 4) * 32.
 *   MN-major operand (rows = K, columns = M or N: a transposed A or B):
 *     desc_mnmajor with lbo = bytes between 64-column blocks; k-step s of
 *     16 rows starts 2048 bytes further.
 * Accumulator of m64nNk16 (fp32, N / 2 registers per thread; warp w of the
 * group, g = lane / 4, t = lane % 4): d[4i + q] is row 16w + g + 8 (q / 2),
 * column 8i + 2t + q % 2. The A fragment from registers (4 x bf16x2) of
 * k-step s is d of columns 16s .. 16s + 15 repacked: {row g, cols 2t..},
 * {row g + 8, cols 2t..}, {row g, cols 2t + 8..}, {row g + 8, cols 2t + 8..}.
 */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LMK_SM90A(x) x
#else
#define LMK_SM90A(x)
#endif

/* Byte offset of 16-byte piece `piece` (0-7) of row `row` in a swizzled block. */
__host__ __device__ __forceinline__ uint32_t sw128(int row, int piece)
{
    return (uint32_t)(row * 128 + ((piece ^ (row & 7)) << 4));
}

/* Shared-memory matrix descriptors (128-byte swizzle). */
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t saddr)
{
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* k-step kk (16 columns) of a K-major swizzled tile at shared address tile
 * with `block` bytes per 64 columns (the layout above). */
__device__ __forceinline__ uint64_t desc_kstep(uint32_t tile, uint32_t block, int kk)
{
    return desc_kmajor(tile + (uint32_t)(kk >> 2) * block + (uint32_t)(kk & 3) * 32);
}

__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t saddr, uint32_t lbo)
{
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

/* Before a wgmma reads registers that ordinary instructions wrote. */
__device__ __forceinline__ void wg_fence()
{
    LMK_SM90A(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"));
}

__device__ __forceinline__ void wg_commit()
{
    LMK_SM90A(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"));
}

/* Until at most n of this warpgroup's committed groups are in flight. */
template <int n> __device__ __forceinline__ void wg_wait()
{
    LMK_SM90A(asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(n) : "memory"));
}

/* Keeps the compiler from moving accesses of an accumulator across an
 * asynchronous wgmma that owns it. */
template <int n> __device__ __forceinline__ void wg_hold(float (&d)[n])
{
#pragma unroll
    for (int i = 0; i < n; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* Declares an accumulator's old values dead (no instruction): for a product
 * that overwrites it (scale_d 0), which otherwise keeps them live from their
 * last reader, since the wgmma operands read as well as write. */
template <int n> __device__ __forceinline__ void wg_fresh(float (&d)[n])
{
#pragma unroll
    for (int i = 0; i < n; i++)
        asm volatile("" : "=f"(d[i])::"memory");
}

/* The warpgroup's registers per thread, raised or lowered (multiples of 8). */
template <int n> __device__ __forceinline__ void regs_raise()
{
    LMK_SM90A(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(n)));
}

template <int n> __device__ __forceinline__ void regs_lower()
{
    LMK_SM90A(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(n)));
}

/* d (+)= A B, m64nNk16, bf16 in, fp32 accumulate; A and B from shared memory
 * (TA, TB: 1 = MN-major); scale_d 0 overwrites d. */
template <int N, int TA, int TB> struct WgmmaSS;
/* The same with A from registers (k-step fragment as above). */
template <int N, int TB> struct WgmmaRS;

template <int TA, int TB> struct WgmmaSS<8, TA, TB> {
    static __device__ __forceinline__ void run(float (&d)[4], uint64_t a, uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3}, %4, %5, p, 1, 1, %7, %8;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                               : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB)));
    }
};

template <int TA, int TB> struct WgmmaSS<16, TA, TB> {
    static __device__ __forceinline__ void run(float (&d)[8], uint64_t a, uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, %11, %12;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                               : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB)));
    }
};

template <int TA, int TB> struct WgmmaSS<64, TA, TB> {
    static __device__ __forceinline__ void run(float (&d)[32], uint64_t a, uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                               : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB)));
    }
};

template <int TA, int TB> struct WgmmaSS<128, TA, TB> {
    static __device__ __forceinline__ void run(float (&d)[64], uint64_t a, uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                                 "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                                 "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                                 "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                               : "l"(a), "l"(b), "r"(scale_d), "n"(TA), "n"(TB)));
    }
};

template <int TB> struct WgmmaRS<64, TB> {
    static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB)));
    }
};

template <int TB> struct WgmmaRS<128, TB> {
    static __device__ __forceinline__ void run(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d)
    {
        LMK_SM90A(asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
                               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                                 "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                                 "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                                 "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(scale_d), "n"(TB)));
    }
};

#undef LMK_SM90A

} // namespace lmk

#endif /* LM_MMA_CUH */
