#!/usr/bin/env python3
"""hybrid_bench.py - hybrid attention's speed on the GPU (issue #16), in one run.

B = 1, E = 4096: 32 heads of 128, bf16, causal, elu+1, W = 64, s = 4 (the
issue's configuration). Records:
  core_prefill  ms: linear (lm_linear_attn_prefill) and hybrid (the same with
                LM_ATTENTION_HYBRID, keeping its state) at each length, and
                their ratio (target at 128K: hybrid <= 1.5x linear); peers in
                the same run: SDPA causal with the flash and cuDNN backends;
  decode_step   us: one core decode step (linear and hybrid) captured in a
                CUDA graph and replayed, from states prefilled to 4K and to
                the longest length (target <= 10 us, flat in context);
  error         relative error of the hybrid prefill against a float64
                evaluation of docs/DESIGN.md §9 (blocked here), and of the
                linear prefill against its own float64, at the lengths in
                --error-lengths.
Timing, peers and the linear float64 reference are gpu_bench.py's (CUDA
events after warm-up, median of repeats; graph replays). Writes one JSON
(date, commit, GPU, versions, records) to --out.

    LM_LIB_PATH=build/device/lib/libliquidmemory.so PYTHONPATH=bindings/python \\
        python3 bench/hybrid_bench.py --out hybrid.json
"""
import argparse
import datetime
import json
import math
import subprocess

import torch

from gpu_bench import graph_us, phi, reference64 as linear_reference64, sdpa, time_ms  # bench/
from liquid_memory import _core, hybrid

H, D, W, S_SINKS = 32, 128, 64, 4


def reference64(q, k, v, gamma, window, sinks, block=512):
    """docs/DESIGN.md §9.1 in float64, blocked over the queries: q, k, v
    [1, L, H, D] -> out [1, L, H, D] float64."""
    L = q.shape[1]
    qd, kd, vd = (x[0].double().transpose(0, 1) for x in (q, k, v))  # [H, L, D]
    fq, fk = phi(qd), phi(kd)
    Hh, Dd = qd.shape[0], qd.shape[2]
    S = torch.zeros(Hh, Dd, vd.shape[2], dtype=torch.float64, device=q.device)
    z = torch.zeros(Hh, Dd, dtype=torch.float64, device=q.device)
    g = gamma.double().view(Hh, 1, 1)
    out = torch.empty(1, L, Hh, vd.shape[2], dtype=torch.float64, device=q.device)
    done = sinks  # positions sinks .. done - 1 are in S
    for t0 in range(0, L, block):
        t1 = min(L, t0 + block)
        upto = t0 - window + 1  # evicted for query t0: positions < upto
        if upto > done:
            S += fk[:, done:upto].transpose(1, 2) @ vd[:, done:upto]
            z += fk[:, done:upto].sum(1)
            done = upto
        t = torch.arange(t0, t1, device=q.device).view(-1, 1)
        num = fq[:, t0:t1] @ S
        den = fq[:, t0:t1] @ z.unsqueeze(-1)
        j1 = t1 - window + 1
        if j1 > done:  # evicted inside the block: done .. t - W
            j = torch.arange(done, j1, device=q.device).view(1, -1)
            A = (fq[:, t0:t1] @ fk[:, done:j1].transpose(1, 2)) * (j <= t - window)
            num = num + A @ vd[:, done:j1]
            den = den + A.sum(-1, keepdim=True)
        w0 = max(0, t0 - window + 1)
        idx = torch.cat([torch.arange(0, min(sinks, w0), device=q.device), torch.arange(w0, t1, device=q.device)])
        j = idx.view(1, -1)
        ok = (j <= t) & ((j < sinks) | (j > t - window))
        lg = (qd[:, t0:t1] @ kd[:, idx].transpose(1, 2)) / math.sqrt(Dd)
        lg = lg.masked_fill(~ok, float("-inf"))
        a = g * torch.exp(lg - lg.amax(-1, keepdim=True))
        num = num + a @ vd[:, idx]
        den = den + a.sum(-1, keepdim=True)
        out[0, t0:t1] = (num / (den + 1e-6)).transpose(0, 1)
    return out


