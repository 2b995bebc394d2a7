"""
hf.py - Liquid Memory inside Hugging Face Llama, Mistral and Qwen2 models.

    import liquid_memory.hf as lmhf
    model = AutoModelForCausalLM.from_pretrained(...)        # or a config, random init
    lmhf.patch(model)                                        # every layer's self_attn, in place
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4000)
    model.save_pretrained("run/")                            # config.json keeps the patch
    model = lmhf.from_pretrained("run/")                     # loaded and patched again

`patch` swaps each decoder layer's `self_attn` for a LiquidMemoryAttention that
keeps the layer's own q_proj / k_proj / v_proj / o_proj modules (same objects,
same state_dict keys) and runs causal linear attention through the C core,
with grouped-query attention done by the core (K/V are never repeated).

The decode cache holds per layer the core's recurrent state (S [B, Hkv, D, D]
and z [B, Hkv, D], fp32) instead of keys and values: memory per sequence is
constant in the context length. Its layer class is a transformers
linear-attention cache layer (LinearAttentionCacheLayerMixin, the recurrent
state of Mamba / Qwen3-Next) that also answers the attention-layer queries
(tokens seen, mask sizes) that Llama-style models ask of their cache. generate()
needs nothing passed: the empty key/value layers of the cache that generate()
or the model creates are replaced by recurrent-state layers at the first
forward; `LiquidMemoryCache(model)` makes one explicitly.

attention="hybrid" (docs/DESIGN.md §9: exact softmax over `sinks` first tokens
and the last `window` tokens, every older token in the linear state) gives
each patched attention a learnable `window_gate` [num_heads] (logits, zeros:
gamma = 1/2; window_gate_form="exp" makes gamma = exp(g), unbounded, which a
converted softmax model needs: docs/DESIGN.md §9.7), saved in the state dict;
its cache layer also holds the window:
keys, values and positions of the s + W exact tokens (fp32), still constant
in the context length.

Masks: the patch registers an attention implementation "liquid_memory" whose
mask is the 2-D key padding mask of the tokens of the current call (not the
O(L^2) 4-D mask), and sets it on the model's config. Padded keys never enter
the state; a left-padded row then decodes exactly as the same prompt alone.
Hybrid: so it does with sinks=0. With sinks > 0 the sinks are the first s
positions of the row, padding included, and a masked position holds nothing:
a row padded by p tokens has max(0, s - p) real sinks, and its first real
tokens go to the linear state when they leave the window.

transformers is imported only when a function here needs it; the rest of the
package never imports this module.
"""
import copy as _copy
import json
import os
import re
import sys

import torch
from torch import nn

from . import _core, _ops
from . import hybrid as _hybrid
from ._core import UnsupportedError
from .module import _decay_values

__all__ = ["patch", "unpatch", "is_patched", "from_pretrained", "LiquidMemoryAttention",
           "LiquidMemoryCache", "RecurrentState", "UnsupportedError", "CONFIG_KEY",
           "ATTN_IMPLEMENTATION"]

# The families patch() knows: config.model_type -> the attention class it replaces.
SUPPORTED = {"llama": "LlamaAttention", "mistral": "MistralAttention", "qwen2": "Qwen2Attention"}
CONFIG_KEY = "liquid_memory"           # model.config.<this>: the patch, saved in config.json
ATTN_IMPLEMENTATION = "liquid_memory"  # the config._attn_implementation of a patched model
_FORMAT = 1                            # version of the saved patch configuration
_FORMAT_EXP_GATE = 2                   # the same, with window_gate_form "exp" (Options.saved)


# ---------------------------------------------------------------------------
# The decode state, the call into the core, the attention module
# (plain torch: these run and are tested without transformers)
# ---------------------------------------------------------------------------

