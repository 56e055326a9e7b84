"""Entropies of a corpus split, computed once with the frozen entropy model and memory-mapped.

    <byte cache>/<split>/entropy/<key>/values.f16   H (bits, float16) per position of the split's
                                                     virtual stream ([BOS] + bytes + [EOS] per doc)
                                     /done.u8       one flag per chunk: its values are written
                                     /meta.json

`key` hashes the entropy model's weights and the chunking (context, overlap), so
a different entropy model never reads stale entropies. Values are computed per
document with the chunking of `bytelm.patchers.entropy.chunk_plan`, so a cached
entropy equals the one `EntropyPatcher.entropies` gives on the whole document.

A cache fills chunk by chunk: `build` computes every chunk (with a progress
bar), while `window` / `train_batch` compute only the chunks they touch and
persist them. Training on a small slice of a huge corpus (the stdlib demo reads
~8% of it) thus never pays for entropies it does not read, and every chunk is
computed at most once across runs. Chunks are written value-first, flag-last,
so a killed run leaves at worst a chunk that is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bytelm.config import CALIBRATION_BYTES
from bytelm.patchers.entropy_rule import CALIBRATION_WINDOW
from bytelm.patchers.entropy_scores import _forward_pieces
from bytelm.patchers.windows import window_ends

CACHE_FORMAT = 1
_BUILD_TOKENS = 32768  # positions per entropy-model forward while filling


def model_key(patcher) -> str:
    """A fingerprint of the entropy model's weights and the chunking."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in sorted(patcher.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    h.update(f"{CACHE_FORMAT}:{patcher.context}:{patcher.overlap}".encode())
    return h.hexdigest()


