"""
test_engine.py - liquid_memory.engine.StatePool (the lm_pool_* engine API)
against the float64 reference of conftest: ragged packed prefill into slots
in any order (GQA, Dv != Dk, options and dtypes from one table), continuing
slots, fresh flags, decode rows with padding, zero / copy / export / import
round trips, both bindings, refused inputs that change nothing, and the pool
under the evaluation cap (a child process with no license): it runs up to
the cap and refuses past it, per row.
"""
import os
import textwrap

import pytest
import torch

from conftest import ROOT, assert_close, ref_attention, requires_cuda, run_unlicensed
from liquid_memory import InvalidArgumentError, StateError, UnsupportedError, _ffi, hybrid, hybrid_attention
from liquid_memory.engine import STATUS_LICENSE, STATUS_OK, StatePool

pytestmark = pytest.mark.skipif(not _ffi.binding().has("lm_pool_create"),
                                reason="the library under test has no engine API (lm_pool_*)")

HQ, HKV, DK, DV = 4, 2, 8, 6

# (feature_map, normalize, decay): the options a pool is made with.
OPTIONS = [("elu1", True, None), ("relu", True, (0.9, 0.97)), ("identity", False, None)]


def _opts(feature_map, normalize, decay):
    return dict(feature_map=feature_map, normalize=normalize, decay=decay)


def _rand(T, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, HQ, DK, generator=g)
    k = torch.randn(T, HKV, DK, generator=g)
    v = torch.randn(T, HKV, DV, generator=g)
    return tuple(t.to(device, dtype) for t in (q, k, v))


class Model:
    """Each slot's float64 state, advanced by the reference."""

    def __init__(self, n, **opts):
        self.opts = opts
        self.S = torch.zeros(n, HKV, DK, DV, dtype=torch.float64)
        self.z = torch.zeros(n, HKV, DK, dtype=torch.float64)
        self.pos = [0] * n

    def run(self, slot, q, k, v, fresh=False):
        """Output of one sequence from its slot's state (or an empty one);
        the slot keeps the final state (slot -1: dropped)."""
        start = slot < 0 or fresh
        S0 = None if start else self.S[slot:slot + 1]
        z0 = None if start else self.z[slot:slot + 1]
        o, S, z = ref_attention(q[None].double(), k[None].double(), v[None].double(), S0=S0, z0=z0,
                                **self.opts)
        if slot >= 0:
            self.S[slot], self.z[slot] = S[0], z[0]
            self.pos[slot] = (0 if start else self.pos[slot]) + q.shape[0]
        return o[0]


def _pool(n, device="cpu", **opts):
    return StatePool(n, HKV, DK, DV, device=device, **opts)


def _check_states(pool, model, dtype, slots):
    for s in slots:
        assert pool.position(s) == model.pos[s], s
        if model.pos[s]:
            assert_close(pool.state[s], model.S[s], dtype, "S of slot %d" % s, factor=2)
            assert_close(pool.normalizer[s], model.z[s], dtype, "z of slot %d" % s, factor=2)
        else:
            assert not pool.state[s].any() and not pool.normalizer[s].any(), s


