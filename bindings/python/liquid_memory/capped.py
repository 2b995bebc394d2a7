"""
capped.py - LiquidMemory's decode state under a context cap (evaluation mode,
or a license with max_seq_len), kept in a StatePool of one slot per batch row.

A capped license takes no state whose position the library cannot verify
(docs/DESIGN.md §6.1), so the module's usual path, which carries S and z in
its own buffers through the core, is refused at step(). A pool's positions
are the library's, so under a cap the module's keep-state forward fills a
pool (packed prefill, one sequence per row) and step() decodes from it; the
module's state_S / state_z buffers are then the pool's memory (get_state
reads them). The uncapped path does not come here. module.py calls:
forward(m, ...) and step(m, x) when a cap applies, drop(m) whenever the
state is replaced or reset.
"""
import torch
import torch.nn.functional as F

from . import _core
from .engine import STATUS_OK, StatePool

_NAMES = {"feature_map": {v: k for k, v in _core.FEATURE_MAPS.items()},
          "precision": {v: k for k, v in _core.PRECISIONS.items()}}


def drop(m):
    """Forgets (and frees) the module's pool, if it has one."""
    cur = m._cursor
    pool, cur.pool = getattr(cur, "pool", None), None
    if pool is not None:
        pool.close()


def _new_pool(m, B, like):
    """A pool of B slots on like's device holding the module's initial state
    (bias_k / bias_v, add_zero_attn's zero key): (pool, its tokens)."""
    o = m._opts
    pool = StatePool(B, m.num_kv_heads, m.head_dim, device=like.device,
                     feature_map=_NAMES["feature_map"][o.feature_map], normalize=o.normalize,
                     eps=o.eps, scale=o.scale, decay=o.decay,
                     precision=_NAMES["precision"][o.precision])
    n = 0
    with torch.no_grad():
        k, v = m._extra_keys(B, like)
        if k is not None:
            n, H, D = k.shape[1], m.num_kv_heads, m.head_dim
            q = like.new_zeros((B * n, m.num_heads, D))  # outputs discarded
            pool.prefill(q, k.to(like.dtype).reshape(B * n, H, D),
                         v.to(like.dtype).reshape(B * n, H, D), list(range(0, B * n + 1, n)),
                         list(range(B)))
    return pool, n


def _install(m, pool, position):
    """Makes pool (one slot per batch row, `position` tokens) the module's state."""
    drop(m)
    m.state_S, m.state_z = pool.state, pool.normalizer
    cur = m._cursor
    cur.pool, cur.batch, cur.position = pool, pool.num_slots, position
    cur.slots = torch.arange(pool.num_slots, dtype=torch.int32, device=pool.device)


def forward(m, query, key, value, seq_first):
    """The causal keep-state forward (no mask, no autograd) through a new
    pool: returns out [B, L, E] (or [L, B, E] when seq_first), as
    LiquidMemory._attend's output would be."""
    q, k, v = m._project(query, key, value)
    q = m._heads(q, m.num_heads, seq_first)
    k = m._heads(k, m.num_kv_heads, seq_first)
    v = m._heads(v, m.num_kv_heads, seq_first)
    B, L = q.shape[0], q.shape[1]
    pool, n = _new_pool(m, B, q)
    packed = [t.reshape(B * L, t.shape[2], t.shape[3]) for t in (q, k, v)]
    o = pool.prefill(*packed, list(range(0, B * L + 1, L)), list(range(B)))
    _install(m, pool, n + L)  # only now: a refused forward leaves the state as it was
    o = o.view(B, L, m.embed_dim)
    if m.training and m.dropout > 0:
        o = F.dropout(o, p=m.dropout)
    if seq_first:
        o = o.transpose(0, 1)
    return F.linear(o, m.out_proj.weight, m.out_proj.bias)


def step(m, x):
    """LiquidMemory.step on the pool: x [B, E] -> [B, E]."""
    cur = m._cursor
    B = x.shape[0]
    if cur.batch and cur.batch != B:
        raise _core.StateError(
            "the decode state holds a batch of %d, but step() got a batch of %d: call "
            "reset_state() first" % (cur.batch, B))
    if cur.pool is None:
        _install(m, *_new_pool(m, B, x))
    pool = cur.pool
    H, Hkv, D = m.num_heads, m.num_kv_heads, m.head_dim
    qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias)
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    out, status = pool.decode(q.view(B, H, D), k.view(B, Hkv, D), v.view(B, Hkv, D), cur.slots)
    if (status != STATUS_OK).any():  # every row holds as many tokens: all refused, or none
        cap = _core.context_cap()
        raise _core.LicenseError(
            "LiquidMemory.step failed: LM_ERR_LICENSE: the decode state holds %d tokens, the "
            "license's context cap is %d per sequence; install a license without a cap (or "
            "with a higher one)" % (cur.position, cap), _core.C["LM_ERR_LICENSE"],
            "LM_ERR_LICENSE", None)
    cur.position += 1
    return F.linear(out.view(B, H * D), m.out_proj.weight, m.out_proj.bias)
