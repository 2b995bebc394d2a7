"""
evict_mqar.py - the recall half of bench/eviction_bench.py: Zoology's multi-query associative
recall task, a small model whose attention is any strategy of evict_attention.py (or the
library's LiquidMemory module), its training on a length curriculum, and its accuracy.

The task is zoology/data/multiquery_ar.py (HazyResearch/zoology, Arora et al. 2023) rewritten
in torch: P key-value pairs first (distinct keys, distinct values), then each of the P keys
once more as a query, at even offsets 2 * gap after the pairs with gap drawn without
replacement from a power law p(gap) ~ power_a * gap^(power_a - 1) (power_a = 0.01: most
queries come soon after the pairs, a long tail comes late); every other position is a
random token. The target at a query position is the value that followed its key; loss and
accuracy are taken there only (chance: 1 / (vocab / 4)).

One change from Zoology: its vocabulary is halved into keys and values and the random
tokens come from all of it, which with its 8192 symbols rarely repeats a key. Here the
vocabulary is small (a 2-core CPU cannot learn 8192 embeddings in minutes), and the same
draw would plant many false occurrences of the keys (at 4096 tokens and 128 symbols each key
about 30 times, each followed by a random token), making the recall ambiguous and more so
with length. So keys come from the first quarter, values from the second, and the random
tokens from the second half, a noise range no key or value shares.

The model is Zoology's MQAR model (two pre-LayerNorm blocks, each x += attn(shortconv(LN x)),
no positional information, no MLP: Zoology's state mixer is the identity; mlp=True adds
bench/train_demo.py's 4x GELU MLP after each), with the attention chosen per strategy.
"""
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
from train_demo import ShortConv  # noqa: E402


# ---------------------------------------------------------------------------- the task

def mqar_batch(B, L, num_pairs, vocab, gen, power_a=0.01):
    """(tokens [B, L], targets [B, L] with -100 off the query positions), Zoology's layout
    (random non-query tokens, one query per key): keys in [1, V/4), values in [V/4, V/2),
    random tokens in [V/2, V). Needs L >= 4 * num_pairs."""
    P = num_pairs
    context = 2 * P
    if L < 2 * context or L % 2:
        raise ValueError("MQAR needs an even length of at least 4 x num_pairs (%d), got %d"
                         % (2 * context, L))
    quarter, half = vocab // 4, vocab // 2
    if P > quarter - 1:
        raise ValueError("%d pairs need a vocabulary of at least %d" % (P, 4 * (P + 1)))
    keys = torch.rand(B, quarter - 1, generator=gen).argsort(1)[:, :P] + 1
    vals = torch.rand(B, half - quarter, generator=gen).argsort(1)[:, :P] + quarter
    space = (L - context) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(B, space), P, replacement=False,
                             generator=gen)
    tok = torch.randint(half, vocab, (B, L), generator=gen)   # the random non-query tokens
    tok[:, 0:context:2], tok[:, 1:context:2] = keys, vals
    where = context + 2 * gaps
    tok.scatter_(1, where, keys)
    tgt = torch.full((B, L), -100, dtype=torch.long)
    tgt.scatter_(1, where, vals)
    return tok, tgt


# ---------------------------------------------------------------------------- the model

class RefAttention(nn.Module):
    """Causal self-attention with nn.MultiheadAttention's parameters (in_proj_weight
    [3E, E], in_proj_bias, out_proj) plus the hybrid's window_gate [H] (the logits g_h,
    used by the hybrid strategy only), computing evict_attention.attend(strategy)."""

    def __init__(self, d, heads, strategy):
        super().__init__()
        self.heads, self.strategy = heads, strategy
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        self.window_gate = nn.Parameter(torch.zeros(heads))
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        B, L, E = x.shape
        q, k, v = (t.reshape(B, L, self.heads, -1).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        o = attend(q, k, v, self.strategy, self.window_gate)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, E))


class LibAttention(nn.Module):
    """The library's LiquidMemory module (linear, or the hybrid mode where the library has
    it) behind the same call as RefAttention."""

    def __init__(self, d, heads, strategy):
        super().__init__()
        from liquid_memory import LiquidMemory
        self.strategy = strategy
        opts = {} if strategy.kind == "linear" else \
            {"attention": "hybrid", "window": strategy.window, "sinks": strategy.sinks}
        self.attn = LiquidMemory(d, heads, batch_first=True, **opts)

    def forward(self, x):
        return self.attn(x, x, x, is_causal=True, need_weights=False)[0]


