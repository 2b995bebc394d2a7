"""
test_train_bench.py - the training mode of LiquidMemory.benchmark (forward +
backward time and peak memory against L) at tiny sizes on the CPU: the records,
their numbers, OOM / unsupported handling, the JSON, plots and manifest, the CLI.
No timing is asserted beyond "measured, positive and finite".
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from liquid_memory import LiquidMemory, UnsupportedError, _core, benchmark

TINY = dict(embed_dim=32, num_heads=4, seq_lengths=(64, 128, 256), device="cpu", warmup=1,
            iters=2, progress=False, verbose=False)
HAS_SDPA = hasattr(torch.nn.functional, "scaled_dot_product_attention")


def _train_records(res):
    return [r for r in res["records"] if r["phase"] == "train"]


def test_train_sweep_writes_everything(tmp_path, capsys):
    res = LiquidMemory.benchmark(out_dir=str(tmp_path), tag="t", mode="train",
                                 **dict(TINY, verbose=True))
    printed = capsys.readouterr().out
    assert "forward + backward (ms / peak extra memory)" in printed and "fits" in printed
    cfg = res["config"]
    assert cfg["mode"] == "train" and cfg["prefill_methods"] == [] and cfg["decode_methods"] == []
    want = ["liquid_memory", "mha"] + (["sdpa_math"] if HAS_SDPA else [])
    assert cfg["train_methods"] == want
    recs = _train_records(res)
    assert len(recs) == len(res["records"]) == len(want) * 3  # train records only
    for m in want:
        got = [r for r in recs if r["method"] == m]
        assert [r["n"] for r in got] == [64, 128, 256]
        for r in got:
            assert r["status"] == "ok", r
            assert math.isfinite(r["ms"]) and r["ms"] > 0
            assert r["times_ms"] and all(math.isfinite(t) and t > 0 for t in r["times_ms"])
            # RSS-based on the CPU: measured (not None), finite, never negative
            assert r["peak_extra_bytes"] is not None and r["peak_extra_bytes"] >= 0
    if not HAS_SDPA:
        assert any("scaled_dot_product_attention" in n for n in res["notes"])
    files = res["files"]
    names = [os.path.basename(f) for f in files]
    assert names[0].startswith("sweep_train_cpu_") and names[0].endswith("_t.json")
    stem = names[0][:-len(".json")]
    assert [n[len(stem):] for n in names] == [".json", "_train_time.png", "_train_memory.png",
                                              "_manifest.json"]
    assert all(os.path.exists(f) for f in files)
    data = json.load(open(files[0]))
    assert data["config"]["mode"] == "train" and len(data["records"]) == len(recs)
    assert {r["phase"] for r in data["records"]} == {"train"}
    fits = {(f["method"], f["quantity"]): f for f in data["fits"] if f["phase"] == "train"}
    assert fits[("liquid_memory", "time")]["model"] == "O(n)"
    assert fits[("mha", "time")]["model"] == "O(n^2)"
    for png in files[1:3]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    man = json.load(open(files[-1]))
    assert man["config"]["mode"] == "train" and man["files"] == files


def test_train_step_computes_every_gradient():
    """The measured callable really runs the backward: x and every weight get a gradient."""
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    lm = LiquidMemory.from_mha(mha)
    for method, mod in (("liquid_memory", lm), ("mha", mha)):
        fn = benchmark._train_fn(method, lm, mha, {}, 1, 64, 32, torch.device("cpu"),
                                 torch.float32)
        out = fn()
        assert out.shape == (1, 64, 32) and torch.isfinite(out).all()
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
                   for g in grads), method
        fn.reset()
        assert all(p.grad is None for p in mod.parameters())


def test_all_mode_runs_both_phases(tmp_path):
    res = benchmark.run(out_dir=str(tmp_path), mode="all", methods=["liquid_memory", "mha",
                                                                      "liquid_memory_step"],
                        plots=True, **dict(TINY, seq_lengths=(64, 128), decode_contexts=(16,)))
    phases = {(r["phase"], r["method"]) for r in res["records"] if r["status"] == "ok"}
    assert phases == {("prefill", "liquid_memory"), ("train", "liquid_memory"),
                      ("train", "mha"), ("decode", "liquid_memory_step")}
    names = sorted(os.path.basename(f) for f in res["files"])
    assert any(n.endswith("_prefill_time.png") for n in names)
    assert any(n.endswith("_train_memory.png") for n in names)
    assert all(n.startswith("sweep_all_cpu_") for n in names)


def test_train_oom_is_recorded_and_the_sweep_goes_on(monkeypatch):
    real = benchmark._train_fn

    def fake(method, lm, mha, sdpa, B, L, E, device, dtype):
        if method == "mha" and L >= 128:
            def boom():
                raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB")
            return boom
        return real(method, lm, mha, sdpa, B, L, E, device, dtype)
    monkeypatch.setattr(benchmark, "_train_fn", fake)
    res = benchmark.run(out_dir=None, mode="train", methods=["liquid_memory", "mha"], **TINY)
    st = {(r["method"], r["n"]): r["status"] for r in res["records"]}
    assert st[("mha", 64)] == "ok"
    assert st[("mha", 128)] == "OOM" and st[("mha", 256)] == "OOM"
    assert all(st[("liquid_memory", L)] == "ok" for L in (64, 128, 256))
    assert "OOM" in benchmark.format_table(res)


def test_missing_backward_is_recorded_as_unsupported(monkeypatch):
    """A backend without a backward (the library's UnsupportedError) is recorded,
    not raised, and the other methods still run."""
    def no_backward(*args, **kwargs):
        raise UnsupportedError("lm_linear_attn_backward failed: LM_ERR_UNSUPPORTED: the cuda "
                               "backend has no backward yet")
    monkeypatch.setattr(_core, "backward", no_backward)
    res = benchmark.run(out_dir=None, mode="train", methods=["liquid_memory", "mha"], **TINY)
    lm = [r for r in res["records"] if r["method"] == "liquid_memory"]
    assert [r["status"] for r in lm] == ["unsupported"] * 3
    assert "no backward yet" in lm[0]["note"] and "at L=64" in lm[1]["note"]
    assert all(r["status"] == "ok" for r in res["records"] if r["method"] == "mha")


def test_bad_mode_and_methods():
    with pytest.raises(ValueError, match="mode"):
        benchmark.run(out_dir=None, mode="training", **TINY)
    with pytest.raises(ValueError, match="unknown or unavailable"):
        benchmark.run(out_dir=None, mode="train", methods=["mha_fast"], **TINY)  # inference only


def test_train_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    p = subprocess.run([sys.executable, "-m", "liquid_memory.benchmark", "--device", "cpu",
                        "--train", "--embed-dim", "32", "--num-heads", "4",
                        "--seq-lengths", "64,128", "--iters", "1", "--warmup", "1",
                        "--methods", "liquid_memory,mha", "--no-plots", "--no-progress",
                        "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "forward + backward" in p.stdout
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 2 and written[0].startswith("sweep_train_cpu_")
    data = json.load(open(os.path.join(tmp_path, written[0])))
    assert data["config"]["train_methods"] == ["liquid_memory", "mha"]
    assert [(r["method"], r["n"], r["status"]) for r in data["records"]] == [
        ("liquid_memory", 64, "ok"), ("liquid_memory", 128, "ok"), ("mha", 64, "ok"),
        ("mha", 128, "ok")]


# ---- fla_chunk (flash-linear-attention from a peers folder) ----

FAKE_FLA = '''
import torch


def chunk_linear_attn(q, k, v, scale=None, normalize=True, **kw):
    """causal linear attention on [B, L, H, D] in float64 (what fla's op computes)"""
    qf, kf, vf = (t.double().transpose(1, 2) for t in (q, k, v))
    A = torch.tril(qf @ kf.transpose(-1, -2))
    o = A @ vf
    if normalize:
        o = o / (A.sum(-1, keepdim=True) + 1e-6)
    return o.transpose(1, 2).to(q.dtype), None


fused_recurrent_linear_attn = chunk_linear_attn
'''


@pytest.fixture
def peers_dir(tmp_path, monkeypatch):
    """A peers folder; whatever load_fla puts on sys.path / in sys.modules is undone."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in [n for n in sys.modules if n == "fla" or n.startswith("fla.")]:
        del sys.modules[name]


def _fake_fla(root, body):
    ops = root / "fla" / "ops"
    ops.mkdir(parents=True)
    (ops / "linear_attn.py").write_text(body)


@pytest.mark.parametrize("body, reason", [
    (None, "peers/fla not present"),
    ("raise ImportError(\"No module named 'triton'\")\n", "ImportError: No module named 'triton'"),
    (FAKE_FLA, "fla's kernels need CUDA (triton); the device is cpu"),
])
def test_fla_is_skipped_with_its_reason(peers_dir, body, reason):
    """fla absent, failing to import, or imported off CUDA: every length of fla_chunk is
    recorded as skipped with the reason (in the table's notes and the config), and the
    other methods run."""
    if body is not None:
        _fake_fla(peers_dir, body)
    res = benchmark.run(out_dir=None, mode="train", methods=["liquid_memory", "fla_chunk"],
                        peers=str(peers_dir), **TINY)
    assert res["config"]["train_methods"] == ["liquid_memory", "fla_chunk"]
    assert reason in res["config"]["peers"]["fla"]
    fla = [r for r in res["records"] if r["method"] == "fla_chunk"]
    assert [(r["n"], r["status"]) for r in fla] == [(64, "skipped"), (128, "skipped"),
                                                    (256, "skipped")]
    assert all(reason in r["note"] and r["ms"] is None for r in fla)
    assert all(r["status"] == "ok" for r in res["records"] if r["method"] == "liquid_memory")
    table = benchmark.format_table(res)
    assert "fla_chunk skipped n=64: " + reason in table
    assert "chunk_linear_attn" in table.split("methods:")[1]  # the legend says what it is


def test_fla_not_run_without_peers():
    res = benchmark.run(out_dir=None, mode="train", methods=["liquid_memory"], **TINY)
    assert "fla_chunk" not in res["config"]["train_methods"] and "peers" not in res["config"]
    with pytest.raises(ValueError, match="unknown or unavailable"):
        benchmark.run(out_dir=None, mode="train", methods=["fla_chunk"], **TINY)


def test_fla_layer_is_liquid_memory_normalised(peers_dir):
    """The fla_chunk layer (MHA's projections, elu+1, normalised) computes LiquidMemory's
    layer when the chunk op is exact (float64 causal linear attention standing in for fla),
    and its step runs the backward into x and every weight. fp32 layer: bound 1e-4."""
    _fake_fla(peers_dir, FAKE_FLA)
    from liquid_memory import _peers
    fla, why = _peers.load_fla(str(peers_dir))
    assert why is None
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    lm = LiquidMemory.from_mha(mha)
    x = torch.randn(2, 50, 32)
    want = lm(x, x, x, is_causal=True, need_weights=False)[0]
    got = benchmark._FlaLayer(mha, fla[0])(x)
    assert ((got - want).norm() / want.norm()).item() < 1e-4
    fn = benchmark._train_fn("fla_chunk", lm, mha, {"fla_chunk": (fla[0], None)}, 1, 64, 32,
                             torch.device("cpu"), torch.float32)
    out = fn()
    assert out.shape == (1, 64, 32) and torch.isfinite(out).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())


def test_fla_int32_limit_is_a_skip():
    """B * L * E >= 2^31 is past fla's int32 indexing: skipped before anything is allocated."""
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with pytest.raises(benchmark._Skip, match="int32") as e:
        benchmark._train_fn("fla_chunk", None, mha, {"fla_chunk": (lambda *a, **k: None, None)},
                            1, 2 ** 31 // 32, 32, torch.device("cpu"), torch.float32)
    assert e.value.status == "skipped"


def test_help_documents_peers():
    text = benchmark.parser().format_help()
    assert "--peers DIR" in text and "default: none, fla not run" in text
    assert "fla_chunk" in text.split("methods:")[1]
