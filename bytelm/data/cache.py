"""The memory-mapped cache: documents encoded once per split, written atomically, keyed by
a fingerprint of the config and the files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from bytelm.data import sources
from bytelm.data.sources import (
    BUILTIN_CORPORA,
    CACHE_FORMAT,
    SPLITS,
    DataConfig,
    DataError,
    _digest,
    _empty_corpus,
    _File,
    _read,
    _resolve_files,
    split_of,
    tail_cut,
)

logger = logging.getLogger("bytelm")

# -----------------------------------------------------------------------------
# the memory-mapped cache


def _cache_root(config: DataConfig) -> Path:
    root = config.cache_dir or os.environ.get("BYTELM_CACHE_DIR") or "~/.cache/bytelm"
    return Path(root).expanduser() / "data"


def _fingerprint(config: DataConfig, files: list[_File]) -> str:
    key = {
        "format": CACHE_FORMAT,
        "files": [(f.name, os.path.realpath(f.path), f.size, f.mtime_ns) for f in files],
        "text_field": config.text_field,
        "split": config.split,
        "heldout_fraction": config.heldout_fraction,
        # stdlib sources are the same paths on a patched interpreter; the version catches that
        "python": sys.version if any(s in BUILTIN_CORPORA for s in config.sources) else None,
    }
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=16).hexdigest()


class _SplitWriter:
    """Appends documents to one split's bytes.u8 / offsets.i64 as they stream in."""

    def __init__(self, path: Path):
        path.mkdir()
        self.bytes_f = open(path / "bytes.u8", "wb")
        self.offsets_f = open(path / "offsets.i64", "wb")
        self.n_docs, self.n_bytes, self.pending = 0, 0, 0
        self._write_offset(0)

    def _write_offset(self, off: int):
        self.offsets_f.write(off.to_bytes(8, "little", signed=True))

    def write(self, chunk: bytes):
        self.bytes_f.write(chunk)
        self.pending += len(chunk)

    def end_doc(self):
        if self.pending:  # empty documents are skipped, not stored
            self.n_docs += 1
            self.n_bytes += self.pending
            self.pending = 0
            self._write_offset(self.n_bytes)

    def drop_doc(self):
        """Forget the pending document: its bytes are cut off bytes.u8."""
        self.bytes_f.flush()
        self.bytes_f.truncate(self.n_bytes)
        self.bytes_f.seek(self.n_bytes)
        self.pending = 0

    def move_tail(self, k: int, other: _SplitWriter):
        """Move the last k bytes of the pending document to `other`, as its own document."""
        self.bytes_f.flush()
        cut = self.n_bytes + self.pending - k
        with open(self.bytes_f.name, "rb") as fh:  # read back from disk: the doc may be huge
            fh.seek(cut)
            for chunk in iter(lambda: fh.read(sources._CHUNK), b""):
                other.write(chunk)
        other.end_doc()
        self.bytes_f.truncate(cut)
        self.bytes_f.seek(cut)
        self.pending -= k

    def close(self):
        self.bytes_f.close()
        self.offsets_f.close()


def _remove_stale_tmp(root: Path, fingerprint: str):
    """Delete temp dirs that killed builds on this host left behind."""
    for tmp in root.glob(f"{fingerprint}.tmp-{socket.gethostname()}-*"):
        try:
            pid = int(tmp.name.split("-")[-2])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass  # not ours to judge, or the process is alive under another user


def _build(config: DataConfig, files: list[_File], final: Path, progress: bool) -> None:
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, final.name)
    # build next to the final dir, then rename: a killed build never leaves a broken cache
    prefix = f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=prefix))
    writers = {s: _SplitWriter(tmp / s) for s in SPLITS}
    train, heldout = writers["train"], writers["heldout"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(f.size for f in files)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="encoding corpus")
    seen: set[bytes] = set()  # digests of the documents kept: 16 bytes each, not the corpus
    n_dup = dup_bytes = 0
    try:
        for f in files:
            for name, chunks in _read(f, config.text_field):
                if config.split == "hash":
                    w = writers[split_of(name, config.heldout_fraction)]
                else:
                    w = train  # the tail is cut off below, once the document is whole
                h = _digest()
                for chunk in chunks:  # hashed as it streams to disk
                    h.update(chunk)
                    w.write(chunk)
                n = w.pending
                if not n:
                    continue  # empty documents are skipped, not stored
                if h.digest() in seen:  # an exact duplicate of an earlier document: dropped
                    n_dup, dup_bytes = n_dup + 1, dup_bytes + n
                    w.drop_doc()
                    continue
                seen.add(h.digest())
                if config.split == "tail" and (k := n - tail_cut(n, config.heldout_fraction)):
                    train.move_tail(k, heldout)
                w.end_doc()
            if bar is not None:
                bar.update(f.size)  # on-disk bytes: known up front, so the bar has an ETA
        for w in writers.values():
            w.close()
        _check_splits(config, {s: w.n_docs for s, w in writers.items()})
        meta = {
            "format": CACHE_FORMAT,
            "fingerprint": final.name,
            "sources": list(config.sources),
            "n_files": len(files),
            "text_field": config.text_field,
            "split": config.split,
            "heldout_fraction": config.heldout_fraction,
            "splits": {s: {"n_docs": w.n_docs, "n_bytes": w.n_bytes} for s, w in writers.items()},
            "duplicates": {"n_docs": n_dup, "n_bytes": dup_bytes},  # dropped before the split
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        logger.info(
            "bytelm: encoded %s: %d train and %d held-out documents; dropped %d exact "
            "duplicate documents (%d bytes)",
            ", ".join(config.sources),
            train.n_docs,
            heldout.n_docs,
            n_dup,
            dup_bytes,
        )
        try:
            os.replace(tmp, final)
        except OSError:
            if not _cache_ok(final):  # else another process finished the same build first
                raise
    finally:
        if bar is not None:
            bar.close()
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _check_splits(config: DataConfig, n_docs: dict[str, int]):
    if n_docs["train"] + n_docs["heldout"] == 0:
        raise _empty_corpus(config.sources)
    for split, other in (("heldout", "train"), ("train", "heldout")):
        if n_docs[split] == 0:
            fix = (
                "use --data.split tail or add documents"
                if config.split == "hash"
                else "use longer documents or another --data.heldout_fraction"
            )
            raise DataError(
                f"bytelm: the {split} split of {', '.join(config.sources)!r} is empty "
                f"(all {n_docs[other]} documents went to {other}); {fix}"
            )


def _cache_ok(path: Path) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text())
        return (
            meta["format"] == CACHE_FORMAT
            and meta["fingerprint"] == path.name
            and all(
                (path / s / "bytes.u8").stat().st_size == meta["splits"][s]["n_bytes"]
                and (path / s / "offsets.i64").stat().st_size
                == 8 * (meta["splits"][s]["n_docs"] + 1)
                for s in SPLITS
            )
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cache_path(config: DataConfig) -> Path:
    """Where the cache for this config lives (whether or not it is built yet)."""
    return _cache_root(config) / _fingerprint(config, _resolve_files(config.sources))
