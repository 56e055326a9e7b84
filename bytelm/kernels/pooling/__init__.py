"""Patch pooling (bytes -> patches) and unpooling (patches -> bytes).

The model calls `pool` and `unpool`; `pool_packed` is the same op on a packed
(N, D) layout. `backend` is "auto" | "triton" | "reference": "auto" picks
Triton for CUDA tensors when triton is installed and the PyTorch reference
otherwise (see `bytelm.kernels.dispatch`). The Triton module is imported only
when it is used.

The Triton unpool needs the non-negative entries of each `index` row to be
non-decreasing along t (-1 may appear anywhere), which the model's index
always is: byte t reads the last patch complete by t, or -1 where masked. It
uses this to make the backward a deterministic run sum instead of an atomic
scatter-add; the reference accepts any index. Max pooling sends the gradient
to the first maximum of a tie, where the reference splits it evenly; the two
agree whenever the values of a patch differ.
"""

from __future__ import annotations

import torch

from bytelm.kernels.dispatch import resolve_backend
from bytelm.kernels.pooling.reference import (
    MODES,
    pool_packed_reference,
    pool_reference,
    unpool_reference,
)

__all__ = ["MODES", "pool", "pool_packed", "unpool"]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"pooling mode must be one of {MODES}, got {mode!r}")


def pool(
    x: torch.Tensor, patch_lengths: torch.Tensor, mode: str = "mean", backend: str = "auto"
) -> torch.Tensor:
    """Segment-reduce bytes into patches. x (B, T, D), patch_lengths (B, P) -> (B, P, D)."""
    _check_mode(mode)
    if resolve_backend("pool", backend, x.device) == "triton":
        from bytelm.kernels.pooling import triton as _triton

        return _triton.pool_batched(x, patch_lengths, mode)
    return pool_reference(x, patch_lengths, mode)


def pool_packed(
    x: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    mode: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Packed pooling. x (N, D); segment s = rows offsets[s] : offsets[s] + lengths[s] -> (S, D).

    Non-empty segments are in order and disjoint; empty ones give zeros.
    """
    _check_mode(mode)
    if resolve_backend("pool", backend, x.device) == "triton":
        from bytelm.kernels.pooling import triton as _triton

        return _triton.pool_packed(x, offsets, lengths, mode)
    return pool_packed_reference(x, offsets, lengths, mode)


def unpool(h: torch.Tensor, index: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Gather patch vectors back to bytes. h (B, P, D), index (B, T) -> (B, T, D); -1 gives 0."""
    if resolve_backend("unpool", backend, h.device) == "triton":
        from bytelm.kernels.pooling import triton as _triton

        return _triton.unpool_batched(h, index)
    return unpool_reference(h, index)