def _prefill_round(pool, model, lens, slots, fresh, dtype, seed, device="cpu"):
    T = sum(lens)
    q, k, v = _rand(T, dtype, seed, device)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    out = pool.prefill(q, k, v, cu, slots, fresh)
    assert out.shape == (T, HQ, DV) and out.dtype == dtype
    for i, s in enumerate(slots):
        a, b = cu[i], cu[i + 1]
        want = model.run(s, q[a:b].float().cpu(), k[a:b].float().cpu(), v[a:b].float().cpu(),
                         bool(fresh and fresh[i]))
        if b > a:
            assert_close(out[a:b], want, dtype, "sequence %d (slot %d)" % (i, s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("feature_map,normalize,decay", OPTIONS)
def test_varlen_prefill_then_decode_with_padding(feature_map, normalize, decay, dtype):
    opts = _opts(feature_map, normalize, decay)
    pool, model = _pool(6, **opts), Model(6, **opts)
    # ragged, out of slot order, an empty sequence, a slot-less one (-1)
    _prefill_round(pool, model, [7, 0, 13, 1, 30], [3, 0, 4, -1, 1], None, dtype, seed=1)
    _check_states(pool, model, dtype, range(6))
    # continue two slots in another order, start one afresh over its state
    _prefill_round(pool, model, [5, 9, 4], [1, 3, 4], [0, 0, 1], dtype, seed=2)
    _check_states(pool, model, dtype, range(6))
    # decode: rows continue slots (one never used), padding rows in between
    for step, slots in enumerate(([4, -1, 1, 5], [-1, 3, 4, -1], [1, 5, -1, 3])):
        q, k, v = _rand(len(slots), dtype, seed=10 + step)
        untouched = [s for s in range(6) if s not in slots]
        before = pool.state[untouched].clone(), pool.normalizer[untouched].clone()
        out, status = pool.decode(q, k, v, torch.tensor(slots, dtype=torch.int32))
        assert status.tolist() == [STATUS_OK] * len(slots)
        for b, s in enumerate(slots):
            if s < 0:
                assert not out[b].any(), "a padding row reads 0"
                continue
            want = model.run(s, q[b:b + 1].float(), k[b:b + 1].float(), v[b:b + 1].float())
            assert_close(out[b], want[0], dtype, "decode row %d (slot %d)" % (b, s))
        assert torch.equal(pool.state[untouched], before[0])
        assert torch.equal(pool.normalizer[untouched], before[1])
        _check_states(pool, model, dtype, range(6))


def test_fresh_flags():
    pool, model = _pool(3), Model(3)
    _prefill_round(pool, model, [11, 6], [0, 2], None, torch.float32, seed=3)
    # fresh: the slot's state and position are dropped, whatever they were
    _prefill_round(pool, model, [8], [0], [True], torch.float32, seed=4)
    _check_states(pool, model, torch.float32, range(3))
    # length 0 + fresh empties a slot; a fresh -1 sequence touches no slot
    q, k, v = _rand(5)
    pool.prefill(q, k, v, [0, 0, 5], [2, -1], fresh=torch.tensor([1, 1]))
    assert pool.position(2) == 0 and not pool.state[2].any() and not pool.normalizer[2].any()
    assert pool.position(0) == 8


def test_zero_copy_export_import_round_trip():
    opts = _opts("elu1", True, (0.95, 1.0))
    pool, model = _pool(4, **opts), Model(4, **opts)
    _prefill_round(pool, model, [17, 9], [1, 2], None, torch.float32, seed=5)
    pool.copy(3, 1)  # fork slot 1
    model.S[3], model.z[3], model.pos[3] = model.S[1], model.z[1], model.pos[1]
    pool.copy(2, 2)  # dst == src: nothing
    _check_states(pool, model, torch.float32, range(4))
    blob = pool.export_slot(1)
    assert isinstance(blob, bytes) and len(blob) == pool.blob_size
    pool.zero(1)
    model.S[1].zero_(), model.z[1].zero_()
    model.pos[1] = 0
    _check_states(pool, model, torch.float32, range(4))
    # into another pool of the same shape (other N, other slot), then continue both forks
    with StatePool(2, HKV, DK, DV, **opts) as other:
        other.import_slot(0, blob)
        assert other.position(0) == 17
        assert torch.equal(other.state[0], pool.state[3])
        assert torch.equal(other.normalizer[0], pool.normalizer[3])
        q, k, v = _rand(1, seed=6)
        a, _ = other.decode(q, k, v, [0])
        b, _ = pool.decode(q, k, v, [3])
        assert torch.equal(a, b)
        assert_close(b[0], model.run(3, q, k, v)[0], torch.float32, "the fork's step")
    # and back into the emptied slot
    pool.import_slot(1, blob)
    assert pool.position(1) == 17
    assert pool.export_slot(1)[:-32] == blob[:-32]  # all but the tag


@pytest.mark.parametrize("kind", ["cffi", "ctypes"])
def test_both_bindings_give_the_same(kind, monkeypatch):
    if kind == "cffi" and not _ffi.cffi_available():
        pytest.skip("cffi is not importable here")
    results = []
    for k in ("ctypes", kind):
        monkeypatch.setattr(_ffi, "_binding", _ffi.open_library(k))
        with _pool(3) as pool:
            q, k_, v = _rand(20, seed=7)
            out = pool.prefill(q, k_, v, [0, 12, 20], [2, 0])
            step, status = pool.decode(q[:3], k_[:3], v[:3], [0, -1, 2])
            results.append((out, step, status, pool.state.clone(), pool.position(2)))
    for got, want in zip(*results):
        assert torch.equal(got, want) if isinstance(got, torch.Tensor) else got == want


def _snapshot(pool):
    return (pool.state.clone(), pool.normalizer.clone(),
            [pool.position(s) for s in range(pool.num_slots)])


def _bad_calls():
    q, k, v = _rand(10, seed=8)
    i32 = (lambda xs: torch.tensor(xs, dtype=torch.int32))
    return {
        "prefill slot out of range": lambda p: p.prefill(q, k, v, [0, 4, 10], [1, 3]),
        "prefill slot below -1": lambda p: p.prefill(q, k, v, [0, 10], [-2]),
        "prefill slot twice": lambda p: p.prefill(q, k, v, [0, 4, 10], [1, 1]),
        "cu_seqlens not ending at T": lambda p: p.prefill(q, k, v, [0, 4, 9], [0, 1]),
        "cu_seqlens not starting at 0": lambda p: p.prefill(q, k, v, [1, 4, 10], [0, 1]),
        "cu_seqlens decreasing": lambda p: p.prefill(q, k, v, [0, 6, 4, 10], [0, 1, 2]),
        "cu_seqlens alone": lambda p: p.prefill(q, k, v, [10], []),
        "cu_seqlens of floats": lambda p: p.prefill(q, k, v, torch.tensor([0., 10.]), [0]),
        "slots of another length": lambda p: p.prefill(q, k, v, [0, 4, 10], [0]),
        "fresh of another length": lambda p: p.prefill(q, k, v, [0, 4, 10], [0, 1], [1]),
        "k of another length": lambda p: p.prefill(q, k[:9], v, [0, 10], [0]),
        "wrong head_dim": lambda p: p.prefill(q[..., :4], k, v, [0, 10], [0]),
        "decode slot out of range": lambda p: p.decode(q[:2], k[:2], v[:2], i32([0, 3])),
        "decode slot twice": lambda p: p.decode(q[:2], k[:2], v[:2], i32([1, 1])),
        "decode slots int64": lambda p: p.decode(q[:2], k[:2], v[:2], torch.tensor([0, 1])),
        "decode slots of another length": lambda p: p.decode(q[:2], k[:2], v[:2], i32([0])),
        "decode mixed dtypes": lambda p: p.decode(q[:2].bfloat16(), k[:2], v[:2], i32([0, 1])),
        "zero -1": lambda p: p.zero(-1),
        "copy to a missing slot": lambda p: p.copy(3, 0),
        "copy from a missing slot": lambda p: p.copy(0, 7),
        "export a missing slot": lambda p: p.export_slot(3),
        "position of a missing slot": lambda p: p.position(3),
        "import a truncated blob": lambda p: p.import_slot(0, p.export_slot(1)[:-40]),
        "import an empty blob": lambda p: p.import_slot(0, b""),
        "import into a missing slot": lambda p: p.import_slot(5, p.export_slot(1)),
        "import a blob of other dims": lambda p: p.import_slot(
            0, StatePool(1, HKV, DK, DK).export_slot(0)),
    }


# What each refusal raises when it is not InvalidArgumentError (LM_ERR_INVALID_ARG).
RAISES = {"import a blob of other dims": StateError}  # LM_ERR_STATE: the state does not fit


@pytest.mark.parametrize("case", sorted(_bad_calls()))
def test_bad_calls_are_refused_and_change_nothing(case):
    pool = _pool(3)
    q, k, v = _rand(12, seed=9)
    pool.prefill(q, k, v, [0, 5, 12], [0, 1])
    before = _snapshot(pool)
    with pytest.raises(RAISES.get(case, InvalidArgumentError)):
        _bad_calls()[case](pool)
    after = _snapshot(pool)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert after[2] == before[2]


@pytest.mark.parametrize("kwargs", [dict(num_slots=0), dict(head_dim=0),
                                    dict(feature_map="gelu"), dict(precision="max"),
                                    dict(decay=(0.9,)), dict(decay=(0.9, 1.5)), dict(eps=-1.0)])
def test_bad_configs_are_refused(kwargs):
    args = dict(num_slots=2, num_kv_heads=HKV, head_dim=DK)
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError):
        StatePool(**args)


def test_a_closed_pool_refuses_calls():
    with _pool(2) as pool:
        q, k, v = _rand(3)
        pool.prefill(q, k, v, [0, 3], [1])
    assert "closed" in repr(pool)
    with pytest.raises(StateError, match="closed"):
        pool.position(1)
    with pytest.raises(StateError, match="closed"):
        pool.decode(q[:1], k[:1], v[:1], [1])
    assert pool.state[1].any()  # the memory stays readable
    pool.close()  # twice is fine


class HybridModel:
    """Each slot's hybrid state, advanced by the module's hybrid attention
    (liquid_memory.hybrid_attention: the C core continuing a HybridState)."""

    def __init__(self, n, window, sinks, gate, device="cpu", form="sigmoid"):
        self.W, self.s, self.gate, self.device, self.form = window, sinks, gate, device, form
        self.st = [None] * n

    def run(self, slot, q, k, v, fresh=False):
        st = None if slot < 0 or fresh else self.st[slot]
        if q.shape[0] == 0:  # no tokens: a fresh slot is emptied
            if slot >= 0 and fresh:
                self.st[slot] = hybrid.empty_state(1, HKV, DK, DV, self.W, self.s, self.device)
            return q.new_zeros((0, HQ, DV))
        out, fin = hybrid_attention(q[None], k[None], v[None], self.W, self.s, self.gate, state=st,
                                    return_state=True, window_gate_form=self.form)
        if slot >= 0:
            self.st[slot] = fin
        return out[0]


def _hybrid_pool(n, window, sinks, gate, device="cpu", form="sigmoid"):
    return StatePool(n, HKV, DK, DV, device=device, attention="hybrid", window=window, sinks=sinks,
                     window_gate=gate, window_gate_form=form)


def _check_hybrid_states(pool, model, slots):
    for s in slots:
        st = model.st[s]
        assert pool.position(s) == st.position, "slot %d" % s
        for got, want, name in ((pool.state[s], st.S[0], "S"), (pool.normalizer[s], st.z[0], "z"),
                                (pool.window_keys[s], st.keys[0], "keys"),
                                (pool.window_values[s], st.values[0], "values")):
            assert_close(got.cpu(), want.cpu(), torch.float32, "slot %d %s" % (s, name))
        assert torch.equal(pool.window_pos[s].cpu(), st.pos[0].cpu()), "slot %d positions" % s


def _hybrid_scenario(window, sinks, device, form="sigmoid"):
    """Ragged lengths around W and s into slots in any order, decode rows with
    padding, a slot joining later, continuing prefills; each sequence against
    hybrid_attention on it alone from its slot's state (the gate of the form
    `form` in both)."""
    gate = torch.linspace(-1.5, 1.5, HQ)
    pool = _hybrid_pool(6, window, sinks, gate, device, form)
    model = HybridModel(6, window, sinks, gate, device, form)
    W, s = window, sinks
    lens, slots = [1, max(W - 1, 0), W, W + 1, s + W + 1, 40], [4, 1, 3, 0, 5, 2]
    q, k, v = _rand(sum(lens), seed=31, device=device)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    out = pool.prefill(q, k, v, cu, slots, [1] * 6)
    for i, slot in enumerate(slots):
        want = model.run(slot, q[cu[i]:cu[i + 1]], k[cu[i]:cu[i + 1]], v[cu[i]:cu[i + 1]], True)
        assert_close(out[cu[i]:cu[i + 1]], want, torch.float32, "prefill of slot %d" % slot)
    for step in range(3):
        rows = [2, -1, 0, 4, 1] if step < 2 else [5, 3, 2, -1, 0]
        q, k, v = _rand(5, seed=40 + step, device=device)
        out, status = pool.decode(q, k, v, rows)
        assert status.tolist() == [STATUS_OK] * 5
        for b, slot in enumerate(rows):
            if slot < 0:
                assert not out[b].any()
                continue
            assert_close(out[b], model.run(slot, q[b:b + 1], k[b:b + 1], v[b:b + 1])[0], torch.float32,
                         "decode step %d row %d" % (step, b))
    q, k, v = _rand(W + 7, seed=50, device=device)
    out = pool.prefill(q, k, v, [0, 3, W + 7], [1, 4])
    assert_close(out[:3], model.run(1, q[:3], k[:3], v[:3]), torch.float32, "continued slot 1")
    assert_close(out[3:], model.run(4, q[3:], k[3:], v[3:]), torch.float32, "continued slot 4")
    _check_hybrid_states(pool, model, range(6))


@pytest.mark.parametrize("window,sinks,form", [(5, 2, "sigmoid"), (1, 0, "sigmoid"),
                                               (16, 3, "sigmoid"), (5, 2, "exp")])
def test_hybrid_pool_matches_the_modules_hybrid(window, sinks, form):
    _hybrid_scenario(window, sinks, "cpu", form)


@requires_cuda
@pytest.mark.parametrize("window,sinks,form", [(5, 2, "sigmoid"), (16, 3, "sigmoid"),
                                               (16, 3, "exp")])
def test_cuda_hybrid_pool_matches_the_modules_hybrid(window, sinks, form):
    _hybrid_scenario(window, sinks, "cuda", form)


def test_hybrid_pool_slots_round_trip():
    gate = torch.tensor([0.5, -0.5, 1.0, 0.0])
    pool = _hybrid_pool(4, 4, 1, gate)
    assert "hybrid" in repr(pool) and pool.window == 4 and pool.sinks == 1
    assert 'window_gate_form="sigmoid"' in repr(pool) and pool.window_gate_form == "sigmoid"
    assert pool.window_keys.shape == (4, HKV, 5, DK) and pool.window_pos.dtype == torch.int32
    q, k, v = _rand(11, seed=60)
    pool.prefill(q, k, v, [0, 11], [1])
    blob = pool.export_slot(1)
    assert len(blob) == pool.blob_size == 88 + 4 * (HKV * (DK * DV + DK + 5 * (DK + DV + 1))) + 32
    pool.copy(3, 1)
    other = _hybrid_pool(2, 4, 1, gate)
    other.import_slot(0, blob)
    assert other.position(0) == 11
    q, k, v = (t[[0, 0, 0]] for t in _rand(1, seed=61))  # one token on every row
    a, _ = pool.decode(q, k, v, [1, 3, -1])
    b, _ = other.decode(q[:1], k[:1], v[:1], [0])
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b[0])
    assert torch.equal(other.window_pos[0], pool.window_pos[1])
    pool.zero(1)
    assert pool.position(1) == 0 and not pool.window_pos[1].any()
    with pytest.raises(StateError):  # another W: the blob does not fit
        _hybrid_pool(1, 5, 1, gate).import_slot(0, blob)
    with pytest.raises(StateError):  # a linear pool's slot into a hybrid pool
        other.import_slot(1, StatePool(1, HKV, DK, DV).export_slot(0))


