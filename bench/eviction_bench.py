#!/usr/bin/env python3
"""
eviction_bench.py - quality and memory of KV-cache strategies at a fixed cache budget
(issue #16's quality comparison): full softmax, streaming (StreamingLLM: sinks + window,
evicted tokens dropped), h2o (H2O: heavy hitters + recent window by accumulated attention),
linear (our linear attention, elu+1 normalised) and hybrid (exact softmax over sinks + the last
W tokens, every evicted token folded into the linear state; DESIGN.md §2.1).

    make -j2 CUDA=0
    LM_LIB_PATH=build/lib/libliquidmemory.so PYTHONPATH=bindings/python \\
        nice -n 10 /usr/bin/python3 bench/eviction_bench.py            # CPU, both parts
    ... bench/eviction_bench.py --quick                                # smoke test, seconds
    ... bench/eviction_bench.py --part lm --device cuda                # the LM part on a GPU
                                                                       # (bench/gpu_run.sh evict)

A budget B is the number of exact K/V entries a strategy attends to at a decode step (the
current token included): 16, 32, 64, 128, 256. Splits: streaming and hybrid keep s = 4 sinks
and a window W = B - 4; h2o keeps B/2 heavy hitters and B/2 recent tokens. Memory is what one
sequence keeps per layer at decode: K/V entries x 2 x heads x head_dim x bytes (--kv-dtype,
bf16 by default), plus the fp32 state S, z for linear and hybrid, plus h2o's fp32 accumulated
score per entry and head.

1. MQAR (Zoology's multi-query associative recall, bench/evict_mqar.py): a 2-layer model
   (d 64, 4 heads, short convolution, no positional information) is trained with its own
   attention for full, linear and hybrid, on a length curriculum; streaming and h2o are
   inference-time eviction applied to the full-attention model (legitimate for them: that is
   how both are deployed). The hybrid is ONE model trained with the budgets' windows taken
   in turn, one per step (s = 4, W = B - 4), then evaluated at each budget. Accuracy at the
   query positions on fixed sequences of every context length (256 .. 4096). Trained models
   are kept in build/eviction_cache/ and reused by a run with the same configuration.
2. Language modelling (bench/evict_lm.py): a small Llama-style model trained with full
   attention on a character-level corpus (tinyshakespeare; see --corpus), then every
   strategy at inference (perplexity against the position in the context), then the model
   converted to hybrid per budget (attention transfer, then fine-tuning, as LoLCATs) with
   perplexity before and after, beside the original fine-tuned the same way with full
   attention (a control: the extra training alone). Each conversion runs twice: with the
   normative gate sigmoid(g) and with the unbounded exp(g) form (--gates), both through the
   library's hybrid_attention (window_gate_form; --hybrid-impl) where it has them.

The linear strategy runs in the library (MQAR: liquid_memory.LiquidMemory; LM: the library's
core op, liquid_memory.linear_attention where the package has it); MQAR's hybrid trains with
the reference (bench/evict_attention.py) and is evaluated with the library's module where
LiquidMemory(attention="hybrid") exists; the LM's hybrid (inference and conversion) is the
library's hybrid_attention where it has window_gate_form (--hybrid-impl). Each is checked
against the reference (JSON "checks"). Writes bench/results/eviction_<device>_<part>_<date>.json and plots (.png).
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CORPUS = os.path.join(ROOT, "build", "corpus", "tinyshakespeare.txt")


def _ints(s):
    return [int(x) for x in s.split(",") if x]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "mqar", "lm"), default="all")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and a few steps: checks that everything runs (seconds)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--budgets", type=_ints, help="cache budgets (default 16,32,64,128,256)")
    p.add_argument("--sinks", type=int, default=4, help="sinks of streaming and hybrid (4)")
    p.add_argument("--kv-dtype", choices=("bf16", "f16", "f32"), default="bf16",
                   help="bytes per K/V element in the memory figures (the state is fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--no-files", action="store_true", help="print only, write no JSON / PNG")
    p.add_argument("--retrain", action="store_true", help="train every model, even where "
                   "build/eviction_cache/ holds one trained with the same configuration")
    g = p.add_argument_group("MQAR")
    g.add_argument("--contexts", type=_ints, help="evaluation lengths (256,512,...,4096)")
    g.add_argument("--mqar-d-model", type=int)
    g.add_argument("--mqar-heads", type=int)
    g.add_argument("--mqar-pairs", type=int, help="key-value pairs per sequence (16)")
    g.add_argument("--mqar-vocab", type=int, help="vocabulary: keys in the first quarter, "
                   "values in the second, random tokens in the second half (256; Zoology "
                   "uses 8192, too slow to learn on 2 CPU cores)")
    g.add_argument("--mqar-start-len", type=int, help="curriculum's first length (64)")
    g.add_argument("--mqar-train-len", type=int, help="curriculum's last length (256)")
    g.add_argument("--mqar-grow-steps", type=int, help="curriculum: at least this many steps "
                   "per length, and 90 %% accuracy (or 3x the steps) before the next (100)")
    g.add_argument("--mqar-steps", type=int, help="at most this many training steps per "
                   "model (1500)")
    g.add_argument("--mqar-stop-accuracy", type=float, default=0.99, help="stop training "
                   "once at the last length the mean accuracy of 20 steps reaches this (0.99)")
    g.add_argument("--mqar-seconds", type=float, help="at most this long per model (1200)")
    g.add_argument("--mqar-batch", type=int, help="training batch (32)")
    g.add_argument("--mqar-lr", type=float, default=3e-3)
    g.add_argument("--mqar-eval-seqs", type=int, help="sequences per context (128)")
    g = p.add_argument_group("language model")
    g.add_argument("--corpus", default=DEFAULT_CORPUS, help="a UTF-8 text file (default "
                   "build/corpus/tinyshakespeare.txt)")
    g.add_argument("--lm-d-model", type=int)
    g.add_argument("--lm-heads", type=int)
    g.add_argument("--lm-layers", type=int)
    g.add_argument("--lm-ctx", type=int, help="training and evaluation context")
    g.add_argument("--lm-batch", type=int)
    g.add_argument("--lm-steps", type=int)
    g.add_argument("--lm-seconds", type=float)
    g.add_argument("--lm-lr", type=float, default=3e-3)
    g.add_argument("--lm-eval-seqs", type=int)
    g.add_argument("--convert-budgets", type=_ints, help="budgets to convert the model to "
                   "hybrid at (default: every budget)")
    g.add_argument("--gates", type=lambda s: s.split(","), default=["sigmoid", "exp"],
                   help="hybrid gates to convert with: sigmoid (gamma = sigmoid(g), the "
                   "normative one, at most 1) and exp (gamma = exp(g), unbounded: a variant "
                   "that can weigh the window above the evicted tokens); default both")
    g.add_argument("--hybrid-impl", choices=("auto", "library", "reference"), default="auto",
                   help="who computes the LM's hybrid (inference and conversion): the "
                   "library's hybrid_attention with window_gate_form, or the reference "
                   "(evict_attention.py, which also reports the evicted share); auto: the "
                   "library where it has the gate's form (default)")
    g.add_argument("--convert-seconds", type=float, help="at most this long for all the "
                   "conversions and the control together, split evenly over their stages (3000 on the CPU, "
                   "420 on CUDA: 20 s a stage, more than 100 steps take on an H100)")
    g.add_argument("--transfer-steps", type=int)
    g.add_argument("--finetune-steps", type=int)
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    q = a.quick

    def pick(name, quick, cpu, gpu=None):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else gpu if (cuda and gpu is not None) else cpu)
    pick("budgets", [8, 16], [16, 32, 64, 128, 256])
    pick("contexts", [64, 128], [256, 512, 1024, 2048, 4096])
    pick("mqar_d_model", 16, 64)
    pick("mqar_heads", 2, 4)
    pick("mqar_pairs", 4, 16)
    pick("mqar_vocab", 32, 256)
    pick("mqar_start_len", 16, 64)
    pick("mqar_train_len", 32, 256)
    pick("mqar_grow_steps", 1, 100)
    pick("mqar_steps", 4, 1500)
    pick("mqar_seconds", 60.0, 1200.0)
    pick("mqar_batch", 4, 32)
    pick("mqar_eval_seqs", 4, 128, 512)
    pick("lm_d_model", 16, 128, 256)
    pick("lm_heads", 2, 4, 8)
    pick("lm_layers", 2, 2, 4)
    pick("lm_ctx", 64, 512, 1024)
    pick("lm_batch", 2, 4, 32)
    pick("lm_steps", 4, 500)  # on CUDA 500 x 32 x 1024 tokens, ~16 epochs of the corpus;
    # 2500 memorised it (training loss 0.08, validation perplexity 207)
    pick("lm_seconds", 60.0, 1200.0, 150.0)
    pick("lm_eval_seqs", 2, 32, 96)
    pick("convert_seconds", 60.0, 3000.0, 420.0)
    pick("transfer_steps", 2, 40, 60)
    pick("finetune_steps", 2, 60, 100)
    if a.convert_budgets is None:
        a.convert_budgets = list(a.budgets)
    if a.sinks < 0 or min(a.budgets) < 2 or min(a.budgets) <= a.sinks:
        p.error("every budget must exceed --sinks (%d) and be at least 2" % a.sinks)
    if not set(a.gates) <= {"sigmoid", "exp"}:
        p.error("--gates takes sigmoid and / or exp")
    if any(b not in a.budgets for b in a.convert_budgets):
        p.error("--convert-budgets must be among --budgets")
    if max(a.budgets) >= a.lm_ctx and a.part != "mqar":
        p.error("--lm-ctx (%d) must exceed the largest budget (%d)" % (a.lm_ctx, max(a.budgets)))
    if any(c < 4 * a.mqar_pairs or c % 2 for c in a.contexts + [a.mqar_start_len]):
        p.error("MQAR lengths must be even and at least 4 x --mqar-pairs")
    return a


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None and not ARGS.device.startswith("cuda"):
    os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
    # torch and the library alternate short parallel calls: spinning idle threads steal the
    # cores the next call needs (bench/train_demo.py measured 2.7x slower steps on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, HERE)
from evict_attention import decode_bytes, make_strategy  # noqa: E402
import evict_library as lib  # noqa: E402
import evict_lm  # noqa: E402
import evict_mqar  # noqa: E402

KV_BYTES = {"bf16": 2, "f16": 2, "f32": 4}
CACHE_VERSION = 1  # bump when training code changes what a configuration produces


def log(s):
    print(s, flush=True)


def commit():
    if os.environ.get("LM_COMMIT"):
        return os.environ["LM_COMMIT"]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU, %d threads" % torch.get_num_threads()


def cached(a, name, cfg, model, fit):
    """Trains `model` with fit() -> record, or loads the weights and record of an earlier
    run with the same configuration from build/eviction_cache/ (--retrain: always train;
    --quick never caches). The record says which."""
    key = hashlib.sha256(json.dumps([name, cfg, torch.__version__, CACHE_VERSION],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(ROOT, "build", "eviction_cache", "%s_%s.pt" % (name, key))
    if not a.quick and not a.retrain and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu")
        model.load_state_dict(saved["state_dict"])
        log("[cache] %s: trained weights from %s (trained %s)" % (name, path, saved["date"]))
        return dict(saved["record"], loaded_from_cache=path, cached_on=saved["date"])
    rec = fit()
    if not a.quick:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "record": rec,
                    "date": datetime.datetime.now().isoformat(timespec="seconds")}, path)
    return rec


def record(meta_common, strategy, extra_meta, results):
    """One result in the seed's layout: {"metadata": {...}, "results": {...}}."""
    m = dict(meta_common)
    m.update(strategy.describe())
    m.update(extra_meta)
    return {"metadata": m, "results": results}