class RecurrentState:
    """One layer's decode state: S [B, Hkv, Dk, Dv] and z [B, Hkv, Dk] (fp32,
    in recurrent_states[0] / [1], as transformers' linear-attention layers keep
    theirs) and `seen`, the tokens absorbed, padding included (the model's
    positions and masks count them). Decode steps update S and z in place, so
    their addresses stay fixed for CUDA graphs. In hybrid mode
    recurrent_states[2..4] hold the window (hybrid.HybridState's keys
    [B, Hkv, s + W, Dk], values [B, Hkv, s + W, Dv] fp32, pos [B, Hkv, s + W]
    int32); in linear mode they stay None."""

    NUM_STATES = 5  # S, z, then the hybrid's window keys, values, positions

    def __init__(self):
        self.recurrent_states = dict.fromkeys(range(self.NUM_STATES))
        self.seen = 0

    @property
    def S(self):
        return self.recurrent_states[0]

    @property
    def z(self):
        return self.recurrent_states[1]

    @property
    def window_keys(self):
        return self.recurrent_states[2]

    @property
    def window_values(self):
        return self.recurrent_states[3]

    @property
    def window_pos(self):
        return self.recurrent_states[4]

    def hybrid(self):
        """The state as a hybrid.HybridState (the same tensors), or None
        before the first token."""
        if not self.seen:
            return None
        st = self.recurrent_states
        if st[2] is None:
            raise UnsupportedError("this cache layer holds a linear attention state (no window): "
                                   "a hybrid layer cannot continue it; start from a fresh cache")
        return _hybrid.HybridState(st[0], st[1], st[2], st[3], st[4], self.seen)

    def absorb(self, S, z, tokens, window=()):
        """Takes the state after `tokens` more tokens (from a prefill);
        window: the hybrid's (keys, values, pos)."""
        new = (S, z) + tuple(window)
        old = [self.recurrent_states[i] for i in range(len(new))]
        if any(o is None or o.shape != n.shape or n.requires_grad or o.requires_grad
               for o, n in zip(old, new)):
            for i, t in enumerate(new):
                self.recurrent_states[i] = t
        else:  # keep the buffers (and their addresses)
            for o, n in zip(old, new):
                o.copy_(n)
        self.seen += int(tokens)

    def nbytes(self):
        """Bytes the state holds (0 before the first token)."""
        return sum(t.numel() * t.element_size() for t in self.recurrent_states.values()
                   if t is not None)


def _linear_attention(q, k, v, key_padding_mask, state, opts):
    """The one call into the core (to become liquid_memory.linear_attention
    once that public function exists). Causal; q [B, L, Hq, D], k and v
    [B, L, Hkv, D]; key_padding_mask [B, L] bool (True = ignore) or None;
    state: a RecurrentState to continue and update, or None (no cache: a
    training forward). Returns out [B, L, Hq, D]."""
    if state is None:
        return _ops.prefill(q, k, v, key_padding_mask, opts=opts)[0]
    L = q.shape[1]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or
                                              v.requires_grad)
    if L == 1 and key_padding_mask is None and state.S is not None and not needs_grad:
        out = _ops.decode(q, k, v, state.S, state.z, state.seen, opts=opts)
        state.seen += 1
        return out
    out, S, z = _ops.prefill(q, k, v, key_padding_mask, state.S, state.z, position=state.seen,
                             opts=opts, want_state=True)
    state.absorb(S, z, L)
    return out


def _hybrid_attention(q, k, v, key_padding_mask, state, gate, options, module):
    """The hybrid counterpart of _linear_attention (docs/DESIGN.md §9): the
    differentiable composition when a gradient is wanted (from an empty
    state), else the C core; decode steps update the state in place. gate:
    the module's window_gate; module: the LiquidMemoryAttention, whose host
    copy of the gate a decode step reads (no device sync per step)."""
    W, s, opts, form = options.window, options.sinks, options.core, options.gate_form
    if state is None:
        return _hybrid.attend(q, k, v, key_padding_mask, W, s, gate, opts, gate_form=form)[0]
    L = q.shape[1]
    prev = state.hybrid()
    if L == 1 and key_padding_mask is None and prev is not None and \
            not _hybrid._wants_grad(q, k, v, gate):
        out = _hybrid.decode(q, k, v, prev, W, s, _hybrid._gate_values(module), opts, form)
        state.seen += 1
        return out
    out, st = _hybrid.attend(q, k, v, key_padding_mask, W, s, gate, opts, state=prev,
                             want_state=True, gate_form=form)
    state.absorb(st.S, st.z, L, window=(st.keys, st.values, st.pos))
    return out


