"""
_ffi.py - finds libliquidmemory and binds it, through cffi (ABI mode) when it
is importable, else through ctypes. Both are built from ONE table of C
declarations below, copied from include/liquid_memory.h (tests/python checks
the table against the header: names, field order, sizes and offsets).

Library lookup, in order:
  1. the environment variable LM_LIB_PATH (a file, or a folder holding
     libliquidmemory.so). When it is set it is authoritative: nothing else is
     tried, so a test never silently runs against another copy.
  2. the package folder (``make python`` copies the built library there).
  3. the system: ctypes.util.find_library("liquidmemory"), then a plain
     dlopen of "libliquidmemory.so" (LD_LIBRARY_PATH, ld.so.cache).
LM_PY_FFI=cffi|ctypes forces one binding (default: cffi when importable).

Symbols are resolved lazily: a library without an optional symbol (e.g. an
older build without lm_linear_attn_backward) still loads; calling the missing
function raises MissingSymbolError naming it.
"""
import ctypes
import ctypes.util
import os
import re
import threading

LIB_NAME = "libliquidmemory.so"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------
# The declaration table (mirrors include/liquid_memory.h)
# --------------------------------------------------------------------------

# Enum types are passed as int (their size and alignment on every ABI we build for).
ENUM_TYPES = ("lm_status", "lm_dtype", "lm_device", "lm_feature_map", "lm_precision",
              "lm_license_mode", "lm_attention", "lm_gate_form")

CONSTANTS = {
    # lm_status
    "LM_OK": 0, "LM_ERR_INVALID_ARG": 1, "LM_ERR_UNSUPPORTED": 2, "LM_ERR_OUT_OF_MEMORY": 3,
    "LM_ERR_NO_DEVICE": 4, "LM_ERR_CUDA": 5, "LM_ERR_LICENSE": 6, "LM_ERR_STATE": 7,
    "LM_ERR_INTERNAL": 8,
    # lm_dtype
    "LM_BF16": 0, "LM_F16": 1, "LM_F32": 2, "LM_BOOL": 3,
    # lm_device
    "LM_CPU": 0, "LM_CUDA": 1,
    # lm_feature_map
    "LM_FEATURE_ELU1": 0, "LM_FEATURE_RELU": 1, "LM_FEATURE_IDENTITY": 2,
    # lm_precision
    "LM_PRECISION_AUTO": 0, "LM_PRECISION_ON": 1, "LM_PRECISION_OFF": 2,
    # lm_license_mode
    "LM_LICENSE_EVALUATION": 0, "LM_LICENSE_LICENSED": 1, "LM_LICENSE_INVALID": 2,
    # macros
    "LM_MAX_DIMS": 4, "LM_EVAL_MAX_TOKENS": 4096, "LM_PRECISION_AUTO_TOKENS": 65536,
    # lm_attention and the hybrid's defaults
    "LM_ATTENTION_LINEAR": 0, "LM_ATTENTION_HYBRID": 1,
    "LM_HYBRID_WINDOW_DEFAULT": 64, "LM_HYBRID_SINKS_DEFAULT": 4,
    # lm_gate_form (the hybrid's window gate) and the EXP form's logit bound
    "LM_GATE_SIGMOID": 0, "LM_GATE_EXP": 1, "LM_HYBRID_GATE_EXP_MAX": 40,
    # the engine API's sequence flag (lm_prefill_args.flags)
    "LM_SEQ_FRESH": 1,
}

# Opaque handle types (declared, never laid out).
OPAQUE_TYPES = ("lm_pool",)

