"""
hybrid.py - hybrid attention (docs/DESIGN.md §9): exact softmax over the first
`sinks` tokens and the last `window` tokens, linear attention over every
token that left the window, one shared denominator:

    o_t = (sum_Win a_j v_j + sum_Ev b_j v_j) / (sum_Win a_j + sum_Ev b_j + eps)
    a_j = gamma_h exp(scale q_t.k_j - max_Win),  b_j = phi(q_t).phi(k_j)
    Win_t = {j < sinks} u (t - window, t],  Ev_t = {sinks <= j <= t - window}
    gamma_h = sigmoid(g_h) (window_gate_form "sigmoid", the default) or
              exp(g_h) ("exp": unbounded, |g_h| <= 40, for converted models)

The same function two ways:
  - the C core (lm_linear_attn_prefill / _decode, LM_ATTENTION_HYBRID): no
    autograd, from any state, so forwards continue and step() decodes;
  - a composition of differentiable pieces, for training (from an empty
    state): the window as a blocked banded softmax in torch (blocks of W
    queries against their own and the previous block, plus the sinks), the
    evicted tokens' numerator through the core's prefill op (it has a
    backward) on q, k, v shifted by W, unnormalised with scale 1, and their
    denominator as phi(q) . cumsum(phi(k)) on the same shifted views.
hybrid_attention() picks the composition when a gradient is wanted (or under
torch.compile), else the C core. LiquidMemory(attention="hybrid") calls the
module_* functions below.
"""
import math
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _core, _ffi, _ops

__all__ = ["hybrid_attention", "HybridState"]

C = _ffi.CONSTANTS

# The module's buffers of the window (beside state_S, state_z): they follow
# .to(device), never a dtype cast (LiquidMemory._apply).
STATE_BUFFERS = ("state_window_keys", "state_window_values", "state_window_pos")


class HybridState(NamedTuple):
    """The decode state of hybrid attention (docs/DESIGN.md §9.2), per
    batch row and kv head: S [B, Hkv, Dk, Dv] and z [B, Hkv, Dk] (fp32) over the
    evicted tokens; the window's keys [B, Hkv, s + W, Dk] and values
    [B, Hkv, s + W, Dv] (fp32) and positions [B, Hkv, s + W] (int32: p + 1 for
    the token at position p, -(p + 1) when its key was masked, 0 empty); and
    the number of tokens seen."""
    S: Tensor
    z: Tensor
    keys: Tensor
    values: Tensor
    pos: Tensor
    position: int


def empty_state(B, Hkv, Dk, Dv, window, sinks, device):
    n = sinks + window
    f32 = dict(dtype=torch.float32, device=device)
    return HybridState(torch.zeros((B, Hkv, Dk, Dv), **f32), torch.zeros((B, Hkv, Dk), **f32),
                       torch.zeros((B, Hkv, n, Dk), **f32), torch.zeros((B, Hkv, n, Dv), **f32),
                       torch.zeros((B, Hkv, n), dtype=torch.int32, device=device), 0)


# window_gate_form: the name -> lm_gate_form (docs/DESIGN.md §9.1).
GATE_FORMS = {"sigmoid": C["LM_GATE_SIGMOID"], "exp": C["LM_GATE_EXP"]}


def gate_form_code(form):
    """The lm_gate_form of a window_gate_form name ("sigmoid" or "exp")."""
    if form not in GATE_FORMS:
        raise ValueError("window_gate_form must be 'sigmoid' (gamma = sigmoid(g) <= 1, the "
                         "default) or 'exp' (gamma = exp(g), unbounded: for a converted softmax "
                         "model), not %r" % (form,))
    return GATE_FORMS[form]


def _gamma(gate, form, Hq, device):
    """gamma [Hq] fp32 from the logits (differentiable) or None (= 0) and the
    form's code."""
    if gate is None:
        gate = torch.zeros((Hq,), dtype=torch.float32, device=device)
    g = gate.float().to(device)
    return torch.exp(g) if form == C["LM_GATE_EXP"] else torch.sigmoid(g)


