"""
test_hf.py - liquid_memory.hf: Hugging Face Llama / Mistral / Qwen2 models
patched with Liquid Memory.

Two parts:
  * without transformers (here, CI): the patched attention module against the
    float64 reference (RoPE, GQA, key padding, prefill + decode through the
    recurrent state), and patch()'s refusals, which all come before anything
    needs transformers or changes the model;
  * with transformers (the GPU machine, transformers 5.x; skipped elsewhere):
    small random-init models of each family (hidden 256, 4 layers, 8 heads,
    2 kv heads), built here, no downloads: full forward == prefill + cached
    steps, flat cache memory, training gradients == float64, torch.compile ==
    eager, left padding, generate(), save/load, unpatch, unknown models.
"""
import copy
import os
import re
import types

import pytest
import torch
from torch import nn

from conftest import HAS_CUDA, ref_attention, rel_err
from test_hybrid import ref_hybrid
import liquid_memory
from liquid_memory import UnsupportedError, _core, _ffi
from liquid_memory import hf

try:
    import transformers
    HAS_TRANSFORMERS = True
except ImportError:
    transformers = None
    HAS_TRANSFORMERS = False

needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="transformers is not installed (not a Debian package): the "
    "Hugging Face model tests run on the GPU machine, which has transformers 5.x")
DEVICE = "cuda" if HAS_CUDA else "cpu"

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 256, 4, 8, 2, 1000
HEAD_DIM = HIDDEN // HEADS


# ---------------------------------------------------------------------------
# Without transformers: the module on a stand-in of a Llama attention
# ---------------------------------------------------------------------------

def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """What hf takes from the attention's module: the model's RoPE (here, Llama's form)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rope_tables(position_ids, dim=HEAD_DIM, base=10000.0, dtype=torch.float32):
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    f = position_ids.double()[..., None] * inv
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class LlamaAttention(nn.Module):
    """The attributes patch() reads from a transformers LlamaAttention."""

    def __init__(self, layer_idx=0, bias=False, proj=("q_proj", "k_proj", "v_proj", "o_proj")):
        super().__init__()
        self.config = types.SimpleNamespace(num_attention_heads=HEADS,
                                            num_key_value_heads=KV_HEADS,
                                            num_hidden_layers=1, hidden_size=HIDDEN)
        self.layer_idx, self.head_dim = layer_idx, HEAD_DIM
        sizes = {"q_proj": HIDDEN, "k_proj": KV_HEADS * HEAD_DIM, "v_proj": KV_HEADS * HEAD_DIM}
        for name in proj:
            if name == "o_proj":
                self.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
            else:
                setattr(self, name, nn.Linear(HIDDEN, sizes[name], bias=bias))


class Layer(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.self_attn = attn


class FakeModel(nn.Module):
    """A model with the layout of LlamaModel: .config.model_type and .layers."""

    def __init__(self, model_type="llama", attn=None):
        super().__init__()
        self.config = types.SimpleNamespace(model_type=model_type, _attn_implementation="sdpa")
        self.layers = nn.ModuleList([Layer(attn if attn is not None else LlamaAttention())])


def _module(bias=True, seed=0, **opts):
    torch.manual_seed(seed)
    orig = LlamaAttention(bias=bias)
    return orig, hf.LiquidMemoryAttention(orig, hf.Options(KV_HEADS, **opts),
                                          apply_rotary_pos_emb)


def _reference(orig, x, cos, sin, mask=None, rope=True, core=None, **opts):
    """The patched layer in float64: projections, RoPE, the recurrence of
    conftest.ref_attention (or core(q, k, v), float64), o_proj."""
    dbl = {n: getattr(orig, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    lin = (lambda m, t: nn.functional.linear(
        t, m.weight.double(), None if m.bias is None else m.bias.double()))
    B, L, _ = x.shape
    x = x.double()
    q = lin(dbl["q_proj"], x).view(B, L, HEADS, HEAD_DIM)
    k = lin(dbl["k_proj"], x).view(B, L, KV_HEADS, HEAD_DIM)
    v = lin(dbl["v_proj"], x).view(B, L, KV_HEADS, HEAD_DIM)
    if rope:
        q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double(), unsqueeze_dim=2)
    o = core(q, k, v) if core else ref_attention(q, k, v, mask=mask, causal=True, **opts)[0]
    return lin(dbl["o_proj"], o.reshape(B, L, HIDDEN))


# fp32 core on the CPU against float64: the attention's own bound (conftest
# TOL f32 2e-5) times a small factor for the projections around it.
BOUND_F32 = 1e-4


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("feature_map", ["elu1", "relu"])
def test_module_matches_float64_reference(rope, feature_map):
    orig, attn = _module(rope=rope, feature_map=feature_map)
    x = torch.randn(2, 45, HIDDEN)
    cos, sin = rope_tables(torch.arange(45).expand(2, 45))
    with torch.no_grad():
        out, weights = attn(x, position_embeddings=(cos, sin))
    assert weights is None
    fm = "elu" if feature_map == "elu1" else feature_map
    want = _reference(orig, x, cos, sin, rope=rope, feature_map=fm)
    assert rel_err(out, want) <= BOUND_F32


class _Cache:
    """The part of a transformers Cache the module reads: .layers."""

    def __init__(self, n=1):
        self.layers = [hf.RecurrentState() for _ in range(n)]


def test_prefill_then_steps_equals_full_forward():
    """prefill(19) + 26 decode steps through a RecurrentState == one forward of 45."""
    orig, attn = _module()
    x = torch.randn(3, 45, HIDDEN)
    cos, sin = rope_tables(torch.arange(45).expand(3, 45))
    cache = _Cache()
    with torch.no_grad():
        full, _ = attn(x, position_embeddings=(cos, sin))
        parts = [attn(x[:, :19], position_embeddings=(cos[:, :19], sin[:, :19]),
                      past_key_values=cache)[0]]
        S_after_prefill = cache.layers[0].S.data_ptr()
        for t in range(19, 45):
            parts.append(attn(x[:, t:t + 1], position_embeddings=(cos[:, t:t + 1],
                                                                  sin[:, t:t + 1]),
                              past_key_values=cache)[0])
    state = cache.layers[0]
    assert state.seen == 45
    assert state.S.data_ptr() == S_after_prefill  # decode updates in place (CUDA graphs)
    assert state.nbytes() == 3 * KV_HEADS * HEAD_DIM * (HEAD_DIM + 1) * 4
    assert rel_err(torch.cat(parts, 1), full) <= BOUND_F32


@pytest.mark.parametrize("opts", [{}, dict(attention="hybrid", window=8, sinks=0)],
                         ids=["linear", "hybrid-no-sinks"])
def test_left_padding_matches_unpadded_row(opts):
    """A left-padded row (mask 0 on its padding, positions from its first
    real token) gives the outputs of the same tokens alone, then continues
    the same way in decode. Hybrid: without sinks only (its window is the
    last W positions, the same real tokens either way; with sinks > 0 a
    padded row's sinks are its masked first positions, so it has none)."""
    orig, attn = _module(**opts)
    L, pad = 30, 11
    x = torch.randn(2, L, HIDDEN)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, :pad] = False
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cos, sin = rope_tables(pos)
    cache = _Cache()
    with torch.no_grad():
        out, _ = attn(x, position_embeddings=(cos, sin), attention_mask=mask,
                      past_key_values=cache)
        step_x = torch.randn(2, 1, HIDDEN)
        step_pos = pos[:, -1:] + 1
        c1, s1 = rope_tables(step_pos)
        step, _ = attn(step_x, position_embeddings=(c1, s1), past_key_values=cache)
        alone = _Cache()
        c2, s2 = rope_tables(torch.arange(L - pad)[None])
        ref, _ = attn(x[1:, pad:], position_embeddings=(c2, s2), past_key_values=alone)
        ref_step, _ = attn(step_x[1:], position_embeddings=(c1[1:], s1[1:]),
                           past_key_values=alone)
    assert rel_err(out[1, pad:], ref[0]) <= BOUND_F32
    assert rel_err(step[1], ref_step[0]) <= BOUND_F32
    assert rel_err(cache.layers[0].S[1], alone.layers[0].S[0]) <= BOUND_F32


