#!/usr/bin/env python3
"""Session 6 probe: the hybrid decode step (hybrid_bench's configuration, 4K state) in a CUDA
graph under env settings (LMK_PROBE_STOP / LMK_PROBE_NVB of the probe plugin), alternating, and
the linear step; prints and writes JSON."""
import json, os, sys, datetime
sys.path.insert(0, "bench")  # run from the repository root
import torch
from gpu_bench import graph_us
from liquid_memory import _core, hybrid

H, D, W, S_SINKS, L0 = 32, 128, 64, 4, 4096
cfgs = [c for c in sys.argv[2].split(",")] if len(sys.argv) > 2 else ["-"]
dev = torch.device("cuda")
opts = _core.Options()
gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
q, k, v = (torch.randn(1, L0, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
_, st = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
_, S, z = _core.prefill(q, k, v, opts=opts, want_state=True)
x = [torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
recs = []
for rep in range(3):
    for c in cfgs:
        for key in [k for k in os.environ if k.startswith("LMK_PROBE_")]:
            os.environ.pop(key, None)
        if c != "-":
            for kv in c.split("+"):
                a, b = kv.split("=")
                os.environ[a] = b
        us = graph_us(lambda: hybrid.c_decode(*x, st.S, st.z, st.keys, st.values, st.pos, L0, W, S_SINKS,
                                              gate_host, opts))
        r = dict(cfg=c, rep=rep, us=us)
        recs.append(r); print(json.dumps(r), flush=True)
    r = dict(cfg="linear", rep=rep, us=graph_us(lambda: _core.decode(*x, S, z, L0, opts)))
    recs.append(r); print(json.dumps(r), flush=True)
meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(),
        "lib": os.environ.get("LM_LIB_PATH"), "torch": torch.__version__}
json.dump({"metadata": meta, "records": recs}, open(sys.argv[1], "w"), indent=1)
