"""Windows patched as their documents are: `RowStart`, `row_starts`, `window_ends`, and the
corpus's stream lookups they read (the end-to-end check is tests/test_same_patching.py)."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bytelm.data import DataConfig, load_corpus
from bytelm.patchers import FixedPatcher, SpacePatcher
from bytelm.patchers.windows import RowStart, row_starts, window_ends
from bytelm.vocab import BOS, EOS


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Three documents of stdlib code, 300-800 bytes each."""
    d = tmp_path_factory.mktemp("docs")
    root = Path(sysconfig.get_paths()["stdlib"])
    for i, (name, n) in enumerate([("textwrap.py", 800), ("shlex.py", 300), ("bisect.py", 600)]):
        (d / f"doc{i}.py").write_bytes((root / name).read_bytes()[2000 : 2000 + n])
    cfg = DataConfig(
        sources=(str(d),), split="tail", heldout_fraction=0.9,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )  # fmt: skip
    return load_corpus(cfg, progress=False)["heldout"]


def test_ids_at_and_locate_agree_with_window(heldout):
    n = int(heldout.stream_len)
    pos = np.arange(-3, n + 3)
    assert np.array_equal(heldout.ids_at(pos), heldout.window(-3 % n, len(pos)))
    d, r = heldout.locate(heldout.doc_starts[:-1] + 2)
    assert d.tolist() == list(range(heldout.n_docs)) and r.tolist() == [2] * heldout.n_docs
    assert heldout.ids_at(heldout.doc_starts[:-1]).tolist() == [BOS] * heldout.n_docs
    assert heldout.ids_at(heldout.doc_starts[1:] - 1).tolist() == [EOS] * heldout.n_docs
    starts = heldout.eval_starts(16)
    windows = torch.cat(list(heldout.eval_batches(16, 5)))
    assert len(starts) == len(windows)
    for s, w in zip(starts[:-1], windows[:-1]):
        assert torch.equal(w, torch.from_numpy(heldout.window(int(s), 16)))


# ------------------------------------------------------------------ row starts


@pytest.mark.parametrize("patcher", [FixedPatcher(k=4, max_patch_len=6), SpacePatcher(5)])
def test_row_start_continues_the_document(patcher, heldout):
    """ends(window, start=row_starts(...)) == the whole document's ends at those positions,
    for windows starting at every offset of a document (a long word needs a long look back)."""
    d = 1
    doc = torch.tensor([BOS, *heldout.doc(d), EOS])
    doc[40:200] = ord("x")  # 160 bytes without a space: the look back must pass them
    full = patcher.ends(doc[None])[0]
    a = int(heldout.doc_starts[d])

    class Edited:  # the split with document d edited, as row_starts reads it
        doc_starts, stream_len = heldout.doc_starts, heldout.stream_len

        def ids_at(self, positions):
            out = heldout.ids_at(positions)
            inside = (positions >= a) & (positions < a + len(doc))
            out[inside] = doc.numpy()[positions[inside] - a]
            return out

    offsets = np.arange(len(doc) - 12)
    rows = torch.stack([doc[o : o + 12] for o in offsets])
    start = row_starts(patcher, Edited(), a + offsets)
    assert isinstance(start, RowStart)
    got = patcher.ends(rows, start=start)
    for o in offsets:
        assert torch.equal(got[o], full[o : o + 12]), o
    cold = patcher.ends(rows)  # the check can fail: rows patched as if each began a document
    assert not all(torch.equal(cold[o], full[o : o + 12]) for o in offsets)


def test_window_ends_of_rows_crossing_documents(heldout):
    """A window that runs into the next document restarts the patching at its BOS."""
    p = FixedPatcher(k=4, max_patch_len=6)
    starts = heldout.doc_starts[1:3] - 5  # 5 bytes before documents 1 and 2 begin
    ids = torch.from_numpy(np.stack([heldout.window(int(s), 20) for s in starts]))
    ends = window_ends(p, heldout, starts, ids)
    for b, s in enumerate(starts):
        d = int(np.searchsorted(heldout.doc_starts, s, side="right")) - 1
        prev = torch.tensor([BOS, *heldout.doc(d), EOS])
        nxt = torch.tensor([BOS, *heldout.doc(d + 1), EOS])
        assert torch.equal(ends[b, :5], p.ends(prev[None])[0, -5:])
        assert torch.equal(ends[b, 5:], p.ends(nxt[None])[0, :15])


class OneDocument:
    """`split` with document d replaced by `doc` ([BOS] + bytes + [EOS], same length), and the
    entropies a whole-document pass gives it: what `window_ends` reads from a split."""

    def __init__(self, split, d, doc, patcher=None):
        self.split, self.a, self.doc = split, int(split.doc_starts[d]), doc
        self.doc_starts, self.stream_len = split.doc_starts, split.stream_len
        assert len(doc) == split.doc_starts[d + 1] - self.a
        self.H = None if patcher is None else patcher.entropies(doc[None])[0]

    def _inside(self, positions):
        positions = np.asarray(positions) % self.stream_len
        return positions, (positions >= self.a) & (positions < self.a + len(self.doc))

    def ids_at(self, positions):
        positions, inside = self._inside(positions)
        out = self.split.ids_at(positions)
        out[inside] = self.doc.numpy()[positions[inside] - self.a]
        return out

    def at(self, positions):  # the entropy cache's interface
        positions, inside = self._inside(positions)
        assert inside.all(), "only document d is read"
        return self.H[torch.from_numpy(positions - self.a)]


@pytest.mark.parametrize("kind", ["fixed", "space", "entropy-global", "entropy-monotonic"])
def test_window_ends_match_the_document_and_are_causal(kind, heldout, entropy_model):
    """Windows at every offset of a document get the document's ends (entropy: with the
    document's entropies, chunked at the tiny model's context 16), and changing the
    document's bytes after t changes no window's ends at positions <= t."""
    from bytelm.checkpoint import load_entropy_model
    from bytelm.patchers.entropy import EntropyPatcher

    if kind.startswith("entropy"):
        model, context = load_entropy_model(entropy_model)
        mode = kind.split("-")[1]
        p = EntropyPatcher(model, context, mode, 1.5 if mode == "global" else 0.3, 5)
    else:
        p = FixedPatcher(k=4, max_patch_len=6) if kind == "fixed" else SpacePatcher(5)
    d, W, t = 0, 10, 300
    doc = torch.tensor([BOS, *heldout.doc(d), EOS])
    offsets = np.arange(len(doc) - W)
    a = int(heldout.doc_starts[d])

    def windows(doc):
        src = OneDocument(heldout, d, doc, p if kind.startswith("entropy") else None)
        rows = torch.stack([doc[o : o + W] for o in offsets])
        return window_ends(p, src, a + offsets, rows, src.H is not None and src or None)

    full = p.ends(doc[None])[0]
    got = windows(doc)
    assert full.any() and not full.all()
    for o in offsets:
        assert torch.equal(got[o], full[o : o + W]), o
    changed = doc.clone()
    changed[t + 1 : -1] = torch.randint(
        0, 256, (len(doc) - t - 2,), generator=torch.Generator().manual_seed(0)
    )
    again = windows(changed)
    for o in offsets[offsets <= t]:
        n = min(W, t + 1 - o)
        assert torch.equal(again[o, :n], got[o, :n]), o
    if kind != "fixed":  # the check can fail: later bytes do change later ends
        assert not torch.equal(again, got)
