"""Reference patch pooling and unpooling in plain PyTorch: the specification.

pool:   x (B, T, D), patch_lengths (B, P) -> (B, P, D)
        out[b, p] = reduce(x[b, offsets[b, p] : offsets[b, p] + patch_lengths[b, p]])
        with reduce in {sum, mean, max}. Empty patch slots (length 0) give zeros.
unpool: h (B, P, D), index (B, T) -> (B, T, D)
        out[b, t] = h[b, index[b, t]], or zeros where index[b, t] < 0.
"""

from __future__ import annotations

import torch

from bytelm.patchers.base import lengths_to_ids

MODES = ("sum", "mean", "max")


def pool_reference(
    x: torch.Tensor, patch_lengths: torch.Tensor, mode: str = "mean"
) -> torch.Tensor:
    if mode not in MODES:
        raise ValueError(f"pooling mode must be one of {MODES}, got {mode!r}")
    B, T, D = x.shape
    P = patch_lengths.shape[1]
    ids = lengths_to_ids(patch_lengths, T)  # (B, T), -1 on padding bytes
    valid = ids >= 0
    # flatten (b, p) into one segment index; padding bytes go to a dump row
    seg = torch.where(valid, ids + torch.arange(B, device=x.device)[:, None] * P, B * P)
    flat = x.reshape(B * T, D)
    seg = seg.reshape(B * T, 1).expand(B * T, D)
    if mode == "max":
        # start from -inf, not 0: scatter_reduce's backward splits the gradient with
        # the initial value when it ties the max, even with include_self=False
        out = x.new_full((B * P + 1, D), float("-inf"))
        out = out.scatter_reduce(0, seg, flat, reduce="amax", include_self=False)
    else:
        out = x.new_zeros(B * P + 1, D).scatter_add(0, seg, flat)
        if mode == "mean":
            n = patch_lengths.reshape(B * P, 1).clamp(min=1).to(x.dtype)
            out = torch.cat([out[:-1] / n, out[-1:]])
    out = out[:-1].reshape(B, P, D)
    return torch.where((patch_lengths > 0).unsqueeze(-1), out, 0.0)  # empty slots -> 0


def unpool_reference(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    B, P, D = h.shape
    safe = index.clamp(min=0)
    out = torch.gather(h, 1, safe.unsqueeze(-1).expand(*index.shape, D))
    return out * (index >= 0).unsqueeze(-1).to(h.dtype)


def pool_packed_reference(
    x: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, mode: str = "mean"
) -> torch.Tensor:
    """Packed layout: x (N, D); segment s is rows offsets[s] : offsets[s] + lengths[s] -> (S, D).

    Segments are disjoint and need not cover every row; length-0 segments give zeros.
    """
    if mode not in MODES:
        raise ValueError(f"pooling mode must be one of {MODES}, got {mode!r}")
    S, D = offsets.shape[0], x.shape[1]
    lengths = lengths.long()
    seg = torch.repeat_interleave(torch.arange(S, device=x.device), lengths)  # (L,)
    # row of each segment byte: its segment's offset plus its rank inside the segment
    rank = torch.arange(seg.numel(), device=x.device) - (lengths.cumsum(0) - lengths)[seg]
    rows = offsets.long()[seg] + rank
    src = x[rows]  # (L, D)
    index = seg[:, None].expand(-1, D)
    if mode == "max":  # -inf start: see pool_reference
        out = x.new_full((S, D), float("-inf"))
        out = out.scatter_reduce(0, index, src, reduce="amax", include_self=False)
    else:
        out = x.new_zeros(S, D).scatter_add(0, index, src)
        if mode == "mean":
            out = out / lengths.clamp(min=1)[:, None].to(x.dtype)
    return torch.where((lengths > 0)[:, None], out, 0.0)
