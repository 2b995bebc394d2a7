"""
evict_library.py - what bench/eviction_bench.py takes from libliquidmemory, found by feature
detection, and the checks that the library and the reference (evict_attention.py) agree.

  linear, MQAR   liquid_memory.LiquidMemory (the module, with its own projections)
  linear, LM     liquid_memory.linear_attention(q, k, v, causal=True) where the package has it
                 (issue #20's functional API), else the core op the module itself calls
                 (liquid_memory._ops.prefill); the LM applies rotary positions between the
                 projections and the attention, so it needs the core, not the module
  hybrid, MQAR   LiquidMemory(..., attention="hybrid", window=W, sinks=s) where the library
                 has that mode (issue #16), else the reference
  hybrid, LM     liquid_memory.hybrid_attention(q, k, v, W, s, window_gate,
                 window_gate_form="sigmoid" | "exp") where the library has the gate's form
                 (--hybrid-impl auto or library): its differentiable composition trains
                 the conversion, its C core evaluates; else the reference

Every choice and every check's result goes into the JSON, so a reader knows which code
produced each number. The checks run on the CPU (the library's CPU backend) in float32.
"""
import copy
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import liquid_memory  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bindings", "python"))
from evict_attention import attend, make_strategy  # noqa: E402
import evict_mqar  # noqa: E402

CHECK_TOL = 1e-4  # float32, L = 300: chunked sums in different orders, far below any effect


def _library():
    """The package and its loaded library, or (None, the reason)."""
    try:
        import liquid_memory
        liquid_memory.library_info()
        return liquid_memory, None
    except Exception as e:  # ImportError, LibraryNotFoundError, OSError: all mean "not here"
        return None, "%s: %s" % (type(e).__name__, e)


def hybrid_support():
    """(True, None) where LiquidMemory(attention="hybrid", window, sinks) runs a causal
    forward here, else (False, why not)."""
    lm, why = _library()
    if lm is None:
        return False, why
    try:
        m = lm.LiquidMemory(8, 2, batch_first=True, attention="hybrid", window=4, sinks=1)
        m(torch.randn(1, 9, 8), torch.randn(1, 9, 8), torch.randn(1, 9, 8), is_causal=True,
          need_weights=False)
        return True, None
    except Exception as e:  # TypeError (no such argument), NotImplementedError, ...
        return False, "LiquidMemory(attention='hybrid', window=4, sinks=1): %s: %s" % (
            type(e).__name__, e)


def hybrid_gate_form_support():
    """(True, None) where liquid_memory.hybrid_attention takes window_gate_form="exp",
    else (False, why not)."""
    lm, why = _library()
    if lm is None:
        return False, why
    try:
        q = torch.randn(1, 9, 2, 4)
        with torch.no_grad():
            lm.hybrid_attention(q, q, q, 4, 1, torch.zeros(2), window_gate_form="exp")
        return True, None
    except Exception as e:  # TypeError (no such argument), ...
        return False, "hybrid_attention(..., window_gate_form='exp'): %s: %s" % (
            type(e).__name__, e)


def lm_hybrid(q, k, v, strategy, gate):
    """The library's hybrid attention for the LM: q, k, v [B, H, L, D] -> [B, H, L, D],
    gate: the layer's logits [H] (differentiable), strategy: its window, sinks and gate form.
    With a gradient the library's composition runs, without one its C core."""
    import liquid_memory
    o = liquid_memory.hybrid_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                       strategy.window, strategy.sinks, gate,
                                       window_gate_form=strategy.gate)
    return o.transpose(1, 2)


def lm_linear_fn():
    """(fn(q, k, v) on [B, H, L, D] -> [B, H, L, D], its description), or (None, why)."""
    lm, why = _library()
    if lm is None:
        return None, why
    f = getattr(lm, "linear_attention", None)
    if f is not None:
        def fn(q, k, v):
            o = f(*(t.transpose(1, 2).contiguous() for t in (q, k, v)), causal=True)
            return (o[0] if isinstance(o, tuple) else o).transpose(1, 2)
        return fn, "library: liquid_memory.linear_attention"
    from liquid_memory import _ops

    def fn(q, k, v):
        return _ops.prefill(*(t.transpose(1, 2).contiguous() for t in (q, k, v)),
                            is_causal=True)[0].transpose(1, 2)
    return fn, "library: the core op liquid_memory._ops.prefill (no linear_attention yet)"


def load_into_library(ref, library):
    """Copies a RefAttention's parameters into a LibAttention (MHA layout, plus window_gate
    for the hybrid); every parameter the library module has must come from the reference."""
    src = ref.state_dict()
    dst = library.attn.state_dict()
    missing = [k for k in dst if k not in src]
    if missing:
        raise KeyError("the library module has parameters the reference lacks: %s" % missing)
    library.attn.load_state_dict({k: src[k] for k in dst})


