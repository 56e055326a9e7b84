"""Transformer building blocks shared by every stack in bytelm.

RMSNorm, rotary position embeddings, SwiGLU, and attention whose mask is a
`MaskSpec` rule (segment ids + positions), so documents, sliding windows and
patches are all expressed the same way for every backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from bytelm.config import TransformerConfig
from bytelm.kernels.attention import MaskSpec, attention
from bytelm.vocab import BOS


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32: bf16 sums of squares lose too many bits at large dim
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x (B, H, T, Dh) by positions pos (B, T). Half-split (GPT-NeoX) layout."""
    Dh = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, Dh, 2, device=x.device, dtype=torch.float32) / Dh))
    ang = pos.to(torch.float32)[:, None, :, None] * inv  # (B, 1, T, Dh/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float):
    """pos (B, T) -> (cos, sin), each (B, 1, T, Dh): what `rope` computes, for reuse by
    every layer of an incremental step, laid out for `apply_rope`: cos repeated over both
    halves, sin negated on the first (x * cos + swap(x) * sin is then `rope`, bit for bit)."""
    inv = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    )
    ang = pos.to(torch.float32)[:, None, :, None] * inv  # (B, 1, T, Dh/2)
    cos, sin = ang.cos(), ang.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., B, H, T, Dh) by `rope_angles`: one pass for queries and keys stacked."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat([x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `kv` is None, cross-attention otherwise."""

    def __init__(
        self, dim: int, n_heads: int, rope_theta: float | None = 10000.0, kv_dim: int | None = None
    ):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.rope_theta = rope_theta
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, Tq, D)
        spec: MaskSpec,
        kv: torch.Tensor | None = None,  # (B, Tk, D_kv), defaults to x
        backend: str = "sdpa",
    ) -> torch.Tensor:
        src = x if kv is None else kv
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, Tq, Dh)
        k, v = rearrange(self.kv(src), "b t (two h d) -> two b h t d", two=2, h=self.n_heads)
        if self.rope_theta is not None:
            q, k = rope(q, spec.q_pos, self.rope_theta), rope(k, spec.k_pos, self.rope_theta)
        y = attention(q, k, v, spec, backend=backend)  # (B, H, Tq, Dh)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))

    def step(
        self,
        x: torch.Tensor,  # (B, n, D) the new positions
        spec: MaskSpec,  # queries: the new positions; keys: every cache slot
        k_cache: torch.Tensor,  # (B, H, S, Dh), written in place
        v_cache: torch.Tensor,  # (B, H, S, Dh), written in place
        slots: torch.Tensor,  # (B, n) where the new keys and values go
        backend: str = "sdpa",
        rot: tuple[torch.Tensor, torch.Tensor] | None = None,  # rope_angles(spec.q_pos, ...)
    ) -> torch.Tensor:
        """Cached self-attention: store the new keys/values, then attend over the cache.
        (Views instead of einops here: a decode step is launch-bound.)"""
        B, n, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        q = self.q(x).view(B, n, H, Dh).transpose(1, 2)  # (B, H, n, Dh)
        k, v = self.kv(x).view(B, n, 2, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope_theta is not None:
            # keys are stored rotated, at their own positions (the query positions)
            cos, sin = rot or rope_angles(spec.q_pos, self.head_dim, self.rope_theta)
            q, k = apply_rope(torch.stack([q, k]), cos, sin).unbind(0)
        rows = torch.arange(B, device=x.device)[:, None]
        k_cache[rows, :, slots] = k.transpose(1, 2).to(k_cache.dtype)  # (B, n, H, Dh)
        v_cache[rows, :, slots] = v.transpose(1, 2).to(v_cache.dtype)
        y = attention(q, k_cache, v_cache, spec, backend=backend)  # (B, H, n, Dh)
        return self.out(y.transpose(1, 2).reshape(B, n, D))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = 16 * math.ceil(mlp_ratio * dim / 16)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.attn_heads, cfg.rope_theta)
        self.mlp_norm = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_ratio)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, spec: MaskSpec, backend: str = "sdpa") -> torch.Tensor:
        x = x + self._drop(self.attn(self.attn_norm(x), spec, backend=backend))
        return x + self._drop(self.mlp(self.mlp_norm(x)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        """Residual dropout, in training only (`step` is inference and never drops)."""
        return F.dropout(y, self.dropout, self.training) if self.dropout else y

    def step(self, x, spec, k_cache, v_cache, slots, backend="sdpa", rot=None) -> torch.Tensor:
        """The incremental forward: x (B, n, D) at new positions, see `Attention.step`."""
        x = x + self.attn.step(self.attn_norm(x), spec, k_cache, v_cache, slots, backend, rot)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """`n_layers` blocks with causal (optionally windowed) attention inside segments."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def mask(self, seg: torch.Tensor, pos: torch.Tensor) -> MaskSpec:
        """Causal self-attention inside each segment (document), within the window."""
        return MaskSpec(seg, seg, pos, pos, causal=True, window=self.cfg.window or None)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, backend: str = "sdpa"):
        spec = self.mask(seg, pos)
        for block in self.blocks:
            x = block(x, spec, backend)
        return x

    def step(self, x, cache, slots, spec, backend="sdpa", rot=None) -> torch.Tensor:
        """x (B, n, D) at new positions -> (B, n, D), reading and extending a `KVCache`.

        `slots, spec = cache.write(pos, seg)` registers the new positions first;
        `rot` = `self.rope_angles(pos)`, computed here when not given.
        """
        rot = rot or self.rope_angles(spec.q_pos)
        for i, block in enumerate(self.blocks):
            x = block.step(x, spec, cache.k[i], cache.v[i], slots, backend, rot)
        return x

    def rope_angles(self, pos: torch.Tensor):
        c = self.cfg
        return rope_angles(pos, c.dim // c.attn_heads, c.rope_theta) if c.rope_theta else None


def init_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * depth)."""
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue
        std = 0.02
        if name.endswith(("attn.out.weight", "mlp.down.weight")):
            std = 0.02 / math.sqrt(2 * max(n_layers, 1))
        nn.init.normal_(p, mean=0.0, std=std)


def doc_ids(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) byte ids -> (B, T) document index: a new document starts at each BOS.

    Causal by construction (depends on bytes <= t), and it keeps attention,
    n-gram hashes and unpooling inside a document.
    """
    return (ids == BOS).long().cumsum(-1)
