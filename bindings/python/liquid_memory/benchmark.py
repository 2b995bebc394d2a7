"""
benchmark.py - the sequence-length sweep of LiquidMemory against softmax attention.

    python -m liquid_memory.benchmark [--device cuda] [--seq-lengths 2048,8192,...] [--train]
                                      [--peers peers]   # + flash-linear-attention in training
    LiquidMemory.benchmark(embed_dim=4096, num_heads=32, ...)   # same thing from Python
    LiquidMemory.benchmark(..., mode="train")                   # forward + backward

Prefill (the whole attention layer, projections included, causal, inference):
time and peak extra memory per length L for
  liquid_memory   LiquidMemory(..., batch_first=True)(x, x, x, is_causal=True)
  mha_default     nn.MultiheadAttention's default call mha(x, x, x) (need_weights=True,
                  no mask: bidirectional, weights materialised)
  mha_fast        mha(x, x, x, attn_mask=causal bool mask, need_weights=False[, is_causal=True])
                  in eval/no_grad, i.e. MHA's fast path where this torch has one
  sdpa_flash / sdpa_cudnn / sdpa
                  the same projections around F.scaled_dot_product_attention(is_causal=True)
                  with the flash / cuDNN backend forced (CUDA), or torch's choice (CPU)
Decode, per token, against the context length S:
  liquid_memory_step        LiquidMemory.step after a causal prefill of S tokens (O(1))
  liquid_memory_step_graph  the same step replayed from a CUDA graph (CUDA only)
  kv_cache                  a softmax decoder with a preallocated KV cache: project the
                            token, append k/v, attend over S+1 keys (SDPA where available)

Training (mode="train" or --train; mode="all" runs both): forward + backward of the whole
layer (projections included, causal, training mode, x requiring grad, a fixed random
gradient of the output; the gradients are dropped before each call so each call allocates
them afresh) per length L for
  liquid_memory   LiquidMemory: the projections' autograd around lm_linear_attn_(prefill|backward)
  mha             nn.MultiheadAttention(x, x, x, attn_mask=causal bool mask, need_weights=False)
  sdpa_flash / sdpa_cudnn / sdpa_math
                  the same projections around F.scaled_dot_product_attention(is_causal=True),
                  flash / cuDNN forced on CUDA, the math backend on the CPU
  fla_chunk       (with --peers DIR / peers=DIR) the same projections around
                  flash-linear-attention's chunk_linear_attn on phi(q), phi(k) (elu+1,
                  computed in the layer) and v, normalised as LiquidMemory; imported from
                  DIR/fla (liquid_memory._peers), CUDA only; skipped with the reason when
                  it does not import, off CUDA, or past fla's int32 indexing
Peak memory is the peak during the call above what was allocated before it (the
weights, x, dout and the mask), so it includes the activations autograd saves and the
gradients.

An out-of-memory is recorded as OOM and the sweep goes on (larger lengths of
that method are then skipped as OOM); a method whose next length would take
longer than --max-seconds per call (extrapolated) is skipped and said so.
Every run writes, under --out: <stem>.json (records and fits), <stem>_prefill_time.png,
<stem>_prefill_memory.png, <stem>_decode.png and <stem>_manifest.json (versions,
device, config, files); stem = sweep_<device>_<time> (sweep_train_... / sweep_all_... for
the other modes), and training adds <stem>_train_time.png and <stem>_train_memory.png. Fits: the theory curve of each series (O(L) or O(L^2)
for prefill and training, O(1) or O(S) for decode, with the lower-order terms for fixed
costs and projections) by relative least squares, nonnegative coefficients,
with R^2 on log10 values; a point more than 10% off its fit, or R^2 < 0.95, is
flagged.

Memory: CUDA = max_memory_allocated during the call minus before. CPU = the
process's peak RSS during the call minus its RSS before (after malloc_trim),
an approximation: allocator reuse can hide part of an allocation.
"""
import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import _ffi, _peers
from .module import LiquidMemory

GPU_DEFAULTS = dict(embed_dim=4096, num_heads=32, seq_lengths=(2048, 8192, 32768, 131072),
                    decode_contexts=(1024, 4096, 16384, 65536, 131072), dtype=torch.bfloat16)
CPU_DEFAULTS = dict(embed_dim=512, num_heads=8, seq_lengths=(256, 512, 1024, 2048, 4096),
                    decode_contexts=(256, 1024, 4096), dtype=torch.float32)

# Expected growth of each series: (time model, memory model); 1 = O(n), 2 = O(n^2), 0 = O(1).
THEORY = {
    "liquid_memory": (1, 1), "mha_default": (2, 2), "mha_fast": (2, 2),
    "sdpa_flash": (2, 1), "sdpa_cudnn": (2, 1), "sdpa": (2, 1), "mha": (2, 2), "sdpa_math": (2, 2),
    "fla_chunk": (1, 1),
    "liquid_memory_step": (0, 0), "liquid_memory_step_graph": (0, 0), "kv_cache": (1, 1),
}
MODEL_NAMES = {0: "O(1)", 1: "O(n)", 2: "O(n^2)"}

