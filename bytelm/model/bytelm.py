"""ByteLM: the hierarchical byte model.

    bytes ─ embed ─ encode ─ pool ─ latent ─ unpool ─ decode ─ heads ─ logits
            (byte + hashed   (patches)  (one step      (K heads, head k
             n-grams)                    per patch)     predicts byte t+k)

Causality rule: the prediction at byte t may read the latent output of every
patch that is complete by byte t, and of no other patch. Patchers are causal,
so whether byte t closes its patch (`ends[t]`) is known at t; when it does,
byte t already reads that patch's latent state, and the first byte of the next
patch (usually the hardest) is predicted with fresh latent context.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bytelm.config import ByteLMConfig
from bytelm.kernels.attention import MaskSpec
from bytelm.kernels.pooling import pool, unpool
from bytelm.model.embed import ByteEmbedding
from bytelm.model.layers import Attention, Block, RMSNorm, Stack, doc_ids, init_weights
from bytelm.model.loss import HeadLosses, multi_head_loss
from bytelm.patchers import ends_to_lengths, lengths_to_ids, lengths_to_offsets, make_patcher
from bytelm.vocab import PAD, VOCAB_SIZE


class ByteLM(nn.Module):
    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.cfg = cfg
        D, G = cfg.encoder.dim, cfg.latent.dim
        self.patcher = make_patcher(cfg.patcher)
        if not getattr(self.patcher, "causal", True):
            raise ValueError(
                f"bytelm: the {self.patcher.name!r} patcher is not causal (its boundaries depend on "
                "future bytes), so ByteLM cannot train or generate with it"
            )
        self.embed = ByteEmbedding(D, cfg.ngram.ns, cfg.ngram.buckets)
        self.encoder = Stack(cfg.encoder)
        if cfg.pooling == "attn":
            self.pool_norm = RMSNorm(D)
            self.pool_attn = Attention(D, cfg.encoder.n_heads, rope_theta=None)
        self.to_latent = nn.Linear(D, G, bias=False)
        self.latent = Stack(cfg.latent)
        self.latent_norm = RMSNorm(G)
        self.from_latent = nn.Linear(G, D, bias=False)
        self.decoder = Stack(cfg.decoder)
        self.heads = nn.ModuleList(Block(cfg.decoder) for _ in range(cfg.heads.n))
        self.norm = RMSNorm(D)
        self.unembed = nn.Linear(D, VOCAB_SIZE, bias=False)  # shared by every head
        init_weights(self, cfg.encoder.n_layers + cfg.latent.n_layers + cfg.decoder.n_layers + 1)

    @property
    def n_heads_out(self) -> int:
        return self.cfg.heads.n

    def forward(self, ids: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, K, V). `ends` (B, T) bool overrides the patcher."""
        B, T = ids.shape
        backend = self.cfg.attn_backend
        docs = doc_ids(ids)  # (B, T)
        pos = torch.arange(T, device=ids.device).expand(B, T)
        if ends is None:
            ends = self.patcher.ends(ids)
        n_bytes = (ids != PAD).sum(-1)
        lengths = ends_to_lengths(ends, n_bytes)  # (B, P)
        assert lengths.sum(-1).eq(n_bytes).all(), "patch lengths must cover every byte"
        patch_ids = lengths_to_ids(lengths, T)  # (B, T), -1 on PAD
        P = lengths.shape[1]

        # embed
        h = self.embed(ids, docs)  # (B, T, D)

        # encode
        h = self.encoder(h, docs, pos, backend)  # (B, T, D)

        # pool
        p = pool(
            h, lengths, "mean" if self.cfg.pooling == "attn" else self.cfg.pooling
        )  # (B, P, D)
        real = lengths > 0  # (B, P) empty slots pad rows with fewer patches
        patch_pos = torch.arange(P, device=ids.device).expand(B, P)
        if self.cfg.pooling == "attn":
            # each patch query reads only its own bytes; the query starts as the mean
            q_seg = torch.where(real, patch_pos, torch.full_like(patch_pos, -2))
            spec = MaskSpec(q_seg, patch_ids, patch_pos, pos, causal=False)
            p = p + self.pool_attn(self.pool_norm(p), spec, kv=h, backend=backend)

        # latent
        starts = lengths_to_offsets(lengths).clamp(max=T - 1)  # (B, P)
        patch_docs = torch.where(real, docs.gather(1, starts), torch.full_like(starts, -1))
        z = self.latent(self.to_latent(p), patch_docs, patch_pos, backend)  # (B, P, G)
        z = self.from_latent(self.latent_norm(z))  # (B, P, D)

        # unpool: byte t reads the last patch complete by t (its own patch if t ends it)
        ctx = patch_ids - (~ends).long()  # (B, T)
        ctx_doc = patch_docs.gather(1, ctx.clamp(min=0))
        ctx = torch.where(
            (ctx >= 0) & (patch_ids >= 0) & (ctx_doc == docs), ctx, torch.full_like(ctx, -1)
        )
        u = unpool(z, ctx)  # (B, T, D)

        # decode
        d = self.decoder(h + u, docs, pos, backend)  # (B, T, D)

        # heads
        spec = self.decoder.mask(docs, pos)
        return torch.stack(
            [self.unembed(self.norm(head(d, spec, backend))) for head in self.heads], dim=2
        )  # (B, T, K, V)

    def loss(self, ids: torch.Tensor, ends: torch.Tensor | None = None) -> HeadLosses:
        return multi_head_loss(self(ids, ends), ids, doc_ids(ids), self.cfg.heads.weights)
