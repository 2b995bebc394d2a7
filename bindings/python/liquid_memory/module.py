"""
module.py - LiquidMemory, a drop-in for torch.nn.MultiheadAttention whose
attention runs in linear time through libliquidmemory.

The projections are done in torch (F.linear with the module's own,
MHA-named parameters), so autograd covers them; the attention between the
projected q, k, v goes through the C core (see _ops / _core), reading the
projections through their strides without copies.
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import constant_, xavier_normal_, xavier_uniform_
from torch.nn.parameter import Parameter

from . import _core, _ops, distributed
from .functional import decay_values, make_options
from . import capped
from . import hybrid as _hybrid

_decay_values = decay_values  # the name hf.py imports from here

try:
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear as _OutProj
except ImportError:  # pragma: no cover - very old torch
    _OutProj = nn.Linear

__all__ = ["LiquidMemory", "replace_attention", "disable_fastpath", "AttentionWeightsWarning",
           "MASK_IGNORE_AT"]


class AttentionWeightsWarning(UserWarning):
    """need_weights=True: linear attention never forms attention weights."""


_warned = set()


def _warn_once(key, message, category=UserWarning):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, category, stacklevel=3)


# The causal forward without autograd runs in slabs of about this many rows
# (batch x tokens), at least _SLAB_MIN tokens: as the C module's slabs.
_SLAB_ROWS = 8192
_SLAB_MIN = 1024


# A float mask value at or below this (compared in the mask's own dtype; -inf
# included) means "ignore this key": added to a softmax logit it leaves a weight
# of exp(-1e4) = 0 in every floating format, which is what the idioms -1e4,
# -1e9, finfo(dtype).min and -inf are written for. 0 means "keep"; any other
# value is an additive bias, which linear attention cannot apply.
MASK_IGNORE_AT = -1e4

# (hybrid attention adds the window's: state_window_keys, _values, _pos)
_STATE_BUFFERS = ("state_S", "state_z") + _hybrid.STATE_BUFFERS


class _Cursor:
    """Where the decode state stands: tokens absorbed (position) and the batch
    it holds (0 = no state). A plain object, because step() updates it per
    token and nn.Module.__setattr__ would cost more than the C call."""

    pool = None  # under a context cap: the StatePool holding the state (capped.py); a class
    # default, so a cursor pickled before pools existed reads None

    def __init__(self):
        self.position = 0
        self.batch = 0

    def __getstate__(self):
        # A pool is a handle into the library: a copy (pickle, deepcopy) goes without it.
        return dict(self.__dict__, pool=None)


def _keep_linear_attention(module, args):
    """A no-op forward pre-hook that LiquidMemory 0.1.0 registered (to keep
    torch's encoder fast path away); kept so that modules pickled then still
    load. The fast path is now refused by _qkv_same_embed_dim reading False."""
    return None


def _float_mask_ignore(mask, what, error):
    """The 'ignore' positions of a float mask (MASK_IGNORE_AT); raises `error`
    when a value is neither 0 nor an ignore value (not checkable under compile)."""
    ignore = mask <= MASK_IGNORE_AT
    if not _ops.compiling() and not bool(((mask == 0) | ignore).all()):
        bad = mask[~((mask == 0) | ignore)][:3].tolist()
        raise error(
            "%s holds values other than 0 (keep) and <= %g (ignore; -inf, -1e9, finfo.min ...), "
            "e.g. %s: an additive attention bias has no linear-time equivalent in linear "
            "attention (the state sums phi(k) v^T over keys without per-query weights); use a "
            "bool mask (True = ignore) or those two kinds of value" % (what, MASK_IGNORE_AT, bad))
    return ignore


class LiquidMemory(nn.Module):
    r"""Multi-head attention in linear time: a drop-in for
    :class:`torch.nn.MultiheadAttention`.

    Same constructor, parameters and ``state_dict`` keys as MHA
    (``in_proj_weight``/``in_proj_bias``, or ``q/k/v_proj_weight`` when kdim or
    vdim differ from embed_dim; ``bias_k``/``bias_v``; ``out_proj``), so
    ``load_state_dict`` works in both directions and :meth:`from_mha` converts
    a trained MHA. Softmax is replaced by kernelised linear attention (per
    head, feature map phi, fp32 state S and normaliser z):

        o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps),
        S_t = g S_{t-1} + phi(k_t) v_t^T,  z_t = g z_{t-1} + phi(k_t)

    so prefill costs O(L) and each decode :meth:`step` O(1).

    Args (as MHA): embed_dim, num_heads, dropout, bias, add_bias_kv,
        add_zero_attn, kdim, vdim, batch_first, device, dtype.
    Keyword-only:
        feature_map: "elu" (elu(x)+1, default), "relu" or "identity".
        normalize: divide by phi(q).z + eps (default True); else multiply by `scale`.
        decay: None (default, plain linear attention), a float in (0, 1] for every
            head, a sequence of num_kv_heads floats, or "retnet" (g_h = 1 - 2^(-5-h)).
            Causal attention only.
        precision: "auto" (compensated state accumulation above 64K tokens), "on", "off".
            "on" also keeps the CUDA backward on its fp32 kernel (gradients at the bf16
            rounding floor); otherwise bf16 causal attention without GQA, mask or decay
            trains on the tensor cores (within 2x that floor, 3.6x faster on the H100).
        eps: normaliser epsilon (1e-6). scale: unnormalised output factor (None = 1/sqrt(D)).
        num_kv_heads: grouped-query attention (None = num_heads). With fewer kv heads
            in_proj_weight is [E + 2 Hkv D, E], which MHA cannot load.
        context_parallel_group: a torch.distributed group over which ONE sequence is
            split, each rank passing its contiguous segment (rank order, any lengths);
            outputs and gradients are those of one process over the whole sequence
            (see liquid_memory.distributed; every rank must call forward together).
            With attention="hybrid": forward only (a backward raises UnsupportedError).
        attention: "linear" (default) or "hybrid": exact softmax over the first `sinks`
            tokens and the last `window` tokens, linear attention over the tokens that
            left the window (docs/DESIGN.md §9; causal only). Adds the parameter
            `window_gate` [num_heads] (softmax weight sigmoid(g_h), zeros = 1/2); a
            state_dict without it (an MHA's) keeps the current gate.
        window, sinks: the hybrid's W (64) and s (4).
        window_gate_form: the hybrid's gate, "sigmoid" (default: gamma_h = sigmoid(g_h)
            <= 1, the issue's form) or "exp" (gamma_h = exp(g_h), unbounded, |g_h| <= 40;
            zeros = 1): the form a converted softmax model needs (docs/DESIGN.md §9.7).

    Differences from MHA, by design:
      * Returns ``(out, None)``: attention weights do not exist in linear
        attention; ``need_weights=True`` warns once and is otherwise ignored.
      * ``dropout`` is applied to the per-head attention output (before
        out_proj) in training mode, not to attention weights (there are none).
        It regularises similarly but is not the same random function as MHA's.
      * ``attn_mask`` is accepted only when it is a causal mask or masks nothing,
        ``(L, S)`` or ``(batch * num_heads, L, S)``; any other mask raises
        NotImplementedError: a general additive mask has no linear-time
        equivalent. ``is_causal=True`` also works without a mask; given together
        with a mask it is trusted as a hint, as in PyTorch.
      * Masks, ``attn_mask`` and ``key_padding_mask`` alike: bool or uint8 nonzero =
        ignore; float 0 = keep and any value <= MASK_IGNORE_AT (-1e4, in the mask's
        dtype: -inf, -1e9, finfo.min) = ignore; other float values raise. A query
        whose keys are all masked gets 0, not NaN.
      * ``add_bias_kv`` / ``add_zero_attn``: the extra key/value is visible to every
        query, as in MHA; it is absorbed into the initial state, so with causal
        attention it precedes the sequence.
      * The attention runs in float32, bfloat16 or float16 (the parameters' dtype).
      * ``_qkv_same_embed_dim`` reads False, so that torch's fused encoder fast
        path (softmax on in_proj_weight) never runs in our place.

    Decode: an inference forward (autograd not recording) that is causal leaves
    its final state on the module (``keep_state`` overrides: see forward);
    :meth:`step` continues from it one token at a time, inference only;
    :meth:`reset_state`, :meth:`get_state` / :meth:`set_state` save, restore or
    fork it. The state lives in non-persistent fp32 buffers (``state_S``,
    ``state_z``): it follows ``.to(device)``, never a dtype cast, and is not in
    ``state_dict``.
    """

    __constants__ = ["batch_first"]
    context_parallel_group = None  # what modules pickled before it was an argument read
    attention = "linear"  # (the instance's; modules pickled before hybrid attention have none)
    window_gate_form = "sigmoid"  # (likewise: hybrid modules pickled before the gate's form)

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None,
                 dtype=None, *, feature_map="elu", normalize=True, decay=None, precision="auto",
                 eps=1e-6, scale=None, num_kv_heads=None, context_parallel_group=None,
                 attention="linear", window=_hybrid.C["LM_HYBRID_WINDOW_DEFAULT"],
                 sinks=_hybrid.C["LM_HYBRID_SINKS_DEFAULT"], window_gate_form="sigmoid"):
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError("embed_dim and num_heads must be greater than 0, got "
                             "embed_dim=%s and num_heads=%s" % (embed_dim, num_heads))
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        packed = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.context_parallel_group = context_parallel_group  # see liquid_memory.distributed
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise ValueError("embed_dim (%d) must be divisible by num_heads (%d)"
                             % (embed_dim, num_heads))
        self.num_kv_heads = num_heads if num_kv_heads is None else int(num_kv_heads)
        if self.num_kv_heads <= 0 or num_heads % self.num_kv_heads:
            raise ValueError("num_kv_heads (%s) must divide num_heads (%d)"
                             % (num_kv_heads, num_heads))
        kv = self.num_kv_heads * self.head_dim

        if not packed:
            self.q_proj_weight = Parameter(torch.empty((embed_dim, embed_dim), **factory_kwargs))
            self.k_proj_weight = Parameter(torch.empty((kv, self.kdim), **factory_kwargs))
            self.v_proj_weight = Parameter(torch.empty((kv, self.vdim), **factory_kwargs))
            self.register_parameter("in_proj_weight", None)
        else:
            self.in_proj_weight = Parameter(torch.empty((embed_dim + 2 * kv, embed_dim),
                                                        **factory_kwargs))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(torch.empty(embed_dim + 2 * kv, **factory_kwargs))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = _OutProj(embed_dim, embed_dim, bias=bias, **factory_kwargs)
        if add_bias_kv:
            self.bias_k = Parameter(torch.empty((1, 1, kv), **factory_kwargs))
            self.bias_v = Parameter(torch.empty((1, 1, kv), **factory_kwargs))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()
        self._configure_attention(feature_map=feature_map, normalize=normalize, decay=decay,
                                  precision=precision, eps=eps, scale=scale)

        # Decode state: S [B, Hkv, D, D], z [B, Hkv, D], fp32 whatever the
        # parameters' dtype (see _apply); not part of state_dict.
        self.register_buffer("state_S", torch.zeros(0, device=device), persistent=False)
        self.register_buffer("state_z", torch.zeros(0, device=device), persistent=False)
        _hybrid.module_init(self, attention, window, sinks, factory_kwargs, window_gate_form)
        self._cursor = _Cursor()

    def _configure_attention(self, *, feature_map, normalize, decay, precision, eps, scale):
        """Checks and stores the attention options (the keyword-only extras);
        self._opts is what the C core receives. One place for a new kind of
        attention to add its own options."""
        self._opts = make_options(feature_map, normalize, decay, self.num_kv_heads, precision,
                                  eps, scale)
        self.feature_map = feature_map
        self.normalize = bool(normalize)
        self.decay = decay_values(decay, self.num_kv_heads)
        self.precision = precision
        self.eps = float(eps)
        self.scale = scale

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_cursor" not in self.__dict__:  # pickled by 0.1.0, which kept plain attributes
            self._cursor = _Cursor()
            self._cursor.position = self.__dict__.pop("_position", 0)
            self._cursor.batch = self.__dict__.pop("_state_batch", 0)

    @property
    def _qkv_same_embed_dim(self):
        """Always False, on purpose. nn.TransformerEncoderLayer and
        nn.TransformerEncoder (torch 1.13 and 2.x) take a fused fast path in
        eval mode without grad that reads self_attn.in_proj_weight and
        computes *softmax* attention without calling self_attn; every version
        checks this flag first and stays on the regular path (which calls us)
        when it is False. Whether q, k and v share one packed in_proj_weight
        (as MHA's flag means) is `self.in_proj_weight is not None`."""
        return False

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value):
        raise AttributeError("LiquidMemory._qkv_same_embed_dim is always False (it keeps torch's "
                             "fused softmax fast path away); the packed projection is "
                             "in_proj_weight, present when kdim == vdim == embed_dim")

    def _apply(self, fn, *args, **kwargs):
        """nn.Module._apply, behind .to(), .cuda(), .half(), .bfloat16(), ...:
        the decode state follows a change of device but never of dtype. It is
        fp32 by design (the C core reads and writes fp32); a cast would make
        every later step() fail and would round the state it holds."""
        before = {n: self._buffers[n] for n in _STATE_BUFFERS if n in self._buffers}
        out = super()._apply(fn, *args, **kwargs)
        for n, old in before.items():
            new = self._buffers[n]
            if new is not None and old is not None and new.is_floating_point() and \
                    new.dtype != torch.float32:
                self._buffers[n] = old.to(device=new.device, dtype=torch.float32)
        return out

    def _reset_parameters(self):
        if self.in_proj_weight is not None:
            xavier_uniform_(self.in_proj_weight)
        else:
            xavier_uniform_(self.q_proj_weight)
            xavier_uniform_(self.k_proj_weight)
            xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            constant_(self.in_proj_bias, 0.0)
            constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            xavier_normal_(self.bias_v)

    def extra_repr(self):
        s = "embed_dim=%d, num_heads=%d" % (self.embed_dim, self.num_heads)
        if self.num_kv_heads != self.num_heads:
            s += ", num_kv_heads=%d" % self.num_kv_heads
        s += ", feature_map=%r, normalize=%s" % (self.feature_map, self.normalize)
        if self.decay is not None:
            s += ", decay=%s" % (self.decay,)
        s += _hybrid.extra_repr(self)
        return s + ", batch_first=%s" % self.batch_first

    # ------------------------------------------------------------------ MHA interop

    @classmethod
    def from_mha(cls, mha, **options):
        """A LiquidMemory with the configuration and weights of an
        nn.MultiheadAttention (copied). `options`: feature_map, normalize, ..."""
        ref = mha.out_proj.weight
        m = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout,
                bias=mha.in_proj_bias is not None, add_bias_kv=mha.bias_k is not None,
                add_zero_attn=mha.add_zero_attn, kdim=mha.kdim, vdim=mha.vdim,
                batch_first=mha.batch_first, device=ref.device, dtype=ref.dtype, **options)
        m.load_state_dict(mha.state_dict())
        m.train(mha.training)
        return m

    def to_mha(self):
        """An nn.MultiheadAttention with this module's configuration and weights."""
        if self.num_kv_heads != self.num_heads:
            raise ValueError("nn.MultiheadAttention has no grouped-query attention "
                             "(num_kv_heads=%d != num_heads=%d)" % (self.num_kv_heads,
                                                                  self.num_heads))
        ref = self.out_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                    bias=self.in_proj_bias is not None,
                                    add_bias_kv=self.bias_k is not None,
                                    add_zero_attn=self.add_zero_attn, kdim=self.kdim,
                                    vdim=self.vdim, batch_first=self.batch_first,
                                    device=ref.device, dtype=ref.dtype)
        sd = self.state_dict()
        sd.pop("window_gate", None)  # hybrid attention's gate: MHA has none
        mha.load_state_dict(sd)
        mha.train(self.training)
        return mha

    # ------------------------------------------------------------------ pieces

    def _project(self, query, key, value):
        """q, k, v projections on the inputs' own layout ([..., E] last)."""
        E, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:E + kv], b[E + kv:])
        w = self.in_proj_weight
        if w is not None:
            if query is key and key is value:
                return F.linear(query, w, b).split([E, kv, kv], dim=-1)
            q = F.linear(query, w[:E], bq)
            if key is value:
                kvp = F.linear(key, w[E:], None if b is None else b[E:])
                k, v = kvp.split([kv, kv], dim=-1)
                return q, k, v
            return q, F.linear(key, w[E:E + kv], bk), F.linear(value, w[E + kv:], bv)
        return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                F.linear(value, self.v_proj_weight, bv))

    def _heads(self, x, heads, seq_first):
        """[L, B, H*D] or [B, L, H*D] (any strides, last dim unit) -> [B, L, H, D] view."""
        x = x.view(x.shape[0], x.shape[1], heads, self.head_dim)
        return x.transpose(0, 1) if seq_first else x

    def _extra_state(self, B, like):
        """Initial state holding bias_k/bias_v and the zero key of add_zero_attn
        (visible to every query, as in MHA), or (None, None, 0)."""
        k, v = self._extra_keys(B, like)
        if k is None:
            return None, None, 0
        n = k.shape[1]
        q = like.new_zeros((B, n, self.num_heads, self.head_dim))  # outputs discarded
        _, S0, z0 = _ops.prefill(q, k.to(like.dtype), v.to(like.dtype), is_causal=True,
                                 opts=self._opts, want_state=True)
        return S0, z0, n

    def _extra_keys(self, B, like):
        """The keys and values [B, n, Hkv, D] that _extra_state absorbs, or (None, None)."""
        ks, vs = [], []
        H, D = self.num_kv_heads, self.head_dim
        if self.bias_k is not None:
            ks.append(self.bias_k.view(1, 1, H, D).expand(B, 1, H, D))
            vs.append(self.bias_v.view(1, 1, H, D).expand(B, 1, H, D))
        if self.add_zero_attn:
            z = like.new_zeros((B, 1, H, D))
            ks.append(z)
            vs.append(z)
        if not ks:
            return None, None
        k = torch.cat(ks, dim=1) if len(ks) > 1 else ks[0]
        v = torch.cat(vs, dim=1) if len(vs) > 1 else vs[0]
        return k, v

    def _state_writable(self):
        """The state buffers can be written in place (fp32, and not inference
        tensors outside inference mode, which torch refuses to modify)."""
        S = self.state_S
        return S.dtype == torch.float32 and self.state_z.dtype == torch.float32 and _ops.writable(S)

    def _store_state(self, S, z, position, batch):
        with torch.no_grad():
            if self.state_S.shape == S.shape and self.state_S.device == S.device and \
                    self._state_writable():
                self.state_S.copy_(S)
                self.state_z.copy_(z)
            else:
                self.state_S = S.detach().to(torch.float32, copy=True).contiguous()
                self.state_z = z.detach().to(torch.float32, copy=True).contiguous()
        capped.drop(self)
        self._cursor.position = position
        self._cursor.batch = batch

    def _recording(self, *inputs):
        """Whether autograd records a call on these inputs (a training call)."""
        return torch.is_grad_enabled() and (any(t.requires_grad for t in inputs) or
                                            any(p.requires_grad for p in self.parameters()))

    # ------------------------------------------------------------------ masks

    @staticmethod
    def _padding_mask(mask, B, Lk, device):
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape) != (B, Lk):
            raise ValueError("key_padding_mask has shape %s, expected (batch, key length) = %s"
                             % (tuple(mask.shape), (B, Lk)))
        if mask.device != device:
            raise ValueError("key_padding_mask is on %s, the inputs on %s" % (mask.device, device))
        if mask.dtype == torch.bool:
            return mask
        if mask.dtype == torch.uint8:
            _warn_once("uint8mask", "a uint8 key_padding_mask is read as bool (nonzero = "
                       "ignore); pass a bool mask")
            return mask.bool()
        if mask.is_floating_point():
            return _float_mask_ignore(mask, "key_padding_mask", ValueError)
        raise TypeError("key_padding_mask must be bool, uint8 or floating point, not %s"
                        % mask.dtype)

    def _mask_kind(self, mask, B, L, S):
        """'causal' or 'none' for an attn_mask linear attention can express
        (as MHA: (L, S) or (batch * num_heads, L, S); bool or uint8 nonzero =
        ignore; float 0 = keep, <= MASK_IGNORE_AT = ignore); raises otherwise."""
        if mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != (L, S) or \
                (mask.dim() == 3 and mask.shape[0] != B * self.num_heads):
            raise ValueError("attn_mask has shape %s, expected (L, S) = (%d, %d) or (batch * "
                             "num_heads, L, S) = (%d, %d, %d)"
                             % (tuple(mask.shape), L, S, B * self.num_heads, L, S))
        if mask.dtype == torch.bool:
            blocked = mask
        elif mask.dtype == torch.uint8:
            _warn_once("uint8attn", "a uint8 attn_mask is read as bool (nonzero = ignore), as "
                       "nn.MultiheadAttention does; pass a bool mask")
            blocked = mask.bool()
        elif mask.is_floating_point():
            blocked = _float_mask_ignore(mask, "attn_mask", NotImplementedError)
        else:
            raise TypeError("attn_mask must be bool, uint8 or floating point, not %s" % mask.dtype)
        if not bool(blocked.any()):
            return "none"
        if L == S:
            causal = torch.ones((L, S), dtype=torch.bool, device=mask.device).triu(1)
            if bool((blocked == causal).all()):
                return "causal"
        raise NotImplementedError(
            "attn_mask is not a causal mask: linear attention keeps one running state per "
            "head, so it can only express causal attention (each query sees keys 0..t), full "
            "attention, and key padding; an arbitrary (L, S) mask would need per-query states, "
            "i.e. quadratic cost. Pass is_causal=True or a causal mask, or key_padding_mask")

    # ------------------------------------------------------------------ forward

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False, *,
                keep_state=None):
        """Same arguments as nn.MultiheadAttention.forward; returns (out, None).

        query [L, B, E] ([B, L, E] with batch_first, [L, E] unbatched), key and
        value [S, B, kdim/vdim] likewise; nested tensors (batch-first) too, as
        nn.TransformerEncoder makes them. is_causal=True: token t attends to
        keys 0..t (needs L == S); it also works without attn_mask.

        keep_state (keyword only) says what happens to the decode state that
        step() continues from:
          None (default): an inference forward (one autograd does not record:
              under torch.no_grad() / inference_mode(), or nothing requires grad)
              leaves its final state when causal and drops the state when
              bidirectional; a training forward leaves the decode state alone.
          True: a causal forward leaves its final state even while training
              (detached: step() never carries a gradient).
          False: the decode state is left alone."""
        if need_weights:
            _warn_once("need_weights",
                       "LiquidMemory: need_weights=True, but linear attention never forms "
                       "attention weights; the second output is None (pass "
                       "need_weights=False to silence this warning)", AttentionWeightsWarning)
        nested = [getattr(t, "is_nested", False) for t in (query, key, value)]
        if any(nested):
            return self._forward_nested(query, key, value, key_padding_mask, attn_mask,
                                        is_causal, keep_state, all(nested))
        return self._forward_dense(query, key, value, key_padding_mask, attn_mask, is_causal,
                                   keep_state)

    def _forward_dense(self, query, key, value, key_padding_mask, attn_mask, is_causal,
                       keep_state):
        """forward() of plain (not nested) tensors."""
        if query.dim() not in (2, 3):
            raise ValueError("query must be 2-D (unbatched) or 3-D, got %d-D" % query.dim())
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError("query, key and value must all be batched (3-D) or all unbatched "
                             "(2-D); got %d-D, %d-D, %d-D" % (query.dim(), key.dim(), value.dim()))
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            seq_first = False
        else:
            seq_first = not self.batch_first
        bdim, ldim = (1, 0) if seq_first else (0, 1)
        B, L, Lk = query.shape[bdim], query.shape[ldim], key.shape[ldim]
        if query.shape[-1] != self.embed_dim:
            raise ValueError("query has embedding size %d, expected embed_dim = %d"
                             % (query.shape[-1], self.embed_dim))
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError("key/value have sizes %d/%d, expected kdim/vdim = %d/%d"
                             % (key.shape[-1], value.shape[-1], self.kdim, self.vdim))
        if key.shape[:2] != value.shape[:2] or key.shape[bdim] != B:
            raise ValueError("key %s and value %s must have the same batch and length as each "
                             "other, and the batch of query %s"
                             % (tuple(key.shape), tuple(value.shape), tuple(query.shape)))

        causal = bool(is_causal)
        if attn_mask is not None and not causal:
            if _ops.compiling():
                raise NotImplementedError(
                    "under torch.compile, an attn_mask cannot be inspected: pass "
                    "is_causal=True with a causal mask (or drop the mask)")
            causal = self._mask_kind(attn_mask, B, L, Lk) == "causal"
        if causal and L != Lk:
            raise ValueError("causal attention needs queries and keys of the same length, got "
                             "%d and %d" % (L, Lk))
        if keep_state and not causal:
            raise ValueError("keep_state=True needs a causal forward: the decode state "
                             "continues causal self-attention")
        mask = None
        if key_padding_mask is not None:
            mask = self._padding_mask(key_padding_mask, B, Lk, query.device)

        if B == 0 or (L == 0 and self.context_parallel_group is None):
            out = query.new_zeros(query.shape)
            return (out if batched else out.squeeze(0)), None
        if Lk == 0 and self.context_parallel_group is None:
            raise ValueError("key and value have length 0: there is nothing to attend to")

        recording = self._recording(query, key, value)
        keep = (not recording) if keep_state is None else bool(keep_state)
        if self.attention == "hybrid":
            out = _hybrid.module_forward(self, query, key, value, mask, causal, seq_first, keep)
            return (out if batched else out.squeeze(0)), None
        if keep and causal and mask is None and not recording and \
                self.context_parallel_group is None and not _ops.compiling() and \
                _core.context_cap():  # a capped license: the state goes to a StatePool
            out = capped.forward(self, query, key, value, seq_first)
            return (out if batched else out.squeeze(0)), None
        S0, z0, n_extra = self._extra_state(B, query)
        slab = self._slab_tokens(B, L, causal, recording)
        if slab:
            out, S, z = self._forward_slabs(query, key, value, mask, S0, z0, n_extra, slab,
                                            ldim)
        else:
            out, S, z = self._attend(query, key, value, mask, S0, z0, n_extra, causal,
                                     seq_first, self._opts, causal and keep)
        if keep and causal:
            tokens = distributed.total(self.context_parallel_group, Lk, query.device)
            self._store_state(S, z, n_extra + tokens, B)
        elif keep:
            self.reset_state()
        return (out if batched else out.squeeze(0)), None

    def _forward_nested(self, query, key, value, key_padding_mask, attn_mask, is_causal,
                        keep_state, all_nested):
        """Nested (ragged, batch-first) inputs, as nn.TransformerEncoder passes
        them in eval mode: padded, run with the padding as key_padding_mask,
        and nested again."""
        if not all_nested:
            raise ValueError("query, key and value must be all nested tensors or none")
        if not self.batch_first:
            raise ValueError("nested tensors are batch-first: they need a LiquidMemory with "
                             "batch_first=True")
        if key_padding_mask is not None:
            raise ValueError("a nested input carries its own lengths: key_padding_mask must be "
                             "None")
        padded = {}

        def pad(t):
            if id(t) not in padded:
                lens = [x.shape[0] for x in t.unbind()]
                padded[id(t)] = (torch.nested.to_padded_tensor(t, 0.0), lens)
            return padded[id(t)]
        (q, qlens), (k, klens), (v, _) = pad(query), pad(key), pad(value)
        ar = torch.arange(k.shape[1], device=k.device)
        kpm = ar[None, :] >= torch.tensor(klens, device=k.device)[:, None]
        # Not self.forward: one call of the module is one forward (what patches
        # and counters of forward see, as torch 2.x's encoder passes nested input).
        out, _ = self._forward_dense(q, k, v, kpm, attn_mask, is_causal, keep_state)
        rows = [o[:n] for o, n in zip(out.unbind(0), qlens)]
        if query.layout != torch.strided:  # torch >= 2.1's jagged layout: answer in kind
            return torch.nested.as_nested_tensor(rows, layout=query.layout), None
        return torch.nested.as_nested_tensor(rows), None

    def _attend(self, query, key, value, mask, S0, z0, position, causal, seq_first, opts,
                want_state=True):
        """Projections, attention core and out-projection of one stretch of
        tokens (inputs in their own layout). Returns (out, S, z)."""
        q, k, v = self._project(query, key, value)
        q = self._heads(q, self.num_heads, seq_first)
        k = self._heads(k, self.num_kv_heads, seq_first)
        v = self._heads(v, self.num_kv_heads, seq_first)
        o, S, z = distributed.prefill(self.context_parallel_group, q, k, v, mask, S0, z0,
                                      position=position, is_causal=causal, opts=opts,
                                      seq_first=seq_first, want_state=want_state)
        if self.training and self.dropout > 0:
            o = F.dropout(o, p=self.dropout)
        # o is [B, L, H, D] laid out in the inputs' order: back to it without a copy.
        o = o.transpose(0, 1) if seq_first else o
        o = o.reshape(o.shape[0], o.shape[1], self.embed_dim)
        return F.linear(o, self.out_proj.weight, self.out_proj.bias), S, z

    def _slab_tokens(self, B, L, causal, recording):
        """Tokens per slab for a causal forward without autograd, or 0 (one
        pass). In slabs the projections and the core's output exist for one
        slab at a time: extra memory O(slab), as in the C module, instead of
        q, k, v and o for the whole sequence (4 L E elements). With autograd
        every slab's tensors would be kept anyway, so it runs in one pass."""
        if not causal or recording or _ops.compiling() or (self.training and self.dropout > 0):
            return 0
        if _core.context_cap():
            return 0  # slabs carry a state from call to call, which a capped license refuses
        slab = max(_SLAB_ROWS // max(B, 1), _SLAB_MIN) // 64 * 64
        return slab if L > slab and self.context_parallel_group is None else 0

    def _forward_slabs(self, query, key, value, mask, S, z, position, slab, ldim):
        """The causal forward slab by slab, each continuing the state of the
        one before. Returns (out, S, z) like _attend."""
        L, B = query.shape[ldim], query.shape[1 - ldim]
        opts = self._opts
        if opts.precision == _core.C["LM_PRECISION_AUTO"] and \
                position + L > _core.C["LM_PRECISION_AUTO_TOKENS"]:
            # Compensated from the first slab, as one pass over L tokens would be.
            opts = _core.Options(opts.feature_map, opts.normalize, opts.eps, opts.scale,
                                 opts.decay, _core.C["LM_PRECISION_ON"])
        if S is None:
            S, z = self._zero_state(B, query.device)
        out = None
        for t in range(0, L, slab):
            n = min(slab, L - t)
            piece = [x.narrow(ldim, t, n) for x in (query, key, value)]
            if key is query:
                piece[1] = piece[0]
            if value is key:
                piece[2] = piece[1]
            o, S, z = self._attend(*piece, None if mask is None else mask[:, t:t + n], S, z,
                                   position + t, True, ldim == 0, opts)
            if out is None:  # the dtype autocast gives the out-projection
                out = o.new_empty(query.shape[:2] + (self.embed_dim,))
            out.narrow(ldim, t, n).copy_(o)
        return out, S, z

    # ------------------------------------------------------------------ decode

    def step(self, x):
        """One decode token per batch row: x [B, E] (or [E]) -> [B, E] (or [E]).

        Continues the state of the last causal inference forward (or of
        previous steps; an empty state when there is none). Causal
        self-attention, O(1) per token, no dropout. A state of another batch
        size raises StateError until reset_state().

        Inference only: the state is updated in place and carries no history,
        so a gradient through step() would miss every earlier token. While
        autograd records (x or a parameter requires grad, grad mode on) it
        raises instead of returning an output without a gradient: decode under
        torch.no_grad() or torch.inference_mode(); train with a causal forward
        over the sequence, or continue a state differentiably with
        liquid_memory.linear_attention(..., initial_state=...)."""
        if torch.is_grad_enabled() and (x.requires_grad or
                                        any(p.requires_grad for p in self.parameters())):
            raise RuntimeError(
                "LiquidMemory.step() is inference only and autograd is recording (x or a "
                "parameter requires grad): its output would carry no gradient. Call it under "
                "torch.no_grad() or torch.inference_mode(); to train, run the causal forward "
                "over the sequence (or liquid_memory.linear_attention with initial_state)")
        w, bias, out_w, out_b = self._step_weights()
        if w is None:
            raise ValueError("step() is self-attention on x, so it needs kdim == vdim == "
                             "embed_dim (got kdim=%d, vdim=%d)" % (self.kdim, self.vdim))
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.embed_dim:
            raise ValueError("step() takes x of shape (batch, embed_dim=%d) or (embed_dim,), "
                             "got %s" % (self.embed_dim, tuple(x.shape)))
        B = x.shape[0]
        cur = self._cursor
        if self.attention == "hybrid":
            out = _hybrid.module_step(self, x)
            return out.squeeze(0) if unbatched else out
        if cur.pool is not None or (not cur.batch and not _ops.compiling() and
                                    _core.context_cap()):
            out = capped.step(self, x)  # a capped license: the state is in a StatePool
            return out.squeeze(0) if unbatched else out
        if cur.batch != B:
            if cur.batch:
                raise _core.StateError(
                    "the decode state holds a batch of %d, but step() got a batch of %d: call "
                    "reset_state() first (or set_state() a state of that batch)"
                    % (cur.batch, B))
            self._begin_state(B, x)
        qkv = F.linear(x, w, bias)  # [B, (H + 2 Hkv) D]: q, k, v heads
        buffers = self._buffers  # the state buffers (after _begin_state, which may replace them)
        S, z = buffers["state_S"], buffers["state_z"]
        if _ops.compiling():  # traced through the custom op (it declares the state mutation)
            H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
            q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
            o = _ops.decode(q.view(B, 1, H, D), k.view(B, 1, Hkv, D), v.view(B, 1, Hkv, D),
                            S, z, cur.position, opts=self._opts)
            o = o.view(B, H * D)
        else:  # eagerly: the C call reads q, k, v in place (one cached call plan)
            o = _core.decode_packed(qkv, self.num_heads, self.num_kv_heads, self.head_dim,
                                    S, z, cur.position, self._opts)
        cur.position += 1
        out = F.linear(o, out_w, out_b)
        return out.squeeze(0) if unbatched else out

    def _step_weights(self):
        """(in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias) for
        step(): read from the modules' parameter tables, a dict lookup each,
        where nn.Module.__getattr__ costs ~0.3 us a name on every token. A
        name not in its table (a parametrization's property, a wrapped
        out_proj) is looked up the ordinary way."""
        params = self._parameters
        out_proj = self._modules.get("out_proj")
        out_params = out_proj._parameters if out_proj is not None else {}
        try:
            return (params["in_proj_weight"], params["in_proj_bias"], out_params["weight"],
                    out_params["bias"])
        except KeyError:
            return (self.in_proj_weight, self.in_proj_bias, self.out_proj.weight,
                    self.out_proj.bias)

    def _begin_state(self, B, like):
        """An empty state for batch B (holding bias_kv / zero_attn when set)."""
        with torch.no_grad():
            S0, z0, n = self._extra_state(B, like)
        if S0 is None:
            S0, z0 = self._zero_state(B, like.device)
        self._store_state(S0, z0, n, B)

    def _zero_state(self, B, device):
        """S [B, Hkv, D, D] and z [B, Hkv, D], fp32 zeros: the state of no tokens."""
        H, D = self.num_kv_heads, self.head_dim
        return (torch.zeros((B, H, D, D), dtype=torch.float32, device=device),
                torch.zeros((B, H, D), dtype=torch.float32, device=device))

    def reset_state(self):
        """Drops the decode state: the next step() starts empty, any batch size.
        The buffers keep their memory (zeroed), so captured CUDA graphs stay valid
        for the same batch; buffers that are not fp32 (a module pickled before
        the state was exempt from dtype casts) are replaced by fp32 ones."""
        with torch.no_grad():
            if self._state_writable():
                self.state_S.zero_()
                self.state_z.zero_()
            else:
                dev = self.state_S.device
                self.state_S = torch.zeros(0, dtype=torch.float32, device=dev)
                self.state_z = torch.zeros(0, dtype=torch.float32, device=dev)
        _hybrid.module_reset(self)
        capped.drop(self)
        self._cursor.position = 0
        self._cursor.batch = 0

    @property
    def state_position(self):
        """Number of tokens absorbed in the decode state (0 when there is none)."""
        return self._cursor.position

    def get_state(self):
        """A copy of the decode state: {'S', 'z', 'position', 'batch'}, or None
        when there is none. Use it to save, restore or fork a conversation.
        Hybrid attention adds 'window_keys', 'window_values', 'window_pos'."""
        if self.attention == "hybrid":
            return _hybrid.module_get_state(self)
        if not self._cursor.batch:
            return None
        return {"S": self.state_S.detach().clone(), "z": self.state_z.detach().clone(),
                "position": self._cursor.position, "batch": self._cursor.batch}

    def set_state(self, state):
        """Restores a state from get_state() (of this module or one with the
        same num_kv_heads and head_dim); None clears it."""
        if state is None:
            self.reset_state()
            return
        if self.attention == "hybrid":
            _hybrid.module_set_state(self, state)
            return
        S, z, pos = state["S"], state["z"], int(state["position"])
        H, D = self.num_kv_heads, self.head_dim
        if S.dim() != 4 or tuple(S.shape[1:]) != (H, D, D) or tuple(z.shape) != tuple(S.shape[:3]):
            raise ValueError("state S %s / z %s does not fit this module: expected S [B, %d, %d, "
                             "%d] and z [B, %d, %d]" % (tuple(S.shape), tuple(z.shape), H, D, D,
                                                        H, D))
        if pos < 0:
            raise ValueError("state position must be >= 0, not %d" % pos)
        _core.refuse_carried_state("LiquidMemory.set_state")
        dev = self.out_proj.weight.device
        self._store_state(S.to(dev, torch.float32).contiguous(),
                          z.to(dev, torch.float32).contiguous(), pos, S.shape[0])

    # ------------------------------------------------------------------ benchmark

    @staticmethod
    def benchmark(*args, **kwargs):
        """The sequence-length sweep: see liquid_memory.benchmark.run."""
        from . import benchmark
        return benchmark.run(*args, **kwargs)


# ---------------------------------------------------------------------- helpers

def disable_fastpath(model):
    """Makes every nn.TransformerEncoderLayer / nn.TransformerEncoder in
    `model` take its regular path, which calls self_attn. Needed on torch
    versions whose fused encoder fast path (eval mode, no grad) does not check
    for hooks (e.g. 1.13): it would read self_attn.in_proj_weight and compute
    softmax attention. Returns model."""
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            m.activation_relu_or_gelu = 0  # only gates the fast path; the activation is kept
        if isinstance(m, nn.TransformerEncoder):
            m.enable_nested_tensor = False
            if hasattr(m, "use_nested_tensor"):
                m.use_nested_tensor = False
    return model


def replace_attention(model, **options):
    """Replaces every nn.MultiheadAttention inside `model` by
    LiquidMemory.from_mha(it, **options) (weights kept) and disables the
    encoder fast paths (see disable_fastpath). Returns model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, LiquidMemory.from_mha(child, **options))
    return disable_fastpath(model)