class Options:
    """The patch's options, checked once: the saved form (`saved()`, JSON
    types, stored as config.liquid_memory) and the core's (`core`, and the
    hybrid gate's lm_gate_form `gate_form`)."""

    def __init__(self, num_kv_heads, attention="linear", feature_map="elu1", rope=True,
                 normalize=True, eps=1e-6, decay=None, precision="auto", window=None, sinks=None,
                 window_gate_form=None):
        if attention not in ("linear", "hybrid"):
            raise ValueError("attention must be 'linear' or 'hybrid', not %r" % (attention,))
        if attention == "hybrid":
            window = _hybrid.C["LM_HYBRID_WINDOW_DEFAULT"] if window is None else window
            sinks = _hybrid.C["LM_HYBRID_SINKS_DEFAULT"] if sinks is None else sinks
            _hybrid.check_window(window, sinks)
            if decay is not None:
                raise ValueError("attention='hybrid' has no decay (its evicted tokens' state is "
                                 "plain linear attention): pass decay=None")
            if not normalize:
                raise ValueError("attention='hybrid' is normalised (one denominator for the "
                                 "window and the state): pass normalize=True")
            window_gate_form = window_gate_form or "sigmoid"
        elif window is not None or sinks is not None or window_gate_form is not None:
            raise ValueError("window, sinks and window_gate_form are options of "
                             "attention='hybrid', not of %r" % (attention,))
        self.window, self.sinks, self.window_gate_form = window, sinks, window_gate_form
        self.gate_form = _hybrid.gate_form_code(window_gate_form or "sigmoid")
        if feature_map not in _core.FEATURE_MAPS:
            raise ValueError("feature_map must be 'elu1', 'relu' or 'identity', not %r"
                             % (feature_map,))
        if precision not in _core.PRECISIONS:
            raise ValueError("precision must be 'auto', 'on' or 'off', not %r" % (precision,))
        if not (isinstance(eps, (int, float)) and 0 < eps < float("inf")):
            raise ValueError("eps must be finite and > 0, not %r" % (eps,))
        self.attention, self.feature_map, self.rope = attention, feature_map, bool(rope)
        self.normalize, self.eps, self.precision = bool(normalize), float(eps), precision
        self.decay = _decay_values(decay, num_kv_heads)
        self.core = _core.Options(_core.FEATURE_MAPS[feature_map], self.normalize, self.eps, 0.0,
                                  self.decay, _core.PRECISIONS[precision])

    def saved(self, layers):
        # An exp gate is written as format 2, which a library that knows only format 1
        # refuses (it would silently run the sigmoid gate); anything else stays format 1.
        exp = self.window_gate_form == "exp"
        saved = {"format": _FORMAT_EXP_GATE if exp else _FORMAT,
                 "attention": self.attention, "feature_map": self.feature_map,
                 "rope": self.rope, "normalize": self.normalize, "eps": self.eps,
                 "decay": None if self.decay is None else list(self.decay),
                 "precision": self.precision, "layers": list(layers)}
        if self.attention == "hybrid":  # (the gates are weights: in the state dict)
            saved.update(window=self.window, sinks=self.sinks)
        if exp:
            saved.update(window_gate_form="exp")
        return saved