def check_window(window, sinks):
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError("window must be an int >= 1 (the last W tokens get exact softmax), not %r"
                         % (window,))
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError("sinks must be an int >= 0, not %r" % (sinks,))


def _phi(x, fm):
    if fm == C["LM_FEATURE_ELU1"]:
        return F.elu(x) + 1.0
    if fm == C["LM_FEATURE_RELU"]:
        return F.relu(x)
    return x


def _gate_host(gate, Hq):
    """The gate as the C core takes it: a float32 CPU tensor of Hq values, or None."""
    if gate is None:
        return None
    g = gate.detach().float().cpu().contiguous() if torch.is_tensor(gate) else \
        torch.tensor([float(x) for x in gate], dtype=torch.float32)
    if g.shape != (Hq,):
        raise ValueError("window_gate has shape %s, expected (num_heads,) = (%d,)"
                         % (tuple(g.shape), Hq))
    return g


# --------------------------------------------------------------------------
# The C core
# --------------------------------------------------------------------------

def _check_state(st, B, Hkv, Dk, Dv, window, sinks, device):
    n = sinks + window
    want = (("S", (B, Hkv, Dk, Dv), torch.float32), ("z", (B, Hkv, Dk), torch.float32),
            ("keys", (B, Hkv, n, Dk), torch.float32), ("values", (B, Hkv, n, Dv), torch.float32),
            ("pos", (B, Hkv, n), torch.int32))
    for name, shape, dtype in want:
        t = getattr(st, name)
        if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous() or \
                t.device != device:
            raise ValueError("hybrid state %s must be a contiguous %s tensor of shape %s on %s, "
                             "got %s %s on %s" % (name, dtype, list(shape), device, t.dtype,
                                                  list(t.shape), t.device))


def _hybrid_args(lib, keep, q, k, v, out, mask, st, position, window, sinks, gate, opts, gate_form):
    a = _core._args(lib, keep, q, k, v, out, mask, None if st is None else st.S,
                    None if st is None else st.z, position, True, opts)
    a.attention = C["LM_ATTENTION_HYBRID"]
    a.window = int(window)
    a.sinks = int(sinks)
    a.window_gate_form = int(gate_form)
    if gate is not None:
        keep.append(gate)
        lib.set_ptr(a, "lm_core_args", "window_gate", gate.data_ptr())
    if st is not None:
        for field, t in (("window_keys", st.keys), ("window_values", st.values),
                         ("window_pos", st.pos)):
            lib.set_ptr(a, "lm_core_args", field, t.data_ptr())
    return a


def c_prefill(q, k, v, mask, window, sinks, gate, opts, state=None, want_state=False,
              seq_first=False, gate_form=C["LM_GATE_SIGMOID"]):
    """lm_linear_attn_prefill in hybrid mode. gate: _gate_host's tensor or None;
    gate_form: its lm_gate_form.
    Returns (out, state): out [B, L, Hq, Dv] in q's dtype (sequence-first memory
    when seq_first); the state after the call (a new one; `state` is not
    modified) when state is given or want_state, else None."""
    lib = _ffi.binding()
    _core._license_notice()
    B, L, Hq = q.shape[0], q.shape[1], q.shape[2]
    Hkv, Dk, Dv = k.shape[2], k.shape[3], v.shape[3]
    if seq_first:
        out = _core._new((L, B, Hq, Dv), q.dtype, q.device).transpose(0, 1)
    else:
        out = _core._new((B, L, Hq, Dv), q.dtype, q.device)
    st = None
    if state is not None:
        _check_state(state, B, Hkv, Dk, Dv, window, sinks, q.device)
        st = HybridState(*(t.clone() for t in state[:5]), int(state.position))
    elif want_state:
        st = empty_state(B, Hkv, Dk, Dv, window, sinks, q.device)
    keep = []
    a = _hybrid_args(lib, keep, q, k, v, out, mask, st, 0 if st is None else st.position, window,
                     sinks, gate, opts, gate_form)
    if state is None and st is not None:
        a.fresh_state = 1  # a sequence that starts here: accepted under a context cap too
    _core.check(_core.launch(lib, lib.fn("lm_linear_attn_prefill"), lib.ref(a), q),
                "lm_linear_attn_prefill (hybrid)")
    return out, (None if st is None else st._replace(position=st.position + L))