# ---------------------------------------------------------------------------- MQAR

def run_mqar(a, device, common, impl):
    cfg = {"steps": a.mqar_steps, "seconds": a.mqar_seconds, "batch": a.mqar_batch,
           "lr": a.mqar_lr, "warmup": max(1, min(50, a.mqar_steps // 10)),
           "weight_decay": 0.01, "start_len": a.mqar_start_len, "train_len": a.mqar_train_len,
           "grow_steps": a.mqar_grow_steps, "num_pairs": a.mqar_pairs, "vocab": a.mqar_vocab,
           "seed": a.seed, "log_every": 25 if not a.quick else 1,
           "stop_accuracy": a.mqar_stop_accuracy,
           "d_model": a.mqar_d_model, "heads": a.mqar_heads, "layers": 2,
           "power_a": 0.01, "eval_seqs": a.mqar_eval_seqs, "contexts": a.contexts}
    d, H = a.mqar_d_model, a.mqar_heads
    hybrids = [make_strategy("hybrid", b, a.sinks) for b in a.budgets]
    models = {
        "full": (make_strategy("full"), False, None),
        "linear": (make_strategy("linear"), impl["linear_mqar"] == "library", None),
        # one hybrid model, the budgets' windows taken in turn, one per step
        "hybrid": (hybrids[0], False, hybrids),
    }
    training, trained = {}, {}
    for name, (strat, library, windows) in models.items():
        log("[mqar] training the %s model (%s)%s" % (
            name, "library LiquidMemory" if library else "reference attention",
            ", the windows of budgets %s in turn" % a.budgets if windows else ""))
        torch.manual_seed(a.seed)
        model = evict_mqar.Model(a.mqar_vocab, d, H, strat, library=library).to(device)

        def fit(model=model, windows=windows, library=library):
            rec = evict_mqar.train(model, cfg, device, log=log, windows=windows)
            rec["trained_with"] = "library LiquidMemory" if library else "reference"
            return rec
        rec = cached(a, "mqar_" + name, dict(cfg, budgets=a.budgets, sinks=a.sinks), model, fit)
        training[name], trained[name] = rec, model
        log("[mqar] %s: %d steps in %.0f s, %s, training accuracy (last 20) %.1f%%"
            % (name, rec["steps"], rec["train_seconds"], rec["status"],
               100 * rec["final_train_accuracy_mean20"]))

    evals = [("full", "full", make_strategy("full"), None)]
    for b in a.budgets:
        evals += [("full", "inference-time eviction on the full-attention model",
                   make_strategy(k, b, a.sinks), None) for k in ("streaming", "h2o")]
    evals.append(("linear", "linear", make_strategy("linear"), None))
    evals += [("hybrid", "hybrid (one model, the windows in turn)", s, impl["hybrid"])
              for s in hybrids]
    records = []
    for model_name, trained_as, strat, hybrid_impl in evals:
        model = trained[model_name]
        if model_name == "hybrid" and hybrid_impl == "library":
            model = lib.mqar_with_library_hybrid(model, strat)
        elif model_name != "linear":
            model.set_strategy(strat)
        for L in a.contexts:
            t0 = time.perf_counter()
            acc, n = evict_mqar.accuracy(model, L, a.mqar_eval_seqs, cfg, device,
                                         batch=max(1, min(128, (1 << 17) // L)))
            mem = decode_bytes(strat, L, H, d // H, KV_BYTES[a.kv_dtype])
            records.append(record(common, strat, {
                "task": "mqar", "context": L, "model_trained_with": trained_as,
                "implementation": ("library" if model_name == "linear" and
                                   impl["linear_mqar"] == "library" else
                                   hybrid_impl or "reference")},
                {"accuracy": acc, "queries": n, "memory_per_layer": mem}))
            log("[mqar] %-34s L %5d  accuracy %5.1f%%  (%d queries, %.1f KiB/layer, %.1f s)"
                % (strat.label(), L, 100 * acc, n, mem["total_bytes"] / 1024,
                   time.perf_counter() - t0))
    return {"config": cfg, "training": training, "records": records}


# ---------------------------------------------------------------------------- LM

def _bins(nll, width):
    """Mean NLL over consecutive position bins of `width` tokens."""
    return [sum(nll[i:i + width]) / len(nll[i:i + width]) for i in range(0, len(nll), width)]


def run_lm(a, device, common, impl):
    corpus = evict_lm.Corpus(a.corpus)
    log("[lm] corpus %s: %d bytes, sha256 %s, %d symbols" % (
        corpus.path, corpus.bytes, corpus.sha256, corpus.vocab))
    d, H, layers, ctx = a.lm_d_model, a.lm_heads, a.lm_layers, a.lm_ctx
    cfg = {"d_model": d, "heads": H, "layers": layers, "ctx": ctx, "batch": a.lm_batch,
           "steps": a.lm_steps, "seconds": a.lm_seconds, "lr": a.lm_lr,
           "warmup": max(1, min(100, a.lm_steps // 10)), "seed": a.seed,
           "log_every": 50 if not a.quick else 1, "eval_seqs": a.lm_eval_seqs,
           "transfer_steps": a.transfer_steps, "finetune_steps": a.finetune_steps,
           "convert_seconds": a.convert_seconds, "gates": a.gates,
           "transfer_lr": 1e-2, "finetune_lr": 1e-3}  # LoLCATs distils at 1e-2
    stages = 2 * len(a.gates) * len(a.convert_budgets) + 1   # + the control's fine-tuning
    conv_cfg = dict(cfg, seconds=a.convert_seconds / stages)
    torch.manual_seed(a.seed)
    model = evict_lm.LM(corpus.vocab, d, H, layers).to(device)
    full = make_strategy("full")
    log("[lm] training with full attention: %d parameters, d %d, %d layers of %d heads, "
        "context %d, batch %d" % (sum(p.numel() for p in model.parameters()), d, layers, H,
                                  ctx, a.lm_batch))
    base = {k: cfg[k] for k in ("d_model", "heads", "layers", "ctx", "batch", "steps", "seconds",
                                "lr", "warmup", "seed")}
    training = {"original": cached(a, "lm", dict(base, corpus=corpus.sha256,
                                                 device=device.type), model,
                                   lambda: evict_lm.train_lm(model, corpus, cfg, device, full,
                                                             log))}
    linear_fn = lib.lm_linear_fn()[0] if impl["linear_lm"] != "reference" else None
    hyb = "library" if a.hybrid_impl == "library" or (
        a.hybrid_impl == "auto" and impl["hybrid_lm"] != "reference") else "reference"
    if hyb == "library" and impl["hybrid_lm"] == "reference":
        raise RuntimeError("--hybrid-impl library, but %s" % impl.get("hybrid_lm_reason"))
    impl["hybrid_lm_used"] = hyb
    log("[lm] the hybrid runs in the %s" % (impl["hybrid_lm"] if hyb == "library" else
                                             "reference (evict_attention.py)"))
    width = max(1, ctx // 32)
    eval_batch = a.lm_eval_seqs if device.type == "cuda" else max(1, min(a.lm_batch, 16))
    bench_meta = dict(common, task="language modelling", corpus=corpus.describe()["path"],
                      corpus_sha256=corpus.sha256, context=ctx)

    def evaluate(m, strat, label, trained_as, implementation=None, fn=None):
        implementation = implementation or strat.impl
        t0 = time.perf_counter()
        nll, n, share = evict_lm.position_nll(m, corpus, strat, a.lm_eval_seqs, ctx, device,
                                              batch=eval_batch, linear_fn=fn)
        mean = sum(nll) / len(nll)
        mem = decode_bytes(strat, ctx, H, d // H, KV_BYTES[a.kv_dtype])
        q4 = ctx // 4
        log("[lm] %-44s perplexity %8.3f  last quarter %8.3f%s  (%d x %d tokens, %.1f s)"
            % (label, math.exp(mean), math.exp(sum(nll[-q4:]) / q4),
               "  evicted share %.2f" % (sum(share[-q4:]) / q4) if share else "", n, ctx,
               time.perf_counter() - t0))
        res = {"perplexity": math.exp(mean), "nll": mean, "sequences": n, "bin_width": width,
               "nll_by_position": _bins(nll, width), "memory_per_layer": mem}
        if share:
            res["evicted_share_by_position"] = _bins(share, width)
            res["evicted_share_last_quarter"] = sum(share[-q4:]) / q4
        return record(bench_meta, strat, {"model": trained_as, "implementation": implementation},
                      res)

    records = [evaluate(model, full, "full", "original")]
    for b in a.budgets:
        for k, gate in [("streaming", None), ("h2o", None)] + [("hybrid", g) for g in a.gates]:
            s = make_strategy(k, b, a.sinks, gate or "sigmoid", hyb)
            records.append(evaluate(model, s, s.label() + (" (no training)" if k == "hybrid"
                                                            else ""), "original"))
    lin = make_strategy("linear")
    try:
        records.append(evaluate(model, lin, "linear (no training)", "original",
                                impl["linear_lm"], linear_fn))
    except Exception as e:  # the library refused (e.g. a dtype its backend lacks): say so
        if linear_fn is None:
            raise
        log("[lm] the library's linear attention failed here (%s: %s); the reference runs"
            % (type(e).__name__, e))
        impl["linear_lm"] = "reference (the library failed: %s: %s)" % (type(e).__name__, e)
        records.append(evaluate(model, lin, "linear (no training)", "original"))

    # the control: the original fine-tuned as the conversion fine-tunes, full attention kept
    log("[lm] control: the original fine-tuned with full attention, as the conversion does")
    control, training["control_finetune"] = evict_lm.finetune(model, corpus, full, conv_cfg,
                                                              device, log)
    records.append(evaluate(control, full, "full, fine-tuned (control)", "control"))
    original = records[0]["results"]["perplexity"]
    control_ppl = records[-1]["results"]["perplexity"]
    conversion = []
    for gate in a.gates:
        for b in a.convert_budgets:
            s = make_strategy("hybrid", b, a.sinks, gate, hyb)
            log("[lm] converting to %s: attention transfer, then fine-tuning" % s.label())
            before = next(x for x in records if x["metadata"]["model"] == "original" and
                          x["metadata"]["strategy"] == "hybrid" and
                          x["metadata"]["cache_size"] == b and
                          x["metadata"]["gate"] == s.describe()["gate"])
            student, rec1 = evict_lm.attention_transfer(model, corpus, s, conv_cfg, device,
                                                        full, log)
            mid = evaluate(student, s, s.label() + " (attention transfer)", "transferred")
            tuned, rec2 = evict_lm.finetune(student, corpus, s, conv_cfg, device, log)
            after = evaluate(tuned, s, s.label() + " (converted)", "converted")
            records += [mid, after]
            training["convert_%s_%d" % (gate, b)] = {"attention_transfer": rec1,
                                                     "finetune": rec2}
            c = {"cache_size": b, "window": s.window, "sinks": s.sinks,
                 "gate": s.describe()["gate"], "perplexity_original": original,
                 "perplexity_control": control_ppl,
                 "perplexity_before": before["results"]["perplexity"],
                 "perplexity_after_transfer": mid["results"]["perplexity"],
                 "perplexity_after": after["results"]["perplexity"],
                 "after_over_original": after["results"]["perplexity"] / original,
                 "window_gate_logits": rec2["window_gate_logits"]}
            conversion.append(c)
            log("[lm] %s: perplexity %.3f before, %.3f after transfer, %.3f after "
                "fine-tuning; original %.3f (%+.1f %%), control %.3f" % (
                    s.label(), c["perplexity_before"], c["perplexity_after_transfer"],
                    c["perplexity_after"], original, 100 * (c["after_over_original"] - 1),
                    c["perplexity_control"]))
    return {"config": cfg, "corpus": corpus.describe(), "training": training,
            "records": records, "conversion": conversion}


# ---------------------------------------------------------------------------- main

def main(a):
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("eviction_bench: --device %s, but torch sees no CUDA device" % a.device,
              file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    else:  # TF32 matmuls: the quality comparison does not need more, the time limit does
        torch.backends.cuda.matmul.allow_tf32 = True
    if a.part != "mqar" and not os.path.isfile(a.corpus):
        print("eviction_bench: no corpus at %s: %s" % (a.corpus, evict_lm.CORPUS_HELP),
              file=sys.stderr)
        return 2
    started = datetime.datetime.now()
    impl, checks = lib.detect_and_check(device, log)
    common = {"device": device_name(device), "commit": commit(),
              "date": started.isoformat(timespec="seconds"), "kv_dtype": a.kv_dtype}
    log("eviction_bench on %s, commit %s: budgets %s, sinks %d; implementations %s"
        % (common["device"], common["commit"], a.budgets, a.sinks, json.dumps(impl)))
    out = {"benchmark": "eviction", "command": " ".join(sys.argv),
           "metadata": dict(common, quick=a.quick, budgets=a.budgets, sinks=a.sinks,
                            splits={"streaming": "s = %d sinks, W = B - s" % a.sinks,
                                    "hybrid": "s = %d sinks, W = B - s" % a.sinks,
                                    "h2o": "B/2 heavy hitters, B - B/2 recent"},
                            implementations=impl, torch=torch.__version__,
                            python=platform.python_version(),
                            cuda=torch.version.cuda if device.type == "cuda" else None),
           "checks": checks}
    if a.part in ("all", "mqar"):
        out["mqar"] = run_mqar(a, device, common, impl)
    if a.part in ("all", "lm"):
        out["lm"] = run_lm(a, device, common, impl)
    out["wall_seconds"] = round((datetime.datetime.now() - started).total_seconds(), 1)
    if not a.no_files:
        import evict_plots
        os.makedirs(a.out, exist_ok=True)
        stem = os.path.join(a.out, "eviction_%s_%s%s_%s" % (
            device.type, a.part, "_quick" if a.quick else "", started.strftime("%Y%m%d-%H%M%S")))
        with open(stem + ".json", "w") as f:
            json.dump(out, f, indent=1)
        files = [stem + ".json"] + evict_plots.plot_all(out, stem)
        log("wrote:\n  " + "\n  ".join(files))
    log("done in %.0f s" % out["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