def _key_padding(attention_mask, L):
    """The mask of the call's L keys, True = ignore, or None. A patched model
    gets the 2-D mask of the "liquid_memory" implementation (True = keep)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise UnsupportedError(
            "a patched model takes a 2-D attention mask [batch, tokens] (1 = token, 0 = padding), "
            "got a %d-D mask: linear attention keeps one running state per head, so only causal "
            "attention with key padding has a linear-time form" % attention_mask.dim())
    keep = attention_mask[:, -L:]
    return ~keep if keep.dtype == torch.bool else keep == 0


class LiquidMemoryAttention(nn.Module):
    """Causal linear attention in place of a Llama / Mistral / Qwen2 attention.

    Holds the replaced module's q_proj, k_proj, v_proj and o_proj (the same
    modules: weights are shared, state_dict keys unchanged), the model's
    rotary embedding function, and the replaced module itself (not as a
    submodule) for unpatch(). forward() has the signature of the module it
    replaces and returns (output, None): linear attention forms no attention
    weights. In hybrid mode it also holds `window_gate` [num_heads], the
    per-head logits of the window's weight (a parameter: it trains and is
    saved with the model).

    RoPE (rope=True, the default) is applied to q and k before the feature
    map, as the pretrained layer did before its softmax: the projections then
    see the inputs they were trained with and only the similarity function
    changes, which keeps the patched model closest to the original before
    fine-tuning. Positions come from the model (position_ids), so per-row
    positions of left-padded batches are the model's; the state itself holds
    no position. rope=False drops positional information from q and k
    (causal order remains), the classic linear-transformer form."""

    is_causal = True

    def __init__(self, original, options, rotary):
        super().__init__()
        self.config = original.config
        self.layer_idx = original.layer_idx
        self.head_dim = _head_dim(original)
        self.num_heads = original.q_proj.out_features // self.head_dim
        self.num_kv_heads = original.k_proj.out_features // self.head_dim
        self.q_proj, self.k_proj = original.q_proj, original.k_proj
        self.v_proj, self.o_proj = original.v_proj, original.o_proj
        self.options = options
        self._rotary = rotary if options.rope else None
        if options.attention == "hybrid":
            w = self.q_proj.weight
            self.window_gate = nn.Parameter(torch.zeros(self.num_heads, dtype=w.dtype,
                                                        device=w.device))
            self._gate_cache = (None, None)  # hybrid._gate_values: the gate as host floats
        object.__setattr__(self, "_original", original)  # not a submodule: no second copy of weights

    def extra_repr(self):
        o = self.options
        s = ("layer_idx=%d, heads=%d, kv_heads=%d, head_dim=%d, feature_map=%r, rope=%s"
             % (self.layer_idx, self.num_heads, self.num_kv_heads, self.head_dim,
                o.feature_map, o.rope))
        if o.attention == "hybrid":
            s += ", attention='hybrid', window=%d, sinks=%d, window_gate_form=%r" % (
                o.window, o.sinks, o.window_gate_form)
        return s

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None,
                past_key_values=None, **kwargs):
        B, L, _ = hidden_states.shape
        D = self.head_dim
        q = self.q_proj(hidden_states).view(B, L, self.num_heads, D)
        k = self.k_proj(hidden_states).view(B, L, self.num_kv_heads, D)
        v = self.v_proj(hidden_states).view(B, L, self.num_kv_heads, D)
        if self._rotary is not None:
            if position_embeddings is None:
                raise ValueError("rope=True needs the model's position_embeddings (cos, sin)")
            cos, sin = position_embeddings
            q, k = self._rotary(q, k, cos, sin, unsqueeze_dim=2)  # [B, L, H, D] layout
        if past_key_values is None:
            past_key_values = kwargs.get("past_key_value")  # transformers < 4.56 spelling
        state = _state_for(past_key_values, self.layer_idx, self.config.num_hidden_layers)
        mask = _key_padding(attention_mask, L)
        if self.options.attention == "hybrid":
            o = _hybrid_attention(q, k, v, mask, state, self.window_gate, self.options, self)
        else:
            o = _linear_attention(q, k, v, mask, state, self.options.core)
        return self.o_proj(o.reshape(B, L, self.num_heads * D)), None


def _state_for(cache, layer_idx, num_layers):
    """The RecurrentState of layer `layer_idx` in `cache` (None without a cache)."""
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise UnsupportedError("past_key_values of type %s has no per-layer list (.layers): a "
                               "patched model needs a transformers Cache (>= 5.0), e.g. "
                               "liquid_memory.hf.LiquidMemoryCache(model)" % type(cache).__name__)
    if layer_idx < len(layers) and isinstance(layers[layer_idx], RecurrentState):
        return layers[layer_idx]
    _adopt(cache, num_layers)
    return cache.layers[layer_idx]


def _adopt(cache, num_layers):
    """Turns the empty key/value layers of a cache made by generate() or the
    model (a DynamicCache) into recurrent-state layers."""
    layer_cls = _hf().Layer
    layers = cache.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, RecurrentState):
            continue
        seq = layer.get_seq_length() if hasattr(layer, "get_seq_length") else 0
        if getattr(layer, "is_initialized", False) and int(seq) > 0:
            raise UnsupportedError(
                "past_key_values layer %d holds %d tokens of keys/values from softmax attention; "
                "a patched model continues only its own recurrent state: start from a fresh "
                "cache (or liquid_memory.hf.LiquidMemoryCache(model))" % (i, int(seq)))
        layers[i] = layer_cls()
    while len(layers) < num_layers:
        layers.append(layer_cls())


# ---------------------------------------------------------------------------
# What needs transformers: the cache classes and the mask implementation
# ---------------------------------------------------------------------------

def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("liquid_memory.hf needs transformers (>= 5.0), which is not "
                          "installed: %s" % e) from e
    return transformers


class _Classes:
    """transformers-derived classes and registrations, made on first use."""

    def __init__(self):
        tf = _transformers()
        from transformers import cache_utils
        missing = [n for n in ("Cache", "CacheLayerMixin", "LinearAttentionCacheLayerMixin")
                   if not hasattr(cache_utils, n)]
        if missing:
            raise UnsupportedError(
                "transformers %s lacks %s in transformers.cache_utils: Liquid Memory's decode "
                "cache is a linear-attention cache layer, which needs transformers >= 5.0"
                % (tf.__version__, ", ".join(missing)))
        self.version = tf.__version__
        self.Layer = _make_layer_class(cache_utils)
        self.Cache = _make_cache_class(cache_utils, self.Layer)
        _register_attention(tf)


_CLASSES = None


def _hf():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _Classes()
    return _CLASSES


def _make_layer_class(cu):
    LinearMixin, LayerMixin = cu.LinearAttentionCacheLayerMixin, cu.CacheLayerMixin

    class LiquidMemoryLayer(RecurrentState, LinearMixin, LayerMixin):
        """A transformers cache layer holding a RecurrentState. It is a
        linear-attention layer (recurrent_states, reorder_cache, offload) that
        also answers what the model asks of an attention layer: tokens seen
        (for positions) and mask sizes (the call's tokens only: the past is
        in the state)."""

        is_compileable = False   # generate() must not auto-compile decode: position is a host int
        is_sliding = False
        is_croppable = False
        supports_early_init = False

        def __init__(self):
            LinearMixin.__init__(self, number_of_states=RecurrentState.NUM_STATES)
            LayerMixin.__init__(self)
            self.seen = 0

        def absorb(self, S, z, tokens, window=()):
            RecurrentState.absorb(self, S, z, tokens, window)
            self.device, self.dtype = S.device, S.dtype
            for i in range(2 + len(window)):
                self.is_recurrent_states_initialized[i] = True
                self.has_previous_state[i] = True

        def lazy_initialization(self, *args, **kwargs):
            """Nothing: the state is allocated by the first prefill."""

        def update(self, *args, **kwargs):
            raise UnsupportedError(
                "a softmax attention tried to store keys/values in a Liquid Memory cache layer: "
                "every decoder layer of the model must be patched")

        def update_conv_state(self, *args, **kwargs):
            raise UnsupportedError("Liquid Memory cache layers hold no convolution state")

        def update_recurrent_state(self, recurrent_states, state_idx=0, **kwargs):
            self.recurrent_states[state_idx].copy_(recurrent_states)
            return self.recurrent_states[state_idx]

        def get_seq_length(self, *args):
            return self.seen

        def get_mask_sizes(self, query, *args):
            q = query if isinstance(query, int) else int(query.shape[0])
            return q, self.seen  # kv_length = the call's tokens, kv_offset = tokens seen

        def get_max_length(self):
            return -1

        def get_max_cache_shape(self):
            return -1

        def reset(self):
            LinearMixin.reset(self)
            self.seen = 0

        def _map(self, fn):
            for i in self.recurrent_states:
                if self.recurrent_states[i] is not None:
                    self.recurrent_states[i] = fn(self.recurrent_states[i])

        def reorder_cache(self, beam_idx):
            self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

        def batch_repeat_interleave(self, repeats):
            self._map(lambda t: t.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices):
            self._map(lambda t: t[indices])

        def crop(self, *args, **kwargs):
            raise UnsupportedError("a recurrent state cannot be cropped back to fewer tokens "
                                   "(assisted decoding / rollback are not supported)")

    return LiquidMemoryLayer


def _make_cache_class(cu, layer_cls):
    class LiquidMemoryCache(cu.Cache):
        """A transformers Cache of Liquid Memory recurrent states, one layer
        per decoder layer: LiquidMemoryCache(model) (or a config). Pass it as
        past_key_values to forward() or generate(); generate() makes one by
        itself when none is given. Memory per sequence is num_layers x
        num_kv_heads x head_dim x (head_dim + 1) x 4 bytes, at any context
        (hybrid: plus num_layers x num_kv_heads x (sinks + window) x
        (2 head_dim + 1) x 4 bytes for the window's keys, values, positions)."""

        def __init__(self, model_or_config):
            config = getattr(model_or_config, "config", model_or_config)
            if hasattr(config, "get_text_config"):
                config = config.get_text_config()
            super().__init__(layers=[layer_cls() for _ in range(config.num_hidden_layers)])

        def nbytes(self):
            """Bytes held by the states of all layers (all sequences)."""
            return sum(layer.nbytes() for layer in self.layers)

    return LiquidMemoryCache


def _mask_for_linear_attention(*args, attention_mask=None, kv_length=None, **kwargs):
    """Mask function of the "liquid_memory" implementation: the 2-D padding
    mask of the call's keys (True = token), or None when nothing is padded.
    A decode step (one token) never needs one: its key is a real token."""
    if attention_mask is None or kv_length == 1:
        return None
    mask = attention_mask[:, -kv_length:] if kv_length else attention_mask
    if not _ops.compiling() and bool(mask.all()):
        return None
    return mask


def _not_for_softmax(module, *args, **kwargs):
    raise UnsupportedError(
        "%s called the attention implementation %r, which only Liquid Memory's patched layers "
        "use: patch every decoder layer, or unpatch() before using softmax attention"
        % (type(module).__name__, ATTN_IMPLEMENTATION))


def _register_attention(tf):
    """Registers the "liquid_memory" attention and mask implementations
    (transformers' extension points for custom attention)."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        from transformers.modeling_utils import AttentionInterface
    try:
        from transformers import AttentionMaskInterface
    except ImportError:
        from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(ATTN_IMPLEMENTATION, _not_for_softmax)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _mask_for_linear_attention)


def __getattr__(name):
    """LiquidMemoryCache is built on transformers' Cache, so it exists once
    transformers is imported: resolved on first access."""
    if name == "LiquidMemoryCache":
        return _hf().Cache
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


# ---------------------------------------------------------------------------
# patch / unpatch / from_pretrained
# ---------------------------------------------------------------------------

def _head_dim(attn):
    d = getattr(attn, "head_dim", None) or getattr(attn.config, "head_dim", None)
    return int(d or attn.config.hidden_size // attn.config.num_attention_heads)


def _decoder_layers(model):
    """(the module holding .layers, its config) or UnsupportedError."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise UnsupportedError(
            "liquid_memory.hf.patch supports %s models (config.model_type %s); %s has "
            "model_type %r" % (", ".join(sorted(SUPPORTED)), "/".join(sorted(SUPPORTED)),
                               type(model).__name__, model_type))
    for holder in (model, getattr(model, "model", None)):
        if isinstance(getattr(holder, "layers", None), nn.ModuleList):
            return holder.layers
    raise UnsupportedError("%s (model_type %r) has no decoder layers at .layers or .model.layers"
                           % (type(model).__name__, model_type))