def test_mask_function_of_the_implementation():
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(hf._mask_for_linear_attention(attention_mask=m, kv_length=3), m[:, 1:])
    assert hf._mask_for_linear_attention(attention_mask=m[:, 2:], kv_length=2) is None
    assert hf._mask_for_linear_attention(attention_mask=m, kv_length=1) is None  # decode
    assert hf._mask_for_linear_attention(attention_mask=None, kv_length=4) is None
    with pytest.raises(UnsupportedError, match="2-D attention mask"):
        hf._key_padding(torch.zeros(1, 1, 4, 4), 4)


def test_options_are_checked():
    with pytest.raises(ValueError, match="attention must be"):
        hf.Options(KV_HEADS, attention="softmax")
    with pytest.raises(ValueError, match="feature_map"):
        hf.Options(KV_HEADS, feature_map="exp")
    with pytest.raises(ValueError, match="one per kv head"):
        hf.Options(KV_HEADS, decay=[0.9, 0.9, 0.9])
    o = hf.Options(KV_HEADS, decay="retnet", precision="on")
    saved = o.saved(range(4))
    assert saved["decay"] == list(o.decay) and saved["layers"] == [0, 1, 2, 3]
    assert hf.saved_options(types.SimpleNamespace(liquid_memory=saved)) == {
        "attention": "linear", "feature_map": "elu1", "rope": True, "normalize": True,
        "eps": 1e-6, "decay": list(o.decay), "precision": "on"}


def _unchanged(model, attn):
    assert model.layers[0].self_attn is attn
    assert not hasattr(model.config, hf.CONFIG_KEY)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("model, match", [
    (FakeModel("gpt2"), "model_type 'gpt2'"),
    (FakeModel("llama", LlamaAttention(proj=("q_proj", "v_proj", "o_proj"))), "lacks k_proj"),
    (FakeModel("qwen2"), "not a Qwen2Attention"),
])
def test_unknown_architectures_name_what_is_missing(model, match):
    attn = model.layers[0].self_attn
    with pytest.raises(UnsupportedError, match=match):
        hf.patch(model)
    _unchanged(model, attn)
    assert not hf.is_patched(model)


