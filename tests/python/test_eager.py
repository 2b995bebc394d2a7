"""
test_eager.py - the cheap eager decode path: the C call's arguments are
prepared once per layout (a call plan) and reused, only the data pointers
and the position written per call. Checked here: plans are made once per
layout and per thread, a reused plan computes what a fresh call computes
(the prefill of one token from the same state, in float64 terms too), the
module step builds nothing after its first call, and bench/eager_step.py
runs (on the CPU: the host-cost proxy; its GPU numbers come from
bench/gpu_run.sh eager).
"""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from conftest import ROOT, assert_close, rand_qkv, ref_attention
from liquid_memory import LiquidMemory, _core, _ffi, _ops


class _Made:
    """Counts call plans made (and descriptors built) while it is installed."""

    def __init__(self, monkeypatch):
        self.plans = self.structs = 0
        real_plan, lib = _core._Plan.__init__, _ffi.binding()
        real_new = type(lib).new

        def plan(p, *a, **k):
            self.plans += 1
            real_plan(p, *a, **k)

        def new(b, struct):
            self.structs += 1
            return real_new(b, struct)
        monkeypatch.setattr(_core._Plan, "__init__", plan)
        monkeypatch.setattr(type(lib), "new", new)


def _state(B, Hkv, Dk, Dv, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, Hkv, Dk, Dv, generator=g), torch.rand(B, Hkv, Dk, generator=g) + 1


def _one_token_prefill(q, k, v, S, z, position, opts):
    """What a decode step must equal: the prefill of that token from (S, z)."""
    out, S1, z1 = _ops.prefill(q, k, v, None, S, z, position=position, is_causal=True,
                               opts=opts, want_state=True)
    return out, S1, z1


LAYOUTS = [
    dict(B=2, Hq=4, Hkv=4, D=16, dtype=torch.float32),
    dict(B=3, Hq=8, Hkv=2, D=16, dtype=torch.float32),           # GQA
    dict(B=1, Hq=4, Hkv=4, D=32, dtype=torch.bfloat16),
    dict(B=2, Hq=4, Hkv=2, D=16, dtype=torch.float32, strided=True),
    dict(B=2, Hq=4, Hkv=4, D=16, dtype=torch.float32, decay=[0.9, 0.95, 0.99, 1.0]),
    dict(B=2, Hq=4, Hkv=4, D=16, dtype=torch.float32, feature_map="relu", normalize=False),
]


@pytest.mark.parametrize("lay", LAYOUTS, ids=lambda c: "-".join("%s%s" % kv for kv in c.items()))
def test_reused_plan_computes_a_fresh_call(lay):
    """Several decode calls of one layout through one plan, each on new
    tensors: every output and state equals the one-token prefill, and the
    float64 reference of the whole sequence."""
    B, Hq, Hkv, D, dtype = lay["B"], lay["Hq"], lay["Hkv"], lay["D"], lay["dtype"]
    opts = _core.Options(_core.FEATURE_MAPS[lay.get("feature_map", "elu")],
                         lay.get("normalize", True), decay=lay.get("decay"))
    q, k, v = rand_qkv(B, 6, Hq, D, Hkv=Hkv, dtype=dtype, seed=D + Hq)
    if lay.get("strided"):  # q, k, v as views into one wider tensor, as a fused projection
        wide = torch.randn(B, 6, Hq + 2 * Hkv + 3, D).to(dtype)
        wide[:, :, :Hq], wide[:, :, Hq:Hq + Hkv], wide[:, :, Hq + Hkv:Hq + 2 * Hkv] = q, k, v
        q, k, v = wide[:, :, :Hq], wide[:, :, Hq:Hq + Hkv], wide[:, :, Hq + Hkv:Hq + 2 * Hkv]
    S, z = _state(B, Hkv, D, D, seed=1)
    S_ref, z_ref = S.clone(), z.clone()
    outs = []
    for t in range(6):
        qt, kt, vt = q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1]
        got = _ops.decode(qt, kt, vt, S, z, 10 + t, opts=opts)
        want, S_ref, z_ref = _one_token_prefill(qt, kt, vt, S_ref, z_ref, 10 + t, opts)
        assert torch.equal(got, want), "token %d" % t
        assert torch.equal(S, S_ref) and torch.equal(z, z_ref), "state after token %d" % t
        outs.append(got)
    S0, z0 = _state(B, Hkv, D, D, seed=1)
    ref, _, _ = ref_attention(q, k, v, causal=True, S0=S0, z0=z0, decay=lay.get("decay"),
                              feature_map=lay.get("feature_map", "elu"),
                              normalize=lay.get("normalize", True))
    assert_close(torch.cat(outs, 1), ref, dtype, "decode vs float64", factor=5)


