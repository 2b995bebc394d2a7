#!/usr/bin/env python3
"""Session 6 probe: per-CTA phase timestamps (clock64 from CTA entry; globaltimer) of single
hybrid decode steps (4K state, warm), printed by the ts plugin under LMK_PROBE_TS."""
import ctypes, os, sys
libc = ctypes.CDLL(None)
sys.path.insert(0, "bench")  # run from the repository root
import torch
from liquid_memory import _core, hybrid
H, D, W, S_SINKS, L0 = 32, 128, 64, 4, 4096
dev = torch.device("cuda")
opts = _core.Options()
gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
q, k, v = (torch.randn(1, L0, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
_, st = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
x = [torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
step = lambda: hybrid.c_decode(*x, st.S, st.z, st.keys, st.values, st.pos, L0, W, S_SINKS, gate_host, opts)
for cfg in sys.argv[1:]:
    for rep in range(3):
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        os.environ["LMK_PROBE_TS"] = "1"
        for kv in cfg.split("+"):
            if kv != "-":
                a, b = kv.split("="); os.environ[a] = b
        print(f"CFG {cfg} {rep}", flush=True)
        step()
        torch.cuda.synchronize()
        libc.fflush(None)
        print("", flush=True)
        for key in [k for k in os.environ if k.startswith("LMK_PROBE_")]:
            os.environ.pop(key, None)
