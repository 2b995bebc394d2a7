"""
test_eviction_bench.py - bench/eviction_bench.py and its helpers on the CPU: every strategy of
bench/evict_attention.py against a float64 reference written here from the definitions
(DESIGN.md §2.1 for the hybrid; H2O's eviction rule as a plain loop), the memory figures, the
Zoology MQAR batches, and a --quick run of the whole benchmark (seconds) whose JSON must hold
every strategy of both parts in the seed's layout.
"""
import json
import math
import os
import sys

import pytest
import torch

from conftest import ROOT, ref_attention

sys.path.insert(0, os.path.join(ROOT, "bench"))
import eviction_bench  # noqa: E402
import evict_library  # noqa: E402
from evict_attention import Strategy, attend, decode_bytes, make_strategy  # noqa: E402
from evict_mqar import Curriculum, mqar_batch  # noqa: E402

TOL64 = 1e-10  # float64: blocked / chunked sums against per-position sums


def ref_window_hybrid(q, k, v, kind, sinks, window, gate, eps=1e-6, gate_fn=torch.sigmoid):
    """Per query t, straight from the definitions: Win_t = {j <= t: j < s or j > t - W},
    Ev_t the rest of j <= t; streaming / full: softmax over Win_t; hybrid: a_j =
    sigmoid(g_h) exp(scale q.k_j - m_t) on Win_t (exp(g_h) in the variant), b_j =
    phi(q).phi(k_j) on Ev_t."""
    B, H, L, D = q.shape
    scale = 1 / math.sqrt(D)
    out = torch.zeros_like(v)
    g = gate_fn(gate).view(1, H, 1)
    for t in range(L):
        j = torch.arange(t + 1)
        win = (j < sinks) | (j > t - window)
        s = (q[:, :, t:t + 1] @ k[:, :, :t + 1].transpose(-1, -2))[:, :, 0] * scale
        m = s.masked_fill(~win, -math.inf).amax(-1, keepdim=True)
        a = torch.where(win, torch.exp(s - m), torch.zeros_like(s))
        if kind == "hybrid":
            fq = torch.nn.functional.elu(q[:, :, t:t + 1]) + 1
            fk = torch.nn.functional.elu(k[:, :, :t + 1]) + 1
            b = torch.where(win, torch.zeros_like(s), (fq @ fk.transpose(-1, -2))[:, :, 0])
            w, den_eps = g * a + b, eps
        else:
            w, den_eps = a, 0.0
        out[:, :, t] = (w[..., None] * v[:, :, :t + 1]).sum(2) / \
            (w.sum(-1, keepdim=True) + den_eps)
    return out


def ref_h2o(q, k, v, heavy, recent):
    """H2O as a list of cached positions per (batch, head): before token t enters a full
    cache (heavy + recent entries), drop the entry with the least accumulated attention
    among those at positions <= t - recent; attend; add the weights to the scores."""
    B, H, L, D = q.shape
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            cache, score = [], {}
            for t in range(L):
                if len(cache) == heavy + recent:
                    old = [j for j in cache if j <= t - recent]
                    drop = min(old, key=lambda j: (score[j], cache.index(j)))
                    cache.remove(drop)
                cache.append(t)
                score[t] = 0.0
                s = torch.stack([q[b, h, t] @ k[b, h, j] for j in cache]) / math.sqrt(D)
                w = torch.softmax(s, 0)
                out[b, h, t] = sum(w[i] * v[b, h, j] for i, j in enumerate(cache))
                for i, j in enumerate(cache):
                    score[j] += float(w[i])
    return out


