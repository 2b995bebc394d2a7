"""
test_grad.py - gradients through lm_linear_attn_backward against torch
autograd on the float64 reference: core (q, k, v, initial state, final
state), masks, GQA, decay, bidirectional; the module's parameters; and the
clear error of a library without the backward.
"""
import pytest
import torch

import liquid_memory
from conftest import rand_qkv, ref_attention, ref_module, rel_err
from liquid_memory import LiquidMemory, _core, _ffi, _ops

# fp32 kernels against a float64 reference: relative L2 error bound
GRAD_TOL = 1e-4

needs_backward = pytest.mark.skipif(
    not _core.has_backward(), reason="the library under test has no lm_linear_attn_backward yet "
    "(test_backward_missing_is_a_clear_error covers that case)")


def _grads(outputs, weights, inputs):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _check(got, want, names):
    for g, w, n in zip(got, want, names):
        assert g is not None and w is not None, n
        assert torch.isfinite(g).all(), "%s: non-finite gradient" % n
        e = rel_err(g, w)
        assert e <= GRAD_TOL, "%s: relative error %.3g > %.3g" % (n, e, GRAD_TOL)


CASES = [
    dict(B=2, L=70, Hq=2, Hkv=2, causal=True),
    dict(B=2, L=130, Hq=2, Hkv=2, causal=False),
    dict(B=1, L=65, Hq=4, Hkv=2, causal=True),
    dict(B=2, L=40, Hq=3, Hkv=1, causal=False, Lk=90),
    dict(B=2, L=100, Hq=2, Hkv=2, causal=True, mask=True),
    dict(B=2, L=50, Hq=2, Hkv=2, causal=False, mask=True),
    dict(B=1, L=129, Hq=2, Hkv=2, causal=True, decay=[0.95, 0.8]),
    dict(B=1, L=33, Hq=2, Hkv=2, causal=True, feature_map="relu"),
    dict(B=1, L=33, Hq=2, Hkv=2, causal=True, normalize=False),
]


@needs_backward
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join("%s%s" % kv for kv in c.items()))
def test_core_gradients(case):
    c = dict(case)
    B, L, Hq, Hkv, causal = c.pop("B"), c.pop("L"), c.pop("Hq"), c.pop("Hkv"), c.pop("causal")
    Lk = c.pop("Lk", L)
    q, k, v = rand_qkv(B, L, Hq, 8, Lk=Lk, Hkv=Hkv, Dv=6, seed=L, scale=0.5)
    mask = None
    if c.pop("mask", False):
        mask = torch.rand(B, Lk, generator=torch.Generator().manual_seed(1)) < 0.3
    fm, normalize, decay = c.pop("feature_map", "elu"), c.pop("normalize", True), c.pop("decay", None)
    opts = _core.Options(_core.FEATURE_MAPS[fm], normalize, 1e-6, 0.0, decay)
    w = torch.randn(B, L, Hq, 6, generator=torch.Generator().manual_seed(2))
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out, _, _ = _ops.prefill(qs, ks, vs, mask, is_causal=causal, opts=opts)
    got = _grads([out], [w], [qs, ks, vs])
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref, _, _ = ref_attention(qd, kd, vd, mask=mask, causal=causal, feature_map=fm,
                              normalize=normalize, decay=decay)
    want = _grads([ref], [w.double()], [qd, kd, vd])
    _check(got, want, ["dq", "dk", "dv"])


@needs_backward
@pytest.mark.parametrize("causal", [True, False])
def test_state_gradients(causal):
    """Initial state in, final state out: dS0, dz0 and the dstate_out path."""
    B, L, H, D = 2, 75, 2, 8
    q, k, v = rand_qkv(B, L, H, D, seed=3, scale=0.5)
    g = torch.Generator().manual_seed(4)
    S0 = torch.rand(B, H, D, D, generator=g)
    z0 = torch.rand(B, H, D, generator=g) + 1.0
    wo, wS, wz = (torch.randn(s, generator=g) for s in ((B, L, H, D), (B, H, D, D), (B, H, D)))
    ins = [t.clone().requires_grad_() for t in (q, k, v, S0, z0)]
    out, S, z = _ops.prefill(ins[0], ins[1], ins[2], None, ins[3], ins[4], position=10,
                             is_causal=causal)
    got = _grads([out, S, z], [wo, wS, wz], ins)
    ref_in = [t.double().requires_grad_() for t in (q, k, v, S0, z0)]
    ref, S_ref, z_ref = ref_attention(*ref_in[:3], causal=causal, S0=ref_in[3], z0=ref_in[4])
    want = _grads([ref, S_ref, z_ref], [wo.double(), wS.double(), wz.double()], ref_in)
    _check(got, want, ["dq", "dk", "dv", "dS0", "dz0"])


@needs_backward
@pytest.mark.parametrize("cfg", [dict(), dict(add_bias_kv=True, add_zero_attn=True),
                                 dict(kdim=20, vdim=12, bias=False), dict(num_kv_heads=2)])
@pytest.mark.parametrize("causal", [True, False])
def test_module_parameter_gradients(cfg, causal):
    if causal and "kdim" in cfg:
        causal = False  # cross-attention is bidirectional
    torch.manual_seed(5)
    m = LiquidMemory(32, 4, batch_first=True, **cfg)
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 24, 32, generator=g)
    k = torch.randn(2, 24, m.kdim, generator=g) if "kdim" in cfg else q
    v = torch.randn(2, 24, m.vdim, generator=g) if "vdim" in cfg else q
    w = torch.randn(2, 24, 32, generator=g)
    params = [p for p in m.parameters()]
    out, _ = m(q, k, v, is_causal=causal, need_weights=False)
    got = _grads([out], [w], params)
    want = _grads([ref_module(m, q, k, v, causal=causal)], [w.double()], params)
    names = [n for n, _ in m.named_parameters()]
    _check(got, want, names)


@needs_backward
def test_training_step_changes_the_loss():
    torch.manual_seed(7)
    m = LiquidMemory(32, 4, batch_first=True)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.randn(4, 20, 32)
    target = torch.randn(4, 20, 32)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (m(x, x, x, is_causal=True, need_weights=False)[0] - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0]


def test_backward_missing_is_a_clear_error(monkeypatch):
    lib = _ffi.binding()
    monkeypatch.setattr(lib, "has", lambda name: name != "lm_linear_attn_backward")
    m = LiquidMemory(32, 4, batch_first=True)
    x = torch.randn(1, 5, 32, requires_grad=True)
    out, _ = m(x, x, x, is_causal=True, need_weights=False)  # forward still works
    assert torch.isfinite(out).all()
    with pytest.raises(liquid_memory.MissingSymbolError, match="lm_linear_attn_backward"):
        out.sum().backward()


def test_backward_symbol_state_is_reported():
    info = liquid_memory.library_info()
    assert info["backward"] == _ffi.binding().has("lm_linear_attn_backward")
