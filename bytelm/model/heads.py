"""Output heads: K predictions per byte, head k for byte t+k, all through one unembedding.

    kind = "block"   every head is a transformer block over the decoder's states (attention
                     with its own KV cache, SwiGLU): the most capable and the most costly,
                     about 12 D^2 multiply-adds per byte per head plus attention.
    kind = "mlp"     head 1 is the decoder's output itself (no extra layer: a one-head model
                     is exactly decoder -> norm -> unembedding); head k >= 2 adds a residual
                     MLP, d + W_2 silu(W_1 norm(d)), hidden = D: 2 D^2 per byte, no cache.
    kind = "linear"  as "mlp" with a residual linear map, d + W norm(d): D^2 per byte.
    kind = "chain"   head 1 as in "mlp"; head k >= 2 a residual MLP that drafts from what
                     the bytes drafted before it say. Its logit at position s predicts byte
                     s + 1, like head 1's, from x + W_2 silu(W_1 norm(x)), x = d[s - k + 1] +
                     e[s]: the decoder state k - 1 bytes back (zero before its document)
                     plus the input embedding of byte s (byte and hashed n-grams, the
                     encoder's). So it reads bytes <= s only, as every logit must. In
                     generation, after the last decoded byte t and the byte t + 1 drawn
                     from head 1, head k at t + k - 1 drafts byte t + k from d[t] and the
                     k - 1 bytes after t: D drafts are a chain of D small steps, each seeing
                     the drafts before it, where an "mlp" head k guesses byte t + k blind to
                     bytes t + 1 .. t + k - 1. Same cost as "mlp" (the lookups are free).

The residual branches of "mlp", "linear" and "chain" start at zero, so every head starts
out predicting what head 1 predicts (a chain head: head 1 of a stale state, plus the new
byte's embedding): a draft head begins as a copy of the next-byte head and learns its offset
from there, instead of from noise.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from bytelm.config import OutputHeadsConfig, TransformerConfig
from bytelm.kernels.attention import MaskSpec
from bytelm.model.layers import Block, RMSNorm


class ResidualHead(nn.Module):
    """d + f(norm(d)), f a one-hidden-layer MLP (hidden = 0: one linear map)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.up = nn.Linear(dim, hidden, bias=False) if hidden else None
        self.down = nn.Linear(hidden or dim, dim, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.down.weight)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        x = self.norm(d)
        if self.up is not None:
            x = F.silu(self.up(x))
        return d + self.down(x)


