"""Speculative-decoding verify step for the byte vocabulary.

`verify` takes the K draft bytes of each row, their draft distributions and the
model's logits at the K+1 following positions, and returns how many drafts are
accepted and the byte to emit after them. Greedy (temperature 0) accepts exact
matches with the argmax; sampling is lossless rejection sampling, so the
emitted bytes are distributed exactly as plain sampling from the logits. The
random numbers are inputs, which makes both backends agree byte for byte and
lets a caller reproduce a run. Top-k/top-p: mask the logits to -inf first.
`backend` is "auto" | "triton" | "reference", as for every kernel op.
"""

from __future__ import annotations

import torch

from bytelm.kernels.dispatch import resolve_backend
from bytelm.kernels.verify.reference import RESIDUAL_EPS, verify_reference

__all__ = ["RESIDUAL_EPS", "verify"]


def verify(
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    logits: torch.Tensor,
    temperature: float,
    u_accept: torch.Tensor | None = None,
    u_sample: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts (B, K) long, q (B, K, V) draft probabilities, logits (B, K+1, V),
    u_accept (B, K) and u_sample (B,) uniform in [0, 1)
    -> accepted (B,) long in [0, K], next_byte (B,) long.

    temperature 0 is greedy, and then q, u_accept and u_sample may be None.
    """
    B, K = drafts.shape
    if logits.dim() != 3 or logits.shape[:2] != (B, K + 1):
        raise ValueError(
            f"bytelm: logits must be (B, K+1, V) = ({B}, {K + 1}, V), got {tuple(logits.shape)}"
        )
    if temperature < 0:
        raise ValueError(f"bytelm: temperature must be >= 0, got {temperature}")
    if temperature > 0:
        V = logits.shape[-1]
        if q is None or u_accept is None or u_sample is None:
            raise ValueError("bytelm: sampling verify needs q, u_accept and u_sample")
        if q.shape != (B, K, V) or u_accept.shape != (B, K) or u_sample.shape != (B,):
            raise ValueError(
                f"bytelm: expected q ({B}, {K}, {V}), u_accept ({B}, {K}), u_sample ({B},), got "
                f"{tuple(q.shape)}, {tuple(u_accept.shape)}, {tuple(u_sample.shape)}"
            )
    if resolve_backend("verify", backend, logits.device) == "triton":
        from bytelm.kernels.verify import triton as _triton

        return _triton.verify_fwd(drafts, q, logits, temperature, u_accept, u_sample)
    return verify_reference(drafts, q, logits, temperature, u_accept, u_sample)
