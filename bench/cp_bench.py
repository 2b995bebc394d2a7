#!/usr/bin/env python3
"""cp_bench.py - context parallelism (liquid_memory.distributed, issue #21) on
GPUs: one sequence split evenly over the ranks, NCCL.

Several GPUs (launched with torchrun; every rank runs this file):
    torchrun --standalone --nproc_per_node 2 bench/cp_bench.py --tokens 1048576 --out DIR
    torchrun --standalone --nproc_per_node 8 bench/cp_bench.py --tokens 8388608 --backward \
        --no-baseline --out DIR
  measures the context-parallel attention core over the group (forward, and
  with --backward forward + backward), each rank timing its part with CUDA
  events between barriers, the step's time being the slowest rank's; its
  pieces (absorb, state exchange, prefill from the prefix) timed alone; the
  state traffic of one step; and, unless --no-baseline, the whole sequence on
  rank 0's GPU alone in the same run (the issue's target: 1M tokens on 2
  GPUs <= 0.55x of that).
One GPU (--single, no torchrun): the check that the context-parallel path
adds nothing at world size 1 (a NCCL group of one rank: the module forward +
backward and the core with and without the group), and the pieces' costs on
one GPU at --tokens / 2 against the prefill of --tokens, from which the
2-GPU time is *projected* (labelled so in the JSON, never reported as
measured).

Config: B = 1, --heads heads (kv heads too) of 128, bf16, causal, elu+1,
normalised (the core benchmark's shape, bench/NOTES.md). Median of
--repeat runs after a warm-up. Writes cp_bench_<mode>_<date>.json: date,
commit, GPUs, world size, config, every time, traffic, targets.
"""
import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bindings", "python"))

from liquid_memory import LiquidMemory, _core, _ops, distributed  # noqa: E402

D = 128


def log(*a):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print("[cp_bench]", *a, flush=True)