@pytest.mark.parametrize("opts, match", [
    (dict(window=0), "window must be an int >= 1"),
    (dict(window=2.5), "window must be an int >= 1"),
    (dict(sinks=-1), "sinks must be an int >= 0"),
    (dict(decay=0.9), "no decay"),
    (dict(normalize=False), "normalised"),
    (dict(window_gate_form="softplus"), "window_gate_form must be 'sigmoid'"),
])
def test_bad_hybrid_options_are_refused_before_anything_changes(opts, match):
    model = FakeModel()
    attn = model.layers[0].self_attn
    w = attn.q_proj.weight.clone()
    with pytest.raises(ValueError, match=match):
        hf.patch(model, attention="hybrid", **opts)
    _unchanged(model, attn)
    assert torch.equal(attn.q_proj.weight, w)


@pytest.mark.parametrize("attention", ["linear", "hybrid"])
def test_library_error_before_any_weight_is_touched(attention):
    """float64 is not a dtype of the core: the library's own error, raised
    by patch() before the model changes."""
    model = FakeModel().double()
    attn = model.layers[0].self_attn
    w = attn.q_proj.weight.clone()
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        hf.patch(model, attention=attention)
    _unchanged(model, attn)
    assert torch.equal(attn.q_proj.weight, w)


@pytest.mark.skipif(HAS_TRANSFORMERS, reason="checks the message given when transformers is "
                    "missing; transformers is installed here")
def test_without_transformers_a_clear_import_error():
    with pytest.raises(ImportError, match="needs transformers"):
        hf.LiquidMemoryCache
    with pytest.raises(ImportError, match="needs transformers"):
        hf.patch(FakeModel())


# ---------------------------------------------------------------------------
# Without transformers: attention="hybrid" (docs/DESIGN.md §9)
# ---------------------------------------------------------------------------

# A window well below the test lengths, so tokens are evicted into the state.
HYB_W, HYB_S = 8, 2


def _hybrid_module(seed=0, window=HYB_W, sinks=HYB_S, **opts):
    """The module with random (non-zero) gate logits."""
    orig, attn = _module(seed=seed, attention="hybrid", window=window, sinks=sinks, **opts)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 7)
        attn.window_gate.copy_(torch.randn(HEADS, generator=g))
    return orig, attn


def _hybrid_core(gate, key_padding_mask=None, window=HYB_W, sinks=HYB_S, gate_form="sigmoid"):
    """test_hybrid.ref_hybrid (the definition, float64) as _reference's core."""
    return lambda q, k, v: ref_hybrid(q, k, v, window, sinks, gate, key_padding_mask,
                                      gate_form=gate_form)


def _padded(B, L, pad):
    """A 2-D mask (True = token) with `pad` padded positions at the left of the last row."""
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[-1, :pad] = False
    return keep


@pytest.mark.parametrize("form", ["sigmoid", "exp"])
@pytest.mark.parametrize("rope", [True, False])
def test_hybrid_module_matches_float64_reference(rope, form):
    """No gradient: the C core, against the definition in float64 (GQA, the
    gate of either form, a left-padded row; its all-masked queries give 0
    both ways)."""
    orig, attn = _hybrid_module(rope=rope, window_gate_form=form)
    B, L = 2, 45
    x = torch.randn(B, L, HIDDEN)
    keep = _padded(B, L, 6)
    cos, sin = rope_tables(torch.arange(L).expand(B, L))
    with torch.no_grad():
        out, weights = attn(x, position_embeddings=(cos, sin), attention_mask=keep)
    assert weights is None
    want = _reference(orig, x, cos, sin, rope=rope,
                      core=_hybrid_core(attn.window_gate.detach(), ~keep, gate_form=form))
    assert rel_err(out, want) <= BOUND_F32


@pytest.mark.parametrize("form", ["sigmoid", "exp"])
def test_hybrid_gradients_match_float64_including_the_gate(form):
    """With gradients: the differentiable composition. d/dx, d/d window_gate
    (of either form) and d/d q_proj.weight of a random projection of the
    output, against float64 autograd of the definition."""
    GRAD_BOUND = 2e-4  # fp32 composition vs float64, through the projections
    orig, attn = _hybrid_module(window_gate_form=form)
    B, L = 2, 37
    x = torch.randn(B, L, HIDDEN, requires_grad=True)
    keep = _padded(B, L, 5)
    cos, sin = rope_tables(torch.arange(L).expand(B, L))
    dout = torch.randn(B, L, HIDDEN)
    out, _ = attn(x, position_embeddings=(cos, sin), attention_mask=keep)
    got = torch.autograd.grad((out * dout).sum(), [x, attn.window_gate, orig.q_proj.weight])
    x64 = x.detach().double().requires_grad_()
    g64 = attn.window_gate.detach().double().requires_grad_()
    want_out = _reference(orig, x64, cos, sin, core=_hybrid_core(g64, ~keep, gate_form=form))
    want = torch.autograd.grad((want_out * dout.double()).sum(), [x64, g64, orig.q_proj.weight])
    assert rel_err(out, want_out) <= BOUND_F32
    for name, a, b in zip(("x", "window_gate", "q_proj.weight"), got, want):
        assert torch.isfinite(a).all() and a.abs().max() > 0, name
        e = rel_err(a, b)
        assert e <= GRAD_BOUND, "%s: relative error %.3g" % (name, e)


def _hybrid_state_bytes(B, window=HYB_W, sinks=HYB_S, layers=1):
    """What a hybrid cache holds: S, z, and the window's keys, values, positions (4 bytes each)."""
    D = HEAD_DIM
    return layers * B * KV_HEADS * (D * D + D + (sinks + window) * (2 * D + 1)) * 4