def _check_attention(attn, expected, index):
    """Names what a layer's attention lacks for the patch, or returns None."""
    names = [c.__name__ for c in type(attn).__mro__]
    if expected not in names and type(attn).__name__ != "LiquidMemoryAttention":
        return "layer %d: self_attn is %s, not a %s" % (index, type(attn).__name__, expected)
    lacks = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj")
             if not isinstance(getattr(attn, n, None), nn.Linear)]
    lacks += [n for n in ("layer_idx", "config") if getattr(attn, n, None) is None]
    if lacks:
        return "layer %d: %s lacks %s" % (index, type(attn).__name__, ", ".join(lacks))
    cfg = attn.config
    lacks = [n for n in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers")
             if getattr(cfg, n, None) is None]
    if lacks:
        return "config lacks %s" % ", ".join(lacks)
    D = _head_dim(attn)
    if attn.q_proj.out_features != cfg.num_attention_heads * D or \
            attn.k_proj.out_features != cfg.num_key_value_heads * D or \
            attn.v_proj.out_features != cfg.num_key_value_heads * D:
        return ("layer %d: projection sizes q %d, k %d, v %d do not match %d heads / %d kv heads "
                "of %d" % (index, attn.q_proj.out_features, attn.k_proj.out_features,
                           attn.v_proj.out_features, cfg.num_attention_heads,
                           cfg.num_key_value_heads, D))
    for n in ("q_norm", "k_norm"):  # Qwen3-style per-head norms would be silently dropped
        if getattr(attn, n, None) is not None:
            return "layer %d: %s has %s, which the patch does not apply" % (
                index, type(attn).__name__, n)
    return None


