#!/usr/bin/env python3
"""
instance_timing.py - times the core prefill kernel per input dtype and mode,
and the core backward, on the GPU: what a backward composed of forward
attentions would cost (bench/NOTES.md, "Core backward"). The f16 and f32
instances hold their operands as bf16 hi + lo pairs; this measures what that
costs against the bf16 instance, at B = 1, 32 heads of 128, causal.

    python3 bench/instance_timing.py --lib build/device/lib/libliquidmemory.so --out t.json
"""
import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--commit", default=os.environ.get("LM_COMMIT", "unknown"))
    a = ap.parse_args()
    os.environ["LM_LIB_PATH"] = a.lib
    from liquid_memory import _core
    from liquid_memory.benchmark import _Meter
    C = _core.C
    meter = _Meter(torch.device("cuda"))

    def timed(fn, reps):
        """Median milliseconds of fn over reps runs, after two warm-ups."""
        return meter.time(fn, 2, reps, 1e9)[0]

    dev = torch.device("cuda")
    H, D = 32, 128
    records = []
    modes = (("elu1_normalised", _core.Options()),
             ("identity_unnormalised", _core.Options(feature_map=C["LM_FEATURE_IDENTITY"],
                                                     normalize=False, scale=1.0)))
    for L in (int(x) for x in a.lengths.split(",")):
        gen = torch.Generator(device=dev).manual_seed(L)
        base = [torch.randn(1, L, H, D, device=dev, generator=gen) for _ in range(4)]
        reps = 20 if L <= 8192 else 5
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            q, k, v, do = (x.to(dt) for x in base)
            for name, opts in modes:
                ms = timed(lambda: _core.prefill(q, k, v, opts=opts), reps)
                rec = {"kind": "core_prefill", "dtype": str(dt).split(".")[1], "mode": name,
                       "L": L, "ms": ms}
                print(json.dumps(rec), flush=True)
                records.append(rec)
            if dt == torch.bfloat16:
                ms = timed(lambda: _core.backward(do, q, k, v), max(3, reps // 4))
                rec = {"kind": "core_backward", "dtype": "bfloat16", "mode": "elu1_normalised",
                       "L": L, "ms": ms}
                print(json.dumps(rec), flush=True)
                records.append(rec)
        del base
        torch.cuda.empty_cache()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": a.commit, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "shape": {"B": 1, "heads": H, "head_dim": D, "causal": True}}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