def test_one_plan_per_layout(monkeypatch):
    made = _Made(monkeypatch)
    q, k, v = rand_qkv(2, 1, 4, 16, seed=2)
    S, z = _state(2, 4, 16, 16, seed=3)
    _ops.decode(q, k, v, S, z, 0)
    first = made.plans
    for t in range(1, 6):  # new tensors, same layout: no plan, no descriptor
        q, k, v = rand_qkv(2, 1, 4, 16, seed=2 + t)
        _ops.decode(q, k, v, S, z, t)
    assert made.plans == first and made.structs == 5 * first
    q3, k3, v3 = rand_qkv(3, 1, 4, 16, seed=9)  # another batch: another plan
    S3, z3 = _state(3, 4, 16, 16, seed=4)
    _ops.decode(q3, k3, v3, S3, z3, 0)
    _ops.decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), S, z, 6)  # another dtype: another
    _ops.decode(q, k, v, S, z, 7, opts=_core.Options(normalize=False))  # other options: another
    assert made.plans == first + 3


def test_layouts_in_turn_reuse_their_plans(monkeypatch):
    """The thread's last plan is tried first, the others come from its table:
    two layouts in turn make their plans on their first calls and none after,
    and each call computes what a fresh call does (a last-plan hit never
    serves another layout)."""
    made = _Made(monkeypatch)
    states = {B: _state(B, 2, 8, 8, seed=B) for B in (2, 3)}
    refs = {B: (S.clone(), z.clone()) for B, (S, z) in states.items()}
    first = None
    for t in range(6):
        if t == 2:
            first = made.plans  # at most 2 (none if an earlier test made them)
        B = 2 if t % 2 else 3
        q, k, v = rand_qkv(B, 1, 2, 8, seed=20 + t)
        S, z = states[B]
        got = _ops.decode(q, k, v, S, z, t)
        want, S1, z1 = _one_token_prefill(q, k, v, *refs[B], t, _core.DEFAULT_OPTIONS)
        refs[B] = (S1, z1)
        assert torch.equal(got, want) and torch.equal(S, S1) and torch.equal(z, z1), t
    assert first <= 2 and made.plans == first


@pytest.mark.parametrize("kind", ["cffi", "ctypes"])
def test_bindings_agree(monkeypatch, kind):
    """The same decode and module steps through either binding (LM_PY_FFI
    picks one; the GPU machine has no cffi): equal to the bit."""
    if kind == "cffi" and not _ffi.cffi_available():
        pytest.skip("cffi is not importable here")
    q, k, v = rand_qkv(2, 1, 4, 16, Hkv=2, seed=30)
    S0, z0 = _state(2, 2, 16, 16, seed=31)
    torch.manual_seed(32)
    m = LiquidMemory(32, 4, batch_first=True, num_kv_heads=2).eval()
    x = torch.randn(2, 3, 32)

    def run():
        S, z = S0.clone(), z0.clone()
        outs = [_ops.decode(q, k, v, S, z, t) for t in range(3)]
        m.reset_state()
        with torch.no_grad():
            outs += [m.step(x[:, t]) for t in range(3)]
        return outs + [S, z, m.state_S.clone()]
    monkeypatch.setattr(_ffi, "_binding", _ffi.open_library("ctypes"))
    want = run()
    b = _ffi.open_library(kind)
    monkeypatch.setattr(_ffi, "_binding", b)
    got = run()
    assert b.kind == kind and len(got) == len(want) == 9
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_plans_are_per_thread(monkeypatch):
    """The C call runs without the GIL while its arguments are in use: each
    thread has its own plans, and concurrent decodes stay exact."""
    q, k, v = rand_qkv(2, 1, 4, 16, seed=5)
    S0, z0 = _state(2, 4, 16, 16, seed=6)
    want, _, _ = _one_token_prefill(q, k, v, S0, z0, 3, _core.DEFAULT_OPTIONS)
    results, errors = [], []

    def worker():
        try:
            for _ in range(50):
                S, z = S0.clone(), z0.clone()
                results.append(torch.equal(_ops.decode(q, k, v, S, z, 3), want))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 200 and all(results)


