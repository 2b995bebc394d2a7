"""
_ops.py - the attention core as torch operators, with autograd.

On torch >= 2.4 the three kernels register through torch.library.custom_op
(namespace ``liquid_memory``) with fake (meta) implementations, so
torch.compile(fullgraph=True) traces through them and CUDA graphs can capture
the decode step:
  liquid_memory::prefill           functional; autograd via register_autograd
  liquid_memory::prefill_backward  functional (the backward of prefill)
  liquid_memory::decode            mutates the state S and z in place (no autograd)
On older torch (or with LM_PY_CUSTOM_OP=0) the same kernels run eagerly,
with a torch.autograd.Function for the gradient.

Public entry points: prefill(...) and decode(...) below.
"""
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _core

USE_CUSTOM_OP = hasattr(torch.library, "custom_op") and \
    os.environ.get("LM_PY_CUSTOM_OP", "1") not in ("0", "false", "no")


def _find_is_compiling():
    for owner in ("compiler", "_dynamo"):
        fn = getattr(getattr(torch, owner, None), "is_compiling", None)
        if fn is not None:
            return fn
    return lambda: False


# compiling() is True while torch.compile traces (torch >= 2.0): torch's own
# function, looked up once here (the lookup costs more than the call).
compiling = _find_is_compiling()


def writable(buf):
    """Whether a state buffer can be written in place: torch refuses in-place
    writes to an inference tensor outside inference mode. While torch.compile
    traces, neither question can be asked (dynamo treats both calls as a graph
    break, which fullgraph=True turns into an error), so a compiled forward
    writes in place; a state made under torch.inference_mode() is replaced by
    an eager reset_state() outside it (which asks)."""
    if compiling():
        return True
    return torch.is_inference_mode_enabled() or not buf.is_inference()


def _opts(fm, normalize, eps, scale, decay, precision):
    return _core.Options(fm, normalize, eps, scale, decay, precision)


def _empty_state(x):
    return x.new_empty((0,), dtype=torch.float32)


def _given(t):
    """A state gradient that carries something (None / empty = zero)."""
    return t is not None and t.numel() > 0


def _backward_common(saved, params, dout, dS, dz, needs_state_grad, bwd):
    q, k, v, mask, S0, z0 = saved
    position, is_causal, fm, normalize, eps, scale, decay, precision = params
    dS = dS if _given(dS) else None
    dz = dz if _given(dz) else None
    need_dstate = S0 is not None and needs_state_grad
    dq, dk, dv, dS0, dz0 = bwd(dout, q, k, v, mask, S0, z0, dS, dz, position, is_causal, fm,
                               normalize, eps, scale, decay, precision, need_dstate)
    if not need_dstate:
        dS0 = dz0 = None
    return dq, dk, dv, dS0, dz0


if USE_CUSTOM_OP:
    from torch.library import custom_op

    @custom_op("liquid_memory::prefill", mutates_args=())
    def _prefill_op(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                    S0: Optional[Tensor], z0: Optional[Tensor], position: int, is_causal: bool,
                    feature_map: int, normalize: bool, eps: float, scale: float,
                    decay: Optional[List[float]], precision: int, seq_first: bool,
                    want_state: bool) -> Tuple[Tensor, Tensor, Tensor]:
        return _core.prefill(q, k, v, mask, S0, z0, position, is_causal,
                             _opts(feature_map, normalize, eps, scale, decay, precision),
                             seq_first, want_state)

    @_prefill_op.register_fake
    def _prefill_fake(q, k, v, mask, S0, z0, position, is_causal, feature_map, normalize, eps,
                      scale, decay, precision, seq_first, want_state):
        B, L, Hq = q.shape[0], q.shape[1], q.shape[2]
        Hkv, Dk, Dv = k.shape[2], k.shape[3], v.shape[3]
        if seq_first:
            out = q.new_empty((L, B, Hq, Dv)).transpose(0, 1)
        else:
            out = q.new_empty((B, L, Hq, Dv))
        if S0 is not None or want_state:
            return (out, q.new_empty((B, Hkv, Dk, Dv), dtype=torch.float32),
                    q.new_empty((B, Hkv, Dk), dtype=torch.float32))
        return out, _empty_state(q), _empty_state(q)

    @custom_op("liquid_memory::prefill_backward", mutates_args=())
    def _prefill_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor,
                             mask: Optional[Tensor], S0: Optional[Tensor], z0: Optional[Tensor],
                             dS: Optional[Tensor], dz: Optional[Tensor], position: int,
                             is_causal: bool, feature_map: int, normalize: bool, eps: float,
                             scale: float, decay: Optional[List[float]], precision: int,
                             need_dstate: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _core.backward(dout, q, k, v, mask, S0, z0, dS, dz, position, is_causal,
                              _opts(feature_map, normalize, eps, scale, decay, precision),
                              need_dstate)

    @_prefill_backward_op.register_fake
    def _prefill_backward_fake(dout, q, k, v, mask, S0, z0, dS, dz, position, is_causal,
                               feature_map, normalize, eps, scale, decay, precision,
                               need_dstate):
        dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
        if need_dstate:
            B, Hkv, Dk, Dv = q.shape[0], k.shape[2], k.shape[3], v.shape[3]
            return (dq, dk, dv, q.new_empty((B, Hkv, Dk, Dv), dtype=torch.float32),
                    q.new_empty((B, Hkv, Dk), dtype=torch.float32))
        return dq, dk, dv, _empty_state(q), _empty_state(q)

    def _setup_context(ctx, inputs, output):
        (q, k, v, mask, S0, z0, position, is_causal, fm, normalize, eps, scale, decay,
         precision, seq_first, want_state) = inputs
        ctx.save_for_backward(q, k, v, mask, S0, z0)
        ctx.params = (position, is_causal, fm, normalize, eps, scale, decay, precision)

    def _prefill_grad(ctx, dout, dS, dz):
        needs = ctx.needs_input_grad
        dq, dk, dv, dS0, dz0 = _backward_common(
            ctx.saved_tensors, ctx.params, dout, dS, dz, needs[4] or needs[5],
            _prefill_backward_op)
        return (dq, dk, dv, None, dS0, dz0) + (None,) * 10

    _prefill_op.register_autograd(_prefill_grad, setup_context=_setup_context)

    @custom_op("liquid_memory::decode", mutates_args=("S", "z"))
    def _decode_op(q: Tensor, k: Tensor, v: Tensor, S: Tensor, z: Tensor, position: int,
                   feature_map: int, normalize: bool, eps: float, scale: float,
                   decay: Optional[List[float]], precision: int) -> Tensor:
        return _core.decode(q, k, v, S, z, position,
                            _opts(feature_map, normalize, eps, scale, decay, precision))

    @_decode_op.register_fake
    def _decode_fake(q, k, v, S, z, position, feature_map, normalize, eps, scale, decay,
                     precision):
        return q.new_empty((q.shape[0], 1, q.shape[2], v.shape[3]))

    def _prefill_call(*args):
        return _prefill_op(*args)

    def _decode_call(*args):
        return _decode_op(*args)

