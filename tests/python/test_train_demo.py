"""
test_train_demo.py - bench/train_demo.py at tiny sizes on the CPU: the
associative-recall batches, a short training run of both models (the loss falls,
the JSON log and the plot are written), and a clean stop with the library's
message when the backward is missing (as on a CUDA build without one).
"""
import json
import math
import os
import sys

import pytest
import torch

from conftest import ROOT
from liquid_memory import UnsupportedError, _core

sys.path.insert(0, os.path.join(ROOT, "bench"))
import train_demo  # noqa: E402

TINY = ["--seq-len", "16", "--num-pairs", "4", "--num-queries", "4", "--key-vocab", "8",
        "--value-vocab", "8", "--d-model", "16", "--num-heads", "2", "--batch-size", "16",
        "--eval-seqs", "32", "--log-every", "1000", "--seconds", "120"]


def test_task_batches():
    task = train_demo.Task(seq_len=24, num_pairs=5, num_queries=4, key_vocab=8, value_vocab=6)
    tok, tgt = task.batch(32, torch.Generator().manual_seed(0), "cpu")
    assert tok.shape == tgt.shape == (32, 24) and task.vocab == 15
    for b in range(32):
        keys, vals = tok[b, 0:10:2].tolist(), tok[b, 1:10:2].tolist()
        assert len(set(keys)) == 5 and all(1 <= k <= 8 for k in keys)
        assert all(9 <= v <= 14 for v in vals)
        assert (tgt[b, :10] == -100).all()
        where = (tgt[b] != -100).nonzero().flatten().tolist()
        assert len(where) == 4 and all(p >= 10 for p in where)
        for p in where:  # a query is one of the keys, its target the value that followed it
            assert tgt[b, p].item() == vals[keys.index(tok[b, p].item())]
        rest = [p for p in range(10, 24) if p not in where]
        assert (tok[b, rest] == 0).all()  # filler


def test_more_queries_than_pairs():
    task = train_demo.Task(seq_len=40, num_pairs=2, num_queries=10, key_vocab=4, value_vocab=4)
    tok, tgt = task.batch(8, torch.Generator().manual_seed(1), "cpu")
    assert ((tgt != -100).sum(1) == 10).all()


def test_curriculum(tmp_path, capsys):
    """--start-len: batches as long as the step's length with the queries that fit, the
    length doubling every --grow-steps steps up to --seq-len, where the evaluation runs."""
    task = train_demo.Task(seq_len=64, num_pairs=4, num_queries=20, key_vocab=8, value_vocab=8)
    tok, tgt = task.batch(4, torch.Generator().manual_seed(2), "cpu", L=16)
    assert tok.shape == tgt.shape == (4, 16) and ((tgt != -100).sum(1) == 8).all()
    args = TINY + ["--seq-len", "64", "--num-queries", "20", "--start-len", "16", "--grow-steps",
                   "5", "--attention", "lm", "--steps", "20", "--log-every", "10",
                   "--out", str(tmp_path)]
    assert train_demo.main(train_demo.parse(args)) == 0
    assert "L     64" in capsys.readouterr().out
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    log = json.load(open(tmp_path / name))
    assert log["config"]["start_len"] == 16 and log["config"]["grow_steps"] == 5
    run = log["runs"][0]
    assert [s["seq_len"] for s in run["steps"]] == [16] * 5 + [32] * 5 + [64] * 10
    assert run["status"] == "ok" and run["eval"]["sequences"] == 32


def test_demo_trains_and_writes_log_and_plot(tmp_path, capsys):
    a = train_demo.parse(TINY + ["--attention", "both", "--steps", "60", "--out", str(tmp_path)])
    assert train_demo.main(a) == 0
    out = capsys.readouterr().out
    assert "[lm] step     1" in out and "[mha]" in out and "evaluation on 32 new sequences" in out
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].startswith("train_demo_cpu_")
    assert files[0].endswith(".json") and files[1] == files[0][:-5] + ".png"
    assert open(tmp_path / files[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    log = json.load(open(tmp_path / files[0]))
    assert log["config"]["seq_len"] == 16 and log["config"]["attention"] == "both"
    assert log["device"]["type"] == "cpu" and log["versions"]["torch"] == torch.__version__
    assert "liquid_memory_library" in log["versions"] and log["date"]
    assert log["wall_seconds"] > 0
    assert [r["attention"] for r in log["runs"]] == ["lm", "mha"]
    for r in log["runs"]:
        assert r["status"] == "ok" and r["error"] is None
        st = r["steps"]
        assert [s["step"] for s in st] == list(range(1, 61))
        assert all(math.isfinite(s["loss"]) and 0 <= s["accuracy"] <= 1 for s in st)
        assert all(b["seconds"] >= a_["seconds"] for a_, b in zip(st, st[1:]))
        # 8 values: the model learns at least to name a value (loss ln 17 -> about ln 8)
        assert sum(s["loss"] for s in st[-10:]) / 10 < st[0]["loss"] - 0.5, r["attention"]
        assert r["eval"]["sequences"] == 32 and math.isfinite(r["eval"]["loss"])
        assert r["summary"]["steps"] == 60 and r["train_seconds"] > 0


@pytest.mark.parametrize("wrapped", [False, True])
def test_library_error_stops_cleanly(tmp_path, monkeypatch, capsys, wrapped):
    """A backend without a backward (the CUDA one, until it has it) raises the
    library's UnsupportedError (or, wrapped, a RuntimeError with its text, as
    torch's dispatcher may pass it on): the demo logs it, writes its JSON, exits 2."""
    msg = "lm_linear_attn_backward failed: LM_ERR_UNSUPPORTED: the cuda backend has no backward yet"

    def no_backward(*args, **kwargs):
        raise (RuntimeError if wrapped else UnsupportedError)(msg)
    monkeypatch.setattr(_core, "backward", no_backward)
    a = train_demo.parse(TINY + ["--attention", "lm", "--steps", "5", "--out", str(tmp_path)])
    assert train_demo.main(a) == 2
    cap = capsys.readouterr()
    assert msg in cap.err and "library error" in cap.err
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".json")  # no steps: no plot
    run = json.load(open(tmp_path / files[0]))["runs"][0]
    assert run["status"] == "library error" and msg in run["error"] and run["steps"] == []


def test_bad_arguments():
    with pytest.raises(SystemExit):
        train_demo.parse(["--seq-len", "8", "--num-pairs", "4", "--num-queries", "4"])
    with pytest.raises(SystemExit):
        train_demo.parse(["--d-model", "30", "--num-heads", "4"])
    # 16 pairs need 33 tokens; a start above --seq-len; no growth
    for bad in (["--start-len", "32"], ["--start-len", "128"],
                ["--start-len", "48", "--grow-steps", "0"]):
        with pytest.raises(SystemExit):
            train_demo.parse(["--seq-len", "64"] + bad)


def test_cuda_defaults():
    a = train_demo.parse(["--device", "cuda"])
    assert (a.seq_len, a.attention, a.dtype, a.threads) == (32768, "lm", "bf16", None)
    a = train_demo.parse(["--device", "cuda", "--seq-len", "32768", "--seconds", "60",
                          "--steps", "10", "--seed", "3"])
    assert (a.seq_len, a.seconds, a.steps, a.seed) == (32768, 60.0, 10, 3)
