"""Byte + hashed n-gram embeddings.

For each n in `ns`, a polynomial rolling hash of the n bytes ending at t picks
one of `buckets` rows of that n's table; the rows are summed into the byte
embedding. Bytes from another document (or before the window) are replaced
by PAD in the hash, so the embedding of a byte never depends on what was
packed before its document. Lookups cost no FLOPs, which is why large hashed
input vocabularies are cheap to add.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bytelm.vocab import PAD, VOCAB_SIZE

_MOD = 2_147_483_647  # 2^31 - 1: products with _BASE stay below 2^63 in int64
_BASE = 1_000_003
_MIX = 2_654_435_761  # Knuth's multiplicative constant; spreads hashes over power-of-two buckets


def auto_buckets(dim: int) -> int:
    """The default bucket count per n: 32 * dim rounded up to a power of two."""
    b = 1
    while b < 32 * dim:
        b *= 2
    return b


def ngram_hashes(
    ids: torch.Tensor, docs: torch.Tensor, ns: tuple[int, ...], buckets: int
) -> torch.Tensor:
    """ids, docs (B, T) -> bucket indices (B, T, len(ns)), each in [0, buckets)."""
    B, T = ids.shape
    h = torch.zeros_like(ids)
    power = 1
    out = {}
    for s in range(max(ns)):
        # the byte s positions back, or PAD when it is outside the window or the document
        if s == 0:
            back = ids
        else:
            back = torch.full_like(ids, PAD)
            same = docs[:, s:] == docs[:, :-s]
            back[:, s:] = torch.where(same, ids[:, :-s], torch.full_like(ids[:, s:], PAD))
        h = (h + (back + 1) * power) % _MOD
        power = (power * _BASE) % _MOD
        if s + 1 in ns:
            out[s + 1] = ((h * _MIX + s + 1) % (1 << 32)) % buckets
    return torch.stack([out[n] for n in ns], dim=-1)


class ByteEmbedding(nn.Module):
    def __init__(self, dim: int, ns: tuple[int, ...], buckets: int):
        super().__init__()
        self.ns, self.buckets = tuple(ns), buckets or auto_buckets(dim)
        self.byte = nn.Embedding(VOCAB_SIZE, dim)
        self.ngram = nn.Embedding(len(self.ns) * self.buckets, dim) if self.ns else None
        offsets = torch.arange(len(self.ns), dtype=torch.long) * self.buckets
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """ids, docs (B, T) -> (B, T, D)."""
        x = self.byte(ids)
        if self.ngram is not None:
            idx = ngram_hashes(ids, docs, self.ns, self.buckets) + self.offsets  # (B, T, n_ns)
            # embedding_bag sums the lookups without materialising (B, T, n_ns, D)
            bags = F.embedding_bag(idx.reshape(-1, idx.shape[-1]), self.ngram.weight, mode="sum")
            x = x + bags.view_as(x)
        return x
