"""
test_distributed.py - liquid_memory.distributed on the CPU with gloo: one
sequence split over 2 and 4 processes (torch.multiprocessing spawn, file://
rendezvous) in ragged segments, one of them empty, against the single-process
library over the whole sequence (_ops.prefill, the path LiquidMemory takes
without a group): outputs, gradients of q, k, v, of the initial state and of
the final state; causal (normalised or not, decay, GQA, masks, feature maps,
Dk != Dv), bidirectional, cross-attention, and the module
(LiquidMemory(context_parallel_group=...)) with its parameter gradients
summed over the ranks, as data parallelism would; hybrid attention's forward
(function and module: outputs, the final state, step(), and the backward
refused) against hybrid_attention in one process. fp32 throughout, so the
only differences are the order of fp32 sums: bounds 2e-5 (outputs, states)
and 5e-5 (gradients), norm-wise relative.

Each world size is spawned once and runs every case (starting processes is
most of the cost); each rank writes its verdicts, the tests read them.
"""
import json
import os
import tempfile
import traceback
import warnings
from datetime import timedelta

import pytest
import torch

from liquid_memory import LiquidMemory, UnsupportedError, _core, _ops, distributed, hybrid_attention
from liquid_memory import hybrid as _hybrid

OUT_BOUND, GRAD_BOUND = 2e-5, 5e-5

# name: options. lengths[world] = the ranks' segment lengths (queries; keys
# in klengths for cross-attention).
CASES = {
    "causal": dict(lengths={2: [70, 59], 4: [37, 0, 64, 28]}),
    "causal_decay_gqa_mask": dict(Hq=4, Hkv=2, decay=[0.9, 0.97], mask=True,
                                  lengths={2: [1, 130], 4: [65, 64, 0, 3]}),
    "causal_unnormalised_relu": dict(fm="relu", normalize=False, decay=[0.95, 0.8], Dv=8,
                                     lengths={2: [100, 27], 4: [10, 20, 30, 40]}),
    "causal_identity": dict(fm="identity", normalize=False, lengths={2: [0, 90], 4: [23, 23, 0, 23]}),
    "causal_states": dict(Hq=4, Hkv=2, decay=[0.93, 0.99], mask=True, state=True,
                          lengths={2: [77, 51], 4: [0, 50, 1, 77]}),
    "bidirectional": dict(causal=False, mask=True, state=True, Hq=4, Hkv=2,
                          lengths={2: [40, 41], 4: [0, 30, 20, 31]}),
    "cross": dict(causal=False, lengths={2: [10, 33], 4: [5, 0, 9, 19]},
                  klengths={2: [50, 0], 4: [20, 21, 0, 17]}),
    "module": dict(module=True, lengths={2: [60, 45], 4: [31, 0, 40, 34]}),
    "module_bias_kv": dict(module=True, bias_kv=True, lengths={2: [20, 70], 4: [25, 25, 25, 15]}),
    "unknown_option_refused": dict(refuse=True, lengths={2: [5, 5], 4: [5, 5, 5, 5]}),
    # Hybrid attention (forward): W and s against segments longer and shorter
    # than both, so that windows span several ranks and sinks two.
    "hybrid": dict(hybrid=True, W=8, s=2, lengths={2: [13, 20], 4: [1, 5, 0, 30]}),
    "hybrid_gqa_mask": dict(hybrid=True, W=16, s=4, Hq=4, Hkv=2, mask=True,
                            lengths={2: [3, 60], 4: [2, 7, 9, 45]}),
    "hybrid_no_sinks_relu": dict(hybrid=True, W=5, s=0, fm="relu", Dv=8,
                                 lengths={2: [30, 1], 4: [4, 0, 4, 25]}),
    "hybrid_window_covers_all": dict(hybrid=True, W=64, s=4, mask=True,
                                     lengths={2: [10, 20], 4: [5, 10, 0, 20]}),
    "hybrid_module": dict(module=True, hybrid=True, lengths={2: [9, 40], 4: [3, 0, 20, 26]}),
    "hybrid_module_seq_first": dict(module=True, hybrid=True, seq_first=True,
                                    lengths={2: [30, 2], 4: [12, 1, 1, 30]}),
}