@pytest.mark.parametrize("form", ["sigmoid", "exp"])
def test_hybrid_prefill_then_steps_equals_full_forward(form):
    """prefill(5) + prefill(14) + 26 decode steps through a RecurrentState ==
    one forward of 45; the state's tensors keep their addresses and size."""
    orig, attn = _hybrid_module(window_gate_form=form)
    B, L = 3, 45
    x = torch.randn(B, L, HIDDEN)
    cos, sin = rope_tables(torch.arange(L).expand(B, L))
    pe = (lambda a, b: (cos[:, a:b], sin[:, a:b]))
    cache = _Cache()
    with torch.no_grad():
        full, _ = attn(x, position_embeddings=(cos, sin))
        parts = [attn(x[:, :5], position_embeddings=pe(0, 5), past_key_values=cache)[0],
                 attn(x[:, 5:19], position_embeddings=pe(5, 19), past_key_values=cache)[0]]
        state = cache.layers[0]
        ptrs = [t.data_ptr() for t in state.recurrent_states.values()]
        assert state.nbytes() == _hybrid_state_bytes(B)
        for t in range(19, L):
            parts.append(attn(x[:, t:t + 1], position_embeddings=pe(t, t + 1),
                              past_key_values=cache)[0])
    assert state.seen == L and int(state.window_pos.abs().max()) == L
    assert state.window_keys.shape == (B, KV_HEADS, HYB_S + HYB_W, HEAD_DIM)
    assert [t.data_ptr() for t in state.recurrent_states.values()] == ptrs  # in place
    assert state.nbytes() == _hybrid_state_bytes(B)  # the same at 19 and at 45 tokens
    assert rel_err(torch.cat(parts, 1), full) <= BOUND_F32


def test_hybrid_gate_is_a_parameter_of_the_patched_module():
    orig, attn = _module(attention="hybrid")
    assert attn.window_gate.shape == (HEADS,) and not attn.window_gate.any()  # gamma = 1/2
    assert "window_gate" in attn.state_dict()
    assert any(p is attn.window_gate for p in attn.parameters())
    assert "attention='hybrid', window=64, sinks=4, window_gate_form='sigmoid'" in repr(attn)
    assert "window_gate_form='exp'" in repr(_module(attention="hybrid", window_gate_form="exp")[1])
    assert not hasattr(_module()[1], "window_gate")  # linear mode has none


def test_hybrid_state_is_not_continued_by_a_linear_one():
    """A cache layer that holds a linear state cannot be continued in hybrid mode."""
    _, lin = _module()
    _, hyb = _hybrid_module()
    x = torch.randn(1, 4, HIDDEN)
    cos, sin = rope_tables(torch.arange(4)[None])
    cache = _Cache()
    with torch.no_grad():
        lin(x, position_embeddings=(cos, sin), past_key_values=cache)
        with pytest.raises(UnsupportedError, match="linear attention state"):
            hyb(x, position_embeddings=(cos, sin), past_key_values=cache)


def test_checkpoint_files_of_a_saved_folder(tmp_path):
    """Where hf.from_pretrained reads a hybrid model's gates: the shards of
    the index, else model.safetensors, else nothing (then it raises)."""
    assert hf._checkpoint_files(str(tmp_path), {}) == []
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert hf._checkpoint_files(str(tmp_path), {}) == [str(tmp_path / "model.safetensors")]
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}')
    for name in ("m-1.safetensors", "m-2.safetensors"):
        (sub / name).write_bytes(b"")
    assert hf._checkpoint_files(str(tmp_path), {"subfolder": "sub"}) == [
        str(sub / "m-1.safetensors"), str(sub / "m-2.safetensors")]
    assert [hf._GATE_KEY.search(k).group(1) for k in (
        "model.layers.3.self_attn.window_gate", "layers.12.self_attn.window_gate")] == ["3", "12"]
    assert hf._GATE_KEY.search("model.layers.3.self_attn.q_proj.weight") is None


def test_hybrid_options_are_checked_and_saved():
    with pytest.raises(ValueError, match="options of attention='hybrid'"):
        hf.Options(KV_HEADS, window=8)
    with pytest.raises(ValueError, match="options of attention='hybrid'"):
        hf.Options(KV_HEADS, sinks=0)
    o = hf.Options(KV_HEADS, attention="hybrid")
    assert (o.window, o.sinks) == (64, 4)
    o = hf.Options(KV_HEADS, attention="hybrid", feature_map="relu", window=16, sinks=0)
    saved = o.saved(range(4))
    assert (saved["attention"], saved["window"], saved["sinks"]) == ("hybrid", 16, 0)
    assert hf.saved_options(types.SimpleNamespace(liquid_memory=saved)) == {
        "attention": "hybrid", "feature_map": "relu", "rope": True, "normalize": True,
        "eps": 1e-6, "decay": None, "precision": "auto", "window": 16, "sinks": 0}
    assert "window" not in hf.Options(KV_HEADS).saved(range(1))  # linear: as before
    # The gate's form: sigmoid (the default) saves as before (format 1, no key); exp
    # saves format 2, which a library that reads only format 1 refuses.
    assert "window_gate_form" not in saved and saved["format"] == 1
    with pytest.raises(ValueError, match="options of attention='hybrid'"):
        hf.Options(KV_HEADS, window_gate_form="exp")
    e = hf.Options(KV_HEADS, attention="hybrid", window_gate_form="exp")
    assert e.gate_form == 1 and hf.Options(KV_HEADS, attention="hybrid").gate_form == 0
    saved = e.saved(range(2))
    assert (saved["format"], saved["window_gate_form"]) == (2, "exp")
    assert hf.saved_options(types.SimpleNamespace(liquid_memory=saved)) == {
        "attention": "hybrid", "feature_map": "elu1", "rope": True, "normalize": True,
        "eps": 1e-6, "decay": None, "precision": "auto", "window": 64, "sinks": 4,
        "window_gate_form": "exp"}
    with pytest.raises(UnsupportedError, match="format 3"):
        hf.saved_options(types.SimpleNamespace(liquid_memory=dict(saved, format=3)))