# (struct name, ((C type, field name), ...)) in declaration order.
STRUCTS = (
    ("lm_tensor", (
        ("void *", "data"),
        ("lm_dtype", "dtype"),
        ("lm_device", "device"),
        ("int", "ndim"),
        ("int64_t[4]", "shape"),
        ("int64_t[4]", "stride"),
    )),
    ("lm_core_args", (
        ("uint32_t", "struct_size"),
        ("const lm_tensor *", "q"),
        ("const lm_tensor *", "k"),
        ("const lm_tensor *", "v"),
        ("lm_tensor *", "out"),
        ("const lm_tensor *", "key_padding_mask"),
        ("float *", "state"),
        ("float *", "normalizer"),
        ("int64_t", "position"),
        ("int", "is_causal"),
        ("lm_feature_map", "feature_map"),
        ("int", "normalize"),
        ("float", "eps"),
        ("float", "scale"),
        ("const float *", "decay"),
        ("lm_precision", "precision"),
        ("lm_attention", "attention"),
        ("int", "window"),
        ("int", "sinks"),
        ("const float *", "window_gate"),
        ("float *", "window_keys"),
        ("float *", "window_values"),
        ("int32_t *", "window_pos"),
        ("int", "fresh_state"),
        ("lm_gate_form", "window_gate_form"),
    )),
    ("lm_core_grads", (
        ("uint32_t", "struct_size"),
        ("const lm_tensor *", "dout"),
        ("lm_tensor *", "dq"),
        ("lm_tensor *", "dk"),
        ("lm_tensor *", "dv"),
        ("const float *", "dstate_out"),
        ("const float *", "dnormalizer_out"),
        ("float *", "dstate_in"),
        ("float *", "dnormalizer_in"),
    )),
    ("lm_license_details", (
        ("uint32_t", "struct_size"),
        ("lm_license_mode", "mode"),
        ("int", "development_build"),
        ("char[129]", "licensee"),
        ("char[33]", "license_id"),
        ("int64_t", "issued"),
        ("int64_t", "not_before"),
        ("int64_t", "expires"),
        ("int64_t", "max_seq_len"),
        ("uint64_t", "features"),
        ("char[256]", "source"),
        ("char[256]", "reason"),
        ("char[17]", "key_id"),
    )),
    ("lm_pool_config", (
        ("uint32_t", "struct_size"),
        ("int64_t", "num_slots"),
        ("int", "num_kv_heads"),
        ("int", "head_dim"),
        ("int", "head_dim_v"),
        ("lm_device", "device"),
        ("int", "cuda_device"),
        ("float *", "state"),
        ("float *", "normalizer"),
        ("int64_t", "state_stride"),
        ("int64_t", "normalizer_stride"),
        ("lm_feature_map", "feature_map"),
        ("int", "normalize"),
        ("float", "eps"),
        ("float", "scale"),
        ("const float *", "decay"),
        ("lm_precision", "precision"),
        ("int", "num_threads"),
        ("lm_attention", "attention"),
        ("int", "window"),
        ("int", "sinks"),
        ("int", "num_heads"),
        ("const float *", "window_gate"),
        ("float *", "window_keys"),
        ("float *", "window_values"),
        ("int32_t *", "window_pos"),
        ("int64_t", "window_keys_stride"),
        ("int64_t", "window_values_stride"),
        ("int64_t", "window_pos_stride"),
        ("lm_gate_form", "window_gate_form"),
    )),
    ("lm_prefill_args", (
        ("uint32_t", "struct_size"),
        ("const lm_tensor *", "q"),
        ("const lm_tensor *", "k"),
        ("const lm_tensor *", "v"),
        ("lm_tensor *", "out"),
        ("int32_t", "num_seqs"),
        ("const int32_t *", "cu_seqlens"),
        ("const int32_t *", "slots"),
        ("const uint8_t *", "flags"),
        ("void *", "workspace"),
        ("size_t", "workspace_bytes"),
        ("lm_status *", "row_status"),
    )),
    ("lm_decode_args", (
        ("uint32_t", "struct_size"),
        ("const lm_tensor *", "q"),
        ("const lm_tensor *", "k"),
        ("const lm_tensor *", "v"),
        ("lm_tensor *", "out"),
        ("const int32_t *", "slots"),
        ("void *", "workspace"),
        ("size_t", "workspace_bytes"),
        ("int32_t *", "row_status"),
    )),
)

