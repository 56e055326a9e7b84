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

from bytelm.data import sources
from bytelm.data.cache import cache_path
from bytelm.data.corpus import ByteCorpus, load_corpus
from bytelm.data.sources import (
    BUILTIN_CORPORA,
    CACHE_FORMAT,
    SPLITS,
    DataConfig,
    DataError,
    iter_documents,
    split_of,
    tail_cut,
)

__all__ = [
    "BUILTIN_CORPORA",
    "CACHE_FORMAT",
    "SPLITS",
    "ByteCorpus",
    "DataConfig",
    "DataError",
    "cache_path",
    "iter_documents",
    "load_corpus",
    "sources",
    "split_of",
    "tail_cut",
]
