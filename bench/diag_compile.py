#!/usr/bin/env python3
"""diag_compile.py - where torch.compile of a LiquidMemory module breaks.

On the GPU machine (torch 2.11) test_hybrid::test_compile_matches_eager died
with SIGSEGV after the compiled backward (in the first use of the gradients),
and test_compile's fullgraph tests failed; the CPU machine's torch 1.13 has no
torch.compile to reproduce either. This runs the same forward + backward for
each (attention, device, backend) in its own process, so a crash costs one
line of the table, and says which layer of torch.compile is at fault:
  eager      dynamo traces, runs the captured graph eagerly
  aot_eager  + AOT autograd (our custom ops' fake functions, the joint graph)
  inductor   + inductor's generated kernels
A case passes when the compiled outputs and gradients match eager ones.

    python3 bench/diag_compile.py [--out DIR] [--attention hybrid] [--device cuda]   # writes diag_compile.json there
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = r"""
import sys, torch
sys.path.insert(0, %(pkg)r)
from liquid_memory import LiquidMemory
attention, device, backend = %(attention)r, %(device)r, %(backend)r
torch.manual_seed(3)
kw = dict(attention="hybrid", window=8, sinks=2) if attention == "hybrid" else {}
m = LiquidMemory(32, 4, batch_first=True, **kw).to(device)
if attention == "hybrid":
    with torch.no_grad():
        m.window_gate.normal_()
x = torch.randn(2, 40, 32, device=device)
out, _ = m(x, x, x, is_causal=True, need_weights=False)
out.square().sum().backward()
want = {n: p.grad.clone() for n, p in m.named_parameters()}
m.zero_grad()
cm = torch.compile(m, backend=backend, fullgraph=True)
got, _ = cm(x, x, x, is_causal=True, need_weights=False)
print("forward done", flush=True)
got.square().sum().backward()
print("backward done", flush=True)
if device == "cuda":
    torch.cuda.synchronize()
err = (got - out).abs().max().item()
gerr = max((p.grad - want[n]).abs().max().item() for n, p in m.named_parameters())
print("RESULT %%g %%g" %% (err, gerr), flush=True)
"""


def run_case(attention, device, backend, timeout):
    src = CHILD % {"pkg": os.path.join(os.path.dirname(HERE), "bindings", "python"),
                   "attention": attention, "device": device, "backend": backend}
    try:
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", src], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "why": "timeout after %d s" % timeout}
    r = {"rc": p.returncode, "stages": [s for s in ("forward done", "backward done")
                                        if s in p.stdout]}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            err, gerr = map(float, line.split()[1:])
            r.update(out_err=err, grad_err=gerr, ok=err <= 1e-5 and gerr <= 1e-4)
    if p.returncode != 0:
        r["ok"] = False
        r["tail"] = (p.stderr or p.stdout)[-1500:]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".", help="folder for diag_compile.json (default: .)")
    ap.add_argument("--timeout", type=int, default=150,
                    help="seconds per case before it counts as hung (default: 150)")
    ap.add_argument("--attention", default="linear,hybrid",
                    help="comma-separated attentions to run (default: linear,hybrid)")
    ap.add_argument("--device", default="cpu,cuda",
                    help="comma-separated devices to run, cuda only where present (default: cpu,cuda)")
    args = ap.parse_args()
    import torch
    devices = [d for d in args.device.split(",") if d == "cpu" or torch.cuda.is_available()]
    res = {"torch": torch.__version__, "cases": []}
    if not hasattr(torch, "compile"):
        sys.exit("torch %s has no torch.compile (needs >= 2.0): nothing to diagnose" % torch.__version__)
    for attention in args.attention.split(","):
        for device in devices:
            for backend in ("eager", "aot_eager", "inductor"):
                r = run_case(attention, device, backend, args.timeout)
                r.update(attention=attention, device=device, backend=backend)
                res["cases"].append(r)
                print("%-7s %-5s %-10s rc=%s ok=%s %s" % (attention, device, backend, r["rc"],
                                                         r.get("ok"), r.get("stages")), flush=True)
                if not r.get("ok") and r.get("tail"):
                    print("   " + r["tail"].strip().splitlines()[-1][:300], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "diag_compile.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