def _rotary_of(attn):
    fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        raise UnsupportedError("rope=True needs apply_rotary_pos_emb from %s, which it does not "
                               "define (pass rope=False to skip RoPE)" % type(attn).__module__)
    return fn


def _probe(attn, options):
    """Runs the core once on one token of the model's head sizes, dtype and
    device: a model the backend cannot run gets the library's own error here,
    before anything is changed."""
    w = attn.q_proj.weight
    if w.device.type == "meta":
        return
    D, cfg = _head_dim(attn), attn.config
    q = torch.zeros(1, 1, cfg.num_attention_heads, D, dtype=w.dtype, device=w.device)
    kv = torch.zeros(1, 1, cfg.num_key_value_heads, D, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        if options.attention == "hybrid":
            _hybrid.c_prefill(q, kv, kv, None, options.window, options.sinks, None, options.core,
                              want_state=True, gate_form=options.gate_form)
        else:
            _ops.prefill(q, kv, kv, opts=options.core, want_state=True)


def is_patched(model):
    """True when the model's decoder layers run Liquid Memory."""
    try:
        layers = _decoder_layers(model)
    except UnsupportedError:
        return False
    return any(isinstance(layer.self_attn, LiquidMemoryAttention) for layer in layers)


def patch(model, attention="linear", feature_map="elu1", *, rope=True, normalize=True, eps=1e-6,
          decay=None, precision="auto", window=None, sinks=None, window_gate_form=None,
          copy=False):
    """Replaces the attention of every decoder layer of a Llama, Mistral or
    Qwen2 model (`*ForCausalLM` or the bare `*Model`) by Liquid Memory's
    causal linear attention, in place (copy=True: on a deep copy). Returns
    the model.

    attention: "linear" or "hybrid" (docs/DESIGN.md §9: exact softmax over
        the first `sinks` tokens and the last `window` tokens, the older ones
        in the linear state; window >= 1 (default 64), sinks >= 0 (default 4);
        each layer gets a `window_gate` parameter [num_heads], zeros; no decay).
        window_gate_form (hybrid): "sigmoid" (default: gamma = sigmoid(g) <= 1)
        or "exp" (gamma = exp(g), unbounded: what a pretrained softmax model
        needs to convert, docs/DESIGN.md §9.7; zeros give gamma = 1).
        feature_map: "elu1" (default), "relu", "identity".
    rope: apply the model's rotary embedding to q and k before the feature
        map (default; see LiquidMemoryAttention). normalize, eps, decay,
        precision: as LiquidMemory (decay: None, a float, one per kv head, or
        "retnet").

    The layers keep their q/k/v/o projection modules (weights and biases),
    so state_dict, save_pretrained and optimisers see the same parameters.
    The options go to model.config.liquid_memory (saved in config.json);
    from_pretrained() re-applies them. Raises UnsupportedError naming what is
    missing for an unknown architecture, and the library's own error for
    head sizes or dtypes the backend cannot run; both before any change.
    A pretrained softmax model must be fine-tuned after the swap."""
    layers = _decoder_layers(model)
    expected = SUPPORTED[model.config.model_type]
    if not len(layers):
        raise UnsupportedError("%s has no decoder layers" % type(model).__name__)
    problems = [p for p in (_check_attention(layer.self_attn, expected, i)
                            for i, layer in enumerate(layers)) if p]
    if problems:
        raise UnsupportedError("cannot patch %s: %s" % (type(model).__name__, "; ".join(problems)))
    if any(isinstance(layer.self_attn, LiquidMemoryAttention) for layer in layers):
        raise ValueError("the model is already patched: call liquid_memory.hf.unpatch(model) "
                         "first to patch it with other options")
    first = layers[0].self_attn
    options = Options(first.config.num_key_value_heads, attention, feature_map, rope, normalize,
                      eps, decay, precision, window, sinks, window_gate_form)
    rotary = _rotary_of(first) if options.rope else None
    _probe(first, options)
    _hf()

    if copy:
        model = _copy.deepcopy(model)
        layers = _decoder_layers(model)
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    for layer in layers:
        new = LiquidMemoryAttention(layer.self_attn, options, rotary)
        new.previous_attn_implementation = previous
        new.train(layer.self_attn.training)
        layer.self_attn = new
    setattr(config, CONFIG_KEY, options.saved(range(len(layers))))
    config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def unpatch(model):
    """Puts back the attention modules patch() replaced (with the weights as
    they are now: they are shared) and the model's attention implementation.
    A hybrid layer's window_gate goes with the patched module. Returns the
    model."""
    layers = _decoder_layers(model)
    patched = [layer for layer in layers if isinstance(layer.self_attn, LiquidMemoryAttention)]
    if not patched:
        raise ValueError("%s is not patched" % type(model).__name__)
    previous = patched[0].self_attn.previous_attn_implementation
    for layer in patched:
        original = layer.self_attn._original
        original.train(layer.self_attn.training)
        layer.self_attn = original
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    model.config._attn_implementation = previous
    return model


def saved_options(config):
    """The patch options stored in a config (config.liquid_memory), as
    keyword arguments of patch(), or None."""
    saved = getattr(config, CONFIG_KEY, None)
    if not saved:
        return None
    if saved.get("format") not in (_FORMAT, _FORMAT_EXP_GATE):
        raise UnsupportedError("config.%s has format %r; this version reads formats %d and %d"
                               % (CONFIG_KEY, saved.get("format"), _FORMAT, _FORMAT_EXP_GATE))
    opts = {k: saved[k] for k in ("attention", "feature_map", "rope", "normalize", "eps",
                                  "decay", "precision")}
    if opts["attention"] == "hybrid":
        opts.update(window=saved["window"], sinks=saved["sinks"])
        if "window_gate_form" in saved:
            opts.update(window_gate_form=saved["window_gate_form"])
    return opts


_GATE_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.window_gate$")


def _checkpoint_files(path, kwargs):
    """The safetensors files of a saved model: a local folder (save_pretrained's)
    or, through transformers' cached_file, a hub repository."""
    sub = kwargs.get("subfolder") or ""

    def find(name):
        if os.path.isdir(path):
            f = os.path.join(path, sub, name)
            return f if os.path.isfile(f) else None
        from transformers.utils import cached_file
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only",
                                      "subfolder") if k in kwargs}
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub)

    index = find("model.safetensors.index.json")
    if index:
        with open(index) as f:
            shards = [find(n) for n in sorted(set(json.load(f)["weight_map"].values()))]
        return [shard for shard in shards if shard]  # (a gate in a missing one: _load_gates says)
    single = find("model.safetensors")
    return [single] if single else []