def test_decode_refuses_a_wrong_state():
    q, k, v = rand_qkv(2, 1, 4, 16, seed=7)
    S, z = _state(2, 4, 16, 16, seed=8)
    _ops.decode(q, k, v, S, z, 0)  # the plan exists: the state is still checked every call
    for bad_S, bad_z in ((S[:1], z), (S.bfloat16(), z), (S, z.double()),
                         (S.transpose(2, 3), z)):
        with pytest.raises(ValueError, match="contiguous float32"):
            _ops.decode(q, k, v, bad_S, bad_z, 1)


@torch.no_grad()
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_module_step_builds_nothing_after_the_first(monkeypatch, kv_heads):
    torch.manual_seed(9)
    m = LiquidMemory(32, 4, batch_first=True, num_kv_heads=kv_heads).eval()
    x = torch.randn(2, 9, 32)
    m(x[:, :5], x[:, :5], x[:, :5], is_causal=True, need_weights=False)
    ref = LiquidMemory(32, 4, batch_first=True, num_kv_heads=kv_heads).eval()
    ref.load_state_dict(m.state_dict())
    ref(x, x, x, is_causal=True, need_weights=False)  # the whole sequence at once
    m.step(x[:, 5])
    made = _Made(monkeypatch)
    outs = [m.step(x[:, t]) for t in range(6, 9)]
    assert made.plans == 0 and made.structs == 0
    full, _ = ref(x, x, x, is_causal=True, need_weights=False, keep_state=False)
    assert_close(torch.stack(outs, 1), full[:, 6:9], torch.float32, factor=5)


@torch.no_grad()
def test_module_step_with_a_parametrized_out_proj():
    """step() reads its weights from the parameter tables; a weight that is
    not there (a parametrization makes out_proj.weight a property) is read
    the ordinary way, as forward reads it."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w
    torch.manual_seed(11)
    m = LiquidMemory(32, 4, batch_first=True).eval()
    parametrize.register_parametrization(m.out_proj, "weight", Double())
    assert "weight" not in m.out_proj._parameters
    x = torch.randn(2, 4, 32)
    full, _ = m(x, x, x, is_causal=True, need_weights=False, keep_state=False)
    m.reset_state()
    outs = torch.stack([m.step(x[:, t]) for t in range(4)], 1)
    assert_close(outs, full, torch.float32, "step vs forward", factor=5)


def test_decode_packed_refuses_a_bad_qkv():
    S, z = _state(2, 4, 8, 8, seed=12)
    qkv = torch.randn(2, 3 * 32)
    _core.decode_packed(qkv, 4, 4, 8, S, z, 0)  # the plan exists: qkv is still checked
    for bad in (torch.randn(3 * 32, 2).t(), torch.randn(2, 3 * 32 + 1), torch.randn(2, 1, 96)):
        with pytest.raises(ValueError, match="qkv must be a contiguous"):
            _core.decode_packed(bad, 4, 4, 8, S, z, 1)


def test_eager_step_benchmark_runs(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "eager_step.py"),
                        "--device", "cpu", "--calls", "20", "--rounds", "2", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "host-cost proxy" in p.stdout
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("eager_step_cpu_")
    data = json.load(open(tmp_path / files[0]))
    for key in ("date", "commit", "torch", "device", "cpu", "config", "records"):
        assert key in data, key
    got = {r["method"]: r for r in data["records"]}
    assert set(got) == {"core_c_call", "core_eager", "core_python", "torch_linear_pair",
                        "module_step_eager"}
    for r in got.values():
        assert r["us_per_call"] > 0 and len(r["rounds_us"]) == 2
    # the weight-read floor: parameters (E=64 fp32: 4 E^2 weights + 4 E biases) at 3 TB/s
    assert data["assumed_bandwidth_tbs"] == 3.0
    assert data["weight_bytes"] == (4 * 64 * 64 + 4 * 64) * 4
    assert data["weight_read_floor_us"] == pytest.approx(data["weight_bytes"] / 3e12 * 1e6)
    assert "weight-read floor" in p.stdout
