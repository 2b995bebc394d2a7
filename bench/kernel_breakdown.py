#!/usr/bin/env python3
"""kernel_breakdown.py - where the GPU time of three workloads goes, per kernel,
from torch.profiler (CUDA activity only; issue #18's "what limits it"):

  core2k     the attention core's prefill at 2K tokens (B 1, 32 heads of 128,
             bf16, causal, elu+1): its launches, each kernel's time, and the
             wall time between the first launch's start and the last one's end;
             and the host time of one call (perf_counter around the Python call,
             which returns once its launches are queued: the median of 50)
  train      forward + backward of the LiquidMemory layer (E 4096, 32 heads,
             bf16, causal) from Python at each --train-lengths length

Each workload runs --warmup times, then --iters times under the profiler; the
JSON (--out) holds per kernel name: calls, total and mean µs per iteration,
share of the iteration's kernel time; and per workload the summed kernel time
against the CUDA-event time of one iteration (the gap is launch latency and
host work). Prints a table too.

    python3 bench/kernel_breakdown.py --out bench/results/x.json
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python"))
import liquid_memory  # noqa: E402
from liquid_memory import _core  # noqa: E402


def event_ms(fn, iters):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def host_us(fn, n):
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def breakdown(name, fn, warmup, iters):
    for _ in range(warmup):
        fn()
    wall = event_ms(fn, iters)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        if us <= 0:
            continue
        k = kernels.setdefault(e.key, {"calls": 0, "us": 0.0})
        k["calls"] += e.count
        k["us"] += us
    total = sum(k["us"] for k in kernels.values()) / iters
    rows = []
    for key, k in sorted(kernels.items(), key=lambda kv: -kv[1]["us"]):
        per = k["us"] / iters
        rows.append({"kernel": key, "calls_per_iter": k["calls"] / iters, "us_per_iter": per,
                     "share": per / total if total else 0.0})
    rec = {"workload": name, "iters": iters, "event_ms_per_iter": wall,
           "kernel_ms_per_iter": total / 1000.0, "kernels": rows}
    print("== %s: %.3f ms per iteration (CUDA events), kernels %.3f ms (%.0f %%)"
          % (name, wall, total / 1000.0, 100.0 * total / 1000.0 / wall if wall else 0.0))
    for r in rows[:15]:
        print("  %8.1f us  %5.1f %%  x%-5.1f  %s" % (r["us_per_iter"], 100 * r["share"],
                                                 r["calls_per_iter"], r["kernel"][:110]))
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-lengths", default="8192,131072")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--commit", default=os.environ.get("LM_COMMIT", "unknown"))
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_breakdown: needs CUDA")
    dev, dt = torch.device("cuda"), torch.bfloat16
    recs = []
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, 2048, 32, 128, generator=g).to(dev, dt) for _ in range(3))
    recs.append(breakdown("core prefill 2K", lambda: _core.prefill(q, k, v), a.warmup, a.iters))
    recs[-1]["host_us_per_call"] = host_us(lambda: _core.prefill(q, k, v), 50)
    print("  host time of one call: %.1f us (median of 50, launches queued, not waited for)"
          % recs[-1]["host_us_per_call"])
    del q, k, v
    E, H = 4096, 32
    lm = liquid_memory.LiquidMemory(E, H, batch_first=True, device=dev, dtype=dt)
    for L in (int(x) for x in a.train_lengths.split(",")):
        x = torch.randn(1, L, E, generator=g).to(dev, dt).requires_grad_(True)
        dout = torch.randn(1, L, E, generator=g).to(dev, dt)

        def step():
            lm.zero_grad(set_to_none=True)
            x.grad = None
            out = lm(x, x, x, is_causal=True, need_weights=False)[0]
            out.backward(dout)
        recs.append(breakdown("module forward + backward %dK" % (L // 1024), step, 2,
                              max(2, a.iters // (1 + L // 16384))))
        del x, dout
        torch.cuda.empty_cache()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": a.commit, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "records": recs}, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
