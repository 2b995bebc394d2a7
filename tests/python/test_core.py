"""
test_core.py - the attention core through the bindings (_ops.prefill /
decode, i.e. lm_linear_attn_prefill / _decode) against the float64
reference: dtypes, causal and bidirectional, masks, GQA, decay, feature maps,
unnormalised output, strided inputs, state hand-over, decode == prefill, NaN
isolation between batch rows.
"""
import pytest
import torch

from conftest import TOL, assert_close, rand_qkv, ref_attention, rel_err
from liquid_memory import _core, _ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def opts(**kw):
    fm = kw.pop("feature_map", "elu")
    prec = kw.pop("precision", "auto")
    return _core.Options(_core.FEATURE_MAPS[fm], precision=_core.PRECISIONS[prec], **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L", [1, 63, 64, 97, 200])
def test_prefill_matches_reference(dtype, causal, L):
    q, k, v = rand_qkv(2, L, 3, 16, dtype=dtype, seed=L)
    out, S, z = _ops.prefill(q, k, v, is_causal=causal, want_state=True)
    ref, S_ref, z_ref = ref_attention(q, k, v, causal=causal)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype, "out")
    assert_close(S, S_ref, torch.float32, "state", factor=5)
    assert_close(z, z_ref, torch.float32, "normalizer", factor=5)


@pytest.mark.parametrize("Lk", [1, 50, 130])
def test_cross_attention_lengths(Lk):
    q, k, v = rand_qkv(2, 37, 4, 8, Lk=Lk, Dv=12, seed=Lk)
    out, _, _ = _ops.prefill(q, k, v, is_causal=False)
    ref, _, _ = ref_attention(q, k, v, causal=False)
    assert out.shape == (2, 37, 4, 12)
    assert_close(out, ref, torch.float32)


def test_causal_needs_equal_lengths():
    q, k, v = rand_qkv(1, 10, 2, 8, Lk=11)
    with pytest.raises(_core.InvalidArgumentError, match="L == Lk"):
        _ops.prefill(q, k, v, is_causal=True)


@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (6, 1), (8, 8)])
@pytest.mark.parametrize("causal", [True, False])
def test_gqa(Hq, Hkv, causal):
    q, k, v = rand_qkv(2, 70, Hq, 8, Hkv=Hkv, seed=Hq * 10 + Hkv)
    out, S, z = _ops.prefill(q, k, v, is_causal=causal, want_state=True)
    ref, S_ref, z_ref = ref_attention(q, k, v, causal=causal)
    assert S.shape == (2, Hkv, 8, 8)
    assert_close(out, ref, torch.float32)
    assert_close(S, S_ref, torch.float32, factor=5)


@pytest.mark.parametrize("causal", [True, False])
def test_key_padding_mask(causal):
    q, k, v = rand_qkv(3, 90, 2, 8, seed=3)
    mask = torch.zeros(3, 90, dtype=torch.bool)
    mask[0, 60:] = True
    mask[1, ::3] = True
    out, S, z = _ops.prefill(q, k, v, mask=mask, is_causal=causal, want_state=True)
    ref, S_ref, z_ref = ref_attention(q, k, v, mask=mask, causal=causal)
    assert_close(out, ref, torch.float32)
    assert_close(S, S_ref, torch.float32, factor=5)
    # masked keys truly contribute nothing: changing them changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[mask] = 1e3
    v2[mask] = -7.0
    out2, _, _ = _ops.prefill(q, k2, v2, mask=mask, is_causal=causal)
    assert torch.equal(out, out2)


def test_mask_strided():
    q, k, v = rand_qkv(2, 40, 2, 8, seed=4)
    full = torch.zeros(40, 2, dtype=torch.bool)  # [Lk, B] memory, read as [B, Lk] view
    full[30:, 1] = True
    mask = full.t()
    assert not mask.is_contiguous()
    out, _, _ = _ops.prefill(q, k, v, mask=mask, is_causal=False)
    ref, _, _ = ref_attention(q, k, v, mask=mask, causal=False)
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("fm", ["elu", "relu"])
@pytest.mark.parametrize("normalize", [True, False])
def test_feature_maps(fm, normalize):
    q, k, v = rand_qkv(2, 80, 2, 16, seed=5)
    out, _, _ = _ops.prefill(q, k, v, is_causal=True,
                             opts=opts(feature_map=fm, normalize=normalize, eps=1e-3))
    ref, _, _ = ref_attention(q, k, v, causal=True, feature_map=fm, normalize=normalize, eps=1e-3)
    assert_close(out, ref, torch.float32, factor=5)


def test_identity_unnormalised_with_scale():
    q, k, v = rand_qkv(1, 50, 2, 8, seed=6)
    o = opts(feature_map="identity", normalize=False, scale=0.25)
    out, _, _ = _ops.prefill(q, k, v, is_causal=True, opts=o)
    ref, _, _ = ref_attention(q, k, v, causal=True, feature_map="identity", normalize=False,
                              scale=0.25)
    assert_close(out, ref, torch.float32, factor=5)


def test_decay():
    decay = [0.9, 0.99, 1.0]
    q, k, v = rand_qkv(2, 150, 3, 8, seed=7)
    out, S, z = _ops.prefill(q, k, v, is_causal=True, opts=opts(decay=decay), want_state=True)
    ref, S_ref, z_ref = ref_attention(q, k, v, causal=True, decay=decay)
    assert_close(out, ref, torch.float32, factor=5)
    assert_close(S, S_ref, torch.float32, factor=5)


def test_decay_bidirectional_is_unsupported():
    q, k, v = rand_qkv(1, 10, 2, 8)
    with pytest.raises(_core.UnsupportedError, match="causal"):
        _ops.prefill(q, k, v, is_causal=False, opts=opts(decay=[0.9, 0.9]))