class Model(nn.Module):
    def __init__(self, vocab, d, heads, strategy, library=False, layers=2, mlp=False):
        super().__init__()
        make = LibAttention if library else RefAttention
        self.emb = nn.Embedding(vocab, d)
        self.ln1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.conv = nn.ModuleList(ShortConv(d) for _ in range(layers))
        self.attn = nn.ModuleList(make(d, heads, strategy) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(),
                                               nn.Linear(4 * d, d)) for _ in range(layers)) \
            if mlp else None
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def set_strategy(self, strategy):
        """Inference-time eviction: the same weights, another strategy (RefAttention only)."""
        for a in self.attn:
            a.strategy = strategy

    def forward(self, tok, tgt):
        """Logits at the query positions only ([N, vocab]) and their targets [N]."""
        x = self.emb(tok)
        for i in range(len(self.attn)):
            x = x + self.attn[i](self.conv[i](self.ln1[i](x)))
            if self.mlp is not None:
                x = x + self.mlp[i](x)
        sel = tgt != -100
        return self.head(self.ln(x[sel])), tgt[sel]


# ---------------------------------------------------------------------------- training

class Curriculum:
    """The training length: start, doubled once `grow` steps were taken at the current
    length and the mean accuracy of the last 20 steps reached `ready` (or after 3 x grow
    steps regardless, so a model that cannot reach it still sees every length), at most
    end. The recall is learned at the short, cheap lengths, then carried."""

    def __init__(self, start, end, grow, ready=0.9):
        self.L, self.end, self.grow, self.ready, self.steps = start, end, grow, ready, 0

    def advance(self, accuracy20):
        self.steps += 1
        if self.L < self.end and self.steps >= self.grow and (
                accuracy20 >= self.ready or self.steps >= 3 * self.grow):
            self.L, self.steps = min(self.end, 2 * self.L), 0


def train(model, cfg, device, log=print, windows=None):
    """AdamW with a linear warm-up, batches drawn fresh each step at the curriculum's
    length. cfg: dict with steps, seconds, batch, lr, warmup, weight_decay, start_len,
    train_len, grow_steps, num_pairs, vocab, seed, log_every, stop_accuracy (stop once at
    the last length with the mean accuracy of the last 20 steps at least this; 0 = never).
    windows: strategies taken in turn, one per step (the hybrid trained over every budget at
    once). Returns the run's record."""
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg["warmup"], 1)))
    cur = Curriculum(cfg["start_len"], cfg["train_len"], cfg["grow_steps"])
    t0 = time.perf_counter()
    log_rows, recent, status = [], [], "ok"
    step = 0
    while step < cfg["steps"] and time.perf_counter() - t0 < cfg["seconds"]:
        L = cur.L
        tok, tgt = mqar_batch(cfg["batch"], L, cfg["num_pairs"], cfg["vocab"], gen,
                              cfg.get("power_a", 0.01))
        if windows:
            model.set_strategy(windows[step % len(windows)])
        model.train()
        logits, t = model(tok.to(device), tgt.to(device))
        loss = F.cross_entropy(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        lv, acc = float(loss), float((logits.argmax(-1) == t).float().mean())
        if not math.isfinite(lv):
            status = "diverged at step %d" % step
            break
        recent = (recent + [acc])[-20:]
        acc20 = sum(recent) / len(recent)
        done = 0 < cfg.get("stop_accuracy", 0) <= acc20 and L == cfg["train_len"] and \
            len(recent) == 20
        if step == 1 or step % cfg["log_every"] == 0 or step == cfg["steps"] or done:
            row = {"step": step, "seq_len": L, "loss": round(lv, 5),
                   "accuracy_mean20": round(acc20, 5),
                   "seconds": round(time.perf_counter() - t0, 2)}
            log_rows.append(row)
            log("  step %5d  L %4d  loss %.4f  accuracy (last 20) %5.1f%%  %6.1f s"
                % (step, L, lv, 100 * acc20, row["seconds"]))
        if done:
            status = "ok, stopped at %.0f %% accuracy" % (100 * cfg["stop_accuracy"])
            break
        cur.advance(acc20)
    return {"status": status, "steps": step, "train_seconds": round(time.perf_counter() - t0, 2),
            "final_length": L, "final_train_accuracy_mean20": sum(recent) / max(len(recent), 1),
            "log": log_rows}


@torch.no_grad()
def accuracy(model, L, n, cfg, device, batch):
    """Accuracy at the query positions of n fixed sequences of length L (their own seed,
    the same sequences for every model and strategy)."""
    model.eval()
    gen = torch.Generator().manual_seed(10_000 + cfg["seed"] + L)
    right = total = 0
    done = 0
    while done < n:
        b = min(batch, n - done)
        tok, tgt = mqar_batch(b, L, cfg["num_pairs"], cfg["vocab"], gen,
                              cfg.get("power_a", 0.01))
        logits, t = model(tok.to(device), tgt.to(device))
        right += int((logits.argmax(-1) == t).sum())
        total += t.numel()
        done += b
    return right / total, total
