"""
_core.py - calls the C core (lm_linear_attn_prefill / _decode / _backward /
_absorb) on torch tensors, passing their data pointers and strides: nothing
is copied that the C API can read through strides. No attention math here.

Layout: q [B, L, Hq, Dk], k [B, Lk, Hkv, Dk], v [B, Lk, Hkv, Dv] (any
strides), out [B, L, Hq, Dv]; state S [B, Hkv, Dk, Dv] and z [B, Hkv, Dk],
fp32, contiguous, on the tensors' device. CPU tensors run on the CPU backend,
CUDA tensors on the CUDA backend on torch's current stream of their device.
The decode step, whose kernel takes microseconds, reuses one call plan per
layout and thread (_Plan): its host cost is a few pointer writes and the call.
"""
import os
import threading
import warnings

import torch

from . import _ffi

C = _ffi.CONSTANTS

DTYPES = {torch.float32: C["LM_F32"], torch.bfloat16: C["LM_BF16"], torch.float16: C["LM_F16"],
          torch.bool: C["LM_BOOL"]}
FEATURE_MAPS = {"elu": C["LM_FEATURE_ELU1"], "elu1": C["LM_FEATURE_ELU1"],
                "relu": C["LM_FEATURE_RELU"], "identity": C["LM_FEATURE_IDENTITY"]}
PRECISIONS = {"auto": C["LM_PRECISION_AUTO"], "on": C["LM_PRECISION_ON"],
              "off": C["LM_PRECISION_OFF"]}

# Debug aid for the tests: fill every output with NaN before the C call, so an
# element the library fails to write cannot pass as a result.
POISON = os.environ.get("LM_PY_POISON", "") not in ("", "0")


def _new(shape, dtype, device):
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class LiquidMemoryError(RuntimeError):
    """A call into libliquidmemory failed. `status` is the lm_status value,
    `status_name` its text, `detail` the library's lm_last_error()."""

    def __init__(self, message, status=None, status_name="", detail=""):
        super().__init__(message)
        self.status, self.status_name, self.detail = status, status_name, detail


class InvalidArgumentError(LiquidMemoryError, ValueError):
    pass


class UnsupportedError(LiquidMemoryError, NotImplementedError):
    pass


class LMOutOfMemoryError(LiquidMemoryError, MemoryError):
    pass


class NoDeviceError(LiquidMemoryError):
    pass


class CudaError(LiquidMemoryError):
    pass


class LicenseError(LiquidMemoryError):
    pass


class StateError(LiquidMemoryError):
    pass


_STATUS_ERRORS = {
    C["LM_ERR_INVALID_ARG"]: InvalidArgumentError,
    C["LM_ERR_UNSUPPORTED"]: UnsupportedError,
    C["LM_ERR_OUT_OF_MEMORY"]: LMOutOfMemoryError,
    C["LM_ERR_NO_DEVICE"]: NoDeviceError,
    C["LM_ERR_CUDA"]: CudaError,
    C["LM_ERR_LICENSE"]: LicenseError,
    C["LM_ERR_STATE"]: StateError,
}


class LicenseWarning(UserWarning):
    """Liquid Memory runs in evaluation mode (no valid license found)."""


def check(status, what):
    """Raises the exception of a failed lm_status, with the library's detail."""
    if status == C["LM_OK"]:
        return
    lib = _ffi.binding()
    name, detail = lib.status_string(status), lib.last_error()
    cls = _STATUS_ERRORS.get(status, LiquidMemoryError)
    raise cls("%s failed: %s: %s" % (what, name, detail or "(no detail)"), status, name, detail)


_license_checked = False
_license_lock = threading.Lock()


def _license_notice():
    """Warns once per process when the library runs in evaluation mode or its
    license was refused."""
    global _license_checked
    if _license_checked:
        return
    with _license_lock:
        if _license_checked:
            return
        _license_checked = True
        lib = _ffi.binding()
        if not lib.has("lm_license_info"):
            return
        info = lib.new("lm_license_details")
        if lib.call("lm_license_info", lib.ref(info)) != C["LM_OK"]:
            return
        if info.mode == C["LM_LICENSE_EVALUATION"]:
            warnings.warn("Liquid Memory runs in evaluation mode: no license found, context "
                          "is capped at %d tokens. Set LM_LICENSE (a token) or LM_LICENSE_FILE, "
                          "or see README_INTEGRATION.md." % C["LM_EVAL_MAX_TOKENS"],
                          LicenseWarning, stacklevel=4)
        elif info.mode == C["LM_LICENSE_INVALID"]:
            warnings.warn("Liquid Memory: the license from %s was refused (%s); every call "
                          "raises LicenseError until it is replaced or removed"
                          % (lib.string(info.source), lib.string(info.reason)),
                          LicenseWarning, stacklevel=4)