# (name, return type, (argument types...), required)
FUNCTIONS = (
    ("lm_status_string", "const char *", ("lm_status",), True),
    ("lm_last_error", "const char *", (), True),
    ("lm_version", "const char *", (), True),
    ("lm_version_number", "int", (), False),
    ("lm_dtype_size", "size_t", ("lm_dtype",), True),
    ("lm_core_args_init", "lm_status", ("lm_core_args *", "size_t"), True),
    ("lm_linear_attn_prefill", "lm_status", ("const lm_core_args *", "void *"), True),
    ("lm_linear_attn_decode", "lm_status", ("const lm_core_args *", "void *"), True),
    ("lm_linear_attn_backward", "lm_status",
     ("const lm_core_args *", "const lm_core_grads *", "void *"), False),
    ("lm_linear_attn_absorb", "lm_status", ("const lm_core_args *", "void *"), False),
    ("lm_license_set", "lm_status", ("const char *",), False),
    ("lm_license_info", "lm_status", ("lm_license_details *",), False),
    ("lm_license_reload", "lm_status", (), False),
    # the engine API (liquid_memory.engine); lm_pool_config_default is inline: not bound
    ("lm_pool_config_init", "lm_status",
     ("lm_pool_config *", "size_t", "int64_t", "int", "int"), False),
    ("lm_pool_create", "lm_status", ("const lm_pool_config *", "lm_pool **"), False),
    ("lm_pool_destroy", "void", ("lm_pool *",), False),
    ("lm_pool_prefill_workspace", "lm_status",
     ("const lm_pool *", "const lm_prefill_args *", "size_t *"), False),
    ("lm_pool_prefill", "lm_status", ("lm_pool *", "const lm_prefill_args *", "void *"), False),
    ("lm_pool_decode_workspace", "lm_status",
     ("const lm_pool *", "const lm_decode_args *", "size_t *"), False),
    ("lm_pool_decode", "lm_status", ("lm_pool *", "const lm_decode_args *", "void *"), False),
    ("lm_pool_slot_zero", "lm_status", ("lm_pool *", "int64_t", "void *"), False),
    ("lm_pool_slot_copy", "lm_status", ("lm_pool *", "int64_t", "int64_t", "void *"), False),
    ("lm_pool_slot_position", "lm_status", ("const lm_pool *", "int64_t", "int64_t *", "void *"),
     False),
    ("lm_pool_slot_blob_size", "lm_status", ("const lm_pool *", "size_t *"), False),
    ("lm_pool_slot_export", "lm_status",
     ("const lm_pool *", "int64_t", "void *", "size_t", "void *"), False),
    ("lm_pool_slot_import", "lm_status",
     ("lm_pool *", "int64_t", "const void *", "size_t", "void *"), False),
)

STRUCT_NAMES = tuple(name for name, _ in STRUCTS)
FIELD_TYPES = {name: dict((f, t) for t, f in fields) for name, fields in STRUCTS}


def parse_type(ctype):
    """'const lm_tensor *' -> ('lm_tensor', 1, None); 'char[129]' -> ('char', 0, 129)."""
    m = re.fullmatch(r"\s*(?:const\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(\**)\s*(?:\[(\d+)\])?\s*",
                     ctype)
    if not m:
        raise ValueError("cannot parse C type %r" % ctype)
    return m.group(1), len(m.group(2)), (int(m.group(3)) if m.group(3) else None)


def cdef_text():
    """The table as C declarations, for cffi's cdef."""
    lines = ["typedef int %s;" % e for e in ENUM_TYPES]
    lines += ["typedef struct %s %s;" % (o, o) for o in OPAQUE_TYPES]
    for name, fields in STRUCTS:
        body = []
        for ctype, fname in fields:
            base, stars, n = parse_type(ctype)
            const = "const " if ctype.strip().startswith("const") else ""
            body.append("    %s%s %s%s%s;" % (const, base, "*" * stars, fname,
                                             "[%d]" % n if n else ""))
        lines.append("typedef struct %s {\n%s\n} %s;" % (name, "\n".join(body), name))
    for fname, ret, args, _ in FUNCTIONS:
        lines.append("%s %s(%s);" % (ret, fname, ", ".join(args) or "void"))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class LibraryNotFoundError(ImportError):
    """libliquidmemory could not be loaded; the message names every path tried."""


class MissingSymbolError(NotImplementedError):
    """The loaded library lacks a function (an older or partial build)."""


# --------------------------------------------------------------------------
# Finding the library
# --------------------------------------------------------------------------

def candidate_paths(environ=None, package_dir=PACKAGE_DIR, system=True):
    """Where to look, in order: [(description, path-or-name)]."""
    environ = os.environ if environ is None else environ
    env = environ.get("LM_LIB_PATH")
    if env:
        path = os.path.join(env, LIB_NAME) if os.path.isdir(env) else env
        return [("LM_LIB_PATH", path)]
    out = [("package folder", os.path.join(package_dir, LIB_NAME))]
    if system:
        found = ctypes.util.find_library("liquidmemory")
        if found:
            out.append(("system (find_library)", found))
        out.append(("system (dlopen)", LIB_NAME))
    return out