@pytest.mark.parametrize("kwargs,error", [
    (dict(attention="hybrid", window=0), InvalidArgumentError),
    (dict(attention="hybrid", sinks=-1), InvalidArgumentError),
    (dict(attention="hybrid", normalize=False), InvalidArgumentError),
    (dict(attention="hybrid", decay=(0.9, 0.9)), UnsupportedError),
    (dict(attention="hybrid", window_gate=[0.0] * 3), InvalidArgumentError),
    (dict(attention="hybrid", window_gate=[0.0] * 4, num_heads=8), InvalidArgumentError),
    (dict(attention="linear", window_gate=[0.0] * 4), InvalidArgumentError),
    (dict(attention="linear", window_gate_form="exp"), InvalidArgumentError),
    (dict(attention="hybrid", window_gate_form="tanh"), InvalidArgumentError),
    (dict(attention="hybrid", window_gate_form="exp", window_gate=[0.0, 41.0, 0.0, 0.0]),
     InvalidArgumentError),  # an exp gate's logit beyond LM_HYBRID_GATE_EXP_MAX
    (dict(attention="softmax"), InvalidArgumentError)])
def test_bad_hybrid_configs_are_refused(kwargs, error):
    with pytest.raises(error):
        StatePool(2, HKV, DK, **kwargs)