def context_cap():
    """Tokens of context per sequence that the license in force counts (the
    evaluation cap without a license), or 0 when nothing is counted. Under a
    cap the library takes no state it cannot verify (docs/DESIGN.md,
    "Per-sequence entitlements")."""
    lib = _ffi.binding()
    if not lib.has("lm_license_info"):
        return 0
    info = lib.new("lm_license_details")
    check(lib.call("lm_license_info", lib.ref(info)), "lm_license_info")
    return int(info.max_seq_len) if info.mode != C["LM_LICENSE_INVALID"] else 0


def refuse_carried_state(what):
    """Raises LicenseError when a context cap applies: `what` would hand the
    library a state whose position it cannot verify."""
    cap = context_cap()
    if cap:
        raise LicenseError("%s failed: LM_ERR_LICENSE: a license with a context cap (%d tokens "
                           "per sequence; evaluation mode without a license) takes no state "
                           "from outside the library, whose position it cannot verify; install "
                           "a license without a context cap" % (what, cap),
                           C["LM_ERR_LICENSE"], "LM_ERR_LICENSE", None)


def license_reload():
    """lm_license_reload: looks up the license again (LM_LICENSE,
    LM_LICENSE_FILE, the default file) for a long-running process; raises
    LicenseError when none is found or it is refused (the one in force stays)."""
    check(_ffi.binding().call("lm_license_reload"), "lm_license_reload")


# --------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------

def _device_code(t):
    if t.device.type == "cpu":
        return C["LM_CPU"]
    if t.device.type == "cuda":
        return C["LM_CUDA"]
    raise ValueError("Liquid Memory runs on CPU or CUDA tensors, not on %s" % t.device)


def _dtype_code(t):
    code = DTYPES.get(t.dtype)
    if code is None:
        raise TypeError("Liquid Memory takes float32, bfloat16 or float16 tensors, not %s"
                        % t.dtype)
    return code


def tensor_desc(lib, t):
    """An lm_tensor describing torch tensor t (its pointer, shape, strides)."""
    d = lib.new("lm_tensor")
    lib.set_ptr(d, "lm_tensor", "data", t.data_ptr())
    d.dtype = _dtype_code(t)
    d.device = _device_code(t)
    d.ndim = t.dim()
    for i, (n, s) in enumerate(zip(t.shape, t.stride())):
        d.shape[i] = n
        d.stride[i] = s
    return d


_cuda = None  # (current device index, current raw stream of an index), found on first use


def _cuda_fns():
    """torch's cheapest queries for the current device and its current
    stream's handle (torch._C's, else the public ones)."""
    torch.cuda.init()
    get = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None) or \
        (lambda index: torch.cuda.current_stream(index).cuda_stream)
    return get, raw


def launch_on(lib, fn, args, index):
    """fn(args, stream): on the CPU (index < 0) with no stream; on CUDA device
    `index` with torch's current stream of that device, made the current
    device only when it is not already (the common case costs one query)."""
    global _cuda
    if index < 0:
        return fn(args, lib.null)
    if _cuda is None:
        _cuda = _cuda_fns()
    get, raw = _cuda
    if get() == index:
        return fn(args, lib.stream(raw(index)))
    with torch.cuda.device(index):
        return fn(args, lib.stream(raw(index)))


def launch(lib, fn, args, t):
    """launch_on the device of tensor t."""
    return launch_on(lib, fn, args, t.get_device() if t.is_cuda else -1)


_OPTION_KEYS = {}  # the values of every Options made -> a small int (cheap to hash)
_OPTION_LOCK = threading.Lock()