def rel(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--error-lengths", default="8192,131072")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", type=int, default=0, metavar="L",
                    help="for ncu --profile-from-start off: after a warm-up, one hybrid prefill of L tokens "
                         "and one decode step between cudaProfilerStart and Stop; writes no JSON")
    args = ap.parse_args()
    if args.profile:
        return profile(args.profile)
    lengths = [int(x) for x in args.lengths.split(",")]
    err_lengths = {int(x) for x in args.error_lengths.split(",") if x}
    dev = torch.device("cuda")
    torch.manual_seed(0)
    meta = {"date": datetime.datetime.utcnow().isoformat() + "Z", "commit": args.commit,
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "config": {"B": 1, "heads": H, "head_dim": D, "dtype": "bf16", "window": W, "sinks": S_SINKS,
                       "feature_map": "elu+1"}}
    try:
        meta["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    records = []

    def emit(**r):
        records.append(r)
        print(json.dumps(r), flush=True)

    opts = _core.Options()
    gate = torch.randn(H) * 0.5
    gate_host = hybrid._gate_host(gate, H)
    for L in lengths:
        q, k, v = (torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        lin = time_ms(lambda i: _core.prefill(q, k, v, opts=opts), args.reps)
        hyb = time_ms(lambda i: hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True),
                      args.reps)
        emit(kind="core_prefill", impl="linear", L=L, ms=lin)
        emit(kind="core_prefill", impl="hybrid", L=L, ms=hyb, ratio_to_linear=hyb / lin)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        for be in ("flash", "cudnn"):
            try:
                run = sdpa(be)
                emit(kind="core_prefill", impl="sdpa_" + be, L=L, ms=time_ms(lambda i: run(qt, kt, vt), args.reps))
            except Exception as e:  # a peer that cannot run is recorded, not fatal
                emit(kind="core_prefill", impl="sdpa_" + be, L=L, error=str(e)[:200])
        if L in err_lengths:
            with torch.no_grad():
                out, _ = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts)
                ref = reference64(q, k, v, torch.sigmoid(gate).to(dev), W, S_SINKS)
                emit(kind="error", impl="hybrid", L=L, rel_vs_float64=rel(out, ref),
                     bf16_output_floor=rel(ref.to(torch.bfloat16), ref))
                lo, _, _ = _core.prefill(q, k, v, opts=opts)
                emit(kind="error", impl="linear", L=L, rel_vs_float64=rel(lo, linear_reference64(q, k, v)))
        torch.cuda.empty_cache()

    # Decode steps in a CUDA graph, from states of 4K and of the longest length.
    for L0 in sorted({4096, max(lengths)}):
        q, k, v = (torch.randn(1, L0, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        _, st = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
        _, S, z = _core.prefill(q, k, v, opts=opts, want_state=True)
        x = [torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        emit(kind="decode_step", impl="hybrid", context=L0,
             us=graph_us(lambda: hybrid.c_decode(*x, st.S, st.z, st.keys, st.values, st.pos, L0, W, S_SINKS,
                                                 gate_host, opts)))
        emit(kind="decode_step", impl="linear", context=L0, us=graph_us(lambda: _core.decode(*x, S, z, L0, opts)))
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump({"metadata": meta, "records": records}, f, indent=1)


def profile(L):
    """One hybrid prefill and one decode step of the issue's configuration
    inside the profiler's range, after a warm-up of each outside it."""
    dev = torch.device("cuda")
    opts = _core.Options()
    gate_host = hybrid._gate_host(torch.zeros(H), H)
    q, k, v = (torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    x = [torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    for ranged in (False, True):
        _, st = hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
        torch.cuda.synchronize()
        if ranged:
            torch.cuda.profiler.start()
        hybrid.c_prefill(q, k, v, None, W, S_SINKS, gate_host, opts, want_state=True)
        hybrid.c_decode(*x, st.S, st.z, st.keys, st.values, st.pos, L, W, S_SINKS, gate_host, opts)
        torch.cuda.synchronize()
        if ranged:
            torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