def _rel(got, want):
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp(min=1e-30))


def _check_all(checks):
    """Asserts every (what, got, want, bound), after the case's last
    collective: a rank that failed early would leave the others waiting."""
    bad = []
    for what, got, want, bound in checks:
        e = _rel(got, want) if torch.isfinite(got).all() else float("nan")
        if not e <= bound:
            bad.append("%s: relative error %.3g > %.3g" % (what, e, bound))
    assert not bad, "; ".join(bad)


def _segment(x, lengths, rank, dim=1):
    start = sum(lengths[:rank])
    return x.narrow(dim, start, lengths[rank])


def _sum_over_ranks(t):
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t


def _function_case(c, rank, world):
    B, Hq, Hkv, Dk, Dv = 2, c.get("Hq", 2), c.get("Hkv", 2), 16, c.get("Dv", 16)
    ql, kl = c["lengths"][world], c.get("klengths", c["lengths"])[world]
    causal = c.get("causal", True)
    L, Lk = sum(ql), sum(kl)
    q = torch.randn(B, L, Hq, Dk)
    k = torch.randn(B, Lk, Hkv, Dk)
    v = torch.randn(B, Lk, Hkv, Dv)
    mask = torch.rand(B, Lk) < 0.2 if c.get("mask") else None
    S0 = torch.randn(B, Hkv, Dk, Dv) if c.get("state") else None
    z0 = torch.rand(B, Hkv, Dk) + 0.5 if c.get("state") else None
    w_out = torch.randn(B, L, Hq, Dv)
    w_S, w_z = torch.randn(B, Hkv, Dk, Dv), torch.randn(B, Hkv, Dk)
    fm = c.get("fm", "elu1")
    opts = _core.Options(_core.FEATURE_MAPS[fm], c.get("normalize", True), 1e-6, 0.0,
                         c.get("decay"), _core.PRECISIONS["auto"])
    want_state = bool(c.get("state"))
    # The single process over the whole sequence. Each rank's loss weighs its
    # copy of the final state by rank + 1, so the total weighs it by the sum.
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    s_leaves = [t.clone().requires_grad_() for t in (S0, z0)] if S0 is not None else [None, None]
    out_ref, S_ref, z_ref = _ops.prefill(*leaves, mask, *s_leaves, 0, causal, opts, False, want_state)
    loss = (out_ref * w_out).sum()
    if want_state:
        loss = loss + world * (world + 1) / 2 * ((S_ref * w_S).sum() + (z_ref * w_z).sum())
    loss.backward()
    # This rank's segment through the group.
    mine = [_segment(q, ql, rank).clone().requires_grad_(),
            _segment(k, kl, rank).clone().requires_grad_(),
            _segment(v, kl, rank).clone().requires_grad_()]
    s_mine = [t.clone().requires_grad_() for t in (S0, z0)] if S0 is not None else None
    out = distributed.linear_attention(
        *mine, group=None, causal=causal, feature_map=fm, normalize=c.get("normalize", True),
        decay=c.get("decay"), key_padding_mask=None if mask is None else _segment(mask, kl, rank),
        initial_state=s_mine, output_final_state=want_state)
    checks = []
    out, final = out
    assert (final is not None) == want_state
    if want_state:
        S, z = final
        checks += [("final S", S, S_ref.detach(), OUT_BOUND), ("final z", z, z_ref.detach(), OUT_BOUND)]
    loss = (out * _segment(w_out, ql, rank)).sum()
    if want_state:
        loss = loss + (rank + 1) * ((S * w_S).sum() + (z * w_z).sum())
    loss.backward()
    if S0 is not None:  # the whole gradient on rank 0, summed: the single process's
        checks += [("dS0", _sum_over_ranks(s_mine[0].grad), s_leaves[0].grad, GRAD_BOUND),
                   ("dz0", _sum_over_ranks(s_mine[1].grad), s_leaves[1].grad, GRAD_BOUND)]
    assert out.shape == (B, ql[rank], Hq, Dv)
    if ql[rank]:
        checks.append(("out", out.detach(), _segment(out_ref.detach(), ql, rank), OUT_BOUND))
    for name, got, ref, lens in (("dq", mine[0], leaves[0], ql), ("dk", mine[1], leaves[1], kl),
                                 ("dv", mine[2], leaves[2], kl)):
        if lens[rank]:
            checks.append((name, got.grad, _segment(ref.grad, lens, rank), GRAD_BOUND))
    _check_all(checks)


