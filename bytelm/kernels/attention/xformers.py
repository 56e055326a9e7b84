"""xformers backend: a `MaskSpec` as a block-diagonal mask over one packed sequence.

xformers' memory-efficient attention takes every row's queries and keys
packed into one sequence, (1, N, H, Dh), cut into blocks: query block i reads
key block i only, in full, causally (aligned top-left or bottom-right) or
causally within a window. A spec maps onto that when, in every row,

- each segment id forms one contiguous run in q_seg and one in k_seg
  (documents and patches do), and the ids both sides have come in the same
  order, so that query run i pairs with key run i;
- for a causal or windowed spec, positions rise by one inside each run, each
  query run starts where its key run starts (self-attention) or ends where it
  ends, and no query run is longer than its key run. Then `k_pos <= q_pos`
  and `q_pos - k_pos < window` are exactly xformers' in-block causal and
  local-window rules.

A run that only one side has is left out of the packed sequence: its keys are
never readable, and its queries are key-less and get zeros, as in the
reference. Anything else (a window without causality, a ring-buffer KV cache
whose slots are not in position order) raises a one-line ValueError that
names the backends which can run it.

The plan needs the segment ids on the host: one device sync per distinct
spec, memoised across the layers that share it (see `_memo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bytelm.kernels.attention._memo import memo
from bytelm.kernels.attention.reference import MaskSpec


@dataclass
class Plan:
    """How a spec becomes packed block-diagonal attention.

    q_index / k_index: rows of the flat (B * Tq) queries / (B * Tk) keys in
    packed order, or None when that is all of them in order. q_seqlen[i] and
    k_seqlen[i] are the lengths of block i on each side.
    """

    q_index: torch.Tensor | None
    k_index: torch.Tensor | None
    q_seqlen: list[int]
    k_seqlen: list[int]
    causal: bool
    bottom_right: bool
    window: int | None


def _fail(reason: str):
    raise ValueError(
        f"bytelm: the xformers attention backend cannot express this mask ({reason}); "
        "use backend='flex' or 'sdpa'"
    )


@dataclass
class _Runs:
    """The maximal runs of equal ids in a (B, T) segment tensor, flattened row-major."""

    row: torch.Tensor  # (R,) the row of each run
    val: torch.Tensor  # (R,) its segment id
    start: torch.Tensor  # (R,) its first flat index
    length: torch.Tensor  # (R,)
    first: torch.Tensor  # (B * T,) bool: element starts a run
    run: torch.Tensor  # (B * T,) the run of each element


def _runs(seg: torch.Tensor) -> _Runs:
    B, T = seg.shape
    first = torch.ones(B, T, dtype=torch.bool)
    first[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = first.reshape(-1)
    start = first.nonzero().squeeze(1)
    length = torch.diff(start, append=torch.tensor([B * T]))
    return _Runs(start // T, seg.reshape(-1)[start], start, length, first, first.cumsum(0) - 1)


def _steps_by_one(pos: torch.Tensor, r: _Runs) -> torch.Tensor:
    """(R,) bool: do the positions rise by exactly one inside each run?"""
    flat = pos.reshape(-1)
    bad = ~r.first[1:] & (flat[1:] - flat[:-1] != 1)
    ok = torch.ones(r.start.numel(), dtype=torch.bool)
    ok[r.run[1:][bad]] = False
    return ok


def _gather_index(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """The flat indices covered by the runs (start, length), concatenated in order."""
    out_first = torch.cumsum(length, 0) - length  # where each run begins in the output
    return torch.repeat_interleave(start - out_first, length) + torch.arange(int(length.sum()))


def plan(spec: MaskSpec) -> Plan:
    """Turn a spec into a `Plan`, or raise ValueError when block-diagonal masks cannot express it."""
    if spec.window is not None and not spec.causal:
        _fail("a window without causality")
    q_seg, k_seg = spec.q_seg.cpu(), spec.k_seg.cpu()  # the one host sync
    if q_seg.numel() == 0 or k_seg.numel() == 0:
        return Plan(None, None, [], [], spec.causal, False, spec.window)
    q, k = _runs(q_seg), _runs(k_seg)

    # pair query run i with the key run of the same (row, id)
    lo = torch.minimum(q.val.min(), k.val.min())
    span = int(torch.maximum(q.val.max(), k.val.max()) - lo) + 1
    q_key, k_key = q.row * span + (q.val - lo), k.row * span + (k.val - lo)
    if q_key.unique().numel() != q_key.numel() or k_key.unique().numel() != k_key.numel():
        _fail("a segment id that is not one contiguous run in its row")
    k_sorted, k_order = k_key.sort()
    at = torch.searchsorted(k_sorted, q_key).clamp(max=k_key.numel() - 1)
    matched = k_sorted[at] == q_key  # (Rq,) query runs with keys; the others get zeros
    pair = k_order[at][matched]  # the key run of each matched query run
    if (pair[1:] <= pair[:-1]).any():
        _fail("segments in a different order in queries and keys")
    qs, ql, ks, kl = q.start[matched], q.length[matched], k.start[pair], k.length[pair]

    bottom_right = False
    if spec.causal:
        q_pos, k_pos = spec.q_pos.cpu().reshape(-1), spec.k_pos.cpu().reshape(-1)
        if not (_steps_by_one(q_pos, q)[matched].all() and _steps_by_one(k_pos, k)[pair].all()):
            _fail("positions that do not rise by one inside a segment")
        if (ql > kl).any():
            _fail("a causal segment with more queries than keys")
        if not (q_pos[qs] == k_pos[ks]).all():
            bottom_right = True
            if not (q_pos[qs + ql - 1] == k_pos[ks + kl - 1]).all():
                _fail("query runs aligned with their key runs at neither start nor end")

    device = spec.q_seg.device
    return Plan(
        q_index=None if matched.all() else _gather_index(qs, ql).to(device),
        k_index=None if pair.numel() == k.start.numel() else _gather_index(ks, kl).to(device),
        q_seqlen=ql.tolist(),
        k_seqlen=kl.tolist(),
        causal=spec.causal,
        bottom_right=bottom_right,
        window=spec.window,
    )


def _bias(p: Plan, device: torch.device):
    """The xformers attn_bias for a plan."""
    from xformers.ops import fmha

    m = fmha.attn_bias.BlockDiagonalMask.from_seqlens(p.q_seqlen, p.k_seqlen, device=device)
    if not p.causal:
        return m
    if p.window is None:
        return m.make_causal_from_bottomright() if p.bottom_right else m.make_causal()
    if p.bottom_right:
        return m.make_local_attention_from_bottomright(p.window)
    return m.make_local_attention(p.window)


def _prepare(spec: MaskSpec, device: torch.device):
    p = plan(spec)
    return p, (_bias(p, device) if p.q_seqlen else None)


def _kernel(q, k, v, bias, scale):
    """q (1, Nq, H, Dh), k/v (1, Nk, H, Dh) -> (1, Nq, H, Dh)."""
    from xformers.ops import fmha

    return fmha.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)


def attention_xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float | None = None
) -> torch.Tensor:
    """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh) -> (B, H, Tq, Dh); zeros for key-less queries."""
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    assert spec.q_seg.shape == (B, Tq) and spec.k_seg.shape == (B, Tk), (
        "MaskSpec q_seg/k_seg must be (B, Tq) and (B, Tk) like q and k"
    )
    p, bias = memo("xformers", spec, lambda: _prepare(spec, q.device))
    if not p.q_seqlen:  # no query has a key
        return q.new_zeros(B, H, Tq, Dh)
    # pack: (B, H, T, Dh) -> (B * T, H, Dh), keeping only the paired runs
    qf = q.transpose(1, 2).reshape(B * Tq, H, Dh)
    kf = k.transpose(1, 2).reshape(B * Tk, H, Dh)
    vf = v.transpose(1, 2).reshape(B * Tk, H, Dh)
    if p.q_index is not None:
        qf = qf.index_select(0, p.q_index)
    if p.k_index is not None:
        kf, vf = kf.index_select(0, p.k_index), vf.index_select(0, p.k_index)
    out = _kernel(qf[None], kf[None], vf[None], bias, scale)[0]  # (Nq, H, Dh)
    if p.q_index is not None:  # unpack; key-less queries stay zero
        out = out.new_zeros(B * Tq, H, Dh).index_copy(0, p.q_index, out)
    return out.view(B, Tq, H, Dh).transpose(1, 2)
