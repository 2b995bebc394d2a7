"""
test_module.py - LiquidMemory as a drop-in for nn.MultiheadAttention:
constructor, parameters and state_dict both ways, from_mha/to_mha, both
layouts, unbatched input, cross-attention, masks, errors, need_weights,
dropout, and the module output against the float64 reference.
"""
import warnings

import pytest
import torch
from torch import nn

import liquid_memory
from conftest import TORCH_VERSION, assert_close, ref_module
from liquid_memory import LiquidMemory, module as lm_module

E, H = 32, 4


def x_(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------- MHA compatibility

CONFIGS = [
    dict(),
    dict(bias=False),
    dict(kdim=24, vdim=40),
    dict(add_bias_kv=True),
    dict(add_zero_attn=True),
    dict(add_bias_kv=True, add_zero_attn=True, batch_first=True),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_parameters_and_state_dict_match_mha(cfg):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **cfg)
    lm = LiquidMemory(E, H, **cfg)
    assert list(mha.state_dict().keys()) == list(lm.state_dict().keys())
    for (n1, p1), (n2, p2) in zip(mha.named_parameters(), lm.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape
    for attr in ("embed_dim", "num_heads", "head_dim", "kdim", "vdim", "batch_first",
                 "dropout", "add_zero_attn"):
        assert getattr(mha, attr) == getattr(lm, attr), attr
    # MHA's flag means "one packed in_proj_weight"; ours reads False on purpose
    # (torch's fused softmax fast paths check it), the packing is the same.
    assert (lm.in_proj_weight is not None) == mha._qkv_same_embed_dim
    assert lm._qkv_same_embed_dim is False
    # both ways
    lm.load_state_dict(mha.state_dict())
    for a, b in zip(mha.state_dict().values(), lm.state_dict().values()):
        assert torch.equal(a, b)
    lm2 = LiquidMemory(E, H, **cfg)
    mha.load_state_dict(lm2.state_dict())
    for a, b in zip(mha.state_dict().values(), lm2.state_dict().values()):
        assert torch.equal(a, b)


def test_init_statistics_like_mha():
    """Same initialisation scheme: zero biases, xavier-uniform in_proj."""
    lm = LiquidMemory(64, 4)
    assert torch.count_nonzero(lm.in_proj_bias) == 0 and torch.count_nonzero(lm.out_proj.bias) == 0
    bound = (6.0 / (64 + 3 * 64)) ** 0.5
    assert lm.in_proj_weight.abs().max() <= bound
    assert lm.in_proj_weight.std() > bound / 3


@pytest.mark.parametrize("cfg", CONFIGS)
def test_from_mha_and_to_mha(cfg):
    mha = nn.MultiheadAttention(E, H, **cfg).eval()
    lm = LiquidMemory.from_mha(mha, feature_map="relu")
    assert lm.feature_map == "relu" and not lm.training
    for a, b in zip(mha.state_dict().values(), lm.state_dict().values()):
        assert torch.equal(a, b)
    back = lm.to_mha()
    assert isinstance(back, nn.MultiheadAttention)
    for a, b in zip(back.state_dict().values(), mha.state_dict().values()):
        assert torch.equal(a, b)


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible"):
        LiquidMemory(30, 4)
    with pytest.raises(ValueError, match="greater than 0"):
        LiquidMemory(0, 4)
    with pytest.raises(ValueError, match="feature_map"):
        LiquidMemory(E, H, feature_map="softmax")
    with pytest.raises(ValueError, match="precision"):
        LiquidMemory(E, H, precision="high")
    with pytest.raises(ValueError, match="decay"):
        LiquidMemory(E, H, decay=1.5)
    with pytest.raises(ValueError, match="one per kv head"):
        LiquidMemory(E, H, decay=[0.9, 0.9])
    with pytest.raises(ValueError, match="num_kv_heads"):
        LiquidMemory(E, H, num_kv_heads=3)


def test_decay_profiles():
    assert LiquidMemory(E, H, decay=0.5).decay == (0.5,) * H
    r = LiquidMemory(E, H, decay="retnet").decay
    assert r[0] == 1 - 2 ** -5 and r[3] == 1 - 2 ** -8


# ---------------------------------------------------------------- forward vs reference

def _to_bf(x, batch_first):
    return x if batch_first else x.transpose(0, 1)


# (causal needs self-attention, so not kdim/vdim; decay is causal-only: test_decay_needs_causal)
FORWARD_CASES = [(c, causal) for c in CONFIGS + [dict(num_kv_heads=2), dict(decay="retnet")]
                 for causal in (True, False)
                 if not (causal and "kdim" in c) and not (not causal and "decay" in c)]


@pytest.mark.parametrize("cfg,causal", FORWARD_CASES)
def test_forward_matches_reference(cfg, causal):
    torch.manual_seed(1)
    m = LiquidMemory(E, H, **cfg).eval()
    bf = m.batch_first
    B, L = 3, 50
    q = x_(B, L, E, seed=1)
    k = x_(B, L, m.kdim, seed=2) if "kdim" in cfg else q
    v = x_(B, L, m.vdim, seed=3) if "vdim" in cfg else q
    out, w = m(_to_bf(q, bf), _to_bf(k, bf), _to_bf(v, bf), need_weights=False,
               is_causal=causal)
    assert w is None
    ref = ref_module(m, q, k, v, causal=causal)
    assert_close(_to_bf(out, bf), ref, torch.float32, factor=5)


def test_decay_needs_causal():
    m = LiquidMemory(E, H, decay=0.9)
    x = x_(1, 5, E)
    with pytest.raises(liquid_memory.UnsupportedError, match="causal"):
        m(x, x, x, need_weights=False)


@pytest.mark.parametrize("batch_first", [False, True])
def test_layouts_agree(batch_first):
    torch.manual_seed(2)
    m1 = LiquidMemory(E, H, batch_first=True)
    m2 = LiquidMemory(E, H, batch_first=False)
    m2.load_state_dict(m1.state_dict())
    x = x_(2, 30, E, seed=4)
    a, _ = m1(x, x, x, need_weights=False, is_causal=True)
    xs = x.transpose(0, 1).contiguous()
    b, _ = m2(xs, xs, xs, need_weights=False, is_causal=True)
    assert torch.allclose(a, b.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_unbatched():
    torch.manual_seed(3)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(20, E, seed=5)
    out, _ = m(x, x, x, need_weights=False, is_causal=True)
    assert out.shape == (20, E)
    batched, _ = m(x[None], x[None], x[None], need_weights=False, is_causal=True)
    assert torch.allclose(out, batched[0], rtol=1e-5, atol=1e-6)
    kpm = torch.zeros(20, dtype=torch.bool)
    kpm[15:] = True
    out2, _ = m(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert_close(out2[None], ref_module(m, x[None], x[None], x[None], mask=kpm[None]),
                 torch.float32, factor=5)


def test_cross_attention_different_lengths():
    torch.manual_seed(4)
    m = LiquidMemory(E, H, kdim=20, vdim=28, batch_first=True)
    q, k, v = x_(2, 11, E, seed=6), x_(2, 37, 20, seed=7), x_(2, 37, 28, seed=8)
    out, _ = m(q, k, v, need_weights=False)
    assert out.shape == (2, 11, E)
    assert_close(out, ref_module(m, q, k, v), torch.float32, factor=5)
    with pytest.raises(ValueError, match="same length"):
        m(q, k, v, need_weights=False, is_causal=True)


def test_cross_attention_shared_key_value():
    torch.manual_seed(5)
    m = LiquidMemory(E, H, batch_first=True)
    q, mem = x_(2, 9, E, seed=9), x_(2, 25, E, seed=10)
    out, _ = m(q, mem, mem, need_weights=False)
    assert_close(out, ref_module(m, q, mem, mem), torch.float32, factor=5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_module(dtype):
    try:
        torch.nn.functional.linear(torch.ones(2, 2, dtype=dtype), torch.ones(2, 2, dtype=dtype))
    except RuntimeError as e:
        pytest.skip("this torch cannot run %s projections on the CPU (%s); the core is tested "
                    "in %s by test_core.py" % (dtype, e, dtype))
    torch.manual_seed(6)
    m = LiquidMemory(E, H, batch_first=True, dtype=dtype)
    x = x_(2, 40, E, seed=11, dtype=dtype)
    out, _ = m(x, x, x, need_weights=False, is_causal=True)
    assert out.dtype == dtype
    # projections in low precision too: bound by the input/projection rounding
    assert_close(out, ref_module(m, x, x, x, causal=True), dtype, factor=4)


def test_float64_module_is_refused_clearly():
    m = LiquidMemory(E, H, dtype=torch.float64)
    x = x_(3, 1, E).double()
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        m(x, x, x, need_weights=False)


# ---------------------------------------------------------------- masks

def _causal_bool(L):
    return torch.ones(L, L, dtype=torch.bool).triu(1)


def _causal_float(L):
    return torch.zeros(L, L).masked_fill(_causal_bool(L), float("-inf"))


@pytest.mark.parametrize("kind", ["bool", "float", "float3d"])
def test_causal_attn_mask_is_recognised(kind):
    torch.manual_seed(7)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 25, E, seed=12)
    mask = {"bool": _causal_bool(25), "float": _causal_float(25),
            "float3d": _causal_float(25).expand(2 * H, 25, 25)}[kind]
    a, _ = m(x, x, x, attn_mask=mask, need_weights=False)
    b, _ = m(x, x, x, is_causal=True, need_weights=False)
    assert torch.equal(a, b)
    assert_close(a, ref_module(m, x, x, x, causal=True), torch.float32, factor=5)


def test_all_keep_attn_mask_is_no_mask():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(1, 10, E, seed=13)
    a, _ = m(x, x, x, attn_mask=torch.zeros(10, 10), need_weights=False)
    b, _ = m(x, x, x, need_weights=False)
    assert torch.equal(a, b)


def test_noncausal_attn_mask_errors():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(1, 10, E, seed=14)
    band = _causal_bool(10) | torch.ones(10, 10, dtype=torch.bool).tril(-3)
    with pytest.raises(NotImplementedError, match="not a causal mask"):
        m(x, x, x, attn_mask=band, need_weights=False)
    with pytest.raises(NotImplementedError, match="additive attention bias"):
        m(x, x, x, attn_mask=torch.randn(10, 10), need_weights=False)
    with pytest.raises(NotImplementedError, match="not a causal mask"):
        m(x, x, x, attn_mask=_causal_bool(10).t(), need_weights=False)
    with pytest.raises(ValueError, match="attn_mask has shape"):
        m(x, x, x, attn_mask=_causal_bool(9), need_weights=False)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask(kind, causal):
    torch.manual_seed(8)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(3, 30, E, seed=15)
    pad = torch.zeros(3, 30, dtype=torch.bool)
    pad[0, 20:] = True
    pad[2, :4] = True
    kpm = pad if kind == "bool" else torch.zeros(3, 30).masked_fill(pad, float("-inf"))
    out, _ = m(x, x, x, key_padding_mask=kpm, need_weights=False, is_causal=causal)
    assert_close(out, ref_module(m, x, x, x, causal=causal, mask=pad), torch.float32, factor=5)


# Float "ignore" values in the idioms people write (Hugging Face's -1e4 /
# finfo.min, -1e9, -inf), in the mask dtypes they come in: each must mean
# exactly what a bool True means (MASK_IGNORE_AT = -1e4, compared in the mask's
# own dtype: bfloat16 rounds -1e4 to -9984).
IGNORE_VALUES = [(-1e4, torch.float32), (-1e4, torch.bfloat16), (-1e4, torch.float16),
                 (-1e9, torch.float32), (None, torch.float32), (None, torch.bfloat16),
                 (None, torch.float16), (float("-inf"), torch.float16)]


def test_mask_threshold_is_exported():
    assert liquid_memory.MASK_IGNORE_AT == -1e4 and "MASK_IGNORE_AT" in liquid_memory.__all__


def _ignore_value(value, dtype):
    return torch.finfo(dtype).min if value is None else value


@pytest.mark.parametrize("value,dtype", IGNORE_VALUES)
def test_float_key_padding_mask_large_negatives_mean_ignore(value, dtype):
    torch.manual_seed(8)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 20, E, seed=16)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[0, 13:] = True
    pad[1, :3] = True
    kpm = torch.zeros(2, 20, dtype=dtype).masked_fill(pad, _ignore_value(value, dtype))
    for causal in (False, True):
        got, _ = m(x, x, x, key_padding_mask=kpm, need_weights=False, is_causal=causal)
        want, _ = m(x, x, x, key_padding_mask=pad, need_weights=False, is_causal=causal)
        assert torch.equal(got, want)


@pytest.mark.parametrize("value,dtype", IGNORE_VALUES)
def test_float_causal_attn_mask_large_negatives(value, dtype):
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 12, E, seed=17)
    mask = torch.zeros(12, 12, dtype=dtype).masked_fill(_causal_bool(12),
                                                         _ignore_value(value, dtype))
    a, _ = m(x, x, x, attn_mask=mask, need_weights=False)
    b, _ = m(x, x, x, is_causal=True, need_weights=False)
    assert torch.equal(a, b)


def test_uint8_attn_mask_is_read_as_bool_like_mha():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 12, E, seed=18)
    a, _ = m(x, x, x, attn_mask=_causal_bool(12).to(torch.uint8), need_weights=False)
    b, _ = m(x, x, x, is_causal=True, need_weights=False)
    assert torch.equal(a, b)
    band = (_causal_bool(12) | torch.ones(12, 12, dtype=torch.bool).tril(-3)).to(torch.uint8)
    with pytest.raises(NotImplementedError, match="not a causal mask"):
        m(x, x, x, attn_mask=band, need_weights=False)


def test_3d_attn_mask_needs_batch_times_heads():
    """As MHA: a 3-D mask is (batch * num_heads, L, S); another first size is refused."""
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 12, E, seed=19)
    good = _causal_bool(12).expand(2 * H, 12, 12)
    a, _ = m(x, x, x, attn_mask=good, need_weights=False)
    assert torch.equal(a, m(x, x, x, is_causal=True, need_weights=False)[0])
    for first in (1, 2, H, 2 * H + 1):
        with pytest.raises(ValueError, match=r"\(batch \* num_heads, L, S\) = \(8, 12, 12\)"):
            m(x, x, x, attn_mask=_causal_bool(12).expand(first, 12, 12), need_weights=False)
    # unbatched input: (num_heads, L, S)
    u, _ = m(x[0], x[0], x[0], attn_mask=_causal_bool(12).expand(H, 12, 12), need_weights=False)
    assert torch.allclose(u, a[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [-1.0, -9000.0, 0.5, 1e9, float("inf"), float("nan")])
def test_float_masks_with_a_bias_are_refused(value):
    """Anything but 0 (keep) and <= -1e4 (ignore) would be an additive bias."""
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 10, E)
    kpm = torch.zeros(2, 10)
    kpm[0, 3] = value
    with pytest.raises(ValueError, match="values other than 0 \\(keep\\) and <= -10000"):
        m(x, x, x, key_padding_mask=kpm, need_weights=False)
    am = _causal_float(10)
    am[5, 2] = value
    with pytest.raises(NotImplementedError, match="additive attention bias"):
        m(x, x, x, attn_mask=am, need_weights=False)


