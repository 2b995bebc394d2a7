"""
test_compile.py - the custom ops (torch >= 2.4: torch.library.custom_op with
fake implementations and register_autograd) checked with
torch.library.opcheck, torch.compile(fullgraph=True) == eager (CPU here, CUDA
in test_cuda.py), and the eager fallback on older torch.
"""
import pytest
import torch

from conftest import HAS_CUDA, TORCH_VERSION, rand_qkv
from liquid_memory import LiquidMemory, _core, _ops, linear_attention

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")
needs_custom_op = pytest.mark.skipif(
    not _ops.USE_CUSTOM_OP, reason="torch %s has no torch.library.custom_op (needs >= 2.4), or "
    "LM_PY_CUSTOM_OP=0: the module runs eagerly (test_eager_fallback)" % torch.__version__)
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def test_eager_fallback_or_custom_op():
    """Whichever path this torch takes, the registration matches it and works."""
    if HAS_CUSTOM_OP and _ops.USE_CUSTOM_OP:
        assert hasattr(torch.ops.liquid_memory, "prefill")
        assert hasattr(torch.ops.liquid_memory, "decode")
        assert hasattr(torch.ops.liquid_memory, "prefill_backward")
    else:
        assert not _ops.USE_CUSTOM_OP
        assert not hasattr(torch.ops, "liquid_memory") or \
            not hasattr(torch.ops.liquid_memory, "prefill")
    q, k, v = rand_qkv(1, 9, 2, 8)
    out, _, _ = _ops.prefill(q, k, v)
    assert torch.isfinite(out).all()


def _opcheck_args(device, with_state):
    q, k, v = rand_qkv(2, 70, 4, 8, Hkv=2, seed=3, device=device)
    mask = torch.zeros(2, 70, dtype=torch.bool, device=device)
    mask[1, 60:] = True
    S0 = z0 = None
    if with_state:
        S0 = torch.rand(2, 2, 8, 8, device=device)
        z0 = torch.rand(2, 2, 8, device=device) + 1
    for t in (q, k, v):
        t.requires_grad_()
    if S0 is not None:
        S0.requires_grad_()
        z0.requires_grad_()
    return (q, k, v, mask, S0, z0, 5 if with_state else 0, True, 0, True, 1e-6, 0.0, None, 0,
            False, True)


@needs_custom_op
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_state", [False, True])
def test_opcheck_prefill(device, with_state):
    torch.library.opcheck(torch.ops.liquid_memory.prefill.default,
                          _opcheck_args(device, with_state))


@needs_custom_op
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_decode(device):
    q, k, v = rand_qkv(2, 1, 4, 8, Hkv=2, seed=4, device=device)
    S = torch.rand(2, 2, 8, 8, device=device)
    z = torch.rand(2, 2, 8, device=device) + 1
    torch.library.opcheck(torch.ops.liquid_memory.decode.default,
                          (q, k, v, S, z, 3, 0, True, 1e-6, 0.0, None, 0))


@needs_custom_op
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [True, False])
def test_compile_fullgraph_matches_eager(device, causal):
    torch.manual_seed(0)
    m = LiquidMemory(64, 4, batch_first=True, device=device).eval()
    x = torch.randn(2, 50, 64, device=device)
    kpm = torch.zeros(2, 50, dtype=torch.bool, device=device)
    kpm[1, 40:] = True
    with torch.no_grad():
        eager, _ = m(x, x, x, key_padding_mask=kpm, is_causal=causal, need_weights=False)
        cm = torch.compile(m, fullgraph=True)
        compiled, _ = cm(x, x, x, key_padding_mask=kpm, is_causal=causal, need_weights=False)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)
    if causal:  # the compiled forward left its state, so step continues from it
        assert m.state_position == 50
        with torch.no_grad():  # step() refuses a recording autograd (it is inference only)
            assert torch.isfinite(m.step(x[:, -1])).all()


