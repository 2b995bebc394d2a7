/*
 * v2_scheduler.cuh - which work a CTA of the v2 prefill owns: one (batch row,
 * head, segment) with all value columns, from blockIdx.x (segments fastest,
 * then heads, then batch rows). CAUSAL walks query heads (each recomputes
 * its kv head's state, as v1 does for GQA), ABSORB kv heads. A packed
 * launch (lmk_attend_pack: a pool's sequences, each one segment) owns
 * entry blockIdx.x / Hq, query head blockIdx.x % Hq; a fused hybrid launch
 * (Hyb) the call's. StateIO says where the state warpgroup reads its initial
 * state and stores its final one.
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

/* The packed launch: entry blockIdx.x / Hq of the table, one segment of
 * its tokens of the packed [1, T, H, D] views. */
__device__ __forceinline__ Job job_of(const lmk_attend_pack &pk, int)
{
    const lmk_attend &p = pk.a;
    const lmk_pack_entry &e = pk.e[blockIdx.x / p.Hq];
    Job j;
    j.b = 0, j.seg = 0;
    j.h = (int)(blockIdx.x % p.Hq);
    j.hk = j.h / (p.Hq / p.Hkv);
    j.causal = true;
    j.t_begin = 0, j.t_end = e.len;
    j.nch = (e.len + C - 1) / C;
    j.head = j.hk;
    j.q = (const bf16 *)p.q + e.t0 * p.sq[1] + j.h * p.sq[2];
    j.k = (const bf16 *)p.k + e.t0 * p.sk[1] + j.hk * p.sk[2];
    j.v = (const bf16 *)p.v + e.t0 * p.sv[1] + j.hk * p.sv[2];
    j.o = (bf16 *)p.out + e.t0 * p.so[1] + j.h * p.so[2];
    return j;
}

/* The fused hybrid launch's parameters (lmk_window): the call over the body
 * rows and the delayed keys, and its window. */
struct Hyb {
    lmk_attend a;
    lmk_window w;
};

__device__ __forceinline__ Job job_of(const Hyb &h, int kind)
{
    return job_of(h.a, kind);
}

__device__ __forceinline__ const lmk_attend &attend_of(const Hyb &h)
{
    return h.a;
}

__device__ __forceinline__ const lmk_attend &attend_of(const lmk_attend &p)
{
    return p;
}

__device__ __forceinline__ const lmk_attend &attend_of(const lmk_attend_pack &pk)
{
    return pk.a;
}

/* Where the state warpgroup's S and z come from (NULL: empty) and go
 * (NULL: not stored). */
struct StateIO {
    const float *S_in, *z_in;
    float *S_out, *z_out;
};

/* CAUSAL: from `in` (per segment), the last segment's final state once per
 * kv head; ABSORB: from empty, each segment's increment. */
__device__ __forceinline__ StateIO state_io(const lmk_attend &p, const Job &j)
{
    const int64_t nS = (int64_t)p.Dk * p.Dv;
    StateIO io = { nullptr, nullptr, nullptr, nullptr };
    if (j.causal && p.in.S) {
        io.S_in = p.in.S + j.seg * p.in.seg_S + j.head * nS;
        io.z_in = p.in.z + j.seg * p.in.seg_z + j.head * p.Dk;
    }
    if (!j.causal) {
        io.S_out = p.out_state.S + j.seg * p.out_state.seg_S + j.head * nS;
        io.z_out = p.out_state.z + j.seg * p.out_state.seg_z + j.head * p.Dk;
    } else if (p.out_state.S && j.seg == p.nseg - 1 && j.h % (p.Hq / p.Hkv) == 0) {
        io.S_out = p.out_state.S + j.head * nS;
        io.z_out = p.out_state.z + j.head * p.Dk;
    }
    return io;
}

/* Packed: the entry's slot (none when slot < 0; from empty when fresh); the
 * final state by the first query head of each kv head, into the entry's
 * scratch or, without scratch (Hq == Hkv), into the slot it was read from. */
__device__ __forceinline__ StateIO state_io(const lmk_attend_pack &pk, const Job &j)
{
    const lmk_attend &p = pk.a;
    const int entry = (int)(blockIdx.x / p.Hq);
    const lmk_pack_entry &e = pk.e[entry];
    const int64_t nS = (int64_t)p.Dk * p.Dv;
    StateIO io = { nullptr, nullptr, nullptr, nullptr };
    if (e.slot < 0)
        return io;
    float *S = pk.S + e.slot * pk.S_slot + j.hk * nS, *z = pk.z + e.slot * pk.z_slot + j.hk * p.Dk;
    if (!e.fresh)
        io.S_in = S, io.z_in = z;
    if (j.h % (p.Hq / p.Hkv) == 0) {
        const bool scratch = pk.fin_S != nullptr;
        io.S_out = scratch ? pk.fin_S + ((int64_t)entry * p.Hkv + j.hk) * nS : S;
        io.z_out = scratch ? pk.fin_z + ((int64_t)entry * p.Hkv + j.hk) * p.Dk : z;
    }
    return io;
}

__device__ __forceinline__ StateIO state_io(const Hyb &h, const Job &j)
{
    return state_io(h.a, j);
}

/* The fused window, or NULL (every other launch). */
__device__ __forceinline__ const lmk_window *window_of(const Hyb &h)
{
    return &h.w;
}

template <class P> __device__ __forceinline__ const lmk_window *window_of(const P &)
{
    return nullptr;
}

/* Key t of this batch row is masked out. */
__device__ __forceinline__ bool masked(const lmk_attend &p, const Job &j, int64_t t)
{
    return p.mask && p.mask[j.b * p.mask_s[0] + t * p.mask_s[1]];
}

} // namespace v2
} // namespace lmk

#endif /* LM_V2_SCHEDULER_CUH */
