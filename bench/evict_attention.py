"""
evict_attention.py - the attention strategies that bench/eviction_bench.py compares, in pure
PyTorch (any device, differentiable), and the bytes each keeps per sequence per layer at decode.

Every function takes q, k, v as [B, H, L, D] (causal self-attention, scale = 1/sqrt(D)) and
returns the attention output [B, H, L, D]. A "budget" is the number of exact K/V entries a
strategy attends to at a decode step, the current token included:

  full       softmax over every j <= t (the budget is the context).
  streaming  StreamingLLM (Xiao et al. 2023): softmax over the s sinks and the last W tokens,
             Win_t = {j <= t : j < s or j > t - W}; everything else is dropped. B = s + W.
  h2o        H2O (Zhang et al. 2023): B/2 "heavy hitters" (the cached tokens with the largest
             attention accumulated over all queries so far) and the B/2 most recent tokens. A
             greedy decode-time policy, so it is simulated token by token (h2o_attention).
  linear     normalised linear attention, phi = elu + 1 (DESIGN.md §2):
             o_t = sum_j phi(q_t).phi(k_j) v_j / (sum_j phi(q_t).phi(k_j) + eps).
  hybrid     issue #16's normative hybrid (DESIGN.md §9.1): exact softmax weights
             a_j = sigmoid(g_h) exp(scale q_t.k_j - m_t) on Win_t (m_t = their max), linear
             weights b_j = phi(q_t).phi(k_j) on Ev_t (every other j <= t), o_t = (sum a v +
             sum b v) / (sum a + sum b + eps). B = s + W.
             Variant (gate="exp"): gamma_h = exp(g_h), unbounded. With sigmoid the window's
             weights are at most 1 each, while an evicted token's phi(q).phi(k) is about 1
             per feature whose input has no fixed sign (rotary positions give most of them
             none); a model converted from softmax then cannot make the evicted tokens weigh
             less than the window, and the exp gate lets it (bench/NOTES.md).

The windowed softmax runs over blocks of queries against only the keys they can see (sinks
plus a band), so streaming and hybrid cost O(L (s + W)); the evicted part of the hybrid is
causal linear attention with the keys delayed by W positions (key j enters the state when
the query reaches j + W), computed chunk by chunk with a carried state.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("full", "streaming", "h2o", "linear", "hybrid")
EPS = 1e-6


@dataclass(frozen=True)
class Strategy:
    """One attention strategy and its cache split. budget 0 = not bounded (full) or no
    exact entries (linear)."""
    kind: str
    budget: int = 0
    sinks: int = 0
    window: int = 0
    heavy: int = 0
    recent: int = 0
    gate: str = "sigmoid"   # hybrid: gamma_h = sigmoid(g_h) (normative) or exp(g_h) (a variant)
    impl: str = "reference"  # hybrid: this module's attend, or "library" (evict_library.py)


    def label(self):
        if self.kind in ("streaming", "hybrid"):
            return "%s%s B=%d (s=%d, W=%d)" % (
                self.kind, ", gate exp(g)" if self.gate == "exp" else "", self.budget,
                self.sinks, self.window)
        if self.kind == "h2o":
            return "h2o B=%d (heavy %d, recent %d)" % (self.budget, self.heavy, self.recent)
        return self.kind

    def describe(self):
        return {"strategy": self.kind, "cache_size": self.budget or None,
                "window": self.window or None, "sinks": self.sinks if self.window else None,
                "heavy_hitters": self.heavy if self.kind == "h2o" else None,
                "recent": self.recent if self.kind == "h2o" else None,
                "gate": ("sigmoid(g)" if self.gate == "sigmoid" else "exp(g)")
                if self.kind == "hybrid" else None}


def make_strategy(kind, budget=0, sinks=4, gate="sigmoid", impl="reference"):
    """The split of a budget B: streaming and hybrid keep s = min(sinks, B - 1) sinks and a
    window W = B - s; h2o keeps B // 2 heavy hitters and B - B // 2 recent tokens (as the
    H2O paper's equal split). full and linear ignore the budget. impl (hybrid): who
    computes it, "reference" (attend below) or "library" (evict_lm runs the library's
    liquid_memory.hybrid_attention, window_gate_form = gate)."""
    if kind not in KINDS:
        raise ValueError("unknown strategy %r (one of %s)" % (kind, ", ".join(KINDS)))
    if kind in ("full", "linear"):
        return Strategy(kind)
    if budget < 2:
        raise ValueError("%s needs a budget of at least 2 entries, got %d" % (kind, budget))
    if kind == "h2o":
        return Strategy(kind, budget, heavy=budget // 2, recent=budget - budget // 2)
    s = min(sinks, budget - 1)
    return Strategy(kind, budget, sinks=s, window=budget - s, gate=gate,
                    impl=impl if kind == "hybrid" else "reference")


def phi(x):
    """The library's default feature map, elu(x) + 1."""
    return F.elu(x) + 1.0