def test_key_padding_mask_errors():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 10, E)
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        m(x, x, x, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool), need_weights=False)
    with pytest.raises(TypeError, match="bool, uint8 or floating"):
        m(x, x, x, key_padding_mask=torch.zeros(2, 10, dtype=torch.int64), need_weights=False)


def test_fully_masked_row_gives_zero_not_nan():
    m = LiquidMemory(E, H, batch_first=True, bias=False)
    x = x_(1, 6, E)
    out, _ = m(x, x, x, key_padding_mask=torch.ones(1, 6, dtype=torch.bool), need_weights=False)
    assert torch.equal(out, torch.zeros_like(out))


# ---------------------------------------------------------------- warnings, dropout, shapes

def test_need_weights_warns_once(monkeypatch):
    monkeypatch.setattr(lm_module, "_warned", set())
    m = LiquidMemory(E, H)
    x = x_(4, 1, E)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out, w = m(x, x, x)
        m(x, x, x)
        m(x, x, x, need_weights=True, average_attn_weights=False)
    assert w is None
    msgs = [r for r in rec if issubclass(r.category, liquid_memory.AttentionWeightsWarning)]
    assert len(msgs) == 1 and "never forms attention weights" in str(msgs[0].message)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m(x, x, x, need_weights=False)
    assert not [r for r in rec if issubclass(r.category, liquid_memory.AttentionWeightsWarning)]


