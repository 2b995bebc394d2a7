"""
liquid_memory - linear-time attention for PyTorch, over libliquidmemory.

    from liquid_memory import LiquidMemory
    attn = LiquidMemory(512, 8, batch_first=True)      # was nn.MultiheadAttention(512, 8, ...)
    out, _ = attn(x, x, x, is_causal=True, need_weights=False)
    with torch.no_grad():
        y = attn.step(x_next)                          # O(1) decode from the kept state

    from liquid_memory import linear_attention         # the core on projected q, k, v
    o, (S, z) = linear_attention(q, k, v, output_final_state=True)   # [B, L, H, D]

    from liquid_memory import StatePool                # the engine API: slots, varlen, decode
    pool = StatePool(num_slots, num_kv_heads, head_dim, device="cuda")

The C library is found through LM_LIB_PATH, the package folder, then the
system (see liquid_memory._ffi); it is loaded on first use, so importing the
package never fails for want of it. `library_info()` says what was loaded.
"""
from ._core import (CudaError, InvalidArgumentError, LicenseError, LicenseWarning,
                    LiquidMemoryError, LMOutOfMemoryError, NoDeviceError, StateError,
                    UnsupportedError)
from ._ffi import LibraryNotFoundError, MissingSymbolError
from .engine import StatePool
from .functional import linear_attention
from .hybrid import HybridState, hybrid_attention
from .module import (MASK_IGNORE_AT, AttentionWeightsWarning, LiquidMemory, disable_fastpath,
                     replace_attention)

__version__ = "0.1.0"

__all__ = ["LiquidMemory", "linear_attention", "replace_attention", "disable_fastpath",
           "library_info", "MASK_IGNORE_AT", "hybrid_attention", "HybridState",
           "LiquidMemoryError", "InvalidArgumentError", "UnsupportedError", "LMOutOfMemoryError",
           "NoDeviceError", "CudaError", "LicenseError", "StateError", "LicenseWarning",
           "AttentionWeightsWarning", "LibraryNotFoundError", "MissingSymbolError",
           "license_reload", "StatePool"]


def license_reload():
    """Looks up the license again (LM_LICENSE, LM_LICENSE_FILE, the default
    file) without a restart, e.g. after a renewal; raises LicenseError when none
    is found or it is refused, and the license in force stays."""
    from . import _core
    _core.license_reload()


def library_info():
    """What was loaded: {'path', 'ffi', 'version', 'backward', 'custom_op'}.
    Loads the library if needed (raises LibraryNotFoundError naming the paths tried)."""
    from . import _ffi, _ops
    lib = _ffi.binding()
    return {"path": lib.path, "ffi": lib.kind, "version": lib.version(),
            "backward": lib.has("lm_linear_attn_backward"), "custom_op": _ops.USE_CUSTOM_OP}
