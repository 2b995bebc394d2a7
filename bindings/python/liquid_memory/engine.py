"""
engine.py - the engine API of libliquidmemory (lm_pool_*, README_INTEGRATION.md
"Engine integration") for Python inference servers with continuous batching.

StatePool holds the recurrent states of N slots of ONE layer: fp32 S
[N, Hkv, Dk, Dv] and z [N, Hkv, Dk] torch tensors it allocates and hands to
the C pool (which borrows them: caller-owned memory), while the library keeps
every slot's position (tokens absorbed). A sequence holds one slot per layer
for its life:

    pool = StatePool(num_slots=64, num_kv_heads=8, head_dim=64, device="cuda")
    hyb = StatePool(64, 8, 64, device="cuda", attention="hybrid", window=64, sinks=4,
                    window_gate=gate)          # gate: num_heads logits (or None: all 0)
    out = pool.prefill(q, k, v, cu_seqlens=[0, 300, 420], slots=[5, 9], fresh=[1, 1])
    out, status = pool.decode(q1, k1, v1, slots)   # slots: int32 on the device, -1 = padding
    blob = pool.export_slot(5); pool.import_slot(7, blob); pool.copy(8, 5); pool.zero(9)

A hybrid pool (attention="hybrid", docs/DESIGN.md §9) also holds each slot's
window: keys [N, Hkv, s + W, Dk], values [N, Hkv, s + W, Dv] (fp32) and
positions [N, Hkv, s + W] (int32), in tensors it owns beside S and z (the
properties window_keys, window_values, window_pos); its window_gate (one
logit per query head, so num_heads = its length) is the layer's, copied, of
the form window_gate_form ("sigmoid", the default, or "exp": docs/DESIGN.md
§9.1).

q, k, v, out are packed [T, H, D] (prefill: sequence i is rows cu_seqlens[i]
.. cu_seqlens[i+1]-1) or [B, H, D] (decode: one token per row), BF16/F16/F32
on the pool's device. CUDA calls run on torch's current stream of the pool's
device. Because positions are the library's, a pool works under a context
cap (evaluation mode, or a license with max_seq_len) up to the cap, where the
core's carried states are refused (docs/DESIGN.md §6.1).
"""
import operator
import threading

import torch

from . import _core, _ffi
from . import hybrid as _hybrid
from ._core import C, InvalidArgumentError, StateError

# Per-row status values of decode (and of prefill with return_status=True).
STATUS_OK = C["LM_OK"]
STATUS_LICENSE = C["LM_ERR_LICENSE"]


def _invalid(what, message):
    return InvalidArgumentError("%s failed: LM_ERR_INVALID_ARG: %s" % (what, message),
                                C["LM_ERR_INVALID_ARG"], "LM_ERR_INVALID_ARG", message)


def _choice(table, value, name, what):
    try:
        return table[value]
    except (KeyError, TypeError):
        raise _invalid(what, "%s must be one of %s, not %r" % (name, sorted(table), value)) from None


def _host_int32(values, n, name, what):
    """values (a sequence or a CPU integer tensor) as a contiguous host int32
    tensor of n entries (n None: any length >= 1)."""
    if isinstance(values, torch.Tensor):
        if values.is_cuda or values.is_floating_point() or values.is_complex() or values.dim() != 1:
            raise _invalid(what, "%s must be a 1-D host integer tensor or a sequence, got %s %s on %s"
                           % (name, values.dtype, list(values.shape), values.device))
        t = values
    else:
        try:
            t = torch.tensor([operator.index(x) for x in values], dtype=torch.int64)
        except TypeError:
            raise _invalid(what, "%s must be a sequence of integers" % name) from None
    if n is not None and t.numel() != n:
        raise _invalid(what, "%s has %d entries, %d expected" % (name, t.numel(), n))
    if t.numel() and (int(t.min()) < -2 ** 31 or int(t.max()) >= 2 ** 31):
        raise _invalid(what, "%s holds a value outside int32" % name)
    return t.to(torch.int32).contiguous()


def _index(slot, name, what):
    try:
        s = operator.index(slot)
    except TypeError:
        raise _invalid(what, "%s must be an integer, not %r" % (name, slot)) from None
    if not -2 ** 63 <= s < 2 ** 63:
        raise _invalid(what, "%s %d is not a slot of the pool" % (name, s))
    return s


