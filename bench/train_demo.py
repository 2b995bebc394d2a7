#!/usr/bin/env python3
"""
train_demo.py - a two-layer model with LiquidMemory attention learns associative recall.

    LM_LIB_PATH=build/lib/libliquidmemory.so LM_LICENSE_FILE=build/dev-license \
        PYTHONPATH=bindings/python /usr/bin/python3 bench/train_demo.py          # CPU, ~1 min
    ... bench/train_demo.py --device cuda --seq-len 32768                        # the H100

The task (multi-query associative recall, "MQAR" as in Zoology, Arora et al. 2023): each
sequence starts with P key-value pairs `k1 v1 k2 v2 ... kP vP` (distinct keys from a key
vocabulary, values from a value vocabulary), then Q of those keys come back as queries at
random positions of the rest of the sequence, which is filled with a filler token. At each
query position the model must output the value that followed that key; loss and accuracy are
taken at the query positions only (chance: 1 / value vocabulary). Every step draws a fresh
batch, so the training accuracy is measured on sequences never seen before; at the end the
model is also scored on a fixed set of --eval-seqs sequences.

The model: token embedding; two pre-LayerNorm blocks, each
    x = x + attn(shortconv(LN(x)))      causal self-attention
    x = x + MLP(LN(x))                  (4x GELU)
then LayerNorm and a linear head. `attn` is LiquidMemory(d, heads, batch_first=True) called
with is_causal=True, or, with --attention mha, nn.MultiheadAttention with a causal mask (the
same model otherwise). `shortconv` is a causal depthwise convolution over the last 3 tokens (as
in H3 / Based): it lets a value position see the key just before it, which attention without
position information cannot single out; no positional embedding is used.

Training: AdamW, linear warm-up then a constant learning rate, until --steps or --seconds
(per model, whichever comes first); the loss and accuracy of every step are logged.
--start-len N trains on a curriculum: sequences of N tokens first, twice as long every
--grow-steps steps, up to --seq-len (the evaluation is at --seq-len). Without position
information the model's recall carries over to longer sequences: on the CPU, a model trained
from 64 up to 1024 tokens scored 99.7 % on sequences of 2048 (bench/NOTES.md).
--attention both (the CPU default) trains the LiquidMemory model, then the MHA model for as
many steps as the first one made, with the same seed and the same data stream. CPU defaults
(L=64, 16 pairs, 16 queries, 64 keys, 64 values, d=64, 4 heads, batch 32, 35 s for
LiquidMemory, MHA being faster per step at this length) take about a minute on 2 cores;
CUDA defaults: L=32768, 16 pairs, 256 queries, d=256, batch 8, LiquidMemory only, 600 s.
CPU runs use every core (--threads) and set OMP_WAIT_POLICY=PASSIVE unless it is set: torch
and the library alternate many short parallel calls, and spinning idle threads made a step
2.7x slower on 2 cores.

Writes bench/results/train_demo_<device>_<YYYYmmdd-HHMMSS>.json (config, per-step loss /
accuracy / time, final evaluation, wall time, device, torch and library versions, date) and a
.png of loss and accuracy against the step (one curve per attention).

On CUDA (default --dtype bf16: autocast) the backward of the attention runs in the library's
CUDA backend; where that backend has no backward yet, or the license does not cover the
sequence length, the script stops with the library's error message (exit status 2).
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse(argv=None):
    p = argparse.ArgumentParser(
        description="A two-layer LiquidMemory model learns multi-query associative recall.")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--attention", choices=("lm", "mha", "both"),
                   help="lm = LiquidMemory, mha = nn.MultiheadAttention, both = one after the "
                        "other on the same data (default: both on the CPU, lm on CUDA)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 64 on the CPU, "
                   "32768 on CUDA)")
    p.add_argument("--batch-size", type=int, help="default: 32 on the CPU, 8 on CUDA")
    p.add_argument("--num-pairs", type=int, default=16, help="key-value pairs per sequence")
    p.add_argument("--num-queries", type=int, help="queries per sequence (default: 16 on the "
                   "CPU, 256 on CUDA; more queries than pairs repeat pairs)")
    p.add_argument("--key-vocab", type=int, default=64)
    p.add_argument("--value-vocab", type=int, default=64)
    p.add_argument("--d-model", type=int, help="default: 64 on the CPU, 256 on CUDA")
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--feature-map", default="elu", choices=("elu", "relu", "identity"),
                   help="LiquidMemory's feature map (default elu: elu+1)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="LiquidMemory without the normaliser (sum instead of weighted mean)")
    p.add_argument("--start-len", type=int, help="curriculum: train from sequences of this "
                   "length, doubling it every --grow-steps steps up to --seq-len (queries: as "
                   "many as fit, at most --num-queries); the evaluation is at --seq-len")
    p.add_argument("--grow-steps", type=int, default=200, help="steps per curriculum length")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=100000, help="at most this many steps")
    p.add_argument("--seconds", type=float, help="at most this many seconds of training per "
                   "model (default: 35 on the CPU, where --attention both then takes about a "
                   "minute; 600 on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("f32", "bf16"),
                   help="f32, or bf16 autocast (default: f32 on the CPU, bf16 on CUDA)")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    p.add_argument("--eval-seqs", type=int, default=1024, help="sequences in the final evaluation")
    p.add_argument("--log-every", type=int, default=25, help="print every N steps")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--no-files", action="store_true", help="write no JSON / PNG")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.seq_len = a.seq_len or (32768 if cuda else 64)
    a.batch_size = a.batch_size or (8 if cuda else 32)
    a.num_queries = a.num_queries or (256 if cuda else 16)
    a.attention = a.attention or ("lm" if cuda else "both")
    a.seconds = a.seconds if a.seconds is not None else (600.0 if cuda else 35.0)
    a.d_model = a.d_model or (256 if cuda else 64)
    a.dtype = a.dtype or ("bf16" if cuda else "f32")
    a.threads = a.threads or (None if cuda else os.cpu_count())
    if 2 * a.num_pairs + a.num_queries > a.seq_len:
        p.error("--seq-len %d is too short for %d pairs and %d queries (needs %d)"
                % (a.seq_len, a.num_pairs, a.num_queries, 2 * a.num_pairs + a.num_queries))
    if a.start_len is not None and not 2 * a.num_pairs < a.start_len <= a.seq_len:
        p.error("--start-len must be above 2 x --num-pairs (%d) and at most --seq-len (%d)"
                % (2 * a.num_pairs, a.seq_len))
    if a.grow_steps < 1:
        p.error("--grow-steps must be at least 1")
    if a.num_pairs > a.key_vocab:
        p.error("--num-pairs must not exceed --key-vocab (keys are distinct)")
    if a.d_model % a.num_heads:
        p.error("--d-model must be a multiple of --num-heads")
    return a


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:  # before torch and the library start their thread pools
    os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
    # Threads that spin after a parallel region steal the cores the next one needs: torch and
    # libliquidmemory alternate many short calls here, and on 2 cores the spinning default was
    # measured 2.7x slower per training step than passive waiting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

try:
    import liquid_memory  # noqa: E402
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    import liquid_memory  # noqa: E402
from liquid_memory import LiquidMemory  # noqa: E402


# ---------------------------------------------------------------------------- the task

class Task:
    """MQAR batches. Token ids: 0 filler, 1..K keys, K+1..K+V values."""

    def __init__(self, seq_len, num_pairs, num_queries, key_vocab, value_vocab):
        self.L, self.P, self.Q = seq_len, num_pairs, num_queries
        self.K, self.V = key_vocab, value_vocab
        self.vocab = 1 + key_vocab + value_vocab

    def batch(self, B, gen, device, L=None):
        """(tokens [B, L] long, targets [B, L] long with -100 off the query positions); L
        below the task's length (a curriculum) keeps as many queries as fit."""
        L = L or self.L
        P, Q, K, V = self.P, min(self.Q, L - 2 * self.P), self.K, self.V
        keys = torch.rand(B, K, generator=gen).argsort(1)[:, :P] + 1             # distinct keys
        vals = torch.randint(V, (B, P), generator=gen) + 1 + K
        tok = torch.zeros(B, L, dtype=torch.long)
        tok[:, 0:2 * P:2], tok[:, 1:2 * P:2] = keys, vals
        which = torch.rand(B, P, generator=gen).argsort(1)[:, :Q] if Q <= P else \
            torch.randint(P, (B, Q), generator=gen)                             # queried pairs
        pos = torch.rand(B, L - 2 * P, generator=gen).argsort(1)[:, :Q] + 2 * P  # where
        tok.scatter_(1, pos, keys.gather(1, which))
        tgt = torch.full((B, L), -100, dtype=torch.long)
        tgt.scatter_(1, pos, vals.gather(1, which))
        return tok.to(device), tgt.to(device)


