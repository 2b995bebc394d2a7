#!/usr/bin/env python3
"""hf_bench.py - a Hugging Face Llama patched with Liquid Memory against the
same model with transformers' own attention, in one run (issue #15).

Model: Llama-3.2-1B-shaped, random init, bf16 on one GPU (hidden 2048, 16
layers, 32 heads, 8 kv heads of 64, MLP 8192, vocab 128256, tied head).
Methods, same weights:
  lm            liquid_memory.hf.patch(model), its recurrent-state cache, eager
  lm_graph      the same decode step replayed from a CUDA graph
  lm_hybrid     patch(model, attention="hybrid") (window 64, sinks 4), eager
  lm_hybrid_graph  its decode step from a CUDA graph
  hf_sdpa       transformers' SDPA attention with its DynamicCache, eager
  hf_static     transformers' StaticCache + torch.compile(mode="reduce-overhead")
                (decode only: its prefill is not what it is for)
Measured at each context (default 4K / 32K / 128K):
  prefill       time of the decoder over the prompt (batch 1), peak memory above the weights
  decode        ms per token at batch 1 after that prefill (N steps, after warm-up)
  decode_max    aggregate tokens/s at the largest batch that fits: the batch-1
                cache after the prefill replicated to B rows (the work of a step
                does not depend on the values), B halved until it fits
  cache bytes per sequence
and the host time of one patched attention's decode call (batch 1), split into
transformers' parts (projections, RoPE) and ours (see attention_host_us).

Timing: CUDA events around the whole step sequence, warm-up first. A time
budget (--budget seconds) is checked before each measurement; what does not
fit is recorded under "skipped" with the reason, never guessed.

    python3 bench/hf_bench.py --out bench/results [--quick] [--budget 480]

Writes hf_bench_<date>.json (date, commit, GPU, versions, every record, the
issue's targets against the measured ratios) and a PNG plot beside it.
"""
import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bindings", "python"))

import liquid_memory.hf as lmhf  # noqa: E402

MODEL = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             max_position_embeddings=1 << 18, tie_word_embeddings=True)


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def log(*a):
    print("[hf_bench %6.1fs]" % (time.monotonic() - T0), *a, flush=True)


T0 = time.monotonic()