def c_decode(q, k, v, S, z, keys, values, pos, position, window, sinks, gate, opts,
             gate_form=C["LM_GATE_SIGMOID"]):
    """One decode step (lm_linear_attn_decode, hybrid), updating the state
    tensors in place; each row's position comes from pos (graph-capturable).
    `position` only serves the license check. Returns out [B, 1, Hq, Dv]."""
    lib = _ffi.binding()
    _core._license_notice()
    B, Hq, Dv = q.shape[0], q.shape[2], v.shape[3]
    st = HybridState(S, z, keys, values, pos, int(position))
    _check_state(st, B, k.shape[2], k.shape[3], Dv, window, sinks, q.device)
    out = _core._new((B, 1, Hq, Dv), q.dtype, q.device)
    keep = []
    a = _hybrid_args(lib, keep, q, k, v, out, None, st, position, window, sinks, gate, opts,
                     gate_form)
    _core.check(_core.launch(lib, lib.fn("lm_linear_attn_decode"), lib.ref(a), q),
                "lm_linear_attn_decode (hybrid)")
    return out


if _ops.USE_CUSTOM_OP:
    from torch.library import custom_op

    @custom_op("liquid_memory::hybrid_decode", mutates_args=("S", "z", "keys", "values", "pos"))
    def _decode_op(q: Tensor, k: Tensor, v: Tensor, S: Tensor, z: Tensor, keys: Tensor,
                   values: Tensor, pos: Tensor, position: int, window: int, sinks: int,
                   gate: Optional[List[float]], feature_map: int, eps: float, scale: float,
                   precision: int, gate_form: int) -> Tensor:
        return c_decode(q, k, v, S, z, keys, values, pos, position, window, sinks,
                        None if gate is None else _gate_host(gate, q.shape[2]),
                        _core.Options(feature_map, True, eps, scale, None, precision), gate_form)

    @_decode_op.register_fake
    def _decode_fake(q, k, v, S, z, keys, values, pos, position, window, sinks, gate,
                     feature_map, eps, scale, precision, gate_form):
        return q.new_empty((q.shape[0], 1, q.shape[2], v.shape[3]))


def decode(q, k, v, st, window, sinks, gate_values, opts, gate_form=C["LM_GATE_SIGMOID"]):
    """A step on st (a HybridState, updated in place); gate_values: a list of
    Hq floats or None, of the form gate_form (lm_gate_form). Under
    torch.compile it is the custom op liquid_memory::hybrid_decode (torch >=
    2.4), which mutates the state."""
    if _ops.compiling() and _ops.USE_CUSTOM_OP:
        return _decode_op(q, k, v, st.S, st.z, st.keys, st.values, st.pos, int(st.position),
                          int(window), int(sinks), gate_values, opts.feature_map, opts.eps,
                          opts.scale, opts.precision, int(gate_form))
    gate = None if gate_values is None else _gate_host(gate_values, q.shape[2])
    return c_decode(q, k, v, st.S, st.z, st.keys, st.values, st.pos, st.position, window, sinks,
                    gate, opts, gate_form)


# --------------------------------------------------------------------------
# The differentiable composition (from an empty state)
# --------------------------------------------------------------------------

