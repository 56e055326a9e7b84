"""The BPE baseline: boundaries are token boundaries, patches round-trip, and it is refused
wherever causality matters."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bytelm.config import PatcherConfig
from bytelm.patchers import make_patcher
from bytelm.patchers.bpe import BPEPatcher, parse_vocab, train_tokenizer
from bytelm.vocab import BOS, EOS, PAD
from tests.conftest import tiny_bytelm_config

TEXT = [
    b"def foo(x):\n    return x + 1  # comment\n" * 20,
    "naïve café, 中文字符 and emoji \U0001f600 in text\n".encode() * 10,
    b"the cat sat on the mat; the dog ran far away.\n" * 30,
]


@pytest.fixture(scope="module")
def bpe():
    return BPEPatcher(train_tokenizer(TEXT, 300), vocab_size=300)


def pieces(data: bytes, lengths) -> list[bytes]:
    out, i = [], 0
    for n in lengths:
        out.append(data[i : i + n])
        i += n
    return out


@settings(max_examples=80, deadline=None)
@given(data=st.one_of(st.binary(min_size=1, max_size=200), st.sampled_from(TEXT)))
def test_patches_round_trip_bytes(bpe, data):
    lengths = bpe.patch(torch.tensor([list(data)]))[0]
    assert b"".join(pieces(data, lengths[lengths > 0].tolist())) == data
    assert bpe.token_lengths(data) == lengths[lengths > 0].tolist()


def test_boundaries_are_token_boundaries_and_specials_are_own_patches(bpe):
    doc = b"the cat sat on the mat"
    ids = torch.tensor([[BOS, *doc, EOS, BOS, *b"the dog", PAD, PAD]])
    lengths = bpe.patch(ids)[0]
    lengths = lengths[lengths > 0].tolist()
    assert lengths[0] == 1 and lengths[len(bpe.token_lengths(doc)) + 1] == 1  # BOS, EOS
    assert lengths[1 : 1 + len(bpe.token_lengths(doc))] == bpe.token_lengths(doc)
    assert sum(lengths) == ids.shape[1] - 2  # PAD is not patched
    assert max(bpe.token_lengths(TEXT[2])) > 3, "a trained BPE merges words into long tokens"


def test_bpe_is_not_causal_and_refused(bpe):
    assert bpe.causal is False
    with pytest.raises(ValueError, match="not causal"):
        bpe.start(1)
    from bytelm.model import ByteLM

    with pytest.raises(ValueError, match="not causal"):
        ByteLM(tiny_bytelm_config(patcher="bpe"))
    with pytest.raises(ValueError, match="no tokenizer"):
        make_patcher(PatcherConfig(name="bpe")).patch(torch.tensor([[97]]))


def test_tokenizer_is_cached_per_corpus(tmp_path):
    from bytelm.data import DataConfig, load_corpus

    d = tmp_path / "docs"
    d.mkdir()
    for i, t in enumerate(TEXT):
        (d / f"{i}.txt").write_bytes(t)
    cfg = DataConfig(sources=(str(d),), split="tail", heldout_fraction=0.2, cache_dir=str(tmp_path))
    train = load_corpus(cfg, progress=False)["train"]
    a = BPEPatcher.for_corpus(train, 320)
    files = list((train.path / "bpe").glob("*.json"))
    assert len(files) == 1
    b = BPEPatcher.for_corpus(train, 320)  # loaded, not retrained
    assert a.token_lengths(TEXT[0]) == b.token_lengths(TEXT[0])
    assert parse_vocab("8k") == 8192 and parse_vocab("32000") == 32000