def _qkv(L, B=2, H=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("sinks,window", [(4, 12), (0, 1), (3, 60), (1, 7)])
def test_window_strategies_match_the_definitions(sinks, window):
    """full, streaming and hybrid at ragged lengths around W and s + W (and past the
    query block of 256), float64."""
    gate = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    for L in sorted({1, max(1, window - 1), window, window + 1, sinks + window + 1, 300}):
        q, k, v = _qkv(L, seed=L)
        for kind in ("streaming", "hybrid"):
            got = attend(q, k, v, Strategy(kind, sinks + window, sinks, window), gate)
            want = ref_window_hybrid(q, k, v, kind, sinks, window, gate)
            assert (got - want).abs().max() < TOL64, (kind, L)
        got = attend(q, k, v, Strategy("hybrid", sinks + window, sinks, window, gate="exp"), gate)
        want = ref_window_hybrid(q, k, v, "hybrid", sinks, window, gate, gate_fn=torch.exp)
        assert (got - want).abs().max() < TOL64, ("hybrid, exp gate", L)
        want = ref_window_hybrid(q, k, v, "streaming", 0, L, gate)
        assert (attend(q, k, v, make_strategy("full")) - want).abs().max() < TOL64


def test_hybrid_evicted_share():
    """The diagnostic share of the evicted tokens: 0 while nothing is evicted (t < s + W),
    then sum_Ev b / (gamma sum_Win a + sum_Ev b + eps), from the definitions."""
    q, k, v = _qkv(50, seed=3)
    gate = torch.tensor([0.5, -0.5, 2.0], dtype=torch.float64)
    stats = []
    attend(q, k, v, Strategy("hybrid", 10, 2, 8), gate, stats=stats)
    (share,) = stats
    assert share.shape == (2, 3, 50) and (share[..., :10] == 0).all()
    D, t = 8, 30
    j = torch.arange(t + 1)
    win = (j < 2) | (j > t - 8)
    s = (q[:, :, t:t + 1] @ k[:, :, :t + 1].transpose(-1, -2))[:, :, 0] / math.sqrt(D)
    a = torch.exp(s - s.masked_fill(~win, -math.inf).amax(-1, keepdim=True))[..., win].sum(-1)
    fq, fk = (torch.nn.functional.elu(x) + 1 for x in (q[:, :, t:t + 1], k[:, :, :t + 1]))
    b = (fq @ fk.transpose(-1, -2))[:, :, 0][..., ~win].sum(-1)
    want = b / (torch.sigmoid(gate) * a + b + 1e-6)
    assert (share[..., t] - want).abs().max() < TOL64


def test_linear_matches_the_suites_reference():
    q, k, v = _qkv(200)
    want = ref_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))[0]
    want = want.transpose(1, 2)
    assert (attend(q, k, v, make_strategy("linear")) - want).abs().max() < TOL64


@pytest.mark.parametrize("heavy,recent,L", [(2, 2, 19), (3, 5, 40), (0, 4, 12), (4, 1, 15)])
def test_h2o_matches_the_eviction_rule(heavy, recent, L):
    q, k, v = _qkv(L, B=2, H=2, D=4, seed=heavy + recent)
    got = attend(q, k, v, Strategy("h2o", heavy + recent, heavy=heavy, recent=recent))
    assert (got - ref_h2o(q, k, v, heavy, recent)).abs().max() < TOL64


def test_h2o_limits():
    """A budget of at least L evicts nothing (= full); no heavy hitters = a sliding window
    (= streaming without sinks)."""
    q, k, v = _qkv(30)
    full = attend(q, k, v, make_strategy("full"))
    assert (attend(q, k, v, Strategy("h2o", 30, heavy=15, recent=15)) - full).abs().max() < TOL64
    window = attend(q, k, v, Strategy("streaming", 6, 0, 6))
    assert (attend(q, k, v, Strategy("h2o", 6, heavy=0, recent=6)) - window).abs().max() < TOL64


def test_splits_and_memory():
    s = make_strategy("hybrid", 64)
    assert (s.sinks, s.window) == (4, 60)
    h = make_strategy("h2o", 64)
    assert (h.heavy, h.recent) == (32, 32)
    H, D, ctx = 4, 16, 4096
    kv = 2 * H * D * 2  # bytes per entry, bf16
    state = H * D * (D + 1) * 4
    assert decode_bytes(make_strategy("full"), ctx, H, D, 2)["total_bytes"] == ctx * kv
    assert decode_bytes(s, ctx, H, D, 2)["total_bytes"] == 64 * kv + state
    assert decode_bytes(make_strategy("linear"), ctx, H, D, 2)["total_bytes"] == state
    assert decode_bytes(h, ctx, H, D, 2)["total_bytes"] == 64 * kv + 64 * H * 4
    assert decode_bytes(make_strategy("streaming", 64), 10, H, D, 2)["kv_entries"] == 10