class OutputHeads(nn.ModuleList):
    """States d (B, T, D) of the decoder -> per-head states (B, T, K, D), before the norm and
    unembedding they share. A list of the heads' layers (K blocks, or K - 1 residual maps),
    so that parameter names stay `heads.<i>.*`."""

    def __init__(self, cfg: OutputHeadsConfig, decoder: TransformerConfig):
        D = decoder.dim
        if cfg.kind == "block":
            super().__init__(Block(decoder) for _ in range(cfg.n))
        else:  # head 1 is the identity; heads 2..K a residual map each
            hidden = 0 if cfg.kind == "linear" else D
            super().__init__(ResidualHead(D, hidden) for _ in range(cfg.n - 1))
        self.kind, self.n = cfg.kind, cfg.n

    @property
    def offsets(self) -> tuple[int, ...]:
        """Which byte each head's logit at position t predicts, as t + offset: t + k for
        head k, or t + 1 for every chain head (see the module docstring)."""
        return (1,) * self.n if self.kind == "chain" else tuple(range(1, self.n + 1))

    @property
    def cache_layers(self) -> int:
        """KV-cache layers the heads need beyond the decoder's, per head computed."""
        return 1 if self.kind == "block" else 0

    def reset_parameters(self) -> None:
        """After the model's `init_weights`: residual heads start as copies of head 1."""
        for layer in self:
            if isinstance(layer, ResidualHead):
                layer.reset_parameters()

    def forward(
        self,
        d: torch.Tensor,
        spec: MaskSpec,
        backend: str,
        draft_grad: bool = True,
        emb: torch.Tensor | None = None,
        docs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`draft_grad=False`: heads 2..K read d detached, so their losses do not reach the
        layers below (see `logits` for the shared unembedding). Chain heads also read the
        input embeddings emb (B, T, D) and the documents (B, T)."""
        dd = d if draft_grad else d.detach()
        if self.kind == "block":
            ys = [self[0](d, spec, backend)] + [
                layer(dd, spec, backend) for layer in list(self)[1:]
            ]
        elif self.kind == "chain":
            at = torch.arange(d.shape[1], device=d.device)
            ee = emb if draft_grad else emb.detach()
            ys = [d] + [layer(_chain_input(dd, ee, docs, at, k)) for k, layer in enumerate(self, 2)]
        else:
            ys = [d] + [layer(dd) for layer in self]
        return torch.stack(ys, dim=2)  # (B, T, K, D)

    def drafts(
        self,
        d: torch.Tensor,
        at: torch.Tensor,
        draft_grad: bool = True,
        emb: torch.Tensor | None = None,
        docs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Heads 2..K alone at positions at (T',) of d (B, T, D) -> (B, T', K - 1, D): what
        `forward` gives them there (residual heads only: a block head reads other positions)."""
        assert self.kind != "block", "drafts at sampled positions need residual heads"
        dd = d if draft_grad else d.detach()
        if self.kind == "chain":
            ee = emb if draft_grad else emb.detach()
            ys = [layer(_chain_input(dd, ee, docs, at, k)) for k, layer in enumerate(self, 2)]
            return torch.stack(ys, dim=2)
        return torch.stack([layer(dd[:, at]) for layer in self], dim=2)

    def chain_step(self, k: int, d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Chain head k >= 2 on a decoder state d (B, D) and the embedding e (B, D) of the
        byte it drafts after (k - 1 bytes past d's) -> its state (B, D), before the norm.
        Its layer's ops fused (`F.rms_norm`): a draft step is launch-bound."""
        h, x = self[k - 2], d + e
        return x + h.down(F.silu(h.up(F.rms_norm(x, x.shape[-1:], h.norm.weight, h.norm.eps))))

    def step(self, d, spec, kv, first_layer: int, slots, backend, rot, heads: int):
        """The incremental forward of the first `heads` heads: d (B, n, D) -> (B, n, heads, D).
        A block head j reads and extends layer `first_layer + j` of the decoder's cache `kv`."""
        if self.kind == "block":
            ys = [
                layer.step(
                    d, spec, kv.k[first_layer + j], kv.v[first_layer + j], slots, backend, rot
                )
                for j, layer in enumerate(list(self)[:heads])
            ]
            return torch.stack(ys, dim=2)
        if heads == 1:
            return d[:, :, None]
        return torch.cat([d[:, :, None], self._residual_all(d, heads - 1)], dim=2)

    def _residual_all(self, d: torch.Tensor, k: int) -> torch.Tensor:
        """Residual heads 2..k+1 at once, d (B, n, D) -> (B, n, k, D): what their layers give,
        in a few ops instead of ~10 per head (decoding is launch-bound). Each head's norm
        weight folds into the matrix after it; the normalisation itself is shared."""
        layers = list(self)[:k]
        xf = d.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + layers[0].norm.eps)).to(d.dtype)
        mlp = layers[0].up is not None
        w = torch.cat([
            (h.up if mlp else h.down).weight * h.norm.weight.to(d.dtype) for h in layers
        ])  # fmt: skip
        y = F.linear(x, w)  # (B, n, k * H): every head's first matrix
        if mlp:
            B, n, _ = y.shape
            down = torch.stack([h.down.weight for h in layers]).transpose(1, 2)  # (k, H, D)
            y = torch.bmm(F.silu(y).view(B * n, k, -1).transpose(0, 1), down)  # (k, B*n, D)
            y = y.transpose(0, 1)
        return d[:, :, None] + y.reshape(*d.shape[:2], k, d.shape[-1])


def _chain_input(d, emb, docs, at, k: int) -> torch.Tensor:
    """Chain head k's input at positions at (T',): d[s - k + 1] (zero before the start of
    s's document) + emb[s], from d, emb (B, T, D) and docs (B, T) -> (B, T', D)."""
    src = at - (k - 1)
    ok = (src >= 0)[None] & (docs[:, src.clamp(min=0)] == docs[:, at])  # (B, T')
    return d[:, src.clamp(min=0)] * ok[..., None].to(d.dtype) + emb[:, at]


def draft_positions(
    cfg: OutputHeadsConfig, seq_len: int, seed: int, step: int
) -> torch.Tensor | None:
    """The window positions (T',) at which heads 2..K train in micro-batch `step`: a random
    `draft_sample` share of them, a pure function of the seed and the step (as the batch is,
    so a resumed run draws the same), or None: every position."""
    if cfg.n == 1 or cfg.draft_sample == 1.0:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n = max(1, round(cfg.draft_sample * seq_len))
    return torch.randperm(seq_len, generator=g)[:n].sort().values


def logits(y: torch.Tensor, norm: RMSNorm, unembed: nn.Linear, draft_grad: bool = True):
    """Per-head states y (B, T, K, D) -> logits (B, T, K, V) through the shared norm and
    unembedding. `draft_grad=False`: heads 2..K use them as constants (detached weights), so
    only head 1's loss trains them."""
    if draft_grad or y.shape[2] == 1:
        return unembed(norm(y))
    first = unembed(norm(y[:, :, :1]))
    return torch.cat([first, draft_logits(y[:, :, 1:], norm, unembed, draft_grad)], dim=2)


def draft_logits(y: torch.Tensor, norm: RMSNorm, unembed: nn.Linear, draft_grad: bool = True):
    """States of draft heads only (..., D) -> logits (..., V), as `logits` treats them."""
    if draft_grad:
        return unembed(norm(y))
    x = functional_call(norm, {"weight": norm.weight.detach()}, (y,))
    return F.linear(x, unembed.weight.detach())