# ---------------------------------------------------------------------------- the parts

def _query_block(B, H, keys, device):
    """Queries per block so that one block's scores stay within 4M elements on the CPU
    (16 MB: glibc serves that from its heap; larger blocks went to fresh mmaps whose page
    faults made full attention at 2048 tokens 25x slower than at 1024), 128M on a GPU,
    where fewer, larger kernels are what matters."""
    limit = 1 << (27 if device.type == "cuda" else 22)
    blk = 256 if device.type != "cuda" else 4096
    while blk > 1 and B * H * blk * (keys + blk) > limit:
        blk //= 2
    return blk


def window_parts(q, k, v, sinks, window):
    """Softmax over Win_t = {j <= t : j < sinks or j > t - window}: (out, den), out_t the
    normalised average of v over Win_t and den_t = sum exp(s_j - m_t), m_t the row's max
    (j = t is always in Win_t, so m_t is finite), so that the unnormalised sum is den * out.
    window >= L gives full causal attention. One fused softmax per block, den read off it
    as 1 / max_j p_j (the max's weight is exp(0) / den), so a block's scores are written
    once, masked in place, and read three times."""
    B, H, L, D = q.shape
    q = q * (1.0 / math.sqrt(D))
    window = min(window, L)
    blk = _query_block(B, H, min(L, sinks + window), q.device)
    outs, dens = [], []
    for t0 in range(0, L, blk):
        t1 = min(L, t0 + blk)
        lo = min(t1, max(sinks, t0 - window + 1))  # the band starts after the sinks
        ns = min(sinks, t1)
        idx = torch.cat([torch.arange(ns), torch.arange(lo, t1)]).to(q.device)
        if lo == ns:  # one contiguous range (full attention, or the window reaches the sinks)
            kk, vv = k[:, :, :t1], v[:, :, :t1]
        else:
            kk, vv = k.index_select(2, idx), v.index_select(2, idx)
        s = torch.matmul(q[:, :, t0:t1], kk.transpose(-1, -2))
        t = torch.arange(t0, t1, device=q.device)[:, None]
        j = idx[None, :]
        drop = (j > t) | ((j >= sinks) & (j <= t - window))
        s.masked_fill_(drop, float("-inf"))
        p = torch.softmax(s, -1)
        outs.append(torch.matmul(p, vv))
        dens.append(1.0 / p.amax(-1, keepdim=True))
    return torch.cat(outs, 2), torch.cat(dens, 2)


