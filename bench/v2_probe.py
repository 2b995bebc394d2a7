#!/usr/bin/env python3
"""v2_probe.py - which product of the prefill kernel is wrong, if one is.

Runs small prefills on the GPU whose answers isolate the kernel's parts
(identity map, unnormalised, one head, B = 1) and compares each with a
float64 reference: "qs" (one chunk, k = 0: O = q S0, the published state and
the readout's S product), "intra" (one chunk, no state: O = masked(q k^T) v),
"state" (three chunks and the final state: the state update and its
hand-over between chunks), "full" (elu+1 normalised, 1000 tokens, 4 heads).
The kernel is the one LM_ATTEND_KERNEL picks. Prints one line per probe:
its name, head dim, and max |error| / max |reference| of outputs (and state).

    LM_ATTEND_KERNEL=v2 python3 bench/v2_probe.py
"""
import torch

from liquid_memory import _core

C = _core.C


def ref(q, k, v, S0, z0, fm, norm, eps=1e-6):
    q, k, v = (x.double() for x in (q, k, v))
    if fm == C["LM_FEATURE_ELU1"]:
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    B, L, H, D = q.shape
    S = S0.double().clone() if S0 is not None else torch.zeros(B, H, D, v.shape[3], dtype=torch.float64, device=q.device)
    z = z0.double().clone() if z0 is not None else torch.zeros(B, H, D, dtype=torch.float64, device=q.device)
    out = torch.empty(B, L, H, v.shape[3], dtype=torch.float64, device=q.device)
    for t in range(L):
        S = S + torch.einsum("bhd,bhe->bhde", k[:, t], v[:, t])
        z = z + k[:, t]
        o = torch.einsum("bhd,bhde->bhe", q[:, t], S)
        if norm:
            o = o / (torch.einsum("bhd,bhd->bh", q[:, t], z)[..., None] + eps)
        out[:, t] = o
    return out, S, z


def rel(x, want):
    return ((x.double() - want).abs().max() / want.abs().max()).item()


def probe(name, D, L, H=1, zero_k=False, state=False, fm=C["LM_FEATURE_IDENTITY"], norm=False):
    g = torch.Generator(device="cuda").manual_seed(D * 1000 + L)
    q, k, v = (torch.randn(1, L, H, D, device="cuda", generator=g).bfloat16() for _ in range(3))
    if zero_k:
        k.zero_()
    S0 = torch.randn(1, H, D, D, device="cuda", generator=g) if state else None
    z0 = torch.rand(1, H, D, device="cuda", generator=g) if state else None
    opts = _core.Options(feature_map=fm, normalize=norm, scale=1.0)
    out, S, z = _core.prefill(q, k, v, S0=S0, z0=z0, opts=opts, want_state=True)
    torch.cuda.synchronize()
    want, wS, wz = ref(q, k, v, S0, z0, fm, norm)
    print("%-6s D %3d L %4d  out %.2e  S %.2e  z %.2e" % (name, D, L, rel(out, want), rel(S, wS), rel(z, wz)))


for D in (64, 128):
    probe("qs", D, 64, zero_k=True, state=True)
    probe("intra", D, 64)
    probe("state", D, 192)
    probe("full", D, 1000, H=4, state=True, fm=C["LM_FEATURE_ELU1"], norm=True)