def _block_pairs(x, T, dim):
    """x, (nb + 1) T long along dim, as nb windows of 2T there: window i is
    blocks i and i + 1 of T. What x.unfold(dim, 2T, T) gives (moved to the
    window's place), without unfold's backward: an overlapping scatter-add,
    which torch.compile's inductor ran on several CPU threads with wrong
    gradients and then a crash (torch 2.11, bench/NOTES.md); a cat's backward
    is two slices."""
    n = x.shape[dim] // T
    blocks = x.reshape(x.shape[:dim] + (n, T) + x.shape[dim + 1:])
    return torch.cat([blocks.narrow(dim, 0, n - 1), blocks.narrow(dim, 1, n - 1)], dim + 1)


def _window_part(q, k, v, mask, window, sinks, gamma, scale):
    """The window's sums, differentiable: num [B, L, Hq, Dv] = sum_Win a_j v_j and
    den [B, L, Hq] = sum_Win a_j (fp32), with a_j = gamma exp(scale q.k - max).
    Blocks of T = min(W, L) queries see the keys of their own and the previous
    block (which hold (t - W, t]); the sinks j < s below the window are added."""
    B, L, Hq, Dk = q.shape
    Hkv, Dv = k.shape[2], v.shape[3]
    G = Hq // Hkv
    T = min(window, L)
    nb = -(-L // T)
    Lp = nb * T
    dev = q.device
    # [B, Hkv, G, L, D] for queries, [B, Hkv, L, D] for keys and values (no GQA copy).
    qh = q.float().permute(0, 2, 1, 3).reshape(B, Hkv, G, L, Dk)
    kh = k.float().permute(0, 2, 1, 3)
    vh = v.float().permute(0, 2, 1, 3)
    keep = torch.ones((B, L), dtype=torch.bool, device=dev) if mask is None else ~mask

    # Band: keys of positions [(i-1) T, (i+1) T) for query block i.
    qb = F.pad(qh, (0, 0, 0, Lp - L)).reshape(B, Hkv, G, nb, T, Dk)
    kb = _block_pairs(F.pad(kh, (0, 0, T, Lp - L)), T, 2)  # [B, Hkv, nb, 2T, Dk]
    vb = _block_pairs(F.pad(vh, (0, 0, T, Lp - L)), T, 2)
    kp = _block_pairs(F.pad(keep, (T, Lp - L)), T, 1)      # [B, nb, 2T]
    t = torch.arange(Lp, device=dev).view(nb, T, 1)
    p = (torch.arange(nb, device=dev).view(nb, 1, 1) - 1) * T + torch.arange(2 * T, device=dev)
    band = (p <= t) & (p > t - window) & (p >= 0)                           # [nb, T, 2T]
    band = band.unsqueeze(0) & kp.unsqueeze(2)                              # [B, nb, T, 2T]
    lb = torch.einsum("bkgntd,bknsd->bkgnts", qb, kb) * scale
    lb = lb.masked_fill(~band[:, None, None], float("-inf"))
    parts = [lb.reshape(B, Hkv, G, Lp, 2 * T)]
    ns = min(sinks, L)
    if ns:  # the sinks j < s that are below the window: j <= t - W
        ls = torch.einsum("bkgld,bksd->bkgls", F.pad(qh, (0, 0, 0, Lp - L)), kh[:, :, :ns]) * scale
        tq = torch.arange(Lp, device=dev).view(Lp, 1)
        sink = (torch.arange(ns, device=dev).view(1, ns) <= tq - window)      # [Lp, ns]
        sink = sink.unsqueeze(0) & keep[:, None, :ns]                         # [B, Lp, ns]
        parts.append(ls.masked_fill(~sink[:, None, None], float("-inf")))
    logits = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
    m = logits.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # no key at all: the sums are 0
    a = torch.exp(logits - m) * gamma.view(1, Hkv, G, 1, 1)
    ab = a[..., :2 * T].reshape(B, Hkv, G, nb, T, 2 * T)
    num = torch.einsum("bkgnts,bknse->bkgnte", ab, vb).reshape(B, Hkv, G, Lp, Dv)
    if ns:
        num = num + torch.einsum("bkgls,bkse->bkgle", a[..., 2 * T:], vh[:, :, :ns])
    den = a.sum(-1)
    num = num.reshape(B, Hq, Lp, Dv)[:, :, :L].permute(0, 2, 1, 3)
    den = den.reshape(B, Hq, Lp)[:, :, :L].permute(0, 2, 1)
    return num, den


def _window_state(k, v, mask, window, sinks):
    """The window part of the state after the L tokens of k, v: sinks and the
    last W positions (fp32 copies, positions coded as in HybridState)."""
    B, L, Hkv, Dk = k.shape
    Dv, n, dev = v.shape[3], sinks + window, k.device
    keys = torch.zeros((B, Hkv, n, Dk), dtype=torch.float32, device=dev)
    values = torch.zeros((B, Hkv, n, Dv), dtype=torch.float32, device=dev)
    pos = torch.zeros((B, Hkv, n), dtype=torch.int32, device=dev)
    # The sinks, then the last W positions above them (python ints: no data-dependent shape).
    ring0 = max(sinks, L - window)
    j = torch.cat([torch.arange(min(sinks, L), device=dev), torch.arange(ring0, L, device=dev)])
    slot = torch.where(j < sinks, j, sinks + j % window)
    keep = torch.ones((B, L), dtype=torch.bool, device=dev) if mask is None else ~mask
    kept = keep[:, j]                                                       # [B, n_taken]
    code = torch.where(kept, j + 1, -(j + 1)).to(torch.int32)
    pos[:, :, slot] = code.unsqueeze(1).expand(B, Hkv, -1)
    keys[:, :, slot] = (k[:, j].float() * kept[..., None, None]).permute(0, 2, 1, 3)
    values[:, :, slot] = (v[:, j].float() * kept[..., None, None]).permute(0, 2, 1, 3)
    return keys, values, pos


def composed(q, k, v, mask, window, sinks, gate, opts, want_state=False,
             gate_form=C["LM_GATE_SIGMOID"]):
    """The differentiable hybrid forward from an empty state (see the top).
    gate: a tensor of Hq logits (differentiable) or None, of the form
    gate_form (lm_gate_form). Returns (out in q's dtype, the final HybridState
    detached, or None)."""
    B, L, Hq, Dk = q.shape
    Hkv, Dv = k.shape[2], v.shape[3]
    G = Hq // Hkv
    scale = opts.scale if opts.scale > 0 else 1.0 / math.sqrt(Dk)
    gamma = _gamma(gate, gate_form, Hq, q.device)
    num, den = _window_part(q, k, v, mask, window, sinks, gamma, scale)
    n, shift = L - window - sinks, window + sinks
    S = z = None
    if n > 0:
        # Query t's evicted keys are positions s .. t - W: causal attention of
        # q[W + s:] over k[s : L - W] (unnormalised, scale 1), its denominator
        # phi(q) . cumsum(phi(k)).
        qs, ks, vs = q[:, shift:], k[:, sinks:L - window], v[:, sinks:L - window]
        ms = None if mask is None else mask[:, sinks:L - window]
        # options as plain values: torch.compile traces them without building an Options
        lin = (opts.feature_map, False, opts.eps, 1.0, None, opts.precision)
        num_l, S, z = _ops.prefill_values(qs, ks, vs, ms, None, None, 0, True, lin,
                                          want_state=want_state)
        fk = _phi(ks.float(), opts.feature_map)
        if ms is not None:
            fk = fk.masked_fill(ms[:, :, None, None], 0.0)
        zc = fk.cumsum(1).repeat_interleave(G, dim=2)
        den_l = (_phi(qs.float(), opts.feature_map) * zc).sum(-1)
        num = num + F.pad(num_l.float(), (0, 0, 0, 0, shift, 0))
        den = den + F.pad(den_l, (0, 0, shift, 0))
    out = (num / (den + opts.eps).unsqueeze(-1)).to(q.dtype)
    if not want_state:
        return out, None
    if S is None:
        S = q.new_zeros((B, Hkv, Dk, Dv), dtype=torch.float32)
        z = q.new_zeros((B, Hkv, Dk), dtype=torch.float32)
    with torch.no_grad():
        keys, values, pos = _window_state(k.detach(), v.detach(), mask, window, sinks)
    return out, HybridState(S.detach(), z.detach(), keys, values, pos, L)


# --------------------------------------------------------------------------
# The functional form
# --------------------------------------------------------------------------

def _wants_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def attend(q, k, v, mask, window, sinks, gate, opts, state=None, want_state=False,
           seq_first=False, gate_form=C["LM_GATE_SIGMOID"]):
    """The hybrid attention of [B, L, H, D] views: the composition when a
    gradient is wanted or torch.compile traces (from an empty state), else the C
    core (from `state` when given); gate_form: the gate's lm_gate_form.
    Returns (out, state or None)."""
    if _wants_grad(q, k, v, gate) or _ops.compiling():
        if state is not None:
            raise NotImplementedError(
                "hybrid attention with gradients (or under torch.compile) starts from an empty "
                "state: continue a state without gradients (torch.no_grad()), or pass state=None")
        return composed(q, k, v, mask, window, sinks, gate, opts, want_state, gate_form)
    return c_prefill(q, k, v, mask, window, sinks, _gate_host(gate, q.shape[2]), opts, state,
                     want_state, seq_first, gate_form)


def hybrid_attention(q, k, v, window=C["LM_HYBRID_WINDOW_DEFAULT"], sinks=C["LM_HYBRID_SINKS_DEFAULT"],
                     window_gate=None, key_padding_mask=None, *, feature_map="elu", eps=1e-6,
                     scale=None, precision="auto", state=None, return_state=False,
                     window_gate_form="sigmoid"):
    """Causal hybrid attention (docs/DESIGN.md §9) on projected heads.

    q [B, L, Hq, Dk], k [B, L, Hkv, Dk], v [B, L, Hkv, Dv] (any strides; Hq %
    Hkv == 0), float32 / bfloat16 / float16 on the CPU or CUDA. window (W >= 1)
    and sinks (s >= 0): the exact part. window_gate: Hq logits g_h (a tensor,
    differentiable), None = 0; window_gate_form: gamma_h = sigmoid(g_h)
    ("sigmoid", the default) or exp(g_h) ("exp", |g_h| <= 40 in the C paths:
    docs/DESIGN.md §9.1). key_padding_mask [B, L]
    bool, True = ignore. feature_map "elu" | "relu" | "identity"; scale: the
    softmax scale (None = 1/sqrt(Dk)). state: a HybridState to continue (no
    gradient then). Returns out [B, L, Hq, Dv] in q's dtype, or (out, the final
    HybridState) with return_state. Differentiable in q, k, v and window_gate
    from an empty state."""
    opts = call_options(q, k, v, window, sinks, key_padding_mask, feature_map, eps, scale,
                        precision)
    out, st = attend(q, k, v, key_padding_mask, window, sinks, window_gate, opts, state,
                     want_state=return_state, gate_form=gate_form_code(window_gate_form))
    return (out, st) if return_state else out


def call_options(q, k, v, window, sinks, key_padding_mask, feature_map, eps, scale, precision):
    """hybrid_attention's checks of its arguments (also distributed's); returns
    the core's Options."""
    check_window(window, sinks)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, L, H, D]; got %d-D, %d-D, %d-D"
                         % (q.dim(), k.dim(), v.dim()))
    if feature_map not in _core.FEATURE_MAPS:
        raise ValueError("feature_map must be 'elu', 'relu' or 'identity', not %r" % (feature_map,))
    if precision not in _core.PRECISIONS:
        raise ValueError("precision must be 'auto', 'on' or 'off', not %r" % (precision,))
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError("key_padding_mask must be bool (True = ignore), not %s"
                        % key_padding_mask.dtype)
    return _core.Options(_core.FEATURE_MAPS[feature_map], True, eps,
                         0.0 if scale is None else float(scale), None,
                         _core.PRECISIONS[precision])


