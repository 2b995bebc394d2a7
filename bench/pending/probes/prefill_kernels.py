#!/usr/bin/env python3
"""Session 7 probe: the kernels of one 128K hybrid prefill (hybrid_bench's configuration, the
state kept, as the ratio is timed) and of one linear prefill, each kernel's device time from
torch.profiler (CUPTI), three calls each after a warm-up; prints a table and writes JSON:
which fixed launches beside the fused kernel make up the ratio's last few percent.

    LM_LIB_PATH=... python3 bench/pending/probes/prefill_kernels.py out.json [L]"""
import collections
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from prefill_ratio5 import prefill_setup


def kernel_times(fn, calls=3):
    """Each CUDA kernel fn launches: its device time and launches a call, most time first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    us = collections.defaultdict(float)
    n = collections.Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            us[ev.name] += ev.device_time / calls  # microseconds a call
            n[ev.name] += 1
    return sorted(({"kernel": k[:160], "us_per_call": round(t, 2), "launches_per_call": n[k] / calls}
                   for k, t in us.items()), key=lambda r: -r["us_per_call"])


def main():
    L = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
    _, calls = prefill_setup(L)
    out = {}
    for name, fn in calls.items():
        rows = out[name] = kernel_times(fn)
        print(name, round(sum(r["us_per_call"] for r in rows), 1), "us a call")
        for r in rows:
            print(f"  {r['us_per_call']:10.2f} us  x{r['launches_per_call']:.0f}  {r['kernel']}")
    meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(), "L": L,
            "torch": torch.__version__}
    with open(sys.argv[1], "w") as f:
        json.dump({"metadata": meta, "kernels": out}, f, indent=1)


if __name__ == "__main__":
    main()
