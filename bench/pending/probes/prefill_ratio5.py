#!/usr/bin/env python3
"""Session 6: the 128K prefill ratio (hybrid / linear), the two alternating five times in one
process (hybrid_bench's configuration and timing: median of 10 event-timed calls each), with
SDPA flash once as the peer in the same run. Writes JSON. Run from the repository root:

    LM_LIB_PATH=... python3 bench/pending/probes/prefill_ratio5.py out.json [L]

prefill_kernels.py shares its setup (prefill_setup)."""
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, "bench")
import torch
from gpu_bench import sdpa, time_ms
from hybrid_bench import D, H, S_SINKS, W
from liquid_memory import _core, hybrid


def prefill_setup(L):
    """q, k, v of L tokens and the two calls timed against each other: the linear prefill and
    the hybrid one with its state kept (as hybrid_bench times it)."""
    dev = torch.device("cuda")
    opts = _core.Options()
    gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
    q, k, v = (torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    calls = {"linear": lambda: _core.prefill(q, k, v, opts=opts),
             "hybrid": lambda: hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)}
    return (q, k, v), calls


def main():
    L = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
    (q, k, v), calls = prefill_setup(L)
    recs = []
    for i in range(5):
        lin = time_ms(lambda i: calls["linear"](), 10)
        hyb = time_ms(lambda i: calls["hybrid"](), 10)
        recs.append(dict(run=i, L=L, linear_ms=lin, hybrid_ms=hyb, ratio=hyb / lin))
        print(json.dumps(recs[-1]), flush=True)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    peer = dict(impl="sdpa_flash", L=L, ms=time_ms(lambda i: sdpa("flash")(qt, kt, vt), 3))
    print(json.dumps(peer), flush=True)
    meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(),
            "commit": os.environ.get("LM_COMMIT", "?"), "torch": torch.__version__,
            "ratio_median": statistics.median(r["ratio"] for r in recs)}
    with open(sys.argv[1], "w") as f:
        json.dump({"metadata": meta, "records": recs, "peers": [peer]}, f, indent=1)


if __name__ == "__main__":
    main()
