"""
functional.py - liquid_memory.linear_attention: the attention core as a
function of already-projected q, k, v, in flash-linear-attention's
conventions ([B, L, H, D], GQA by head counts, initial_state /
output_final_state, cu_seqlens), differentiable, and traced by
torch.compile through the custom ops of _ops (torch >= 2.4; eager on older
torch). Also the option parsing that LiquidMemory shares.
"""
import math

import torch

from . import _core, _ops

__all__ = ["linear_attention"]

FEATURE_MAP_NAMES = ("elu1", "elu", "relu", "identity")


def decay_values(decay, num_kv_heads):
    """None, a float, num_kv_heads floats (a sequence or tensor) or "retnet"
    (g_h = 1 - 2^(-5-h)) -> a tuple of num_kv_heads values in (0, 1], or None."""
    if decay is None:
        return None
    if isinstance(decay, str):
        if decay != "retnet":
            raise ValueError("decay must be None, a float, a sequence of num_kv_heads floats or "
                             "'retnet', not %r" % decay)
        vals = [1.0 - 2.0 ** (-5 - h) for h in range(num_kv_heads)]
    elif isinstance(decay, (int, float)):
        vals = [float(decay)] * num_kv_heads
    else:
        vals = [float(x) for x in (decay.tolist() if torch.is_tensor(decay) else decay)]
        if len(vals) != num_kv_heads:
            raise ValueError("decay has %d values, expected one per kv head (%d)"
                             % (len(vals), num_kv_heads))
    for h, g in enumerate(vals):
        if not (0.0 < g <= 1.0):
            raise ValueError("decay[%d] = %r is not in (0, 1]" % (h, g))
    return tuple(vals)


def option_values(feature_map="elu1", normalize=True, decay=None, num_kv_heads=1,
                  precision="auto", eps=1e-6, scale=None):
    """Checks the attention options; returns them as the C core takes them, in
    plain values: (feature_map code, normalize, eps, scale (0 = 1/sqrt(Dk)),
    decay list or None, precision code)."""
    if feature_map not in _core.FEATURE_MAPS:
        raise ValueError("feature_map must be one of %s, not %r"
                         % (", ".join(repr(f) for f in FEATURE_MAP_NAMES), feature_map))
    if precision not in _core.PRECISIONS:
        raise ValueError("precision must be 'auto', 'on' or 'off', not %r" % (precision,))
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError("eps must be finite and > 0, not %r" % (eps,))
    if scale is not None and not (scale > 0 and math.isfinite(scale)):
        raise ValueError("scale must be None or finite and > 0, not %r" % (scale,))
    d = decay_values(decay, num_kv_heads)
    return (_core.FEATURE_MAPS[feature_map], bool(normalize), float(eps),
            0.0 if scale is None else float(scale), None if d is None else list(d),
            _core.PRECISIONS[precision])


def make_options(*args, **kwargs):
    """option_values(...) as a _core.Options (what the eager calls take)."""
    return _core.Options(*option_values(*args, **kwargs))


def _state_pair(state, B, Hkv, Dk, Dv, normalize, like):
    """initial_state -> (S [B, Hkv, Dk, Dv], z [B, Hkv, Dk]) fp32 contiguous on
    q's device, or (None, None). Casts are differentiable."""
    if state is None:
        return None, None
    if torch.is_tensor(state):
        if normalize:
            raise ValueError("with normalize=True the state is the pair (S, z): pass "
                             "initial_state=(S, z) (output_final_state returns that pair)")
        state = (state, torch.zeros(state.shape[:3], dtype=torch.float32, device=state.device))
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError("initial_state must be a pair (S, z) of tensors (or S alone with "
                        "normalize=False)")
    S, z = state
    if tuple(S.shape) != (B, Hkv, Dk, Dv) or tuple(z.shape) != (B, Hkv, Dk):
        raise ValueError("initial_state S %s / z %s: expected S [%d, %d, %d, %d] and z "
                         "[%d, %d, %d] (one state per sequence, per kv head)"
                         % (tuple(S.shape), tuple(z.shape), B, Hkv, Dk, Dv, B, Hkv, Dk))
    return (S.to(like.device, torch.float32).contiguous(),
            z.to(like.device, torch.float32).contiguous())


def _check_qkv(q, k, v, causal):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError("%s must be [batch, length, heads, head_dim], got %d-D"
                             % (name, t.dim()))
    if k.dtype != q.dtype or v.dtype != q.dtype or k.device != q.device or \
            v.device != q.device:
        raise ValueError("q, k and v must share dtype and device, got %s/%s/%s on %s/%s/%s"
                         % (q.dtype, k.dtype, v.dtype, q.device, k.device, v.device))
    B, L, Hq, Dk = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or \
            k.shape[2] != v.shape[2] or k.shape[3] != Dk:
        raise ValueError("k %s and v %s do not fit q %s: expected k [B, Lk, Hkv, Dk] and v "
                         "[B, Lk, Hkv, Dv]" % (tuple(k.shape), tuple(v.shape), tuple(q.shape)))
    if Hq % k.shape[2]:
        raise ValueError("kv heads (%d) must divide query heads (%d)" % (k.shape[2], Hq))
    if causal and k.shape[1] != L:
        raise ValueError("causal attention needs as many keys as queries, got %d and %d"
                         % (k.shape[1], L))


def _sequences(cu_seqlens, total):
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if cu_seqlens.dim() != 1 or len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != total or \
            any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError("cu_seqlens must be a 1-D tensor [0, end_1, ..., %d] of nondecreasing "
                         "offsets into the packed sequence, got %s" % (total, bounds))
    return list(zip(bounds[:-1], bounds[1:]))


