"""Hashed n-gram embeddings: the vectorised hashes against the definition, shift by shift."""

import pytest
import torch

from bytelm.model.embed import _BASE, _MIX, _MOD, ngram_hashes
from bytelm.vocab import PAD


def reference_hashes(ids, docs, ns, buckets):
    """The definition: a rolling hash over the bytes s = 0, 1, ... positions back, PAD
    outside the window or the document."""
    h, power, out = torch.zeros_like(ids), 1, {}
    for s in range(max(ns)):
        back = torch.full_like(ids, PAD)
        if s == 0:
            back = ids
        else:
            same = docs[:, s:] == docs[:, :-s]
            back[:, s:] = torch.where(same, ids[:, :-s], torch.full_like(ids[:, s:], PAD))
        h = (h + (back + 1) * power) % _MOD
        power = (power * _BASE) % _MOD
        if s + 1 in ns:
            out[s + 1] = ((h * _MIX + s + 1) % (1 << 32)) % buckets
    return torch.stack([out[n] for n in ns], dim=-1)


@pytest.mark.parametrize("T", [1, 2, 7, 63])
@pytest.mark.parametrize("ns", [(3, 4, 5, 6, 7, 8), (2,), (5, 3), (16,)])
def test_hashes_equal_the_shift_by_shift_definition(T, ns):
    g = torch.Generator().manual_seed(T)
    ids = torch.randint(0, 259, (3, T), generator=g)
    docs = torch.randint(-1, 3, (3, T), generator=g).sort(1).values  # runs of documents
    got = ngram_hashes(ids, docs, ns, 4096)
    assert torch.equal(got, reference_hashes(ids, docs, ns, 4096))
    assert got.min() >= 0 and got.max() < 4096