def linear_parts(q, k, v, lag=0, sinks=0, chunk=64):
    """(num, den) = sum over {sinks <= j <= t - lag} of phi(q_t).phi(k_j) [v_j, 1]: causal
    linear attention whose keys enter the state `lag` positions late (the hybrid's evicted
    set Ev_t with lag = W), chunked: exact products inside a chunk, the carried state across
    chunks (fp32 sums over at most L / chunk states)."""
    B, H, L, D = q.shape
    fq, fk = phi(q), phi(k)
    vv = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    if lag:  # position i of the delayed sequence holds key i - lag
        fk = F.pad(fk, (0, 0, lag, 0))[:, :, :L]
        vv = F.pad(vv, (0, 0, lag, 0))[:, :, :L]
    if sinks:  # the sinks stay exact: never in the linear state
        keep = (torch.arange(L, device=q.device) >= sinks + lag).to(fk.dtype)[:, None]
        fk = fk * keep
    n = -(-L // chunk)
    pad = n * chunk - L
    if pad:
        fq, fk, vv = (F.pad(x, (0, 0, 0, pad)) for x in (fq, fk, vv))
    fq = fq.reshape(B, H, n, chunk, D)
    fk = fk.reshape(B, H, n, chunk, D)
    vv = vv.reshape(B, H, n, chunk, vv.shape[-1])
    inner = torch.matmul(fq, fk.transpose(-1, -2)).tril()
    out = torch.matmul(inner, vv)
    kv = torch.matmul(fk.transpose(-1, -2), vv)            # [B, H, n, D, Dv + 1]
    before = torch.cumsum(kv, 2) - kv                        # the state before each chunk
    out = out + torch.matmul(fq, before)
    out = out.reshape(B, H, n * chunk, -1)[:, :, :L]
    return out[..., :-1], out[..., -1:]


def h2o_attention(q, k, v, heavy, recent):
    """H2O, simulated as decode: at step t the cache holds at most B = heavy + recent
    entries including token t. Before token t enters a full cache, the entry with the least
    accumulated attention among those older than the last `recent - 1` tokens is evicted;
    then token t attends over the cache and every entry's accumulated attention grows by
    the weight it just received. Vectorised over batch and heads, sequential over t; an
    inference-time policy, so the cache is updated in place (no autograd through it)."""
    B, H, L, D = q.shape
    budget = heavy + recent
    scale = 1.0 / math.sqrt(D)
    Kc = q.new_zeros(B, H, budget, D)
    Vc = q.new_zeros(B, H, budget, v.shape[-1])
    acc = q.new_zeros(B, H, budget)
    pos = torch.full((B, H, budget), -1, dtype=torch.long, device=q.device)
    outs = []
    big = torch.finfo(q.dtype).max
    for t in range(L):
        if t < budget:
            slot = torch.full((B, H, 1), t, dtype=torch.long, device=q.device)
        else:  # evict: the least accumulated attention outside the recent tokens
            old = pos <= t - recent
            slot = torch.where(old, acc, acc.new_full((), big)).argmin(-1, keepdim=True)
        Kc.scatter_(2, slot[..., None].expand(B, H, 1, D), k[:, :, t:t + 1])
        Vc.scatter_(2, slot[..., None].expand(B, H, 1, v.shape[-1]), v[:, :, t:t + 1])
        acc.scatter_(2, slot, 0.0)
        pos.scatter_(2, slot, t)
        s = torch.matmul(Kc, q[:, :, t, :, None])[..., 0] * scale
        s = s.masked_fill(pos < 0, float("-inf"))
        w = torch.softmax(s, -1)
        acc += w
        outs.append(torch.matmul(w[:, :, None], Vc))
    return torch.cat(outs, 2)


# ---------------------------------------------------------------------------- dispatch

def attend(q, k, v, strategy, gate=None, eps=EPS, stats=None):
    """The strategy's output for q, k, v [B, H, L, D]. gate: the hybrid's per-head logits
    g_h [H] (None = 0: gamma = sigmoid(0) = 1/2, or exp(0) = 1 in the exp variant).
    stats: a list that receives, for the hybrid, the evicted tokens' share of each query's
    total weight, sum_Ev b / (sum_Win a + sum_Ev b + eps), as [B, H, L] (a diagnostic)."""
    kind = strategy.kind
    L = q.shape[2]
    if kind == "full":
        return window_parts(q, k, v, 0, L)[0]
    if kind == "streaming":
        return window_parts(q, k, v, strategy.sinks, strategy.window)[0]
    if kind == "h2o":
        return h2o_attention(q, k, v, strategy.heavy, strategy.recent)
    if kind == "linear":
        num, den = linear_parts(q, k, v)
        return num / (den + eps)
    if kind == "hybrid":
        ow, dw = window_parts(q, k, v, strategy.sinks, strategy.window)
        nw = ow * dw
        nl, dl = linear_parts(q, k, v, strategy.window, strategy.sinks)
        g = torch.zeros(q.shape[1], device=q.device) if gate is None else gate
        g = (torch.sigmoid if strategy.gate == "sigmoid" else torch.exp)(g.to(q.dtype))
        g = g.view(1, -1, 1, 1)
        total = g * dw + dl + eps
        if stats is not None:
            stats.append((dl / total)[..., 0].detach())
        return (g * nw + nl) / total
    raise ValueError("unknown strategy %r" % (kind,))


# ---------------------------------------------------------------------------- memory

def decode_bytes(strategy, context, heads, head_dim, kv_bytes, state_bytes=4):
    """Bytes one sequence keeps per layer at a decode step after `context` tokens:
    K/V entries x 2 x heads x head_dim x kv_bytes, plus for linear and hybrid the fp32
    state S [H, D, D] and normaliser z [H, D], plus for h2o one fp32 accumulated score per
    cached entry and head (its eviction needs them). Returns a dict of the parts and total."""
    kind = strategy.kind
    entries = context if kind == "full" else 0 if kind == "linear" else \
        min(context, strategy.budget)
    kv = entries * 2 * heads * head_dim * kv_bytes
    state = heads * head_dim * (head_dim + 1) * state_bytes if kind in ("linear", "hybrid") else 0
    scores = entries * heads * state_bytes if kind == "h2o" else 0
    return {"kv_entries": entries, "kv_bytes": kv, "state_bytes": state,
            "score_bytes": scores, "total_bytes": kv + state + scores}
