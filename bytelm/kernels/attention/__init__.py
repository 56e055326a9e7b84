"""The one attention function. `backend`: "sdpa" (reference, CPU), later "flex" and "xformers"."""

from __future__ import annotations

import torch

from bytelm.kernels.attention.reference import MaskSpec, attention_reference

__all__ = ["MaskSpec", "attention", "BACKENDS"]

BACKENDS = ("sdpa",)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    backend: str = "sdpa",
    scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh), mask rule `spec` -> (B, H, Tq, Dh)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    return attention_reference(q, k, v, spec, scale)
