"""
test_decode.py - step() after a causal forward equals the forward over the
longer sequence; reset_state; get_state/set_state (save, restore, fork);
the batch-change error; bias_kv/zero_attn in decode; the state stays fp32
through dtype casts; step() refuses autograd; keep_state.

Decoding is inference, so every test runs under torch.no_grad() unless it
turns grad mode on itself (step() refuses to run while autograd records).
"""
import pytest
import torch

import liquid_memory
from conftest import assert_close, ref_module
from liquid_memory import LiquidMemory

E, H = 32, 4


def x_(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _inference():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("cfg", [dict(), dict(num_kv_heads=2), dict(decay="retnet"),
                                 dict(add_bias_kv=True, add_zero_attn=True),
                                 dict(feature_map="relu", bias=False)])
@pytest.mark.parametrize("batch_first", [True, False])
def test_step_continues_forward(cfg, batch_first):
    torch.manual_seed(0)
    m = LiquidMemory(E, H, batch_first=batch_first, **cfg).eval()
    B, L1, L2 = 2, 30, 12
    x = x_(B, L1 + L2, E, seed=1)
    full = ref_module(m, x, x, x, causal=True)
    xp = x[:, :L1] if batch_first else x[:, :L1].transpose(0, 1)
    out, _ = m(xp, xp, xp, is_causal=True, need_weights=False)
    assert m.state_position == L1 + (2 if cfg.get("add_bias_kv") else 0)
    steps = torch.stack([m.step(x[:, t]) for t in range(L1, L1 + L2)], 1)
    assert_close(steps, full[:, L1:], torch.float32, "steps", factor=5)
    assert m.state_position == L1 + L2 + (2 if cfg.get("add_bias_kv") else 0)


def test_step_from_empty_equals_forward():
    torch.manual_seed(1)
    m = LiquidMemory(E, H, add_bias_kv=True).eval()
    x = x_(3, 10, E, seed=2)
    steps = torch.stack([m.step(x[:, t]) for t in range(10)], 1)
    assert_close(steps, ref_module(m, x, x, x, causal=True), torch.float32, factor=5)


def test_step_unbatched():
    m = LiquidMemory(E, H)
    x = x_(6, E, seed=3)
    outs = torch.stack([m.step(x[t]) for t in range(6)])
    assert outs.shape == (6, E)
    assert_close(outs[None], ref_module(m, x[None], x[None], x[None], causal=True),
                 torch.float32, factor=5)


def test_batch_change_needs_reset():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 5, E)
    m(x, x, x, is_causal=True, need_weights=False)
    with pytest.raises(liquid_memory.StateError, match="batch of 2.*reset_state"):
        m.step(x_(3, E))
    m.reset_state()
    assert m.state_position == 0 and m.get_state() is None
    y = m.step(x_(3, E, seed=4))
    assert y.shape == (3, E) and m.state_position == 1


def test_reset_starts_empty():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(1, 8, E, seed=5)
    m(x, x, x, is_causal=True, need_weights=False)
    m.reset_state()
    steps = torch.stack([m.step(x[:, t]) for t in range(8)], 1)
    assert_close(steps, ref_module(m, x, x, x, causal=True), torch.float32, factor=5)


def test_forward_is_stateless_and_bidirectional_drops_state():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(1, 8, E, seed=6)
    a, _ = m(x, x, x, is_causal=True, need_weights=False)
    b, _ = m(x, x, x, is_causal=True, need_weights=False)  # not continuing the first
    assert torch.equal(a, b)
    m(x, x, x, need_weights=False)
    assert m.get_state() is None and m.state_position == 0


