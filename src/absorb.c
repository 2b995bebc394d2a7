/*
 * absorb.c - lm_linear_attn_absorb: keys and values folded into a state,
 * no queries, no outputs (the pass that context parallelism runs on each
 * segment before the ranks exchange their states).
 *
 * No backend code of its own: on both backends a causal prefill with no
 * queries (L = 0) already is exactly this (the CPU core's chunk loop absorbs
 * the keys and skips the readout; CUDA's prefill runs ABSORB over key
 * segments and folds them into the state with the scan), so the call is
 * checked as the core checks a backward (which reads no `out`), with the
 * keys standing in for the queries, and dispatched as a prefill with L = 0.
 */
#include "lm_impl.h"

lm_status lm_linear_attn_absorb(const lm_core_args *args, void *stream)
{
    if (!args)
        return lmi_error(LM_ERR_INVALID_ARG, "args is NULL");
    lm_core_args call;
    lm_status st = LMI_SIZED_IN(&call, args, lm_core_args, precision);
    if (st)
        return st;
    if (!call.k || !call.v)
        return lmi_error(LM_ERR_INVALID_ARG, "absorb needs k and v");
    /* k stands in for q below: its own checks first, so messages name k. */
    if ((st = lmi_check_tensor(call.k, "k", 4, call.k->device)))
        return st;
    if (call.k->dtype == LM_BOOL)
        return lmi_error(LM_ERR_INVALID_ARG, "k must be BF16, F16 or F32");
    if (!call.state || !call.normalizer)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "absorb adds to a state: give state and normalizer (zeros for a "
                         "segment's own contribution)");
    /* q = k passes the checks of q (shape [B, Lk, Hkv, Dk], so L = Lk and
     * Hq = Hkv); causal, so that a decay is accepted. */
    call.q = call.k;
    call.out = NULL;
    call.is_causal = 1;
    lm_core_args full;
    lmi_core_params p;
    const lmi_backend *be;
    if ((st = lmi_core_fill(&call, LMI_CORE_BACKWARD, &full, &p, &be)))
        return st;
    if ((st = lmi_hybrid_linear_only(p.hybrid, "lm_linear_attn_absorb",
                                     "hybrid attention's window is not a sum over keys")))
        return st;
    p.L = 0; /* keys alone: the state advances, nothing is read out */
    return (st = lmi_core_fresh(&full, be, &p, stream)) ? st : be->prefill(&p, stream);
}
