"""
_peers.py - flash-linear-attention (fla), a peer for the benchmarks, imported from a
local checkout: bench/gpu_bench.py and the training sweep (liquid_memory.benchmark
--peers DIR) both load it here. fla is never a dependency of the package: it lives in
DIR/fla (peers/ is git-ignored; only the GPU machine has it, since fla needs triton and
CUDA), and a peer that does not import is reported with its reason, never fatal.
"""
import math
import os
import sys
import types

# fla's package __init__ asks for its version; the stubs below stand in for it.
FLA_STUB_VERSION = "0.5.2"


def load_fla(root):
    """((chunk_linear_attn, fused_recurrent_linear_attn), None) from root/fla, or
    (None, why not). fla's ops are imported without its package __init__, which
    imports its models and transformers."""
    path = os.path.join(root, "fla")
    if not os.path.isdir(path):
        return None, "peers/fla not present (looked in %s)" % os.path.abspath(path)
    try:
        sys.path.insert(0, root)
        for name, sub in (("fla", path), ("fla.ops", os.path.join(path, "ops"))):
            m = types.ModuleType(name)
            m.__path__ = [sub]
            m.__version__ = FLA_STUB_VERSION
            sys.modules[name] = m
        from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
        return (chunk_linear_attn, fused_recurrent_linear_attn), None
    except Exception as e:  # noqa: BLE001 - a peer that does not import is recorded, not fatal
        return None, "%s: %s" % (type(e).__name__, e)


def fla_commit(root):
    """The fla commit recorded beside the checkout (root/FLA_COMMIT), or None."""
    f = os.path.join(root, "FLA_COMMIT")
    if not os.path.exists(f):
        return None
    with open(f) as fh:
        return fh.read().strip()


def fla_fits(*dims):
    """Whether a tensor of these dims is within fla's int32 indexing: 1M tokens x 32
    heads x 128 hits an illegal address (ANCHORS.md)."""
    return math.prod(dims) < 2 ** 31
