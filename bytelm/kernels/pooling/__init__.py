"""Patch pooling (bytes -> patches) and unpooling (patches -> bytes).

The model calls only `pool` and `unpool`. `backend` is "auto" | "reference"
(and "triton" once the fast path lands); "auto" means the reference on CPU.
"""

from __future__ import annotations

import torch

from bytelm.kernels.pooling.reference import MODES, pool_reference, unpool_reference

__all__ = ["MODES", "pool", "unpool"]


def pool(
    x: torch.Tensor, patch_lengths: torch.Tensor, mode: str = "mean", backend: str = "auto"
) -> torch.Tensor:
    """Segment-reduce bytes into patches. x (B, T, D), patch_lengths (B, P) -> (B, P, D)."""
    return pool_reference(x, patch_lengths, mode)


def unpool(h: torch.Tensor, index: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Gather patch vectors back to bytes. h (B, P, D), index (B, T) -> (B, T, D); -1 gives 0."""
    return unpool_reference(h, index)
