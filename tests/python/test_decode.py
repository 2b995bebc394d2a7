"""
test_decode.py - step() after a causal forward equals the forward over the
longer sequence; reset_state; get_state/set_state (save, restore, fork);
the batch-change error; bias_kv/zero_attn in decode.
"""
import pytest
import torch

import liquid_memory
from conftest import assert_close, ref_module
from liquid_memory import LiquidMemory

E, H = 32, 4


def x_(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


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


def test_step_is_inference_only():
    m = LiquidMemory(E, H)
    y = m.step(x_(2, E).requires_grad_())
    assert not y.requires_grad


def test_step_requires_self_attention_dims():
    m = LiquidMemory(E, H, kdim=16, vdim=16)
    with pytest.raises(ValueError, match="kdim == vdim == embed_dim"):
        m.step(x_(1, E))
    with pytest.raises(ValueError, match="embed_dim=32"):
        LiquidMemory(E, H).step(x_(1, 31))
