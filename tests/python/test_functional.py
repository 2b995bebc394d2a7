"""
test_functional.py - liquid_memory.linear_attention (flash-linear-attention's
conventions: [B, L, H, D], GQA by head counts, initial_state /
output_final_state, cu_seqlens) against the float64 reference of
docs/DESIGN.md "The maths": outputs, final states, chaining through the
state, packed variable-length sequences, gradients (q, k, v, the initial
state, through the final state), and its errors.
"""
import pytest
import torch

import liquid_memory
from conftest import assert_close, rand_qkv, ref_attention, rel_err
from liquid_memory import _core, linear_attention

needs_backward = pytest.mark.skipif(
    not _core.has_backward(), reason="the library under test has no lm_linear_attn_backward")

CASES = [
    dict(B=2, L=70, Hq=4, Hkv=4, D=16),
    dict(B=2, L=65, Hq=8, Hkv=2, D=16),                                  # GQA
    dict(B=1, L=33, Hq=4, Hkv=1, D=32, causal=False, Lk=50),             # cross, MQA
    dict(B=2, L=40, Hq=2, Hkv=2, D=16, decay=0.9),
    dict(B=1, L=40, Hq=4, Hkv=4, D=16, decay="retnet"),
    dict(B=1, L=30, Hq=2, Hkv=2, D=16, feature_map="relu"),
    dict(B=1, L=30, Hq=2, Hkv=2, D=16, feature_map="identity", normalize=False, scale=0.3),
    dict(B=2, L=129, Hq=4, Hkv=2, D=16, dtype=torch.bfloat16),
]


def _ref_decay(decay, Hkv):
    return None if decay is None else list(liquid_memory.functional.decay_values(decay, Hkv))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join("%s%s" % kv for kv in c.items()))
def test_matches_the_float64_reference(case):
    c = dict(case)
    B, L, Hq, Hkv, D = (c.pop(n) for n in ("B", "L", "Hq", "Hkv", "D"))
    dtype, causal, Lk = c.pop("dtype", torch.float32), c.pop("causal", True), c.pop("Lk", L)
    q, k, v = rand_qkv(B, L, Hq, D, Lk=Lk, Hkv=Hkv, dtype=dtype, seed=L, scale=0.5)
    o, state = linear_attention(q, k, v, causal=causal, output_final_state=True, **c)
    assert o.shape == (B, L, Hq, D) and o.dtype == dtype
    fm = c.get("feature_map", "elu")
    ref, S, z = ref_attention(q, k, v, causal=causal, feature_map=fm,
                              normalize=c.get("normalize", True), scale=c.get("scale"),
                              decay=_ref_decay(c.get("decay"), Hkv))
    assert_close(o, ref, dtype, "out", factor=5)
    assert state[0].dtype == torch.float32 and state[0].shape == (B, Hkv, D, D)
    assert_close(state[0], S, torch.float32 if dtype == torch.float32 else dtype, "S", factor=5)
    assert_close(state[1], z, torch.float32 if dtype == torch.float32 else dtype, "z", factor=5)
    o2, none = linear_attention(q, k, v, causal=causal, **c)
    assert none is None and torch.equal(o2, o)


def test_chaining_through_the_state_equals_one_call():
    q, k, v = rand_qkv(2, 90, 4, 16, Hkv=2, seed=3, scale=0.5)
    whole, (S, z) = linear_attention(q, k, v, decay=[0.97, 0.9], output_final_state=True)
    a, st = linear_attention(q[:, :37], k[:, :37], v[:, :37], decay=[0.97, 0.9],
                             output_final_state=True)
    b, st2 = linear_attention(q[:, 37:], k[:, 37:], v[:, 37:], decay=[0.97, 0.9],
                              initial_state=st, output_final_state=True, position=37)
    assert (torch.cat([a, b], 1) - whole).abs().max() <= 1e-5 * whole.abs().max()
    assert (st2[0] - S).abs().max() <= 1e-5 * S.abs().max()
    assert (st2[1] - z).abs().max() <= 1e-5 * z.abs().max()
    assert st[0].data_ptr() != st2[0].data_ptr()  # the initial state is not written


def test_initial_state_alone_when_unnormalised():
    """fla's convention: with normalize=False the state may be S alone."""
    q, k, v = rand_qkv(1, 20, 2, 16, seed=4)
    S0 = torch.rand(1, 2, 16, 16)
    o, _ = linear_attention(q, k, v, normalize=False, initial_state=S0)
    ref, _, _ = ref_attention(q, k, v, normalize=False, S0=S0, z0=torch.zeros(1, 2, 16))
    assert_close(o, ref, torch.float32, factor=5)
    with pytest.raises(ValueError, match="initial_state=\\(S, z\\)"):
        linear_attention(q, k, v, initial_state=S0)