def mqar_with_library_hybrid(model, strategy):
    """A copy of a trained MQAR model whose attention layers are the library's hybrid
    module at `strategy`, with the trained weights (evaluation)."""
    out = copy.deepcopy(model)
    dev = next(model.parameters()).device
    for i, ref in enumerate(model.attn):
        d = ref.in_proj_weight.shape[1]
        lib = evict_mqar.LibAttention(d, ref.heads, strategy).to(dev)
        load_into_library(ref, lib)
        out.attn[i] = lib
    return out


def _diff(a, b):
    return float((a - b).abs().max())


def _check(name, diff, extra=None):
    r = {"check": name, "max_abs_diff": diff, "tolerance": CHECK_TOL, "passed": diff <= CHECK_TOL}
    r.update(extra or {})
    return r


def detect_and_check(device, log=print):
    """(implementations, checks): which code runs each strategy, and the library against
    the reference where both exist (random weights and inputs, L = 300, CPU float32)."""
    impl, checks = {"hybrid_training": "reference (MQAR)"}, []
    gen = torch.Generator().manual_seed(1234)
    d, H, L = 32, 4, 300
    x = torch.randn(2, L, d, generator=gen)

    lm, why = _library()
    impl["linear_mqar"] = "library" if lm is not None else "reference"
    if lm is None:
        checks.append({"check": "linear module", "skipped": why})
    else:
        torch.manual_seed(0)
        ref = evict_mqar.RefAttention(d, H, make_strategy("linear"))
        lib = evict_mqar.LibAttention(d, H, make_strategy("linear"))
        load_into_library(ref, lib)
        with torch.no_grad():
            checks.append(_check("linear: LiquidMemory vs reference", _diff(lib(x), ref(x))))

    fn, desc = lm_linear_fn()
    impl["linear_lm"] = desc if fn is not None else "reference"
    if fn is None:
        checks.append({"check": "linear core", "skipped": desc})
    else:
        q, k, v = (torch.randn(2, H, L, 16, generator=gen) for _ in range(3))
        with torch.no_grad():
            checks.append(_check("linear: %s vs reference" % desc,
                                 _diff(fn(q, k, v), attend(q, k, v, make_strategy("linear")))))

    ok, why = hybrid_support()
    impl["hybrid"] = "library" if ok else "reference"
    if not ok:
        impl["hybrid_reason"] = why
        checks.append({"check": "hybrid module", "skipped": "the library has no hybrid mode "
                       "yet: " + why})
    else:
        for budget in (16, 64):
            s = make_strategy("hybrid", budget)
            torch.manual_seed(budget)
            ref = evict_mqar.RefAttention(d, H, s)
            with torch.no_grad():
                ref.window_gate.normal_()
            lib = evict_mqar.LibAttention(d, H, s)
            load_into_library(ref, lib)
            with torch.no_grad():
                checks.append(_check("hybrid s=%d W=%d: LiquidMemory vs reference"
                                     % (s.sinks, s.window), _diff(lib(x), ref(x))))
    ok, why = hybrid_gate_form_support()
    impl["hybrid_lm"] = "library: liquid_memory.hybrid_attention" if ok else "reference"
    if not ok:
        impl["hybrid_lm_reason"] = why
        checks.append({"check": "hybrid_attention with window_gate_form", "skipped": why})
    else:  # output and the gate's gradient (the composition's) of both forms
        for gate in ("sigmoid", "exp"):
            s = make_strategy("hybrid", 16, 4, gate)
            q, k, v = (torch.randn(2, H, L, 16, generator=gen) for _ in range(3))
            g = torch.randn(H, generator=gen)
            with torch.no_grad():
                checks.append(_check("hybrid %s gate s=%d W=%d: hybrid_attention (C core) vs "
                                     "reference" % (gate, s.sinks, s.window),
                                     _diff(lm_hybrid(q, k, v, s, g), attend(q, k, v, s, g))))
            grads = []
            for fn in (lm_hybrid, lambda *x: attend(*x)):
                gg = g.clone().requires_grad_()
                fn(q, k, v, s, gg).square().sum().backward()
                grads.append(gg.grad)
            checks.append(_check("hybrid %s gate: d window_gate, hybrid_attention (composition) "
                                 "vs reference, relative to its largest" % gate,
                                 _diff(*grads) / float(grads[1].abs().max())))
    for c in checks:
        log("check: %s" % (("%s: max |diff| %.2e (bound %.0e) %s" % (
            c["check"], c["max_abs_diff"], c["tolerance"], "ok" if c["passed"] else "FAILED"))
            if "skipped" not in c else "%s skipped: %s" % (c["check"], c["skipped"])))
    return impl, checks
