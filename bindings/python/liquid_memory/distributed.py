"""
distributed.py - context parallelism: one sequence split over the ranks of a
torch.distributed group (NCCL on GPUs, gloo on CPUs), each rank holding a
contiguous segment in rank order, every rank getting exactly the output of
its segment that one process over the whole sequence would compute.

Linear attention carries the past in a state of fixed size, so ranks only
exchange states, never keys or values. Causal (decay g per kv head):
  1. absorb: each rank folds its segment's keys into a state from zero,
       A_r = sum_s g^(L_r-1-s) phi(k_s) v_s^T,  a_r likewise
     (lm_linear_attn_absorb: the state update alone, no queries, no outputs);
  2. all_gather of (A_r, a_r, L_r): 4 (Dk Dv + Dk) bytes per batch row and kv
     head whatever the length (2 MiB per layer at 32 kv heads of 128);
  3. each rank's exclusive prefix, P_r = sum_{i<r} (prod_{i<m<r} g^L_m) A_i
     (an initial state S0 sits before rank 0);
  4. the ordinary prefill of the segment from P_r (position = tokens before
     it): normalised or not, the outputs are those of the single pass.
  Backward: the core backward from P_r gives dq, dk, dv and dP_r; all_gather
  of the dP; G_r = sum_{m>r} (prod_{r<j<m} g^L_j) dP_m is the gradient of A_r,
  whose own backward is local (two batched matmuls per block of tokens):
    dv_s = w_s G^T phi(k_s),  dk_s = phi'(k_s) w_s (G v_s + G_z),  w_s = g^(L_r-1-s).
Bidirectional and cross-attention: all_reduce (sum) of the A_r, then each
rank reads its queries out against the total; backward: all_reduce of dS.

Gradients follow data-parallel conventions: each rank's loss is its own, the
total loss is their sum, so gradients of replicated parameters are summed
over the group afterwards (DDP / FSDP over the same ranks do it). An initial
state (replicated) gets its whole gradient on rank 0 and zero elsewhere; the
final state, replicated on every rank, may feed every rank's loss.

At world size 1 (or when torch.distributed is not initialised and no group is
given) this is the plain single-process path: no absorb, no collective.
Eager only: torch.compile sees the collectives as a graph break.

Hybrid attention (docs/DESIGN.md section 9: exact softmax over the sinks
0..s-1 and the last W tokens, the evicted tokens in a linear state; causal, no
decay), forward only. Rank r needs the hybrid state at its start P_r: the
sinks, the window P_r-W .. P_r-1 (several ranks back when segments are shorter
than W) and S, z over the evicted tokens s .. P_r-W-1. Each rank splits its
segment of L tokens into
  head  rows [0, c0), c0 = min(L, s)        (the sequence's sinks, if any)
  core  rows [c0, c1), c1 = max(c0, L - W)
  tail  rows [c1, L)                        (at most W)
Every core token lies at a position >= s and < (end of segment) - W, so it is
evicted for every later rank and never a sink: the rank folds its core into a
state from zero (lm_linear_attn_absorb, scale-free phi(k) v^T sums). One
all_gather exchanges the core states, the head and tail rows (keys, values in
fp32, exact; mask flags; padded to s + W rows) and L: hybrid_state_bytes(...)
per rank. Every sink and every window position before P_r is a head or tail
row of an earlier rank, so rank r assembles its state from the pieces of the
ranks before it: S, z = the sum of their core states plus their shared rows
at positions s <= p < P_r - W (folded by one local absorb, masked keys
skipped); the shared rows at p < s go to sink slot p, the others (p >= P_r - W)
to ring slot s + p mod W, with positions coded as HybridState says. Then the
C core's hybrid prefill of the segment runs from that state (position P_r).
Every rank assembles the state after the whole sequence (P = N) the same way
for return_state / the module's step(). No backward: the core has none in
hybrid mode, and the differentiable composition (hybrid.py) starts from an
empty state, not from the state before a segment; a backward through the
multi-rank forward raises UnsupportedError (at world size 1 it is the plain,
differentiable hybrid_attention).
"""
import torch
import torch.distributed as dist