# --------------------------------------------------------------------------
# LiquidMemory(attention="hybrid")
# --------------------------------------------------------------------------

def _keep_gate_when_missing(module, state_dict, prefix, *args):
    """load_state_dict of a state_dict without window_gate (an
    nn.MultiheadAttention's: a softmax model being converted) keeps the gate."""
    key = prefix + "window_gate"
    if key not in state_dict:
        state_dict[key] = module.window_gate.detach().clone()


def module_init(m, attention, window, sinks, factory_kwargs, window_gate_form="sigmoid"):
    """Sets m.attention; in hybrid mode checks the options, registers the
    window_gate parameter (of the form window_gate_form) and the window's
    state buffers."""
    if attention not in ("linear", "hybrid"):
        raise ValueError("attention must be 'linear' or 'hybrid', not %r" % (attention,))
    m.attention = attention
    if attention == "linear":
        if window_gate_form != "sigmoid":
            raise ValueError("window_gate_form is an option of attention='hybrid'")
        return
    check_window(window, sinks)
    gate_form_code(window_gate_form)
    m.window_gate_form = window_gate_form
    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError("attention='hybrid' takes neither add_bias_kv nor add_zero_attn (their "
                         "extra key would sit at a position of the window)")
    if m.decay is not None:
        raise ValueError("attention='hybrid' has no decay (the evicted tokens' state is plain "
                         "linear attention)")
    if not m.normalize:
        raise ValueError("attention='hybrid' is normalised: pass normalize=True")
    m.window, m.sinks = window, sinks
    m.window_gate = torch.nn.Parameter(torch.zeros(m.num_heads, **factory_kwargs))
    dev = factory_kwargs.get("device")
    m.register_buffer("state_window_keys", torch.zeros(0, device=dev), persistent=False)
    m.register_buffer("state_window_values", torch.zeros(0, device=dev), persistent=False)
    m.register_buffer("state_window_pos", torch.zeros(0, dtype=torch.int32, device=dev),
                      persistent=False)
    m._gate_cache = (None, None)
    m._register_load_state_dict_pre_hook(_keep_gate_when_missing, with_module=True)