else:
    def _bwd_eager(dout, q, k, v, mask, S0, z0, dS, dz, position, is_causal, fm, normalize,
                   eps, scale, decay, precision, need_dstate):
        return _core.backward(dout, q, k, v, mask, S0, z0, dS, dz, position, is_causal,
                              _opts(fm, normalize, eps, scale, decay, precision), need_dstate)

    class _PrefillFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, mask, S0, z0, position, is_causal, fm, normalize, eps, scale,
                    decay, precision, seq_first, want_state):
            out, S, z = _core.prefill(q, k, v, mask, S0, z0, position, is_causal,
                                      _opts(fm, normalize, eps, scale, decay, precision),
                                      seq_first, want_state)
            ctx.save_for_backward(q, k, v, mask, S0, z0)
            ctx.params = (position, is_causal, fm, normalize, eps, scale, decay, precision)
            return out, S, z

        @staticmethod
        def backward(ctx, dout, dS, dz):
            needs = ctx.needs_input_grad
            dq, dk, dv, dS0, dz0 = _backward_common(
                ctx.saved_tensors, ctx.params, dout, dS, dz, needs[4] or needs[5], _bwd_eager)
            return (dq, dk, dv, None, dS0, dz0) + (None,) * 10

    def _prefill_call(*args):
        return _PrefillFunction.apply(*args)

    def _decode_call(q, k, v, S, z, position, fm, normalize, eps, scale, decay, precision):
        return _core.decode(q, k, v, S, z, position,
                            _opts(fm, normalize, eps, scale, decay, precision))


def prefill(q, k, v, mask=None, S0=None, z0=None, position=0, is_causal=True, opts=None,
            seq_first=False, want_state=False):
    """Differentiable prefill (see _core.prefill). Returns (out, S, z)."""
    o = opts or _core.DEFAULT_OPTIONS
    return prefill_values(q, k, v, mask, S0, z0, position, is_causal,
                          (o.feature_map, o.normalize, o.eps, o.scale, o.decay, o.precision),
                          seq_first, want_state)


def prefill_values(q, k, v, mask, S0, z0, position, is_causal, values, seq_first=False,
                   want_state=False):
    """prefill with the options as plain values (feature_map code, normalize,
    eps, scale, decay list or None, precision code): what torch.compile traces
    without building an Options object."""
    fm, normalize, eps, scale, decay, precision = values
    return _prefill_call(q, k, v, mask, S0, z0, int(position), bool(is_causal), fm, normalize,
                         eps, scale, decay, precision, bool(seq_first), bool(want_state))


def decode(q, k, v, S, z, position, opts=None):
    """One decode step, updating S and z in place (no autograd)."""
    o = opts or _core.DEFAULT_OPTIONS
    if not compiling():
        # Eagerly the custom op's dispatch would cost more host time than the
        # step's kernel; the op is only needed for torch.compile to trace it.
        return _core.decode(q, k, v, S, z, int(position), o)
    return _decode_call(q, k, v, S, z, int(position), o.feature_map, o.normalize, o.eps,
                        o.scale, o.decay, o.precision)
