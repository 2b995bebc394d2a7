"""
test_benchmark.py - LiquidMemory.benchmark / python -m liquid_memory.benchmark
at tiny sizes on the CPU: records, OOM and time-budget handling, fits, table,
JSON, PNG plots and manifest.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from liquid_memory import LiquidMemory, benchmark

TINY = dict(embed_dim=32, num_heads=4, seq_lengths=(64, 128, 256), decode_contexts=(16, 64),
            device="cpu", warmup=1, iters=2, progress=False, verbose=False)


def test_fit_models():
    ns = [256, 512, 1024, 2048, 4096]
    lin = benchmark.fit(ns, [3 + 0.01 * n for n in ns], 1)
    assert lin["model"] == "O(n)" and lin["r2"] > 0.999 and not lin["flagged"]
    assert abs(lin["coefs"][1] - 0.01) < 1e-9 and abs(lin["coefs"][0] - 3) < 1e-6
    quad = benchmark.fit(ns, [1 + 0.002 * n + 1e-6 * n * n for n in ns], 2)
    assert quad["r2"] > 0.999 and not quad["flagged"]
    assert abs(quad["coefs"][2] - 1e-6) < 1e-12
    assert abs(benchmark.fit_curve(quad, 8192) - (1 + 0.002 * 8192 + 1e-6 * 8192 ** 2)) < 1e-6
    wrong = benchmark.fit(ns, [1e-6 * n * n for n in ns], 1)  # quadratic data, linear theory
    assert wrong["flagged"]
    falling = benchmark.fit(ns, [10.0, 8.0, 6.0, 5.0, 4.0], 1)  # no negative slope is fitted
    assert falling["coefs"][1] == 0.0 and falling["flagged"]
    flat = benchmark.fit(ns, [2.0, 2.1, 1.9, 2.0, 2.05], 0)
    assert flat["model"] == "O(1)" and flat["r2"] is None and not flat["flagged"]
    assert not benchmark.fit(ns, [2.0, 2.1, 1.9, 2.0, 9.0], 0)["max_dev"] < 0.1
    assert benchmark.fit([1], [1.0], 1) is None


def test_sweep_writes_everything(tmp_path, capsys):
    res = LiquidMemory.benchmark(out_dir=str(tmp_path), tag="t", **dict(TINY, verbose=True))
    printed = capsys.readouterr().out
    assert "prefill (ms / peak extra memory)" in printed and "fits" in printed
    ok = [r for r in res["records"] if r["status"] == "ok"]
    methods = {r["method"] for r in ok}
    assert {"liquid_memory", "mha_default", "mha_fast", "liquid_memory_step", "kv_cache"} <= methods
    for r in ok:
        assert r["ms"] > 0 and len(r["times_ms"]) >= 1
    lm = [r for r in ok if r["method"] == "liquid_memory"]
    assert [r["n"] for r in lm] == [64, 128, 256]
    files = res["files"]
    assert len(files) == 5 and all(os.path.exists(f) for f in files)
    data = json.load(open(files[0]))
    assert data["config"]["embed_dim"] == 32 and len(data["records"]) == len(res["records"])
    assert any(f["method"] == "liquid_memory" and f["model"] == "O(n)" for f in data["fits"])
    for png in [f for f in files if f.endswith(".png")]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    man = json.load(open(files[-1]))
    assert man["versions"]["torch"] == torch.__version__
    assert "liquid_memory_library" in man["versions"] and man["files"] == files
    # decode: the state stays the same size, the KV cache grows with S
    st = {r["n"]: r["state_bytes"] for r in ok if r["method"] == "liquid_memory_step"}
    kv = {r["n"]: r["state_bytes"] for r in ok if r["method"] == "kv_cache"}
    assert st[16] == st[64] and kv[64] > kv[16]


def test_oom_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = benchmark._prefill_fn

    def fake(method, lm, mha, sdpa, x):
        if method == "mha_default" and x.shape[1] >= 128:
            def boom():
                raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB")
            return boom
        return real(method, lm, mha, sdpa, x)
    monkeypatch.setattr(benchmark, "_prefill_fn", fake)
    res = benchmark.run(out_dir=None, methods=["liquid_memory", "mha_default"],
                        **dict(TINY, decode_contexts=(16,)))
    st = {(r["method"], r["n"]): r["status"] for r in res["records"]}
    assert st[("mha_default", 64)] == "ok"
    assert st[("mha_default", 128)] == "OOM" and st[("mha_default", 256)] == "OOM"
    assert st[("liquid_memory", 256)] == "ok"


def test_time_budget_skips_larger_lengths():
    res = benchmark.run(out_dir=None, methods=["mha_default"], max_seconds=1e-9,
                        **dict(TINY, decode_contexts=(16,)))
    st = [r["status"] for r in res["records"]]
    assert st[0] == "ok" and st[1:] == ["skipped", "skipped"]
    assert "max_seconds" in res["records"][1]["note"]
    assert "skipped" in benchmark.format_table(res)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown or unavailable"):
        benchmark.run(out_dir=None, methods=["flash9"], **TINY)


def test_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    p = subprocess.run([sys.executable, "-m", "liquid_memory.benchmark", "--device", "cpu",
                        "--embed-dim", "32", "--num-heads", "4", "--seq-lengths", "64,128",
                        "--decode-contexts", "16", "--iters", "1", "--warmup", "1",
                        "--methods", "liquid_memory,liquid_memory_step", "--no-plots",
                        "--no-progress", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "liquid_memory" in p.stdout
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith("manifest.json")
    assert benchmark._ints("2k,8192") == (2048, 8192)


# ---------------------------------------------------------------- presentation

def test_table_explains_methods_flags_and_decode_memory(tmp_path, capsys):
    res = LiquidMemory.benchmark(out_dir=str(tmp_path), plots=False,
                                 **dict(TINY, verbose=True))
    printed = capsys.readouterr().out
    assert "output folder: %s" % tmp_path in printed and "wrote (in %s)" % tmp_path in printed
    table = benchmark.format_table(res)
    legend = table.split("\nmethods:\n", 1)[1]
    for m in ("liquid_memory", "mha_default", "mha_fast", "liquid_memory_step", "kv_cache"):
        assert "  " + m + " " in legend and benchmark.METHOD_NOTES[m][:30] in legend, m
    # decode: the memory column is what persists between tokens, as on the plot
    assert "decode per token (ms / state or KV cache kept between tokens)" in table
    decode = table.split("decode per token", 1)[1].split("\n\n", 1)[0]
    for r in res["records"]:
        if r["phase"] == "decode" and r["status"] == "ok":
            assert "%.3g MB" % (r["state_bytes"] / 1e6) in decode, (r["method"], r["n"])
    # FLAGGED is said in words wherever it appears
    flagged = dict(res, fits=[dict(res["fits"][0], flagged=True)])
    assert "FLAGGED: the theory curve does not fit" in benchmark.format_table(flagged)
    unflagged = dict(res, fits=[dict(f, flagged=False) for f in res["fits"]])
    assert "FLAGGED" not in benchmark.format_table(unflagged)


def test_help_gives_every_option_its_meaning_and_default():
    p = benchmark.parser()
    for a in p._actions:
        if a.dest == "help":
            continue
        assert a.help and len(a.help) > 15, a.option_strings
        assert "default" in a.help or a.const is not None, a.option_strings
    text = p.format_help()
    assert "output folder" in text and "bench/results, relative to the current folder" in text
    for m in benchmark.METHOD_NOTES:
        assert m in text
    assert "FLAGGED:" in text


def test_log_axes_label_sizes_and_minor_ticks():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ns = [2048, 8192, 32768, 131072]
    ax.plot(ns, [0.7, 2.3, 9.4, 36.0])  # 1.7 decades: minor ticks labelled
    benchmark.log_axes(ax, ns)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2K", "8K", "32K", "128K"]
    minor = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    assert {"2", "3", "5", "20", "30"} <= set(minor), minor
    fig2, ax2 = plt.subplots()
    ax2.plot(ns, [1e-3, 1.0, 1e3, 1e6])  # 9 decades: the decades alone
    benchmark.log_axes(ax2, ns)
    fig2.canvas.draw()
    assert not [t.get_text() for t in ax2.get_yticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    plt.close(fig2)


def test_plots_explain_the_method_names(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    texts = []
    real = Figure.text

    def text(fig, x, y, s, *a, **k):
        texts.append(s)
        return real(fig, x, y, s, *a, **k)
    monkeypatch.setattr(Figure, "text", text)
    res = benchmark.run(out_dir=str(tmp_path), **TINY)
    assert len([f for f in res["files"] if f.endswith(".png")]) == 3
    joined = " ".join(" ".join(t.split()) for t in texts)
    for m in ("mha_default", "mha_fast", "kv_cache", "liquid_memory_step"):
        assert "%s: %s" % (m, " ".join(benchmark.METHOD_NOTES[m].split())) in joined, m