# ---------------------------------------------------------------------------
# With transformers: small random-init models of each family
# ---------------------------------------------------------------------------

FAMILIES = ["llama", "mistral", "qwen2"]


def make_model(family, dtype=torch.float32, seed=0, device=DEVICE):
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
    model_cls = {"llama": transformers.LlamaForCausalLM,
                 "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[family]
    config = cfg_cls(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
                     max_position_embeddings=1 << 17, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, tie_word_embeddings=False)
    if family == "mistral":
        config.sliding_window = None
    torch.manual_seed(seed)
    return model_cls(config).to(device=device, dtype=dtype).eval()


def _ids(B, L, seed=1):
    return torch.randint(3, VOCAB, (B, L), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def _licensed():
    lib = _ffi.binding()
    info = lib.new("lm_license_details")
    return lib.call("lm_license_info", lib.ref(info)) == _core.C["LM_OK"] and \
        info.mode != _core.C["LM_LICENSE_EVALUATION"]


# Logits of the fp32 model: chunked prefill vs one-token steps sum the same
# fp32 state in another order; through 4 layers and the head that stays
# below this relative (Frobenius) error.
LOGITS_BOUND = 2e-4
# Hybrid: the window's softmax weights exp(scale q.k - m) carry the logits'
# rounding relatively (|scale q.k| eps), on top of the linear part's.
HYBRID_LOGITS_BOUND = 5e-4

# The hybrid options of the model tests: a window well below their lengths.
HYBRID = dict(attention="hybrid", window=16, sinks=2)


def make_hybrid(family, dtype=torch.float32, seed=0, **opts):
    """A hybrid-patched model whose window_gate logits are random (a gate
    that a path ignores, or that is lost on the way, shows)."""
    model = hf.patch(make_model(family, dtype, seed), **dict(HYBRID, **opts))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.window_gate.copy_(torch.randn(HEADS, generator=g))
    return model


def _hybrid_bytes(B):
    """What a hybrid LiquidMemoryCache holds: per layer, batch row and kv
    head S, z, and the window's keys, values, positions (4 bytes each)."""
    D, n = HEAD_DIM, HYBRID["sinks"] + HYBRID["window"]
    return LAYERS * B * KV_HEADS * (D * D + D + n * (2 * D + 1)) * 4


@needs_transformers
@pytest.mark.parametrize("attention", ["linear", "hybrid"])
@pytest.mark.parametrize("family", FAMILIES)
def test_full_forward_equals_prefill_plus_cached_steps(family, attention):
    model = make_hybrid(family) if attention == "hybrid" else hf.patch(make_model(family))
    ids = _ids(2, 300)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = hf.LiquidMemoryCache(model)
        parts = [model(ids[:, :100], past_key_values=cache, use_cache=True).logits]
        for t in range(100, 300):  # teacher-forced decode steps
            parts.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert all(isinstance(layer, hf.RecurrentState) for layer in cache.layers)
    assert cache.get_seq_length() == 300
    e = rel_err(torch.cat(parts, 1), full)
    bound = HYBRID_LOGITS_BOUND if attention == "hybrid" else LOGITS_BOUND
    assert e <= bound, "%s %s: relative error %.3g" % (family, attention, e)


@needs_transformers
@pytest.mark.skipif(not HAS_CUDA, reason="torch.cuda.max_memory_allocated needs a CUDA device")
@pytest.mark.parametrize("attention", ["linear", "hybrid"])
def test_cache_memory_is_flat_from_1k_to_64k(attention):
    if not _licensed():
        pytest.skip("64K tokens of context need a license (evaluation mode stops at %d); set "
                    "LM_LICENSE_FILE=build/device/dev-license" % _core.C["LM_EVAL_MAX_TOKENS"])
    model = make_hybrid("llama", torch.bfloat16) if attention == "hybrid" else \
        hf.patch(make_model("llama", torch.bfloat16))
    ids = _ids(1, 1 << 16)
    step = ids[:, :1].clone()

    def measure(context):
        cache = hf.LiquidMemoryCache(model)
        with torch.no_grad():
            for s in range(0, context, 4096):
                model.model(ids[:, s:min(s + 4096, context)], past_key_values=cache,
                            use_cache=True)
            torch.cuda.synchronize()
            held = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(32):
                model(step, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
        return cache.get_seq_length(), cache.nbytes(), held, torch.cuda.max_memory_allocated()

    n1, bytes1, held1, peak1 = measure(1024)
    n64, bytes64, held64, peak64 = measure(1 << 16)
    assert (n1, n64) == (1024 + 32, (1 << 16) + 32)
    assert bytes1 == bytes64 == (_hybrid_bytes(1) if attention == "hybrid" else
                                 LAYERS * KV_HEADS * HEAD_DIM * (HEAD_DIM + 1) * 4)
    tokens = n64 - n1
    # A KV cache would grow by 2 x 4 layers x 2 heads x 32 x 2 bytes = 1 KiB a token.
    assert (held64 - held1) / tokens < 1.0, (held1, held64)
    assert (peak64 - peak1) / tokens < 1.0, (peak1, peak64)


@needs_transformers
@pytest.mark.parametrize("family", FAMILIES)
def test_training_gradients_match_float64(family, monkeypatch):
    """loss.backward through the patched model (fp32, left padding in one
    row) against the same model in float64 with the core replaced by the
    float64 reference; every parameter's gradient within GRAD_BOUND."""
    GRAD_BOUND = 5e-4
    model = hf.patch(make_model(family)).train()
    ref = copy.deepcopy(model).double()
    ids, labels = _ids(2, 37, seed=3), _ids(2, 37, seed=4)
    mask = torch.ones(2, 37, dtype=torch.long, device=DEVICE)
    mask[1, :9] = 0
    labels[1, :9] = -100
    model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()

    def ref_core(q, k, v, key_padding_mask, state, opts):
        assert state is None
        return ref_attention(q, k, v, mask=key_padding_mask, causal=True)[0]

    monkeypatch.setattr(hf, "_linear_attention", ref_core)
    ref(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        e = rel_err(p.grad, grads[name].grad)
        assert e <= GRAD_BOUND, "%s %s: relative error %.3g" % (family, name, e)


@needs_transformers
def test_compile_matches_eager():
    model = hf.patch(make_model("llama"))
    ids = _ids(2, 64, seed=5)
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model)(ids, use_cache=False).logits
    assert rel_err(compiled, eager) <= LOGITS_BOUND


def _left_pad(prompts):
    L = max(p.shape[0] for p in prompts)
    ids = torch.zeros(len(prompts), L, dtype=torch.long, device=DEVICE)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - p.shape[0]:] = p
        mask[i, L - p.shape[0]:] = 1
    return ids, mask


@needs_transformers
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_gives_the_tokens_of_each_prompt_alone(family):
    model = hf.patch(make_model(family))
    prompts = [_ids(1, 37, seed=6)[0], _ids(1, 61, seed=7)[0]]
    ids, mask = _left_pad(prompts)
    kw = dict(max_new_tokens=48, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], attention_mask=torch.ones_like(p[None]), **kw)
            assert torch.equal(batch[i], alone[0, p.shape[0]:]), "%s prompt %d" % (family, i)


@needs_transformers
def test_generate_greedy_and_sampling_thousands_of_tokens():
    model = hf.patch(make_model("llama", torch.bfloat16 if HAS_CUDA else torch.float32))
    ids, mask = _left_pad([_ids(1, 50, seed=8)[0], _ids(1, 20, seed=9)[0]])
    n = 2000
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
        # generate() made its own cache: its layers became recurrent states
        assert all(isinstance(layer, hf.RecurrentState) for layer in out.past_key_values.layers)
        assert out.past_key_values.get_seq_length() == ids.shape[1] + n - 1
        # the same greedy tokens with an explicit LiquidMemoryCache
        again = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                               pad_token_id=0, eos_token_id=None,
                               past_key_values=hf.LiquidMemoryCache(model))
        assert torch.equal(out.sequences, again)
        samples = []
        for _ in range(2):
            torch.manual_seed(11)
            samples.append(model.generate(ids, attention_mask=mask, max_new_tokens=1000,
                                          do_sample=True, top_k=50, temperature=1.0,
                                          pad_token_id=0, eos_token_id=None))
    assert out.sequences.shape == (2, ids.shape[1] + n)
    assert samples[0].shape == (2, ids.shape[1] + 1000)
    assert torch.equal(samples[0], samples[1])  # same seed, same tokens
    new = samples[0][:, ids.shape[1]:]
    assert int(new.min()) >= 0 and int(new.max()) < VOCAB
    assert not torch.equal(new, out.sequences[:, ids.shape[1]:ids.shape[1] + 1000])