class StatePool:
    """N slots of recurrent state of one layer (lm_pool), in fp32 tensors
    this object owns. See the module's docstring; the C API's rules
    (include/liquid_memory.h, "Engine") apply: one thread at a time (a lock
    here enforces it), each slot at most once per call, a failed call
    changes nothing."""

    def __init__(self, num_slots, num_kv_heads, head_dim, head_dim_v=None, *, device="cpu",
                 feature_map="elu1", normalize=True, eps=1e-6, scale=None, decay=None,
                 precision="auto", num_threads=0, attention="linear",
                 window=C["LM_HYBRID_WINDOW_DEFAULT"], sinks=C["LM_HYBRID_SINKS_DEFAULT"],
                 window_gate=None, num_heads=None, window_gate_form="sigmoid"):
        what = "StatePool"
        self._pool = None
        lib = _ffi.binding()
        if not lib.has("lm_pool_create"):
            raise _ffi.MissingSymbolError("StatePool needs lm_pool_create, which %s does not have "
                                          "(a build of Liquid Memory without the engine API)"
                                          % lib.path)
        _core._license_notice()
        N, Hkv, Dk = (_index(x, n, what) for x, n in ((num_slots, "num_slots"),
                                                      (num_kv_heads, "num_kv_heads"),
                                                      (head_dim, "head_dim")))
        Dv = Dk if head_dim_v is None else _index(head_dim_v, "head_dim_v", what)
        if min(N, Hkv, Dk, Dv) < 1:
            raise _invalid(what, "num_slots, num_kv_heads, head_dim and head_dim_v must be >= 1, "
                           "not %d, %d, %d, %d" % (N, Hkv, Dk, Dv))
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.type not in ("cpu", "cuda"):
            raise _invalid(what, "device must be a CPU or CUDA device, not %s" % dev)
        cfg = lib.new("lm_pool_config")
        _core.check(lib.call("lm_pool_config_init", lib.ref(cfg), lib.sizeof("lm_pool_config"),
                             N, Hkv, Dk), "lm_pool_config_init")
        cfg.head_dim_v = Dv
        cfg.feature_map = _choice(_core.FEATURE_MAPS, feature_map, "feature_map", what)
        cfg.precision = _choice(_core.PRECISIONS, precision, "precision", what)
        cfg.normalize = 1 if normalize else 0
        cfg.eps = float(eps)
        cfg.scale = float(scale or 0.0)
        cfg.num_threads = int(num_threads)
        decay_buf = None
        if decay is not None:
            decay_buf = torch.as_tensor(decay, dtype=torch.float32).flatten().contiguous().cpu()
            if decay_buf.numel() != Hkv:
                raise _invalid(what, "decay has %d values, one per kv head (%d) expected"
                               % (decay_buf.numel(), Hkv))
            lib.set_ptr(cfg, "lm_pool_config", "decay", decay_buf.data_ptr())  # copied by create
        # The slots' memory, borrowed by the C pool for its life (zeroed by lm_pool_create).
        self._S = torch.empty((N, Hkv, Dk, Dv), dtype=torch.float32, device=dev)
        self._z = torch.empty((N, Hkv, Dk), dtype=torch.float32, device=dev)
        cfg.device = _core._device_code(self._S)
        cfg.cuda_device = dev.index if dev.type == "cuda" else -1
        lib.set_ptr(cfg, "lm_pool_config", "state", self._S.data_ptr())
        lib.set_ptr(cfg, "lm_pool_config", "normalizer", self._z.data_ptr())
        self.attention = attention
        self._window = self._hybrid(lib, cfg, attention, window, sinks, window_gate, num_heads,
                                    window_gate_form, (N, Hkv, Dk, Dv), dev, what)
        self.window_gate_form = window_gate_form if self._window is not None else None
        handle, read = lib.out("lm_pool *")
        _core.check(lib.call("lm_pool_create", lib.ref(cfg), handle), "lm_pool_create")
        self._lib, self._pool, self._lock = lib, read(), threading.Lock()
        self._index = dev.index if dev.type == "cuda" else -1
        self.device, self.num_slots, self.num_kv_heads = dev, N, Hkv
        self.head_dim, self.head_dim_v = Dk, Dv
        self._sinks = int(cfg.sinks) if self._window is not None else None

    @staticmethod
    def _hybrid(lib, cfg, attention, window, sinks, window_gate, num_heads, form, shape, dev,
                what):
        """The hybrid fields of cfg and the window's tensors (keys, values,
        positions), or None for a linear pool (the library checks W, s and
        the gate's values)."""
        cfg.attention = _choice({"linear": C["LM_ATTENTION_LINEAR"], "hybrid": C["LM_ATTENTION_HYBRID"]},
                                attention, "attention", what)
        if attention == "linear":
            if window_gate is not None or num_heads is not None or form != "sigmoid":
                raise _invalid(what, "window_gate, num_heads and window_gate_form are for "
                               "attention=\"hybrid\"")
            return None
        cfg.window_gate_form = _choice(_hybrid.GATE_FORMS, form, "window_gate_form", what)
        N, Hkv, Dk, Dv = shape
        W, s = _index(window, "window", what), _index(sinks, "sinks", what)
        cfg.window, cfg.sinks = W, s
        gate = None
        if window_gate is not None:
            gate = torch.as_tensor(window_gate, dtype=torch.float32).detach().flatten().contiguous().cpu()
            if num_heads is not None and gate.numel() != _index(num_heads, "num_heads", what):
                raise _invalid(what, "window_gate has %d logits, num_heads is %d"
                               % (gate.numel(), num_heads))
            num_heads = gate.numel()
            lib.set_ptr(cfg, "lm_pool_config", "window_gate", gate.data_ptr())  # copied by create
        cfg.num_heads = 0 if num_heads is None else _index(num_heads, "num_heads", what)
        n = max(W + s, 1)  # the library refuses a bad W or s
        win = (torch.empty((N, Hkv, n, Dk), dtype=torch.float32, device=dev),
               torch.empty((N, Hkv, n, Dv), dtype=torch.float32, device=dev),
               torch.empty((N, Hkv, n), dtype=torch.int32, device=dev), gate)
        for field, t in zip(("window_keys", "window_values", "window_pos"), win):
            lib.set_ptr(cfg, "lm_pool_config", field, t.data_ptr())
        return win

    # ---- life ----

    def close(self):
        """Frees the C pool (CUDA: after the current stream's queued work);
        the state tensors stay readable. Later calls raise StateError."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is None:
            return
        if self._index >= 0:
            torch.cuda.current_stream(self._index).synchronize()
        self._lib.call("lm_pool_destroy", pool)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def __repr__(self):
        hybrid = "" if self._window is None else \
            ", attention=\"hybrid\", window=%d, sinks=%d, window_gate_form=\"%s\"" % (
                self.window, self.sinks, self.window_gate_form)
        return "StatePool(num_slots=%d, num_kv_heads=%d, head_dim=%d, head_dim_v=%d, device=%s%s%s)" % (
            self.num_slots, self.num_kv_heads, self.head_dim, self.head_dim_v, self.device, hybrid,
            "" if self._pool is not None else ", closed")

    @property
    def window(self):
        """W of a hybrid pool (None for a linear one)."""
        return None if self._window is None else self._window[0].shape[2] - self.sinks

    @property
    def sinks(self):
        """s of a hybrid pool (None for a linear one)."""
        return None if self._window is None else self._sinks

    def _window_part(self, i):
        if self._window is None:
            raise _invalid("StatePool", "a linear pool has no window (attention=\"hybrid\" has)")
        return self._window[i]

    @property
    def window_keys(self):
        """A hybrid pool's window keys [N, Hkv, s + W, Dk] fp32, as `state`."""
        return self._window_part(0)

    @property
    def window_values(self):
        """A hybrid pool's window values [N, Hkv, s + W, Dv] fp32, as `state`."""
        return self._window_part(1)

    @property
    def window_pos(self):
        """A hybrid pool's window positions [N, Hkv, s + W] int32 (p + 1 for the
        token at position p, 0 empty), as `state`."""
        return self._window_part(2)

    @property
    def state(self):
        """S [N, Hkv, Dk, Dv] fp32: the slots' memory itself. Read it; writing
        it bypasses the library's positions (use zero/copy/import_slot)."""
        return self._S

    @property
    def normalizer(self):
        """z [N, Hkv, Dk] fp32, as `state`."""
        return self._z

    def _handle(self, what):
        if self._pool is None:
            raise StateError("%s failed: LM_ERR_STATE: the pool is closed" % what,
                             C["LM_ERR_STATE"], "LM_ERR_STATE", "the pool is closed")
        return self._pool

    def _call(self, name, *args):
        """Calls lm_pool_<name>(pool, *args, stream) on the pool's device and
        stream, under the lock, raising the status's exception."""
        lib = self._lib
        with self._lock:
            pool = self._handle(name)
            fn = lib.fn(name)
            st = _core.launch_on(lib, lambda _, stream: fn(pool, *args, stream), None, self._index)
        _core.check(st, name)

    def _tensors(self, what, **named):
        """Checks q, k, v are tensors on the pool's device (the library checks
        shapes, dtypes and strides) and returns their descriptors."""
        for name, t in named.items():
            if not isinstance(t, torch.Tensor):
                raise _invalid(what, "%s must be a torch tensor, not %s" % (name, type(t).__name__))
            if t.device != self.device:
                raise _invalid(what, "%s is on %s, the pool on %s" % (name, t.device, self.device))
            if t.dim() != 3:
                raise _invalid(what, "%s must be [rows, heads, head_dim], got %s"
                               % (name, list(t.shape)))

    def _io_args(self, struct, q, k, v, out, keep):
        lib = self._lib
        a = lib.new(struct)
        for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
            d = _core.tensor_desc(lib, t)
            keep.append(d)
            setattr(a, name, lib.ref(d))
        return a

    # ---- prefill and decode ----

    def prefill(self, q, k, v, cu_seqlens, slots, fresh=None, *, return_status=False):
        """Causal attention over packed sequences (lm_pool_prefill): q [T, Hq,
        Dk], k [T, Hkv, Dk], v [T, Hkv, Dv]; sequence i is rows cu_seqlens[i] ..
        cu_seqlens[i+1]-1 (host ints, N + 1 of them, 0 .. T), continuing slot
        slots[i] (-1: no slot, starts empty, its state dropped), or starting it
        afresh where fresh[i] is true (length 0 + fresh empties the slot).
        Returns out [T, Hq, Dv] in q's dtype. A sequence past the license's
        context cap raises LicenseError with nothing changed; with
        return_status=True the other sequences run and (out, status) comes
        back, status a host int32 tensor of N values (STATUS_OK or
        STATUS_LICENSE; a refused sequence's rows of out are not written)."""
        what = "lm_pool_prefill"
        self._tensors(what, q=q, k=k, v=v)
        cu = _host_int32(cu_seqlens, None, "cu_seqlens", what)
        n = cu.numel() - 1
        if n < 1:
            raise _invalid(what, "cu_seqlens needs N + 1 >= 2 entries, got %d" % cu.numel())
        sl = _host_int32(slots, n, "slots", what)
        flags = None
        if fresh is not None:
            f = fresh.tolist() if isinstance(fresh, torch.Tensor) else list(fresh)
            if len(f) != n:
                raise _invalid(what, "fresh has %d entries, one per sequence (%d) expected"
                               % (len(f), n))
            flags = torch.tensor([C["LM_SEQ_FRESH"] if x else 0 for x in f], dtype=torch.uint8)
        T, Hq, Dv = q.shape[0], q.shape[1], v.shape[2]
        out = _core._new((T, Hq, Dv), q.dtype, q.device)
        lib, keep = self._lib, []
        a = self._io_args("lm_prefill_args", q, k, v, out, keep)
        a.num_seqs = n
        lib.set_ptr(a, "lm_prefill_args", "cu_seqlens", cu.data_ptr())
        lib.set_ptr(a, "lm_prefill_args", "slots", sl.data_ptr())
        if flags is not None:
            lib.set_ptr(a, "lm_prefill_args", "flags", flags.data_ptr())
        status = None
        if return_status:
            status = torch.empty(n, dtype=torch.int32)
            lib.set_ptr(a, "lm_prefill_args", "row_status", status.data_ptr())
        self._call(what, lib.ref(a))
        return (out, status) if return_status else out

    def decode(self, q, k, v, slots):
        """One decode step per row (lm_pool_decode): q [B, Hq, Dk], k [B, Hkv,
        Dk], v [B, Hkv, Dv], one token each; row b continues slot slots[b]
        (an int32 tensor of B on the pool's device; a list is copied there;
        -1 = padding). Returns (out [B, Hq, Dv] in q's dtype, status int32 [B]
        on the pool's device): STATUS_OK, or STATUS_LICENSE for a row whose
        slot is at the license's context cap (it is skipped: slot, position
        and output row unchanged). Padding and skipped rows of out are 0.
        On CUDA nothing synchronises and the slot indices are read on the
        device (a bad index there is a skipped row, as the C API says)."""
        what = "lm_pool_decode"
        self._tensors(what, q=q, k=k, v=v)
        B = q.shape[0]
        if not isinstance(slots, torch.Tensor):
            slots = _host_int32(slots, B, "slots", what).to(self.device)
        elif slots.dtype != torch.int32 or slots.device != self.device or slots.dim() != 1 or \
                slots.numel() != B:
            raise _invalid(what, "slots must be an int32 tensor of %d (the rows of q) on %s, got "
                           "%s %s on %s" % (B, self.device, slots.dtype, list(slots.shape),
                                            slots.device))
        slots = slots.contiguous()
        out = torch.zeros((B, q.shape[1], v.shape[2]), dtype=q.dtype, device=q.device)
        status = torch.zeros(B, dtype=torch.int32, device=self.device)  # LM_OK unless marked
        lib, keep = self._lib, []
        a = self._io_args("lm_decode_args", q, k, v, out, keep)
        lib.set_ptr(a, "lm_decode_args", "slots", slots.data_ptr())
        lib.set_ptr(a, "lm_decode_args", "row_status", status.data_ptr())
        self._call(what, lib.ref(a))
        return out, status

    # ---- slots ----

    def zero(self, slot):
        """Empties a slot (state and position 0)."""
        self._call("lm_pool_slot_zero", _index(slot, "slot", "lm_pool_slot_zero"))

    def copy(self, dst, src):
        """Slot dst becomes a copy of slot src, state and position (fork, prefix reuse)."""
        what = "lm_pool_slot_copy"
        self._call(what, _index(dst, "dst", what), _index(src, "src", what))

    def position(self, slot):
        """Tokens absorbed in a slot (CUDA: waits for the current stream)."""
        what = "lm_pool_slot_position"
        arg, read = self._lib.out("int64_t")
        self._call(what, _index(slot, "slot", what), arg)
        return int(read())

    @property
    def blob_size(self):
        """Bytes of a slot's blob (export_slot / import_slot)."""
        arg, read = self._lib.out("size_t")
        with self._lock:
            st = self._lib.call("lm_pool_slot_blob_size", self._handle("lm_pool_slot_blob_size"), arg)
        _core.check(st, "lm_pool_slot_blob_size")
        return int(read())

    def export_slot(self, slot):
        """A slot as a versioned blob (bytes): position, fp32 S and z (a hybrid
        pool's: and its window, format 2), and a tag of this process.
        import_slot of any pool with the same Hkv, Dk, Dv (hybrid: and W, s)
        on any device reads it; under a context cap only this process's
        unaltered blobs are taken."""
        what = "lm_pool_slot_export"
        slot = _index(slot, "slot", what)
        buf = torch.empty(self.blob_size, dtype=torch.uint8)
        self._call(what, slot, self._lib.voidp(buf.data_ptr()), buf.numel())
        return bytes(buf.numpy())

    def import_slot(self, slot, blob):
        """Replaces a slot with a blob of export_slot (checked whole first: a
        bad blob raises and changes nothing)."""
        what = "lm_pool_slot_import"
        slot = _index(slot, "slot", what)
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if len(blob) else \
            torch.empty(0, dtype=torch.uint8)
        self._call(what, slot, self._lib.voidp(data.data_ptr()), data.numel())