# ---------------------------------------------------------------------------- the model

class ShortConv(nn.Module):
    """Causal depthwise convolution over the last `width` tokens, [B, L, d] -> [B, L, d]:
    y_t = b + sum_j w_j * x_(t-j). Written as shifted products (torch's depthwise Conv1d
    backward is slow on the CPU)."""

    def __init__(self, d, width=3):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.zeros(width, d))
        self.bias = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.weight[0].fill_(1.0)  # starts as the identity
            self.weight[1:].normal_(0.0, 0.3)

    def forward(self, x):
        L = x.shape[1]
        y = x * self.weight[0] + self.bias
        for j in range(1, self.width):
            if j < L:
                y = y + F.pad(x[:, :L - j], (0, 0, j, 0)) * self.weight[j]
        return y


class Block(nn.Module):
    def __init__(self, d, heads, attention, lm_options):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.conv = ShortConv(d)
        self.kind = attention
        if attention == "lm":
            self.attn = LiquidMemory(d, heads, batch_first=True, **lm_options)
        else:
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.conv(self.ln1(x))
        if self.kind == "lm":
            a = self.attn(h, h, h, is_causal=True, need_weights=False)[0]
        else:
            a = self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        x = x + a
        return x + self.mlp(self.ln2(x))


class Model(nn.Module):
    def __init__(self, vocab, d, heads, attention, lm_options, layers=2):
        super().__init__()
        self.attention = attention
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, attention, lm_options) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tok):
        L = tok.shape[1]
        mask = None if self.attention == "lm" else \
            torch.ones(L, L, dtype=torch.bool, device=tok.device).triu(1)
        x = self.emb(tok)
        for b in self.blocks:
            x = b(x, mask)
        return self.head(self.ln(x))