# What each method name means, printed under the table and on the plots.
METHOD_NOTES = {
    "liquid_memory": "LiquidMemory, causal (prefill: inference; train: forward + backward)",
    "mha_default": "nn.MultiheadAttention as most code calls it: mha(x, x, x), no mask "
                   "(bidirectional), need_weights=True (the L x L weights are formed)",
    "mha_fast": "nn.MultiheadAttention with a causal bool mask, need_weights=False, eval, "
                "no grad: its fused fast path where this torch has one",
    "mha": "nn.MultiheadAttention with a causal bool mask, need_weights=False (training)",
    "sdpa_flash": "MHA's projections around scaled_dot_product_attention, causal, flash "
                  "backend forced",
    "sdpa_cudnn": "MHA's projections around scaled_dot_product_attention, causal, cuDNN "
                  "backend forced",
    "sdpa": "MHA's projections around scaled_dot_product_attention, causal, torch's choice",
    "sdpa_math": "MHA's projections around scaled_dot_product_attention, causal, math "
                 "backend",
    "fla_chunk": "MHA's projections around flash-linear-attention's chunk_linear_attn "
                 "(peers/fla, training only) on elu+1 feature maps, causal, normalised as "
                 "LiquidMemory; skipped, with the reason, when fla does not import, off CUDA, "
                 "or past its int32 indexing (B*L*H*D >= 2^31)",
    "liquid_memory_step": "LiquidMemory.step after a causal prefill of S tokens (eager)",
    "liquid_memory_step_graph": "the same step replayed from a CUDA graph",
    "kv_cache": "softmax decode: project the token, write k/v into a preallocated KV cache, "
                "attend over S + 1 keys",
}
FLAGGED_NOTE = ("FLAGGED: the theory curve does not fit the measurements (a point more than "
                "10% off the fit, or R^2 < 0.95 on log values): that series does not grow as "
                "its O() says at these sizes (fixed costs, caching, a change of kernel or "
                "noise); read it with care")
MODES = ("inference", "train", "all")
PHASE_TITLES = {"prefill": "prefill", "train": "forward + backward", "decode": "decode"}
_HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "f16": torch.float16,
          "float16": torch.float16, "fp16": torch.float16, "f32": torch.float32,
          "float32": torch.float32, "fp32": torch.float32}


class _Skip(Exception):
    def __init__(self, status, note):
        super().__init__(note)
        self.status, self.note = status, note


def _is_oom(e):
    oom_types = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None), MemoryError)
                      if t is not None)
    return isinstance(e, oom_types) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------- measuring

class _Meter:
    """Timing (median of iters) and peak extra memory of one callable."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.device = device
        self._libc = None
        if not self.cuda:
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _rss(self, field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        return None

    def memory(self, fn):
        """Peak extra bytes while fn runs (None where it cannot be measured)."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            out = fn()
            self.sync()
            peak = torch.cuda.max_memory_allocated(self.device) - base
            del out
            return peak
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            base = self._rss("VmRSS:")
        except OSError:
            return None
        out = fn()
        peak = self._rss("VmHWM:")
        del out
        return None if base is None or peak is None else max(0, peak - base)

    def time(self, fn, warmup, iters, budget):
        """Median milliseconds of fn over iters runs (fewer when one run is slow)."""
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        self.sync()
        first = (time.perf_counter() - t0) / max(warmup, 1)
        if first > 0:
            iters = max(1, min(iters, int(budget / first)))
        times = []
        for _ in range(iters):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                s = time.perf_counter()
                fn()
                times.append((time.perf_counter() - s) * 1e3)
        return statistics.median(times), times


# ---------------------------------------------------------------------------- peers

def _sdpa_backends(device, train=False):
    """{name: context-manager factory} of the SDPA backends this torch offers
    (training on the CPU: the math backend, forced)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return {}
    if device.type != "cuda" and train:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            return {"sdpa_math": lambda: sdpa_kernel(SDPBackend.MATH)}
        except ImportError:
            return {"sdpa_math": lambda: torch.backends.cuda.sdp_kernel(
                enable_flash=False, enable_math=True, enable_mem_efficient=False)}
    if device.type != "cuda":
        return {"sdpa": contextlib.nullcontext}
    out = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for name, attr in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION")):
            if hasattr(SDPBackend, attr):
                out[name] = (lambda b: (lambda: sdpa_kernel(b)))(getattr(SDPBackend, attr))
    except ImportError:
        out["sdpa_flash"] = lambda: torch.backends.cuda.sdp_kernel(
            enable_flash=True, enable_math=False, enable_mem_efficient=False)
    return out


class _ProjectedLayer(nn.Module):
    """MHA's projections around a peer's attention core: attend(q, k, v), all
    [B, L, H, D], returns [B, L, H, D]."""

    def __init__(self, mha, attend):
        super().__init__()
        self.mha, self.attend = mha, attend

    def forward(self, x):
        m = self.mha
        B, L, E = x.shape
        H = m.num_heads
        qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(B, L, 3, H, E // H)
        o = self.attend(*qkv.unbind(2))
        return F.linear(o.reshape(B, L, E), m.out_proj.weight, m.out_proj.bias)


def _SDPALayer(mha, backend_ctx):
    """MHA's projections around F.scaled_dot_product_attention (causal) on the
    backend backend_ctx() forces."""
    def attend(q, k, v):  # SDPA takes [B, H, L, D]
        with backend_ctx():
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)
    return _ProjectedLayer(mha, attend)


def _FlaLayer(mha, chunk_linear_attn):
    """MHA's projections around fla's chunk_linear_attn (causal, [B, L, H, D] in and
    out) on phi(q), phi(k) = elu+1, normalised: o = phi(q) S / phi(q) z as in
    LiquidMemory's default (fla's denominator epsilon is its own)."""
    def attend(q, k, v):
        o, _ = chunk_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=True)
        return o
    return _ProjectedLayer(mha, attend)


def _load_fla(peers, device):
    """(fla's chunk_linear_attn or None, why not) for the training sweep from peers/fla."""
    fla, why = _peers.load_fla(peers)
    if fla and device.type != "cuda":
        return None, "fla's kernels need CUDA (triton); the device is %s" % device
    return (fla[0] if fla else None), why


class _KVCacheDecoder:
    """Softmax decode with a preallocated KV cache (the peer of step()). Every
    timed step attends over the same S + 1 keys (the new token overwrites slot
    S): a length that changed on every call would make cuDNN's SDPA plan a new
    graph each time (measured: 35-60 ms a token), which no serving engine does."""

    def __init__(self, mha, batch, context, device, dtype):
        self.m = mha
        E, H = mha.embed_dim, mha.num_heads
        self.H, self.D = H, E // H
        g = torch.Generator(device="cpu").manual_seed(0)
        shape = (batch, H, context + 1, self.D)
        self.k = torch.randn(shape, generator=g).to(device, dtype)
        self.v = torch.randn(shape, generator=g).to(device, dtype)
        self.pos = context
        self.sdpa = hasattr(F, "scaled_dot_product_attention")

    def cache_bytes(self):
        return self.k.numel() * self.k.element_size() * 2

    def step(self, x):
        m, B = self.m, x.shape[0]
        q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(B, 3, self.H, self.D).unbind(1)
        self.k[:, :, self.pos] = k
        self.v[:, :, self.pos] = v
        q = q.unsqueeze(2)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, self.k, self.v)
        else:
            w = torch.softmax((q @ self.k.transpose(-1, -2)) * self.D ** -0.5, dim=-1)
            o = w @ self.v
        return F.linear(o.reshape(B, -1), m.out_proj.weight, m.out_proj.bias)


