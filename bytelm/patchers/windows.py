"""Windows patched as their documents are: the same patching in training, evaluation and
generation.

Training and evaluation rows are windows of a split's stream of packed documents
(`[BOS] + bytes + [EOS]` each), and most start inside a document. Generation feeds a
document to `step` from its BOS. For all three to agree, a row that starts at offset o > 0
of its document is patched as the document's positions o.. are:

- the entropies are the document's, from the split's entropy cache (computed per
  document, `bytelm.patchers.entropy_cache`), never the row's own from a cold context;
- the rule at the row's first byte reads the document's byte (space) or H_{o-1}
  (monotonic, both) before it;
- the forced cut every `max_patch_len` bytes (every k bytes for `fixed:k`) keeps the
  document's phase: it counts from the document's last end before the row.

`row_starts` finds those three things (a `RowStart`) from the split, reading only the
document before the row (causal): the byte and entropy at o - 1, and the bytes since the
last rule end before o. That last end is found by looking back 64 positions, then 4x as
far for the rows that found none, until an end or the document's start: one vectorised
pass per round over all rows, almost always one round. `fixed:k` needs no look back
(its phase is o mod k).

`window_ends` is what the Trainer (`_host_batch`) and every held-out evaluation
(`bytelm.evals.bpb.evaluate_bpb`, `bytelm eval`, `bytelm compare`) call.
"""

from __future__ import annotations

import numpy as np
import torch

from bytelm.patchers.base import RowStart, longest_patch
from bytelm.patchers.static import FixedPatcher
from bytelm.vocab import PAD

LOOK_BACK = 64  # positions before the row read first when looking for the last rule end


def _needs_entropies(patcher) -> bool:
    return patcher.name == "entropy"


def check_source(patcher) -> None:
    """Raise a one-line ValueError for a boundary source that cannot patch windows as their
    documents (a learned router decides from the model's states; BPE is not causal)."""
    if not callable(getattr(patcher, "fires", None)):
        raise ValueError(
            f"bytelm: the {getattr(patcher, 'name', type(patcher).__name__)!r} boundary source "
            "cannot continue a document's patching in a window (it has no `fires`); only the "
            "rule sources (fixed, space, entropy) can"
        )


def row_starts(patcher, split, starts, entropies=None) -> RowStart:
    """Stream starts (B,) of rows of `split` -> their `RowStart` for `patcher.ends`.

    `split`: a `ByteCorpus` (doc_starts, stream_len, ids_at); `entropies`: the split's
    `EntropyCache` (anything with `at(positions)`), which the entropy patcher needs.
    """
    check_source(patcher)
    if _needs_entropies(patcher) and entropies is None:
        raise ValueError("bytelm: the entropy patcher needs the split's entropy cache here")
    starts = np.asarray(starts, dtype=np.int64) % split.stream_len
    d = np.searchsorted(split.doc_starts, starts, side="right") - 1
    o = starts - split.doc_starts[d]  # offset in the document; 0 = its BOS
    inside = o > 0
    prev = np.where(inside, split.ids_at(starts - 1), PAD)
    prev_H = torch.zeros(len(starts))
    if entropies is not None and inside.any():
        prev_H[torch.from_numpy(inside)] = entropies.at(starts[inside] - 1).float()
    return RowStart(
        prev=torch.from_numpy(prev),
        open_len=torch.from_numpy(_open_len(patcher, split, starts, o, entropies)),
        prev_H=prev_H,
    )


def _open_len(patcher, split, starts, o, entropies) -> np.ndarray:
    """Bytes of the document's patch still open before each row (offset o in its document)."""
    M = longest_patch(patcher)
    if isinstance(patcher, FixedPatcher):  # no rule: cuts at offsets k-1, 2k-1, ...
        return o % M
    out = np.zeros(len(o), dtype=np.int64)
    todo = np.flatnonzero(o > 0)
    w = LOOK_BACK
    while len(todo):
        oo, base = o[todo], starts[todo] - o[todo]  # offsets, document starts
        a = np.maximum(oo - w, 0)  # the look back: offsets [a, oo)
        n = int((oo - a).max())
        r = a[:, None] + np.arange(n)[None, :]
        real = r < oo[:, None]
        pos = base[:, None] + np.minimum(r, oo[:, None] - 1)
        ids = torch.from_numpy(np.where(real, split.ids_at(pos), PAD))
        before = np.where(a > 0, split.ids_at(base + a - 1), PAD)
        seg = RowStart(torch.from_numpy(before), torch.zeros(len(a), dtype=torch.long))
        if _needs_entropies(patcher):
            seg.prev_H = entropies.at(base + np.maximum(a - 1, 0)).float()
            fire = patcher.fires(ids, entropies=entropies.at(pos).float(), start=seg)
        else:
            fire = patcher.fires(ids, start=seg)
        fire = fire.numpy() & real
        last = np.where(fire.any(1), n - 1 - fire[:, ::-1].argmax(1), -1)  # in [0, n) or -1
        found = last >= 0
        e = np.where(found, a + last, -1)  # the offset of the last rule end before the row
        done = found | (a == 0)  # none back to the BOS: the end "before" the BOS, -1
        out[todo[done]] = (oo - 1 - e)[done] % M
        todo, w = todo[~done], 4 * w
    return out


def window_ends(patcher, split, starts, ids: torch.Tensor, entropies=None) -> torch.Tensor:
    """Rows `ids` (B, T) of `split` starting at stream positions `starts` (B,) -> ends (B, T),
    each row patched as its documents are (see the module docstring). PAD past a row's real
    bytes (the last evaluation window) is allowed; its ends mean nothing."""
    start = row_starts(patcher, split, starts, entropies).to(ids.device)
    if not _needs_entropies(patcher):
        return patcher.ends(ids, start=start)
    T = ids.shape[1]
    pos = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(T)[None, :]
    H = entropies.at(pos).to(ids.device)
    return patcher.ends(ids, entropies=H, start=start)
