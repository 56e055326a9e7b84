"""ByteTransformer: a plain causal transformer over bytes.

The baseline model, the entropy model of the entropy patcher, and the reference
point for throughput. Attention stays inside each document (a new document
starts at BOS), so a document's logits never depend on what is packed before it.
With `ngram_ns` its input embedding adds hashed n-gram lookups (the ByteLM encoder's
`ByteEmbedding`), each reading byte t and the bytes before it in its document.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bytelm.config import TransformerConfig
from bytelm.model.cache import KVCache, TransformerCache, prefill
from bytelm.model.embed import ByteEmbedding
from bytelm.model.layers import RMSNorm, Stack, doc_ids, init_weights
from bytelm.model.loss import HeadLosses, multi_head_loss
from bytelm.vocab import PAD, VOCAB_SIZE


class ByteTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, attn_backend: str = "sdpa"):
        super().__init__()
        self.cfg, self.attn_backend = cfg, attn_backend
        ns = cfg.ngram_ns
        # bytes only: a plain table, the layout of every checkpoint saved before n-grams
        self.embed = (
            ByteEmbedding(cfg.dim, ns, cfg.ngram_buckets, cfg.ngram_dropout)
            if ns
            else nn.Embedding(VOCAB_SIZE, cfg.dim)
        )
        self.history = max(ns, default=1) - 1  # bytes before t in t's n-grams
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
        h = self.stack(self.embed_bytes(ids, docs), docs, pos, self.attn_backend)  # (B, T, D)
        return self.unembed(self.norm(h)).unsqueeze(2)  # (B, T, 1, V)

    def embed_bytes(self, ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """ids, docs (B, T) -> input embeddings (B, T, D); n-grams stay inside a document."""
        return self.embed(ids, docs) if self.history else self.embed(ids)

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
        seen = None
        if self.history:  # every position's byte and document, for the n-grams of later bytes
            seen = torch.full((2, batch, max_len), PAD, dtype=torch.long, device=p.device)
        return TransformerCache(kv, zeros, zeros.clone(), max_len, max_step, seen=seen)

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, cache: TransformerCache, n_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed n new bytes per row, ids (B, n) -> logits (B, n, 1, V), equal to `forward`
        on the whole text so far. `n_valid` (B,) keeps only each row's first bytes."""
        pos, docs = cache._begin(ids)  # (B, n)
        slots, spec = cache.kv.write(pos, docs)
        h = self.stack.step(self._step_embed(ids, pos, docs, cache), cache.kv, slots, spec,
                            self.attn_backend)  # fmt: skip
        cache._advance(docs)
        if n_valid is not None:
            cache.rollback(n_valid)
        return self.unembed(self.norm(h)).unsqueeze(2)  # (B, n, 1, V)

    def _step_embed(self, ids, pos, docs, cache: TransformerCache) -> torch.Tensor:
        """The embeddings of new bytes (B, n) at positions pos: their n-grams read the last
        `history` bytes before pos from `cache.seen` (written by position, so a rollback or
        a clone needs nothing more), then the new bytes are recorded there."""
        if not self.history:
            return self.embed(ids)
        H = self.history
        hpos = pos[:, :1] - H + torch.arange(H, device=ids.device)  # (B, H)
        ok = hpos >= 0
        back = cache.seen.gather(2, hpos.clamp(min=0).expand(2, -1, -1))  # (2, B, H)
        h_ids = torch.where(ok, back[0], PAD)
        h_docs = torch.where(ok, back[1], -1)  # no document: never the new bytes' own
        x = self.embed(torch.cat([h_ids, ids], 1), torch.cat([h_docs, docs], 1))[:, H:]
        cache.seen.scatter_(2, pos.expand(2, -1, -1), torch.stack([ids, docs]))
        return x

    decode = step  # the name ByteLM uses

    @torch.no_grad()
    def prefill(
        self, ids: torch.Tensor, cache: TransformerCache, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prompts ids (B, T), right-padded to lengths (B,) -> logits (B, T, 1, V)."""
        return prefill(self.step, ids, cache, lengths)
