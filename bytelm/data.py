"""Corpora -> byte streams -> packed training windows.

A corpus is any mix of files, directories, globs, `.gz` files and `.jsonl` files
(one document per line, taken from a text field), plus the built-in `stdlib`
corpus. `load_corpus` encodes it once into a memory-mapped cache, one directory
per split:

    <cache>/data/<fingerprint>/meta.json
                              /train/bytes.u8       raw bytes of every document, back to back
                              /train/offsets.i64    n_docs + 1 document offsets into bytes.u8
                              /heldout/...

Specials are not stored. A split is read as a *virtual stream*: the
concatenation over documents of [BOS] + bytes + [EOS], of length
n_bytes + 2 * n_docs. Training windows are uniform random slices of it, drawn as
a pure function of (seed, step), so a resumed run continues the same data order
from nothing but its step. Held-out windows tile the stream in order.

Documents are named by where their file is, never by how a source was typed
(see "sources -> files -> documents"), so `data/`, `/abs/data` and `./data`
give the same train/held-out split. Exact duplicates (identical bytes) are kept
once, before the split, so no held-out document is also a training document.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bytelm.vocab import BOS, EOS, PAD

logger = logging.getLogger("bytelm")

# bump when the on-disk layout or the encoding rules change. 2: documents named by where
# their file is, not by how the source was typed; exact duplicates dropped
CACHE_FORMAT = 2
SPLITS = ("train", "heldout")
_CHUNK = 4 << 20  # whole-file documents are copied in 4 MiB chunks, never read whole


class DataError(ValueError):
    """A problem with the user's data or data config (not a bug in bytelm)."""