@needs_custom_op
@pytest.mark.parametrize("device", DEVICES)
def test_compile_training_matches_eager(device):
    if not _core.has_backward():
        pytest.skip("no lm_linear_attn_backward in the library under test")
    torch.manual_seed(1)
    m = LiquidMemory(64, 4, batch_first=True, device=device)
    x = torch.randn(2, 40, 64, device=device)
    out, _ = m(x, x, x, is_causal=True, need_weights=False)
    out.square().sum().backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    cm = torch.compile(m, fullgraph=True)
    out_c, _ = cm(x, x, x, is_causal=True, need_weights=False)
    out_c.square().sum().backward()
    assert torch.allclose(out_c, out, rtol=1e-5, atol=1e-6)
    for p, w in zip(m.parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-4, atol=1e-5)


@needs_custom_op
def test_compiled_mask_is_not_inspected():
    """Under compile an attn_mask cannot be checked: a clear error asks for is_causal."""
    m = LiquidMemory(32, 4, batch_first=True)
    x = torch.randn(1, 8, 32)
    mask = torch.ones(8, 8, dtype=torch.bool).triu(1)
    cm = torch.compile(m, fullgraph=True)
    with pytest.raises(Exception) as e:
        cm(x, x, x, attn_mask=mask, need_weights=False)
    chain = [e.value, e.value.__cause__, e.value.__context__]
    assert any("is_causal=True" in str(c) for c in chain if c is not None), repr(e.value)
    out, _ = cm(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
    assert torch.allclose(out, m(x, x, x, is_causal=True, need_weights=False)[0], atol=1e-6)


@needs_custom_op
@pytest.mark.parametrize("device", DEVICES)
def test_linear_attention_compiles_fullgraph(device):
    """The functional API traces through the custom op: outputs, final state
    and gradients (inputs and initial state) as eager."""
    q, k, v = rand_qkv(2, 50, 4, 16, Hkv=2, device=device, seed=10, scale=0.5)
    S0 = torch.rand(2, 2, 16, 16, device=device)
    z0 = torch.rand(2, 2, 16, device=device) + 1

    def f(q, k, v, S0, z0):
        o, (S, z) = linear_attention(q, k, v, decay=0.95, initial_state=(S0, z0),
                                     output_final_state=True, position=7)
        return o, S, z
    compiled = torch.compile(f, fullgraph=True)
    results = []
    for fn in (f, compiled):
        ins = [t.clone().requires_grad_() for t in (q, k, v, S0, z0)]
        o, S, z = fn(*ins)
        grads = torch.autograd.grad(o.square().sum() + S.sum() + z.sum(), ins)
        results.append([o, S, z] + list(grads))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_state_writable_asks_nothing_while_compiling(monkeypatch):
    """Dynamo cannot trace torch.is_inference_mode_enabled() or Tensor.is_inference()
    (a graph break: fullgraph=True failed on both calls in the state's store and
    reset); while compiling, the state-writable test must not make them."""
    def refuse(*args, **kwargs):
        raise AssertionError("asked about inference mode while compiling")
    buf = torch.zeros(3)
    monkeypatch.setattr(_ops, "compiling", lambda: True)
    monkeypatch.setattr(torch, "is_inference_mode_enabled", refuse)
    monkeypatch.setattr(torch.Tensor, "is_inference", refuse)
    assert _ops.writable(buf)


def test_state_from_inference_mode_replaced_outside_it():
    """Eagerly the question is still asked: a state made under inference_mode()
    is an inference tensor, written in place inside it and replaced outside it."""
    m = LiquidMemory(16, 2, batch_first=True)
    x = torch.randn(2, 9, 16)
    with torch.inference_mode():
        m(x, x, x, is_causal=True, need_weights=False)
        assert m.state_S.is_inference() and _ops.writable(m.state_S)
    assert not _ops.writable(m.state_S)
    m(x, x, x, is_causal=True, need_weights=False, keep_state=True)  # replaced, not written in place
    assert not m.state_S.is_inference() and _ops.writable(m.state_S)
    m.reset_state()
    assert m.state_S.abs().sum() == 0
