#!/usr/bin/env python3
"""
phi_precision_sim.py - how precise must the forward kernel's feature map be?
A CPU float64 simulation for bench/NOTES.md ("What would close the gap": the
conversion of q and k to phi costs about 10 instructions per element in fp32;
packed bf16x2 arithmetic would take about half).

Causal, normalised elu+1 linear attention, randn q, k, v rounded to bf16, in
float64 except for phi, computed three ways and stored as bf16 as the kernel
stores it:
    fp32     bf16(elu(x) + 1) from fp32 arithmetic (the kernel since v6.1)
    bf16x2   x > 0: bf16(x + 1); else bf16(2^bf16(x * bf16(log2 e))), i.e.
             the product and ex2 in packed bf16 (the ex2 itself taken as
             correctly rounded, which flatters it)
    bf16x2f  the product in fp32, rounded to bf16 for a bf16 ex2
    bf16x2u  bf16x2 with every ex2 result one bf16 ulp off, in a random
             direction (a pessimistic stand-in for ex2.approx's own error)
Each output is rounded to bf16; its error against the float64 reference (exact
phi) is reported as a multiple of the floor, the error of rounding the reference
itself to bf16 (gpu_bench.py's measure). The kernel's other roundings are not
simulated: the ratios isolate phi's share.

    /usr/bin/python3 bench/phi_precision_sim.py [--L 8192] [--heads 4] [--D 128] [--out F.json]
"""
import argparse
import json
import math
import time

import torch


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def phi_exact(x):
    return torch.where(x > 0, x + 1, torch.exp(x))


def phi_fp32(x):
    return bf16(phi_exact(x.float()).double())


def phi_bf16x2(x, product_fp32, ulp_off=False):
    arg = x.float() * math.log2(math.e) if product_fp32 else \
        (x.to(torch.bfloat16) * torch.tensor(math.log2(math.e), dtype=torch.bfloat16)).float()
    e = bf16(torch.exp2(bf16(arg).double()))
    if ulp_off:  # one ulp (2^-7 of the leading power of two) up or down
        sign = torch.randint(0, 2, e.shape, dtype=torch.float64) * 2 - 1
        e = bf16(e + sign * torch.exp2(torch.floor(torch.log2(e.clamp_min(1e-30)))) * 2.0 ** -7)
    return torch.where(x > 0, bf16((x + 1).float()).double(), e)


def attend64(fq, fk, v, block=1024):
    """fq, fk, v [L, h, D] float64 -> causal normalised linear attention [L, h, D]."""
    L, h, d = fq.shape
    S = torch.zeros(h, d, d, dtype=torch.float64)
    z = torch.zeros(h, d, dtype=torch.float64)
    out = torch.empty(L, h, d, dtype=torch.float64)
    for t0 in range(0, L, block):
        a, b, vv = (x[t0:t0 + block].transpose(0, 1) for x in (fq, fk, v))
        A = torch.tril(a @ b.transpose(1, 2))
        num = a @ S + A @ vv
        den = (a * z[:, None, :]).sum(-1) + A.sum(-1)
        out[t0:t0 + block] = (num / den[..., None]).transpose(0, 1)
        S += b.transpose(1, 2) @ vv
        z += b.sum(1)
    return out


def rel(x, ref):
    return ((x - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--L", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result as JSON here")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    q, k, v = (bf16(torch.randn(a.L, a.heads, a.D, dtype=torch.float64)) for _ in range(3))
    ref = attend64(phi_exact(q), phi_exact(k), v)
    floor = rel(bf16(ref), ref)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "L": a.L, "heads": a.heads, "D": a.D,
              "seed": a.seed, "floor": floor, "ratio_to_floor": {}}
    for name, f in (("fp32", phi_fp32), ("bf16x2", lambda x: phi_bf16x2(x, False)),
                    ("bf16x2f", lambda x: phi_bf16x2(x, True)),
                    ("bf16x2u", lambda x: phi_bf16x2(x, False, True))):
        o = bf16(attend64(f(q), f(k), v))
        result["ratio_to_floor"][name] = rel(o, ref) / floor
        print("%-8s phi: output error %.3e = %.3f x the bf16 floor" % (name, rel(o, ref), rel(o, ref) / floor),
              flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(result, fh, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