def locate(environ=None, package_dir=PACKAGE_DIR, system=True):
    """Returns (path, ctypes.CDLL) of the first library that opens, or raises
    LibraryNotFoundError listing every path tried and why it failed."""
    tried = []
    for what, path in candidate_paths(environ, package_dir, system):
        is_file = os.sep in path
        if is_file and not os.path.exists(path):
            tried.append("  %s: %s (no such file)" % (what, path))
            continue
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            tried.append("  %s: %s (%s)" % (what, path, e))
            continue
        try:
            handle.lm_version
        except AttributeError:
            tried.append("  %s: %s (opens, but is not Liquid Memory: no lm_version)" % (what, path))
            continue
        return path, handle
    environ = os.environ if environ is None else environ
    hint = ("LM_LIB_PATH is set, so nothing else was tried; fix or unset it."
            if environ.get("LM_LIB_PATH") else
            "Build it with `make` (build/lib/libliquidmemory.so), then set LM_LIB_PATH to it, "
            "or run `make python` to copy it into the package, or `make install`.")
    raise LibraryNotFoundError("liquid_memory: cannot load %s. Tried:\n%s\n%s"
                               % (LIB_NAME, "\n".join(tried), hint))


# --------------------------------------------------------------------------
# The two bindings, one interface
# --------------------------------------------------------------------------

class _Binding:
    """What the rest of the package uses:
    new(struct) -> struct object with attribute access;
    ref(obj) -> pointer to it, for a pointer field or argument;
    set_ptr(obj, struct, field, address) -> store an integer address;
    ptr_slot(obj, struct, field) -> s, where `s[0] = address` stores an integer
        address into that pointer field (the cheap way for fields written per call);
    stream(address) -> the `void *` argument for a CUDA stream handle (0: none);
    call(name, *args); fn(name) -> the function itself; has(name); string(c_char_result);
    out(ctype) -> (argument, read) for an out-parameter of one `ctype`."""
    kind = None

    def __init__(self, path):
        self.path = path
        self._fns = {}
        self._lock = threading.Lock()
        self.plans = threading.local()  # _core's call plans, per thread, for this binding

    def has(self, name):
        try:
            self._fn(name)
            return True
        except MissingSymbolError:
            return False

    def call(self, name, *args):
        return self._fn(name)(*args)

    def fn(self, name):
        """The bound function (raises MissingSymbolError when absent)."""
        return self._fn(name)

    def _fn(self, name):
        fn = self._fns.get(name)
        if fn is None:
            with self._lock:
                fn = self._fns.get(name) or self._resolve(name)
                self._fns[name] = fn
        return fn

    def _missing(self, name):
        return MissingSymbolError("%s is not in %s (a build of Liquid Memory without it)"
                                  % (name, self.path))

    def last_error(self):
        return self.string(self.call("lm_last_error"))

    def version(self):
        return self.string(self.call("lm_version"))

    def status_string(self, status):
        return self.string(self.call("lm_status_string", status))


