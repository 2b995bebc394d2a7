#!/usr/bin/env python3
"""Session 6 probe: the hybrid decode step (hybrid_bench's configuration, 4K state) in a CUDA
graph under env settings (the LMK_PROBE_* knobs of the probe plugins), alternating, and the
linear step; prints and writes JSON. Run from the repository root:

    LM_LIB_PATH=... python3 bench/pending/probes/decode_probe.py out.json "-,LMK_PROBE_STOP=2,..."

A setting "chainN" times N steps captured in one graph (as a model's layers are), per step,
for the hybrid and the linear step.

decode_probe_ts.py shares its setup (decode_setup, set_probe_env)."""
import datetime
import json
import os
import sys

sys.path.insert(0, "bench")
import torch
from gpu_bench import graph_us
from hybrid_bench import D, H, S_SINKS, W
from liquid_memory import _core, hybrid

L0 = 4096


def decode_setup():
    """States prefilled to L0 tokens (hybrid and linear) and one token's inputs; returns
    (hybrid step, linear step) as callables."""
    dev = torch.device("cuda")
    opts = _core.Options()
    gate_host = hybrid._gate_host(torch.randn(H) * 0.5, H)
    q, k, v = (torch.randn(1, L0, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    _, st = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
    _, S, z = _core.prefill(q, k, v, opts=opts, want_state=True)
    x = [torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    return (lambda: hybrid.c_decode(*x, st.S, st.z, st.keys, st.values, st.pos, L0, W, S_SINKS, gate_host, opts),
            lambda: _core.decode(*x, S, z, L0, opts))


def set_probe_env(cfg, **extra):
    """The LMK_PROBE_* variables cleared, then those of cfg ("-" or "NAME=v+NAME=v") and extra set."""
    for name in [n for n in os.environ if n.startswith("LMK_PROBE_")]:
        del os.environ[name]
    pairs = [] if cfg == "-" else [kv.split("=") for kv in cfg.split("+")]
    os.environ.update(dict(pairs, **extra))


def main():
    cfgs = sys.argv[2].split(",") if len(sys.argv) > 2 else ["-"]
    hybrid_step, linear_step = decode_setup()
    recs = []
    for rep in range(3):
        for c in cfgs:
            if c.startswith("chain"):  # n steps in one graph (a model's layers): the per-step time
                n = int(c[5:])
                set_probe_env("-")
                for name, fn in (("hybrid", hybrid_step), ("linear", linear_step)):
                    us = graph_us(lambda: [fn() for _ in range(n)], replays=2000 // n) / n
                    recs.append(dict(cfg=f"{name}-{c}", rep=rep, us=us))
                    print(json.dumps(recs[-1]), flush=True)
                continue
            set_probe_env(c)
            recs.append(dict(cfg=c, rep=rep, us=graph_us(hybrid_step)))
            print(json.dumps(recs[-1]), flush=True)
        recs.append(dict(cfg="linear", rep=rep, us=graph_us(linear_step)))
        print(json.dumps(recs[-1]), flush=True)
    set_probe_env("-")
    meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "gpu": torch.cuda.get_device_name(),
            "lib": os.environ.get("LM_LIB_PATH"), "torch": torch.__version__}
    with open(sys.argv[1], "w") as f:
        json.dump({"metadata": meta, "records": recs}, f, indent=1)


if __name__ == "__main__":
    main()