def _packed(lens, Hq=4, Hkv=2, D=16, seed=5):
    q, k, v = rand_qkv(1, sum(lens), Hq, D, Hkv=Hkv, seed=seed, scale=0.5)
    cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_equals_separate_calls(causal):
    lens = [7, 0, 64, 1, 30]  # an empty one included
    q, k, v, cu = _packed(lens)
    N = len(lens)
    S0, z0 = torch.rand(N, 2, 16, 16), torch.rand(N, 2, 16) + 1
    o, (S, z) = linear_attention(q, k, v, causal=causal, cu_seqlens=cu, initial_state=(S0, z0),
                                 output_final_state=True)
    assert o.shape == q.shape and S.shape == (N, 2, 16, 16) and z.shape == (N, 2, 16)
    for i in range(N):
        s, e = int(cu[i]), int(cu[i + 1])
        if e == s:
            assert torch.equal(S[i], S0[i]) and torch.equal(z[i], z0[i])
            continue
        want, (Si, zi) = linear_attention(q[:, s:e], k[:, s:e], v[:, s:e], causal=causal,
                                          initial_state=(S0[i:i + 1], z0[i:i + 1]),
                                          output_final_state=True)
        assert torch.equal(o[:, s:e], want), "sequence %d" % i
        assert torch.equal(S[i:i + 1], Si) and torch.equal(z[i:i + 1], zi)
        ref, _, _ = ref_attention(q[:, s:e], k[:, s:e], v[:, s:e], causal=causal,
                                  S0=S0[i:i + 1], z0=z0[i:i + 1])
        assert_close(o[:, s:e], ref, torch.float32, "sequence %d" % i, factor=5)


def test_cu_seqlens_errors():
    q, k, v, cu = _packed([5, 6])
    with pytest.raises(ValueError, match="batch must be 1"):
        linear_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1),
                         v.expand(2, -1, -1, -1), cu_seqlens=cu)
    for bad in ([0, 5], [1, 5, 11], [0, 6, 5, 11], [0, 12]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            linear_attention(q, k, v, cu_seqlens=torch.tensor(bad))
    with pytest.raises(ValueError, match="one state per sequence"):
        linear_attention(q, k, v, cu_seqlens=cu,
                         initial_state=(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16)))


def test_errors():
    q, k, v = rand_qkv(1, 8, 4, 16, Hkv=2)
    with pytest.raises(ValueError, match="\\[batch, length, heads, head_dim\\]"):
        linear_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="share dtype"):
        linear_attention(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match="must divide"):
        linear_attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="as many keys as queries"):
        linear_attention(q, k[:, :5], v[:, :5])
    with pytest.raises(ValueError, match="feature_map"):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(ValueError, match="not in \\(0, 1\\]"):
        linear_attention(q, k, v, decay=1.5)
    with pytest.raises(TypeError, match="pair \\(S, z\\)"):
        linear_attention(q, k, v, initial_state=[torch.zeros(1)])
    with pytest.raises(liquid_memory.UnsupportedError, match="decay"):
        linear_attention(q, k, v, causal=False, decay=0.9)


# ---------------------------------------------------------------- gradients

GRAD_TOL = 1e-4


def _close_grads(got, want, names):
    for g, w, n in zip(got, want, names):
        assert g is not None, n
        assert rel_err(g, w) <= GRAD_TOL, "%s: %.3g" % (n, rel_err(g, w))


@needs_backward
@pytest.mark.parametrize("causal", [True, False])
def test_gradients_through_inputs_and_both_states(causal):
    q, k, v = rand_qkv(2, 45, 4, 8, Hkv=2, seed=6, scale=0.5)
    S0, z0 = torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8) + 1
    g = torch.Generator().manual_seed(7)
    w_o, w_S, w_z = (torch.randn(2, 45, 4, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g),
                     torch.randn(2, 2, 8, generator=g))
    ins = [t.clone().requires_grad_() for t in (q, k, v, S0, z0)]
    o, (S, z) = linear_attention(*ins[:3], causal=causal, initial_state=(ins[3], ins[4]),
                                 output_final_state=True)
    got = torch.autograd.grad((o * w_o).sum() + (S * w_S).sum() + (z * w_z).sum(), ins)
    dbl = [t.double().requires_grad_() for t in (q, k, v, S0, z0)]
    ref, Sr, zr = ref_attention(*dbl[:3], causal=causal, S0=dbl[3], z0=dbl[4])
    want = torch.autograd.grad((ref * w_o.double()).sum() + (Sr * w_S.double()).sum() +
                               (zr * w_z.double()).sum(), dbl)
    _close_grads(got, want, ["dq", "dk", "dv", "dS0", "dz0"])


@needs_backward
def test_gradients_through_cu_seqlens():
    q, k, v, cu = _packed([9, 20, 4], Hq=2, Hkv=2, D=8, seed=8)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    o, _ = linear_attention(*ins, cu_seqlens=cu)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(9))
    got = torch.autograd.grad((o * w).sum(), ins)
    dbl = [t.double().requires_grad_() for t in (q, k, v)]
    outs = [ref_attention(*(t[:, int(s):int(e)] for t in dbl))[0]
            for s, e in zip(cu[:-1], cu[1:])]
    want = torch.autograd.grad((torch.cat(outs, 1) * w.double()).sum(), dbl)
    _close_grads(got, want, ["dq", "dk", "dv"])


def test_exported():
    assert liquid_memory.linear_attention is linear_attention
    assert "linear_attention" in liquid_memory.__all__