class EntropyCache:
    """The entropy of every position of one `ByteCorpus` split, filled on demand."""

    def __init__(self, corpus, patcher, root: str | Path | None = None):
        self.corpus, self.patcher = corpus, patcher
        self.L, self.O = patcher.context, patcher.overlap
        self.S = self.L - self.O
        self.doc_starts = np.asarray(corpus.doc_starts, dtype=np.int64)
        m = np.diff(self.doc_starts)  # positions per document: bytes + BOS + EOS
        n_chunks = np.maximum(1, -(-(m - self.O) // self.S))
        self.chunk_base = np.concatenate([[0], np.cumsum(n_chunks)]).astype(np.int64)
        root = Path(root) if root is not None else Path(corpus.path) / "entropy"
        self.dir = root / model_key(patcher)
        self._open()

    def _open(self) -> None:
        n, c = int(self.corpus.stream_len), int(self.chunk_base[-1])
        if not (self.dir / "meta.json").is_file():
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".{self.dir.name}.tmp-"))
            with open(tmp / "values.f16", "wb") as f:
                f.truncate(2 * n)  # sparse until filled
            with open(tmp / "done.u8", "wb") as f:
                f.truncate(c)
            meta = {
                "format": CACHE_FORMAT,
                "stream_len": n,
                "n_chunks": c,
                "context": self.L,
                "overlap": self.O,
                "entropy_model": self.patcher.source,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.replace(tmp, self.dir)
            except OSError:  # another process created it first
                shutil.rmtree(tmp, ignore_errors=True)
        meta = json.loads((self.dir / "meta.json").read_text())
        assert meta["stream_len"] == n and meta["n_chunks"] == c, f"stale entropy cache {self.dir}"
        self.values = np.memmap(self.dir / "values.f16", dtype=np.float16, mode="r+", shape=(n,))
        self.done = np.memmap(self.dir / "done.u8", dtype=np.uint8, mode="r+", shape=(c,))

    # ------------------------------------------------------------------ filling

    def chunks_of(self, positions: np.ndarray) -> np.ndarray:
        """Stream positions -> the global index of the chunk that computes each."""
        d = np.searchsorted(self.doc_starts, positions, side="right") - 1
        r = positions - self.doc_starts[d]
        return self.chunk_base[d] + np.maximum(0, (r - self.O) // self.S)

    def _fill(self, chunks: np.ndarray, bar=None) -> None:
        chunks = np.unique(chunks)
        chunks = chunks[self.done[chunks] == 0]
        model = self.patcher._model_on(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        per_batch = max(1, _BUILD_TOKENS // self.L)
        for i in range(0, len(chunks), per_batch):
            todo, pieces = [], []
            for g in chunks[i : i + per_batch].tolist():
                d = int(np.searchsorted(self.chunk_base, g, side="right")) - 1
                k, m = g - int(self.chunk_base[d]), int(self.doc_starts[d + 1] - self.doc_starts[d])
                a = k * self.S
                b, keep = min(a + self.L, m), (0 if k == 0 else a + self.O)
                ds = int(self.doc_starts[d])
                pieces.append(torch.from_numpy(self.corpus.window(ds + a, b - a)))
                todo.append((g, ds, a, b, keep))
            H = _forward_pieces(model, pieces, rows=per_batch)
            for (_, ds, a, b, keep), h in zip(todo, H):
                self.values[ds + keep : ds + b] = h[keep - a :].numpy().astype(np.float16)
            self.values.flush()
            self.done[[t[0] for t in todo]] = 1
            self.done.flush()
            if bar is not None:
                bar.update(sum(t[3] - t[4] for t in todo))

    def build(self, progress: bool = True) -> None:
        """Compute every chunk not yet in the cache."""
        missing = np.flatnonzero(self.done == 0)
        if not len(missing):
            return
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=int(self.corpus.stream_len * len(missing) / len(self.done)),
                unit="B",
                unit_scale=True,
                desc="entropy cache",
            )
        try:
            self._fill(missing, bar)
        finally:
            if bar is not None:
                bar.close()

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    # ------------------------------------------------------------------ reading

    def at(self, positions: np.ndarray) -> torch.Tensor:
        """Entropies (fp32) at stream positions (any shape; taken mod stream_len)."""
        p = np.asarray(positions, dtype=np.int64) % self.corpus.stream_len
        self._fill(self.chunks_of(p.ravel()))
        return torch.from_numpy(self.values[p].astype(np.float32))

    def window(self, start: int, length: int) -> torch.Tensor:
        """Entropies of `corpus.window(start, length)` -> FloatTensor[length]."""
        return self.at(start + np.arange(length))

    def train_batch(
        self,
        step: int,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> torch.Tensor:
        """Entropies for the windows of `corpus.train_batch(step, ...)` -> FloatTensor[B, T]."""
        starts = self.corpus.train_starts(step, batch_size, seed, rank, world_size)
        return self.at(starts[:, None] + np.arange(seq_len)[None, :])

    def sample(self, max_bytes: int | None = None, progress: bool = False):
        """Whole documents from the split's start, up to max_bytes positions (at least one doc)
        -> (ids LongTensor[n], entropies FloatTensor[n])."""
        n = int(self.corpus.stream_len)
        if max_bytes is not None and max_bytes < n:
            k = max(1, int(np.searchsorted(self.doc_starts, max_bytes, side="right")) - 1)
            n = int(self.doc_starts[k])
        p = np.arange(n)
        if progress and (self.done[np.unique(self.chunks_of(p))] == 0).any():
            from tqdm.auto import tqdm

            with tqdm(total=n, unit="B", unit_scale=True, desc="entropies") as bar:
                self._fill(self.chunks_of(p), bar)
        return torch.from_numpy(self.corpus.window(0, n)), self.at(p)

    def calibration_sample(
        self,
        max_bytes: int | None,
        sample: int = 0,
        length: int = CALIBRATION_WINDOW,
        progress=False,
    ):
        """Windows of `length` spread over the split (`ByteCorpus.sample_starts`), up to
        max_bytes positions, packed -> (ids LongTensor[n], entropies FloatTensor[n]).

        Each entropy is the one its whole document gives it (the cache's), wherever a window
        starts; only the patch open at a window's start is cut short."""
        starts = self.corpus.sample_starts(length, max_bytes, sample)
        length = min(length, int(self.corpus.stream_len))
        p = (starts[:, None] + np.arange(length)[None, :]).ravel()
        if progress and (self.done[np.unique(self.chunks_of(p))] == 0).any():
            from tqdm.auto import tqdm

            with tqdm(total=len(p), unit="B", unit_scale=True, desc="entropies") as bar:
                self._fill(self.chunks_of(p), bar)
        ids = np.concatenate([self.corpus.window(int(s), length) for s in starts])
        return torch.from_numpy(ids), self.at(p)


# ----------------------------------------------------------------------------- training


class EntropyFeed:
    """Patch ends for training windows from cached entropies (no entropy model in the step)."""

    def __init__(self, patcher, cache: EntropyCache, batch_size: int, seq_len: int, seed: int):
        self.patcher, self.cache = patcher, cache
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed

    def train_ends(
        self, ids: torch.Tensor, step: int, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor:
        """ends (B, T) bool for `corpus.train_batch(step, ...)` == ids: each window patched as
        its documents are (`bytelm.patchers.windows`)."""
        c = self.cache.corpus
        starts = c.train_starts(step, self.batch_size, self.seed, rank, world_size)
        return window_ends(self.patcher, c, starts, ids, self.cache)


def calibrate_config(
    patcher_cfg,
    patcher,
    train,
    max_bytes: int | None = CALIBRATION_BYTES,
    progress: bool = False,
    log=print,
):
    """Calibrate an entropy `PatcherConfig` and its `EntropyPatcher` (built from it) to the
    config's target on the calibration sample of the training split (never the held-out
    split bpb is reported on) -> (new cfg, the calibrated patcher)."""
    target = patcher_cfg.target_bytes_per_patch
    if target <= 0:
        return patcher_cfg, patcher
    cal = patcher.calibrate(train, target, max_bytes=max_bytes, progress=progress)
    if log is not None:
        log(
            f"bytelm: entropy threshold {cal.threshold:.4f} bits ({patcher_cfg.mode}) gives "
            f"{cal.measured_bytes_per_patch:.3f} bytes/patch on {cal.n_positions:,} training "
            f"positions, the calibration sample (target {target:g}, {cal.method})"
        )
    new = dataclasses.replace(
        patcher_cfg, threshold=cal.threshold, measured_bytes_per_patch=cal.measured_bytes_per_patch
    )
    return new, patcher


def prepare_training(cfg, corpus: dict, patcher, main: bool = True):
    """For a ByteLM run with the entropy patcher (`patcher`, built from `cfg.model.patcher`):
    calibrate the threshold (if the config asks for a target and is not calibrated yet) and
    set up the training entropy cache.

    Returns (cfg with the calibrated patcher, EntropyFeed) or (cfg, None) for other runs.
    """
    pc = cfg.model.patcher
    if cfg.arch != "bytelm" or pc.name != "entropy":
        return cfg, None
    log = print if main else None
    if pc.target_bytes_per_patch > 0 and pc.measured_bytes_per_patch == 0:
        pc, patcher = calibrate_config(pc, patcher, corpus["train"], progress=main, log=log)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, patcher=pc))
    cache = EntropyCache(corpus["train"], patcher)
    tc, dc = cfg.train, cfg.data
    to_read = tc.steps * tc.grad_accum * dc.batch_size * dc.seq_len
    if not cache.complete and corpus["train"].stream_len <= 2 * to_read:
        cache.build(progress=main and tc.progress)  # the run reads most of it anyway
    elif not cache.complete and log is not None:
        log(
            f"bytelm: the run reads {to_read:,} of {corpus['train'].stream_len:,} training "
            f"positions; entropies are cached as windows touch them ({cache.dir})"
        )
    return cfg, EntropyFeed(patcher, cache, dc.batch_size, dc.seq_len, tc.seed)