# -----------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[str, ...] = ("stdlib",)  # files, directories, globs, or "stdlib"
    text_field: str = "text"  # which string field of a .jsonl line is the document
    split: str = "hash"  # "hash": whole documents by a hash of their name; "tail": last bytes
    heldout_fraction: float = 0.05
    seq_len: int = 512  # bytes per training window (seq_len - 1 predictions)
    batch_size: int = 16
    cache_dir: str = ""  # empty: $BYTELM_CACHE_DIR, else ~/.cache/bytelm

    def __post_init__(self):
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        object.__setattr__(self, "sources", sources)  # accept a list; the config stays hashable
        if not sources or not all(isinstance(s, str) and s for s in sources):
            raise DataError(
                f"bytelm: data.sources must be a non-empty list of paths, globs or 'stdlib', "
                f"got {self.sources!r}"
            )
        if not self.text_field:
            raise DataError("bytelm: data.text_field must be a non-empty field name")
        if self.split not in ("hash", "tail"):
            raise DataError(f"bytelm: data.split must be 'hash' or 'tail', got {self.split!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise DataError(
                f"bytelm: data.heldout_fraction must be in (0, 1), got {self.heldout_fraction}"
            )
        if self.seq_len < 2:
            raise DataError(f"bytelm: data.seq_len must be >= 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise DataError(f"bytelm: data.batch_size must be >= 1, got {self.batch_size}")


# -----------------------------------------------------------------------------
# sources -> files -> documents
#
# A document is named (and hash-split) by where its file sits, never by how the
# source was typed: relative or absolute, `./` or a trailing slash, the current
# directory and symlinks in the source all give the same names. A source has a
# root: a directory source is its own root, a glob's root is its leading
# non-magic directory, a plain file's root is the directory it is in. A file is
# named `<root's real basename>/<its path under the root>`, POSIX separators:
# `docs`, `/abs/docs/`, `./docs`, a symlink to docs, `docs/*.txt` and
# `docs/one.txt` all name that file `docs/one.txt`. If two different files get
# the same name (`a/data/x.txt` and `b/data/x.txt`), each is named by one more
# directory of its root's real path, until the names differ.


@dataclass(frozen=True)
class _File:
    name: str  # what documents are named after (and hashed by, for the split)
    path: str
    size: int
    mtime_ns: int

    @property
    def is_jsonl(self) -> bool:
        return self.path.removesuffix(".gz").endswith(".jsonl")


@dataclass(frozen=True)
class _Found:
    """A file a source stands for, before its name is fixed."""

    root: tuple[str, ...]  # the directories of the root's real path, outermost first
    rel: str  # the file's path under the root (POSIX), or a built-in corpus's full name
    path: str

    def name(self, depth: int) -> str:
        """The name with the last `depth` directories of the root in front of `rel`."""
        return "/".join(self.root[len(self.root) - depth :] + (self.rel,))


def _stdlib_files() -> Iterator[_Found]:
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        # third-party packages live under the stdlib dir on many installs; they are not stdlib
        skip = ("site-packages", "dist-packages")
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                yield _Found((), "stdlib:" + Path(os.path.relpath(path, root)).as_posix(), path)


BUILTIN_CORPORA = {"stdlib": _stdlib_files}


def _real_parts(directory: str) -> tuple[str, ...]:
    return Path(os.path.realpath(directory)).parts[1:]  # without the anchor ("/")


def _under(root: str, path: str) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def _plain_file(path: str) -> _Found:
    real = os.path.realpath(path)
    return _Found(_real_parts(os.path.dirname(real)), os.path.basename(real), path)


def _walk_dir(root: str, top: str) -> Iterator[_Found]:
    """The files under `top` (recursive, hidden entries skipped), named under `root`."""
    parts = _real_parts(root)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            path = os.path.join(dirpath, f)
            if not f.startswith(".") and os.path.isfile(path):
                yield _Found(parts, _under(root, path), path)


def _glob_root(pattern: str) -> str:
    """The leading directories of a glob that hold no wildcard ("." if none)."""
    parts = Path(pattern).parts
    n = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return os.path.join(*parts[:n]) if n else "."


def _expand(source: str) -> Iterator[_Found]:
    """One source -> each file it stands for."""
    if source in BUILTIN_CORPORA:
        yield from BUILTIN_CORPORA[source]()
    elif os.path.isdir(source):
        real = os.path.realpath(source)
        yield from _walk_dir(real, real)
    elif os.path.isfile(source):
        yield _plain_file(source)
    elif os.path.exists(source):
        raise DataError(f"bytelm: data source {source!r} is not a file or a directory")
    elif glob.has_magic(source):
        paths = sorted(glob.glob(source, recursive=True))
        if not paths:
            raise DataError(f"bytelm: no files match {source!r}")
        root = _glob_root(source)
        for path in paths:
            if os.path.isdir(path):
                yield from _walk_dir(root, path)
            elif not os.path.isfile(path):
                continue
            elif _under(root, path).startswith("../"):  # a '..' after a wildcard: name it alone
                yield _plain_file(path)
            else:
                yield _Found(_real_parts(root), _under(root, path), path)
    else:
        raise DataError(f"bytelm: data source {source!r} does not exist; check the path")


def _name_files(found: list[_Found]) -> list[str]:
    """Each file's name: one directory of its root, and more only while names clash."""
    depth = [min(1, len(f.root)) for f in found]
    while True:
        by_name: dict[str, list[int]] = {}
        for i, f in enumerate(found):
            by_name.setdefault(f.name(depth[i]), []).append(i)
        clashes = [i for ids in by_name.values() if len(ids) > 1 for i in ids]
        if not clashes:
            return [f.name(d) for f, d in zip(found, depth)]
        longer = [i for i in clashes if depth[i] < len(found[i].root)]
        if not longer:  # full real paths that still clash: cannot happen for distinct files
            paths = sorted(found[i].path for i in clashes)
            raise DataError(f"bytelm: files {paths!r} cannot be told apart by name")
        for i in longer:
            depth[i] += 1


def _resolve_files(sources: Sequence[str]) -> list[_File]:
    """Every file the sources stand for, sorted by name, each file once."""
    first: dict[str, _Found] = {}  # real path -> how it is reached
    for found in (f for s in sources for f in _expand(s)):
        real = os.path.realpath(found.path)
        # the same file through two sources (a dir and a glob inside it, or a symlink):
        # keep one, the same one whatever the order of the sources
        if real not in first or (found.name(1), found.path) < (
            first[real].name(1),
            first[real].path,
        ):
            first[real] = found
    found = list(first.values())
    files = []
    for name, f in zip(_name_files(found), found):
        st = os.stat(f.path)
        files.append(_File(name, f.path, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: f.name)


def _unreadable(path: str, e: Exception) -> DataError:
    return DataError(f"bytelm: cannot read {path!r} ({e}); fix or remove the file")


def _chunks(fh, path: str) -> Iterator[bytes]:
    try:
        yield from iter(lambda: fh.read(_CHUNK), b"")
    except (OSError, EOFError, zlib.error) as e:  # e.g. a truncated .gz
        raise _unreadable(path, e) from None


def _read(f: _File, text_field: str) -> Iterator[tuple[str, Iterable[bytes]]]:
    """A file -> (name, chunks) per document. Consume each doc's chunks before the next."""
    try:
        with gzip.open(f.path, "rb") if f.path.endswith(".gz") else open(f.path, "rb") as fh:
            if not f.is_jsonl:
                # a whole-file document can be GBs (enwik9): stream it in chunks
                yield f.name, _chunks(fh, f.path)
                return
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get(text_field)
                except (ValueError, AttributeError):  # bad JSON, or a line that is not an object
                    raise DataError(
                        f"bytelm: {f.path} line {lineno} is not a JSON object; fix or remove it"
                    ) from None
                if not isinstance(text, str):
                    raise DataError(
                        f"bytelm: {f.path} line {lineno} has no string field {text_field!r}; "
                        f"set --data.text_field to the field that holds the text"
                    )
                # surrogatepass: a lone surrogate in the JSON survives as bytes instead of crashing
                yield f"{f.name}:{lineno}", [text.encode("utf-8", "surrogatepass")]
    except (OSError, EOFError, zlib.error) as e:
        raise _unreadable(f.path, e) from None


def _empty_corpus(sources: Sequence[str]) -> DataError:
    return DataError(
        f"bytelm: corpus {', '.join(sources)!r} is empty (0 documents); "
        f"point --data.sources at files with content"
    )


def _digest() -> hashlib.blake2b:
    """What a document's bytes are hashed with to find exact duplicates."""
    return hashlib.blake2b(digest_size=16)


def iter_documents(sources: Sequence[str], text_field: str = "text") -> Iterator[tuple[str, bytes]]:
    """Yield (name, raw bytes) for every non-empty document, in sorted name order.

    A source is "stdlib", a file, a directory (recursive, hidden entries skipped)
    or a glob. `.gz` files are decompressed; `.jsonl` files give one document per
    line (the string field `text_field`), named `<file's name>:<lineno>`. A file
    is named by where it is, not by how the source was typed (see above), so a
    corpus gets the same names and the same hash split from any directory and
    on every machine where its root has the same name. Exact duplicates (the
    same bytes) are yielded once, the first copy in this order; the cache holds
    the same documents.
    """
    n, seen = 0, set()
    for f in _resolve_files(sources):
        for name, chunks in _read(f, text_field):
            data = b"".join(chunks)
            h = _digest()
            h.update(data)
            if data and h.digest() not in seen:
                seen.add(h.digest())
                n += 1
                yield name, data
    if n == 0:
        raise _empty_corpus(sources)


# -----------------------------------------------------------------------------
# train / held-out split


def split_of(name: str, heldout_fraction: float) -> str:
    """ "train" or "heldout" for a document, from a stable hash of its name.

    blake2b rather than `hash()`: Python salts str hashes per process, and the
    split must not change between runs, machines or Python versions.
    """
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "big") / 2**64 < heldout_fraction else "train"


def tail_cut(n_bytes: int, heldout_fraction: float) -> int:
    """In "tail" mode, bytes [0, cut) train and [cut, n) are held out.

    int(n * 0.9) is nanoGPT's tinyshakespeare split, so bpb numbers compare.
    """
    return int(n_bytes * (1.0 - heldout_fraction))


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
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
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
        n_windows = self.n_eval_windows(seq_len, max_bytes)
        for first in range(0, n_windows, batch_size):
            batch = np.full((min(batch_size, n_windows - first), seq_len), PAD, dtype=np.int64)
            for row, i in enumerate(range(first, first + len(batch))):
                start = i * (seq_len - 1)
                n = min(seq_len, end - start)
                batch[row, :n] = self.window(start, n)
            yield torch.from_numpy(batch)

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
