#!/usr/bin/env python3
"""
backward_composed_sim.py - a CPU simulation of the planned CUDA core backward
built from the forward kernel (bench/NOTES.md, "Core backward: next"): checks
its identities against float64 autograd, and predicts its precision when the
forward kernel's bf16 operands and outputs are used.

Causal, normalised, elu+1, one head: a = phi(q), b = phi(k), d_t = a_t.z_t + eps,
o_t = a_t S_t / d_t with S_t = sum_{s<=t} b_s v_s^T, z_t = sum_{s<=t} b_s.
With g_t = dO_t / d_t and h_t = -(dO_t . o_t) / d_t the gradients are three
unnormalised linear attentions (identity feature map) plus two scans:
    dv_s = sum_{t>=s} (a_t . b_s) g_t              anti-causal: q = b, k = a, v = g
    db_s = sum_{t>=s} (g_t . v_s) a_t + sum_{t>=s} h_t a_t
                                                   anti-causal: q = v, k = g, v = a
    da_t = sum_{s<=t} (v_s . g_t) b_s + h_t z_t    causal:      q = g, k = v, v = b
    dq = da * phi'(q), dk = db * phi'(k)
(anti-causal = causal on the reversed sequence). The forward kernel holds a, b, g
as bf16 for its tensor cores and accumulates in fp32; this script does the same
(float32 matmuls on bf16-rounded operands) and reports each gradient's error
against float64 as a multiple of the bf16 rounding floor, with the attentions'
outputs rounded to bf16 before the last multiply (the kernel as it is) or kept
in fp32 (a kernel variant writing fp32 outputs), and with the operands held as
bf16 hi + lo pairs (what the f32 instance of the kernel does, 3 products each).

    /usr/bin/python3 bench/backward_composed_sim.py [--L 2048] [--D 64] [--seed 0]
"""
import argparse

import numpy as np
import torch


def bf16(x):
    """x rounded to bfloat16 (round to nearest even), as float32."""
    return torch.as_tensor(x, dtype=torch.float32).to(torch.bfloat16).to(torch.float32)


def split(x):
    """x as the f32 kernel instance holds it: bf16 hi + bf16 lo."""
    hi = bf16(x)
    return hi + bf16(x - hi)


def phi(x):
    return torch.where(x > 0, x + 1, torch.exp(x))


def dphi(x):
    return torch.where(x > 0, torch.ones_like(x), torch.exp(x))


def forward64(q, k, v, eps):
    """Quadratic-form reference in float64, differentiable."""
    a, b = phi(q), phi(k)
    A = torch.tril(a @ b.T)
    return (A @ v) / (A.sum(1, keepdim=True) + eps)


def causal_la(q, k, v):
    """Unnormalised causal linear attention, fp32 accumulation of fp32 operands."""
    return torch.tril(q @ k.T) @ v


def rev(x):
    return torch.flip(x, dims=[0])


def composed(q, k, v, dout, eps, operand, output):
    """The composed backward. operand / output: rounding of the attentions'
    operands (bf16 as the tensor cores take them) and of their outputs."""
    a, b = phi(q), phi(k)
    z = torch.cumsum(b, 0)
    d = (a * z).sum(1, keepdim=True) + eps
    o = output(causal_la(operand(a), operand(b), operand(v)) / d)  # the forward's output
    g = dout / d
    h = -(dout * o).sum(1, keepdim=True) / d
    ra, rb, rg, rv = (rev(operand(x)) for x in (a, b, g, v))
    dv = rev(output(causal_la(rb, ra, rg)))
    db = rev(output(causal_la(rv, rg, ra))) + rev(torch.cumsum(rev(h * a), 0))
    da = output(causal_la(operand(g), operand(v), operand(b))) + h * z
    return da * dphi(q), db * dphi(k), dv


def ratio(got, want):
    """Relative error against float64, as a multiple of the bf16 rounding floor."""
    err = torch.linalg.norm(got.double() - want) / torch.linalg.norm(want)
    floor = torch.linalg.norm(bf16(want).double() - want) / torch.linalg.norm(want)
    return float(err / floor), float(err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", type=int, default=2048)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(a.seed)
    q, k, v, dout = (bf16(torch.randn(a.L, a.D, generator=gen)).double() for _ in range(4))
    eps = 1e-6
    q64, k64, v64 = (x.clone().requires_grad_() for x in (q, k, v))
    forward64(q64, k64, v64, eps).backward(dout)
    want = (q64.grad, k64.grad, v64.grad)

    exact = composed(q, k, v, dout, eps, lambda x: x, lambda x: x)
    worst = max(float(torch.linalg.norm(x - w) / torch.linalg.norm(w)) for x, w in zip(exact, want))
    print("identities in float64: worst relative difference %.2e" % worst)
    np.testing.assert_array_less(worst, 1e-10)

    f32 = [x.float() for x in (q, k, v, dout)]
    print("L = %d, D = %d; error / bf16 floor (error) of dq, dk, dv rounded to bf16 once at the end:"
          % (a.L, a.D))
    for name, operand, output in (("bf16 operands, bf16 outputs", bf16, bf16),
                                  ("bf16 operands, fp32 outputs", bf16, lambda x: x),
                                  ("hi + lo operands, fp32 outputs", split, lambda x: x)):
        got = composed(*f32, eps, operand, output)
        cells = ["%s %.2fx (%.2e)" % ((n,) + ratio(bf16(x), w))
                 for n, x, w in zip(("dq", "dk", "dv"), got, want)]
        print("  %-32s %s" % (name, "  ".join(cells)))


if __name__ == "__main__":
    main()