def extra_repr(m):
    return ", attention='hybrid', window=%d, sinks=%d, window_gate_form=%r" % \
        (m.window, m.sinks, m.window_gate_form) if m.attention == "hybrid" else ""


def _module_state(m):
    return HybridState(m.state_S, m.state_z, m.state_window_keys, m.state_window_values,
                       m.state_window_pos, m._cursor.position)


def _store(m, st, batch):
    with torch.no_grad():
        for name, t in zip(("state_S", "state_z") + STATE_BUFFERS, st[:5]):
            buf = getattr(m, name)
            if buf.shape == t.shape and buf.device == t.device and buf.dtype == t.dtype and \
                    _ops.writable(buf):
                buf.copy_(t)
            else:
                setattr(m, name, t.detach().clone())
    m._cursor.position = int(st.position)
    m._cursor.batch = batch


def module_forward(m, query, key, value, mask, causal, seq_first, keep):
    """The module's hybrid forward (inputs checked by LiquidMemory.forward):
    projections, hybrid attention, dropout, out-projection; keeps the final
    state for step() when `keep` (LiquidMemory.forward's keep_state rule)."""
    if not causal:
        raise NotImplementedError(
            "attention='hybrid' is causal (its window is the last W tokens before each query): "
            "pass is_causal=True or a causal attn_mask")
    q, k, v = m._project(query, key, value)
    q = m._heads(q, m.num_heads, seq_first)
    k = m._heads(k, m.num_kv_heads, seq_first)
    v = m._heads(v, m.num_kv_heads, seq_first)
    from . import distributed  # (it imports this module)
    o, st = distributed.hybrid_prefill(m.context_parallel_group, q, k, v, mask, m.window, m.sinks,
                                       m.window_gate, m._opts, want_state=keep, seq_first=seq_first,
                                       gate_form=gate_form_code(m.window_gate_form))
    if m.training and m.dropout > 0:
        o = F.dropout(o, p=m.dropout)
    o = o.transpose(0, 1) if seq_first else o
    o = o.reshape(o.shape[0], o.shape[1], m.embed_dim)
    if keep:
        _store(m, st, q.shape[0])
    return F.linear(o, m.out_proj.weight, m.out_proj.bias)