def commit():
    c = os.environ.get("LM_COMMIT")
    if c:
        return c
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def median_ms(fn, repeat, group=None):
    """Median over `repeat` runs of fn's time in ms (CUDA events, after one
    warm-up); with a group, each run starts after a barrier and counts as the
    slowest rank's time."""
    fn()
    times = []
    for _ in range(repeat):
        if group is not None:
            dist.barrier(group)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        t = torch.tensor([a.elapsed_time(b)], device="cuda")
        if group is not None:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        times.append(float(t))
    times.sort()
    return times[len(times) // 2]


def qkv(L, H, Hkv, grad=False):
    g = torch.Generator(device="cuda").manual_seed(L)
    return [torch.randn(1, L, h, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(grad)
            for h in (H, Hkv, Hkv)]


def core_fn(q, k, v, group, backward):
    """One step: the attention core (forward, or forward + backward of sum(out * w))."""
    def step():
        out = distributed.linear_attention(q, k, v, group=group)[0] if group is not None else \
            _ops.prefill(q, k, v)[0]
        if backward:
            torch.autograd.backward(out, out.detach())
    return step


def pieces(L, H, Hkv, repeat, group, backward):
    """The parts of a step on this GPU for a segment of L tokens: absorb, the
    exchange of one state per rank (with a group), the prefill from a state;
    with backward, the core backward from a state and the local absorb
    backward. absorb_torch_bf16_ms: the same sum as one bf16 einsum (a lower
    bound for a cuBLAS absorb, for comparison; its bf16 result is not used)."""
    q, k, v = qkv(L, H, Hkv)
    S, z = torch.zeros(1, Hkv, D, D, device="cuda"), torch.zeros(1, Hkv, D, device="cuda")
    out = {"absorb_ms": median_ms(lambda: _core.absorb(k, v, None, S.zero_(), z.zero_()), repeat),
           "prefill_from_state_ms": median_ms(lambda: _core.prefill(q, k, v, None, S, z, 0), repeat),
           "absorb_torch_bf16_ms": median_ms(
               lambda: torch.einsum("bthd,bthe->bhde", torch.nn.functional.elu(k) + 1, v), repeat)}
    if backward:
        do = torch.randn_like(q)
        out["backward_from_state_ms"] = median_ms(
            lambda: _core.backward(do, q, k, v, None, S, z, None, None, 0, True, None, True), repeat)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        out["absorb_backward_ms"] = median_ms(
            lambda: distributed._absorb_backward(k, v, None, S, z, _core.Options(), dk, dv), repeat)
    if group is not None:
        buf = torch.zeros(distributed.state_bytes(1, Hkv, D, D) // 4, device="cuda")
        parts = [torch.empty_like(buf) for _ in range(dist.get_world_size(group))]
        out["exchange_ms"] = median_ms(lambda: dist.all_gather(parts, buf, group=group), repeat, group)
    return out


def multi(args):
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before NCCL starts on it
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    H, Hkv, L = args.heads, args.kv_heads or args.heads, args.tokens
    seg = L // world
    rec = {"mode": "multi", "world": world, "tokens": L, "segment": seg, "heads": H, "kv_heads": Hkv,
           "head_dim": D, "backward": args.backward,
           "state_bytes_sent_per_rank_per_exchange": distributed.state_bytes(1, Hkv, D, D),
           "exchanges_per_step": 2 if args.backward else 1}
    rec["state_bytes_received_per_rank_per_step"] = \
        rec["state_bytes_sent_per_rank_per_exchange"] * (world - 1) * rec["exchanges_per_step"]
    q, k, v = qkv(seg, H, Hkv, args.backward)
    torch.cuda.reset_peak_memory_stats()
    rec["cp_ms"] = median_ms(core_fn(q, k, v, group, args.backward), args.repeat, group)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2 ** 30], device="cuda")
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    rec["cp_peak_gib_per_gpu"] = float(peak)
    del q, k, v
    rec["pieces"] = pieces(seg, H, Hkv, args.repeat, group, args.backward)
    log("cp over %d GPUs, %d tokens: %.2f ms" % (world, L, rec["cp_ms"]), rec["pieces"])
    if not args.no_baseline:
        base = torch.zeros(1, device="cuda")
        if rank == 0:
            torch.cuda.empty_cache()
            q, k, v = qkv(L, H, Hkv, args.backward)
            base[0] = median_ms(core_fn(q, k, v, None, args.backward), args.repeat)
            del q, k, v
        dist.broadcast(base, 0)
        rec["one_gpu_ms"] = float(base)
        rec["ratio"] = rec["cp_ms"] / rec["one_gpu_ms"]
        rec["target_ratio"] = 0.55 if world == 2 else None
        log("one GPU: %.2f ms, ratio %.3f" % (rec["one_gpu_ms"], rec["ratio"]))
    dist.destroy_process_group()
    return rec if rank == 0 else None


def module_ms(L, H, Hkv, group, repeat):
    """LiquidMemory (E = H * 128) forward + backward of one sequence of L tokens."""
    m = LiquidMemory(H * D, H, batch_first=True, device="cuda", dtype=torch.bfloat16, num_kv_heads=Hkv,
                     context_parallel_group=group)
    x = torch.randn(1, L, H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        out, _ = m(x, x, x, is_causal=True, need_weights=False)
        out.backward(out.detach())
    return median_ms(step, repeat)


def single(args):
    """World size 1 on one GPU: the wrapper costs nothing; the pieces' costs."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % port, rank=0, world_size=1)
    group = dist.group.WORLD
    H, Hkv = args.heads, args.kv_heads or args.heads
    rec = {"mode": "single", "heads": H, "kv_heads": Hkv, "head_dim": D, "world_size_one": {}}
    for L in args.lengths:
        q, k, v = qkv(L, H, Hkv, True)
        r = {"core_fwd_bwd_ms": median_ms(core_fn(q, k, v, None, True), args.repeat),
             "core_fwd_bwd_cp1_ms": median_ms(core_fn(q, k, v, group, True), args.repeat)}
        del q, k, v
        r["module_fwd_bwd_ms"] = module_ms(L, H, Hkv, None, args.repeat)
        r["module_fwd_bwd_cp1_ms"] = module_ms(L, H, Hkv, group, args.repeat)
        rec["world_size_one"][str(L)] = r
        log("world size 1, L=%d:" % L, r)
    # The pieces at half the tokens against the whole prefill: what 2 GPUs would take.
    half = args.tokens // 2
    p = pieces(half, H, Hkv, args.repeat, None, True)
    q, k, v = qkv(args.tokens, H, Hkv)
    whole = median_ms(core_fn(q, k, v, None, False), args.repeat)
    del q, k, v
    rec["projection_2gpu"] = {
        "tokens": args.tokens, "one_gpu_prefill_ms": whole, "half": p,
        "projected_ratio_without_exchange": (p["absorb_ms"] + p["prefill_from_state_ms"]) / whole,
        "note": "PROJECTED from one GPU (absorb + prefill of half the tokens against the prefill of "
                "all), not measured on two GPUs; the exchange (2 MiB all_gather) is not included"}
    log("projection:", rec["projection_2gpu"])
    dist.destroy_process_group()
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=0, help="0 = --heads")
    ap.add_argument("--backward", action="store_true", help="forward + backward (multi)")
    ap.add_argument("--no-baseline", action="store_true", help="multi: skip the one-GPU run")
    ap.add_argument("--single", action="store_true", help="one GPU: world size 1 and the pieces")
    ap.add_argument("--lengths", default="8192,131072", help="--single: world-size-1 lengths")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    t0 = time.time()
    rec = single(args) if args.single else multi(args)
    if rec is None:
        return
    rec.update(date=datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S UTC"), commit=commit(),
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               torch=torch.__version__, seconds=round(time.time() - t0, 1),
               config="B=1, bf16, causal, elu+1, normalised")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cp_bench_%s_%s.json" % (
        rec["mode"], datetime.datetime.utcnow().strftime("%Y%m%d-%H%M%S")))
    with open(path, "w") as f:
        json.dump(rec, f, indent=1)
    log("wrote", path)


if __name__ == "__main__":
    main()