def _module_case(c, rank, world, group):
    lengths = c["lengths"][world]
    E, H, B = 32, 4, 2
    kw = dict(batch_first=True, num_kv_heads=2, decay=0.95, add_bias_kv=c.get("bias_kv", False))
    ref = LiquidMemory(E, H, **kw)
    cp = LiquidMemory(E, H, context_parallel_group=group, **kw)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(B, sum(lengths), E)
    w = torch.randn(B, sum(lengths), E)
    xr = x.clone().requires_grad_()
    out_ref, _ = ref(xr, xr, xr, is_causal=True, need_weights=False)
    (out_ref * w).sum().backward()
    xs = _segment(x, lengths, rank).clone().requires_grad_()
    out, _ = cp(xs, xs, xs, is_causal=True, need_weights=False)
    (out * _segment(w, lengths, rank)).sum().backward()
    checks = [("d" + name, _sum_over_ranks(p.grad), p_ref.grad, GRAD_BOUND)
              for (name, p), p_ref in zip(cp.named_parameters(), ref.parameters())]
    if lengths[rank]:
        checks += [("out", out.detach(), _segment(out_ref.detach(), lengths, rank), OUT_BOUND),
                   ("dx", xs.grad, _segment(xr.grad, lengths, rank), GRAD_BOUND)]
    # Inference: the decode state after the whole sequence, on every rank.
    x1 = torch.randn(B, E)
    with torch.no_grad():
        ref(x, x, x, is_causal=True, need_weights=False)
        xs = _segment(x, lengths, rank)
        cp(xs, xs, xs, is_causal=True, need_weights=False)
        st, st_ref = cp.get_state(), ref.get_state()
        checks += [("decode S", st["S"], st_ref["S"], OUT_BOUND),
                   ("decode z", st["z"], st_ref["z"], OUT_BOUND),
                   ("step", cp.step(x1), ref.step(x1), OUT_BOUND)]
    _check_all(checks)
    assert st["position"] == st_ref["position"], (st["position"], st_ref["position"])


class _NewOptions(_core.Options):
    """Options with a field linear context parallelism does not know."""
    __slots__ = ("window",)


def _refusal_case(c, rank, world):
    opts = _NewOptions()
    opts.window = 64
    q = torch.randn(1, c["lengths"][world][rank], 2, 8)
    with pytest.raises(UnsupportedError, match="window"):
        distributed.prefill(torch.distributed.group.WORLD, q, q, q, opts=opts)


def _state_checks(st, ref, exact_window=True):
    """A HybridState against the single process's: positions exactly; S, z
    within rounding; the window's keys and values exactly (copies of the
    inputs) or, where they are projections (the module: a segment's matmul
    may round differently from the whole sequence's), within rounding."""
    assert st.position == ref.position, (st.position, ref.position)
    assert torch.equal(st.pos, ref.pos), "state pos"
    checks = [("final S", st.S, ref.S, OUT_BOUND), ("final z", st.z, ref.z, OUT_BOUND)]
    for name in ("keys", "values"):
        if exact_window:
            assert torch.equal(getattr(st, name), getattr(ref, name)), "state " + name
        else:
            checks.append(("window " + name, getattr(st, name), getattr(ref, name), OUT_BOUND))
    return checks


