#!/usr/bin/env python3
"""Session 7 probe: the kernels of one 128K hybrid prefill (hybrid_bench's configuration, the
state kept, as the ratio is timed) and of one linear prefill, each kernel's device time from
torch.profiler (CUPTI), three calls each after a warm-up; prints a table and writes JSON:
which fixed launches beside the fused kernel make up the ratio's last few percent.

    LM_LIB_PATH=... python3 bench/pending/probes/prefill_kernels.py out.json [L]"""
import collections
import datetime
import json
import sys

sys.path.insert(0, "bench")  # run from the repository root
import torch
from hybrid_bench import D, H, S_SINKS, W
from liquid_memory import _core, hybrid

L = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
dev = torch.device("cuda")
opts = _core.Options()
gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
q, k, v = (torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
calls = {"linear": lambda: _core.prefill(q, k, v, opts=opts),
         "hybrid": lambda: hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)}
out = {}
for name, fn in calls.items():
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    us = collections.defaultdict(float)
    n = collections.Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            us[ev.name] += ev.device_time / 3  # microseconds per call
            n[ev.name] += 1
    rows = sorted(({"kernel": k[:160], "us_per_call": round(t, 2), "launches_per_call": n[k] / 3}
                   for k, t in us.items()), key=lambda r: -r["us_per_call"])
    out[name] = rows
    print(name, round(sum(r["us_per_call"] for r in rows), 1), "us a call")
    for r in rows:
        print(f"  {r['us_per_call']:10.2f} us  x{r['launches_per_call']:.0f}  {r['kernel']}")
meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(), "L": L,
        "torch": torch.__version__}
json.dump({"metadata": meta, "kernels": out}, open(sys.argv[1], "w"), indent=1)