def _gate_values(m):
    """The gate as host floats, converted again only when the parameter
    changed (no device sync per step, none inside a CUDA graph capture).
    torch.compile takes the values as constants of the compiled step."""
    g = m.window_gate
    key = (g.data_ptr(), g._version, g.device)
    if m._gate_cache[0] != key:
        m._gate_cache = (key, [float(x) for x in g.detach().float().cpu()])
    return m._gate_cache[1]


if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    _gate_values = torch.compiler.assume_constant_result(_gate_values)


def module_step(m, x):
    """One decode step of x [B, E] (checked by LiquidMemory.step): the
    projections, the hybrid decode, the out-projection."""
    B, cur = x.shape[0], m._cursor
    if cur.batch != B:
        if cur.batch:
            raise _core.StateError(
                "the decode state holds a batch of %d, but step() got a batch of %d: call "
                "reset_state() first (or set_state() a state of that batch)" % (cur.batch, B))
        _store(m, empty_state(B, m.num_kv_heads, m.head_dim, m.head_dim, m.window, m.sinks,
                              x.device), B)
    H, Hkv, D = m.num_heads, m.num_kv_heads, m.head_dim
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).split([H * D, Hkv * D, Hkv * D], -1)
    o = decode(q.view(B, 1, H, D), k.view(B, 1, Hkv, D), v.view(B, 1, Hkv, D), _module_state(m),
               m.window, m.sinks, _gate_values(m), m._opts, gate_form_code(m.window_gate_form))
    cur.position += 1
    return F.linear(o.view(B, H * D), m.out_proj.weight, m.out_proj.bias)


