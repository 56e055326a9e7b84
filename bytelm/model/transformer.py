"""ByteTransformer: a plain causal transformer over bytes.

The baseline model, the entropy model of the entropy patcher, and the reference
point for throughput. Attention stays inside each document (a new document
starts at BOS), so a document's logits never depend on what is packed before it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bytelm.config import TransformerConfig
from bytelm.model.cache import KVCache, TransformerCache, prefill
from bytelm.model.layers import RMSNorm, Stack, doc_ids, init_weights
from bytelm.model.loss import HeadLosses, multi_head_loss
from bytelm.vocab import VOCAB_SIZE


class ByteTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, attn_backend: str = "sdpa"):
        super().__init__()
        self.cfg, self.attn_backend = cfg, attn_backend
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.stack = Stack(cfg)
        self.norm = RMSNorm(cfg.dim)
        self.unembed = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)
        init_weights(self, cfg.n_layers)

    @property
    def n_heads_out(self) -> int:
        return 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, 1, V), the same layout as ByteLM with one head."""
        B, T = ids.shape
        docs = doc_ids(ids)
        pos = torch.arange(T, device=ids.device).expand(B, T)
        h = self.stack(self.embed(ids), docs, pos, self.attn_backend)  # (B, T, D)
        return self.unembed(self.norm(h)).unsqueeze(2)  # (B, T, 1, V)

    def loss(self, ids: torch.Tensor) -> HeadLosses:
        return multi_head_loss(self(ids), ids, doc_ids(ids))

    # ------------------------------------------------------------ incremental

    def new_cache(
        self, batch: int, max_len: int, max_step: int = 64, heads: int | None = None
    ) -> TransformerCache:
        """A static KV cache for `batch` rows of up to `max_len` bytes, `max_step` per call."""
        p = self.unembed.weight
        kv = KVCache.for_stack(self.cfg, batch, max_len, max_step, p.dtype, p.device)
        zeros = torch.zeros(batch, dtype=torch.long, device=p.device)
        return TransformerCache(kv, zeros, zeros.clone(), max_len, max_step)

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, cache: TransformerCache, n_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed n new bytes per row, ids (B, n) -> logits (B, n, 1, V), equal to `forward`
        on the whole text so far. `n_valid` (B,) keeps only each row's first bytes."""
        pos, docs = cache._begin(ids)  # (B, n)
        slots, spec = cache.kv.write(pos, docs)
        h = self.stack.step(self.embed(ids), cache.kv, slots, spec, self.attn_backend)
        cache._advance(docs)
        if n_valid is not None:
            cache.rollback(n_valid)
        return self.unembed(self.norm(h)).unsqueeze(2)  # (B, n, 1, V)

    decode = step  # the name ByteLM uses

    @torch.no_grad()
    def prefill(
        self, ids: torch.Tensor, cache: TransformerCache, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prompts ids (B, T), right-padded to lengths (B,) -> logits (B, T, 1, V)."""
        return prefill(self.step, ids, cache, lengths)