def make_model():
    import transformers
    config = transformers.LlamaConfig(**MODEL)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def cuda_time(fn, repeats=1):
    """Seconds per call of fn (CUDA events around `repeats` calls)."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(repeats):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / repeats


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()


def hf_cache_bytes(cache):
    n = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                n += t.numel() * t.element_size()
    return n


def new_cache(model, method):
    import transformers
    if method.startswith("lm"):
        return lmhf.LiquidMemoryCache(model)
    return transformers.DynamicCache(config=model.config)


def prefill(model, method, ids):
    """The decoder over ids with a fresh cache: (cache, seconds, peak bytes above start)."""
    cache = new_cache(model, method)
    free_memory()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    with torch.no_grad():
        t = cuda_time(lambda: model.model(ids, past_key_values=cache, use_cache=True))
    return cache, t, torch.cuda.max_memory_allocated() - start


def decode_steps(model, cache, B, steps, position):
    """Eager decode: seconds per step over `steps` steps at batch B."""
    tok = torch.full((B, 1), 5, dtype=torch.long, device="cuda")
    pos = torch.full((B, 1), position, dtype=torch.long, device="cuda")

    def run():
        for _ in range(steps):
            model(tok, position_ids=pos, past_key_values=cache, use_cache=True)
            pos.add_(1)
    with torch.no_grad():
        model(tok, position_ids=pos, past_key_values=cache, use_cache=True)  # warm-up
        pos.add_(1)
        return cuda_time(run) / steps


def graphed_decode(model, cache, B, steps, position):
    """The patched decode step captured once in a CUDA graph (static token,
    position and state buffers), replayed `steps` times: seconds per step."""
    tok = torch.full((B, 1), 5, dtype=torch.long, device="cuda")
    pos = torch.full((B, 1), position, dtype=torch.long, device="cuda")
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model(tok, position_ids=pos, past_key_values=cache, use_cache=True)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(tok, position_ids=pos, past_key_values=cache, use_cache=True)

    def run():
        for _ in range(steps):
            graph.replay()
            pos.add_(1)
    run()
    return cuda_time(run) / steps


def static_compiled_decode(model, context, steps):
    """transformers' StaticCache sized for context + steps, decode compiled
    with mode="reduce-overhead" (CUDA graphs), at batch 1. The static layers
    attend over their whole buffer every step whatever they hold, so the
    prompt is not prefilled: the cache is advanced to `context` tokens."""
    import inspect
    import transformers
    cache = transformers.StaticCache(config=model.config, max_cache_len=context + steps + 8)
    fwd = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters
    tok = torch.full((1, 1), 5, dtype=torch.long, device="cuda")
    pos = torch.full((1, 1), context, dtype=torch.long, device="cuda")
    with torch.no_grad():
        cache.early_initialization(1, MODEL["num_key_value_heads"],
                                   MODEL["hidden_size"] // MODEL["num_attention_heads"],
                                   torch.bfloat16, torch.device("cuda"))
        for layer in cache.layers:
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                layer.cumulative_length.fill_(context)

        def step():
            kw = {"cache_position": pos[0]} if takes_cache_position else {}
            fwd(input_ids=tok, position_ids=pos, past_key_values=cache, use_cache=True, **kw)
            pos.add_(1)
        t0 = time.monotonic()
        for _ in range(3):  # compile + CUDA graph warm-up
            step()
        torch.cuda.synchronize()
        compile_s = time.monotonic() - t0
        per = cuda_time(lambda: [step() for _ in range(steps)]) / steps
    return per, compile_s, hf_cache_bytes(cache)


def max_batch_decode(model, method, cache, context, steps, budget, graph, lm_batch):
    """Largest batch that fits (from the batch-1 cache replicated), aggregate
    tokens/s. Ours starts at lm_batch: its state (2.1 MB a sequence) would
    fit tens of thousands, but a step is compute-bound well before."""
    ours = method.startswith("lm")
    per_seq = cache.nbytes() if ours else hf_cache_bytes(cache)
    free = torch.cuda.mem_get_info()[0]
    if ours:
        B = lm_batch
    else:  # what the free memory holds, with room for a step's copy of one layer
        B = max(1, int((free - (4 << 30)) / (per_seq * 1.1)))
    while B >= 1:
        if budget.left() < 20:
            return None, "time budget"
        try:
            big = new_cache(model, method)
            if ours:  # the state (and the hybrid's window) of every layer, B times
                for src, dst in zip(cache.layers, big.layers):
                    rep = [t.repeat_interleave(B, 0) for t in
                           (src.S, src.z, src.window_keys, src.window_values, src.window_pos)
                           if t is not None]
                    dst.absorb(rep[0], rep[1], src.seen, window=tuple(rep[2:]))
            else:
                big = _repeat_dynamic(cache, B, model)
            fn = graphed_decode if graph else decode_steps
            per = fn(model, big, B, steps, context)
            del big
            free_memory()
            return {"batch": B, "ms_per_step": per * 1e3, "tokens_per_s": B / per}, None
        except torch.cuda.OutOfMemoryError:
            big = None
            free_memory()
            B = B // 2 if ours else B * 3 // 4
    return None, "batch 1 does not fit"


def _repeat_dynamic(cache, B, model):
    import transformers
    big = transformers.DynamicCache(config=model.config)
    with torch.no_grad():
        for i, layer in enumerate(cache.layers):
            big.update(layer.keys.repeat_interleave(B, 0), layer.values.repeat_interleave(B, 0), i)
    return big


def _wall_us(fn, calls):
    """Mean wall time of fn() over `calls` (warm-up first, one sync at the end)."""
    with torch.no_grad():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def attention_host_us(model, calls=200, rounds_n=7):
    """One patched attention's decode call at batch 1, split into its parts
    (mean wall time of `calls`, one sync at the end; the kernels are
    microseconds, so these are host times when they exceed them):
      call      the whole forward (projections, RoPE, our core, o_proj)
      hf_parts  the same forward with our core call replaced by a
                pass-through of q (what transformers' modules and RoPE cost)
      ours      call - hf_parts: what Liquid Memory adds to the layer
      core      the core's decode call alone on fixed q, k, v, state
    call and hf_parts are medians of rounds_n rounds, the two alternating.
    The issue's "our own host overhead <= 30 us per layer" is `ours`."""
    attn = model.model.layers[0].self_attn
    cache = lmhf.LiquidMemoryCache(model)
    x = torch.randn(1, 1, MODEL["hidden_size"], device="cuda", dtype=torch.bfloat16)
    D = MODEL["hidden_size"] // MODEL["num_attention_heads"]
    pe = (torch.ones(1, 1, D, device="cuda", dtype=torch.bfloat16),
          torch.zeros(1, 1, D, device="cuda", dtype=torch.bfloat16))

    def call():
        attn(x, position_embeddings=pe, past_key_values=cache)

    with torch.no_grad():
        call()  # the cache's first token: a prefill
    real = lmhf._linear_attention
    skip_core = lambda q, k, v, mask, state, opts: q  # noqa: E731
    # "ours" is the difference of two ~300 us times: rounds of each in
    # alternation, medians, so that drift (clocks, caches) hits both alike.
    rounds = {"call": [], "hf_parts": []}
    try:
        for _ in range(rounds_n):
            for name, fn in (("call", real), ("hf_parts", skip_core)):
                lmhf._linear_attention = fn
                rounds[name].append(_wall_us(call, calls))
    finally:
        lmhf._linear_attention = real
    res = {name: sorted(v)[len(v) // 2] for name, v in rounds.items()}
    res["ours"] = res["call"] - res["hf_parts"]
    res["rounds"] = rounds
    state = cache.layers[0]
    Hq, Hkv = attn.num_heads, attn.num_kv_heads
    q = torch.randn(1, 1, Hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1, Hkv, D, device="cuda", dtype=torch.bfloat16)
    res["core"] = _wall_us(lambda: real(q, k, k, None, state, attn.options.core), calls)
    return res


def git_commit():
    """LM_COMMIT when set (a copy of the tree without its own .git), else git's HEAD."""
    if os.environ.get("LM_COMMIT"):
        return os.environ["LM_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=HERE,
                                       stderr=subprocess.DEVNULL).decode().strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args):
    import transformers
    budget = Budget(args.budget)
    contexts = [int(c) for c in args.contexts.split(",")]
    steps = 8 if args.quick else 32
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": git_commit(), "gpu": torch.cuda.get_device_name(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "model": MODEL, "dtype": "bfloat16",
           "quick": args.quick, "budget_s": args.budget, "decode_steps": steps,
           "records": [], "skipped": []}

    def record(**r):
        res["records"].append(r)
        log(json.dumps(r))

    def skip(what, why):
        res["skipped"].append({"what": what, "why": why})
        log("skip", what, "-", why)

    model = make_model()
    weights = torch.cuda.memory_allocated()
    res["weights_bytes"] = weights
    log("model ready, %.2f GB of weights" % (weights / 1e9))
    lmhf.patch(model)
    host = attention_host_us(model)
    res["lm_attention_call_us"] = host
    res["lm_attention_host_us"] = host["ours"]
    log("patched attention decode call: %.1f us, of which transformers' parts %.1f us, ours "
        "%.1f us (the core call alone %.1f us)" % (host["call"], host["hf_parts"], host["ours"],
                                                   host["core"]))
    warm = torch.randint(3, MODEL["vocab_size"], (1, 1024), device="cuda")
    for method in METHODS:  # libraries' first-call set-up, outside the timings
        set_method(model, method)
        prefill(model, method, warm)
    # the same weights patched and not: patch() / unpatch() between methods
    for context in contexts:
        for method in METHODS:
            # HF at 128K: about 3 s of prefill and 4 GB of cache a sequence to copy
            need = 8 + (context / 131072) * (25 if method == "hf_sdpa" else 8)
            if budget.left() < need:
                skip("%s %d" % (method, context), "time budget (%.0f s left, ~%.0f s needed)"
                     % (budget.left(), need))
                continue
            set_method(model, method)
            try:
                measure_context(model, method, context, steps, budget, args, record, skip)
            except Exception as e:  # a failure is a result to record, not the end of the run
                skip("%s %d" % (method, context), "%s: %s" % (type(e).__name__, str(e)[:300]))
                free_memory()
            save(res, args.out_base)
    set_method(model, "hf_static")
    for context in sorted(contexts, reverse=True):  # the targets' context (the largest) first
        need = 150
        if args.quick and context != max(contexts):
            skip("hf_static decode_b1 %d" % context, "--quick: only the largest context")
            continue
        if budget.left() < need:
            skip("hf_static decode_b1 %d" % context, "time budget (%.0f s left, ~%d s needed "
                 "with compilation)" % (budget.left(), need))
            continue
        try:
            per, compile_s, nbytes = static_compiled_decode(model, context, steps)
            record(method="hf_static", what="decode_b1", context=context, ms_per_token=per * 1e3,
                   compile_seconds=compile_s, cache_bytes_per_seq=nbytes)
        except Exception as e:  # compile failures are a result to record, not a crash
            skip("hf_static decode_b1 %d" % context, "%s: %s" % (type(e).__name__, str(e)[:300]))
        free_memory()
        save(res, args.out_base)
    save(res, args.out_base)
    return res


METHODS = ("lm", "lm_hybrid", "hf_sdpa")


def set_method(model, method):
    """The same weights patched as `method` wants (linear, hybrid) or not (HF's own)."""
    want = {"lm": "linear", "lm_hybrid": "hybrid"}.get(method)
    if lmhf.is_patched(model):
        lmhf.unpatch(model)
    if want:
        lmhf.patch(model, attention=want)


def measure_context(model, method, context, steps, budget, args, record, skip):
    """Prefill, batch-1 decode (eager; CUDA graph for ours) and the largest
    batch's aggregate decode at one context."""
    ids = torch.randint(3, MODEL["vocab_size"], (1, context), device="cuda")
    try:
        cache, t, peak = prefill(model, method, ids)
    except torch.cuda.OutOfMemoryError:
        free_memory()
        skip("%s prefill %d" % (method, context), "out of memory")
        return
    per_seq = cache.nbytes() if method.startswith("lm") else hf_cache_bytes(cache)
    record(method=method, what="prefill", context=context, seconds=t,
           peak_bytes_above_weights=peak, cache_bytes_per_seq=per_seq)
    eager = decode_steps(model, cache, 1, steps, context)
    record(method=method, what="decode_b1", context=context, ms_per_token=eager * 1e3)
    if method.startswith("lm"):
        g = graphed_decode(model, cache, 1, steps, context + steps + 1)
        record(method=method + "_graph", what="decode_b1", context=context, ms_per_token=g * 1e3)
    for graph in ((False, True) if method.startswith("lm") else (False,)):
        name = method + "_graph" if graph else method
        mb, why = max_batch_decode(model, method, cache, context, steps, budget, graph,
                                   args.lm_batch)
        if mb is None:
            skip("%s decode_max %d" % (name, context), why)
        else:
            record(method=name, what="decode_max", context=context, **mb)
    del cache
    free_memory()


def save(res, base):
    """Writes the JSON so far (a run cut short still leaves its records)."""
    res["targets"] = targets(res)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)


