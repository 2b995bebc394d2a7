#!/usr/bin/env python3
"""
hybrid_fused_sim.py - the hybrid prefill with its window fused into kernel v2's
chunk loop, simulated on the CPU before any CUDA (bench/NOTES.md, "Hybrid prefill,
the fused window worked through"): is the chunk decomposition right, and what
does each rounding the fused kernel could afford cost in precision?

The decomposition (docs/DESIGN.md §9.1 / §9.3, chunk C = 64, window W <= 64,
sinks s): query chunk t0 .. t0 + 63 reads
  - the state S, z over the evicted keys every query of the chunk has
    evicted: positions s .. t0 - W - 1;
  - one 64-key block at positions t0 - W .. t0 - W + 63 (v2's key chunk on
    the shifted views), each key j counted linearly for query t iff
    s <= j <= t - W, through A = phi(Q) phi(K)^T as v2's intra-chunk term;
  - the window: keys (t - W, t] and the sinks [0, s), softmax weights
    gamma exp(scale q.k - m) against raw q and k,
and divides the sum of the two numerators by the sum of the two weights.
With every rounding off the chunked result must equal the per-position
float64 definition to ~1e-12 (checked; the run fails otherwise).

Then the kernel's roundings, each alone and together: q, k, v are bf16 inputs
throughout; phi(q), phi(k) stored as bf16 (v2 converts in place); S read as
bf16 hi + lo (v2 today) or bf16 hi only (option (b) of the plan: no room for
the lo half once raw k sits beside phi(k)); A as bf16 hi + lo or hi only; the
window weights P as bf16 hi + lo or hi only; products accumulated in fp32;
the output rounded to bf16; and, for comparison, today's separate window pass,
whose linear call writes its numerator N to the bf16 output before the window
kernel adds to it (docs/DESIGN.md §9.3). Errors are relative (Frobenius) against the
float64 reference and reported as multiples of the floor (the reference
rounded to bf16), as gpu_bench.py and hybrid_bench.py measure them.

    /usr/bin/python3 bench/hybrid_fused_sim.py [--L 2100] [--heads 4] [--D 128] [--out F.json]
"""
import argparse
import datetime
import json
import math
import time

import torch

C = 64


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


def phi(x):
    return torch.where(x > 0, x + 1, torch.exp(x))


def reference(q, k, v, W, s, gamma, scale, eps):
    """float64, per query position, straight from the definition. q, k, v [H, L, D]."""
    H, L, _ = q.shape
    out = torch.empty_like(q)
    for t in range(L):
        j = torch.arange(t + 1)
        win = (j < s) | (j > t - W)
        ev = ~win
        lg = scale * (k[:, :t + 1] @ q[:, t, :, None])[..., 0]        # [H, t + 1]
        m = lg.masked_fill(~win, -math.inf).amax(-1, keepdim=True)
        a = gamma[:, None] * torch.exp(lg - m) * win
        b = (phi(k[:, :t + 1]) @ phi(q[:, t, :, None]))[..., 0] * ev
        w = a + b
        out[:, t] = (w[..., None] * v[:, :t + 1]).sum(1) / (w.sum(-1, keepdim=True) + eps)
    return out


class Rounding:
    """Which of the fused kernel's roundings apply (all off: float64 exactly)."""

    def __init__(self, name, io=False, phi=False, s_lo=True, a_lo=True, p_lo=True, fp32=False, n_out=False):
        self.name, self.io, self.phi, self.fp32 = name, io, phi, fp32
        self.s_lo, self.a_lo, self.p_lo = s_lo, a_lo, p_lo
        self.n_out = n_out  # the separate pass: N goes through the bf16 output before the window adds

    def acc(self, x):  # an fp32 accumulator (or float64 with rounding off)
        return x.float().double() if self.fp32 else x

    def split(self, x, lo):  # an operand as bf16 hi (+ lo), as the kernel feeds it to wgmma
        if not self.fp32:
            return x
        hi = bf16(x)
        return hi + bf16(x - hi) if lo else hi


