"""The one attention function, with an explicit `backend`.

- "sdpa": the reference (`reference.py`): SDPA with a boolean mask built from
  the `MaskSpec`. Runs everywhere; the CPU path, forward and backward.
- "flex": `torch.nn.attention.flex_attention` with the rule as a `mask_mod`,
  block-sparse and compiled on CUDA (`flex.py`). On CPU it runs forward only.
- "xformers": xformers' memory-efficient attention with block-diagonal masks
  built from runs of segment ids (`xformers.py`), CUDA only. It covers the
  documents and patches of the model's forward pass, and raises a one-line
  error for specs it cannot express (e.g. ring-buffer KV caches).
- "auto": "flex" for CUDA tensors (when flex_attention and triton are there),
  "sdpa" otherwise. The choice is logged once on the "bytelm" logger.

flex and xformers are imported only when used. All backends agree with the
reference up to floating-point tolerance, including zeros for key-less queries;
tests/kernels/test_attention.py checks it.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache

import torch

from bytelm.config import ATTN_BACKENDS as BACKENDS
from bytelm.kernels.attention.reference import MaskSpec, attention_reference
from bytelm.kernels.dispatch import compiling, triton_available

__all__ = ["MaskSpec", "attention", "resolve_backend", "BACKENDS"]


logger = logging.getLogger("bytelm")
_logged: set[str] = set()


@cache
def flex_available() -> bool:
    """Does this torch have flex_attention (>= 2.5)? Checked without importing it."""
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@cache
def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a user's `backend` into "sdpa", "flex" or "xformers", or raise a one-line error."""
    if backend not in BACKENDS:
        raise ValueError(
            f"bytelm: attention backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if backend == "auto":
        fast = device.type == "cuda" and flex_available() and triton_available()
        choice = "flex" if fast else "sdpa"
    else:
        choice = backend
    if choice == "flex" and not flex_available():
        raise RuntimeError(
            "bytelm: attention backend 'flex' needs torch >= 2.5 (torch.nn.attention.flex_attention); "
            "upgrade torch or use backend='sdpa'"
        )
    if choice == "xformers":
        if not xformers_available():
            raise RuntimeError(
                "bytelm: attention backend 'xformers' needs the xformers package; "
                "install bytelm[gpu] or use backend='flex' or 'sdpa'"
            )
        if device.type != "cuda":
            raise RuntimeError(
                f"bytelm: attention backend 'xformers' needs CUDA tensors, got {device.type}; "
                "use backend='sdpa' (or 'auto') there"
            )
    if not compiling() and choice not in _logged:  # a log call would break the graph
        _logged.add(choice)
        logger.info(
            "bytelm: attention uses the %s backend (asked %r, device %s)", choice, backend, device
        )
    return choice


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh), mask rule `spec` -> (B, H, Tq, Dh).

    Query i reads key j iff q_seg[i] == k_seg[j], and k_pos[j] <= q_pos[i] when
    causal, and q_pos[i] - k_pos[j] < window when windowed; key-less queries
    give zeros. `scale` defaults to 1 / sqrt(Dh).
    """
    choice = resolve_backend(backend, q.device)
    if choice == "flex":
        from bytelm.kernels.attention.flex import attention_flex

        return attention_flex(q, k, v, spec, scale)
    if choice == "xformers":
        from bytelm.kernels.attention.xformers import attention_xformers

        return attention_xformers(q, k, v, spec, scale)
    return attention_reference(q, k, v, spec, scale)
