"""ByteTransformer: a plain causal transformer over bytes.

The baseline model, the entropy model of the entropy patcher, and the reference
point for throughput. Attention stays inside each document (a new document
starts at BOS), so a document's logits never depend on what is packed before it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bytelm.config import TransformerConfig
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
