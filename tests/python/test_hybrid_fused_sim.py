"""
test_hybrid_fused_sim.py - bench/hybrid_fused_sim.py's chunked decomposition of the hybrid (the
plan of the fused CUDA window, bench/NOTES.md) against its per-position float64 definition, and
its rounding model: exact with every rounding off, near the bf16 floor with v2's hi + lo operands,
worse with the separate pass's bf16 numerator.
"""
import math
import os
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import hybrid_fused_sim as sim  # noqa: E402


@pytest.mark.parametrize("W,s,L", [(64, 4, 200), (64, 0, 129), (1, 0, 70), (13, 5, 140), (63, 64, 150),
                                   (64, 70, 201), (5, 2, 1)])
def test_decomposition_is_the_definition(W, s, L):
    torch.manual_seed(W * 1000 + s * 10 + L)
    H, D = 2, 16
    q, k, v = (torch.randn(H, L, D, dtype=torch.float64) for _ in range(3))
    gamma = torch.tensor([0.3, 0.8], dtype=torch.float64)
    got = sim.fused(q, k, v, W, s, gamma, 0.25, 1e-6, sim.Rounding("float64"))
    want = sim.reference(q, k, v, W, s, gamma, 0.25, 1e-6)
    assert (got - want).abs().max().item() < 1e-12  # float64 sums in another order


def test_rounding_model_orders_the_cases():
    torch.manual_seed(3)
    H, L, D = 2, 300, 32
    q, k, v = (sim.bf16(torch.randn(H, L, D, dtype=torch.float64)) for _ in range(3))
    gamma = torch.tensor([0.5, 0.7], dtype=torch.float64)
    scale = 1 / math.sqrt(D)
    ref = sim.reference(q, k, v, 64, 4, gamma, scale, 1e-6)
    floor = sim.rel(sim.bf16(ref), ref)

    def ratio(**kw):
        r = sim.Rounding("case", io=True, phi=True, fp32=True, **kw)
        return sim.rel(sim.fused(q, k, v, 64, 4, gamma, scale, 1e-6, r), ref) / floor
    fused, separate = ratio(), ratio(n_out=True)
    assert 1.0 <= fused < 1.05          # v2's hi + lo operands: within 5 % of the floor
    assert separate > fused + 0.1       # the numerator's trip through bf16 costs more than that
