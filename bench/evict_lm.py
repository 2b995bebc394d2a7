"""
evict_lm.py - the language-modelling half of bench/eviction_bench.py: a character-level text
corpus, a small Llama-style model (RMSNorm, rotary positions, SwiGLU, no biases) trained with
full softmax attention, its per-position perplexity under each strategy of evict_attention.py,
and its conversion to the hybrid (LoLCATs, Zhang et al. 2024: attention transfer, then
fine-tuning).

Rotary positions are applied to q and k before any strategy sees them, so cached keys keep
their original positions (as H2O's and LoLCATs' implementations do; StreamingLLM re-numbers
positions inside the cache, which only matters beyond the training length, and every
evaluation here stays within it). The hybrid's feature map acts on the rotated q and k,
as in LoLCATs.

Conversion, as LoLCATs does it, with what our hybrid can train: (1) attention transfer: every
layer's hybrid attention is trained to reproduce that layer's softmax output (mean squared
error, the layer's input taken from the original model), the rest frozen; LoLCATs trains a
learnable feature map there, our phi is the fixed elu + 1, so what trains is what feeds it
(the q and k projections) and the per-head gates g_h; (2) fine-tuning on the language-model
loss, attention parameters only (q, k, v, o projections and the gates; LoLCATs uses LoRA on
the same four projections). The per-head gates learn GATE_LR times faster than the weights:
one logit per head has to travel several units where a weight moves about lr per step.
Each conversion runs with the normative gate gamma = sigmoid(g) and with the exp(g) variant
(evict_attention.py says why).
"""
import copy
import hashlib
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from evict_attention import attend  # noqa: E402

GATE_LR = 100.0  # the gates' learning rate over the weights' (see _run)

CORPUS_HELP = (
    "the corpus is tinyshakespeare (karpathy/char-rnn, data/tinyshakespeare/input.txt, "
    "1115394 bytes, sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed); "
    "it is not in the repository: put it at build/corpus/tinyshakespeare.txt, e.g. "
    "git -C <a clone of github.com/karpathy/char-rnn> show "
    "HEAD:data/tinyshakespeare/input.txt > build/corpus/tinyshakespeare.txt, or pass --corpus")


# ---------------------------------------------------------------------------- the corpus

class Corpus:
    """Characters of a text file as token ids; the first 90 % train, the rest validation."""

    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        self.path, self.sha256, self.bytes = path, hashlib.sha256(raw).hexdigest(), len(raw)
        text = raw.decode("utf-8")
        chars = sorted(set(text))
        self.vocab = len(chars)
        lut = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([lut[c] for c in text], dtype=torch.long)
        n = int(0.9 * len(data))
        self.train, self.val = data[:n], data[n:]

    def batch(self, B, L, gen):
        """B random training windows of L + 1 tokens: (inputs, next tokens)."""
        i = torch.randint(len(self.train) - L - 1, (B,), generator=gen)
        x = torch.stack([self.train[j:j + L + 1] for j in i.tolist()])
        return x[:, :-1], x[:, 1:]

    def val_windows(self, n, L):
        """n disjoint validation windows of L + 1 tokens (fewer if the split is short)."""
        n = min(n, (len(self.val) - 1) // L)
        x = torch.stack([self.val[j * L:j * L + L + 1] for j in range(n)])
        return x[:, :-1], x[:, 1:]

    def describe(self):
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes,
                "vocab": self.vocab, "train_tokens": len(self.train),
                "val_tokens": len(self.val), "level": "character"}


# ---------------------------------------------------------------------------- the model