from . import _core, _ops
from . import hybrid as _hybrid
from .functional import _check_qkv, _state_pair, make_options

__all__ = ["linear_attention", "hybrid_attention", "prefill", "hybrid_prefill", "total",
           "state_bytes", "hybrid_state_bytes"]

# The _core.Options fields linear context parallelism handles (and `key`, the
# call plans' id of a set of values): a new kind of attention carried in a new
# field must add its own exchange first (hybrid's window and sinks travel
# beside the Options, to hybrid_prefill).
_LINEAR_OPTIONS = ("feature_map", "normalize", "eps", "scale", "decay", "precision", "key")

# Token blocks of the local absorb backward: about this many elements of a
# [B, T, Hkv, D] temporary at a time.
_BLOCK_ELEMS = 1 << 24


def _world(group):
    """(rank, size) in group; (0, 1) without one."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def total(group, n, device):
    """The sum of n over the group's ranks (n itself without a group)."""
    if _world(group)[1] == 1:
        return n
    t = _encode([n], device)
    dist.all_reduce(t, group=group)
    return int(_decode(t).item())


def state_bytes(batch, num_kv_heads, dk, dv):
    """Bytes one rank contributes to the state exchange of one causal forward
    (the backward exchanges as much again): fp32 S and z per batch row and kv
    head, plus the segment length."""
    return 4 * (batch * num_kv_heads * (dk * dv + dk) + 4 + 4 * batch)


# ---------------------------------------------------------------------------
# Exact integers through an fp32 collective
# ---------------------------------------------------------------------------

def _encode(counts, device):
    """Integers < 2^48 as four fp32 digits of base 2^12: exact, and so are
    their sums over up to 4096 ranks (all_reduce), every digit sum < 2^24."""
    vals = []
    for n in counts:
        vals += [float((n >> sh) & 0xFFF) for sh in (36, 24, 12, 0)]
    return torch.tensor(vals, dtype=torch.float32, device=device)


def _decode(t):
    """Inverse of _encode on a 1-d tensor: float64 on its device."""
    t = t.double().view(-1, 4)
    return ((t[:, 0] * 4096.0 + t[:, 1]) * 4096.0 + t[:, 2]) * 4096.0 + t[:, 3]


def _decay_steps(mask, B, L):
    """Steps of the recurrence each batch row's state takes over L tokens:
    its unmasked keys (a masked key is no step: it neither adds to nor decays
    the state, docs/DESIGN.md section 2)."""
    if mask is None:
        return [L] * B
    return [int(n) for n in (~mask[:, :L]).sum(dim=1).tolist()]


def _key_weights(mask, decay, B, t0, t1, L, device):
    """w[b, s, h] = g_h^(steps after s) for tokens s in [t0, t1) of a segment
    of L, 0 where masked: the weight of key s in the segment's absorbed state
    (steps counted as _decay_steps does: unmasked keys only)."""
    if decay is None:
        w = torch.ones((1, t1 - t0, 1), dtype=torch.float64, device=device)
    else:
        g = torch.tensor(decay, dtype=torch.float64, device=device)
        if mask is None:
            after = (L - 1 - torch.arange(t0, t1, device=device, dtype=torch.float64))[None, :]
        else:
            kept = (~mask[:, :L]).to(torch.float64)
            suffix = kept.flip(1).cumsum(1).flip(1)  # unmasked keys at s and after
            after = suffix[:, t0:t1] - kept[:, t0:t1]
        w = torch.pow(g[None, None, :], after[:, :, None])
    w = w.expand(B, t1 - t0, w.shape[2]).float()
    if mask is not None:
        w = w * (~mask[:, t0:t1]).float()[:, :, None]
    return w


# ---------------------------------------------------------------------------
# Feature map and its derivative (matching the C core's, from fp32 inputs)
# ---------------------------------------------------------------------------

def _phi_and_grad(x, fm):
    """phi(x), phi'(x) in fp32."""
    C = _core.C
    if fm == C["LM_FEATURE_ELU1"]:
        e = torch.exp(torch.clamp(x, max=0.0))
        return torch.where(x > 0, x + 1.0, e), torch.where(x > 0, torch.ones_like(x), e)
    if fm == C["LM_FEATURE_RELU"]:
        return torch.relu(x), (x > 0).float()
    return x, torch.ones_like(x)


