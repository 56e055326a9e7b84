"""Sources -> files -> named documents, the data config, and the train / held-out split.

How a document is named (and therefore split) is described below, where the
names are made; `bytelm.data.cache` encodes the documents, `bytelm.data.corpus`
reads them back.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import sysconfig
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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

    def heldout_rule(self) -> str:
        """How the held-out split was made, for every printed result: a `tail` split holds out
        by position, so its held-out bytes continue documents the model trained on."""
        pct = f"{self.heldout_fraction:.0%}"
        if self.split == "tail":
            return f"held out by position: the last {pct} of each document"
        return f"held out by document: {pct} of documents, by a hash of their names"

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
