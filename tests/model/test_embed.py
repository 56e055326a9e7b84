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


def test_ngram_dropout_drops_whole_lookups_in_training_only():
    """In training each (byte, n) lookup is kept or dropped whole, the kept ones scaled by
    1 / (1 - p); in evaluation every lookup is read, as with no dropout."""
    import itertools

    from bytelm.model.embed import ByteEmbedding

    torch.manual_seed(0)
    p, ns = 0.5, (3, 4, 5)
    emb = ByteEmbedding(16, ns, 64, dropout=p)
    plain = ByteEmbedding(16, ns, 64)
    plain.load_state_dict(emb.state_dict())
    ids = torch.randint(0, 256, (2, 40))
    docs = torch.zeros_like(ids)
    emb.eval()
    assert torch.equal(emb(ids, docs), plain(ids, docs))

    emb.train()
    got = emb(ids, docs) - emb.byte(ids)  # (B, T, D): the n-gram part
    rows = emb.ngram.weight[ngram_hashes(ids, docs, ns, 64) + emb.offsets]  # (B, T, n, D)
    subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(ns))))  # (8, n)
    sums = torch.einsum("sn,btnd->btsd", subsets / (1 - p), rows)  # every keep pattern
    err = (sums - got[:, :, None]).abs().amax(-1).amin(-1)  # (B, T): the nearest pattern
    assert err.max() < 1e-5
    kept = (sums - got[:, :, None]).abs().amax(-1).argmin(-1)  # (B, T) the pattern chosen
    frac = subsets[kept].mean()
    assert 0.35 < frac < 0.65, frac  # about half the lookups kept (80 bytes x 3 orders)
    assert not torch.equal(emb(ids, docs), emb(ids, docs))  # a new mask per call


def test_block_dropout_only_in_training():
    from bytelm.config import TransformerConfig
    from bytelm.model.transformer import ByteTransformer

    torch.manual_seed(0)
    m = ByteTransformer(TransformerConfig(dim=32, n_layers=2, dropout=0.3))
    ref = ByteTransformer(TransformerConfig(dim=32, n_layers=2))
    ref.load_state_dict(m.state_dict())
    ids = torch.randint(0, 256, (2, 24))
    m.eval()
    assert torch.equal(m(ids), ref(ids))
    m.train()
    assert not torch.allclose(m(ids), ref(ids))
