#!/usr/bin/env python3
"""gpu_bench.py - Liquid Memory on the GPU against its peers, in one run.

Sweeps 2K ... 1M tokens at B = 1, E = 4096, 32 heads of 128, bf16, causal,
elu+1 normalised (ANCHORS.md): module prefill (ms, extra device memory), core
prefill (ms; ours and fla's also unnormalised), decode step (us, core and module,
replayed from a CUDA graph), and the error against float64 at 8K / 128K / 1M. Peers in the same run:
PyTorch SDPA with the cuDNN and flash backends, and flash-linear-attention
(peers/fla, imported only when present). Our library is loaded with ctypes.

Timing: CUDA events, warm-up first, median of repeats; inputs rotate over
several buffers when they would fit in L2. Writes one JSON (date, commit, GPU,
versions, every record) to --out.

    python3 bench/gpu_bench.py --lib build/device/lib/libliquidmemory.so --out results.json
"""
import argparse
import ctypes as C
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python"))
from liquid_memory._peers import fla_commit, fla_fits, load_fla  # noqa: E402 - the loader both benches share

LM_BF16, LM_CUDA = 0, 1
E, H, D = 4096, 32, 128

# ---- the C API through ctypes (include/liquid_memory.h) ----


class Tensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("dtype", C.c_int), ("device", C.c_int), ("ndim", C.c_int),
                ("shape", C.c_int64 * 4), ("stride", C.c_int64 * 4)]


class CoreArgs(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("q", C.POINTER(Tensor)), ("k", C.POINTER(Tensor)), ("v", C.POINTER(Tensor)),
                ("out", C.POINTER(Tensor)), ("key_padding_mask", C.POINTER(Tensor)),
                ("state", C.c_void_p), ("normalizer", C.c_void_p), ("position", C.c_int64),
                ("is_causal", C.c_int), ("feature_map", C.c_int), ("normalize", C.c_int),
                ("eps", C.c_float), ("scale", C.c_float), ("decay", C.c_void_p), ("precision", C.c_int)]


class Config(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("embed_dim", C.c_int), ("num_heads", C.c_int), ("num_kv_heads", C.c_int),
                ("head_dim", C.c_int), ("kdim", C.c_int), ("vdim", C.c_int), ("feature_map", C.c_int),
                ("normalize", C.c_int), ("eps", C.c_float), ("scale", C.c_float), ("decay", C.c_void_p),
                ("precision", C.c_int), ("dtype", C.c_int), ("device", C.c_int), ("cuda_device", C.c_int),
                ("max_batch", C.c_int)]


class Weights(C.Structure):
    _fields_ = [("struct_size", C.c_uint32)] + [(n, C.c_void_p) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                                          "in_proj_bias", "out_proj_weight", "out_proj_bias")]


class Opts(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("is_causal", C.c_int), ("key_padding_mask", C.POINTER(Tensor)), ("use_state", C.c_int),
                ("keep_state", C.c_int)]


class Lib:
    def __init__(self, path):
        self.so = C.CDLL(path)
        self.so.lm_last_error.restype = C.c_char_p
        self.so.lm_version.restype = C.c_char_p

    def check(self, st, what):
        if st != 0:
            raise RuntimeError(f"{what}: status {st}: {self.so.lm_last_error().decode()}")

    @staticmethod
    def tensor(t):
        x = Tensor(C.c_void_p(t.data_ptr()), LM_BF16, LM_CUDA, t.dim())
        for i in range(t.dim()):
            x.shape[i], x.stride[i] = t.shape[i], t.stride(i)
        return x


def stream_ptr():
    return C.c_void_p(torch.cuda.current_stream().cuda_stream)


# ---- timing ----

def time_ms(fn, reps, warm=2):
    """Median of `reps` event-timed calls of fn(i) (i picks a rotating input)."""
    for i in range(warm):
        fn(i)
    torch.cuda.synchronize()
    out = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def graph_us(fn, replays=2000):
    """Per-call time of fn captured once in a CUDA graph, replayed many times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(replays):
        g.replay()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1000.0 / replays


def peak_extra(fn):
    """Extra device memory of fn: torch's peak over its allocated bytes, plus what
    the device lost outside torch's allocator (our library allocates directly)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before_alloc = torch.cuda.memory_allocated()
    free_before = torch.cuda.mem_get_info()[0]
    reserved_before = torch.cuda.memory_reserved()
    fn()
    torch.cuda.synchronize()
    torch_peak = torch.cuda.max_memory_allocated() - before_alloc
    outside = (free_before - torch.cuda.mem_get_info()[0]) - (torch.cuda.memory_reserved() - reserved_before)
    return (torch_peak + max(outside, 0)) / 1e9