def _round_trip(model, ids, path):
    """save_pretrained, then hf.from_pretrained: (the logits before, the
    loaded model, checked patched with the same configuration entry)."""
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
    model.save_pretrained(path)
    loaded = hf.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    assert hf.is_patched(loaded)
    assert getattr(loaded.config, hf.CONFIG_KEY) == getattr(model.config, hf.CONFIG_KEY)
    return want, loaded


@needs_transformers
@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(family, tmp_path):
    model = hf.patch(make_model(family), feature_map="relu", rope=False, decay=0.99)
    ids = _ids(1, 40, seed=10)
    want, loaded = _round_trip(model, ids, tmp_path)
    attn = loaded.model.layers[0].self_attn
    assert (attn.options.feature_map, attn.options.rope, attn.options.decay) == \
        ("relu", False, (0.99,) * KV_HEADS)
    with torch.no_grad():
        got = loaded(ids, use_cache=False).logits
    assert torch.equal(got, want)
    # A plain transformers load keeps the entry, and patch() of that model is a no-op reload.
    plain = type(model).from_pretrained(tmp_path)
    assert hf.saved_options(plain.config)["feature_map"] == "relu"


@needs_transformers
def test_unpatch_and_copy():
    model = make_model("qwen2")
    ids = _ids(2, 50, seed=12)
    with torch.no_grad():
        softmax = model(ids).logits
        patched = hf.patch(model, copy=True)
        assert patched is not model and not hf.is_patched(model) and hf.is_patched(patched)
        assert torch.equal(model(ids).logits, softmax)
        linear = patched(ids).logits
        assert rel_err(linear, softmax) > 1e-2  # it is another attention
        hf.unpatch(patched)
        assert not hf.is_patched(patched)
        assert not hasattr(patched.config, hf.CONFIG_KEY)
        assert torch.equal(patched(ids).logits, softmax)
        hf.patch(patched)
        assert torch.equal(patched(ids).logits, linear)
    with pytest.raises(ValueError, match="already patched"):
        hf.patch(patched)