def _refuses_backward(out):
    with pytest.raises(UnsupportedError, match="no backward"):
        out.sum().backward()


def _hybrid_case(c, rank, world):
    B, Hq, Hkv, Dk, Dv = 2, c.get("Hq", 2), c.get("Hkv", 2), 16, c.get("Dv", 16)
    lengths = c["lengths"][world]
    L = sum(lengths)
    q, k, v = torch.randn(B, L, Hq, Dk), torch.randn(B, L, Hkv, Dk), torch.randn(B, L, Hkv, Dv)
    mask = torch.rand(B, L) < 0.2 if c.get("mask") else None
    gate = torch.randn(Hq)
    kw = dict(window=c["W"], sinks=c["s"], window_gate=gate, feature_map=c.get("fm", "elu"),
              return_state=True)
    out_ref, st_ref = hybrid_attention(q, k, v, key_padding_mask=mask, **kw)
    seg = [_segment(t, lengths, rank) for t in (q, k, v)]
    m = None if mask is None else _segment(mask, lengths, rank)
    sent, gather = [], distributed._gather
    distributed._gather = lambda buf, *a: sent.append(buf.numel() * buf.element_size()) or \
        gather(buf, *a)
    try:
        out, st = distributed.hybrid_attention(*seg, key_padding_mask=m, **kw)
    finally:
        distributed._gather = gather
    assert sent == [distributed.hybrid_state_bytes(B, Hkv, Dk, Dv, c["W"], c["s"])], sent
    assert out.shape == (B, lengths[rank], Hq, Dv)
    checks = _state_checks(st, st_ref)
    if lengths[rank]:
        checks.append(("out", out, _segment(out_ref, lengths, rank), OUT_BOUND))
    _check_all(checks)
    # With gradients wanted the forward is the same, its backward refused.
    leaves = [t.clone().requires_grad_() for t in seg]
    out_g = distributed.hybrid_attention(*leaves, key_padding_mask=m, **dict(kw, return_state=False))
    assert torch.equal(out_g.detach(), out)
    _refuses_backward(out_g)


def _hybrid_module_case(c, rank, world, group):
    lengths = c["lengths"][world]
    E, H, B = 32, 4, 2
    seq_first = c.get("seq_first", False)
    kw = dict(batch_first=not seq_first, num_kv_heads=2, attention="hybrid", window=8, sinks=2)
    ref = LiquidMemory(E, H, **kw)
    with torch.no_grad():
        ref.window_gate.normal_()
    cp = LiquidMemory(E, H, context_parallel_group=group, **kw)
    cp.load_state_dict(ref.state_dict())
    x, x1 = torch.randn(B, sum(lengths), E), torch.randn(B, E)
    ldim = 0 if seq_first else 1
    if seq_first:
        x = x.transpose(0, 1).contiguous()
    xs = _segment(x, lengths, rank, ldim)
    with torch.no_grad():
        out_ref, _ = ref(x, x, x, is_causal=True, need_weights=False)
        out, _ = cp(xs, xs, xs, is_causal=True, need_weights=False)
        st, st_ref = cp.get_state(), ref.get_state()
        checks = [("step", cp.step(x1), ref.step(x1), OUT_BOUND)]
    assert out.shape == xs.shape
    if lengths[rank]:
        checks.append(("out", out, _segment(out_ref, lengths, rank, ldim), OUT_BOUND))
    checks += _state_checks(
        _hybrid.HybridState(st["S"], st["z"], st["window_keys"], st["window_values"],
                            st["window_pos"], st["position"]),
        _hybrid.HybridState(st_ref["S"], st_ref["z"], st_ref["window_keys"],
                            st_ref["window_values"], st_ref["window_pos"], st_ref["position"]),
        exact_window=False)
    _check_all(checks)
    # Training: the forward runs, the backward is refused on every rank.
    cp.reset_state()
    out_g, _ = cp(xs, xs, xs, is_causal=True, need_weights=False)
    _refuses_backward(out_g)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _core.POISON = True  # every output the library writes starts as NaN
    torch.distributed.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                                         world_size=world, timeout=timedelta(seconds=60))
    verdicts = {}
    for i, (name, c) in enumerate(CASES.items()):
        torch.manual_seed(1000 + i)  # the same data on every rank
        try:
            if c.get("module") and c.get("hybrid"):
                _hybrid_module_case(c, rank, world, torch.distributed.group.WORLD)
            elif c.get("hybrid"):
                _hybrid_case(c, rank, world)
            elif c.get("module"):
                _module_case(c, rank, world, torch.distributed.group.WORLD)
            elif c.get("refuse"):
                _refusal_case(c, rank, world)
            else:
                _function_case(c, rank, world)
            verdicts[name] = ""
        except Exception:  # noqa: BLE001 - reported to the test
            verdicts[name] = traceback.format_exc()
        torch.distributed.barrier()
    with open(os.path.join(out_dir, "rank%d.json" % rank), "w") as f:
        json.dump(verdicts, f)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: "world%d" % w)