def test_hybrid_pool_refuses_other_query_heads():
    pool = _hybrid_pool(2, 4, 1, torch.zeros(HQ))
    q, k, v = _rand(3)
    with pytest.raises(InvalidArgumentError, match="num_heads"):
        pool.prefill(q[:, :2], k, v, [0, 3], [0])
    assert pool.position(0) == 0 and not pool.window_pos.any()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_pool_matches_the_reference(dtype):
    opts = _opts("elu1", True, (0.9, 0.97))
    pool, model = _pool(4, device="cuda", **opts), Model(4, **opts)
    _prefill_round(pool, model, [70, 1, 0, 33], [2, -1, 0, 3], None, dtype, seed=11, device="cuda")
    _prefill_round(pool, model, [1, 40], [2, 3], [0, 1], dtype, seed=12, device="cuda")
    _check_states(pool, model, dtype, range(4))
    q, k, v = _rand(3, dtype, seed=13, device="cuda")
    slots = torch.tensor([3, -1, 1], dtype=torch.int32, device="cuda")
    out, status = pool.decode(q, k, v, slots)
    assert status.is_cuda and status.tolist() == [STATUS_OK] * 3
    for b, s in ((0, 3), (2, 1)):
        want = model.run(s, q[b:b + 1].float().cpu(), k[b:b + 1].float().cpu(),
                         v[b:b + 1].float().cpu())
        assert_close(out[b], want[0], dtype, "cuda decode row %d" % b)
    assert not out[1].any()
    blob = pool.export_slot(3)
    with StatePool(1, HKV, DK, DV, **opts) as cpu:  # a blob moves between devices
        cpu.import_slot(0, blob)
        assert cpu.position(0) == model.pos[3]
        assert torch.equal(cpu.state[0], pool.state[3].cpu())
    # a bad index read on the device skips its row and marks it
    before = pool.state.clone()
    _, status = pool.decode(q[:1], k[:1], v[:1], torch.tensor([9], dtype=torch.int32,
                                                              device="cuda"))
    assert status.item() != STATUS_OK and torch.equal(pool.state, before)