class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(L, D, device, base=10000.0):
    """cos, sin [L, D] of rotary positions (rotate-half layout, as Llama)."""
    inv = 1.0 / base ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)
    ang = torch.arange(L, device=device, dtype=torch.float32)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    """q, k, v, o projections (no bias), rotary q and k, then the strategy; window_gate
    [H] holds the hybrid's logits g_h (0 = sigmoid 1/2, the library's default)."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(d, d, bias=False) for _ in range(4))
        self.window_gate = nn.Parameter(torch.zeros(heads))
        self.stats = None  # a list: the hybrid's evicted share per query (see attend)

    def forward(self, x, strategy, cos, sin, linear_fn=None):
        B, L, E = x.shape
        q, k, v = (p(x).reshape(B, L, self.heads, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if strategy.kind == "linear" and linear_fn is not None:
            o = linear_fn(q, k, v)
        elif strategy.kind == "hybrid" and strategy.impl == "library":
            from evict_library import lm_hybrid  # (the library only where asked for)
            o = lm_hybrid(q, k, v, strategy, self.window_gate)
        else:
            o = attend(q, k, v, strategy, self.window_gate, stats=self.stats)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, E))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        hidden = 64 * math.ceil(8 * d / 3 / 64)   # Llama's SwiGLU width, rounded
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, heads)
        self.w1, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x, strategy, cos, sin, linear_fn=None):
        x = x + self.attn(self.attn_norm(x), strategy, cos, sin, linear_fn)
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class LM(nn.Module):
    def __init__(self, vocab, d, heads, layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.heads = heads
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        for b in self.blocks:  # GPT-2's scaled init of the residual projections
            for w in (b.attn.o_proj.weight, b.w2.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * layers))

    def forward(self, x, strategy, linear_fn=None, capture=None):
        """Logits [B, L, vocab]. capture: a list that receives, per layer, the attention's
        input (after its norm) and output (the attention transfer's teacher)."""
        L = x.shape[1]
        cos, sin = rotary(L, self.emb.weight.shape[1] // self.heads, x.device)
        h = self.emb(x)
        for b in self.blocks:
            if capture is not None:
                a_in = b.attn_norm(h)
                capture.append((a_in, b.attn(a_in, strategy, cos, sin, linear_fn)))
            h = b(h, strategy, cos, sin, linear_fn)
        return self.head(self.norm(h))


# ---------------------------------------------------------------------------- training

def _lr(step, steps, warmup, lr):
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(p, 1.0))))


def _run(params, steps, seconds, lr, warmup, loss_fn, log, name, log_every, gates=()):
    """A generic AdamW loop; loss_fn(step) -> loss. gates: parameters that learn GATE_LR
    times faster (the hybrid's logits: one number per head, which has to travel a few
    units, where a weight moves by about lr per step). Returns the record."""
    groups = [{"params": params, "scale": 1.0}]
    if gates:
        groups.append({"params": list(gates), "scale": GATE_LR})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0 if name != "train" else 0.1,
                            betas=(0.9, 0.95))
    t0 = time.perf_counter()
    rows, step, loss = [], 0, float("nan")
    while step < steps and time.perf_counter() - t0 < seconds:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, warmup, lr) * g["scale"]
        loss_t = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        loss = float(loss_t)
        if not math.isfinite(loss):
            break
        if step == 1 or step % log_every == 0 or step == steps:
            rows.append({"step": step, "loss": round(loss, 5),
                         "seconds": round(time.perf_counter() - t0, 2)})
            log("  [%s] step %5d  loss %.4f  %6.1f s" % (name, step, loss, rows[-1]["seconds"]))
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "last_loss": loss,
            "status": "ok" if math.isfinite(loss) else "diverged", "log": rows}


def train_lm(model, corpus, cfg, device, full, log=print):
    """Trains the model with full attention. cfg: batch, ctx, steps, seconds, lr, warmup,
    seed, log_every."""
    gen = torch.Generator().manual_seed(cfg["seed"])

    def loss_fn(step):
        model.train()
        x, y = corpus.batch(cfg["batch"], cfg["ctx"], gen)
        x, y = x.to(device), y.to(device)
        return F.cross_entropy(model(x, full).flatten(0, 1), y.flatten())
    return _run(list(model.parameters()), cfg["steps"], cfg["seconds"], cfg["lr"], cfg["warmup"],
                loss_fn, log, "train", cfg["log_every"])