@needs_transformers
def test_unknown_transformers_architecture():
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(UnsupportedError, match="model_type 'gpt2'"):
        hf.patch(model)


@needs_transformers
def test_state_dict_keys_are_unchanged():
    model = make_model("mistral")
    keys = list(model.state_dict())
    hf.patch(model)
    assert list(model.state_dict()) == keys
    assert type(model.model.layers[0].self_attn).__name__ == "LiquidMemoryAttention"


# ---------------------------------------------------------------------------
# With transformers: attention="hybrid" in the models
# ---------------------------------------------------------------------------

def _use_float64_hybrid(monkeypatch):
    """Replaces the hybrid layers' call into the library by the definition
    in float64 (test_hybrid.ref_hybrid, on the CPU: it builds its masks
    there), for a float64 copy of a model run without a cache."""
    def ref_core(q, k, v, key_padding_mask, state, gate, options, module=None):
        assert state is None
        cpu = (lambda t: None if t is None else t.cpu())
        return ref_hybrid(cpu(q), cpu(k), cpu(v), options.window, options.sinks, cpu(gate),
                          cpu(key_padding_mask), gate_form=options.window_gate_form).to(q.device)

    monkeypatch.setattr(hf, "_hybrid_attention", ref_core)


def _left_padded_ids(B, L, pad, seed):
    ids = _ids(B, L, seed=seed)
    mask = torch.ones(B, L, dtype=torch.long, device=DEVICE)
    mask[-1, :pad] = 0
    return ids, mask


