"""One split of an encoded corpus, memory-mapped: documents, windows, training batches."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bytelm.data.cache import _build, _cache_ok, _cache_root, _fingerprint
from bytelm.data.sources import SPLITS, DataConfig, _resolve_files
from bytelm.vocab import BOS, EOS, PAD

SAMPLE_SEED = 20251  # the one permutation `ByteCorpus.sample_starts` deals windows from

# -----------------------------------------------------------------------------
# a split of the corpus, memory-mapped


class ByteCorpus:
    """One split of an encoded corpus, memory-mapped read-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets = np.memmap(self.path / "offsets.i64", dtype="<i8", mode="r")
        self.n_docs = len(self.offsets) - 1
        self.n_bytes = int(self.offsets[-1])
        assert self.n_docs >= 1 and self.n_bytes >= 1, f"empty split at {self.path}"
        self.bytes = np.memmap(self.path / "bytes.u8", dtype=np.uint8, mode="r")
        assert len(self.bytes) == self.n_bytes, f"offsets and bytes disagree in {self.path}"
        # where document i's BOS sits in the virtual stream: 2 specials per earlier document
        self.doc_starts = np.asarray(self.offsets) + 2 * np.arange(self.n_docs + 1)
        self.stream_len = self.n_bytes + 2 * self.n_docs

    @classmethod
    def build(cls, config: DataConfig, progress: bool = False) -> dict[str, ByteCorpus]:
        """Encode the corpus once (or reuse the cache) -> {"train": ..., "heldout": ...}."""
        files = _resolve_files(config.sources)
        final = _cache_root(config) / _fingerprint(config, files)
        if not _cache_ok(final):
            if final.exists():  # not written by a finished build of this version; start over
                shutil.rmtree(final)
            _build(config, files, final, progress)
        return {s: cls(final / s) for s in SPLITS}

    def __repr__(self):
        return f"ByteCorpus({str(self.path)!r}, n_docs={self.n_docs}, n_bytes={self.n_bytes})"

    def doc(self, i: int) -> bytes:
        """The raw bytes of document i (no specials)."""
        if not 0 <= i < self.n_docs:
            raise IndexError(f"document {i} out of range [0, {self.n_docs})")
        return self.bytes[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def window(self, start: int, length: int) -> np.ndarray:
        """Ids of the virtual stream [start, start + length), wrapping at its end -> int64[length].

        Any start works (it is taken mod stream_len). Loops once per document the
        window touches, after one binary search for the first.
        """
        out = np.empty(length, dtype=np.int64)
        cur = start % self.stream_len
        d = int(np.searchsorted(self.doc_starts, cur, side="right")) - 1
        o = cur - int(self.doc_starts[d])  # position inside [BOS] + bytes + [EOS] of document d
        pos = 0
        while pos < length:  # one iteration per document the window touches
            lo, hi = int(self.offsets[d]), int(self.offsets[d + 1])
            n = hi - lo
            k = min(n + 2 - o, length - pos)
            seg = out[pos : pos + k]  # virtual positions o .. o+k of this document
            a, b = max(o, 1), min(o + k, n + 1)  # the part of it that is real bytes
            seg[a - o : b - o] = self.bytes[lo + a - 1 : lo + b - 1]
            if o == 0:
                seg[0] = BOS
            if o + k == n + 2:
                seg[-1] = EOS
            pos += k
            d, o = (d + 1) % self.n_docs, 0
        return out

    def locate(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions (any shape, taken mod stream_len) -> (document, offset in it), where
        offset 0 is the document's BOS and offset n + 1 its EOS. A window starting at a
        position with offset > 0 starts inside its document."""
        p = np.asarray(positions, dtype=np.int64) % self.stream_len
        d = np.searchsorted(self.doc_starts, p, side="right") - 1
        return d, p - self.doc_starts[d]

    def ids_at(self, positions) -> np.ndarray:
        """Ids of the virtual stream at positions (any shape, taken mod stream_len) -> int64,
        vectorised (`window` reads a span; this reads any scattered positions)."""
        d, r = self.locate(positions)
        lo = np.asarray(self.offsets)[d]
        n = np.asarray(self.offsets)[d + 1] - lo
        at = np.clip(lo + r - 1, 0, self.n_bytes - 1)  # the byte, where r is one
        out = self.bytes[at].astype(np.int64)
        return np.where(r == 0, BOS, np.where(r == n + 1, EOS, out))

    def train_batch(
        self,
        step: int,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> torch.Tensor:
        """Random windows for one step -> LongTensor[batch_size, seq_len].

        A pure function of (seed, step): a resumed run replays the same data from
        its step alone. Every rank draws the same batch_size * world_size starts
        and keeps its own slice, so ranks train on different windows.
        """
        starts = self.train_starts(step, batch_size, seed, rank, world_size)
        return torch.from_numpy(np.stack([self.window(int(s), seq_len) for s in starts]))

    def train_starts(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> np.ndarray:
        """The virtual-stream starts of `train_batch(step, ...)`'s windows -> int64[batch_size].

        Anything aligned with the stream (cached entropies) reads the same windows from these.
        """
        assert 0 <= rank < world_size, f"rank {rank} not in [0, {world_size})"
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, self.stream_len, size=batch_size * world_size)
        return starts[rank * batch_size : (rank + 1) * batch_size]

    def _eval_len(self, max_bytes: int | None) -> int:
        """How many stream positions are predicted in eval (every one but the first BOS)."""
        n = self.stream_len - 1
        return n if max_bytes is None else min(n, max_bytes)

    def n_eval_windows(self, seq_len: int, max_bytes: int | None = None) -> int:
        """How many windows `eval_batches` yields in total."""
        return -(-self._eval_len(max_bytes) // (seq_len - 1))

    def eval_starts(self, seq_len: int, max_bytes: int | None = None) -> np.ndarray:
        """The stream start of every window `eval_batches` yields, in order -> int64[n]."""
        return np.arange(self.n_eval_windows(seq_len, max_bytes), dtype=np.int64) * (seq_len - 1)

    def eval_batches(
        self, seq_len: int, batch_size: int, max_bytes: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The split in order, as LongTensor[<=batch_size, seq_len] batches of windows.

        Window i covers the stream [i*(seq_len-1), i*(seq_len-1) + seq_len): windows
        overlap by one id, so predicting positions 1.. of each window predicts
        every id but the stream's first BOS exactly once. The last window is
        right-padded with PAD. `max_bytes` keeps only the first max_bytes predicted
        positions (a deterministic prefix of the stream, the same every eval).
        """
        assert seq_len >= 2, "a window needs at least one prediction"
        end = self._eval_len(max_bytes) + 1  # eval reads stream positions [0, end)
        starts = self.eval_starts(seq_len, max_bytes)
        for first in range(0, len(starts), batch_size):
            batch = np.full((len(starts[first : first + batch_size]), seq_len), PAD, np.int64)
            for row, start in enumerate(starts[first : first + batch_size].tolist()):
                n = min(seq_len, end - start)
                batch[row, :n] = self.window(start, n)
            yield torch.from_numpy(batch)

    def sample_starts(self, length: int, max_bytes: int | None, sample: int = 0) -> np.ndarray:
        """Starts of disjoint windows of `length` stream positions spread over the split, about
        `max_bytes` positions in all (every window when None) -> sorted int64[k].

        The stream is cut into slots of `length` positions, and one fixed permutation deals
        them out: sample 0 takes the first k, sample 1 the next k, and so on, so two samples
        never share a position. A threshold is calibrated on sample 0 of the training split
        (see `bytelm.patchers.entropy_rule`); sample 1 is a third sample to check it on.
        """
        length = max(1, min(length, self.stream_len))
        n = self.stream_len // length
        k = n if max_bytes is None else max(1, min(n, -(-max_bytes // length)))
        pick = np.random.default_rng(SAMPLE_SEED).permutation(n)[sample * k : (sample + 1) * k]
        if len(pick) < k:
            raise ValueError(
                f"bytelm: {self.path} holds {n} windows of {length} positions, too few for "
                f"sample {sample} of {k} windows"
            )
        return np.sort(pick).astype(np.int64) * length

    def sample_batches(
        self, seq_len: int, batch_size: int, max_bytes: int | None, sample: int = 0
    ) -> Iterator[torch.Tensor]:
        """The windows of `sample_starts(seq_len, max_bytes, sample)` as LongTensor batches
        [<=batch_size, seq_len]."""
        starts = self.sample_starts(seq_len, max_bytes, sample)
        for i in range(0, len(starts), batch_size):
            rows = [self.window(int(s), seq_len) for s in starts[i : i + batch_size]]
            yield torch.from_numpy(np.stack(rows))

    def eval_windows(self, seq_len: int, max_windows: int | None = None) -> Iterator[torch.Tensor]:
        """`eval_batches` one window at a time -> LongTensor[1, seq_len], the first max_windows."""
        for i, w in enumerate(self.eval_batches(seq_len, batch_size=1)):
            if max_windows is not None and i >= max_windows:
                return
            yield w


def load_corpus(config: DataConfig, progress: bool = True) -> dict[str, ByteCorpus]:
    """The data entry point: {"train": ByteCorpus, "heldout": ByteCorpus} for a config.

    Encodes the corpus into the cache on first use (with a progress bar) and
    memory-maps it afterwards.
    """
    return ByteCorpus.build(config, progress=progress)