def test_get_set_state_fork():
    torch.manual_seed(2)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 20, E, seed=7)
    m(x, x, x, is_causal=True, need_weights=False)
    saved = m.get_state()
    assert saved["S"].shape == (2, H, E // H, E // H) and saved["position"] == 20
    t1, t2 = x_(2, E, seed=8), x_(2, E, seed=9)
    a1 = m.step(t1)
    a2 = m.step(t2)
    # restore and replay: identical
    m.set_state(saved)
    assert torch.equal(m.step(t1), a1) and torch.equal(m.step(t2), a2)
    # fork into another module with the same weights
    other = LiquidMemory(E, H, batch_first=True)
    other.load_state_dict(m.state_dict())
    other.set_state(saved)
    assert torch.equal(other.step(t1), a1)
    # the saved copy was not changed by stepping
    assert saved["position"] == 20 and not torch.equal(saved["S"], m.get_state()["S"])


def test_set_state_validates():
    m = LiquidMemory(E, H)
    with pytest.raises(ValueError, match="does not fit"):
        m.set_state({"S": torch.zeros(1, H, 4, 4), "z": torch.zeros(1, H, 4), "position": 0})
    with pytest.raises(ValueError, match=">= 0"):
        m.set_state({"S": torch.zeros(1, H, 8, 8), "z": torch.zeros(1, H, 8), "position": -1})
    m.set_state(None)
    assert m.get_state() is None


def test_state_not_in_state_dict_but_follows_module():
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(1, 4, E)
    m(x, x, x, is_causal=True, need_weights=False)
    assert "state_S" not in m.state_dict()
    assert m.state_S.shape == (1, H, 8, 8) and m.state_S.dtype == torch.float32




def test_step_requires_self_attention_dims():
    m = LiquidMemory(E, H, kdim=16, vdim=16)
    with pytest.raises(ValueError, match="kdim == vdim == embed_dim"):
        m.step(x_(1, E))
    with pytest.raises(ValueError, match="embed_dim=32"):
        LiquidMemory(E, H).step(x_(1, 31))


# ---------------------------------------------------------------- dtype casts (the state stays fp32)

def _prefilled(seed=10):
    torch.manual_seed(seed)
    m = LiquidMemory(E, H, batch_first=True)
    x = x_(2, 10, E, seed=seed)
    m(x, x, x, is_causal=True, need_weights=False)
    return m


@pytest.mark.parametrize("cast", ["to_bfloat16", "bfloat16", "half", "to_float64", "type"])
def test_dtype_casts_leave_the_state_fp32(cast):
    m = _prefilled()
    S, z = m.state_S.clone(), m.state_z.clone()
    want = {"to_bfloat16": torch.bfloat16, "bfloat16": torch.bfloat16, "half": torch.float16,
            "to_float64": torch.float64, "type": torch.float16}[cast]
    if cast.startswith("to_"):
        m.to(want)
    elif cast == "type":
        m.type(torch.float16)
    else:
        getattr(m, cast)()
    assert m.in_proj_weight.dtype == want  # the parameters were cast ...
    assert m.state_S.dtype == torch.float32 and m.state_z.dtype == torch.float32  # ... not the state
    assert torch.equal(m.state_S, S) and torch.equal(m.state_z, z)
    m.float()  # back (the weights now rounded): step continues from the untouched state
    ref = LiquidMemory(E, H, batch_first=True)
    ref.load_state_dict(m.state_dict())
    ref.set_state({"S": S, "z": z, "position": 10})
    t = x_(2, E, seed=11)
    assert torch.equal(m.step(t), ref.step(t))


def test_step_after_bfloat16_cast_continues_the_state():
    m, ref = _prefilled(), _prefilled()
    m.to(torch.bfloat16)
    for i in range(3):
        t = x_(2, E, seed=20 + i)
        got, want = m.step(t.bfloat16()), ref.step(t)
        assert got.dtype == torch.bfloat16
        assert_close(got, want, torch.bfloat16, "bf16 step %d" % i, factor=4)
    assert m.state_S.dtype == torch.float32 and m.state_position == 13


@pytest.mark.parametrize("recover", ["reset_state", "set_state_none", "set_state_get_state"])
def test_a_state_cast_by_an_older_version_recovers(recover):
    """A module pickled by a version that cast the state (bf16 buffers): step()
    says what to do, and each documented way out works."""
    m = _prefilled()
    want_S, want_z = m.state_S.bfloat16().float(), m.state_z.bfloat16().float()
    m._buffers["state_S"] = m.state_S.bfloat16()
    m._buffers["state_z"] = m.state_z.bfloat16()
    t = x_(2, E, seed=12)
    with pytest.raises(ValueError, match="float32.*reset_state"):
        m.step(t)
    if recover == "reset_state":
        m.reset_state()
    elif recover == "set_state_none":
        m.set_state(None)
    else:
        m.set_state(m.get_state())
    y = m.step(t)
    assert torch.isfinite(y).all() and m.state_S.dtype == torch.float32
    if recover == "set_state_get_state":  # continued from the saved (rounded) values
        assert m.state_position == 11
        ref = _prefilled()
        ref.set_state({"S": want_S, "z": want_z, "position": 10})
        assert torch.equal(ref.step(t), y)
    else:
        assert m.state_position == 1


# ---------------------------------------------------------------- step() and autograd

def test_step_refuses_autograd():
    m = LiquidMemory(E, H)
    with torch.enable_grad():
        with pytest.raises(RuntimeError, match="inference only.*no_grad"):
            m.step(x_(2, E).requires_grad_())  # x requires grad
        with pytest.raises(RuntimeError, match="inference only"):
            m.step(x_(2, E))  # the parameters do
        assert m.state_position == 0 and m.get_state() is None  # nothing happened
        m.requires_grad_(False)
        assert not m.step(x_(2, E)).requires_grad  # nothing to record: runs
    y = m.step(x_(2, E).requires_grad_())  # no_grad (the fixture): runs
    assert not y.requires_grad and m.state_position == 2


# ---------------------------------------------------------------- keep_state

def test_training_forward_leaves_the_decode_state_alone():
    m = _prefilled()
    m.step(x_(2, E, seed=13))
    saved = m.get_state()
    y = x_(2, 7, E, seed=14)
    with torch.enable_grad():  # training forwards, causal and not
        out, _ = m(y, y, y, is_causal=True, need_weights=False)
        out.sum().backward()
        m(y, y, y, need_weights=False)
    now = m.get_state()
    assert now["position"] == 11 and torch.equal(now["S"], saved["S"])
    assert torch.equal(now["z"], saved["z"])


def test_keep_state_false_and_true():
    m = _prefilled()
    saved = m.get_state()
    y = x_(2, 7, E, seed=15)
    m(y, y, y, is_causal=True, need_weights=False, keep_state=False)
    m(y, y, y, need_weights=False, keep_state=False)  # bidirectional: not dropped either
    assert torch.equal(m.get_state()["S"], saved["S"]) and m.state_position == 10
    with torch.enable_grad():  # keep_state=True keeps it even while training (detached)
        m(y, y, y, is_causal=True, need_weights=False, keep_state=True)
    assert m.state_position == 7 and not m.state_S.requires_grad
    ref = LiquidMemory(E, H, batch_first=True)
    ref.load_state_dict(m.state_dict())
    ref(y, y, y, is_causal=True, need_weights=False)
    assert torch.equal(m.state_S, ref.state_S)
    with pytest.raises(ValueError, match="keep_state=True needs a causal forward"):
        m(y, y, y, need_weights=False, keep_state=True)


def test_a_module_pickled_by_0_1_0_loads_and_recovers():
    """0.1.0 kept the position in plain attributes, registered a pre-hook and
    could have cast its state: such a pickle loads, says what is wrong, recovers."""
    import pickle
    from liquid_memory import module as lm_module
    m = _prefilled()
    m.register_forward_pre_hook(lm_module._keep_linear_attention)
    cursor = m.__dict__.pop("_cursor")
    m.__dict__.update(_position=cursor.position, _state_batch=cursor.batch)
    m._buffers["state_S"] = m.state_S.bfloat16()
    m._buffers["state_z"] = m.state_z.bfloat16()
    old = pickle.loads(pickle.dumps(m))
    assert old.state_position == 10 and old.get_state()["batch"] == 2
    t = x_(2, E, seed=30)
    with pytest.raises(ValueError, match="float32.*reset_state"):
        old.step(t)
    old.reset_state()
    assert torch.isfinite(old.step(t)).all() and old.state_position == 1