def loss_acc(model, tok, tgt):
    logits = model(tok)
    sel = tgt != -100
    lg, t = logits[sel].float(), tgt[sel]
    loss = F.cross_entropy(lg, t)
    acc = (lg.argmax(-1) == t).float().mean()
    return loss, acc


# ---------------------------------------------------------------------------- training

def _autocast(device, dtype):
    if dtype == "f32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(a, attention, device, log=print, max_steps=None):
    """Trains one model for at most max_steps (default a.steps) steps and a.seconds
    seconds; returns its record (per-step log, final evaluation, timings)."""
    max_steps = a.steps if max_steps is None else max_steps
    torch.manual_seed(a.seed)
    task = Task(a.seq_len, a.num_pairs, a.num_queries, a.key_vocab, a.value_vocab)
    model = Model(task.vocab, a.d_model, a.num_heads, attention,
                  {"feature_map": a.feature_map, "normalize": a.normalize}).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(a.warmup, 1)))
    gen = torch.Generator().manual_seed(a.seed)  # the same data stream for every attention
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, status, error = [], "ok", None
    log("[%s] %d parameters, vocab %d, L=%d, batch %d, %d pairs, %d queries (chance %.1f%%)"
        % (attention, nparams, task.vocab, a.seq_len, a.batch_size, a.num_pairs, a.num_queries,
           100.0 / a.value_vocab))
    t0 = time.perf_counter()
    step = 0
    try:
        while step < max_steps and time.perf_counter() - t0 < a.seconds:
            model.train()
            L = a.seq_len if a.start_len is None else \
                min(a.seq_len, a.start_len << min(step // a.grow_steps, 40))
            tok, tgt = task.batch(a.batch_size, gen, device, L)
            with _autocast(device, a.dtype):
                loss, acc = loss_acc(model, tok, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            lv, av = float(loss), float(acc)  # syncs
            steps.append({"step": step, "loss": float("%.6g" % lv), "accuracy": av,
                          "seconds": round(time.perf_counter() - t0, 4), "seq_len": L})
            if not math.isfinite(lv):
                status, error = "diverged", "loss is %r at step %d" % (lv, step)
                break
            if step == 1 or step % a.log_every == 0:
                log("[%s] step %5d  %6.1f s  L %6d  loss %.4f  accuracy %5.1f%%"
                    % (attention, step, steps[-1]["seconds"], L, lv, 100 * av))
    except liquid_memory.LiquidMemoryError as e:
        status, error = "library error", str(e)
    except NotImplementedError as e:  # MissingSymbolError, UnsupportedError
        status, error = "unsupported", "%s: %s" % (type(e).__name__, e)
    except RuntimeError as e:
        if "LM_ERR_" in str(e):  # the library's error, re-wrapped on its way through torch
            status, error = "library error", str(e)
        elif "out of memory" in str(e).lower():
            status, error = "OOM", str(e).split("\n")[0]
        else:
            raise
    _sync(device)
    train_s = time.perf_counter() - t0
    rec = {"attention": attention, "parameters": nparams, "status": status, "error": error,
           "max_steps": max_steps, "max_seconds": a.seconds, "steps": steps,
           "train_seconds": train_s}
    if device.type == "cuda":
        rec["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    if status != "ok":
        log("[%s] stopped: %s: %s" % (attention, status, error))
        return rec
    # final evaluation on fixed sequences (their own seed, never trained on)
    model.eval()
    egen = torch.Generator().manual_seed(10_000 + a.seed)
    tot_loss, tot_acc, n = 0.0, 0.0, 0
    with torch.no_grad(), _autocast(device, a.dtype):
        while n < a.eval_seqs:
            b = min(a.batch_size, a.eval_seqs - n)
            tok, tgt = task.batch(b, egen, device)
            loss, acc = loss_acc(model, tok, tgt)
            tot_loss, tot_acc, n = tot_loss + float(loss) * b, tot_acc + float(acc) * b, n + b
    rec["eval"] = {"sequences": n, "loss": tot_loss / n, "accuracy": tot_acc / n}
    first = steps[0]
    k = min(20, len(steps))
    reach = None  # the first step where the mean accuracy of the last k steps reaches 90%
    for i in range(k - 1, len(steps)):
        if sum(s["accuracy"] for s in steps[i - k + 1:i + 1]) / k >= 0.9:
            reach = steps[i]
            break
    rec["summary"] = {
        "steps": len(steps), "first_loss": first["loss"], "first_accuracy": first["accuracy"],
        "last_loss_mean20": sum(s["loss"] for s in steps[-k:]) / k,
        "last_accuracy_mean20": sum(s["accuracy"] for s in steps[-k:]) / k,
        "steps_per_second": len(steps) / train_s,
        "step_mean20_accuracy_90": reach and reach["step"],
        "seconds_mean20_accuracy_90": reach and reach["seconds"]}
    log("[%s] %d steps in %.1f s: loss %.4f -> %.4f (mean of the last %d), accuracy %.1f%% -> "
        "%.1f%%%s; evaluation on %d new sequences: loss %.4f, accuracy %.1f%%"
        % (attention, len(steps), train_s, first["loss"], rec["summary"]["last_loss_mean20"], k,
           100 * first["accuracy"], 100 * rec["summary"]["last_accuracy_mean20"],
           " (90%% from step %d, %.1f s)" % (reach["step"], reach["seconds"]) if reach else "",
           n, rec["eval"]["loss"], 100 * rec["eval"]["accuracy"]))
    return rec


# ---------------------------------------------------------------------------- output

def versions(device):
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "platform": platform.platform(), "cpu_count": os.cpu_count(),
         "torch_threads": torch.get_num_threads(), "liquid_memory_package":
         getattr(liquid_memory, "__version__", None)}
    with contextlib.suppress(Exception):
        info = liquid_memory.library_info()
        v.update(liquid_memory_library=info["version"], liquid_memory_library_path=info["path"],
                 ffi=info["ffi"], custom_op=info["custom_op"])
    with contextlib.suppress(OSError):
        import subprocess
        v["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            v["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                             if ln.startswith("model name")), None)
    if device.type == "cuda":
        v.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return v


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["config"]
    fig, (axl, axa) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = {"lm": "LiquidMemory", "mha": "nn.MultiheadAttention"}
    for run in result["runs"]:
        st = run["steps"]
        if not st:
            continue
        x = [s["step"] for s in st]
        k = max(1, len(st) // 100)  # a running mean over ~1% of the steps on top of the raw curve

        def smooth(ys):
            out, acc = [], 0.0
            for i, y in enumerate(ys):
                acc += y - (ys[i - k] if i >= k else 0.0)
                out.append(acc / min(i + 1, k))
            return out
        label = "%s: %d steps in %.0f s, %s" % (
            names[run["attention"]], len(st), run["train_seconds"],
            "evaluation accuracy %.1f%%" % (100 * run["eval"]["accuracy"]) if "eval" in run
            else run["status"])
        for ax, key, scale in ((axl, "loss", 1.0), (axa, "accuracy", 100.0)):
            ys = [s[key] * scale for s in st]
            line, = ax.plot(x, ys, alpha=0.25, lw=0.8)
            ax.plot(x, smooth(ys), color=line.get_color(), lw=1.6, label=label)
    # A curriculum: mark where the training length doubles (the title's L is the last one).
    st = next((r["steps"] for r in result["runs"] if r["steps"]), [])
    grow = [(a["step"], a["seq_len"]) for a, b in zip(st, [None] + st) if b and a["seq_len"] != b["seq_len"]]
    for ax in (axl, axa):
        for x, L in grow:
            ax.axvline(x, color="gray", lw=0.6, ls="--", alpha=0.5)
        if grow:
            top = ax.secondary_xaxis("top")
            top.set_xticks([x for x, L in grow])
            top.set_xticklabels([str(L) if L < 1024 else "%dK" % (L // 1024) for x, L in grow], fontsize=7)
            top.set_xlabel("training length from here", fontsize=8)
    axa.axhline(100.0 / c["value_vocab"], color="gray", ls=":", label="chance")
    axl.set_ylabel("cross-entropy at the query positions")
    axa.set_ylabel("accuracy at the query positions (%)")
    for ax in (axl, axa):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    lengths = "L=%d" % c["seq_len"] if not grow else "L=%d → %d (dashed: the length doubles)" % (
        st[0]["seq_len"], c["seq_len"])
    fig.suptitle("Associative recall (MQAR): %s, %d pairs, %d queries, d=%d, %d heads, 2 layers, "
                 "batch %d, %s, %s" % (lengths, c["num_pairs"], c["num_queries"],
                                       c["d_model"], c["num_heads"], c["batch_size"], c["dtype"],
                                       result["device"]["name"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(a):
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_demo: --device %s asked for, but torch sees no CUDA device" % a.device,
              file=sys.stderr)
        return 2
    if a.threads and device.type == "cpu":
        torch.set_num_threads(a.threads)
    started = datetime.datetime.now()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        "CPU, %d threads" % torch.get_num_threads()
    config = {k: v for k, v in vars(a).items() if k not in ("out", "no_files")}
    print("train_demo on %s: %s" % (name, json.dumps(config)))
    runs, limit = [], a.steps
    for att in (("lm", "mha") if a.attention == "both" else (a.attention,)):
        runs.append(train(a, att, device, log=lambda s: print(s, flush=True), max_steps=limit))
        if att == "lm" and runs[-1]["status"] == "ok":
            limit = min(limit, len(runs[-1]["steps"]))  # MHA: the same number of steps
    result = {"date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "config": config, "device": {"type": device.type, "name": name},
              "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                             "OMP_WAIT_POLICY")},
              "versions": versions(device), "runs": runs,
              "wall_seconds": (datetime.datetime.now() - started).total_seconds()}
    if not a.no_files:
        os.makedirs(a.out, exist_ok=True)
        stem = os.path.join(a.out, "train_demo_%s_%s" % (device.type,
                                                         started.strftime("%Y%m%d-%H%M%S")))
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        files = [stem + ".json"]
        if any(r["steps"] for r in runs):
            try:
                plot(result, stem + ".png")
                files.append(stem + ".png")
            except ImportError as e:
                print("no plot: %s" % e)
        print("wrote:\n  " + "\n  ".join(files))
    failed = [r for r in runs if r["status"] != "ok"]
    for r in failed:
        print("train_demo: [%s] %s: %s" % (r["attention"], r["status"], r["error"]),
              file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
