#!/usr/bin/env python3
"""
cpu_compare.py - LiquidMemory against nn.MultiheadAttention on the CPU, in one run.

    LM_LIB_PATH=build/lib/libliquidmemory.so LM_LICENSE_FILE=build/dev-license \
        /usr/bin/python3 bench/cpu_compare.py [--threads N] [--lengths 1024,...,16384]

Both layers: E = 512, 8 heads, fp32, batch 1, causal self-attention, inference
(eval, no_grad), the same weights and the same number of threads (OMP_NUM_THREADS
is set before torch loads, so torch and libliquidmemory share one OpenMP
runtime with one thread count; torch.set_num_threads as well).
  LiquidMemory:  m(x, x, x, is_causal=True, need_weights=False)
  MHA:           mha(x, x, x, attn_mask=<causal bool mask>, need_weights=False
                     [, is_causal=True where torch has it])
  projections:   the layer's projections alone (packed q|k|v, then out): a floor both share
A length where MHA would take longer than --mha-max-seconds (extrapolated as
L^2 from the previous length) or need more than half the available memory
(three L x L fp32 matrices per head) is skipped for MHA, and the output says so.
Times are medians (3 runs after a warm-up; one run where a call takes seconds).
Writes bench/results/cpu_compare_<time>.json unless --no-json.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(" - ")[1])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--embed-dim", type=int, default=512)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--mha-max-seconds", type=float, default=120.0)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--no-json", action="store_true")
    return p.parse_args()


ARGS = parse()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)  # before torch and the library load

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

try:
    import liquid_memory  # noqa: E402
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    import liquid_memory  # noqa: E402
from liquid_memory import LiquidMemory  # noqa: E402


def timed(fn, est_seconds):
    """Median seconds of fn: warm-up + 3 runs, or a single run when slow."""
    slow = est_seconds is not None and est_seconds > 2.0
    if not slow:
        fn()
    runs = []
    for _ in range(1 if slow else 3):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def main():
    torch.set_num_threads(ARGS.threads)
    E, H = ARGS.embed_dim, ARGS.num_heads
    lengths = [int(x) for x in ARGS.lengths.split(",")]
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    lm = LiquidMemory.from_mha(mha).eval()
    info = liquid_memory.library_info()
    has_is_causal = "is_causal" in mha.forward.__code__.co_varnames
    print("cpu_compare: E=%d, %d heads, fp32, batch 1, causal, inference; %d threads "
          "(torch %s, OMP_NUM_THREADS=%s); library %s (%s)"
          % (E, H, torch.get_num_threads(), torch.__version__, os.environ["OMP_NUM_THREADS"],
             info["version"], info["path"]))
    print("load average at start: %s" % (loadavg(),))
    print()
    print("%7s  %14s  %14s  %14s  %9s" % ("L", "LiquidMemory", "MHA", "projections", "speedup"))
    rows, last_mha = [], None
    for L in lengths:
        x = torch.randn(1, L, E)
        row = {"L": L}
        with torch.no_grad():
            try:
                row["liquid_s"], row["liquid_runs"] = timed(
                    lambda: lm(x, x, x, is_causal=True, need_weights=False), None)
            except liquid_memory.LicenseError as e:
                row["liquid_s"], row["liquid_note"] = None, str(e)

            def proj():
                qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
                return F.linear(qkv[..., :E], mha.out_proj.weight, mha.out_proj.bias)
            row["proj_s"], _ = timed(proj, None)

            est = None if last_mha is None else last_mha[1] * (L / last_mha[0]) ** 2
            need = 3 * H * L * L * 4
            avail = mem_available()
            if est is not None and est > ARGS.mha_max_seconds:
                row["mha_s"] = None
                row["mha_note"] = ("skipped: estimated %.0f s (L^2 from L=%d) > --mha-max-seconds=%g"
                                   % (est, last_mha[0], ARGS.mha_max_seconds))
            elif avail is not None and need > avail / 2:
                row["mha_s"] = None
                row["mha_note"] = ("skipped: needs about %.1f GB for its L x L matrices, more than "
                                   "half of the %.1f GB available" % (need / 1e9, avail / 1e9))
            else:
                mask = torch.ones(L, L, dtype=torch.bool).triu(1)
                kw = {"is_causal": True} if has_is_causal else {}
                row["mha_s"], row["mha_runs"] = timed(
                    lambda: mha(x, x, x, attn_mask=mask, need_weights=False, **kw), est)
                last_mha = (L, row["mha_s"])
                del mask
        lq, mh = row.get("liquid_s"), row.get("mha_s")
        row["speedup"] = mh / lq if lq and mh else None
        rows.append(row)
        fmt = (lambda s: "%11.1f ms" % (s * 1e3) if s is not None else "%14s" % "-")
        print("%7d  %14s  %14s  %14s  %9s" % (
            L, fmt(lq), fmt(mh), fmt(row["proj_s"]),
            "%8.1fx" % row["speedup"] if row["speedup"] else "-"), flush=True)
    print()
    for r in rows:
        for key in ("mha_note", "liquid_note"):
            if r.get(key):
                print("L=%d: %s %s" % (r["L"], "MHA" if key == "mha_note" else "LiquidMemory",
                                         r[key]))
    print("load average at end: %s (a busy machine inflates both columns)" % (loadavg(),))
    at8k = next((r for r in rows if r["L"] == 8192 and r["speedup"]), None)
    if at8k:
        print("L=8192: LiquidMemory is %.1fx faster than MHA (target >= 20x): %s"
              % (at8k["speedup"], "met" if at8k["speedup"] >= 20 else "NOT met"))
    if not ARGS.no_json:
        os.makedirs(ARGS.out, exist_ok=True)
        path = os.path.join(ARGS.out, "cpu_compare_%s.json"
                            % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        with open(path, "w") as f:
            json.dump({"config": {"embed_dim": E, "num_heads": H, "dtype": "float32", "batch": 1,
                                  "threads": ARGS.threads, "causal": True},
                       "torch": torch.__version__, "library": info, "rows": rows,
                       "loadavg_end": loadavg()}, f, indent=1)
        print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
