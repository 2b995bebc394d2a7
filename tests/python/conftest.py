"""
conftest.py - what the pytest suites share: the package on sys.path, the
float64 reference of docs/DESIGN.md "The maths" (written here, independent of
the library), random inputs, one tolerance helper, and the CUDA marker.

Run: make test-python (sets LM_LIB_PATH to build/lib/libliquidmemory.so).
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))

import liquid_memory  # noqa: E402
from liquid_memory import _core, _ffi  # noqa: E402

try:  # one clear message instead of an error per test module
    _ffi.binding()
except (_ffi.LibraryNotFoundError, ImportError) as _e:
    pytest.exit("tests/python need libliquidmemory: %s" % _e, returncode=2)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: torch.cuda.is_available() "
                                   "is False (these run on the GPU machine)")
TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every output the library writes starts as NaN."""
    monkeypatch.setattr(_core, "POISON", True)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from a clean slate: dynamo's caches are per code
    object (LiquidMemory.forward), so the modules of earlier tests, each of
    another configuration, would count against its recompile limit (8), and
    fullgraph=True turns hitting it into a failure that is no test's fault
    (torch 2.11 on the GPU machine: test_compile after test_hybrid in one
    process). torch < 2.0 has no dynamo: nothing to reset."""
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None:
        dynamo.reset()
    yield


@pytest.fixture(autouse=True)
def _quiet_license(recwarn):
    """Evaluation-mode notices are expected in tests; they are tested apart."""
    import warnings
    warnings.simplefilter("ignore", liquid_memory.LicenseWarning)


# ---------------------------------------------------------------------------
# float64 reference of docs/DESIGN.md, "The maths"
# ---------------------------------------------------------------------------

def phi(x, feature_map):
    if feature_map in ("elu", "elu1"):
        return torch.nn.functional.elu(x) + 1.0
    if feature_map == "relu":
        return torch.relu(x)
    if feature_map == "identity":
        return x
    raise ValueError(feature_map)


def ref_attention(q, k, v, mask=None, causal=True, feature_map="elu", normalize=True, eps=1e-6,
                  scale=None, decay=None, S0=None, z0=None):
    """Linear attention in float64, straight from the recurrence's closed form.
    q [B, L, Hq, Dk], k [B, Lk, Hkv, Dk], v [B, Lk, Hkv, Dv]; mask [B, Lk] bool
    (True = ignore); decay: Hkv values or None; S0 [B, Hkv, Dk, Dv], z0 [B, Hkv, Dk].
    A masked key is no step of the recurrence: it does not decay the state either,
    so decay exponents count unmasked keys (c_t, the unmasked keys among 0..t).
    Returns (out [B, L, Hq, Dv], S_final, z_final), all float64, differentiable."""
    q, k, v = q.double(), k.double(), v.double()
    B, L, Hq, Dk = q.shape
    Lk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    fq, fk = phi(q, feature_map), phi(k, feature_map)
    if mask is not None:
        keep = (~mask).double()[:, :, None, None]
        fk, v = fk * keep, v * keep
    # kv heads -> query heads, [B, H, L, D]
    fq = fq.transpose(1, 2)
    fk = fk.repeat_interleave(G, dim=2).transpose(1, 2)
    vv = v.repeat_interleave(G, dim=2).transpose(1, 2)
    g = torch.ones(Hkv, dtype=torch.float64) if decay is None else \
        torch.tensor(decay, dtype=torch.float64)
    g = g.to(q.device)
    gq = g.repeat_interleave(G)[None, :, None, None]  # [1, H, 1, 1]
    S0q = z0q = None
    if S0 is not None:
        S0q = S0.double().repeat_interleave(G, dim=1)   # [B, H, Dk, Dv]
        z0q = z0.double().repeat_interleave(G, dim=1)   # [B, H, Dk]
    # c_t per batch row [B, Lk]: t + 1 without a mask
    c = torch.ones(B, Lk, dtype=torch.float64, device=q.device)
    if mask is not None:
        c = (~mask).double().to(q.device)
    c = c.cumsum(-1)
    if causal:
        i = torch.arange(L, device=q.device, dtype=torch.float64)
        diff = i[:, None] - i[None, :]
        cd = (c[:, :, None] - c[:, None, :])[:, None]                  # [B,1,L,L]
        w = torch.where(diff >= 0, gq ** cd.clamp(min=0), torch.zeros_like(cd))  # [B,H,L,L]
        a = (fq @ fk.transpose(-1, -2)) * w
        num = a @ vv
        den = a.sum(-1)
        if S0q is not None:
            p = gq[..., 0] ** c[:, None, :]                        # [B, H, L]
            num = num + p[..., None] * (fq @ S0q)
            den = den + p * (fq @ z0q[..., None])[..., 0]
    else:
        S = fk.transpose(-1, -2) @ vv
        z = fk.sum(-2)
        if S0q is not None:
            S, z = S + S0q, z + z0q
        num = fq @ S
        den = (fq @ z[..., None])[..., 0]
    if normalize:
        out = num / (den + eps)[..., None]
    else:
        out = num * (scale if scale else Dk ** -0.5)
    # final state per kv head
    cL = c[:, -1:] if Lk else torch.zeros(B, 1, dtype=torch.float64, device=q.device)
    gk = g[None, :, None] ** (cL - c)[:, None, :] if causal else \
        torch.ones(1, Hkv, Lk, dtype=torch.float64, device=q.device)  # [B, Hkv, Lk]
    fk_kv = (phi(k, feature_map) * (1.0 if mask is None else keep)).transpose(1, 2)
    v_kv = v.transpose(1, 2)
    S_fin = (fk_kv * gk[..., None]).transpose(-1, -2) @ v_kv
    z_fin = (fk_kv * gk[..., None]).sum(-2)
    if S0 is not None:
        glen = g[None, :, None] ** (cL[:, None, :] if causal else 0)   # [B, Hkv, 1]
        S_fin = S_fin + glen[..., None] * S0.double()
        z_fin = z_fin + glen * z0.double()
    return out.transpose(1, 2), S_fin, z_fin


def rel_err(got, want):
    """||got - want|| / ||want|| in float64 (NaN if got has a NaN)."""
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm().clamp(min=1e-300))


# Relative-error bounds by dtype: f32 accumulates in fp32; bf16/f16 inputs are
# rounded before the reference sees them, so the bound is the output rounding
# (2^-9 for bf16, 2^-12 for f16) times a small factor.
TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1.5e-3}


def assert_close(got, want, dtype, what="", factor=1.0):
    assert torch.isfinite(got).all(), "%s: non-finite values in the output" % what
    e = rel_err(got, want)
    assert e <= TOL[dtype] * factor, "%s: relative error %.3g > %.3g (%s)" % (
        what, e, TOL[dtype] * factor, dtype)
    return e


def rand_qkv(B, L, Hq, D, Lk=None, Hkv=None, Dv=None, dtype=torch.float32, device="cpu", seed=0,
             scale=1.0):
    g = torch.Generator().manual_seed(seed)
    Lk, Hkv, Dv = Lk or L, Hkv or Hq, Dv or D
    q = (torch.randn(B, L, Hq, D, generator=g) * scale).to(device, dtype)
    k = (torch.randn(B, Lk, Hkv, D, generator=g) * scale).to(device, dtype)
    v = torch.randn(B, Lk, Hkv, Dv, generator=g).to(device, dtype)
    return q, k, v


def ref_module(m, query, key, value, causal=False, mask=None):
    """LiquidMemory's forward in float64 from its own parameters (batch-first
    [B, L, E] inputs): projections, the maths with the extra bias/zero keys first,
    out projection. Differentiable with respect to the float64 inputs."""
    E, H, Hkv, D = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim
    kv = Hkv * D
    dbl = (lambda t: None if t is None else t.double())
    b = dbl(m.in_proj_bias)
    if m.in_proj_weight is not None:
        w = m.in_proj_weight.double()
        wq, wk, wv = w[:E], w[E:E + kv], w[E + kv:]
    else:
        wq, wk, wv = dbl(m.q_proj_weight), dbl(m.k_proj_weight), dbl(m.v_proj_weight)
    bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:E + kv], b[E + kv:])
    lin = torch.nn.functional.linear
    B = query.shape[0]
    q = lin(query.double(), wq, bq).view(B, -1, H, D)
    k = lin(key.double(), wk, bk).view(B, -1, Hkv, D)
    v = lin(value.double(), wv, bv).view(B, -1, Hkv, D)
    S0 = z0 = None
    extra_k, extra_v = [], []
    if m.bias_k is not None:
        extra_k.append(m.bias_k.double().view(1, 1, Hkv, D).expand(B, 1, Hkv, D))
        extra_v.append(m.bias_v.double().view(1, 1, Hkv, D).expand(B, 1, Hkv, D))
    if m.add_zero_attn:
        extra_k.append(torch.zeros(B, 1, Hkv, D, dtype=torch.float64))
        extra_v.append(torch.zeros(B, 1, Hkv, D, dtype=torch.float64))
    opts = dict(feature_map=m.feature_map, normalize=m.normalize, eps=m.eps, scale=m.scale,
                decay=m.decay)
    if extra_k:
        ek, ev = torch.cat(extra_k, 1), torch.cat(extra_v, 1)
        eq = torch.zeros(B, ek.shape[1], H, D, dtype=torch.float64)
        _, S0, z0 = ref_attention(eq, ek, ev, causal=True, **opts)
    o, _, _ = ref_attention(q, k, v, mask=mask, causal=causal, S0=S0, z0=z0, **opts)
    o = o.reshape(B, -1, E)
    ob = None if m.out_proj.bias is None else m.out_proj.bias.double()
    return lin(o, m.out_proj.weight.double(), ob)


def run_unlicensed(code, home):
    """Runs Python `code` in a child process with no license anywhere
    (evaluation mode: LM_LICENSE and LM_LICENSE_FILE unset, HOME = home),
    against the library under test; asserts it exits 0 and returns its
    output lines as {first word: the rest}."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in ("LM_LICENSE", "LM_LICENSE_FILE")}
    env.update(HOME=str(home), LM_LIB_PATH=_ffi.binding().path,
               PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return dict((line.split(" ", 1) + [""])[:2] for line in out.stdout.splitlines())
