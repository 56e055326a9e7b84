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
    """ids, docs (B, T) -> bucket indices (B, T, len(ns)), each in [0, buckets).

    h_n(t) = sum_{s < n} (back_s(t) + 1) * BASE^s  (mod 2^31 - 1), where back_s(t) is the
    byte s positions back, or PAD outside the window or the document; then mixed into
    buckets. All n at once from one (B, T, max n) window of back bytes: a fixed number
    of tensor ops whatever the n-gram orders (each term < 2^40, so a sum of up to 16
    stays exact in int64 before the modulus).
    """
    B, T = ids.shape
    S = max(ns)
    back = F.pad(ids, (S - 1, 0), value=PAD).unfold(1, S, 1).flip(-1)  # (B, T, S): s back
    back_docs = F.pad(docs, (S - 1, 0)).unfold(1, S, 1).flip(-1)  # (B, T, S)
    s = torch.arange(S, device=ids.device)
    inside = torch.arange(T, device=ids.device)[:, None] >= s  # (T, S) t - s is in the window
    back = torch.where(inside & (back_docs == docs[..., None]), back, PAD)
    orders = torch.tensor(ns, device=ids.device)
    return _buckets(back, _powers(S, ids.device), orders, buckets)


def _buckets(back, powers, orders, buckets: int) -> torch.Tensor:
    """Back bytes (..., S) (s back, PAD masked) -> each order's bucket (..., len(orders))."""
    h = ((back + 1) * powers).cumsum(-1) % _MOD  # (..., S): h_{s+1}
    h = h.index_select(-1, orders - 1)  # (..., len(orders))
    return ((h * _MIX + orders) % (1 << 32)) % buckets


def _powers(S: int, device) -> torch.Tensor:
    """BASE^s mod MOD for s < S, as int64 (S,)."""
    p, out = 1, []
    for _ in range(S):
        out.append(p)
        p = (p * _BASE) % _MOD
    return torch.tensor(out, dtype=torch.long, device=device)


class ByteEmbedding(nn.Module):
    def __init__(self, dim: int, ns: tuple[int, ...], buckets: int, dropout: float = 0.0):
        super().__init__()
        self.ns, self.buckets = tuple(ns), buckets or auto_buckets(dim)
        self.dropout = dropout
        self.byte = nn.Embedding(VOCAB_SIZE, dim)
        self.ngram = nn.Embedding(len(self.ns) * self.buckets, dim) if self.ns else None
        offsets = torch.arange(len(self.ns), dtype=torch.long) * self.buckets
        self.register_buffer("offsets", offsets, persistent=False)
        S = max(self.ns, default=1)  # for `last`: the hash's powers and the orders
        self.register_buffer("powers", _powers(S, "cpu"), persistent=False)
        self.register_buffer("orders", torch.tensor(self.ns, dtype=torch.long), persistent=False)

    def last(self, win: torch.Tensor) -> torch.Tensor:
        """The embedding (B, D) of the last byte of win (B, S), S = the largest n (1 without
        n-grams): that byte and the S - 1 before it, oldest first, PAD for any outside its
        document or the text. What `forward` gives that byte, in a few ops (a draft step)."""
        x = self.byte(win[:, -1])
        if self.ngram is None:
            return x
        idx = _buckets(win.flip(-1), self.powers, self.orders, self.buckets) + self.offsets
        return x + F.embedding_bag(idx, self.ngram.weight, mode="sum")

    def forward(self, ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        """ids, docs (B, T) -> (B, T, D)."""
        x = self.byte(ids)
        if self.ngram is not None:
            idx = ngram_hashes(ids, docs, self.ns, self.buckets) + self.offsets  # (B, T, n_ns)
            idx = idx.reshape(-1, idx.shape[-1])  # (B * T, n_ns)
            keep = None  # in training, drop each lookup with p = dropout, scale the rest up
            if self.dropout and self.training:
                keep = torch.bernoulli(torch.full(idx.shape, 1 - self.dropout, device=idx.device))
                keep = (keep / (1 - self.dropout)).to(self.ngram.weight.dtype)
            # embedding_bag sums the lookups without materialising (B, T, n_ns, D)
            bags = F.embedding_bag(idx, self.ngram.weight, mode="sum", per_sample_weights=keep)
            x = x + bags.view_as(x)
        return x