def _absorb_backward(k, v, mask, G, Gz, opts, dk, dv):
    """Adds to dk, dv the gradient that G (dS), Gz (dz) of the absorbed
    state A = sum_s w_s phi(k_s) v_s^T, a = sum_s w_s phi(k_s) send back.
    The two products run in the inputs' dtype (16-bit types: on the tensor
    cores, G and the products rounded once each, about 2^-9; the sums with
    the core's gradients are fp32, rounded to the dtype once)."""
    B, L, Hkv, Dk = k.shape
    Dv = v.shape[3]
    step = max(1, _BLOCK_ELEMS // max(1, B * Hkv * max(Dk, Dv)))
    Gc, Gtc = G.to(k.dtype), G.transpose(2, 3).to(k.dtype)
    for t0 in range(0, L, step):
        t1 = min(L, t0 + step)
        w = _key_weights(mask, opts.decay, B, t0, t1, L, k.device)[..., None]  # [B, T, Hkv, 1]
        phi, dphi = _phi_and_grad(k[:, t0:t1].float(), opts.feature_map)
        gv = torch.einsum("bthd,bhde->bthe", phi.to(k.dtype), Gc).float()
        gk = torch.einsum("bthe,bhed->bthd", v[:, t0:t1], Gtc).float()
        dv[:, t0:t1] = (dv[:, t0:t1].float() + w * gv).to(dv.dtype)
        dk[:, t0:t1] = (dk[:, t0:t1].float() + dphi * w * (gk + Gz[:, None])).to(dk.dtype)


# ---------------------------------------------------------------------------
# The autograd functions
# ---------------------------------------------------------------------------

class _Setup:
    """What both passes need besides tensors (plain values)."""

    def __init__(self, group, rank, world, opts, position, seq_first, want_state, has_S0):
        self.group, self.rank, self.world = group, rank, world
        self.opts, self.position, self.seq_first = opts, position, seq_first
        self.want_state, self.has_S0 = want_state, has_S0


def _flat(*ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _gather(buf, group, world):
    out = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(out, buf.contiguous(), group=group)
    return out


def _zero_state(B, Hkv, Dk, Dv, device):
    return (torch.zeros((B, Hkv, Dk, Dv), dtype=torch.float32, device=device),
            torch.zeros((B, Hkv, Dk), dtype=torch.float32, device=device))


def _absorbed(k, v, mask, opts):
    """This rank's keys folded into a state from zero (lm_linear_attn_absorb)."""
    B, L, Hkv, Dk = k.shape
    A, a = _zero_state(B, Hkv, Dk, v.shape[3], k.device)
    if L:
        _core.absorb(k, v, mask, A, a, 0, opts)
    return A, a


def _empty(x):
    return x.new_empty((0,), dtype=torch.float32)


def _out_like(q, Dv, seq_first):
    B, L, Hq = q.shape[0], q.shape[1], q.shape[2]
    if seq_first:
        return q.new_zeros((L, B, Hq, Dv)).transpose(0, 1)
    return q.new_zeros((B, L, Hq, Dv))


def _auto_precision(opts, tokens):
    """As one pass over `tokens` would: compensated from the first token when
    the whole context passes LM_PRECISION_AUTO_TOKENS (as the module's slabs)."""
    C = _core.C
    if opts.precision == C["LM_PRECISION_AUTO"] and tokens > C["LM_PRECISION_AUTO_TOKENS"]:
        return _core.Options(opts.feature_map, opts.normalize, opts.eps, opts.scale, opts.decay,
                             C["LM_PRECISION_ON"])
    return opts


class _Causal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, S0, z0, su):
        B, L, Hkv, Dk = k.shape
        Dv = v.shape[3]
        dev = q.device
        A, a = _absorbed(k, v, mask, su.opts)
        meta = _encode([L] + _decay_steps(mask, B, L), dev)
        parts = _gather(_flat(A, a, meta), su.group, su.world)
        nS, nz = A.numel(), a.numel()
        counts = [_decode(p[nS + nz:]) for p in parts]
        lengths = [int(n) for n in torch.stack([c[0] for c in counts]).tolist()]
        # Decay of each rank's whole segment: f[i][b, h] = g_h^steps_i[b] (float64 pow).
        g = torch.tensor(su.opts.decay, dtype=torch.float64, device=dev) if su.opts.decay else None
        f = [None if g is None else torch.pow(g[None, :], c[1:, None]).float()[..., None]
             for c in counts]
        run = (S0.float(), z0.float()) if S0 is not None else _zero_state(B, Hkv, Dk, Dv, dev)
        P = None
        for i, p in enumerate(parts + [None]):
            if i == su.rank:
                P = (run[0].clone(), run[1].clone())
            if p is None:
                break
            Ai, ai = p[:nS].view(B, Hkv, Dk, Dv), p[nS:nS + nz].view(B, Hkv, Dk)
            if f[i] is not None:
                run = (run[0] * f[i][..., None] + Ai, run[1] * f[i] + ai)
            else:
                run = (run[0] + Ai, run[1] + ai)
        before = su.position + sum(lengths[:su.rank])
        opts = _auto_precision(su.opts, su.position + sum(lengths))
        if L:
            out, _, _ = _core.prefill(q, k, v, mask, P[0], P[1], before, True, opts, su.seq_first)
        else:
            out = _out_like(q, Dv, su.seq_first)
        ctx.save_for_backward(q, k, v, mask, P[0], P[1])
        ctx.su, ctx.f, ctx.before, ctx.opts = su, f, before, opts
        if su.want_state:
            return out, run[0], run[1]
        S, z = _empty(q), _empty(q)
        ctx.mark_non_differentiable(S, z)
        return out, S, z

    @staticmethod
    def backward(ctx, dout, dF, dFz):
        q, k, v, mask, P, Pz = ctx.saved_tensors
        su, f = ctx.su, ctx.f
        B, L, Hkv, Dk = k.shape
        Dv = v.shape[3]
        dev = q.device
        if L:
            if dout.stride(-1) != 1:
                dout = dout.contiguous()
            dq, dk, dv, dP, dPz = _core.backward(dout, q, k, v, mask, P, Pz, None, None, ctx.before,
                                                 True, ctx.opts, need_dstate=True)
        else:
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
            dP, dPz = _zero_state(B, Hkv, Dk, Dv, dev)
        pieces = [dP, dPz]
        if su.want_state:
            pieces += [dF if dF is not None and dF.numel() else torch.zeros_like(dP),
                       dFz if dFz is not None and dFz.numel() else torch.zeros_like(dPz)]
        parts = _gather(_flat(*pieces), su.group, su.world)
        nS, nz = dP.numel(), dPz.numel()

        def grad(i, off):  # rank i's piece at offset off: (S part, z part)
            p = parts[i][off:off + nS + nz]
            return p[:nS].view(B, Hkv, Dk, Dv), p[nS:].view(B, Hkv, Dk)

        # G_m, the gradient of rank m's absorbed state: G_{R-1} = the final
        # state's (summed over ranks), G_{m-1} = dP_m + f_m G_m; G_{-1} is S0's.
        G, Gz = _zero_state(B, Hkv, Dk, Dv, dev)
        if su.want_state:
            for i in range(su.world):
                dS_i, dz_i = grad(i, nS + nz)
                G, Gz = G + dS_i, Gz + dz_i
        for m in range(su.world - 1, su.rank - 1, -1):
            if m == su.rank and L:
                _absorb_backward(k, v, mask, G, Gz, su.opts, dk, dv)
            dP_m, dPz_m = grad(m, 0)
            if f[m] is not None:
                G, Gz = dP_m + f[m][..., None] * G, dPz_m + f[m] * Gz
            else:
                G, Gz = dP_m + G, dPz_m + Gz
        dS0 = dz0 = None
        if su.has_S0:
            if su.rank == 0:
                dS0, dz0 = G, Gz  # the gradient before rank 0's segment
            else:
                dS0, dz0 = _zero_state(B, Hkv, Dk, Dv, dev)
        return dq, dk, dv, None, dS0, dz0, None


class _Bidirectional(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, S0, z0, su):
        B, Lk, Hkv, Dk = k.shape
        Dv = v.shape[3]
        dev = q.device
        A, a = _absorbed(k, v, mask, su.opts)
        buf = _flat(A, a, _encode([q.shape[1], Lk], dev))
        dist.all_reduce(buf, group=su.group)
        nS, nz = A.numel(), a.numel()
        S, z = buf[:nS].view(B, Hkv, Dk, Dv), buf[nS:nS + nz].view(B, Hkv, Dk)
        # The license counts the context of the whole call, max(queries, keys).
        total = int(_decode(buf[nS + nz:]).max().item())
        position = su.position + max(total - q.shape[1], 0)
        if S0 is not None:
            S, z = S + S0.float(), z + z0.float()
        # The readout against the total: a prefill whose only key is masked.
        kd, vd = k.new_zeros((B, 1, Hkv, Dk)), v.new_zeros((B, 1, Hkv, Dv))
        md = torch.ones((B, 1), dtype=torch.bool, device=dev)
        if q.shape[1]:
            out, _, _ = _core.prefill(q, kd, vd, md, S, z, position, False, su.opts, su.seq_first)
        else:
            out = _out_like(q, Dv, su.seq_first)
        ctx.save_for_backward(q, k, v, mask, S, z, kd, vd, md)
        ctx.su, ctx.position = su, position
        if su.want_state:
            return out, S, z
        S, z = _empty(q), _empty(q)
        ctx.mark_non_differentiable(S, z)
        return out, S, z

    @staticmethod
    def backward(ctx, dout, dF, dFz):
        q, k, v, mask, S, z, kd, vd, md = ctx.saved_tensors
        su = ctx.su
        if q.shape[1]:
            if dout.stride(-1) != 1:
                dout = dout.contiguous()
            dq, _, _, dS, dz = _core.backward(dout, q, kd, vd, md, S, z, None, None, ctx.position,
                                              False, su.opts, need_dstate=True)
        else:
            dq = torch.zeros_like(q)
            dS, dz = torch.zeros_like(S), torch.zeros_like(z)
        if su.want_state and dF is not None and dF.numel():
            dS, dz = dS + dF, dz + dFz
        buf = _flat(dS, dz)
        dist.all_reduce(buf, group=su.group)
        nS = dS.numel()
        G, Gz = buf[:nS].view(dS.shape), buf[nS:].view(dz.shape)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        if k.shape[1]:
            _absorb_backward(k, v, mask, G, Gz, su.opts, dk, dv)
        dS0 = dz0 = None
        if su.has_S0:
            dS0, dz0 = (G, Gz) if su.rank == 0 else (torch.zeros_like(G), torch.zeros_like(Gz))
        return dq, dk, dv, None, dS0, dz0, None


# ---------------------------------------------------------------------------
# Hybrid attention (causal, forward only)
# ---------------------------------------------------------------------------

def _hybrid_split(L, window, sinks):
    """A segment of L tokens as (first core row, end of core): rows [0, c0)
    are its head (the sequence's sinks when it starts the sequence), rows
    [c1, L) its tail (at most W), both shared with every rank; the core rows
    [c0, c1) lie before every later rank's window and are no sink."""
    c0 = min(L, sinks)
    return c0, max(c0, L - window)


def _shared_rows(L, window, sinks):
    """The head and tail rows of a segment of L tokens, in order."""
    c0, c1 = _hybrid_split(L, window, sinks)
    return list(range(c0)) + list(range(c1, L))


def hybrid_state_bytes(batch, num_kv_heads, dk, dv, window, sinks):
    """Bytes one rank contributes to the exchange of one hybrid forward: its
    core's fp32 S and z, and s + W shared tokens' fp32 keys, values and mask
    flags per batch row, plus the segment length."""
    n = sinks + window
    return 4 * (batch * num_kv_heads * (dk * dv + dk) + batch * n * (num_kv_heads * (dk + dv) + 1)
                + 4)


def _linear_part(opts):
    """The options of the evicted tokens' state (hybrid.composed's: plain
    phi(k) v^T sums; the absorb reads no scale, the softmax's)."""
    return _core.Options(opts.feature_map, True, opts.eps, 1.0, None, opts.precision)


class _HybridSetup:
    """What the hybrid forward needs besides tensors; `state` receives the
    state after the whole sequence (when want_state)."""

    def __init__(self, group, rank, world, window, sinks, opts, seq_first, want_state,
                 gate_form=_hybrid.C["LM_GATE_SIGMOID"]):
        self.group, self.rank, self.world = group, rank, world
        self.window, self.sinks, self.opts, self.gate_form = window, sinks, opts, gate_form
        self.seq_first, self.want_state, self.state = seq_first, want_state, None


def _hybrid_state_at(P, pieces, su, lin, shape, device):
    """The hybrid state after tokens 0 .. P-1 (docs/DESIGN.md 9.2) from the
    pieces (start, L, A, a, keys, values, masked) of the ranks whose segments
    end at or before P, in rank order (keys [B, n, Hkv, Dk] fp32 of the rows
    _hybrid_split shares, masked [B, n] bool): S, z = the cores' states plus
    the shared tokens s <= p < P - W folded in; the sinks p < s and the
    window p >= P - W go to their slots."""
    B, Hkv, Dk, Dv = shape
    W, s = su.window, su.sinks
    st = _hybrid.empty_state(B, Hkv, Dk, Dv, W, s, device)
    if not pieces:
        return st
    rows = []
    for start, L, A, a, *_ in pieces:
        st.S.add_(A)
        st.z.add_(a)
        rows += [start + j for j in _shared_rows(L, W, s)]
    p = torch.tensor(rows, dtype=torch.int64, device=device)
    keys, values, masked = (torch.cat([piece[i] for piece in pieces], 1) for i in (4, 5, 6))
    ev = (p >= s) & (p < P - W)
    if bool(ev.any()):
        _core.absorb(keys[:, ev], values[:, ev], masked[:, ev], st.S, st.z, 0, lin)
    win = ~ev  # every shared token before P that is not evicted: a sink or in the window
    p, kept = p[win], ~masked[:, win]                                   # kept [B, m]
    slot = torch.where(p < s, p, s + p % W)
    code = torch.where(kept, p + 1, -(p + 1)).to(torch.int32)
    st.pos[:, :, slot] = code.unsqueeze(1).expand(B, Hkv, -1)
    st.keys[:, :, slot] = (keys[:, win] * kept[..., None, None]).permute(0, 2, 1, 3)
    st.values[:, :, slot] = (values[:, win] * kept[..., None, None]).permute(0, 2, 1, 3)
    return st._replace(position=P)


class _Hybrid(torch.autograd.Function):
    """The hybrid forward over the group's segments. No backward: the core
    has none in hybrid mode, and the differentiable composition (hybrid.py)
    starts from an empty state, not from the state before a segment."""

    @staticmethod
    def forward(ctx, q, k, v, gate, mask, su):
        B, L, Hkv, Dk = k.shape
        Dv, dev, W, s = v.shape[3], q.device, su.window, su.sinks
        c0, c1 = _hybrid_split(L, W, s)
        n = s + W
        lin = _linear_part(su.opts)
        A, a = _absorbed(k[:, c0:c1], v[:, c0:c1], None if mask is None else mask[:, c0:c1], lin)
        # The shared rows, padded to n: keys, values (fp32: exact), mask flags.
        keep_rows = torch.tensor(_shared_rows(L, W, s), dtype=torch.int64, device=dev)
        ks, vs = (k.new_zeros((B, n) + t.shape[2:], dtype=torch.float32) for t in (k, v))
        ms = k.new_zeros((B, n), dtype=torch.float32)
        m = keep_rows.numel()
        ks[:, :m], vs[:, :m] = k[:, keep_rows].float(), v[:, keep_rows].float()
        if mask is not None:
            ms[:, :m] = mask[:, keep_rows].float()
        parts = _gather(_flat(A, a, ks, vs, ms, _encode([L], dev)), su.group, su.world)
        sizes = [A.numel(), a.numel(), ks.numel(), vs.numel(), ms.numel()]
        shapes = [A.shape, a.shape, ks.shape, vs.shape, ms.shape]
        pieces, start = [], 0
        for part in parts:
            A_i, a_i, k_i, v_i, m_i = (t.view(sh) for t, sh in
                                       zip(part[:sum(sizes)].split(sizes), shapes))
            L_i = int(_decode(part[sum(sizes):]).item())
            n_i = len(_shared_rows(L_i, W, s))
            pieces.append((start, L_i, A_i, a_i, k_i[:, :n_i], v_i[:, :n_i], m_i[:, :n_i] > 0.5))
            start += L_i
        before = sum(piece[1] for piece in pieces[:su.rank])
        opts = _auto_precision(su.opts, start)
        lin = _linear_part(opts)
        shape = (B, Hkv, Dk, Dv)
        gate_host = _hybrid._gate_host(gate, q.shape[2])
        if L:
            st = _hybrid_state_at(before, pieces[:su.rank], su, lin, shape, dev) if before else None
            out, _ = _hybrid.c_prefill(q, k, v, mask, W, s, gate_host, opts, st,
                                       seq_first=su.seq_first, gate_form=su.gate_form)
        else:
            out = _out_like(q, Dv, su.seq_first)
        if su.want_state:
            su.state = _hybrid_state_at(start, pieces, su, lin, shape, dev)
        return out

    @staticmethod
    def backward(ctx, dout):
        raise _core.UnsupportedError(
            "hybrid attention under context parallelism has no backward: the core has none in "
            "hybrid mode and the differentiable composition starts from an empty state, not from "
            "the state before a segment. Train hybrid layers on whole sequences (one process), "
            "or run this forward under torch.no_grad()")


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def prefill(group, q, k, v, mask=None, S0=None, z0=None, position=0, is_causal=True, opts=None,
            seq_first=False, want_state=False):
    """_ops.prefill over the group's segments (the module's entry point).
    Returns (out, S, z); S, z (when want_state) are the state after the whole
    sequence, the same on every rank. group None (the module's default: no
    context parallelism) or of one rank: the plain single-process call."""
    rank, world = _world(group)
    if world == 1:
        return _ops.prefill(q, k, v, mask, S0, z0, position, is_causal, opts, seq_first, want_state)
    o = opts or _core.Options()
    extra = [n for n in getattr(type(o), "__slots__", ()) if n not in _LINEAR_OPTIONS and getattr(o, n)]
    if extra:
        raise _core.UnsupportedError(
            "context parallelism of linear attention does not know the option(s) %s: a new kind "
            "of attention needs its own exchange (hybrid attention has hybrid_prefill)"
            % ", ".join(extra))
    if is_causal and q.shape[1] != k.shape[1]:
        raise ValueError("causal attention needs each rank's queries and keys of the same length, "
                         "got %d and %d" % (q.shape[1], k.shape[1]))
    if not is_causal and o.decay is not None:
        raise _core.UnsupportedError("decay is defined for causal attention only")
    su = _Setup(group, rank, world, o, int(position), bool(seq_first), bool(want_state),
                S0 is not None)
    fn = _Causal if is_causal else _Bidirectional
    return fn.apply(q, k, v, mask, S0, z0, su)


def linear_attention(q, k, v, *, group=None, causal=True, feature_map="elu1", normalize=True,
                     decay=None, initial_state=None, output_final_state=False, scale=None,
                     eps=1e-6, precision="auto", key_padding_mask=None):
    r"""liquid_memory.linear_attention over one sequence split across the
    ranks of `group`; returns ``(o, final_state)`` as it does.

    Each rank passes its own contiguous segment, in rank order: q [B, L_r, Hq,
    Dk], k [B, Lk_r, Hkv, Dk], v [B, Lk_r, Hkv, Dv] (any lengths, 0 included;
    causal needs L_r == Lk_r) and key_padding_mask [B, Lk_r] (bool, True =
    ignore). Every rank calls it together, with the same options (these are
    collectives). o is the rank's output [B, L_r, Hq, Dv], what one process
    over the concatenated sequence gives (within rounding); final_state (with
    output_final_state) is (S, z) after the whole sequence, the same on every
    rank. initial_state: (S, z) before rank 0's segment, the same on every
    rank; its gradient arrives on rank 0. Differentiable in q, k, v and
    initial_state; the options are linear_attention's (no cu_seqlens).

    group: a torch.distributed group (None: the default one, or a single
    process when torch.distributed is not initialised). Costs per call beyond
    the prefill of the segment: the absorb pass (the state update alone) and
    one all_gather of state_bytes(...) per rank (bidirectional: one
    all_reduce); the backward as much again plus a local absorb backward.
    """
    _check_qkv(q, k, v, False)
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError("key_padding_mask must be a bool tensor (True = ignore), not %s"
                        % key_padding_mask.dtype)
    B, Hkv, Dk, Dv = q.shape[0], k.shape[2], k.shape[3], v.shape[3]
    opts = make_options(feature_map, normalize, decay, Hkv, precision, eps, scale)
    if group is None and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    S0, z0 = _state_pair(initial_state, B, Hkv, Dk, Dv, normalize, q)
    out, S, z = prefill(group, q, k, v, key_padding_mask, S0, z0, 0, causal, opts, False,
                        output_final_state)
    return out, ((S, z) if output_final_state else None)


def hybrid_prefill(group, q, k, v, mask, window, sinks, gate, opts, want_state=False,
                   seq_first=False, gate_form=_hybrid.C["LM_GATE_SIGMOID"]):
    """hybrid.attend over the group's segments (the module's entry point),
    causal, from the start of the sequence; gate_form: the gate's
    lm_gate_form. Returns (out, the HybridState after
    the whole sequence on every rank, or None). group None or of one rank: the
    plain single-process call (differentiable there)."""
    rank, world = _world(group)
    if world == 1:
        return _hybrid.attend(q, k, v, mask, window, sinks, gate, opts, None, want_state,
                              seq_first, gate_form)
    if q.shape[1] != k.shape[1]:
        raise ValueError("causal attention needs each rank's queries and keys of the same length, "
                         "got %d and %d" % (q.shape[1], k.shape[1]))
    if opts.decay is not None:
        raise _core.UnsupportedError("hybrid attention has no decay")
    su = _HybridSetup(group, rank, world, int(window), int(sinks), opts, bool(seq_first),
                      bool(want_state), int(gate_form))
    out = _Hybrid.apply(q, k, v, gate, mask, su)
    return out, su.state


def hybrid_attention(q, k, v, window=_hybrid.C["LM_HYBRID_WINDOW_DEFAULT"],
                     sinks=_hybrid.C["LM_HYBRID_SINKS_DEFAULT"], window_gate=None,
                     key_padding_mask=None, *, group=None, feature_map="elu", eps=1e-6, scale=None,
                     precision="auto", return_state=False, window_gate_form="sigmoid"):
    r"""liquid_memory.hybrid_attention (causal, from an empty state) over one
    sequence split across the ranks of `group`: each rank passes its own
    contiguous segment, in rank order (q [B, L_r, Hq, Dk], k, v [B, L_r, Hkv,
    D], key_padding_mask [B, L_r]; any lengths, 0 included), every rank with
    the same options, and gets its segment's output, what one process over the
    whole sequence gives (within fp32 rounding); with return_state, also the
    HybridState after the whole sequence, the same on every rank.

    Forward only: with more than one rank, a backward through it raises
    UnsupportedError (the core has no hybrid backward, and the differentiable
    composition starts from an empty state). One all_gather per call of
    hybrid_state_bytes(...) per rank. group: as linear_attention's."""
    opts = _hybrid.call_options(q, k, v, window, sinks, key_padding_mask, feature_map, eps, scale,
                                precision)
    if group is None and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    out, st = hybrid_prefill(group, q, k, v, key_padding_mask, window, sinks, window_gate, opts,
                             want_state=return_state,
                             gate_form=_hybrid.gate_form_code(window_gate_form))
    return (out, st) if return_state else out