@pytest.mark.parametrize("gate_kind", ["sigmoid", "exp"])
def test_hybrid_gradients_match_the_definition(gate_kind):
    """The blocked / chunked hybrid trains what the definition says: gradients of q, k, v
    and the gates against autograd through the per-position float64 reference."""
    q, k, v = (t.requires_grad_() for t in _qkv(45, seed=7))
    gate = torch.tensor([-1.0, 0.3, 1.2], dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 45, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    s = Strategy("hybrid", 11, 3, 8, gate=gate_kind)
    got = torch.autograd.grad((attend(q, k, v, s, gate) * w).sum(), (q, k, v, gate))
    fn = torch.sigmoid if gate_kind == "sigmoid" else torch.exp
    want = torch.autograd.grad((ref_window_hybrid(q, k, v, "hybrid", 3, 8, gate, gate_fn=fn)
                                * w).sum(), (q, k, v, gate))
    for g, r in zip(got, want):
        assert (g - r).abs().max() < TOL64 * max(1.0, float(r.abs().max()))
    assert (got[3] != 0).all()


def test_mqar_batches_follow_zoology():
    """Pairs first, each key queried once at an even offset after them, the target its
    value; keys, values and the random tokens in disjoint ranges (a key occurs only as a
    key and as its query)."""
    P, L, V = 5, 64, 48
    tok, tgt = mqar_batch(16, L, P, V, torch.Generator().manual_seed(3))
    assert tok.shape == tgt.shape == (16, L)
    for b in range(16):
        keys, vals = tok[b, 0:2 * P:2].tolist(), tok[b, 1:2 * P:2].tolist()
        assert len(set(keys)) == P and all(1 <= x < V // 4 for x in keys)
        assert len(set(vals)) == P and all(V // 4 <= x < V // 2 for x in vals)
        where = (tgt[b] != -100).nonzero().flatten().tolist()
        assert len(where) == P and all(p >= 2 * P and p % 2 == 0 for p in where)
        assert sorted(tok[b, where].tolist()) == sorted(keys)  # every key queried once
        for p in where:
            assert tgt[b, p].item() == vals[keys.index(tok[b, p].item())]
        rest = [p for p in range(2 * P, L) if p not in where]
        assert all(V // 2 <= x < V for x in tok[b, rest].tolist())
    with pytest.raises(ValueError):
        mqar_batch(1, L, 12, V, torch.Generator())  # 12 keys do not fit in [1, 12)


def test_curriculum_waits_for_the_recall():
    """The length doubles after `grow` steps once the accuracy is there, else after 3 x
    grow steps; it stops at the end length."""
    c = Curriculum(16, 64, 5)
    seen = []
    for acc in [0.1] * 14 + [0.95] * 6 + [0.1] * 20:
        seen.append(c.L)
        c.advance(acc)
    assert seen[:15] == [16] * 15 and seen[15] == 32      # no recall: 3 x 5 steps at 16
    assert seen[15:20] == [32] * 5 and seen[20] == 64     # recall: 5 steps at 32
    assert set(seen[20:]) == {64}


@pytest.fixture(scope="module")
def library_checks():
    return evict_library.detect_and_check(torch.device("cpu"), log=lambda s: None)


def test_library_linear_agrees(library_checks):
    """The library's linear attention (the module and the core op) against the reference."""
    impl, checks = library_checks
    ran = [c for c in checks if "skipped" not in c and c["check"].startswith("linear")]
    assert impl["linear_mqar"] == "library" and impl["linear_lm"].startswith("library")
    assert len(ran) == 2 and all(c["passed"] for c in ran), checks


def test_library_hybrid_agrees(library_checks):
    """The library's hybrid module (MQAR, two budgets) and its hybrid_attention with both
    gate forms (the LM: output, and the gate's gradient) against the reference."""
    impl, checks = library_checks
    if impl["hybrid"] != "library":
        pytest.skip("the library has no hybrid mode yet (%s)" % impl["hybrid_reason"])
    ran = [c for c in checks if "skipped" not in c and c["check"].startswith("hybrid")]
    assert impl["hybrid_lm"].startswith("library")
    assert sum("LiquidMemory" in c["check"] for c in ran) == 2, checks
    for gate in ("sigmoid", "exp"):
        assert sum(c["check"].startswith("hybrid %s gate" % gate) for c in ran) == 2, checks
    assert len(ran) == 6 and all(c["passed"] for c in ran), checks


@pytest.mark.parametrize("hybrid_impl", ["auto", "reference"])
def test_quick_run(tmp_path, hybrid_impl):
    """--quick runs both parts at tiny sizes: every strategy at every budget and context,
    records in the seed's layout, the conversion with its before / after, the plots; the
    LM's hybrid in the library (auto, where it has the gate's form) or the reference (which
    alone reports the evicted share)."""
    corpus = os.path.join(ROOT, "README.md")  # any text does for a smoke test
    a = eviction_bench.parse(["--quick", "--corpus", corpus, "--out", str(tmp_path),
                              "--hybrid-impl", hybrid_impl])
    assert eviction_bench.main(a) == 0
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    with open(tmp_path / name) as f:
        out = json.load(f)
    stem = name[:-5]
    for suffix in ("_mqar.png", "_lm_budget.png", "_lm_position.png"):
        assert os.path.getsize(tmp_path / (stem + suffix)) > 0
    meta = out["metadata"]
    for key in ("device", "commit", "date", "budgets", "sinks", "implementations"):
        assert key in meta
    assert all(c.get("passed", True) for c in out["checks"])
    for part, strategies in (("mqar", ("full", "streaming", "h2o", "linear", "hybrid")),
                             ("lm", ("full", "streaming", "h2o", "linear", "hybrid"))):
        recs = out[part]["records"]
        for r in recs:
            for key in ("strategy", "cache_size", "window", "sinks", "device", "commit",
                        "date", "context"):
                assert key in r["metadata"], (part, key)
            assert r["results"]["memory_per_layer"]["total_bytes"] > 0
        seen = {(r["metadata"]["strategy"], r["metadata"]["cache_size"]) for r in recs}
        for s in strategies:
            want = [None] if s in ("full", "linear") else a.budgets
            assert all((s, b) in seen for b in want), (part, s)
    contexts = {r["metadata"]["context"] for r in out["mqar"]["records"]}
    assert contexts == set(a.contexts)
    assert all(0 <= r["results"]["accuracy"] <= 1 for r in out["mqar"]["records"])
    lm = out["lm"]
    hybrid = [r for r in lm["records"] if r["metadata"]["strategy"] == "hybrid"]
    used = out["metadata"]["implementations"]["hybrid_lm_used"]
    assert used == ("reference" if hybrid_impl == "reference" or
                    out["metadata"]["implementations"]["hybrid_lm"] == "reference" else "library")
    assert hybrid and all(r["metadata"]["implementation"] == used for r in hybrid)
    if used == "reference":
        assert all(0 <= r["results"]["evicted_share_last_quarter"] <= 1 for r in hybrid)
    else:
        assert not any("evicted_share_last_quarter" in r["results"] for r in hybrid)
    assert lm["corpus"]["sha256"] and all(
        math.isfinite(r["results"]["perplexity"]) for r in lm["records"])
    assert [(c["gate"], c["cache_size"]) for c in lm["conversion"]] == \
        [(g, b) for g in ("sigmoid(g)", "exp(g)") for b in a.budgets]
    for c in lm["conversion"]:
        for key in ("perplexity_before", "perplexity_after_transfer", "perplexity_after",
                    "perplexity_original", "perplexity_control"):
            assert c[key] > 0