def verdicts(request):
    world = request.param
    env = {"OMP_NUM_THREADS": "1"}  # 4 processes share the machine's cores
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            init_file = os.path.join(tmp, "rendezvous")
            torch.multiprocessing.spawn(_worker, args=(world, init_file, tmp), nprocs=world,
                                        join=True)
            out = []
            for r in range(world):
                with open(os.path.join(tmp, "rank%d.json" % r)) as f:
                    out.append(json.load(f))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return world, out


@pytest.mark.parametrize("case", list(CASES))
def test_matches_single_process(verdicts, case):
    world, per_rank = verdicts
    failures = ["rank %d:\n%s" % (r, v[case]) for r, v in enumerate(per_rank) if v[case]]
    assert not failures, "world %d, case %s:\n%s" % (world, case, "\n".join(failures))


def test_world_size_one_is_the_plain_path():
    """Without torch.distributed (and without a group) nothing is exchanged
    and nothing is absorbed: the same call, the same bits."""
    assert not torch.distributed.is_initialized()
    torch.manual_seed(7)
    q, k, v = torch.randn(2, 50, 4, 16), torch.randn(2, 50, 2, 16), torch.randn(2, 50, 2, 16)
    opts = _core.Options(decay=[0.9, 0.99])
    want, S_want, z_want = _ops.prefill(q, k, v, opts=opts, want_state=True)
    got, S, z = distributed.prefill(None, q, k, v, opts=opts, want_state=True)
    assert torch.equal(got, want) and torch.equal(S, S_want) and torch.equal(z, z_want)
    out, (S2, _) = distributed.linear_attention(q, k, v, decay=[0.9, 0.99], output_final_state=True)
    assert out.dtype == want.dtype
    assert torch.equal(out, want) and torch.equal(S2, S_want)


def test_hybrid_world_size_one_is_the_plain_path():
    """The same for hybrid attention: hybrid_attention's bits, its state, and
    its gradients (the composition: one process needs no exchange)."""
    assert not torch.distributed.is_initialized()
    torch.manual_seed(8)
    q, k, v = torch.randn(2, 40, 4, 16), torch.randn(2, 40, 2, 16), torch.randn(2, 40, 2, 16)
    gate, mask = torch.randn(4), torch.rand(2, 40) < 0.2
    kw = dict(window=8, sinks=2, window_gate=gate, key_padding_mask=mask, return_state=True)
    want, st_want = hybrid_attention(q, k, v, **kw)
    got, st = distributed.hybrid_attention(q, k, v, **kw)
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(st[:5], st_want[:5]))
    assert st.position == st_want.position == 40
    grads = []
    for fn in (hybrid_attention, distributed.hybrid_attention):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, window=8, sinks=2, window_gate=gate, key_padding_mask=mask).sum().backward()
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_state_bytes():
    """The exchange of one causal forward: fp32 S and z per row and kv head,
    plus 4 + 4 B counts: 2 MiB and a little at 32 kv heads of 128."""
    assert distributed.state_bytes(1, 32, 128, 128) == 4 * (32 * (128 * 128 + 128) + 8)