def module_reset(m):
    if m.attention != "hybrid":
        return
    with torch.no_grad():
        for name in STATE_BUFFERS:
            buf = getattr(m, name)
            if _ops.writable(buf):
                buf.zero_()
            else:
                setattr(m, name, torch.zeros(0, dtype=buf.dtype, device=buf.device))


def module_get_state(m):
    if not m._cursor.batch:
        return None
    st = _module_state(m)
    return {"S": st.S.detach().clone(), "z": st.z.detach().clone(),
            "window_keys": st.keys.detach().clone(), "window_values": st.values.detach().clone(),
            "window_pos": st.pos.detach().clone(), "position": m._cursor.position,
            "batch": m._cursor.batch}


def module_set_state(m, state):
    for name in ("S", "z", "window_keys", "window_values", "window_pos", "position"):
        if name not in state:
            raise ValueError("a hybrid state needs %r (from get_state() of a module with "
                             "attention='hybrid')" % name)
    _core.refuse_carried_state("LiquidMemory.set_state")
    dev = m.out_proj.weight.device
    S = state["S"].to(dev, torch.float32).contiguous()
    B = S.shape[0]
    st = HybridState(S, state["z"].to(dev, torch.float32).contiguous(),
                     state["window_keys"].to(dev, torch.float32).contiguous(),
                     state["window_values"].to(dev, torch.float32).contiguous(),
                     state["window_pos"].to(dev, torch.int32).contiguous(), int(state["position"]))
    if st.position < 0:
        raise ValueError("state position must be >= 0, not %d" % st.position)
    D = m.head_dim
    _check_state(st, B, m.num_kv_heads, D, D, m.window, m.sinks, dev)
    _store(m, st, B)
