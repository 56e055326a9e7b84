"""Reference attention: SDPA with a boolean mask built from segment ids and positions.

Every attention in bytelm is described by a `MaskSpec`, never by a dense mask:
query i may read key j iff

    q_seg[i] == k_seg[j]                       (same document, or same patch)
    and (not causal or k_pos[j] <= q_pos[i])
    and (window is None or q_pos[i] - k_pos[j] < window)

The reference materialises that rule as a (B, 1, Tq, Tk) boolean mask for SDPA,
which is fine on CPU and for tests. Fast backends build the same rule lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MaskSpec:
    q_seg: torch.Tensor  # (B, Tq) long
    k_seg: torch.Tensor  # (B, Tk) long
    q_pos: torch.Tensor  # (B, Tq) long
    k_pos: torch.Tensor  # (B, Tk) long
    causal: bool = True
    window: int | None = None

    def allowed(self) -> torch.Tensor:
        """The rule as a dense (B, Tq, Tk) bool tensor (reference and tests only)."""
        m = self.q_seg[:, :, None] == self.k_seg[:, None, :]
        if self.causal:
            m = m & (self.k_pos[:, None, :] <= self.q_pos[:, :, None])
        if self.window is not None:
            m = m & (self.q_pos[:, :, None] - self.k_pos[:, None, :] < self.window)
        return m


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float | None = None
) -> torch.Tensor:
    """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh) -> (B, H, Tq, Dh).

    A query with no readable key (an empty patch slot) gets a zero output rather
    than SDPA's NaN.
    """
    own = getattr(spec, "derived", None)  # a cached step's mask: built once for every layer
    if own is None:
        safe, has_any = _sdpa_mask(spec)
    else:
        if "sdpa" not in own:
            own["sdpa"] = _sdpa_mask(spec)
        safe, has_any = own["sdpa"]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return out * has_any.to(out.dtype)


def _sdpa_mask(spec: MaskSpec):
    """-> the SDPA mask (B, 1, Tq, Tk) and which queries read any key (B, 1, Tq, 1)."""
    allowed = spec.allowed()  # (B, Tq, Tk)
    has_any = allowed.any(-1)  # (B, Tq)
    # give key-less queries one dummy key so softmax is finite; zero them after
    safe = allowed | ~has_any[:, :, None]
    return safe[:, None], has_any[:, None, :, None]