@pytest.mark.parametrize("precision", ["on", "off"])
def test_precision_modes(precision):
    q, k, v = rand_qkv(1, 300, 2, 8, seed=8)
    out, _, _ = _ops.prefill(q, k, v, is_causal=True, opts=opts(precision=precision))
    ref, _, _ = ref_attention(q, k, v, causal=True)
    assert_close(out, ref, torch.float32)


def test_strided_views_are_read_without_copies():
    """q, k, v as slices of one packed [L, B, 3, H, D] projection, seen as
    [B, L, H, D] through strides; the output laid out sequence-first."""
    L, B, H, D = 45, 3, 2, 8
    g = torch.Generator().manual_seed(9)
    packed = torch.randn(L, B, 3, H, D, generator=g)
    q, k, v = (packed[:, :, i].transpose(0, 1) for i in range(3))
    assert not q.is_contiguous()
    out, _, _ = _ops.prefill(q, k, v, is_causal=True, seq_first=True)
    assert out.transpose(0, 1).is_contiguous()  # memory order [L, B, H, D]
    ref, _, _ = ref_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("causal", [True, False])
def test_state_handover(causal):
    """Prefill over L == prefill over L1, then L - L1 with the state handed over."""
    q, k, v = rand_qkv(2, 130, 2, 8, seed=10)
    L1 = 57
    full, S_full, z_full = _ops.prefill(q, k, v, is_causal=True, want_state=True)
    o1, S1, z1 = _ops.prefill(q[:, :L1], k[:, :L1], v[:, :L1], is_causal=True, want_state=True)
    o2, S2, z2 = _ops.prefill(q[:, L1:], k[:, L1:], v[:, L1:], S0=S1, z0=z1, position=L1,
                              is_causal=True)
    assert_close(torch.cat([o1, o2], 1), full, torch.float32)
    assert_close(S2, S_full, torch.float32)
    if not causal:
        # bidirectional with a state: queries see the state and every new key
        ob, _, _ = _ops.prefill(q[:, L1:], k[:, L1:], v[:, L1:], S0=S1, z0=z1, position=L1,
                                is_causal=False)
        ref, _, _ = ref_attention(q[:, L1:], k[:, L1:], v[:, L1:], causal=False, S0=S1, z0=z1)
        assert_close(ob, ref, torch.float32)


def test_initial_state_not_modified():
    q, k, v = rand_qkv(1, 20, 2, 8, seed=11)
    _, S1, z1 = _ops.prefill(q, k, v, is_causal=True, want_state=True)
    S_before, z_before = S1.clone(), z1.clone()
    _ops.prefill(q, k, v, S0=S1, z0=z1, position=20, is_causal=True)
    assert torch.equal(S1, S_before) and torch.equal(z1, z_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_steps_equal_prefill(dtype):
    q, k, v = rand_qkv(2, 40, 4, 8, Hkv=2, dtype=dtype, seed=12)
    full, S_full, _ = _ops.prefill(q, k, v, is_causal=True, want_state=True)
    L1 = 25
    _, S, z = _ops.prefill(q[:, :L1], k[:, :L1], v[:, :L1], is_causal=True, want_state=True)
    outs = []
    for t in range(L1, 40):
        outs.append(_ops.decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], S, z, t))
    got = torch.cat(outs, 1)
    ref, S_ref, _ = ref_attention(q, k, v, causal=True)
    assert_close(got, ref[:, L1:], dtype, "decode")
    assert rel_err(got, full[:, L1:]) <= 2 * TOL[dtype]
    assert_close(S, S_ref, torch.float32, "state", factor=5)


def test_decode_from_empty_state():
    q, k, v = rand_qkv(1, 5, 2, 8, seed=13)
    S = torch.zeros(1, 2, 8, 8)
    z = torch.zeros(1, 2, 8)
    outs = [_ops.decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], S, z, t) for t in range(5)]
    ref, _, _ = ref_attention(q, k, v, causal=True)
    assert_close(torch.cat(outs, 1), ref, torch.float32)


def test_decode_rejects_bad_state():
    q, k, v = rand_qkv(2, 1, 2, 8)
    with pytest.raises(ValueError, match="state must be a contiguous float32"):
        _ops.decode(q, k, v, torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8), 0)


@pytest.mark.parametrize("causal", [True, False])
def test_nan_stays_in_its_batch_row(causal):
    q, k, v = rand_qkv(3, 70, 2, 8, seed=14)
    q[1, 5, 0, 0] = float("nan")
    k[1, 9, 1, 2] = float("inf")
    out, _, _ = _ops.prefill(q, k, v, is_causal=causal)
    assert not torch.isfinite(out[1]).all()
    clean = torch.tensor([True, False, True])
    ref, _, _ = ref_attention(q[clean], k[clean], v[clean], causal=causal)
    assert_close(out[clean], ref, torch.float32)


def test_bad_dtype_and_device_errors():
    q, k, v = rand_qkv(1, 4, 2, 8)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        _ops.prefill(q.double(), k.double(), v.double())
    with pytest.raises(_core.InvalidArgumentError, match="same dtype"):
        _ops.prefill(q, k.half(), v)


def test_error_carries_library_detail():
    q, k, v = rand_qkv(1, 4, 3, 8, Hkv=2)
    with pytest.raises(_core.InvalidArgumentError) as e:
        _ops.prefill(q, k, v, is_causal=False)
    assert "lm_linear_attn_prefill failed" in str(e.value)
    assert "divide" in e.value.detail and e.value.status == _core.C["LM_ERR_INVALID_ARG"]