# ---- peers ----

def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    b = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def run(q, k, v):  # [B, H, L, D]
        with sdpa_kernel(b):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def phi(x):
    return F.elu(x) + 1


# ---- float64 reference (causal, normalised elu+1), blocked over the sequence ----

def reference_blocks(q, k, v, block=1024):
    """q, k, v [1, L, h, D] (any float dtype) -> (t0, float64 out [n, h, D]) per block of tokens."""
    _, L, h, d = q.shape
    S = torch.zeros(h, d, d, dtype=torch.float64, device=q.device)
    z = torch.zeros(h, d, dtype=torch.float64, device=q.device)
    for t0 in range(0, L, block):
        fq = phi(q[0, t0:t0 + block].double()).transpose(0, 1)  # [h, n, D]
        fk = phi(k[0, t0:t0 + block].double()).transpose(0, 1)
        vv = v[0, t0:t0 + block].double().transpose(0, 1)
        A = torch.tril(fq @ fk.transpose(1, 2))
        num = fq @ S + A @ vv
        den = (fq * z[:, None, :]).sum(-1, keepdim=True) + A.sum(-1, keepdim=True)
        yield t0, (num / (den + 1e-6)).transpose(0, 1)
        S += fk.transpose(1, 2) @ vv
        z += fk.sum(1)


def reference64(q, k, v, block=1024):
    """q, k, v [1, L, h, D] (any float dtype) -> float64 out [1, L, h, D]."""
    out = torch.empty(*q.shape[:3], v.shape[3], dtype=torch.float64, device=q.device)
    for t0, o in reference_blocks(q, k, v, block):
        out[0, t0:t0 + o.shape[0]] = o
    return out


def error_streamed(q, k, v, o, block=512):
    """(rel, floor) of o against float64 block by block: no float64 copy of the whole output
    (1M tokens x 32 heads would take 34 GB)."""
    err = ref2 = flo = 0.0
    for t0, r in reference_blocks(q, k, v, block):
        got = o[0, t0:t0 + r.shape[0]].double()
        err += (got - r).pow(2).sum().item()
        flo += (r.to(o.dtype).double() - r).pow(2).sum().item()
        ref2 += r.pow(2).sum().item()
    return math.sqrt(err / ref2), math.sqrt(flo / ref2)


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


# ---- our library ----

class Ours:
    def __init__(self, lib):
        self.lib = lib
        self._keep = []

    def core(self, q, k, v, o, state=None, causal=1, normalize=1):
        tq, tk, tv, to = (Lib.tensor(t) for t in (q, k, v, o))
        a = CoreArgs()
        self.lib.check(self.lib.so.lm_core_args_init(C.byref(a), C.sizeof(a)), "core_args_init")
        a.q, a.k, a.v, a.out = C.pointer(tq), C.pointer(tk), C.pointer(tv), C.pointer(to)
        a.is_causal, a.normalize = causal, normalize
        if state is not None:
            a.state, a.normalizer = state[0].data_ptr(), state[1].data_ptr()
        self._keep.append((tq, tk, tv, to))  # the structs a points into stay alive
        return a

    def prefill(self, a):
        self.lib.check(self.lib.so.lm_linear_attn_prefill(C.byref(a), stream_ptr()), "prefill")

    def decode(self, a):
        self.lib.check(self.lib.so.lm_linear_attn_decode(C.byref(a), stream_ptr()), "decode")

    def module(self, w_in, b_in, w_out, b_out):
        cfg = Config()
        self.lib.check(self.lib.so.lm_attn_config_init(C.byref(cfg), C.sizeof(cfg), E, H), "config")
        cfg.dtype, cfg.device, cfg.cuda_device = LM_BF16, LM_CUDA, torch.cuda.current_device()
        h = C.c_void_p()
        self.lib.check(self.lib.so.lm_attn_create(C.byref(cfg), C.byref(h)), "create")
        w = Weights(struct_size=C.sizeof(Weights), in_proj_weight=w_in.data_ptr(), in_proj_bias=b_in.data_ptr(),
                    out_proj_weight=w_out.data_ptr(), out_proj_bias=b_out.data_ptr())
        self.lib.check(self.lib.so.lm_attn_set_weights(h, C.byref(w)), "set_weights")
        return h

    def forward(self, h, x, y, keep=0):
        tx, ty = Lib.tensor(x), Lib.tensor(y)
        o = Opts(struct_size=C.sizeof(Opts), is_causal=1, keep_state=keep)
        self.lib.check(self.lib.so.lm_attn_forward(h, C.byref(tx), C.byref(tx), C.byref(tx), C.byref(o),
                                                   C.byref(ty), stream_ptr()), "forward")

    def step(self, h, x, y):
        tx, ty = Lib.tensor(x), Lib.tensor(y)
        self.lib.check(self.lib.so.lm_attn_step(h, C.byref(tx), C.byref(ty), stream_ptr()), "step")