# ---------------------------------------------------------------------------
# Ranks as threads of one process: the same autograd functions on one device
# (the CPU here; on the GPU machine one GPU, where NCCL cannot put two ranks),
# with the collectives distributed.py calls done over a thread barrier. The
# functions' forward and backward are called directly: the autograd engine
# runs a device's backward on one thread, which the ranks' collectives would
# deadlock.
# ---------------------------------------------------------------------------

class _ThreadRanks:
    """Stands in for torch.distributed for `world` threads."""

    def __init__(self, world):
        import threading
        self.world, self.barrier, self.local = world, threading.Barrier(world), threading.local()
        self.slots = [None] * world
        self.group = type("G", (), {"WORLD": object()})

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_rank(self, group=None):
        return self.local.rank

    def get_world_size(self, group=None):
        return self.world

    def _share(self, t):
        self.slots[self.local.rank] = t.clone()
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    def all_gather(self, out, t, group=None):
        for o, s in zip(out, self._share(t)):
            o.copy_(s)

    def all_reduce(self, t, group=None):
        t.copy_(sum(self._share(t)))


class _Ctx:
    def save_for_backward(self, *ts):
        self.saved_tensors = ts

    def mark_non_differentiable(self, *ts):
        pass


def _on_threads(world, body):
    """body(rank, ranks) on `world` threads with distributed.dist replaced by
    the stand-in; returns the ranks' results."""
    import threading
    ranks = _ThreadRanks(world)
    results, errors = [None] * world, []

    def run(r):
        ranks.local.rank = r
        try:
            results[r] = body(r, ranks)
        except Exception:  # noqa: BLE001 - reported below
            errors.append(traceback.format_exc())
            ranks.barrier.abort()

    real = distributed.dist
    distributed.dist = ranks
    try:
        threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        distributed.dist = real
    assert not errors, errors[0]
    return results


def _threaded(device, dtype, lengths, causal, decay, mask_on, bound_out, bound_grad):
    torch.manual_seed(5)
    B, Hq, Hkv, D = 2, 4, 2, 64
    L = sum(lengths)
    make = (lambda *s: torch.randn(*s).to(device, dtype))
    q, k, v, w = make(B, L, Hq, D), make(B, L, Hkv, D), make(B, L, Hkv, D), make(B, L, Hq, D)
    mask = (torch.rand(B, L) < 0.2).to(device) if mask_on else None
    opts = _core.Options(decay=decay)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = _ops.prefill(*leaves, mask, None, None, 0, causal, opts)[0]
    ref.backward(w)
    fn = distributed._Causal if causal else distributed._Bidirectional

    def body(r, ranks):
        seg = [_segment(t, lengths, r) for t in (q, k, v, w)]
        su = distributed._Setup(ranks.group.WORLD, r, len(lengths), opts, 0, False, False, False)
        ctx = _Ctx()
        out = fn.forward(ctx, *seg[:3], None if mask is None else _segment(mask, lengths, r),
                         None, None, su)[0]
        return out, fn.backward(ctx, seg[3], None, None)[:3]

    results = _on_threads(len(lengths), body)
    checks = []
    for r, (out, grads) in enumerate(results):
        if lengths[r]:
            checks.append(("rank %d out" % r, out, _segment(ref.detach(), lengths, r), bound_out))
            for name, g, leaf in zip(("dq", "dk", "dv"), grads, leaves):
                checks.append(("rank %d %s" % (r, name), g, _segment(leaf.grad, lengths, r), bound_grad))
    _check_all(checks)