class Options:
    """The attention options as the C core takes them (plain values; treat an
    instance as immutable: `key`, one int per distinct set of values, stands
    for them in the call plans' keys)."""
    __slots__ = ("feature_map", "normalize", "eps", "scale", "decay", "precision", "key")

    def __init__(self, feature_map=C["LM_FEATURE_ELU1"], normalize=True, eps=1e-6, scale=0.0,
                 decay=None, precision=C["LM_PRECISION_AUTO"]):
        self.feature_map, self.normalize, self.eps = int(feature_map), bool(normalize), float(eps)
        self.scale, self.precision = float(scale), int(precision)
        self.decay = None if decay is None else [float(x) for x in decay]
        values = (self.feature_map, self.normalize, self.eps, self.scale,
                  None if decay is None else tuple(self.decay), self.precision)
        key = _OPTION_KEYS.get(values)
        if key is None:
            with _OPTION_LOCK:  # len() and the insertion together: one int per set of values
                key = _OPTION_KEYS.setdefault(values, len(_OPTION_KEYS))
        self.key = key


DEFAULT_OPTIONS = Options()


def _set_options(lib, a, keep, opts):
    a.feature_map = opts.feature_map
    a.normalize = 1 if opts.normalize else 0
    a.eps = opts.eps
    a.scale = opts.scale
    a.precision = opts.precision
    if opts.decay is not None:
        buf = torch.tensor(opts.decay, dtype=torch.float32)  # host values, as the C API wants
        keep.append(buf)
        lib.set_ptr(a, "lm_core_args", "decay", buf.data_ptr())


def _args(lib, keep, q, k, v, out, mask, state, normalizer, position, is_causal, opts):
    """Fills an lm_core_args; `keep` holds every object it points to."""
    a = lib.new("lm_core_args")
    check(lib.call("lm_core_args_init", lib.ref(a), lib.sizeof("lm_core_args")), "lm_core_args_init")
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out), ("key_padding_mask", mask)):
        if t is None:
            continue
        d = tensor_desc(lib, t)
        keep.append(d)
        setattr(a, name, lib.ref(d))
    if state is not None:
        lib.set_ptr(a, "lm_core_args", "state", state.data_ptr())
        lib.set_ptr(a, "lm_core_args", "normalizer", normalizer.data_ptr())
    a.position = int(position)
    a.is_causal = 1 if is_causal else 0
    _set_options(lib, a, keep, opts)
    return a


def _check_state(S, z, q, k, v):
    B, Hkv, Dk, Dv = q.shape[0], k.shape[2], k.shape[3], v.shape[3]
    for t, shape, name in ((S, (B, Hkv, Dk, Dv), "state"), (z, (B, Hkv, Dk), "normalizer")):
        if tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() \
                or t.device != q.device:
            raise ValueError("%s must be a contiguous float32 tensor of shape %s on %s, got %s "
                             "%s on %s" % (name, list(shape), q.device, t.dtype, list(t.shape),
                                           t.device))


def prefill(q, k, v, mask=None, S0=None, z0=None, position=0, is_causal=True, opts=None,
            seq_first=False, want_state=False):
    """Runs lm_linear_attn_prefill. Returns (out, S, z): out [B, L, Hq, Dv] in
    q's dtype (laid out as [L, B, ...] in memory when seq_first), and the final
    state when want_state or an initial state S0/z0 is given (else empty
    tensors). The initial state is not modified."""
    opts = opts or DEFAULT_OPTIONS
    lib = _ffi.binding()
    _license_notice()
    B, L, Hq = q.shape[0], q.shape[1], q.shape[2]
    Hkv, Dk, Dv = k.shape[2], k.shape[3], v.shape[3]
    if seq_first:
        out = _new((L, B, Hq, Dv), q.dtype, q.device).transpose(0, 1)
    else:
        out = _new((B, L, Hq, Dv), q.dtype, q.device)
    S = z = None
    if S0 is not None:
        _check_state(S0, z0, q, k, v)
        S, z = S0.clone(), z0.clone()  # the C core overwrites the state it reads
    elif want_state:
        S = torch.zeros((B, Hkv, Dk, Dv), dtype=torch.float32, device=q.device)
        z = torch.zeros((B, Hkv, Dk), dtype=torch.float32, device=q.device)
    keep = []
    a = _args(lib, keep, q, k, v, out, mask, S, z, position if S0 is not None else 0,
              is_causal, opts)
    if S0 is None and S is not None:
        a.fresh_state = 1  # a sequence that starts here: accepted under a context cap too
    check(launch(lib, lib.fn("lm_linear_attn_prefill"), lib.ref(a), q), "lm_linear_attn_prefill")
    if S is None:
        S = q.new_empty((0,), dtype=torch.float32)
        z = q.new_empty((0,), dtype=torch.float32)
    return out, S, z