def test_dropout_on_attention_output():
    torch.manual_seed(9)
    m = LiquidMemory(E, H, dropout=0.5, batch_first=True, bias=False)
    x = x_(2, 16, E, seed=16)
    m.eval()
    a, _ = m(x, x, x, need_weights=False)
    b, _ = m(x, x, x, need_weights=False)
    assert torch.equal(a, b)  # no dropout in eval
    m.train()
    torch.manual_seed(1)
    c, _ = m(x, x, x, need_weights=False)
    torch.manual_seed(2)
    d, _ = m(x, x, x, need_weights=False)
    assert not torch.equal(c, d) and not torch.allclose(a, c)
    # it is dropout on the per-head output before out_proj: E[out] stays the eval output
    outs = []
    for s in range(200):
        torch.manual_seed(100 + s)
        outs.append(m(x, x, x, need_weights=False)[0])
    mean = torch.stack(outs).mean(0)
    assert (mean - a).norm() / a.norm() < 0.15


def test_shape_errors():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 5, E)
    with pytest.raises(ValueError, match="embedding size"):
        m(x[..., :-1], x, x, need_weights=False)
    with pytest.raises(ValueError, match="all be batched"):
        m(x, x[0], x[0], need_weights=False)
    with pytest.raises(ValueError, match="2-D \\(unbatched\\) or 3-D"):
        m(x[None], x[None], x[None], need_weights=False)