def decode_args(ours, dev):
    """The core decode step's arguments (B 1, H heads of D, bf16, a state of zeros and a
    normaliser of ones) and the tensors they point into (keep them alive)."""
    q1, k1, v1 = (torch.randn(1, 1, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    o1 = torch.empty_like(q1)
    S, z = torch.zeros(1, H, D, D, device=dev), torch.ones(1, H, D, device=dev)
    return ours.core(q1, k1, v1, o1, state=(S, z)), (q1, k1, v1, o1, S, z)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--peers", default=os.path.join(os.path.dirname(__file__), "..", "peers"))
    ap.add_argument("--lengths", default="2048,8192,32768,131072,524288,1048576")
    ap.add_argument("--commit", default=os.environ.get("LM_COMMIT", "unknown"))
    ap.add_argument("--profile", type=int, default=0, help="only run one core prefill of this length (for ncu)")
    ap.add_argument("--profile-decode", type=int, default=0,
                    help="only run this many core decode steps (B 1, the benchmark's heads; for ncu)")
    ap.add_argument("--core-only", action="store_true",
                    help="only the core prefill at --lengths, each followed by its error against float64 "
                         "on the timed shape (32 heads: the segments the timing ran)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    lib = Lib(args.lib)
    ours = Ours(lib)
    if args.profile:
        q, k, v = (torch.randn(1, args.profile, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        o = torch.empty_like(q)
        ours.prefill(ours.core(q, k, v, o))
        torch.cuda.synchronize()
        return
    if args.profile_decode:
        a, held = decode_args(ours, dev)
        for _ in range(args.profile_decode):
            ours.decode(a)
        torch.cuda.synchronize()
        return
    if args.core_only:
        fla, fla_err = None, "not run (--core-only)"
    else:
        fla, fla_err = load_fla(os.path.abspath(args.peers))
    recs = []
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": args.commit, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "library": lib.so.lm_version().decode(), "fla": "imported" if fla else fla_err,
            "shape": {"B": 1, "E": E, "heads": H, "head_dim": D, "dtype": "bf16", "causal": True,
                      "feature_map": "elu+1", "normalize": True}}
    fla_rev = fla_commit(args.peers)
    if fla_rev:
        meta["fla_commit"] = fla_rev

    def emit(**r):
        recs.append(r)
        print(json.dumps(r), flush=True)
        with open(args.out, "w") as f:  # rewritten each time: a crash keeps what was measured
            json.dump({"meta": meta, "records": recs}, f, indent=1)

    def fla_ok(L, heads):
        return fla and fla_fits(L, heads, D)

    bf = torch.bfloat16
    sc = 1 / math.sqrt(E)
    w_in = (torch.randn(3 * E, E, device=dev) * sc).to(bf)
    b_in = (torch.randn(3 * E, device=dev) * 0.1).to(bf)
    w_out = (torch.randn(E, E, device=dev) * sc).to(bf)
    b_out = (torch.randn(E, device=dev) * 0.1).to(bf)

    if args.core_only:
        for L in [int(x) for x in args.lengths.split(",")]:
            reps, rot = (20 if L <= 32768 else 5 if L <= 131072 else 3), 4 if L <= 8192 else 1
            qs, ks, vs = ([torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16) for _ in range(rot)]
                          for _ in range(3))
            o = torch.full((1, L, H, D), float("nan"), device=dev, dtype=torch.bfloat16)
            argsets = [ours.core(qs[i], ks[i], vs[i], o) for i in range(rot)]
            emit(kind="core_prefill", impl="liquid_memory", L=L, ms=time_ms(lambda i: ours.prefill(argsets[i % rot]), reps))
            o.fill_(float("nan"))
            ours.prefill(argsets[0])
            torch.cuda.synchronize()
            e, floor = error_streamed(qs[0], ks[0], vs[0], o)
            emit(kind="error_vs_float64", L=L, heads=H, floor=floor, liquid_memory=e, ratios={"liquid_memory": e / floor})
            del qs, ks, vs, o, argsets
            torch.cuda.empty_cache()
        print(f"wrote {args.out}")
        return

    for L in [int(x) for x in args.lengths.split(",")]:
        reps = 20 if L <= 32768 else 5 if L <= 131072 else 3
        rot = 4 if L <= 8192 else 1
        # ---- core prefill ----
        qs = [torch.randn(1, L, H, D, device=dev, dtype=bf) for _ in range(rot)]
        ks = [torch.randn(1, L, H, D, device=dev, dtype=bf) for _ in range(rot)]
        vs = [torch.randn(1, L, H, D, device=dev, dtype=bf) for _ in range(rot)]
        o = torch.empty(1, L, H, D, device=dev, dtype=bf)
        argsets = [ours.core(qs[i], ks[i], vs[i], o) for i in range(rot)]
        t = time_ms(lambda i: ours.prefill(argsets[i % rot]), reps)
        emit(kind="core_prefill", impl="liquid_memory", L=L, ms=t)
        # normalize off (o = phi(q)S / sqrt(D)): the peer of fla's unnormalised core below
        unnorm = [ours.core(qs[i], ks[i], vs[i], o, normalize=0) for i in range(rot)]
        try:
            t = time_ms(lambda i: ours.prefill(unnorm[i % rot]), reps)
            emit(kind="core_prefill", impl="liquid_memory_unnormalised", L=L, ms=t)
        except RuntimeError as e:  # a status from the library: recorded, the run goes on
            emit(kind="core_prefill", impl="liquid_memory_unnormalised", L=L, error=str(e)[:200])
        if L <= 131072:
            for be in ("cudnn", "flash"):
                try:
                    run = sdpa(be)
                    qh = [x.transpose(1, 2).contiguous() for x in qs[:1]]
                    kh = [x.transpose(1, 2).contiguous() for x in ks[:1]]
                    vh = [x.transpose(1, 2).contiguous() for x in vs[:1]]
                    t = time_ms(lambda i: run(qh[0], kh[0], vh[0]), max(3, reps // 4))
                    emit(kind="core_prefill", impl=f"sdpa_{be}", L=L, ms=t)
                    del qh, kh, vh
                except Exception as e:
                    emit(kind="core_prefill", impl=f"sdpa_{be}", L=L, error=str(e)[:200])
        if fla_ok(L, H):
            for norm in (True, False):
                try:
                    t = time_ms(lambda i: fla[0](phi(qs[i % rot]), phi(ks[i % rot]), vs[i % rot],
                                                 normalize=norm), reps)
                    emit(kind="core_prefill", impl="fla_chunk" + ("" if norm else "_unnormalised"), L=L, ms=t)
                except Exception as e:
                    emit(kind="core_prefill", impl="fla_chunk" + ("" if norm else "_unnormalised"), L=L,
                         error=str(e)[:200])
        del qs, ks, vs, o, argsets, unnorm
        torch.cuda.empty_cache()

        # ---- module prefill ----
        xs = [torch.randn(1, L, E, device=dev, dtype=bf) for _ in range(rot)]
        y = torch.empty(1, L, E, device=dev, dtype=bf)
        h = [None]

        def ours_module():
            h[0] = ours.module(w_in, b_in, w_out, b_out)
            ours.forward(h[0], xs[0], y)
        try:
            extra = peak_extra(ours_module)
            t = time_ms(lambda i: ours.forward(h[0], xs[i % rot], y), reps)
            emit(kind="module_prefill", impl="liquid_memory", L=L, ms=t, extra_gb=extra)
        except Exception as e:
            emit(kind="module_prefill", impl="liquid_memory", L=L, error=str(e)[:300])
        if h[0]:
            lib.so.lm_attn_destroy(h[0])
        torch.cuda.empty_cache()

        def torch_module(attn):
            def run(i):
                x = xs[i % rot]
                q, k, v = F.linear(x, w_in, b_in).view(1, L, 3, H, D).permute(2, 0, 3, 1, 4)
                a = attn(q, k, v)
                return F.linear(a.transpose(1, 2).reshape(1, L, E), w_out, b_out)
            return run
        peers = []
        if L <= 131072:
            peers += [(f"sdpa_{be}", lambda q, k, v, r=sdpa(be): r(q, k, v)) for be in ("cudnn", "flash")]
        if fla_ok(L, H):
            def fla_attn(q, k, v):  # [1, H, L, D] -> fla's [1, L, H, D]
                o, _ = fla[0](phi(q.transpose(1, 2)), phi(k.transpose(1, 2)), v.transpose(1, 2), normalize=True)
                return o.transpose(1, 2)
            peers.append(("fla_chunk", fla_attn))
        for name, attn in peers:
            try:
                run = torch_module(attn)
                extra = peak_extra(lambda: run(0))
                t = time_ms(run, max(3, reps // 2))
                emit(kind="module_prefill", impl=name, L=L, ms=t, extra_gb=extra)
            except Exception as e:
                emit(kind="module_prefill", impl=name, L=L, error=str(e)[:200])
            torch.cuda.empty_cache()
        del xs, y
        torch.cuda.empty_cache()

    # ---- decode steps (graphs) ----
    a, held = decode_args(ours, dev)
    q1, k1, v1 = held[:3]  # fla's recurrent step below takes the same token
    emit(kind="decode_step", impl="liquid_memory_core", us=graph_us(lambda: ours.decode(a)))
    hdl = ours.module(w_in, b_in, w_out, b_out)
    x0 = torch.randn(1, 1024, E, device=dev, dtype=bf)
    y0 = torch.empty_like(x0)
    ours.forward(hdl, x0, y0, keep=1)
    x1, y1 = torch.randn(1, E, device=dev, dtype=bf), torch.empty(1, E, device=dev, dtype=bf)
    torch.cuda.synchronize()
    emit(kind="decode_step", impl="liquid_memory_module", us=graph_us(lambda: ours.step(hdl, x1, y1)))
    lib.so.lm_attn_destroy(hdl)
    for ctx in (1024, 8192, 131072):
        kc = torch.randn(1, H, ctx, D, device=dev, dtype=bf)
        vc = torch.randn(1, H, ctx, D, device=dev, dtype=bf)
        qd = torch.randn(1, H, 1, D, device=dev, dtype=bf)
        emit(kind="decode_step", impl="sdpa_kv_cache", context=ctx,
             us=graph_us(lambda: F.scaled_dot_product_attention(qd, kc, vc), replays=500))
        del kc, vc
    if fla:
        try:
            st = (torch.zeros(1, H, D, D, device=dev), torch.ones(1, 1, H, D, device=dev))
            fn = lambda: fla[1](phi(q1), phi(k1), v1, initial_state=st, output_final_state=True,
                                normalize=True)
            emit(kind="decode_step", impl="fla_fused_recurrent", us=graph_us(fn, replays=500))
        except Exception as e:
            emit(kind="decode_step", impl="fla_fused_recurrent", error=str(e)[:200])

    # ---- precision vs float64: 4 heads, causal, normalised elu+1 ----
    for L in (8192, 131072, 1048576):
        hh = 4
        q, k, v = (torch.randn(1, L, hh, D, device=dev, dtype=bf) for _ in range(3))
        ref = reference64(q, k, v)
        floor = rel(ref.to(bf), ref)
        o = torch.empty(1, L, hh, D, device=dev, dtype=bf)
        ours.prefill(ours.core(q, k, v, o))
        torch.cuda.synchronize()
        r = {"kind": "error_vs_float64", "L": L, "floor": floor, "liquid_memory": rel(o, ref)}
        if fla_ok(L, hh):
            try:
                fo, _ = fla[0](phi(q), phi(k), v, normalize=True)
                r["fla_chunk"] = rel(fo, ref)
            except Exception as e:
                r["fla_error"] = str(e)[:200]
        r["ratios"] = {k2: v2 / floor for k2, v2 in r.items() if k2 in ("liquid_memory", "fla_chunk")}
        emit(**r)
        del q, k, v, ref, o
        torch.cuda.empty_cache()

    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