# --------------------------------------------------------------------------
# The decode step: one call plan per layout
# --------------------------------------------------------------------------

class _Plan:
    """An lm_core_args with its lm_tensor descriptors for q, k, v and out,
    made once for calls of one layout (shapes, strides, dtypes, device,
    options): per call only the six data pointers and the position are
    written. This is what keeps an eager decode step's host time near the
    cost of the C call itself. `key` is the layout it was made for; `nS`,
    `nz` the state's element counts; `proto` a tensor shaped, typed and
    placed as each call's output (torch.empty_like(proto) parses no
    arguments: the cheapest allocation torch has)."""
    __slots__ = ("args", "ref", "fn", "index", "null", "keep", "q", "k", "v", "out", "S", "z",
                 "key", "nS", "nz", "proto")

    def __init__(self, lib, fn_name, descs, opts, index, state, proto):
        """descs: ((shape, strides, dtype, device), ...) of q, k, v and out, all
        of one dtype and device (codes dtype, device; CUDA index or -1);
        state: (nS, nz), the element counts of S and z; proto: a contiguous
        tensor like the output (its memory as descs[3] says)."""
        a = lib.new("lm_core_args")
        check(lib.call("lm_core_args_init", lib.ref(a), lib.sizeof("lm_core_args")), "lm_core_args_init")
        self.keep, slots = [], []
        for field, (shape, strides, dtype, device) in zip(("q", "k", "v", "out"), descs):
            d = lib.new("lm_tensor")
            d.dtype, d.device, d.ndim = dtype, device, len(shape)
            for i, (n, st) in enumerate(zip(shape, strides)):
                d.shape[i] = n
                d.stride[i] = st
            self.keep.append(d)
            setattr(a, field, lib.ref(d))
            slots.append(lib.ptr_slot(d, "lm_tensor", "data"))
        self.q, self.k, self.v, self.out = slots
        self.S = lib.ptr_slot(a, "lm_core_args", "state")
        self.z = lib.ptr_slot(a, "lm_core_args", "normalizer")
        a.is_causal = 1
        _set_options(lib, a, self.keep, opts)
        self.args, self.ref, self.fn, self.index = a, lib.ref(a), lib.fn(fn_name), index
        self.null, self.key, (self.nS, self.nz), self.proto = lib.null, None, state, proto

    def run(self, lib, q, k, v, out, S, z, position):
        """Writes the data addresses and the position, and calls."""
        self.q[0] = q
        self.k[0] = k
        self.v[0] = v
        self.out[0] = out
        self.S[0] = S
        self.z[0] = z
        self.args.position = position
        if self.index < 0:
            st = self.fn(self.ref, self.null)
        else:
            st = launch_on(lib, self.fn, self.ref, self.index)
        if st:
            check(st, "lm_linear_attn_decode")


_MAX_PLANS = 64  # layouts kept per thread (a server decoding a few batch sizes needs a few)


def _plan(lib, kind, key, make, *args):
    """The calling thread's plan of `kind` ("decode", "packed") for layout
    `key` in this binding (each thread its own: the C call runs without the
    GIL while the struct is in use), made by make(lib, *args) when new. The
    callers try the thread's last plan of their kind first (lib.plans.<kind>:
    a loop of one layout costs one tuple compare) and come here when its key
    differs; other layouts come from a table."""
    tls = lib.plans
    _license_notice()
    table = getattr(tls, "table", None)
    if table is None:
        table = tls.table = {}
    p = table.get((kind, key))
    if p is None:
        if len(table) >= _MAX_PLANS:
            table.clear()
        p = table[(kind, key)] = make(lib, *args)
        p.key = key
    setattr(tls, kind, p)
    return p


def _layout(t):
    return (tuple(t.shape), t.stride(), _dtype_code(t), _device_code(t))


def _state_error(S, z, shape, like):
    return ValueError("state must be a contiguous float32 tensor of shape %s and normalizer one "
                      "of %s on %s, got %s %s and %s %s on %s, %s (a LiquidMemory's "
                      "reset_state() or set_state() gives it a float32 state again)"
                      % (list(shape), list(shape[:3]), like.device, S.dtype, list(S.shape),
                         z.dtype, list(z.shape), S.device, z.device))


