"""
test_hybrid.py - hybrid attention (docs/DESIGN.md §9) from Python against a
float64 reference written here from the definition (every query against every
key, the window and evicted sets as masks): the C path (no gradient) and the
differentiable composition at ragged lengths and several (W, s), masks, GQA,
dtypes; both gate forms (window_gate_form "sigmoid" and "exp"); gradients
of q, k, v and window_gate against float64 autograd;
prefill == split prefill == decode steps; LiquidMemory(attention="hybrid")
(forward, training gradients, step, get/set_state, MHA interop, refusals);
torch.compile where torch >= 2.4; CUDA against the CPU where there is a GPU.
"""
import math

import pytest
import torch

from conftest import HAS_CUDA, phi, rand_qkv, rel_err, requires_cuda
from liquid_memory import HybridState, LiquidMemory, _core, _ops, hybrid_attention

# f32 against float64: fp32 accumulation over a few hundred terms.
TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1.5e-3}
GRAD_TOL = 1e-4
WINDOWS = [(64, 4), (16, 0), (1, 0), (1, 3), (7, 2)]


def ref_hybrid(q, k, v, window, sinks, gate=None, mask=None, feature_map="elu", eps=1e-6,
               scale=None, gate_form="sigmoid"):
    """Hybrid attention in float64, differentiable: for query t the window
    {j < s} u (t - W, t] (j <= t) with weights gamma exp(scale q.k - max),
    gamma = sigmoid(g) (or exp(g): gate_form "exp"), the evicted set
    s <= j <= t - W with phi(q).phi(k); masked keys in neither."""
    q, k, v = q.double(), k.double(), v.double()
    B, L, Hq, Dk = q.shape
    G = Hq // k.shape[2]
    k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
    scale = scale or Dk ** -0.5
    t = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    win = (j <= t) & ((j < sinks) | (j > t - window))
    ev = (j <= t) & ~win
    keep = torch.ones(B, 1, 1, L, dtype=torch.bool) if mask is None else ~mask[:, None, None, :]
    logits = torch.einsum("bthd,bjhd->bhtj", q, k) * scale
    wm = win[None, None] & keep
    lg = logits.masked_fill(~wm, float("-inf"))
    m = lg.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    g = torch.zeros(Hq, dtype=torch.float64) if gate is None else gate.double()
    gamma = torch.exp(g) if gate_form == "exp" else torch.sigmoid(g)
    a = gamma[None, :, None, None] * torch.exp(lg - m)
    b = torch.einsum("bthd,bjhd->bhtj", phi(q, feature_map), phi(k, feature_map)) * \
        (ev[None, None] & keep)
    w = a + b
    o = torch.einsum("bhtj,bjhd->bthd", w, v) / (w.sum(-1) + eps).transpose(1, 2)[..., None]
    return o