def _prefill_varlen(q, k, v, cu_seqlens, S0, z0, position, causal, values, want_state):
    """Packed sequences (q [1, T, H, D], sequence i = tokens cu_seqlens[i] to
    cu_seqlens[i+1]), each attending only to itself from its own initial state:
    returns (out [1, T, Hq, Dv], S [N, ...], z [N, ...]). The slow path: one
    prefill per sequence from Python. The engine API's varlen prefill replaces
    this loop with one C call, here and nowhere else."""
    Hkv, Dk, Dv = k.shape[2], k.shape[3], v.shape[3]
    outs, Ss, zs = [], [], []
    for i, (s, e) in enumerate(_sequences(cu_seqlens, q.shape[1])):
        S_i = None if S0 is None else S0[i:i + 1]
        z_i = None if z0 is None else z0[i:i + 1]
        if e == s:  # an empty sequence: no output, its state passes through
            if want_state:
                Ss.append(S_i if S_i is not None else q.new_zeros((1, Hkv, Dk, Dv),
                                                                  dtype=torch.float32))
                zs.append(z_i if z_i is not None else q.new_zeros((1, Hkv, Dk),
                                                                  dtype=torch.float32))
            continue
        o, S, z = _ops.prefill_values(q[:, s:e], k[:, s:e], v[:, s:e], None, S_i, z_i, position,
                                      causal, values, want_state=want_state)
        outs.append(o)
        Ss.append(S)
        zs.append(z)
    out = torch.cat(outs, 1) if outs else q.new_empty((1, 0, q.shape[2], Dv))
    if not want_state:
        return out, None, None
    return out, torch.cat(Ss, 0), torch.cat(zs, 0)


def linear_attention(q, k, v, *, causal=True, feature_map="elu1", normalize=True, decay=None,
                     initial_state=None, output_final_state=False, cu_seqlens=None,
                     scale=None, eps=1e-6, precision="auto", position=0):
    r"""Kernelised linear attention on projected q, k, v; returns ``(o, final_state)``.

    Per kv head, with feature map phi, decay g (1 = none), fp32 state S
    [Dk, Dv] and normaliser z [Dk] (docs/DESIGN.md, "The maths")::

        S_t = g S_{t-1} + phi(k_t) v_t^T        z_t = g z_{t-1} + phi(k_t)
        o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)     (normalize=True)
        o_t = scale * phi(q_t)^T S_t                       (normalize=False)

    Args:
        q: [B, L, Hq, Dk]; k: [B, Lk, Hkv, Dk]; v: [B, Lk, Hkv, Dv]; float32,
            bfloat16 or float16, any strides, CPU or CUDA. Hq must be a multiple of
            Hkv (grouped-query attention: query head h reads kv head h // (Hq/Hkv)).
        causal: token t sees keys 0..t (needs Lk == L). False: every query sees
            every key (cross-attention allowed, Lk may differ; no decay).
        feature_map: "elu1" (elu(x) + 1; "elu" is the same), "relu" or "identity".
        normalize: divide by phi(q).z + eps (default); else multiply by `scale`.
        decay: None, a float in (0, 1], Hkv floats, or "retnet" (g_h = 1 - 2^(-5-h)).
        initial_state: None, or the pair (S [B, Hkv, Dk, Dv], z [B, Hkv, Dk]) a
            previous call returned (S alone when normalize=False). With cu_seqlens,
            one state per sequence ([N, ...]). Gradients flow into it.
        output_final_state: also return the state after the last token, as (S, z)
            in float32 (with cu_seqlens: [N, ...], one per sequence).
        cu_seqlens: packed variable-length sequences (B must be 1): an int tensor
            [N + 1] of offsets, sequence i being tokens cu_seqlens[i]..cu_seqlens[i+1]-1,
            each attending only to itself. Runs one call per sequence from Python
            (correct, slow for many short sequences) until the C library's varlen
            prefill is wired in; under torch.compile it breaks the graph.
        scale: the unnormalised output's factor (None = 1/sqrt(Dk)). eps: 1e-6.
        precision: "auto" (compensated state sums past 64K tokens), "on", "off".
        position: tokens already absorbed in initial_state (the context length the
            licence and precision="auto" count); 0 without one.

    Returns:
        o [B, L, Hq, Dv] in q's dtype, and (S, z) or None.

    Differentiable with respect to q, k, v and initial_state (and through the
    returned final state). A key never contributes to a query before it, and the
    state after L tokens is the same whether they came in one call or several
    calls chained through initial_state, within rounding.
    """
    _check_qkv(q, k, v, causal)
    B, L, Hq, Dk = q.shape
    Hkv, Dv = k.shape[2], v.shape[3]
    values = option_values(feature_map, normalize, decay, Hkv, precision, eps, scale)
    if position < 0:
        raise ValueError("position must be >= 0, not %r" % (position,))
    n_states = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError("with cu_seqlens the sequences are packed along the length: "
                             "batch must be 1, got %d" % B)
        n_states = cu_seqlens.numel() - 1
    S0, z0 = _state_pair(initial_state, n_states, Hkv, Dk, Dv, normalize, q)
    want = bool(output_final_state)
    if cu_seqlens is not None:
        o, S, z = _prefill_varlen(q, k, v, cu_seqlens, S0, z0, position, causal, values, want)
    elif L == 0 and k.shape[1] == 0:  # nothing to attend: the state passes through
        o, S, z = q.new_empty((B, 0, Hq, Dv)), S0, z0
        if want and S is None:
            S = q.new_zeros((B, Hkv, Dk, Dv), dtype=torch.float32)
            z = q.new_zeros((B, Hkv, Dk), dtype=torch.float32)
    else:
        o, S, z = _ops.prefill_values(q, k, v, None, S0, z0, position, causal, values,
                                      want_state=want)
    return o, ((S, z) if want else None)
