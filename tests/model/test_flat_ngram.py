"""A ByteTransformer with hashed n-gram embeddings: causal, documents apart, cached decode
equal to the forward (rollback included), checkpoints, and an entropy model built on it."""

import pytest
import torch

from bytelm import config as C
from bytelm.checkpoint import load_entropy_model, load_model, save_checkpoint
from bytelm.config import ConfigError, TransformerConfig
from bytelm.evals.flops import param_counts
from bytelm.model import ByteTransformer
from bytelm.patchers.entropy import EntropyPatcher
from bytelm.vocab import BOS, EOS, PAD
from tests.patchers.tiny_entropy import save_tiny_entropy_model

CFG = TransformerConfig(
    dim=32, n_layers=2, attn_heads=2, window=8, ngram_ns=(3, 5), ngram_buckets=64
)


def model() -> ByteTransformer:
    m = ByteTransformer(CFG).eval()
    with torch.no_grad():  # loud n-gram tables: every lookup moves the logits
        m.embed.ngram.weight.mul_(50)
    return m


def text(B=2, T=40, seed=0) -> torch.Tensor:
    ids = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = BOS
    ids[0, 17] = BOS  # row 0 holds two documents
    return ids


def test_step_in_uneven_chunks_equals_forward_and_rollback_forgets():
    m, ids = model(), text()
    full = m(ids)
    cache = m.new_cache(2, 64, 32)
    out = [m.step(ids[:, a:b], cache) for a, b in [(0, 3), (3, 4), (4, 15), (15, 31), (31, 40)]]
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=0, atol=1e-5)

    # a rejected block: bytes stepped and rolled back leave no trace in later n-grams
    cache = m.new_cache(2, 64, 32)
    m.step(ids[:, :20], cache)
    wrong = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    m.step(torch.cat([ids[:, 20:22], wrong[:, 2:]], 1), cache, n_valid=torch.tensor([2, 2]))
    torch.testing.assert_close(m.step(ids[:, 22:30], cache), full[:, 22:30], rtol=0, atol=1e-5)


def test_causal_and_documents_apart():
    m, ids = model(), text()
    base = m(ids)
    for t in (5, 16, 25):
        later = ids.clone()
        later[:, t + 1 :] = (later[:, t + 1 :] + 7) % 256
        later[0, 17] = BOS
        torch.testing.assert_close(m(later)[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
    # the second document of row 0 reads nothing of the first, n-grams included
    other = ids.clone()
    other[0, 1:17] = (other[0, 1:17] + 3) % 256
    torch.testing.assert_close(m(other)[0, 17:], base[0, 17:], rtol=0, atol=1e-6)
    assert not torch.allclose(m(other)[0, :17], base[0, :17])


def test_checkpoint_round_trip_and_sizes(tmp_path):
    m = model()
    cfg = C.RunConfig(arch="transformer", transformer=CFG)
    ck = save_checkpoint(tmp_path / "ck", m, cfg)
    loaded, _ = load_model(ck)
    torch.testing.assert_close(loaded(text()), m(text()), rtol=0, atol=0)
    assert param_counts(CFG)["total"] == sum(p.numel() for p in m.parameters())
    # without n-grams the layout of every older checkpoint: one byte table
    assert "embed.weight" in ByteTransformer(TransformerConfig(dim=32)).state_dict()


@pytest.mark.parametrize(
    "over, fragment",
    [
        (
            {"model.encoder.ngram_ns": "3,4"},
            "model.encoder.ngram_\\* are for a plain ByteTransformer",
        ),
        ({"model.decoder.ngram_dropout": "0.1"}, "model.decoder.ngram_"),
        ({"arch": "transformer", "transformer.ngram_dropout": "1"}, "ngram_dropout must lie"),
        ({"arch": "transformer", "transformer.ngram_ns": "1,3"}, "ngram_ns must lie in 2..16"),
        ({"arch": "transformer", "transformer.ngram_buckets": "-1"}, "ngram_buckets must be >= 0"),
    ],
)
def test_bad_ngram_config_is_one_line(over, fragment):
    with pytest.raises(ConfigError, match=fragment):
        C.override(C.load_preset("tiny"), over)


def test_ngram_dropout_drops_lookups_in_training_only():
    cfg = TransformerConfig(dim=32, n_layers=1, attn_heads=2, ngram_ns=(3, 5), ngram_buckets=64,
                            ngram_dropout=0.5)  # fmt: skip
    m, ids = ByteTransformer(cfg), text()
    with torch.no_grad():
        m.embed.ngram.weight.mul_(50)
    ref = ByteTransformer(TransformerConfig(**{**vars(cfg), "ngram_dropout": 0.0}))
    ref.load_state_dict(m.state_dict())
    m.eval(), ref.eval()
    torch.testing.assert_close(m(ids), ref(ids), rtol=0, atol=0)  # evaluation reads every table
    m.train()
    torch.manual_seed(0)
    a = m(ids)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(ids))  # a different draw of dropped lookups
    assert not torch.allclose(a, ref(ids))


def test_ngram_keys_of_bytelm_stacks_are_not_offered():
    keys = [k for k, _, _ in C.flat_fields()]
    assert "transformer.ngram_dropout" in keys and "model.ngram.dropout" in keys
    assert not [k for k in keys if k.startswith("model.") and ".ngram_" in k]


def test_entropy_model_with_ngrams_steps_as_it_patches(tmp_path):
    path = save_tiny_entropy_model(tmp_path / "ent", context=24, ngram_ns=(3, 4))
    ent, context = load_entropy_model(path)
    p = EntropyPatcher(ent, context, threshold=1.2, max_patch_len=6, source=str(path))
    g = torch.Generator().manual_seed(3)
    rows = [[BOS, *torch.randint(0, 256, (50,), generator=g).tolist(), EOS, BOS, 65, 66],
            [BOS, *torch.randint(0, 256, (30,), generator=g).tolist()]]  # fmt: skip
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    ends = p.ends(ids)
    state = p.start(2)
    stepped = torch.cat([p.step(state, ids[:, i : i + 5]) for i in range(0, T, 5)], 1)
    for b, r in enumerate(rows):
        assert torch.equal(stepped[b, : len(r)], ends[b, : len(r)]), b
    assert ends[0, : len(rows[0])].any() and not ends[0, : len(rows[0])].all()