@pytest.mark.parametrize("causal", [True, False])
def test_threaded_ranks_cpu(causal):
    """The thread stand-in on the CPU, against the same bounds as the processes."""
    _threaded("cpu", torch.float32, [65, 0, 130, 7], causal, [0.9, 0.99] if causal else None, True,
              OUT_BOUND, GRAD_BOUND)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() "
                    "is False (these run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_threaded_ranks_cuda(causal, dtype):
    """The CUDA path (absorb kernel, prefill from a state, core backward, the
    absorb backward's matmuls) for four ranks on one GPU, against the single
    process on the same GPU. Bounds: fp32 1e-3 (the kernels carry fp32 as
    bf16 hi + lo pairs, ~1e-5 each against float64, and the two sides round
    differently); bf16 3e-2 (both sides within a few times the bf16 output
    floor, ~3e-3). A wrong prefix or decay moves the outputs by 0.1 or more."""
    fp32 = dtype == torch.float32
    _threaded("cuda", dtype, [1000, 0, 1500, 300], causal, [0.999, 0.9999] if causal else None, True,
              1e-3 if fp32 else 3e-2, 1e-3 if fp32 else 3e-2)


def _threaded_hybrid(device, dtype, lengths, bound, form=_hybrid.C["LM_GATE_SIGMOID"]):
    """Hybrid attention's forward on four thread ranks against one pass on the
    same device: outputs and the final state's S, z (the gate of lm_gate_form
    `form` on both)."""
    torch.manual_seed(6)
    B, Hq, Hkv, D, W, s = 2, 4, 2, 64, 64, 4
    L = sum(lengths)
    make = (lambda *sh: torch.randn(*sh).to(device, dtype))
    q, k, v = make(B, L, Hq, D), make(B, L, Hkv, D), make(B, L, Hkv, D)
    mask = (torch.rand(B, L) < 0.2).to(device)
    gate = torch.randn(Hq)
    opts = _core.Options()
    ref, st_ref = _hybrid.c_prefill(q, k, v, mask, W, s, gate, opts, want_state=True,
                                    gate_form=form)

    def body(r, ranks):
        su = distributed._HybridSetup(ranks.group.WORLD, r, len(lengths), W, s, opts, False, True,
                                      form)
        out = distributed._Hybrid.forward(_Ctx(), *(_segment(t, lengths, r) for t in (q, k, v)),
                                          gate, _segment(mask, lengths, r), su)
        return out, su.state

    checks = []
    for r, (out, st) in enumerate(_on_threads(len(lengths), body)):
        if lengths[r]:
            checks.append(("rank %d out" % r, out, _segment(ref, lengths, r), bound))
        checks += [("rank %d S" % r, st.S, st_ref.S, bound), ("rank %d z" % r, st.z, st_ref.z, bound)]
        assert torch.equal(st.pos, st_ref.pos) and st.position == st_ref.position == L
    _check_all(checks)


@pytest.mark.parametrize("form", ["sigmoid", "exp"])
def test_threaded_hybrid_cpu(form):
    """Segments shorter than W between long ones, on the CPU; both gate forms."""
    _threaded_hybrid("cpu", torch.float32, [150, 30, 0, 200], OUT_BOUND, _hybrid.GATE_FORMS[form])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() "
                    "is False (these run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threaded_hybrid_cuda(dtype):
    """The CUDA path (absorb of fp32 rows, the hybrid prefill from an assembled
    state) for four ranks on one GPU against the single process on the same
    GPU; bounds as test_threaded_ranks_cuda's."""
    _threaded_hybrid("cuda", dtype, [1000, 30, 0, 1500], 1e-3 if dtype == torch.float32 else 3e-2)