def attention_transfer(teacher, corpus, strategy, cfg, device, full, log=print):
    """LoLCATs' first stage on a copy of `teacher`: every layer's `strategy` attention is
    trained to reproduce that layer's softmax output (mean squared error over the output's
    mean square, the layer's input taken from the teacher), q and k projections and the
    gates only. cfg: batch, ctx, transfer_steps, transfer_lr, seconds, seed, log_every.
    Returns (student, record)."""
    student = copy.deepcopy(teacher)
    teacher.eval()
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    def loss_fn(step):
        student.train()
        x, _ = corpus.batch(cfg["batch"], cfg["ctx"], gen)
        x = x.to(device)
        pairs = []
        with torch.no_grad():
            teacher(x, full, capture=pairs)
        cos, sin = rotary(x.shape[1], teacher.emb.weight.shape[1] // teacher.heads, device)
        loss = 0.0
        for b, (a_in, a_out) in zip(student.blocks, pairs):
            loss = loss + F.mse_loss(b.attn(a_in, strategy, cos, sin), a_out) / \
                a_out.pow(2).mean()
        return loss / len(pairs)

    rec = _train_only(student, ("q_proj", "k_proj", "window_gate"), cfg["transfer_steps"],
                      cfg["seconds"], cfg["transfer_lr"], loss_fn, log, "transfer",
                      cfg["log_every"])
    return student, rec


def finetune(model, corpus, strategy, cfg, device, log=print):
    """LoLCATs' second stage on a copy of `model`: the language-model loss with `strategy`,
    attention parameters only (q, k, v, o and the gates). cfg: batch, ctx, finetune_steps,
    finetune_lr, seconds, seed, log_every. Returns (the tuned copy, record)."""
    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)

    def loss_fn(step):
        tuned.train()
        x, y = corpus.batch(cfg["batch"], cfg["ctx"], gen)
        x, y = x.to(device), y.to(device)
        return F.cross_entropy(tuned(x, strategy).flatten(0, 1), y.flatten())

    rec = _train_only(tuned, ("q_proj", "k_proj", "v_proj", "o_proj", "window_gate"),
                      cfg["finetune_steps"], cfg["seconds"], cfg["finetune_lr"], loss_fn, log,
                      "finetune", cfg["log_every"])
    return tuned, rec


def _train_only(model, names, steps, seconds, lr, loss_fn, log, tag, log_every):
    """Trains the named attention parameters of `model` in place, the rest frozen; adds
    the gates' sigmoid per layer to the record."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for b in model.blocks for n, p in b.attn.named_parameters()
              if n.split(".")[0] in names and n != "window_gate"]
    gates = [b.attn.window_gate for b in model.blocks] if "window_gate" in names else []
    for p in params + gates:
        p.requires_grad_(True)
    rec = _run(params, steps, seconds, lr, max(1, steps // 10), loss_fn, log, tag, log_every,
               gates)
    for p in model.parameters():
        p.requires_grad_(True)
    rec["window_gate_logits"] = [[round(float(g), 4) for g in b.attn.window_gate]
                                 for b in model.blocks]
    return rec


@torch.no_grad()
def position_nll(model, corpus, strategy, n, ctx, device, batch, linear_fn=None):
    """Mean next-token negative log-likelihood (nats) at every position of n validation
    windows of ctx tokens, and for the reference hybrid the evicted tokens' share of the
    attention weight at every position (mean over sequences, layers and heads; else None:
    the library's hybrid does not report it):
    (list of ctx floats, sequences, list of ctx floats or None)."""
    model.eval()
    x, y = corpus.val_windows(n, ctx)
    tot = torch.zeros(ctx, dtype=torch.float64)
    share = torch.zeros(ctx, dtype=torch.float64)
    shared = False
    for b in model.blocks:
        b.attn.stats = [] if strategy.kind == "hybrid" else None
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
        lg = model(xb, strategy, linear_fn).float()
        nll = F.cross_entropy(lg.flatten(0, 1), yb.flatten(), reduction="none")
        tot += nll.view(len(xb), ctx).sum(0).double().cpu()
        for b in model.blocks:
            if b.attn.stats:
                share += b.attn.stats.pop().sum((0, 1)).double().cpu()
                shared = True
    for b in model.blocks:
        b.attn.stats = None
    layers_heads = len(model.blocks) * model.heads
    return ((tot / len(x)).tolist(), len(x),
            (share / (len(x) * layers_heads)).tolist() if shared else None)
