#!/usr/bin/env python3
"""
eager_step.py - the host cost of one eager decode step, the thing a Python
generation loop pays per token: the core decode (liquid_memory's
_ops.decode on projected q, k, v, as an engine calls it) and the whole
module step (LiquidMemory.step: in-projection, decode, out-projection),
each beside its floors measured in the same run:
  core_c_call        lm_linear_attn_decode called directly with one prepared
                     lm_core_args (no Python work but the call): the floor of
                     core_eager
  core_eager         _ops.decode(q, k, v, S, z, position): what an engine calls
  core_python        core_eager with the C call replaced by a Python no-op: the
                     binding's own host cost (core_eager - core_python is what
                     the C call costs the eager path)
  core_graph         core_eager captured in a CUDA graph and replayed (CUDA): the
                     kernel's own time
  torch_linear_pair  the module step's two projections alone (F.linear in and
                     out): the floor of module_step_eager in eager PyTorch
  module_step_eager  LiquidMemory.step(x) under torch.no_grad()
  module_step_graph  module_step_eager captured in a CUDA graph (CUDA)
Each number is the median over --rounds of (time of --calls back-to-back calls,
then one synchronize) / --calls: the cost per call of a loop that never waits
for the GPU, i.e. host time wherever the host is slower than the kernel.

The module step has a floor no host work can beat: at batch 1 it reads all
four projection weights (in_proj's three and out_proj) once per token. The
output states it as weight_read_floor_us = the module's parameter bytes /
--bandwidth (an ASSUMED memory bandwidth, default 3.0 TB/s, about what an
H100 SXM's HBM3 sustains; not measured here). For E=4096 in bf16 that is
4 * 4096 * 4096 * 2 B = 134 MB, 44.7 us at 3.0 TB/s: issue 20's module target
(40 us) is below it.

    python3 bench/eager_step.py                   # CUDA: E=4096, 32 heads, bf16, batch 1
    python3 bench/eager_step.py --device cpu      # host-cost proxy: tiny sizes on the CPU

On the CPU the C call itself computes on the host, so the default there is a
tiny layer (E=64, 4 heads, fp32) whose arithmetic is a few hundred flops: the
numbers are then Python + binding + torch dispatch cost on this machine's CPU,
a proxy for the GPU machine's host cost (a different, faster CPU), not a GPU
measurement. Prints a table and writes
<out>/eager_step_<device>_<time>.json (date, commit, GPU, torch, config, records).
Targets (issue 20, H100): core_eager <= 15 us, module_step_eager <= 40 us (below
the weight-read floor above, so not reachable as stated at E=4096 bf16).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bindings", "python"))

from liquid_memory import LiquidMemory, _core, _ffi, _ops  # noqa: E402

TARGETS_US = {"core_eager": 15.0, "module_step_eager": 40.0}  # H100, issue 20
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def per_call_us(fn, calls, rounds, sync, reset):
    """Median over rounds of the time per call of `calls` back-to-back calls
    (reset() before each round, untimed: the module's context stays short)."""
    for _ in range(max(10, calls // 10)):
        fn()
    sync()
    out = []
    for _ in range(rounds):
        reset()
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(out), out


def graphed(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def without_c_call(lib, fn, measure):
    """measure(fn) while the thread's decode plan (made by fn()) calls a
    Python no-op instead of lm_linear_attn_decode; the real call is put
    back after."""
    fn()
    plan = lib.plans.decode
    real = plan.fn
    plan.fn = lambda args, stream: 0
    try:
        return measure(fn)
    finally:
        plan.fn = real


def weight_read_floor_us(module, bandwidth_tbs):
    """The module step's floor: every parameter byte read once per token at
    the assumed bandwidth (TB/s)."""
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    return nbytes / (bandwidth_tbs * 1e12) * 1e6, nbytes


def raw_c_call(q, k, v, S, z, position):
    """lm_linear_attn_decode with one prepared lm_core_args: only the call."""
    lib = _ffi.binding()
    keep = []
    out = torch.empty(q.shape[0], 1, q.shape[2], v.shape[3], dtype=q.dtype, device=q.device)
    a = _core._args(lib, keep, q, k, v, out, None, S, z, position, True, _core.DEFAULT_OPTIONS)
    fn, ref = lib.fn("lm_linear_attn_decode"), lib.ref(a)
    stream = lib.stream(torch.cuda.current_stream().cuda_stream) if q.is_cuda else lib.null

    def call():
        return fn(ref, stream)
    call.keep = (keep, a, out)
    return call


def commit():
    if os.environ.get("LM_COMMIT"):
        return os.environ["LM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (cpu: the host-cost proxy at tiny sizes)")
    p.add_argument("--embed-dim", type=int, help="default 4096 on CUDA, 64 on the CPU")
    p.add_argument("--num-heads", type=int, help="default 32 on CUDA, 4 on the CPU")
    p.add_argument("--batch", type=int, default=1, help="tokens per step (batch rows)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, f32 on the CPU")
    p.add_argument("--calls", type=int, default=1000,
                   help="back-to-back calls per round (at most 4000 without a licence: the "
                        "module's context grows by one per call)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported")
    p.add_argument("--bandwidth", type=float, default=3.0,
                   help="ASSUMED memory bandwidth in TB/s for weight_read_floor_us (the module "
                        "step's weight-read floor); an assumption, not a measurement")
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "bench", "results"),
                   help="folder for the JSON (created if missing); '' writes none")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # set_device needs an index
    E = a.embed_dim or (4096 if cuda else 64)
    H = a.num_heads or (32 if cuda else 4)
    dtype = DTYPES[a.dtype or ("bf16" if cuda else "f32")]
    D, B = E // H, a.batch
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.set_device(dev)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 1, H, D, generator=g).to(dev, dtype) for _ in range(3))
    S = torch.zeros(B, H, D, D, device=dev)
    z = torch.zeros(B, H, D, device=dev)
    lm = LiquidMemory(E, H, batch_first=True, device=dev, dtype=dtype).eval()
    x = torch.randn(B, E, generator=g).to(dev, dtype)
    o = torch.randn(B, E, generator=g).to(dev, dtype)
    w_in, b_in = lm.in_proj_weight.detach(), lm.in_proj_bias.detach()
    w_out, b_out = lm.out_proj.weight.detach(), lm.out_proj.bias.detach()
    position = 100  # fixed: the state keeps changing, the context count does not grow

    def core():
        return _ops.decode(q, k, v, S, z, position)

    def linear_pair():
        F.linear(x, w_in, b_in)
        return F.linear(o, w_out, b_out)

    def step():
        return lm.step(x)

    methods = [("core_c_call", raw_c_call(q, k, v, S, z, position)), ("core_eager", core)]
    if cuda:
        methods.append(("core_graph", graphed(core)))
    methods += [("torch_linear_pair", linear_pair), ("module_step_eager", step)]
    records = []
    with torch.no_grad():
        if cuda:
            methods.append(("module_step_graph", graphed(step)))
        for name, fn in methods:
            us, rounds = per_call_us(fn, a.calls, a.rounds, sync, lm.reset_state)
            records.append({"method": name, "us_per_call": us, "rounds_us": rounds})
        us, rounds = without_c_call(_ffi.binding(), core, lambda fn: per_call_us(
            fn, a.calls, a.rounds, sync, lambda: None))
        records.insert(2, {"method": "core_python", "us_per_call": us, "rounds_us": rounds})
    floor_us, weight_bytes = weight_read_floor_us(lm, a.bandwidth)

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit(), "torch": torch.__version__, "python": platform.python_version(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                     if ln.startswith("model name")), platform.processor()),
        "library": _ffi.binding().version(), "ffi": _ffi.binding().kind,
        "custom_op": _ops.USE_CUSTOM_OP,
        "config": {"embed_dim": E, "num_heads": H, "head_dim": D, "batch": B,
                   "dtype": str(dtype).replace("torch.", ""), "calls": a.calls,
                   "rounds": a.rounds},
        "targets_us": TARGETS_US if cuda else None,
        "weight_read_floor_us": floor_us,
        "weight_bytes": weight_bytes,
        "assumed_bandwidth_tbs": a.bandwidth,
        "weight_read_floor_note": "module step floor at batch 1: the module's parameter bytes "
                                  "read once per token at an ASSUMED bandwidth "
                                  "(--bandwidth), not measured",
        "note": None if cuda else "CPU: host-cost proxy (tiny layer, the C call computes on "
                                  "this CPU), not a GPU number",
        "records": records,
    }
    print("eager decode step, %s, E=%d, %d heads, batch %d, %s, commit %s%s"
          % (info["gpu"] or info["cpu"], E, H, B, info["config"]["dtype"], info["commit"],
             "" if cuda else "  [CPU: host-cost proxy]"))
    print("%-20s %12s   %s" % ("method", "us / call", "target (H100)"))
    for r in records:
        t = TARGETS_US.get(r["method"])
        print("%-20s %12.2f   %s" % (r["method"], r["us_per_call"], "<= %g" % t if t else ""))
    print("module step weight-read floor: %.3g us (%.1f MB of parameters at an assumed %.2f TB/s)"
          % (floor_us, weight_bytes / 1e6, a.bandwidth))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        path = os.path.join(a.out, "eager_step_%s_%s.json" % (
            dev.type, datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
        with open(path, "w") as f:
            json.dump(info, f, indent=1)
        print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
