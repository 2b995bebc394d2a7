"""
test_license.py - the per-sequence entitlements as Python callers meet them
(docs/DESIGN.md, "Per-sequence entitlements"): in evaluation mode (a child
process with no license anywhere) a fresh prefill runs and returns its state,
while every way of handing the library a state it cannot verify is refused
with LicenseError: LiquidMemory.set_state, prefill with an initial state at
any position (0 included) and decode on a carried state (step() after a
forward runs: the module keeps its state in a StatePool under a cap,
test_engine.py). Under the test license (unlimited) the same calls run, and
lm_license_details carries the key id; license_reload is exposed.
"""
import textwrap

import pytest
import torch

import liquid_memory
from liquid_memory import _core, _ffi

from conftest import run_unlicensed

pytestmark = pytest.mark.skipif(not _ffi.binding().has("lm_license_info"),
                                reason="the library under test has no license gate")


def test_evaluation_mode_refuses_unverifiable_states(tmp_path):
    code = textwrap.dedent("""
        import warnings, torch, liquid_memory
        from liquid_memory import _core
        warnings.simplefilter("ignore")
        def refused(f):
            try:
                f()
            except liquid_memory.LicenseError as e:
                return "LICENSE" if "LM_ERR_LICENSE" in str(e) or e.status_name else "?"
            return "RAN"
        q = torch.randn(1, 64, 2, 8)
        out, S, z = _core.prefill(q, q, q, want_state=True)   # fresh: the library empties S
        print("FRESH", torch.isfinite(out).all().item(), S.abs().sum().item() > 0)
        print("CAP", _core.context_cap())
        print("PREFILL0", refused(lambda: _core.prefill(q, q, q, S0=S, z0=z, position=0)))
        print("PREFILL64", refused(lambda: _core.prefill(q, q, q, S0=S, z0=z, position=64)))
        one = q[:, :1]
        print("DECODE", refused(lambda: _core.decode(one, one, one, S.clone(), z.clone(), 64)))
        m = liquid_memory.LiquidMemory(16, 2, batch_first=True)
        x = torch.randn(1, 32, 16)
        with torch.no_grad():
            m(x, x, x, is_causal=True, need_weights=False)
            st = m.get_state()
            print("SETSTATE", refused(lambda: m.set_state(dict(st, position=0))))
            print("STEP", refused(lambda: m.step(x[:, 0])))
            h = liquid_memory.LiquidMemory(16, 2, batch_first=True, attention="hybrid", window=8)
            y, _ = h(x, x, x, is_causal=True, need_weights=False)  # keeps a fresh state
            print("HYBRID", torch.isfinite(y).all().item(), h.state_position)
        print("RELOAD", refused(liquid_memory.license_reload))
    """)
    lines = run_unlicensed(code, tmp_path)
    assert lines["FRESH"] == "True True", lines
    assert lines["CAP"] == str(_core.C["LM_EVAL_MAX_TOKENS"]), lines
    assert lines["HYBRID"] == "True 32", lines
    assert lines["STEP"] == "RAN", lines  # the state is in a StatePool (test_engine.py)
    for what in ("PREFILL0", "PREFILL64", "DECODE", "SETSTATE", "RELOAD"):
        assert lines[what] == "LICENSE", (what, lines)


def test_unlimited_license_takes_carried_states():
    if _core.context_cap():
        pytest.skip("the license in force has a context cap; make test-python sets an unlimited one")
    q = torch.randn(1, 16, 2, 8)
    _, S, z = _core.prefill(q, q, q, want_state=True)
    out, S2, _ = _core.prefill(q, q, q, S0=S, z0=z, position=16)
    assert torch.isfinite(out).all() and S2.shape == S.shape
    lib = _ffi.binding()
    info = lib.new("lm_license_details")
    assert lib.call("lm_license_info", lib.ref(info)) == _core.C["LM_OK"]
    assert len(lib.string(info.key_id)) == 16  # the test license is of format 2
    liquid_memory.license_reload()  # the same license, found again