def _get(res, method, what, context, key):
    for r in res["records"]:
        if (r["method"], r["what"], r["context"]) == (method, what, context):
            return r.get(key)
    return None


# The targets: name, then the (method, measurement, key) whose value
# is divided by the second's (each ratio is "how many times better we are").
TARGETS = [
    ("decode_max_tokens_per_s_vs_hf_sdpa (>= 10)", ("lm_graph", "decode_max", "tokens_per_s"),
     ("hf_sdpa", "decode_max", "tokens_per_s")),
    ("cache_per_seq_hf_over_lm (>= 100)", ("hf_sdpa", "prefill", "cache_bytes_per_seq"),
     ("lm", "prefill", "cache_bytes_per_seq")),
    ("prefill_speedup_vs_hf_sdpa (>= 3 at 128K)", ("hf_sdpa", "prefill", "seconds"),
     ("lm", "prefill", "seconds")),
    ("graph_decode_speedup_vs_hf_static_compile (>= 2 at 128K)",
     ("hf_static", "decode_b1", "ms_per_token"), ("lm_graph", "decode_b1", "ms_per_token")),
    ("eager_decode_speedup_vs_hf_sdpa (>= 1)", ("hf_sdpa", "decode_b1", "ms_per_token"),
     ("lm", "decode_b1", "ms_per_token")),
]


