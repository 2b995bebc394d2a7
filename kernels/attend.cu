/*
 * attend.cu - the extern "C" entry of the attention kernels: grid size,
 * shared memory per instance, the alignment test that picks vector loads
 * (and, with lmk_attend_v2_takes, the v2 kernel: lmk_attend_v2_runs), and
 * the dtype dispatch.
 */
#include "attend_launch.cuh"

using namespace lmk;

template <int DT> static size_t smem_of(int Dk)
{
    return Dk <= 64 ? Traits<64, DT>::SMEM : Dk <= 128 ? Traits<128, DT>::SMEM : Traits<256, DT>::SMEM;
}

static int value_columns(int Dk)
{
    return Dk <= 64 ? Traits<64, LM_BF16>::NV : Dk <= 128 ? Traits<128, LM_BF16>::NV : Traits<256, LM_BF16>::NV;
}

extern "C" size_t lmk_attend_smem(int dtype, int Dk)
{
    if (Dk < 1 || Dk > LMK_MAX_DK)
        return 0;
    switch (dtype) {
    case LM_BF16: return smem_of<LM_BF16>(Dk);
    case LM_F16: return smem_of<LM_F16>(Dk);
    case LM_F32: return smem_of<LM_F32>(Dk);
    }
    return 0;
}

extern "C" int64_t lmk_attend_ctas(const lmk_attend *p, lmk_kind kind)
{
    const int64_t nvb = (p->Dv + value_columns(p->Dk) - 1) / value_columns(p->Dk);
    return (int64_t)p->B * (kind == LMK_ABSORB ? p->Hkv : p->Hq) * p->nseg * nvb;
}

/* Rows of 16 bytes: base and every stride a multiple of 16 bytes, the head
 * dims multiples of the 16-byte vector. */
static bool aligned16(const void *base, const int64_t *s, size_t es)
{
    if (!base)
        return true;
    const int64_t v = (int64_t)(16 / es);
    return (uintptr_t)base % 16 == 0 && s[0] % v == 0 && s[1] % v == 0 && s[2] % v == 0;
}

/* q, k, v, out of 16-byte rows and head dims of whole 16-byte vectors: v1's
 * vector loads, and what v2 needs besides lmk_attend_v2_takes. */
static bool aligned_of(const lmk_attend *k)
{
    const size_t es = k->dtype == LM_F32 ? 4 : 2;
    const int64_t v = (int64_t)(16 / es);
    return k->Dk % v == 0 && k->Dv % v == 0 && aligned16(k->q, k->sq, es) && aligned16(k->k, k->sk, es) &&
           aligned16(k->v, k->sv, es) && aligned16(k->out, k->so, es);
}

extern "C" int lmk_attend_v2_runs(const lmk_attend *p, lmk_kind kind)
{
    return p->v2 && aligned_of(p) && lmk_attend_v2_takes(p, kind);
}

extern "C" lm_status lmk_attend_launch(const lmk_attend *p, lmk_kind kind, void *stream)
{
    if (p->Dk < 1 || p->Dk > LMK_MAX_DK || p->Dv < 1)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: head dims Dk %d, Dv %d (Dk must be 1..%d)", p->Dk,
                         p->Dv, LMK_MAX_DK);
    if (p->has_decay && p->Hkv > LMK_MAX_DECAY_HEADS)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: decay with %d kv heads (at most %d)", p->Hkv,
                         LMK_MAX_DECAY_HEADS);
    const int64_t ctas = lmk_attend_ctas(p, kind);
    if (ctas < 1 || ctas > INT32_MAX)
        return lmi_error(LM_ERR_UNSUPPORTED, "cuda: %lld blocks do not fit a grid", (long long)ctas);
    lmk_attend k = *p;
    k.aligned = aligned_of(&k);
    if (lmk_attend_v2_runs(&k, kind))
        return lmk_attend_v2_launch(&k, kind, stream);
    if (k.win && kind == LMK_CAUSAL) /* only v2 fuses a window: a caller's bug */
        return lmi_error(LM_ERR_INTERNAL, "cuda: a fused hybrid window on a launch v2 does not run "
                         "(ask lmk_attend_window_refusal first)");
    if (k.den && kind != LMK_ABSORB) /* only v2's epilogue writes it: a caller's bug */
        return lmi_error(LM_ERR_INTERNAL, "cuda: a denominator output on a launch v2 does not run "
                         "(ask lmk_attend_v2_runs first)");
    /* sm_90: the value blocks of a head share q, k loads as a cluster (2, 4, 8). */
    int dev = 0, major = 0;
    LMI_CUDA_TRY(cudaGetDevice(&dev));
    LMI_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    const int nvb = (k.Dv + value_columns(k.Dk) - 1) / value_columns(k.Dk);
    k.cluster = major >= 9 && (nvb == 2 || nvb == 4 || nvb == 8) ? nvb : 1;
    cudaStream_t s = (cudaStream_t)stream;
    switch (k.dtype) {
    case LM_BF16: return attend_bf16(k, kind, ctas, s);
    case LM_F16: return attend_f16(k, kind, ctas, s);
    case LM_F32: return attend_f32(k, kind, ctas, s);
    }
    return lmi_error(LM_ERR_INVALID_ARG, "cuda: dtype %d", k.dtype);
}