def fused(q, k, v, W, s, gamma, scale, eps, r):
    """The chunked decomposition with roundings r. q, k, v [H, L, D] float64 (already bf16 values
    where r.io)."""
    H, L, D = q.shape
    out = torch.empty_like(q)
    fq = bf16(phi(q)) if r.phi else phi(q)
    fk = bf16(phi(k)) if r.phi else phi(k)
    S = torch.zeros(H, D, D, dtype=q.dtype)
    z = torch.zeros(H, D, dtype=q.dtype)
    folded = s  # keys s .. folded - 1 are in S, z
    for t0 in range(0, L, C):
        t = torch.arange(t0, min(t0 + C, L))
        n = len(t)
        # the state over keys every query of the chunk has evicted: s .. t0 - W - 1
        while folded < t0 - W:
            j1 = min(t0 - W, folded + C)
            S = r.acc(S + fk[:, folded:j1].transpose(1, 2) @ v[:, folded:j1])
            z = r.acc(z + fk[:, folded:j1].sum(1))
            folded = j1
        # the linear part: state + the 64-key block t0 - W .. t0 - W + 63 (keys >= s, j <= t - W)
        N = r.acc(fq[:, t] @ r.split(S, r.s_lo))
        Dn = r.acc((fq[:, t] * r.split(z, True)[:, None, :]).sum(-1))
        j = torch.arange(max(s, t0 - W), max(s, t0 - W + C))
        j = j[j < L]
        if len(j):
            A = r.acc(fq[:, t] @ fk[:, j].transpose(1, 2))                   # [H, n, |j|]
            A = A * (j[None, :] <= t[:, None] - W)
            N = r.acc(N + r.split(A, r.a_lo) @ v[:, j])
            Dn = r.acc(Dn + A.sum(-1))
        # the window: the sinks and (t - W, t], at most s + W + 63 keys for the chunk
        jw = torch.arange(0, t0 + n)
        jw = jw[(jw < s) | (jw > t0 - W)]
        inwin = (jw[None, :] <= t[:, None]) & ((jw[None, :] < s) | (jw[None, :] > t[:, None] - W))
        lg = r.acc(scale * (q[:, t] @ k[:, jw].transpose(1, 2)))
        m = lg.masked_fill(~inwin, -math.inf).amax(-1, keepdim=True)
        P = r.acc(gamma[:, None, None] * torch.exp(lg - m) * inwin)
        WN = r.acc(r.split(P, r.p_lo) @ v[:, jw])
        WD = r.acc(P.sum(-1))
        if r.n_out:
            N = bf16(N)
        out[:, t] = (N + WN) / (Dn + WD + eps)[..., None]
    return bf16(out) if r.io else out


def rel(x, ref):
    return (x - ref).norm().item() / ref.norm().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=2100)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    t_start = time.time()
    torch.manual_seed(0)
    H, L, D = a.heads, a.L, a.D
    scale, eps = 1.0 / math.sqrt(D), 1e-6
    gamma = torch.sigmoid(torch.linspace(-1.0, 1.0, H, dtype=torch.float64))
    records = []

    # 1. the decomposition, every rounding off, several (W, s), ragged L
    exact = Rounding("float64")
    for W, s, Lc in ((64, 4, 300), (64, 0, 257), (1, 0, 130), (13, 5, 200), (63, 64, 199), (64, 70, 333)):
        q, k, v = (torch.randn(H, Lc, D, dtype=torch.float64) for _ in range(3))
        err = (fused(q, k, v, W, s, gamma, scale, eps, exact) - reference(q, k, v, W, s, gamma, scale, eps)).abs().max().item()
        print("decomposition W %2d s %2d L %4d: max |fused - definition| %.2e" % (W, s, Lc, err))
        records.append({"check": "decomposition", "W": W, "s": s, "L": Lc, "max_abs": err})
        if err > 1e-10:
            raise SystemExit("the chunked decomposition does not match the definition")

    # 2. the roundings, W = 64, s = 4, bf16 inputs
    q, k, v = (bf16(torch.randn(H, L, D, dtype=torch.float64)) for _ in range(3))
    ref = reference(q, k, v, 64, 4, gamma, scale, eps)
    floor = rel(bf16(ref), ref)
    cases = [
        Rounding("separate pass today (N via bf16)", io=True, phi=True, fp32=True, n_out=True),
        Rounding("fused, S, A, P as hi + lo", io=True, phi=True, fp32=True),
        Rounding("S hi only (option b)", io=True, phi=True, fp32=True, s_lo=False),
        Rounding("A hi only", io=True, phi=True, fp32=True, a_lo=False),
        Rounding("P hi only", io=True, phi=True, fp32=True, p_lo=False),
        Rounding("S and P hi only", io=True, phi=True, fp32=True, s_lo=False, p_lo=False),
        Rounding("all hi only", io=True, phi=True, fp32=True, s_lo=False, a_lo=False, p_lo=False),
    ]
    print("roundings, W 64, s 4, L %d, %d heads of %d: floor %.3e" % (L, H, D, floor))
    for r in cases:
        e = rel(fused(q, k, v, 64, 4, gamma, scale, eps, r), ref)
        print("  %-32s %.3e = %.3f x floor" % (r.name, e, e / floor))
        records.append({"check": "rounding", "case": r.name, "rel": e, "floor": floor, "ratio": e / floor,
                        "W": 64, "s": 4, "L": L, "heads": H, "D": D})
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                                "seconds": round(time.time() - t_start, 1), "gamma": gamma.tolist()},
                       "records": records}, f, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