_F32 = torch.float32


def _state_ok(S, z, plan):
    """S and z are what the C core will write: fp32, contiguous, the plan's
    element counts, on its device (as get_device() says: -1 = CPU)."""
    return S.dtype is _F32 and z.dtype is _F32 and S.numel() == plan.nS and \
        z.numel() == plan.nz and S.is_contiguous() and z.is_contiguous() and \
        S.get_device() == plan.index and z.get_device() == plan.index


def decode(q, k, v, S, z, position, opts=None):
    """Runs lm_linear_attn_decode: one token per batch row (L = 1), updating
    S and z in place. Returns out [B, 1, Hq, Dv].

    Per call (the host cost of an eager step): one layout tuple compared with
    the thread's last plan's, the state's checks, the output's allocation and
    the call; everything else is in the plan."""
    opts = opts or DEFAULT_OPTIONS
    lib = _ffi.binding()
    key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype,
           v.dtype, q.device, k.device, v.device, opts.key)
    plan = getattr(lib.plans, "decode", None)
    if plan is None or plan.key != key:
        plan = _plan(lib, "decode", key, _decode_plan, q, k, v, opts)
    if not _state_ok(S, z, plan):
        raise _state_error(S, z, (q.shape[0], k.shape[2], k.shape[3], v.shape[3]), q)
    out = torch.empty_like(plan.proto)
    if POISON:
        out.fill_(float("nan"))
    plan.run(lib, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), S.data_ptr(),
             z.data_ptr(), position)
    return out


def _decode_plan(lib, q, k, v, opts):
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k and v must be on one device, got %s, %s, %s"
                         % (q.device, k.device, v.device))
    B, Hq, Hkv, Dk, Dv = q.shape[0], q.shape[2], k.shape[2], k.shape[3], v.shape[3]
    out = (B, 1, Hq, Dv)  # as decode allocates it
    descs = [_layout(q), _layout(k), _layout(v),
             (out, (Hq * Dv, Hq * Dv, Dv, 1), _dtype_code(q), _device_code(q))]
    return _Plan(lib, "lm_linear_attn_decode", descs, opts, q.get_device() if q.is_cuda else -1,
                 (B * Hkv * Dk * Dv, B * Hkv * Dk), q.new_empty(out))


def decode_packed(qkv, heads, kv_heads, head_dim, S, z, position, opts=None):
    """The module's decode step on its packed projection: qkv [B, (Hq + 2 Hkv) D]
    (contiguous: q heads, then k heads, then v heads, as in_proj_weight
    stacks them) read in place as q, k, v. Updates S and z; returns out
    [B, Hq D] (the heads side by side, ready for out_proj)."""
    opts = opts or DEFAULT_OPTIONS
    lib = _ffi.binding()
    key = (qkv.shape, qkv.dtype, qkv.device, heads, kv_heads, head_dim, opts.key)
    plan = getattr(lib.plans, "packed", None)
    if plan is None or plan.key != key:
        plan = _plan(lib, "packed", key, _packed_plan, qkv, heads, kv_heads, head_dim, opts)
    if not qkv.is_contiguous():
        raise _packed_error(qkv)
    if not _state_ok(S, z, plan):
        raise _state_error(S, z, (qkv.shape[0], kv_heads, head_dim, head_dim), qkv)
    out = torch.empty_like(plan.proto)
    if POISON:
        out.fill_(float("nan"))
    base, E, kv = qkv.data_ptr(), heads * head_dim, kv_heads * head_dim
    es = qkv.element_size()
    plan.run(lib, base, base + E * es, base + (E + kv) * es, out.data_ptr(), S.data_ptr(),
             z.data_ptr(), position)
    return out


def _packed_error(qkv):
    return ValueError("qkv must be a contiguous [B, (heads + 2 kv_heads) head_dim] tensor, "
                      "got %s" % (list(qkv.shape),))


