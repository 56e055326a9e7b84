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
