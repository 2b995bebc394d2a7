/*
 * v2_scheduler.cuh - which work a CTA of the v2 prefill owns: one (batch row,
 * head, segment) with all value columns, from blockIdx.x (segments fastest,
 * then heads, then batch rows). CAUSAL walks query heads (each recomputes
 * its kv head's state, as v1 does for GQA), ABSORB kv heads.
 */
#ifndef LM_V2_SCHEDULER_CUH
#define LM_V2_SCHEDULER_CUH

#include "v2_layout.cuh"

namespace lmk {
namespace v2 {

struct Job {
    int b, h, hk, seg, nch;
    int64_t t_begin, t_end;
    int64_t head;              /* state index b * Hkv + hk */
    bool causal;               /* else ABSORB: keys only */
    const bf16 *q, *k, *v;     /* token 0 of this head */
    bf16 *o;
};

__device__ __forceinline__ Job job_of(const lmk_attend &p, int kind)
{
    Job j;
    int64_t x = blockIdx.x;
    j.seg = (int)(x % p.nseg), x /= p.nseg;
    const int H = kind == LMK_ABSORB ? p.Hkv : p.Hq;
    j.h = (int)(x % H);
    j.b = (int)(x / H);
    j.hk = kind == LMK_ABSORB ? j.h : j.h / (p.Hq / p.Hkv);
    j.causal = kind == LMK_CAUSAL;
    j.t_begin = (int64_t)j.seg * p.seg_len;
    j.t_end = min(p.L, j.t_begin + p.seg_len);
    j.nch = (int)((j.t_end - j.t_begin + C - 1) / C);
    j.head = (int64_t)j.b * p.Hkv + j.hk;
    j.q = j.causal ? (const bf16 *)p.q + j.b * p.sq[0] + j.h * p.sq[2] : nullptr;
    j.k = (const bf16 *)p.k + j.b * p.sk[0] + j.hk * p.sk[2];
    j.v = (const bf16 *)p.v + j.b * p.sv[0] + j.hk * p.sv[2];
    j.o = j.causal ? (bf16 *)p.out + j.b * p.so[0] + j.h * p.so[2] : nullptr;
    return j;
}

/* Key t of this batch row is masked out. */
__device__ __forceinline__ bool masked(const lmk_attend &p, const Job &j, int64_t t)
{
    return p.mask && p.mask[j.b * p.mask_s[0] + t * p.mask_s[1]];
}

} // namespace v2
} // namespace lmk

#endif /* LM_V2_SCHEDULER_CUH */