@needs_transformers
@pytest.mark.parametrize("form", ["sigmoid", "exp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_forward_matches_float64(family, form, monkeypatch):
    """Logits of the patched fp32 model (the library's hybrid core, no
    gradient; one row left-padded past the sinks; the gate of either form)
    against the same model in float64 with the definition in place of the
    core."""
    model = make_hybrid(family, window_gate_form=form)
    ref = copy.deepcopy(model).double()
    ids, mask = _left_padded_ids(2, 90, 11, seed=13)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, use_cache=False).logits
        _use_float64_hybrid(monkeypatch)
        want = ref(ids, attention_mask=mask, use_cache=False).logits
    e = rel_err(got, want)
    assert e <= HYBRID_LOGITS_BOUND, "%s: relative error %.3g" % (family, e)


@needs_transformers
@pytest.mark.parametrize("form", ["sigmoid", "exp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_training_gradients_match_float64(family, form, monkeypatch):
    """loss.backward through the hybrid model (the differentiable
    composition; left padding in one row; the gate of either form): every
    parameter's gradient, window_gate included, within GRAD_BOUND of
    float64."""
    GRAD_BOUND = 5e-4
    model = make_hybrid(family, window_gate_form=form).train()
    ref = copy.deepcopy(model).double()
    ids, mask = _left_padded_ids(2, 45, 9, seed=3)
    labels = _ids(2, 45, seed=4)
    labels[1, :9] = -100
    model(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    _use_float64_hybrid(monkeypatch)
    ref(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    grads = dict(ref.named_parameters())
    gates = [n for n, _ in model.named_parameters() if n.endswith("self_attn.window_gate")]
    assert len(gates) == LAYERS
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        e = rel_err(p.grad, grads[name].grad)
        assert e <= GRAD_BOUND, "%s %s: relative error %.3g" % (family, name, e)
    assert all(bool(dict(model.named_parameters())[n].grad.abs().max() > 0) for n in gates)


@needs_transformers
@pytest.mark.parametrize("form", ["sigmoid", "exp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_generate_with_cache_equals_recomputation(family, form):
    """generate() (greedy, its own cache: prefill of the left-padded batch
    in one call, then decode steps on the window and the state; the gate of
    either form) gives the tokens of a loop that recomputes the whole
    sequence without a cache."""
    model = make_hybrid(family, window_gate_form=form)
    ids, mask = _left_pad([_ids(1, 37, seed=6)[0], _ids(1, 23, seed=7)[0]])
    n = 16
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
        seq, m = ids, mask
        for _ in range(n):
            pos = (m.cumsum(-1) - 1).clamp(min=0)  # generate()'s positions of the real tokens
            logits = model(seq, attention_mask=m, position_ids=pos, use_cache=False).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, seq), family
    layers = out.past_key_values.layers
    assert all(isinstance(layer, hf.RecurrentState) for layer in layers)
    n_slots = HYBRID["sinks"] + HYBRID["window"]
    assert layers[0].window_keys.shape == (2, KV_HEADS, n_slots, HEAD_DIM)
    assert sum(layer.nbytes() for layer in layers) == _hybrid_bytes(2)


@needs_transformers
def test_hybrid_cache_is_constant_in_context_length():
    """A LiquidMemoryCache of a hybrid model: the same bytes, the same
    tensors, after 40 tokens, after a prefill of 3000 more in one call and
    after decode steps."""
    model = make_hybrid("llama")
    ids = _ids(2, 3045, seed=14)
    cache = hf.LiquidMemoryCache(model)
    with torch.no_grad():
        model(ids[:, :40], past_key_values=cache, use_cache=True)
        ptrs = [[t.data_ptr() for t in layer.recurrent_states.values()] for layer in cache.layers]
        sizes = [cache.nbytes()]
        model(ids[:, 40:3040], past_key_values=cache, use_cache=True)
        sizes.append(cache.nbytes())
        for t in range(3040, 3045):
            model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        sizes.append(cache.nbytes())
    assert cache.get_seq_length() == 3045
    assert sizes == [_hybrid_bytes(2)] * 3
    assert [[t.data_ptr() for t in layer.recurrent_states.values()]
            for layer in cache.layers] == ptrs
    assert all(int(layer.window_pos.abs().max()) == 3045 for layer in cache.layers)


@needs_transformers
@pytest.mark.parametrize("form", ["sigmoid", "exp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_save_pretrained_round_trip(family, form, tmp_path):
    """config.json keeps attention, window, sinks and the gate's form; the
    gates travel in the weights and come back through hf.from_pretrained (a
    plain transformers load leaves them out)."""
    model = make_hybrid(family, feature_map="relu", window=24, sinks=3, window_gate_form=form)
    ids = _ids(1, 60, seed=15)
    want, loaded = _round_trip(model, ids, tmp_path)
    saved = getattr(loaded.config, hf.CONFIG_KEY)
    assert (saved["attention"], saved["window"], saved["sinks"]) == ("hybrid", 24, 3)
    assert saved.get("window_gate_form", "sigmoid") == form
    for a, b in zip(model.model.layers, loaded.model.layers):
        assert (b.self_attn.options.window, b.self_attn.options.sinks) == (24, 3)
        assert b.self_attn.options.window_gate_form == form
        assert torch.equal(a.self_attn.window_gate, b.self_attn.window_gate)
    with torch.no_grad():
        got = loaded(ids, use_cache=False).logits
    # The same weights and kernels: equal but for a kernel's run-to-run summation order.
    assert rel_err(got, want) <= 1e-6


# ---------------------------------------------------------------------------
# README_INTEGRATION.md's recipe, run as written
# ---------------------------------------------------------------------------

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README_INTEGRATION.md")


def readme_recipe_blocks():
    """The ```python blocks of README_INTEGRATION.md's "Patch a Hugging Face
    model" section, in order."""
    text = open(README, encoding="utf-8").read()
    start = text.index("\n## Patch a Hugging Face model")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_recipe_has_its_two_blocks():
    """What the GPU test below runs is there (the linear recipe, then the hybrid one)."""
    blocks = readme_recipe_blocks()
    assert len(blocks) == 2
    assert "lmhf.patch(model)" in blocks[0] and "model.generate(" in blocks[0]
    assert 'attention="hybrid"' in blocks[1]


def _recipe_checkpoint(folder):
    """A tiny random Llama and a word-level tokenizer saved where the recipe's
    `path` points (no downloads): the recipe's from_pretrained calls load them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    make_model("llama", device="cpu").save_pretrained(folder)
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, "a": 4, "prompt": 5, "longer": 6}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        unk_token="[UNK]", model_input_names=["input_ids", "attention_mask"]).save_pretrained(folder)


@needs_transformers
@pytest.mark.skipif(not HAS_CUDA, reason="the recipe moves the model to CUDA (.cuda())")
def test_readme_recipe_runs_as_written(tmp_path, monkeypatch):
    """Issue #15's "followed as written, as a new user would": both code
    blocks of the section, unedited, with `path` a saved checkpoint; the
    hybrid block on a freshly loaded model, as its text presents it."""
    folder = tmp_path / "checkpoint"
    _recipe_checkpoint(folder)
    monkeypatch.chdir(tmp_path)  # the recipe saves to "run/"
    linear, hybrid = readme_recipe_blocks()
    ns = {"path": str(folder)}
    exec(compile(linear, "README_INTEGRATION.md (linear recipe)", "exec"), ns)
    assert hf.is_patched(ns["model"])
    assert ns["out"].shape[0] == 2 and ns["out"].shape[1] > ns["batch"]["input_ids"].shape[1]
    assert getattr(ns["model"].config, hf.CONFIG_KEY)["attention"] == "linear"
    ns["model"] = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.bfloat16).cuda()
    exec(compile(hybrid, "README_INTEGRATION.md (hybrid recipe)", "exec"), ns)
    assert hf.is_patched(ns["model"])
    assert getattr(ns["model"].config, hf.CONFIG_KEY)["attention"] == "hybrid"
    assert ns["out"].shape[0] == 2