def test_empty_query():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 0, E)
    out, _ = m(x, x, x, need_weights=False)
    assert out.shape == (2, 0, E)


def test_gqa_module_state_dict_not_mha():
    m = LiquidMemory(E, H, num_kv_heads=2)
    assert m.in_proj_weight.shape == (E + 2 * 2 * (E // H), E)
    with pytest.raises(ValueError, match="grouped-query"):
        m.to_mha()


def test_repr():
    m = LiquidMemory(E, H)
    assert "LiquidMemory(" in repr(m) and "feature_map='elu'" in repr(m)


# ---------------------------------------------------------------- slabs without autograd

@pytest.mark.parametrize("cfg", [dict(), dict(batch_first=True, add_bias_kv=True),
                                 dict(decay=0.97), dict(bias=False, batch_first=True)])
@pytest.mark.parametrize("masked", [False, True])
def test_no_grad_causal_forward_runs_in_slabs(monkeypatch, cfg, masked):
    """Under no_grad a causal forward goes slab by slab (extra memory O(slab)); it
    matches the float64 reference and the one-pass forward, state included."""
    torch.manual_seed(21)
    m = LiquidMemory(E, H, **cfg)
    B, L = 2, 300  # 5 slabs of 64 tokens, the last one ragged
    x = x_(B, L, E, seed=22) if m.batch_first else x_(L, B, E, seed=22)
    pad = None
    if masked:
        pad = torch.zeros(B, L, dtype=torch.bool)
        pad[0, 100:170] = True
        pad[1, :5] = True
    calls = []
    attend = lm_module.LiquidMemory._attend
    monkeypatch.setattr(lm_module.LiquidMemory, "_attend",
                        lambda self, *a: calls.append(a[7]) or attend(self, *a))
    monkeypatch.setattr(lm_module, "_SLAB_ROWS", 128)
    monkeypatch.setattr(lm_module, "_SLAB_MIN", 64)
    one, _ = m(x, x, x, key_padding_mask=pad, is_causal=True, need_weights=False,
               keep_state=True)
    S1, z1 = m.state_S.clone(), m.state_z.clone()
    assert len(calls) == 1  # parameters require grad: one pass
    with torch.no_grad():
        out, _ = m(x, x, x, key_padding_mask=pad, is_causal=True, need_weights=False)
    assert len(calls) == 1 + 5
    xb = x if m.batch_first else x.transpose(0, 1)
    want = ref_module(m, xb, xb, xb, causal=True, mask=pad)
    assert_close(out if m.batch_first else out.transpose(0, 1), want, torch.float32, factor=5)
    assert (out - one).abs().max() <= 1e-5 * one.abs().max()
    assert m.state_position == L + (1 if cfg.get("add_bias_kv") else 0)
    assert (m.state_S - S1).abs().max() <= 1e-5 * S1.abs().max()
    assert (m.state_z - z1).abs().max() <= 1e-5 * z1.abs().max()