class CffiBinding(_Binding):
    kind = "cffi"

    def __init__(self, path):
        super().__init__(path)
        import cffi
        self.ffi = cffi.FFI()
        self.ffi.cdef(cdef_text())
        self.lib = self.ffi.dlopen(path)
        self.null = self.ffi.NULL
        self._streams = {0: self.ffi.NULL}  # stream handles as cdata, made once each

    def _resolve(self, name):
        try:
            return getattr(self.lib, name)
        except (AttributeError, NotImplementedError):
            raise self._missing(name) from None

    def new(self, struct):
        """A zeroed struct; a sized one (the header's ABI rule) gets its struct_size."""
        obj = self.ffi.new(struct + " *")
        if "struct_size" in FIELD_TYPES[struct]:
            obj.struct_size = self.ffi.sizeof(struct)
        return obj

    def ref(self, obj):
        return obj

    def set_ptr(self, obj, struct, field, address):
        setattr(obj, field, self.ffi.cast(FIELD_TYPES[struct][field], address)
                if address else self.ffi.NULL)

    def voidp(self, address):
        return self.ffi.cast("void *", address or 0)

    def ptr_slot(self, obj, struct, field):
        return self.ffi.cast("uintptr_t *", self.ffi.addressof(obj[0], field))

    def stream(self, address):
        s = self._streams.get(address)
        if s is None:
            if len(self._streams) > 64:  # a program that makes streams in a loop
                self._streams = {0: self.ffi.NULL}
            s = self._streams[address] = self.ffi.cast("void *", address)
        return s

    def cstr(self, text):
        return self.ffi.new("char[]", text.encode())

    def string(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
        return self.ffi.string(value).decode(errors="replace") if value != self.ffi.NULL else ""

    def sizeof(self, struct):
        return self.ffi.sizeof(struct)

    def offsetof(self, struct, field):
        return self.ffi.offsetof(struct, field)

    def out(self, ctype):
        """(argument, read): a pointer to one `ctype` for an out-parameter, and
        a function giving the value the call stored there."""
        p = self.ffi.new(ctype + " *")
        return p, lambda: p[0]


_CT_BASE = {
    "int": ctypes.c_int, "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64,
    "uint32_t": ctypes.c_uint32, "int32_t": ctypes.c_int32,
    "float": ctypes.c_float, "size_t": ctypes.c_size_t, "char": ctypes.c_char,
}
_CT_STRUCTS = {}


def _ct_type(ctype):
    base, stars, n = parse_type(ctype)
    if base in ENUM_TYPES:
        base = "int"
    if stars:
        if stars == 1 and base in _CT_STRUCTS:
            return ctypes.POINTER(_CT_STRUCTS[base])
        if stars == 1 and base == "char":
            return ctypes.c_char_p
        return ctypes.c_void_p  # data pointers: set from integer addresses
    if base == "void":
        return None
    t = _CT_STRUCTS.get(base) or _CT_BASE[base]
    return t * n if n else t


def _ct_build_structs():
    if _CT_STRUCTS:
        return
    for name, fields in STRUCTS:
        cls = type(name, (ctypes.Structure,), {})
        _CT_STRUCTS[name] = cls
        cls._fields_ = [(f, _ct_type(t)) for t, f in fields]


class CtypesBinding(_Binding):
    kind = "ctypes"

    def __init__(self, path, handle=None):
        super().__init__(path)
        _ct_build_structs()
        self.lib = handle if handle is not None else ctypes.CDLL(path)
        self.null = None
        self._decl = {f[0]: f for f in FUNCTIONS}

    def _resolve(self, name):
        try:
            fn = getattr(self.lib, name)
        except AttributeError:
            raise self._missing(name) from None
        _, ret, args, _ = self._decl[name]
        fn.restype = _ct_type(ret)
        fn.argtypes = [_ct_type(a) for a in args]
        return fn

    def new(self, struct):
        """A zeroed struct; a sized one (the header's ABI rule) gets its struct_size."""
        obj = _CT_STRUCTS[struct]()
        if "struct_size" in FIELD_TYPES[struct]:
            obj.struct_size = ctypes.sizeof(obj)
        return obj

    def ref(self, obj):
        return ctypes.pointer(obj)

    def set_ptr(self, obj, struct, field, address):
        setattr(obj, field, address or None)

    def voidp(self, address):
        return address or None

    def ptr_slot(self, obj, struct, field):
        addr = ctypes.addressof(obj) + getattr(_CT_STRUCTS[struct], field).offset
        return ctypes.cast(addr, ctypes.POINTER(ctypes.c_size_t))

    def stream(self, address):
        return address or None

    def cstr(self, text):
        return text.encode()

    def string(self, value):
        if value is None:
            return ""
        return bytes(value).split(b"\0", 1)[0].decode(errors="replace")

    def sizeof(self, struct):
        return ctypes.sizeof(_CT_STRUCTS[struct])

    def offsetof(self, struct, field):
        return getattr(_CT_STRUCTS[struct], field).offset

    def out(self, ctype):
        """(argument, read): as CffiBinding.out (a pointer comes back as an int)."""
        v = _ct_type(ctype)()
        return ctypes.byref(v), lambda: v.value


# --------------------------------------------------------------------------
# The process-wide binding
# --------------------------------------------------------------------------

_binding = None
_binding_lock = threading.Lock()


def cffi_available():
    try:
        import cffi  # noqa: F401
        return True
    except ImportError:
        return False


def open_library(kind=None, environ=None, package_dir=PACKAGE_DIR, system=True):
    """Locates the library and binds it with `kind` ('cffi', 'ctypes' or None
    for LM_PY_FFI, else cffi when importable). A new binding each call."""
    environ = os.environ if environ is None else environ
    kind = kind or environ.get("LM_PY_FFI") or ("cffi" if cffi_available() else "ctypes")
    if kind not in ("cffi", "ctypes"):
        raise ValueError("LM_PY_FFI must be 'cffi' or 'ctypes', not %r" % kind)
    path, handle = locate(environ, package_dir, system)
    if kind == "cffi":
        if not cffi_available():
            raise ImportError("LM_PY_FFI=cffi, but cffi is not importable (install python3-cffi)")
        return CffiBinding(path)
    return CtypesBinding(path, handle)


def binding():
    """The process-wide binding, opened on first use."""
    global _binding
    if _binding is None:
        with _binding_lock:
            if _binding is None:
                _binding = open_library()
    return _binding