def _causal_mask(L, device):
    return torch.ones(L, L, dtype=torch.bool, device=device).triu(1)


def _mha_call(mha, x, fast):
    if not fast:
        return mha(x, x, x)[0]
    mask = _causal_mask(x.shape[1], x.device)
    kw = {"is_causal": True} if "is_causal" in mha.forward.__code__.co_varnames else {}
    return mha(x, x, x, attn_mask=mask, need_weights=False, **kw)[0]


# ---------------------------------------------------------------------------- fits

def fit(ns, ys, model):
    """Fits the theory curve y = c0 + c1 n + ... + c_model n^model (model 0: a
    constant; the lower terms are the fixed costs and projections) by least
    squares on relative residuals, every coefficient >= 0 (a term that comes
    out negative is dropped and the rest refitted). Returns dict(model, coefs,
    r2 (on log10 values; None for O(1)), max_dev (largest |y/f - 1|), flagged)."""
    pts = [(float(n), float(y)) for n, y in zip(ns, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    n = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    terms = list(range(model + 1))
    if len(terms) > len(pts):  # too few points for the lower terms: keep the leading one
        terms = [model]
    while True:
        scale = [float(n.max()) ** t for t in terms]  # columns of comparable size
        A = torch.stack([(n ** t) / sc for t, sc in zip(terms, scale)], 1) / y[:, None]
        sol = torch.linalg.lstsq(A, torch.ones_like(y)[:, None]).solution[:, 0]
        coef = [float(c) / sc for c, sc in zip(sol, scale)]
        neg = [t for t, c in zip(terms, coef) if c < 0]
        if not neg or len(terms) == 1:
            break
        terms = [t for t in terms if t not in neg] or [model]
    coefs = [0.0] * (model + 1)
    for t, c in zip(terms, coef):
        coefs[t] = max(c, 0.0)
    f = [fit_curve({"coefs": coefs}, float(v)) for v in n]
    dev = max(abs(yi / fi - 1) for yi, fi in zip(y.tolist(), f)) if all(fi > 0 for fi in f) \
        else math.inf
    r2 = None
    if model != 0:
        ly, lf = [math.log10(v) for v in y.tolist()], [math.log10(max(v, 1e-30)) for v in f]
        mean = sum(ly) / len(ly)
        tot = sum((v - mean) ** 2 for v in ly)
        r2 = 1 - sum((p - q) ** 2 for p, q in zip(ly, lf)) / tot if tot > 0 else None
    flagged = dev > 0.10 or (r2 is not None and r2 < 0.95)
    return {"model": MODEL_NAMES[model], "coefs": coefs, "r2": r2, "max_dev": dev,
            "flagged": flagged, "points": len(pts)}


def fit_curve(f, n):
    return sum(c * n ** t for t, c in enumerate(f["coefs"]))


# ---------------------------------------------------------------------------- the sweep

def _resolve(device, embed_dim, num_heads, seq_lengths, decode_contexts, dtype, notes):
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        notes.append("CUDA asked for but not available: running on the CPU at small sizes")
        device = torch.device("cpu")
    d = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    return (device, embed_dim or d["embed_dim"], num_heads or d["num_heads"],
            tuple(seq_lengths or d["seq_lengths"]), tuple(decode_contexts or d["decode_contexts"]),
            dtype or d["dtype"])


def run(embed_dim=None, num_heads=None, batch_size=1, seq_lengths=None, dtype=None,
        device="cuda", decode_contexts=None, methods=None, warmup=None, iters=None,
        out_dir=os.path.join("bench", "results"), plots=True, progress=True, max_seconds=60.0,
        tag=None, verbose=True, threads=None, mode="inference", peers=None):
    """Runs the sweep; returns {'config', 'records', 'fits', 'files', 'notes'}.

    embed_dim / num_heads / seq_lengths / decode_contexts / dtype default to the
    GPU sizes (4096, 32, 2K..128K, bf16) on CUDA and to small CPU sizes (512, 8,
    256..4096, fp32) on the CPU; device="cuda" falls back to the CPU with a note
    when there is no GPU. mode: "inference" (prefill and decode), "train" (forward +
    backward of the layer) or "all". methods: a subset of the method names of
    those phases (module docstring); max_seconds: per-call budget for skipping a
    method's larger lengths; threads: torch.set_num_threads (CPU runs default to every
    core, so torch and libliquidmemory, which share one OpenMP runtime, use the same);
    peers: a folder holding flash-linear-attention as <peers>/fla, which adds the fla_chunk
    method to training (None: not run; it is skipped with the reason where fla does not
    import or the device is not CUDA)."""
    if mode not in MODES:
        raise ValueError("mode must be one of %s, not %r" % (MODES, mode))
    notes = []
    device, E, H, Ls, Ss, dtype = _resolve(device, embed_dim, num_heads, seq_lengths,
                                           decode_contexts, dtype, notes)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    cuda = device.type == "cuda"
    if threads or not cuda:  # CPU runs: every core unless told (torch and the library alike)
        torch.set_num_threads(int(threads or os.cpu_count() or 1))
    warmup = 2 if warmup is None and cuda else (1 if warmup is None else warmup)
    iters = (10 if cuda else 3) if iters is None else iters
    meter = _Meter(device)
    inference, training = mode in ("inference", "all"), mode in ("train", "all")
    sdpa = _sdpa_backends(device) if inference else {}
    sdpa_train = _sdpa_backends(device, train=True) if training else {}
    prefill_methods = ["liquid_memory", "mha_default", "mha_fast"] + list(sdpa) \
        if inference else []
    decode_methods = ["liquid_memory_step"] + (["liquid_memory_step_graph"] if cuda else []) + \
        ["kv_cache"] if inference else []
    train_peers = dict(sdpa_train)
    if training and peers:
        train_peers["fla_chunk"] = _load_fla(peers, device)
    train_methods = ["liquid_memory", "mha"] + list(train_peers) if training else []
    if methods:
        known = set(prefill_methods) | set(decode_methods) | set(train_methods)
        unknown = set(methods) - known
        if unknown:
            raise ValueError("unknown or unavailable methods %s; here: %s"
                             % (sorted(unknown), sorted(known)))
        prefill_methods = [m for m in prefill_methods if m in methods]
        decode_methods = [m for m in decode_methods if m in methods]
        train_methods = [m for m in train_methods if m in methods]
    if not hasattr(F, "scaled_dot_product_attention"):
        notes.append("torch %s has no scaled_dot_product_attention: SDPA peers not run"
                     % torch.__version__)

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True, device=device, dtype=dtype).eval()
    lm = LiquidMemory.from_mha(mha).eval()
    config = {"embed_dim": E, "num_heads": H, "batch_size": batch_size,
              "seq_lengths": list(Ls), "decode_contexts": list(Ss), "dtype": str(dtype),
              "device": str(device), "causal": True, "warmup": warmup, "iters": iters,
              "max_seconds": max_seconds, "threads": torch.get_num_threads(), "mode": mode,
              "prefill_methods": prefill_methods, "decode_methods": decode_methods,
              "train_methods": train_methods}
    if "fla_chunk" in train_peers:
        config["peers"] = {"dir": os.path.abspath(peers), "fla_commit": _peers.fla_commit(peers),
                           "fla": train_peers["fla_chunk"][1] or "imported"}

    if verbose and out_dir:
        print("output folder: %s" % os.path.abspath(out_dir))
    records = []
    total = (len(prefill_methods) + len(train_methods)) * len(Ls) + len(decode_methods) * len(Ss)
    bar = _progress(total, progress)

    def record(phase, method, n, status, ms=None, times=None, mem=None, note="", **extra):
        r = {"phase": phase, "method": method, "n": n, "status": status, "ms": ms,
             "times_ms": times, "peak_extra_bytes": mem, "note": note}
        r.update(extra)
        records.append(r)
        bar.update(method, n, status, ms)

    def length_sweep(phase, method, make_fn, grad, modules):
        """One method over the lengths Ls: time and memory of make_fn(L)()."""
        last, blocked, fn = None, None, None
        for L in Ls:
            if blocked:
                record(phase, method, L, blocked.status, note=blocked.note)
                continue
            try:
                fn = make_fn(L)
                if last is not None:
                    est = last[1] / 1e3 * (L / last[0]) ** THEORY[method][0]
                    if est > max_seconds:
                        raise _Skip("skipped", "estimated %.0f s per call > max_seconds=%g"
                                    % (est, max_seconds))
                with torch.set_grad_enabled(grad):
                    ms, times = meter.time(fn, warmup, iters, max_seconds)
                    getattr(fn, "reset", lambda: None)()
                    mem = meter.memory(fn)
                last = (L, ms)
                record(phase, method, L, "ok", ms, times, mem)
            except _Skip as e:
                blocked = e
                record(phase, method, L, e.status, note=e.note)
            except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                status = _status_of(e)
                record(phase, method, L, status, note=_short(e))
                if status in ("OOM", "license", "unsupported"):
                    blocked = _Skip(status, "%s at L=%d" % (status, L))
            finally:
                fn = None
                for m in modules:
                    m.zero_grad(set_to_none=True)
                _free(cuda)

    # ---- prefill
    for method in prefill_methods:
        length_sweep("prefill", method, lambda L, method=method: _prefill_fn(
            method, lm, mha, sdpa, torch.randn(batch_size, L, E, device=device, dtype=dtype)),
            False, ())

    # ---- training: forward + backward
    if train_methods:
        lm.train()
        mha.train()
        for method in train_methods:
            length_sweep("train", method, lambda L, method=method: _train_fn(
                method, lm, mha, train_peers, batch_size, L, E, device, dtype), True, (lm, mha))
        lm.eval()
        mha.eval()

    # ---- decode
    for method in decode_methods:
        blocked = None
        for S in Ss:
            if blocked:
                record("decode", method, S, blocked.status, note=blocked.note)
                continue
            try:
                ms, times, mem, persistent = _decode_one(method, lm, mha, S, batch_size, E,
                                                         device, dtype, meter, warmup,
                                                         max(iters, 20), max_seconds)
                record("decode", method, S, "ok", ms, times, mem, state_bytes=persistent)
            except _Skip as e:
                record("decode", method, S, e.status, note=e.note)
            except Exception as e:  # noqa: BLE001
                status = _status_of(e)
                record("decode", method, S, status, note=_short(e))
                if status in ("OOM", "license"):
                    blocked = _Skip(status, "%s at S=%d" % (status, S))
            finally:
                lm.reset_state()
                _free(cuda)
    bar.close()

    fits = _fits(records)
    result = {"config": config, "records": records, "fits": fits, "notes": notes, "files": []}
    if verbose:
        print(format_table(result))
    if out_dir:
        _write(result, out_dir, tag, device, plots)
        if verbose:
            print("wrote (in %s):\n  %s" % (os.path.abspath(out_dir), "\n  ".join(
                os.path.basename(f) for f in result["files"])))
    return result


def _prefill_fn(method, lm, mha, sdpa, x):
    if method == "liquid_memory":
        return lambda: lm(x, x, x, is_causal=True, need_weights=False)[0]
    if method in ("mha_default", "mha_fast"):
        fast = method == "mha_fast"
        return lambda: _mha_call(mha, x, fast)
    layer = _SDPALayer(mha, sdpa[method])
    return lambda: layer(x)


def _train_fn(method, lm, mha, peers, B, L, E, device, dtype):
    """A callable running forward + backward of one layer at length L; its inputs
    (x requiring grad, the output's gradient, MHA's mask) are made here, before timing.
    peers: {SDPA method: backend context factory, "fla_chunk": (chunk_linear_attn or
    None, why not)}; fla that did not load, or L past its int32 indexing, raises _Skip."""
    if method == "fla_chunk":
        chunk, why = peers[method]
        if chunk is None:
            raise _Skip("skipped", why)
        if not _peers.fla_fits(B, L, E):
            raise _Skip("skipped", "fla indexes with int32: B*L*E = %d >= 2^31" % (B * L * E))
    g = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(B, L, E, generator=g).to(device, dtype).requires_grad_(True)
    dout = torch.randn(B, L, E, generator=g).to(device, dtype)
    if method == "liquid_memory":
        layer, mods = (lambda t: lm(t, t, t, is_causal=True, need_weights=False)[0]), lm
    elif method == "mha":
        mask = _causal_mask(L, device)
        layer, mods = (lambda t: mha(t, t, t, attn_mask=mask, need_weights=False)[0]), mha
    elif method == "fla_chunk":
        layer, mods = _FlaLayer(mha, peers[method][0]), mha
    else:
        layer, mods = _SDPALayer(mha, peers[method]), mha

    def reset():
        mods.zero_grad(set_to_none=True)
        x.grad = None

    def step():
        reset()
        out = layer(x)
        out.backward(dout)
        return out.detach()
    step.reset = reset  # drops the gradients, so that memory() counts them afresh
    return step


def _status_of(e):
    """The record status of an exception raised by a measured call."""
    if _is_oom(e):
        return "OOM"
    if "license" in str(e).lower():
        return "license"
    if isinstance(e, NotImplementedError) or "LM_ERR_UNSUPPORTED" in str(e):
        # e.g. a backend without a backward (the text: where torch re-wraps the exception)
        return "unsupported"
    return "error"


def _decode_one(method, lm, mha, S, B, E, device, dtype, meter, warmup, iters, budget):
    g = torch.Generator(device="cpu").manual_seed(1)
    tok = torch.randn(B, E, generator=g).to(device, dtype)
    with torch.no_grad():
        if method.startswith("liquid_memory"):
            ctx = torch.randn(B, S, E, generator=g).to(device, dtype)
            lm.reset_state()
            lm(ctx, ctx, ctx, is_causal=True, need_weights=False)
            del ctx
            persistent = lm.state_S.numel() * 4 + lm.state_z.numel() * 4
            if method == "liquid_memory_step_graph":
                fn = _graphed_step(lm, tok)
            else:
                fn = lambda: lm.step(tok)  # noqa: E731
        else:
            dec = _KVCacheDecoder(mha, B, S, device, dtype)
            persistent = dec.cache_bytes()
            fn = lambda: dec.step(tok)  # noqa: E731
        ms, times = meter.time(fn, warmup, iters, budget)
        mem = meter.memory(fn)
    return ms, times, mem, persistent


def _graphed_step(lm, tok):
    """lm.step(tok) captured in a CUDA graph (the state buffers are static)."""
    static_in = tok.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            lm.step(static_in)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = lm.step(static_in)

    def replay():
        graph.replay()
        return static_out
    return replay


def _free(cuda):
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def _short(e):
    text = "%s: %s" % (type(e).__name__, e)
    return text if len(text) < 300 else text[:297] + "..."


def _fits(records):
    out = []
    for phase in ("prefill", "train", "decode"):
        methods = sorted({r["method"] for r in records if r["phase"] == phase})
        for m in methods:
            rs = [r for r in records if r["phase"] == phase and r["method"] == m and r["status"] == "ok"]
            for qty, key, idx in (("time", "ms", 0), ("memory", "peak_extra_bytes", 1)):
                if phase == "decode" and qty == "memory":
                    key = "state_bytes"
                f = fit([r["n"] for r in rs], [r.get(key) for r in rs], THEORY[m][idx])
                if f:
                    f.update(phase=phase, method=m, quantity=qty)
                    out.append(f)
    return out


# ---------------------------------------------------------------------------- output

class _progress:
    def __init__(self, total, enabled):
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="run", file=sys.stderr)
            except ImportError:
                self.bar = None
        self.done, self.total = 0, total

    def update(self, method, n, status, ms):
        self.done += 1
        text = "%s n=%d %s" % (method, n, ("%.3g ms" % ms) if ms is not None else status)
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
        elif self.enabled:
            print("[%d/%d] %s" % (self.done, self.total, text), file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _cell(r, phase):
    """time / memory of one record; decode shows the memory that persists
    between tokens (state or KV cache), as the decode plot does."""
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    mem = r.get("state_bytes") if phase == "decode" else r.get("peak_extra_bytes")
    return "%.3g ms / %s" % (r["ms"], "n/a" if mem is None else "%.3g MB" % (mem / 1e6))


TABLE_TITLES = {
    "prefill": "prefill (ms / peak extra memory)",
    "train": "forward + backward (ms / peak extra memory)",
    "decode": "decode per token (ms / state or KV cache kept between tokens)",
}


def format_table(result):
    recs, cfg = result["records"], result["config"]
    lines = ["Liquid Memory sweep: E=%d, %d heads, batch %d, %s on %s, causal"
             % (cfg["embed_dim"], cfg["num_heads"], cfg["batch_size"], cfg["dtype"], cfg["device"])]
    shown = []
    for phase, key, label in (("prefill", "seq_lengths", "L"), ("train", "seq_lengths", "L"),
                              ("decode", "decode_contexts", "S")):
        methods = cfg.get("%s_methods" % phase)
        if not methods:
            continue
        shown += [m for m in methods if m not in shown]
        lines.append("")
        lines.append(TABLE_TITLES[phase])
        width = 24
        lines.append("%8s  " % label + "".join("%-*s" % (width, m) for m in methods))
        for n in cfg[key]:
            row = "%8d  " % n
            for m in methods:
                r = next((x for x in recs if x["phase"] == phase and x["method"] == m
                          and x["n"] == n), None)
                row += "%-*s" % (width, _cell(r, phase))
            lines.append(row)
    lines.append("")
    lines.append("methods:")
    lines += [textwrap.fill(METHOD_NOTES.get(m, ""), 100, initial_indent="  %-25s" % m,
                            subsequent_indent=" " * 27) for m in shown]
    lines.append("  peak extra memory: the peak during the call above what was allocated "
                 "before it")
    notes = [r for r in recs if r["status"] != "ok" and r["note"]]
    if notes or result["notes"]:
        lines.append("")
        lines.append("notes:")
        lines += ["  " + n for n in result["notes"]]
        seen = set()
        for r in notes:
            k = (r["method"], r["status"], r["note"])
            if k not in seen:
                seen.add(k)
                lines.append("  %s %s n=%d: %s" % (r["method"], r["status"], r["n"], r["note"]))
    lines.append("")
    lines.append("fits (theory curve, R^2 on log10 values, largest deviation):")
    for f in result["fits"]:
        lines.append("  %-7s %-6s %-26s %-7s R^2=%s  max dev %4.0f%%%s" % (
            f["phase"], f["quantity"], f["method"], f["model"],
            "n/a " if f["r2"] is None else "%.3f" % f["r2"], 100 * f["max_dev"],
            "  FLAGGED" if f["flagged"] else ""))
    if any(f["flagged"] for f in result["fits"]):
        lines.append(textwrap.fill(FLAGGED_NOTE, 100, initial_indent="  ",
                                   subsequent_indent="  "))
    return "\n".join(lines)


def _versions(device):
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "platform": platform.platform(), "machine": platform.machine(),
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        v["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_HERE,
                                         capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    v["cpu"] = line.split(":", 1)[1].strip()
                    break
    try:
        lib = _ffi.binding()
        v["liquid_memory_library"] = lib.version()
        v["liquid_memory_library_path"] = lib.path
        v["ffi"] = lib.kind
        if lib.has("lm_license_info"):
            d = lib.new("lm_license_details")
            if lib.call("lm_license_info", lib.ref(d)) == 0:
                v["license"] = {"mode": ("evaluation", "licensed", "invalid")[d.mode],
                                "development_build": bool(d.development_build),
                                "max_seq_len": int(d.max_seq_len)}
    except Exception as e:  # noqa: BLE001
        v["liquid_memory_library"] = "unavailable: %s" % e
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version()
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


def _write(result, out_dir, tag, device, plots):
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = result["config"].get("mode", "inference")
    stem = os.path.join(out_dir, "sweep_%s%s_%s%s" % ("" if mode == "inference" else mode + "_",
                                                     device.type, stamp, "_" + tag if tag else ""))
    files = []
    if plots:
        try:
            files += plot(result, stem)
        except ImportError as e:
            result["notes"].append("no plots: %s" % e)
    data = stem + ".json"
    files.insert(0, data)
    manifest = stem + "_manifest.json"
    files.append(manifest)
    result["files"] = files
    with open(data, "w") as f:
        json.dump({k: result[k] for k in ("config", "records", "fits", "notes")}, f, indent=1)
    with open(manifest, "w") as f:
        json.dump({"created": datetime.datetime.now().isoformat(timespec="seconds"),
                   "command": " ".join(sys.argv), "versions": _versions(device),
                   "config": result["config"], "files": files}, f, indent=1)


def _size_label(n, _pos=None):
    """2048 -> '2K', 131072 -> '128K', 1048576 -> '1M', 300 -> '300'."""
    n = int(round(n))
    for div, unit in ((1 << 20, "M"), (1 << 10, "K")):
        if n >= div and n % div == 0:
            return "%d%s" % (n // div, unit)
    return str(n)


def log_axes(ax, ns):
    """Log-log axes that can be read (call after plotting): x ticks at the
    measured sizes, labelled 2K / 8K / ...; y labelled in plain numbers on
    the decades and, where the data spans at most 3 of them, on the minor
    ticks too (2, 3, 5 x 10^k)."""
    from matplotlib import ticker
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if ns:
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(ns))))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_size_label))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    plain = ticker.FuncFormatter(lambda y, _pos: "%g" % float("%.3g" % y))
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
    lo, hi = ax.get_ylim()
    few = lo > 0 and math.log10(hi / lo) <= 3
    ax.yaxis.set_minor_formatter(plain if few else ticker.NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _caption(fig, methods, flagged):
    """The method names' meaning (and FLAGGED's) under the plot."""
    width = int(fig.get_figwidth() * 72 / 3.3)  # characters of 6-point text across
    text = [textwrap.fill("%s: %s" % (m, METHOD_NOTES.get(m, "")), width,
                          subsequent_indent="    ") for m in methods]
    if flagged:
        text.append(textwrap.fill(FLAGGED_NOTE, width, subsequent_indent="    "))
    text = "\n".join(text)
    fig.text(0.01, 0.005, text, fontsize=6, va="bottom", ha="left")
    lines = text.count("\n") + 1
    fig.subplots_adjust(bottom=min(0.5, 0.1 + lines * 9.0 / (fig.get_figheight() * 72)))


def plot(result, stem):
    """PNG plots with the fitted theory curves; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs, fits, cfg = result["records"], result["fits"], result["config"]
    title = "E=%d, %d heads, batch %d, %s, %s" % (cfg["embed_dim"], cfg["num_heads"],
                                                 cfg["batch_size"], cfg["dtype"].replace("torch.", ""),
                                                 cfg["device"])
    files = []

    def series(ax, phase, quantity, key, scale, ylabel, xlabel):
        """One panel; returns whether a fit on it is flagged."""
        methods = cfg["%s_methods" % phase]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        flagged, ns = False, []
        for i, m in enumerate(methods):
            rs = [r for r in recs if r["phase"] == phase and r["method"] == m and r["status"] == "ok"
                  and r.get(key) is not None and r[key] > 0]
            c = colors[i % len(colors)]
            bad = [r for r in recs if r["phase"] == phase and r["method"] == m and r["status"] != "ok"]
            if rs:
                ns += [r["n"] for r in rs]
                ax.plot([r["n"] for r in rs], [r[key] * scale for r in rs], "o-", color=c,
                        label=m + (" (%s beyond)" % bad[0]["status"] if bad else ""))
            f = next((f for f in fits if f["phase"] == phase and f["method"] == m
                      and f["quantity"] == quantity), None)
            if f and rs:
                flagged = flagged or f["flagged"]
                lo, hi = min(r["n"] for r in rs), max(r["n"] for r in rs)
                ns_fit = [lo * (hi / lo) ** (j / 40) for j in range(41)]
                ax.plot(ns_fit, [fit_curve(f, n) * scale for n in ns_fit], "--", color=c,
                        alpha=0.6, label="  fit %s%s%s" % (f["model"], "" if f["r2"] is None else
                                                           ", R²=%.3f" % f["r2"],
                                                           " FLAGGED" if f["flagged"] else ""))
        log_axes(ax, ns)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        return flagged

    for phase in ("prefill", "train"):
        if not cfg.get("%s_methods" % phase):
            continue
        what = PHASE_TITLES[phase]
        for quantity, key, scale, ylabel in (
                ("time", "ms", 1.0, "%s time (ms)" % what),
                ("memory", "peak_extra_bytes", 1e-6, "peak extra memory (MB)")):
            fig, ax = plt.subplots(figsize=(7, 5.8))
            flagged = series(ax, phase, quantity, key, scale, ylabel, "sequence length L")
            ax.set_title("%s %s vs L (%s)" % (what[0].upper() + what[1:], quantity, title),
                         fontsize=9)
            fig.tight_layout()
            _caption(fig, cfg["%s_methods" % phase], flagged)
            suffix = "_%s_%s.png" % (phase, quantity)
            fig.savefig(stem + suffix, dpi=120)
            plt.close(fig)
            files.append(stem + suffix)
    if cfg["decode_methods"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
        flagged = series(axes[0], "decode", "time", "ms", 1.0, "latency per token (ms)",
                         "context length S")
        axes[0].set_title("Decode latency vs S (%s)" % title, fontsize=9)
        flagged |= series(axes[1], "decode", "memory", "state_bytes", 1e-6,
                          "state / KV cache (MB)", "context length S")
        axes[1].set_title("Decode memory that persists between tokens", fontsize=9)
        fig.tight_layout()
        _caption(fig, cfg["decode_methods"], flagged)
        fig.savefig(stem + "_decode.png", dpi=120)
        plt.close(fig)
        files.append(stem + "_decode.png")
    return files


# ---------------------------------------------------------------------------- CLI

def _ints(text):
    """'2048,8k' -> (2048, 8192)."""
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        out.append(int(x[:-1]) * 1024 if x.endswith("k") else int(x))
    return tuple(out)


def parser():
    """The command line (python -m liquid_memory.benchmark, liquid-memory-benchmark)."""
    methods = "\n".join(textwrap.fill(n, 78, initial_indent="  %-25s" % m,
                                      subsequent_indent=" " * 27)
                        for m, n in METHOD_NOTES.items())
    p = argparse.ArgumentParser(
        prog="python -m liquid_memory.benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Sequence-length sweep of LiquidMemory against nn.MultiheadAttention and SDPA "
            "(and, in training with --peers, flash-linear-attention): "
            "prefill time and peak extra memory, decode latency per token and the memory kept "
            "between tokens, or (--train) forward + backward time and memory. Prints a table "
            "and writes a JSON, PNG plots (log-log, with fitted theory curves) and a manifest "
            "into the output folder (--out).", 78),
        epilog="methods:\n%s\n\n%s" % (methods, textwrap.fill(FLAGGED_NOTE, 78)))
    p.add_argument("--embed-dim", type=int, metavar="E",
                   help="model width E (default: 4096 on CUDA, 512 on the CPU)")
    p.add_argument("--num-heads", type=int, metavar="H",
                   help="attention heads (default: 32 on CUDA, 8 on the CPU)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="sequences per call (default: 1)")
    p.add_argument("--seq-lengths", type=_ints, metavar="L,L,...",
                   help="prefill / training lengths, e.g. 2048,8192 or 2k,8k (default: "
                        "2k,8k,32k,128k on CUDA; 256,512,1k,2k,4k on the CPU)")
    p.add_argument("--decode-contexts", type=_ints, metavar="S,S,...",
                   help="context lengths before the timed decode step (default: "
                        "1k,4k,16k,64k,128k on CUDA; 256,1k,4k on the CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="parameter and activation dtype (default: bf16 on CUDA, f32 on the CPU)")
    p.add_argument("--device", default="cuda",
                   help="cuda or cpu; cuda falls back to cpu, with a note, when there is no GPU "
                        "(default: cuda)")
    p.add_argument("--methods", metavar="NAME,...",
                   help="a comma-separated subset of the methods below (default: all that this "
                        "torch and device offer)")
    p.add_argument("--mode", choices=MODES, default="inference",
                   help="inference: prefill and decode; train: forward + backward; all: both "
                        "(default: inference)")
    p.add_argument("--train", dest="mode", action="store_const", const="train",
                   help="the same as --mode train")
    p.add_argument("--peers", metavar="DIR",
                   help="a folder holding flash-linear-attention as DIR/fla (bench/gpu_run.sh: "
                        "peers): adds fla_chunk to the training sweep, skipped with the reason "
                        "where fla does not import or off CUDA (default: none, fla not run)")
    p.add_argument("--warmup", type=int,
                   help="untimed calls before timing (default: 2 on CUDA, 1 on the CPU)")
    p.add_argument("--iters", type=int,
                   help="timed calls per point, the median is reported (default: 10 on CUDA, "
                        "3 on the CPU; decode at least 20)")
    p.add_argument("--max-seconds", type=float, default=60.0, metavar="SECONDS",
                   help="per-call time budget: a method's larger lengths whose extrapolated "
                        "time exceeds it are skipped and said so (default: 60)")
    p.add_argument("--threads", type=int,
                   help="torch threads, which libliquidmemory shares (default: every core on "
                        "the CPU, torch's setting on CUDA)")
    p.add_argument("--out", default=os.path.join("bench", "results"), metavar="DIR",
                   help="output folder for <stem>.json, the PNG plots and <stem>_manifest.json, "
                        "created if missing; stem = sweep[_train|_all]_<device>_<time>[_<tag>] "
                        "(default: bench/results, relative to the current folder)")
    p.add_argument("--tag", help="a suffix for the file names (default: none)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots (default: plots)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (default: a tqdm bar, or a line per point)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    run(embed_dim=a.embed_dim, num_heads=a.num_heads, batch_size=a.batch_size,
        seq_lengths=a.seq_lengths, decode_contexts=a.decode_contexts,
        dtype=DTYPES[a.dtype] if a.dtype else None, device=a.device,
        methods=a.methods.split(",") if a.methods else None, warmup=a.warmup, iters=a.iters,
        max_seconds=a.max_seconds, threads=a.threads, out_dir=a.out, tag=a.tag,
        plots=not a.no_plots, progress=not a.no_progress, mode=a.mode, peers=a.peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