def _case(B=2, L=100, Hq=4, Hkv=2, D=8, Dv=None, seed=0, dtype=torch.float32, device="cpu"):
    q, k, v = rand_qkv(B, L, Hq, D, Hkv=Hkv, Dv=Dv, seed=seed, dtype=dtype, device=device)
    gate = torch.randn(Hq, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    return q, k, v, gate


def _check(got, want, dtype, what, tol=None):
    assert torch.isfinite(got).all(), "%s: non-finite output" % what
    e = rel_err(got, want)
    bound = tol or TOL[dtype]
    assert e <= bound, "%s: relative error %.3g > %.3g" % (what, e, bound)


def _lengths(W, s):
    return sorted({L for L in (1, W - 1, W, W + 1, s + W + 1, 300) if L >= 1})


FORMS = ["sigmoid", "exp"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("W,s", WINDOWS)
def test_c_path_against_float64(W, s, form):
    for L in _lengths(W, s):
        q, k, v, gate = _case(L=L, seed=L)
        with torch.no_grad():
            out = hybrid_attention(q, k, v, W, s, gate, window_gate_form=form)
        _check(out, ref_hybrid(q, k, v, W, s, gate, gate_form=form), torch.float32,
               "C path W %d s %d L %d %s" % (W, s, L, form))


@pytest.mark.parametrize("T,L", [(1, 7), (3, 10), (5, 5), (8, 40), (64, 300)])
def test_block_pairs_are_unfold_windows_with_a_slice_backward(T, L):
    """The composition's key/value bands (hybrid._block_pairs) are exactly
    unfold(dim, 2T, T)'s windows, values and masks alike, and their backward
    sums each position's two appearances as unfold's does (the composition
    dropped unfold for its scatter-add backward: docs/DESIGN.md 9.5)."""
    from liquid_memory.hybrid import _block_pairs
    nb = -(-L // T)
    pad = (0, 0, T, nb * T - L)
    torch.manual_seed(T * 1000 + L)
    x = torch.randn(2, 3, L, 4, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.pad(x, pad).unfold(2, 2 * T, T).transpose(-1, -2)
    got = _block_pairs(torch.nn.functional.pad(x, pad), T, 2)
    assert got.shape == (2, 3, nb, 2 * T, 4) and torch.equal(got, want)
    g = torch.randn(got.shape, dtype=torch.float64)
    (gw,) = torch.autograd.grad(want, x, g)
    (gg,) = torch.autograd.grad(got, x, g)
    assert torch.allclose(gg, gw, rtol=0, atol=1e-12)
    keep = torch.rand(2, L) < 0.5
    kpad = torch.nn.functional.pad(keep, (T, nb * T - L))
    assert torch.equal(_block_pairs(kpad, T, 1), kpad.unfold(1, 2 * T, T))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("W,s", WINDOWS)
def test_composition_and_gradients_against_float64(W, s, form):
    """The training path: values and the gradients of q, k, v and window_gate
    (under "exp" d gamma / d g = gamma, under "sigmoid" gamma (1 - gamma))."""
    for L in _lengths(W, s):
        q, k, v, gate = _case(L=L, seed=L + 7, D=8, Dv=6)
        mask = torch.rand(2, L, generator=torch.Generator().manual_seed(L)) < 0.2
        ins = [t.clone().requires_grad_() for t in (q, k, v, gate)]
        out = hybrid_attention(*ins[:3], W, s, ins[3], key_padding_mask=mask,
                               window_gate_form=form)
        refs = [t.clone().double().requires_grad_() for t in (q, k, v, gate)]
        want = ref_hybrid(*refs[:3], W, s, refs[3], mask=mask, gate_form=form)
        _check(out, want, torch.float32, "composition W %d s %d L %d %s" % (W, s, L, form))
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        got = torch.autograd.grad((out * w).sum(), ins)
        exp = torch.autograd.grad((want * w.double()).sum(), refs)
        for g, e, name in zip(got, exp, ("q", "k", "v", "window_gate")):
            assert torch.isfinite(g).all(), name
            # Relative, with an absolute floor: while no token has been evicted gamma
            # cancels and the gate's exact gradient is O(eps) (~1e-5 here), where fp32
            # leaves ~1e-6 (measured: <= 2.8e-6 over these cases).
            err = float((g.double() - e).norm())
            assert err <= GRAD_TOL * float(e.norm()) + 1e-5, \
                "d%s (W %d s %d L %d %s): error %.3g, norm %.3g" % (name, W, s, L, form, err,
                                                                    e.norm())


def test_long_sequence_c_path_equals_composition():
    """4097 tokens: the C path and the composition agree (the float64 reference
    at this length is the C suites'), and the first 300 rows match float64."""
    q, k, v, gate = _case(B=1, L=4097, Hq=2, Hkv=1, D=8, seed=11)
    with torch.no_grad():
        c_out = hybrid_attention(q, k, v, 64, 4, gate)
        comp, _ = _hybrid_composed(q, k, v, 64, 4, gate)
    _check(c_out, comp.double(), torch.float32, "C path vs composition at 4097")
    _check(c_out[:, :300], ref_hybrid(q[:, :300], k[:, :300], v[:, :300], 64, 4, gate),
           torch.float32, "first 300 rows")


def _hybrid_composed(q, k, v, W, s, gate, mask=None):
    from liquid_memory import hybrid
    return hybrid.composed(q, k, v, mask, W, s, gate, _core.Options(), want_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    q, k, v, gate = _case(L=150, dtype=dtype, seed=5)
    with torch.no_grad():
        out = hybrid_attention(q, k, v, 16, 3, gate)
    assert out.dtype == dtype
    _check(out, ref_hybrid(q, k, v, 16, 3, gate), dtype, "C path %s" % dtype)


def test_gqa_masks_relu_and_scale():
    q, k, v, gate = _case(B=3, L=130, Hq=6, Hkv=2, D=8, seed=6)
    mask = torch.rand(3, 130, generator=torch.Generator().manual_seed(1)) < 0.3
    mask[2] = True  # every key of a row masked: its output is 0
    for fm in ("elu", "relu"):
        with torch.no_grad():
            out = hybrid_attention(q, k, v, 9, 2, gate, mask, feature_map=fm, scale=0.2)
        want = ref_hybrid(q, k, v, 9, 2, gate, mask, feature_map=fm, scale=0.2)
        _check(out[:2], want[:2], torch.float32, "GQA + mask + %s" % fm)
        assert (out[2] == 0).all()


@pytest.mark.parametrize("form", FORMS)
def test_split_prefill_and_steps_equal_whole(form):
    """prefill == prefill + prefill (state carried) == decode steps, and the
    final states agree; a state continues only without gradients."""
    from liquid_memory import hybrid
    q, k, v, gate = _case(L=90, seed=8)
    mask = torch.rand(2, 90, generator=torch.Generator().manual_seed(2)) < 0.2
    W, s = 12, 3
    with torch.no_grad():
        whole, st = hybrid_attention(q, k, v, W, s, gate, mask, return_state=True,
                                     window_gate_form=form)
        _check(whole, ref_hybrid(q, k, v, W, s, gate, mask, gate_form=form), torch.float32,
               "whole, %s" % form)
        for cut in (1, W - 1, W, s + W + 1, 50):
            a, st1 = hybrid_attention(q[:, :cut], k[:, :cut], v[:, :cut], W, s, gate, mask[:, :cut],
                                      return_state=True, window_gate_form=form)
            b, st2 = hybrid_attention(q[:, cut:], k[:, cut:], v[:, cut:], W, s, gate, mask[:, cut:],
                                      state=st1, return_state=True, window_gate_form=form)
            assert torch.allclose(torch.cat([a, b], 1), whole, rtol=1e-5, atol=1e-6), cut
            assert st2.position == 90
            for x, y in zip(st2[:5], st[:5]):
                assert torch.allclose(x.float(), y.float(), rtol=1e-5, atol=1e-5), cut
        steps = hybrid.empty_state(2, 2, 8, 8, W, s, "cpu")
        outs = []
        opts = _core.Options()
        g = [float(x) for x in gate]
        for t in range(90):
            outs.append(hybrid.decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], steps, W, s, g, opts,
                                      hybrid.GATE_FORMS[form]))
            steps = steps._replace(position=steps.position + 1)
    # decode takes no mask: compare with the unmasked prefill
    with torch.no_grad():
        nomask = hybrid_attention(q, k, v, W, s, gate, window_gate_form=form)
    assert torch.allclose(torch.cat(outs, 1), nomask, rtol=1e-5, atol=1e-6)
    q.requires_grad_()
    with pytest.raises(NotImplementedError, match="starts from an empty state"):
        hybrid_attention(q, k, v, W, s, gate, state=st)


def test_bad_arguments():
    q, k, v, gate = _case(L=10)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        hybrid_attention(q, k, v, 0, 4)
    with pytest.raises(ValueError, match="sinks must be an int >= 0"):
        hybrid_attention(q, k, v, 8, -1)
    with pytest.raises(ValueError, match="window_gate has shape"):
        with torch.no_grad():
            hybrid_attention(q, k, v, 8, 2, torch.zeros(3))
    with pytest.raises(ValueError, match="window_gate_form must be 'sigmoid'.*or 'exp'"):
        hybrid_attention(q, k, v, 8, 2, gate, window_gate_form="tanh")


def test_exp_gate_bound():
    """The C paths refuse an exp gate's logit beyond +-LM_HYBRID_GATE_EXP_MAX
    (40: exp(g) and the window's fp32 sums cannot overflow) with the library's
    message; at the bound the output matches float64 (the window takes over,
    or vanishes); the sigmoid form takes any finite logit."""
    q, k, v, _ = _case(L=40, Hq=4, seed=12)
    bound = float(_core.C["LM_HYBRID_GATE_EXP_MAX"])
    assert bound == 40
    edge = torch.tensor([-bound, bound, 0.0, 3.0])
    with torch.no_grad():
        out = hybrid_attention(q, k, v, 6, 1, edge, window_gate_form="exp")
        _check(out, ref_hybrid(q, k, v, 6, 1, edge, gate_form="exp"), torch.float32, "exp at +-40")
        big = torch.tensor([0.0, 40.5, 0.0, 0.0])
        with pytest.raises(ValueError, match=r"window_gate\[1\] = 40.5 is outside \[-40, 40\]"):
            hybrid_attention(q, k, v, 6, 1, big, window_gate_form="exp")
        _check(hybrid_attention(q, k, v, 6, 1, big), ref_hybrid(q, k, v, 6, 1, big),
               torch.float32, "sigmoid at 40.5")


# ---------------------------------------------------------------------------
# LiquidMemory(attention="hybrid")
# ---------------------------------------------------------------------------

def _ref_module(m, x, mask=None):
    """The module in float64: projections, ref_hybrid, out projection."""
    E, H, Hkv, D = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim
    w, b = m.in_proj_weight.double(), m.in_proj_bias.double()
    kv = Hkv * D
    lin = torch.nn.functional.linear
    B = x.shape[0]
    q = lin(x.double(), w[:E], b[:E]).view(B, -1, H, D)
    k = lin(x.double(), w[E:E + kv], b[E:E + kv]).view(B, -1, Hkv, D)
    v = lin(x.double(), w[E + kv:], b[E + kv:]).view(B, -1, Hkv, D)
    o = ref_hybrid(q, k, v, m.window, m.sinks, m.window_gate, mask,
                   gate_form=m.window_gate_form).reshape(B, -1, E)
    return lin(o, m.out_proj.weight.double(), m.out_proj.bias.double())


def _module(seed=0, **kw):
    torch.manual_seed(seed)
    m = LiquidMemory(32, 4, batch_first=kw.pop("batch_first", True), attention="hybrid",
                     window=kw.pop("window", 8),
                     sinks=kw.pop("sinks", 2), **kw)
    with torch.no_grad():
        m.window_gate.normal_()
    return m


@pytest.mark.parametrize("form", FORMS)
def test_module_forward_train_and_eval(form):
    m = _module(num_kv_heads=2, window_gate_form=form)
    x = torch.randn(2, 70, 32)
    mask = torch.rand(2, 70) < 0.2
    with torch.no_grad():
        out, w = m(x, x, x, key_padding_mask=mask, is_causal=True, need_weights=False)
    assert w is None
    want = _ref_module(m, x, mask)
    _check(out, want, torch.float32, "module, no grad (C path)")
    out2, _ = m(x, x, x, key_padding_mask=mask, is_causal=True, need_weights=False)
    _check(out2, want, torch.float32, "module with autograd (composition)")
    # Gradients of every parameter, window_gate included, against float64.
    wts = torch.randn(out2.shape)
    (out2 * wts).sum().backward()
    params = dict(m.named_parameters())
    ref_params = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    m64 = _module(num_kv_heads=2, window_gate_form=form).double()
    m64.load_state_dict({n: p for n, p in ref_params.items()})
    ref = _ref_module(m64, x.double(), mask)
    grads = torch.autograd.grad((ref * wts.double()).sum(), list(m64.parameters()))
    for (n, p), g in zip(m64.named_parameters(), grads):
        err = rel_err(params[n].grad, g)
        assert err <= GRAD_TOL, "d%s: relative error %.3g" % (n, err)
    assert params["window_gate"].grad.abs().sum() > 0


def test_module_seq_first_and_unbatched():
    m = _module(seed=1, batch_first=False)
    x = torch.randn(30, 2, 32)  # [L, B, E]
    with torch.no_grad():
        out, _ = m(x, x, x, is_causal=True, need_weights=False)
        _check(out.transpose(0, 1), _ref_module(m, x.transpose(0, 1)), torch.float32, "seq-first")
        u, _ = m(x[:, 0], x[:, 0], x[:, 0], is_causal=True, need_weights=False)
    _check(u, _ref_module(m, x[:, :1].transpose(0, 1))[0], torch.float32, "unbatched")


@pytest.mark.parametrize("form", FORMS)
def test_module_step_and_state(form):
    """forward then step() == one forward; get/set_state replays; a fork continues."""
    m = _module(seed=2, window_gate_form=form)
    x = torch.randn(2, 60, 32)
    with torch.no_grad():
        whole, _ = m(x, x, x, is_causal=True, need_weights=False)
        m(x[:, :25], x[:, :25], x[:, :25], is_causal=True, need_weights=False)
        assert m.state_position == 25
        saved = m.get_state()
        assert set(saved) >= {"S", "z", "window_keys", "window_values", "window_pos", "position"}
        steps = torch.stack([m.step(x[:, t]) for t in range(25, 60)], 1)
        assert torch.allclose(steps, whole[:, 25:], rtol=1e-5, atol=1e-6)
        m.set_state(saved)
        again = torch.stack([m.step(x[:, t]) for t in range(25, 60)], 1)
        assert torch.equal(again, steps)
        fork = _module(seed=2, window_gate_form=form)
        fork.load_state_dict(m.state_dict())
        fork.set_state(saved)
        assert torch.equal(torch.stack([fork.step(x[:, t]) for t in range(25, 60)], 1), steps)
        m.reset_state()
        assert m.get_state() is None
        alone = torch.stack([m.step(x[:, t]) for t in range(60)], 1)
    assert torch.allclose(alone, whole, rtol=1e-5, atol=1e-6)


def test_module_mha_interop_and_refusals():
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    m = LiquidMemory.from_mha(mha, attention="hybrid", window=8, sinks=2)
    assert torch.equal(m.window_gate, torch.zeros(4))  # an MHA has no gate: it stays at 0
    assert torch.equal(m.in_proj_weight, mha.in_proj_weight)
    back = m.to_mha()
    assert torch.equal(back.out_proj.weight, mha.out_proj.weight)
    assert "attention='hybrid', window=8, sinks=2" in repr(m)
    x = torch.randn(1, 10, 32)
    with pytest.raises(NotImplementedError, match="hybrid.*is causal"):
        m(x, x, x, need_weights=False)
    with pytest.raises(ValueError, match="add_bias_kv"):
        LiquidMemory(32, 4, attention="hybrid", add_bias_kv=True)
    with pytest.raises(ValueError, match="no decay"):
        LiquidMemory(32, 4, attention="hybrid", decay=0.9)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        LiquidMemory(32, 4, attention="hybrid", window=0)
    with pytest.raises(ValueError, match="attention must be"):
        LiquidMemory(32, 4, attention="softmax")
    assert "window_gate_form='sigmoid'" in repr(m)
    e = LiquidMemory.from_mha(mha, attention="hybrid", window_gate_form="exp")  # a conversion
    assert e.window_gate_form == "exp" and "window_gate_form='exp'" in repr(e)
    assert torch.equal(e.in_proj_weight, mha.in_proj_weight)
    with pytest.raises(ValueError, match="window_gate_form must be"):
        LiquidMemory(32, 4, attention="hybrid", window_gate_form="softplus")
    with pytest.raises(ValueError, match="window_gate_form is an option of attention='hybrid'"):
        LiquidMemory(32, 4, window_gate_form="exp")


def test_module_exp_gate_state_and_decode_bound():
    """The gate's form is the module's, not the state's: a state from a
    sigmoid module loads into an exp one (same shapes) and continues with exp
    weights; a decode step with an exp logit past 40 is refused."""
    x = torch.randn(1, 30, 32)
    sig, ex = _module(seed=5), _module(seed=5, window_gate_form="exp")
    ex.load_state_dict(sig.state_dict())
    with torch.no_grad():
        sig(x[:, :20], x[:, :20], x[:, :20], is_causal=True, need_weights=False)
        ex.set_state(sig.get_state())
        got = torch.stack([ex.step(x[:, t]) for t in range(20, 30)], 1)
        ex.reset_state()
        whole, _ = ex(x, x, x, is_causal=True, need_weights=False)
        assert torch.allclose(got, whole[:, 20:], rtol=1e-5, atol=1e-6)
        ex.window_gate[0] = 41.0
        with pytest.raises(ValueError, match="outside"):
            ex.step(x[:, 0])


def test_linear_module_is_unchanged():
    m = LiquidMemory(32, 4)
    assert m.attention == "linear"
    assert "window_gate" not in dict(m.named_parameters())


# ---------------------------------------------------------------------------
# torch.compile (torch >= 2.4) and CUDA
# ---------------------------------------------------------------------------

needs_custom_op = pytest.mark.skipif(
    not _ops.USE_CUSTOM_OP, reason="torch %s has no torch.library.custom_op (needs >= 2.4): "
    "no torch.compile path to test" % torch.__version__)
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@needs_custom_op
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(device, form):
    m = _module(seed=3, window_gate_form=form).to(device)
    x = torch.randn(2, 40, 32, device=device)
    out, _ = m(x, x, x, is_causal=True, need_weights=False)
    out.square().sum().backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    cm = torch.compile(m, fullgraph=True)
    out_c, _ = cm(x, x, x, is_causal=True, need_weights=False)
    out_c.square().sum().backward()
    assert torch.allclose(out_c, out, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want[n], rtol=1e-4, atol=1e-5), n
    with torch.no_grad():  # the compiled forward left its state: step() continues it
        m.reset_state()
        cm(x[:, :30], x[:, :30], x[:, :30], is_causal=True, need_weights=False)
        assert m.state_position == 30
        got = torch.stack([m.step(x[:, t]) for t in range(30, 40)], 1)
    assert torch.allclose(got, out[:, 30:].detach(), rtol=1e-4, atol=1e-5)


@needs_custom_op
def test_opcheck_hybrid_decode():
    from liquid_memory import hybrid
    q, k, v = rand_qkv(2, 1, 4, 8, Hkv=2, seed=4)
    st = hybrid.empty_state(2, 2, 8, 8, 6, 2, "cpu")
    torch.library.opcheck(torch.ops.liquid_memory.hybrid_decode.default,
                          (q, k, v, st.S, st.z, st.keys, st.values, st.pos, 0, 6, 2,
                           [0.5, -0.5, 0.0, 1.0], 0, 1e-6, 0.0, 0, 1))


@requires_cuda
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_float64_and_cpu(dtype, form):
    for W, s in WINDOWS:
        q, k, v, gate = _case(L=300, D=64, seed=W, dtype=dtype, device="cuda")
        mask = torch.rand(2, 300, device="cuda") < 0.2
        with torch.no_grad():
            out, st = hybrid_attention(q, k, v, W, s, gate, mask, return_state=True,
                                       window_gate_form=form)
            cpu, st_cpu = hybrid_attention(q.cpu(), k.cpu(), v.cpu(), W, s, gate.cpu(), mask.cpu(),
                                           return_state=True, window_gate_form=form)
        want = ref_hybrid(q.cpu(), k.cpu(), v.cpu(), W, s, gate.cpu(), mask.cpu(), gate_form=form)
        # f32 on the GPU: bf16 hi + lo products (as tests/gpu/test_gpu_hybrid.c states)
        _check(out.cpu(), want, dtype, "CUDA W %d s %d" % (W, s),
               tol=1e-4 if dtype == torch.float32 else 2 * TOL[dtype])
        assert torch.equal(st.pos.cpu(), st_cpu.pos)
        assert torch.equal(st.keys.cpu(), st_cpu.keys)
        assert rel_err(st.S.cpu(), st_cpu.S) < 1e-2


@requires_cuda
@pytest.mark.parametrize("form", FORMS)
def test_cuda_module_training_and_graph_step(form):
    m = _module(seed=4, num_kv_heads=2, window_gate_form=form).cuda()
    x = torch.randn(2, 200, 32, device="cuda")
    out, _ = m(x, x, x, is_causal=True, need_weights=False)
    out.square().sum().backward()
    assert torch.isfinite(m.window_gate.grad).all() and m.window_gate.grad.abs().sum() > 0
    with torch.no_grad():
        whole, _ = m(x, x, x, is_causal=True, need_weights=False)
        m(x[:, :150], x[:, :150], x[:, :150], is_causal=True, need_weights=False)
        xs = torch.empty(2, 32, device="cuda")
        xs.copy_(x[:, 150])
        y = m.step(xs)  # warm-up (buffers exist), then capture one step
        m(x[:, :150], x[:, :150], x[:, :150], is_causal=True, need_weights=False)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = m.step(xs)
        outs = []
        for t in range(150, 200):  # replays: the position comes from the device state
            xs.copy_(x[:, t])
            g.replay()
            outs.append(y.clone())
    assert torch.allclose(torch.stack(outs, 1), whole[:, 150:], rtol=1e-3, atol=1e-4)