def _load_gates(model, path, kwargs):
    """Copies the hybrid layers' window_gate values from the checkpoint: the
    model class transformers loads has no such parameter, so its loader
    leaves them out (as unexpected keys); patch() made them zero."""
    want = {}
    for name, p in model.named_parameters():
        m = _GATE_KEY.search(name)
        if m:
            want[int(m.group(1))] = p
    found = {}
    from safetensors import safe_open
    for f in _checkpoint_files(str(path), kwargs):
        with safe_open(f, framework="pt") as h:
            for key in h.keys():
                m = _GATE_KEY.search(key)
                if m and int(m.group(1)) in want:
                    found[int(m.group(1))] = h.get_tensor(key)
    missing = sorted(set(want) - set(found))
    if missing:
        raise ValueError("%s was saved with attention='hybrid' but its weights (safetensors) lack "
                         "the window_gate of layers %s" % (path, missing))
    with torch.no_grad():
        for i, p in want.items():
            p.copy_(found[i].to(device=p.device, dtype=p.dtype))


def from_pretrained(pretrained_model_name_or_path, *model_args, model_class=None, **kwargs):
    """Loads a model saved from a patched one (save_pretrained) and patches
    it again with the options in its config. model_class: the transformers
    class to load with (default AutoModelForCausalLM); other arguments go to
    its from_pretrained. A hybrid model's window_gate values, which the
    transformers class leaves out when it loads (it has no such parameter),
    are then read from the checkpoint's safetensors files."""
    tf = _transformers()
    _hf()  # the "liquid_memory" implementation must be registered before loading
    cls = model_class or tf.AutoModelForCausalLM
    model = cls.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    opts = saved_options(model.config)
    if opts is None:
        raise ValueError("%s has no %r entry in its config: it was not saved from a patched "
                         "model (use liquid_memory.hf.patch)" % (pretrained_model_name_or_path,
                                                                 CONFIG_KEY))
    if getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION:
        model.config._attn_implementation = "sdpa"  # what unpatch() of the loaded model restores
    model = patch(model, **opts)
    if opts["attention"] == "hybrid":
        _load_gates(model, pretrained_model_name_or_path, kwargs)
    return model