def test_evaluation_mode_pool_runs_up_to_the_cap(tmp_path):
    """No license: the pool decodes up to LM_EVAL_MAX_TOKENS tokens per slot,
    and a row past it is refused alone (status), while the core API refuses
    carried states outright (test_license.py)."""
    code = textwrap.dedent("""
        import warnings, torch, liquid_memory
        from liquid_memory import _core
        from liquid_memory.engine import StatePool
        warnings.simplefilter("ignore")
        cap = _core.context_cap()
        print("CAP", cap)
        g = torch.Generator().manual_seed(0)
        rnd = lambda *s: torch.randn(*s, generator=g)
        pool = StatePool(2, 1, 4)
        T = cap - 3
        n = T + 5
        pool.prefill(rnd(n, 2, 4), rnd(n, 1, 4), rnd(n, 1, 4), [0, T, n], [0, 1])
        ok = True
        for i in range(3):   # tokens cap-2 .. cap of slot 0: allowed
            S0, z0 = pool.state[0].clone(), pool.normalizer[0].clone()
            q, k, v = rnd(2, 2, 4), rnd(2, 1, 4), rnd(2, 1, 4)
            out, st = pool.decode(q, k, v, [0, 1])
            fk, fq = torch.nn.functional.elu(k[0]) + 1, torch.nn.functional.elu(q[0]) + 1
            S = S0 + fk[0][:, None] * v[0][0][None, :]
            z = z0 + fk[0]
            want = (fq @ S[0]) / ((fq @ z[0]) + 1e-6)[:, None]
            ok &= st.tolist() == [0, 0] and torch.allclose(pool.state[0], S, rtol=1e-5, atol=1e-5)
            ok &= torch.allclose(out[0], want, rtol=1e-4, atol=1e-5)
        print("UPTO", ok, pool.position(0))
        before = pool.state[0].clone()
        out, st = pool.decode(rnd(2, 2, 4), rnd(2, 1, 4), rnd(2, 1, 4), [0, 1])
        print("PAST", st.tolist(), pool.position(0), pool.position(1),
              torch.equal(pool.state[0], before), bool(out[0].abs().sum() == 0))
        try:
            pool.prefill(rnd(1, 2, 4), rnd(1, 1, 4), rnd(1, 1, 4), [0, 1], [0])
            print("PREFILL RAN")
        except liquid_memory.LicenseError:
            print("PREFILL LICENSE", pool.position(0))
        _, st = pool.prefill(rnd(3, 2, 4), rnd(3, 1, 4), rnd(3, 1, 4), [0, 1, 3], [0, 1],
                             return_status=True)
        print("ROWS", st.tolist(), pool.position(0), pool.position(1))
        blob = pool.export_slot(0)
        pool.import_slot(1, blob)  # this process's own blob: taken
        print("IMPORT", pool.position(1))
        bad = bytearray(blob)
        bad[-40] ^= 1  # a bit of z: the tag no longer verifies
        try:
            pool.import_slot(1, bytes(bad))
            print("ALTERED RAN")
        except liquid_memory.LicenseError:
            print("ALTERED LICENSE")
    """)
    lines = run_unlicensed(code, tmp_path)
    cap = int(lines["CAP"])
    assert cap == _ffi.CONSTANTS["LM_EVAL_MAX_TOKENS"], lines
    assert lines["UPTO"] == "True %d" % cap, lines
    # slot 0 at the cap is skipped alone; slot 1 (5 + 3 tokens) steps on
    assert lines["PAST"] == "[%d, 0] %d 9 True True" % (STATUS_LICENSE, cap), lines
    assert lines["PREFILL"] == "LICENSE %d" % cap, lines
    assert lines["ROWS"] == "[%d, 0] %d 11" % (STATUS_LICENSE, cap), lines
    assert lines["IMPORT"] == str(cap), lines
    assert lines["ALTERED"] == "LICENSE", lines