def targets(res):
    """The issue's targets as measured ratios per context (None where a side is missing)."""
    out = {}
    for c in sorted({r["context"] for r in res["records"]}):
        out[str(c)] = {}
        for name, (m1, w1, k1), (m2, w2, k2) in TARGETS:
            a, b = _get(res, m1, w1, c, k1), _get(res, m2, w2, c, k2)
            out[str(c)][name] = None if a is None or not b else a / b
    out["lm_attention_host_us_per_layer (<= 30)"] = res.get("lm_attention_host_us")
    return out


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    panels = [("prefill", "seconds", "prefill (s, batch 1)", 1.0),
              ("decode_b1", "ms_per_token", "decode ms/token, batch 1", 1.0),
              ("decode_max", "tokens_per_s", "aggregate decode tokens/s, largest batch", 1.0),
              ("prefill", "cache_bytes_per_seq", "cache MB per sequence", 1e-6)]
    for ax, (what, key, title, scale) in zip(axes, panels):
        for method, color in (("lm", "C0"), ("lm_graph", "C2"), ("lm_hybrid", "C4"),
                              ("lm_hybrid_graph", "C5"), ("hf_sdpa", "C1"), ("hf_static", "C3")):
            pts = sorted((r["context"], r[key] * scale) for r in res["records"]
                         if r["method"] == method and r["what"] == what and r.get(key))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Llama-3.2-1B-shaped, bf16, %s, transformers %s: Liquid Memory patch vs HF"
                 % (res["gpu"], res["transformers"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="folder for hf_bench_<date>.json and .png (default: bench/results)")
    p.add_argument("--contexts", default="4096,32768,131072",
                   help="comma-separated prompt lengths (default: 4096,32768,131072)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for the whole run; what does not fit is recorded as skipped (default: 480)")
    p.add_argument("--lm-batch", type=int, default=2048,
                   help="largest batch tried for the patched model's aggregate decode (default: 2048)")
    p.add_argument("--quick", action="store_true",
                   help="fewer decode steps; HF's static cache + compile at the largest context only")
    p.add_argument("--plot-only", metavar="JSON", help="redraw the plot of a saved run, measure nothing")
    args = p.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f), args.plot_only[:-len(".json")] + ".png")
        return
    if not torch.cuda.is_available():
        sys.exit("hf_bench.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = args.out_base = os.path.join(args.out, "hf_bench_%s" % stamp)
    res = run(args)
    plot(res, base + ".png")
    log("wrote", base + ".json", base + ".png")
    print(json.dumps(res["targets"], indent=1))


if __name__ == "__main__":
    main()