def _packed_plan(lib, qkv, heads, kv_heads, head_dim, opts):
    if qkv.dim() != 2 or qkv.shape[1] != (heads + 2 * kv_heads) * head_dim:
        raise _packed_error(qkv)
    B, width = qkv.shape
    E, kv = heads * head_dim, kv_heads * head_dim
    dt, dev = _dtype_code(qkv), _device_code(qkv)
    row = (width, width, head_dim, 1)
    descs = [((B, 1, heads, head_dim), row, dt, dev), ((B, 1, kv_heads, head_dim), row, dt, dev),
             ((B, 1, kv_heads, head_dim), row, dt, dev),
             ((B, 1, heads, head_dim), (E, E, head_dim, 1), dt, dev)]  # out, allocated [B, E]
    return _Plan(lib, "lm_linear_attn_decode", descs, opts,
                 qkv.get_device() if qkv.is_cuda else -1, (B * kv * head_dim, B * kv),
                 qkv.new_empty((B, E)))


def has_backward():
    return _ffi.binding().has("lm_linear_attn_backward")


def backward(dout, q, k, v, mask=None, S0=None, z0=None, dS=None, dz=None, position=0,
             is_causal=True, opts=None, need_dstate=False):
    """Runs lm_linear_attn_backward. Returns (dq, dk, dv, dS0, dz0); dS0/dz0
    are empty tensors unless need_dstate (gradient of the initial state)."""
    opts = opts or DEFAULT_OPTIONS
    lib = _ffi.binding()
    if not lib.has("lm_linear_attn_backward"):
        raise _ffi.MissingSymbolError(
            "LiquidMemory backward needs lm_linear_attn_backward, which %s does not have yet "
            "(a build of Liquid Memory without training support); forward and step work."
            % lib.path)
    dq = _new(q.shape, q.dtype, q.device)
    dk = _new(k.shape, k.dtype, k.device)
    dv = _new(v.shape, v.dtype, v.device)
    if S0 is not None:
        _check_state(S0, z0, q, k, v)
    keep = []
    a = _args(lib, keep, q, k, v, None, mask, S0, z0, position if S0 is not None else 0,
              is_causal, opts)
    g = lib.new("lm_core_grads")
    for name, t in (("dout", dout), ("dq", dq), ("dk", dk), ("dv", dv)):
        d = tensor_desc(lib, t)
        keep.append(d)
        setattr(g, name, lib.ref(d))
    if dS is not None or dz is not None:
        dS = torch.zeros((q.shape[0], k.shape[2], k.shape[3], v.shape[3]), dtype=torch.float32,
                         device=q.device) if dS is None else dS.float().contiguous()
        dz = torch.zeros((q.shape[0], k.shape[2], k.shape[3]), dtype=torch.float32,
                         device=q.device) if dz is None else dz.float().contiguous()
        keep += [dS, dz]
        lib.set_ptr(g, "lm_core_grads", "dstate_out", dS.data_ptr())
        lib.set_ptr(g, "lm_core_grads", "dnormalizer_out", dz.data_ptr())
    # Two distinct empties: custom ops may not return one tensor twice.
    dS0 = q.new_empty((0,), dtype=torch.float32)
    dz0 = q.new_empty((0,), dtype=torch.float32)
    if need_dstate:
        dS0 = _new((q.shape[0], k.shape[2], k.shape[3], v.shape[3]), torch.float32, q.device)
        dz0 = _new((q.shape[0], k.shape[2], k.shape[3]), torch.float32, q.device)
        lib.set_ptr(g, "lm_core_grads", "dstate_in", dS0.data_ptr())
        lib.set_ptr(g, "lm_core_grads", "dnormalizer_in", dz0.data_ptr())
    bwd = lib.fn("lm_linear_attn_backward")
    check(launch(lib, lambda args, stream: bwd(args, lib.ref(g), stream), lib.ref(a), q),
          "lm_linear_attn_backward")
    return dq, dk, dv, dS0, dz0


def absorb(k, v, mask, S, z, position=0, opts=None):
    """Runs lm_linear_attn_absorb: folds the keys and values of k [B, Lk, Hkv,
    Dk], v [B, Lk, Hkv, Dv] into the state S, z in place (S <- g^Lk S +
    sum_s g^(Lk-1-s) phi(k_s) v_s^T, z likewise; masked keys add nothing)."""
    opts = opts or DEFAULT_OPTIONS
    lib = _ffi.binding()
    _license_notice()
    _check_state(S, z, k, k, v)
    keep = []
    a = _args(lib, keep, None, k, v, None, mask, S, z, position, True, opts)
    check(launch(lib, lib.fn("lm_linear_attn_absorb"), lib.ref(a), k), "lm_linear_attn_absorb")
