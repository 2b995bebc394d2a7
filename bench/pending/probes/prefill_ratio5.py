#!/usr/bin/env python3
"""Session 6: the 128K prefill ratio (hybrid / linear), the two alternating five times in one
process (hybrid_bench's configuration and timing: median of 10 event-timed calls each), with
SDPA flash once as the peer in the same run. Writes JSON."""
import json, os, sys, datetime, statistics
sys.path.insert(0, "bench")  # run from the repository root
import torch
from gpu_bench import time_ms, sdpa
from hybrid_bench import D, H, S_SINKS, W
from liquid_memory import _core, hybrid

L = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
dev = torch.device("cuda")
opts = _core.Options()
gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
q, k, v = (torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
recs = []
for i in range(5):
    lin = time_ms(lambda i: _core.prefill(q, k, v, opts=opts), 10)
    hyb = time_ms(lambda i: hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True), 10)
    r = dict(run=i, L=L, linear_ms=lin, hybrid_ms=hyb, ratio=hyb / lin)
    recs.append(r); print(json.dumps(r), flush=True)
qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
peer = dict(impl="sdpa_flash", L=L, ms=time_ms(lambda i: sdpa("flash")(qt, kt, vt), 3))
print(json.dumps(peer), flush=True)
meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(),
        "commit": os.environ.get("LM_COMMIT", "?"), "torch": torch.__version__,
        "ratio_median": statistics.median(r["ratio"] for r in recs)}
json.dump({"metadata": meta, "records": recs, "peers": [peer]}, open(sys.argv[1], "w"), indent=1)