def test_evaluation_mode_module_step(tmp_path):
    """No license: LiquidMemory keeps its decode state in a StatePool, so
    forward-then-step and step() alone decode (against the float64 module
    reference), up to the cap, and a step past it raises LicenseError with
    nothing changed."""
    code = textwrap.dedent("""
        import sys, warnings, torch, liquid_memory
        sys.path.insert(0, %r)
        from conftest import ref_module, rel_err
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        for name, kw in (("PLAIN", {}), ("EXTRA", dict(add_bias_kv=True, add_zero_attn=True)),
                         ("SEQFIRST", dict(batch_first=False, num_kv_heads=1))):
            bf = kw.pop("batch_first", True)
            m = liquid_memory.LiquidMemory(16, 2, batch_first=bf, **kw).eval()
            x = torch.randn(3, 20, 16)
            want = ref_module(m, x, x, x, causal=True)
            xin = x if bf else x.transpose(0, 1)
            with torch.no_grad():
                pre = xin[:, :15] if bf else xin[:15]
                y, _ = m(pre, pre, pre, is_causal=True, need_weights=False)
                y = y if bf else y.transpose(0, 1)
                steps = [m.step(x[:, t]) for t in range(15, 20)]
                e1 = rel_err(torch.cat([y, torch.stack(steps, 1)], 1), want)
                m.reset_state()
                e2 = rel_err(torch.stack([m.step(x[:, t]) for t in range(20)], 1), want)
            n = 20 + 2 * ("EXTRA" == name)
            print(name, e1 < 2e-5 and e2 < 2e-5, m.state_position == n, e1, e2)
        m = liquid_memory.LiquidMemory(8, 2, batch_first=True).eval()
        cap = liquid_memory._core.context_cap()
        x = torch.randn(2, cap - 2, 8)
        with torch.no_grad():
            m(x, x, x, is_causal=True, need_weights=False)
            a, b = m.step(x[:, 0]), m.step(x[:, 1])
            S = m.get_state()["S"]
            try:
                m.step(x[:, 2])
                print("PAST RAN")
            except liquid_memory.LicenseError:
                print("PAST LICENSE", m.state_position, torch.equal(S, m.get_state()["S"]),
                      bool(torch.isfinite(a).all() and torch.isfinite(b).all()))
            long = torch.randn(2, cap + 1, 8)
            try:
                m(long, long, long, is_causal=True, need_weights=False)
                print("LONG RAN")
            except liquid_memory.LicenseError:  # the state stays as it was
                print("LONG LICENSE", m.state_position, torch.equal(S, m.get_state()["S"]))
    """) % os.path.join(ROOT, "tests", "python")
    lines = run_unlicensed(code, tmp_path)
    for name in ("PLAIN", "EXTRA", "SEQFIRST"):
        assert lines[name].startswith("True True"), (name, lines)
    cap = _ffi.CONSTANTS["LM_EVAL_MAX_TOKENS"]
    assert lines["PAST"] == "LICENSE %d True True" % cap, lines
    assert lines["LONG"] == "LICENSE %d True" % cap, lines
