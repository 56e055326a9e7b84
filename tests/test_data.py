"""Tests for bytelm.data: sources, the split, the cache, windows and batches."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bytelm import data
from bytelm.data import ByteCorpus, DataConfig, DataError, iter_documents, load_corpus, split_of
from bytelm.vocab import BOS, EOS, PAD

# documents with awkward content: invalid UTF-8, NULs, every byte value, one byte
DOCS = {f"docs/d{i:02d}.txt": bytes([i]) * (i % 7 + 1) + f" doc {i}\n".encode() for i in range(30)}
DOCS["docs/bin.dat"] = bytes(range(256))
DOCS["docs/bad_utf8.txt"] = b"\xff\xfe\x80 not utf-8 \xc3"
DOCS["docs/one.txt"] = b"x"


def write(path: str | Path, content: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def corpus_dir(tmp_path, monkeypatch):
    """DOCS under tmp_path/docs, with tmp_path as the cwd so document names are stable."""
    monkeypatch.chdir(tmp_path)
    for name, content in DOCS.items():
        write(name, content)
    return tmp_path


def stream_of(docs) -> list[int]:
    """The naive virtual stream: [BOS] + bytes + [EOS] per document, concatenated."""
    return [i for d in docs for i in [BOS, *d, EOS]]


def make_split(path: Path, docs: list[bytes]) -> ByteCorpus:
    """Write one split in the cache format by hand and open it."""
    path.mkdir(parents=True)
    (path / "bytes.u8").write_bytes(b"".join(docs))
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype("<i8")
    offsets.tofile(path / "offsets.i64")
    return ByteCorpus(path)


def assert_user_error(excinfo, *words):
    msg = str(excinfo.value)
    assert msg.startswith("bytelm: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


# -----------------------------------------------------------------------------
# sources


def test_files_dirs_globs(corpus_dir):
    write(".hidden.txt", b"hidden")
    write("docs/.secret", b"hidden")
    write("docs/.git/HEAD", b"hidden")
    write("docs/sub/deep.txt", b"deep")
    write("docs/empty.txt", b"")

    got = dict(iter_documents(["docs"]))
    assert got == {**DOCS, "docs/sub/deep.txt": b"deep"}  # no hidden, no empty documents
    assert list(got) == sorted(got)

    assert dict(iter_documents(["docs/one.txt"])) == {"docs/one.txt": b"x"}
    assert list(dict(iter_documents(["docs/**/*.txt"]))) == sorted(
        [n for n in DOCS if n.endswith(".txt")] + ["docs/sub/deep.txt"]
    )
    # the same file through several sources, even under two names, comes once
    sources = ["docs/one.txt", str(corpus_dir / "docs/one.txt"), "docs/o*.txt", "docs"]
    assert sum(d == b"x" for _, d in iter_documents(sources)) == 1


def test_gzip_and_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("c/a.txt.gz", gzip.compress(b"zipped \xff"))
    lines = [{"content": "first"}, {"content": ""}, {"content": "th\u00efrd", "text": "no"}]
    text = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    write("c/b.jsonl", text.encode())
    write("c/z.jsonl.gz", gzip.compress(json.dumps({"content": "gz line"}).encode()))

    got = list(iter_documents(["c"], text_field="content"))
    assert got == [
        ("c/a.txt.gz", b"zipped \xff"),
        ("c/b.jsonl:1", b"first"),  # line 2 is an empty text: skipped
        ("c/b.jsonl:3", "th\u00efrd".encode()),
        ("c/z.jsonl.gz:1", b"gz line"),
    ]


def test_stdlib():
    docs = list(iter_documents(["stdlib"]))
    names = [n for n, _ in docs]
    assert len(docs) > 100
    assert names == sorted(names) and names == [n for n, _ in iter_documents(["stdlib"])]
    assert all(n.startswith("stdlib:") and n.endswith(".py") for n in names)
    assert "stdlib:os.py" in names and "stdlib:json/__init__.py" in names
    assert not any("site-packages" in n or "dist-packages" in n for n in names)


def test_stdlib_cache(tmp_path):
    # building the whole stdlib cache takes well under a second, so test the real thing
    corpus = load_corpus(DataConfig(cache_dir=str(tmp_path)), progress=False)
    docs = list(iter_documents(["stdlib"]))
    assert corpus["train"].n_docs + corpus["heldout"].n_docs == len(docs)
    assert corpus["train"].n_bytes + corpus["heldout"].n_bytes == sum(len(d) for _, d in docs)
    assert 0.01 < corpus["heldout"].n_docs / len(docs) < 0.15  # heldout_fraction = 0.05


def split_docs(corpus) -> dict[str, list[bytes]]:
    return {s: [c.doc(i) for i in range(c.n_docs)] for s, c in corpus.items()}


def test_names_do_not_depend_on_how_the_path_is_typed(corpus_dir, monkeypatch):
    os.symlink("docs", "link")
    os.symlink(corpus_dir / "docs", "elsewhere_link")
    write("other/cwd/keep.txt", b"")
    root = str(corpus_dir)
    # (working directory, source): every one of them is the directory docs/
    spellings = [
        (root, "docs"),
        (root, "docs/"),
        (root, "./docs/"),
        (root, str(corpus_dir / "docs")),
        (root, str(corpus_dir / "docs") + "/"),
        (root, "link"),
        (root, "./elsewhere_link/"),
        (root, f"../{corpus_dir.name}/docs"),
        (str(corpus_dir / "other/cwd"), "../../docs"),
        (str(corpus_dir / "other/cwd"), str(corpus_dir / "link")),
        (str(corpus_dir / "docs"), "."),
        (str(corpus_dir / "docs"), "./"),
        ("/", str(corpus_dir / "docs")),
        (root, "docs/*"),
        (root, str(corpus_dir / "link/*")),
    ]
    cache = str(corpus_dir / "cache")
    want_names = sorted(DOCS)  # docs/d00.txt, ...: nothing of tmp_path in them
    want = {s: [d for n, d in sorted(DOCS.items()) if split_of(n, 0.3) == s] for s in data.SPLITS}
    streams, paths = set(), set()
    for cwd, source in spellings:
        monkeypatch.chdir(cwd)
        assert [n for n, _ in iter_documents([source])] == want_names, (cwd, source)
        corpus = load_corpus(
            DataConfig(sources=[source], heldout_fraction=0.3, cache_dir=cache), progress=False
        )
        assert split_docs(corpus) == want, (cwd, source)
        streams.add(tuple(tuple(c.window(0, c.stream_len).tolist()) for c in corpus.values()))
        paths.add(corpus["train"].path)
    assert len(streams) == 1
    assert len(paths) == 1  # one cache for every spelling: the fingerprint has no spelling either


def test_file_and_glob_names_do_not_depend_on_the_working_directory(corpus_dir, monkeypatch):
    write("c/sub/z.jsonl", b'{"text": "line one"}\n{"text": "line two"}\n')
    os.symlink(corpus_dir / "c", "c_link")
    # a file is named under its own directory; a glob's match under the glob's fixed part
    for cwd, sources in [
        (corpus_dir, ["docs/one.txt", "c/**/*.jsonl"]),
        (corpus_dir / "c", ["../docs/one.txt", "./**/*.jsonl"]),
        (corpus_dir / "c/sub", [str(corpus_dir / "docs/one.txt"), "../../c_link/*/*.jsonl"]),
        ("/", [str(corpus_dir / "docs/one.txt"), str(corpus_dir / "c/**/z.jsonl")]),
    ]:
        monkeypatch.chdir(cwd)
        got = [n for n, _ in iter_documents(sources)]
        assert got == ["c/sub/z.jsonl:1", "c/sub/z.jsonl:2", "docs/one.txt"], (cwd, sources)
    for cwd, source in [(corpus_dir, "c/sub/z.jsonl"), (corpus_dir / "c", "sub/z.jsonl")]:
        monkeypatch.chdir(cwd)
        got = [n for n, _ in iter_documents([source])]
        assert got == ["sub/z.jsonl:1", "sub/z.jsonl:2"], (cwd, source)


def test_exact_duplicates_are_dropped(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data.sources, "_CHUNK", 3)  # documents stream (and are hashed) in pieces
    for i in range(40):
        write(f"d/u{i:02d}.txt", f"unique document {i}\n".encode())
    # three copies of one document, whose names alone would put them in both splits
    names = [f"d/copy{i:02d}.txt" for i in range(100)]
    held = [n for n in names if split_of(n, 0.3) == "heldout"]
    trained = [n for n in names if split_of(n, 0.3) == "train"]
    copies = sorted([held[0], *trained[:2]])
    same = b"the same bytes, three times\n" * 5
    for n in copies:
        write(n, same)
    # lines of a .jsonl are documents too: a repeated line, and one equal to a file
    lines = [{"text": "a line"}, {"text": "a line"}, {"text": "unique document 3\n"}]
    write("d/z.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())

    docs = list(iter_documents(["d"]))
    assert [d for _, d in docs].count(same) == 1 and (copies[0], same) in docs
    assert [n for n, d in docs if d == b"a line"] == ["d/z.jsonl:1"]
    assert len(docs) == 40 + 1 + 1 and len({d for _, d in docs}) == len(docs)

    caplog.set_level("INFO", logger="bytelm")
    cfg = DataConfig(sources=["d"], heldout_fraction=0.3, cache_dir="cache")
    corpus = load_corpus(cfg, progress=False)
    by_split = split_docs(corpus)
    assert by_split == {
        s: [d for n, d in docs if split_of(n, 0.3) == s] for s in data.SPLITS
    }  # the kept documents, byte for byte, after the dropped ones were cut out
    kept_in = [s for s, ds in by_split.items() if same in ds]
    assert kept_in == [split_of(copies[0], 0.3)] and by_split[kept_in[0]].count(same) == 1
    assert not set(by_split["train"]) & set(by_split["heldout"])
    meta = json.loads((corpus["train"].path.parent / "meta.json").read_text())
    dropped = 2 * len(same) + len(b"a line") + len(b"unique document 3\n")
    assert meta["duplicates"] == {"n_docs": 4, "n_bytes": dropped}
    assert sum("dropped 4 exact duplicate documents" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    load_corpus(cfg, progress=False)  # reused from the cache: logged once, at the build
    assert not any("duplicate" in r.getMessage() for r in caplog.records)

    # in tail mode too: a copy would put the held-out tail's bytes in training
    write("t/a.txt", same)
    write("t/b.txt", same)
    write("t/c.txt", b"another document")
    tail = load_corpus(DataConfig(sources=["t"], split="tail", cache_dir="cache"), False)
    assert split_docs(tail) == {
        "train": [same[: data.tail_cut(len(same), 0.05)], b"another document"[:15]],
        "heldout": [same[data.tail_cut(len(same), 0.05) :], b"t"],
    }


def test_clashing_names_both_survive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("a/data/x.txt", b"x from a")
    write("a/data/only_a.txt", b"only in a")
    write("b/data/x.txt", b"x from b")
    write("c/a/data/x.txt", b"x from c/a")
    want = {
        f"{tmp_path.name}/a/data/x.txt": b"x from a",  # a/data/x.txt and c/a/data/x.txt
        "c/a/data/x.txt": b"x from c/a",  # clash twice: one more directory each time
        "b/data/x.txt": b"x from b",
        "data/only_a.txt": b"only in a",  # no clash: the usual name
    }
    for sources in (
        ["a/data", "b/data", "c/a/data"],
        ["c/a/data/", str(tmp_path / "b/data"), "./a/data"],  # any order, any spelling
        ["a/data/*.txt", "b/data/x.txt", "c/a/data/*"],  # globs and files alike
    ):
        assert dict(iter_documents(sources)) == want, sources
        assert list(dict(iter_documents(sources))) == sorted(want)

    corpus = load_corpus(
        DataConfig(sources=["a/data", "b/data", "c/a/data"], heldout_fraction=0.3, cache_dir="c"),
        progress=False,
    )
    by_split = split_docs(corpus)
    assert sorted(by_split["train"] + by_split["heldout"]) == sorted(want.values())
    for name, d in want.items():
        assert d in by_split[split_of(name, 0.3)]


# -----------------------------------------------------------------------------
# the split


def test_split_is_stable():
    # computed once: Python's salted hash() or a changed hash would move documents between
    # splits across processes, and this table would no longer match
    expected = {
        "a.txt": "train",
        "b.txt": "train",
        "data/c.txt": "heldout",
        "stdlib:os.py": "heldout",
        "stdlib:json/__init__.py": "train",
        "x.jsonl:1": "train",
        "notes/\u00e9.md": "train",
    }
    assert {n: split_of(n, 0.5) for n in expected} == expected


def test_split_fraction_and_nesting():
    names = [f"file{i}.txt" for i in range(4000)]
    small = {n for n in names if split_of(n, 0.05) == "heldout"}
    big = {n for n in names if split_of(n, 0.2) == "heldout"}
    assert 140 < len(small) < 260 and 700 < len(big) < 900  # ~5 sigma
    assert small <= big  # a larger fraction only moves documents into heldout


def test_hash_split_keeps_documents_whole(corpus_dir):
    cfg = DataConfig(sources=["docs"], heldout_fraction=0.3, cache_dir="cache")
    corpus = load_corpus(cfg, progress=False)
    by_split = {s: [c.doc(i) for i in range(c.n_docs)] for s, c in corpus.items()}
    for split, docs in by_split.items():
        want = [d for n, d in sorted(DOCS.items()) if split_of(n, 0.3) == split]
        assert docs == want and docs, split
    assert sorted(by_split["train"] + by_split["heldout"]) == sorted(DOCS.values())


def test_tail_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "_CHUNK", 7)  # make the tail copy span several chunks
    text = bytes(np.random.default_rng(0).integers(0, 256, 1115, dtype=np.uint8))
    write(tmp_path / "shakespeare.txt.gz", gzip.compress(text))
    cfg = DataConfig(
        sources=[str(tmp_path)], split="tail", heldout_fraction=0.1, cache_dir=str(tmp_path / "c")
    )
    corpus = load_corpus(cfg, progress=False)
    assert int(1115 * 0.9) == 1003  # nanoGPT's cut
    assert corpus["train"].n_docs == corpus["heldout"].n_docs == 1
    assert corpus["train"].doc(0) == text[:1003]
    assert corpus["heldout"].doc(0) == text[1003:]


def test_one_document_hash_split_is_an_error(tmp_path):
    write(tmp_path / "only.txt", b"a single document")
    cfg = DataConfig(sources=[str(tmp_path / "only.txt")], cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError) as e:
        load_corpus(cfg, progress=False)
    assert_user_error(e, "--data.split tail", "empty")


# -----------------------------------------------------------------------------
# windows


def test_stream_round_trip(corpus_dir):
    corpus = load_corpus(
        DataConfig(sources=["docs"], heldout_fraction=0.3, cache_dir="c"), progress=False
    )
    for split, c in corpus.items():
        stream = c.window(0, c.stream_len).tolist()
        assert c.stream_len == c.n_bytes + 2 * c.n_docs
        assert stream.count(BOS) == stream.count(EOS) == c.n_docs
        # split the stream back into documents at its specials
        docs, cur = [], None
        for i in stream:
            if i == BOS:
                assert cur is None, "BOS inside a document"
                cur = []
            elif i == EOS:
                docs.append(bytes(cur))
                cur = None
            else:
                cur.append(i)
        assert docs == [d for n, d in sorted(DOCS.items()) if split_of(n, 0.3) == split]
        # and it wraps around
        assert c.window(c.stream_len - 2, 4).tolist() == stream[-2:] + stream[:2]


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=6),
    start=st.integers(-100, 100),
    length=st.integers(0, 80),
)
def test_window_matches_naive_stream(docs, start, length):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_split(Path(tmp) / "split", docs)
        stream = stream_of(docs)
        want = [stream[(start + j) % len(stream)] for j in range(length)]
        got = corpus.window(start, length)
        assert got.dtype == np.int64 and got.tolist() == want
        del corpus, got  # release the memmaps before the directory goes


@pytest.mark.parametrize("seq_len", [2, 3, 7, 64, 1000])
def test_eval_windows_cover_each_byte_once(tmp_path, seq_len):
    docs = [b"hello", b"w", bytes(range(40)), b"end\n"]
    corpus = make_split(tmp_path / "split", docs)
    stream = stream_of(docs)
    windows = torch.cat(list(corpus.eval_batches(seq_len, batch_size=3)))
    assert windows.dtype == torch.long and windows.shape[1] == seq_len
    assert len(windows) == corpus.n_eval_windows(seq_len)
    for i, w in enumerate(windows.tolist()):
        real = [t for t in w if t != PAD]
        assert real == stream[i * (seq_len - 1) : i * (seq_len - 1) + seq_len]
        assert w == real + [PAD] * (seq_len - len(real))  # padding only on the right
    # the targets (positions 1.. of every window) are the stream minus its first BOS, once each
    targets = [t for t in windows[:, 1:].flatten().tolist() if t != PAD]
    assert targets == stream[1:]
    # the one-window iterator gives the same windows
    singles = list(corpus.eval_windows(seq_len, max_windows=2))
    assert [w.shape for w in singles] == [(1, seq_len)] * min(2, len(windows))
    assert torch.equal(torch.cat(singles), windows[:2])


def test_eval_max_bytes_takes_a_prefix(tmp_path):
    docs = [bytes(range(30)), b"abc", bytes(range(100, 150))]
    corpus = make_split(tmp_path / "split", docs)
    stream = stream_of(docs)
    for max_bytes in (1, 9, 10, 50, 10**6):
        windows = torch.cat(list(corpus.eval_batches(10, batch_size=2, max_bytes=max_bytes)))
        targets = [t for t in windows[:, 1:].flatten().tolist() if t != PAD]
        assert targets == stream[1 : max_bytes + 1]


# -----------------------------------------------------------------------------
# training batches


def test_train_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    corpus = make_split(tmp_path / "split", [bytes(range(256)) * 4, b"short", b"x" * 99])
    batch = corpus.train_batch(step=5, batch_size=4, seq_len=33, seed=0)
    assert batch.shape == (4, 33) and batch.dtype == torch.long
    assert batch.min() >= 0 and batch.max() <= EOS and not (batch == PAD).any()
    assert torch.equal(batch, corpus.train_batch(step=5, batch_size=4, seq_len=33, seed=0))
    assert not torch.equal(batch, corpus.train_batch(step=6, batch_size=4, seq_len=33, seed=0))
    assert not torch.equal(batch, corpus.train_batch(step=5, batch_size=4, seq_len=33, seed=1))
    # every row is a real slice of the stream
    stream = stream_of([corpus.doc(i) for i in range(corpus.n_docs)])
    text = ",".join(map(str, stream + stream)) + ","
    assert all(",".join(map(str, row)) + "," in text for row in batch.tolist())


def test_rank_slices(tmp_path):
    corpus = make_split(tmp_path / "split", [bytes(range(256)) * 4])
    ranks = [corpus.train_batch(3, 2, 16, seed=7, rank=r, world_size=3) for r in range(3)]
    assert not torch.equal(ranks[0], ranks[1]) and not torch.equal(ranks[1], ranks[2])
    # the ranks partition the batch one process would draw for batch_size * world_size
    assert torch.equal(torch.cat(ranks), corpus.train_batch(3, 6, 16, seed=7))


# -----------------------------------------------------------------------------
# the cache


def test_cache_is_reused_and_rebuilt_on_change(corpus_dir):
    cfg = DataConfig(sources=["docs"], heldout_fraction=0.3, cache_dir="cache")
    first = load_corpus(cfg, progress=False)
    bytes_file = first["train"].path / "bytes.u8"
    mtime = bytes_file.stat().st_mtime_ns
    meta = json.loads((first["train"].path.parent / "meta.json").read_text())
    assert meta["splits"]["train"] == {
        "n_docs": first["train"].n_docs,
        "n_bytes": first["train"].n_bytes,
    }

    again = load_corpus(cfg, progress=False)
    assert again["train"].path == first["train"].path
    assert bytes_file.stat().st_mtime_ns == mtime  # not rewritten

    # a changed file (and a changed split setting) gives a new cache with the new content
    name = next(n for n in sorted(DOCS) if split_of(n, 0.3) == "train")
    write(name, b"changed!")
    os.utime(name, ns=(mtime + 10**9, mtime + 10**9))
    changed = load_corpus(cfg, progress=False)
    assert changed["train"].path != first["train"].path
    assert b"changed!" in [changed["train"].doc(i) for i in range(changed["train"].n_docs)]
    other = load_corpus(
        DataConfig(sources=["docs"], heldout_fraction=0.4, cache_dir="cache"), False
    )
    assert other["train"].path not in (first["train"].path, changed["train"].path)


def test_stale_temp_dirs_and_broken_caches(corpus_dir):
    cfg = DataConfig(sources=["docs"], heldout_fraction=0.3, cache_dir="cache")
    final = data.cache_path(cfg)
    # a killed build elsewhere (left alone) and one on this host whose process is gone (removed)
    dead = subprocess.Popen(["true"])
    dead.wait()
    foreign = write(
        final.parent / f"{final.name}.tmp-otherhost-1-abc/train/bytes.u8", b"junk"
    ).parent.parent
    ours = write(
        final.parent / f"{final.name}.tmp-{socket.gethostname()}-{dead.pid}-abc/train/bytes.u8",
        b"junk",
    ).parent.parent
    corpus = load_corpus(cfg, progress=False)
    assert corpus["train"].path.parent == final
    assert foreign.exists() and not ours.exists()
    want = [d for n, d in sorted(DOCS.items()) if split_of(n, 0.3) == "train"]
    assert [corpus["train"].doc(i) for i in range(corpus["train"].n_docs)] == want

    # a final dir that is not a finished build is rebuilt, not trusted
    del corpus
    (final / "meta.json").unlink()
    (final / "train" / "bytes.u8").write_bytes(b"truncated")
    corpus = load_corpus(cfg, progress=False)
    assert [corpus["train"].doc(i) for i in range(corpus["train"].n_docs)] == want


# -----------------------------------------------------------------------------
# user errors


def test_missing_sources(tmp_path):
    with pytest.raises(DataError) as e:
        list(iter_documents([str(tmp_path / "nope.txt")]))
    assert_user_error(e, "nope.txt", "does not exist")
    with pytest.raises(DataError) as e:
        list(iter_documents([str(tmp_path / "*.txt")]))
    assert_user_error(e, "no files match", "*.txt")


def test_empty_corpus(tmp_path):
    write(tmp_path / "d/empty.txt", b"")
    for source in (str(tmp_path / "d"), str(tmp_path / "d/empty.txt")):
        with pytest.raises(DataError) as e:
            list(iter_documents([source]))
        assert_user_error(e, "empty (0 documents)")
        with pytest.raises(DataError) as e:
            load_corpus(DataConfig(sources=[source], cache_dir=str(tmp_path / "c")), False)
        assert_user_error(e, "empty (0 documents)")


@pytest.mark.parametrize(
    "content, words",
    [
        (
            b'{"text": "ok"}\n{"body": "no text"}\n',
            ["bad.jsonl line 2", "'text'", "--data.text_field"],
        ),
        (b'{"text": "ok"}\n{"text": 3}\n', ["bad.jsonl line 2", "'text'"]),
        (b'{"text": "ok"}\n{"text": \n', ["bad.jsonl line 2", "not a JSON object"]),
        (b'["text"]\n', ["bad.jsonl line 1", "not a JSON object"]),
    ],
)
def test_bad_jsonl(tmp_path, content, words):
    write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError) as e:
        list(iter_documents([str(tmp_path / "bad.jsonl")]))
    assert_user_error(e, *words)


def test_truncated_gzip(tmp_path):
    write(tmp_path / "t.txt.gz", gzip.compress(b"some text " * 100)[:-10])
    with pytest.raises(DataError) as e:
        list(iter_documents([str(tmp_path / "t.txt.gz")]))
    assert_user_error(e, "cannot read", "t.txt.gz")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"heldout_fraction": 0.0}, "data.heldout_fraction"),
        ({"heldout_fraction": 1.0}, "data.heldout_fraction"),
        ({"seq_len": 1}, "data.seq_len"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"split": "random"}, "data.split"),
        ({"sources": []}, "data.sources"),
        ({"text_field": ""}, "data.text_field"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(DataError) as e:
        DataConfig(**kwargs)
    assert_user_error(e, field)


def test_config_accepts_lists():
    cfg = DataConfig(sources=["a", "b"])
    assert cfg.sources == ("a", "b") and hash(cfg) == hash(DataConfig(sources=("a", "b")))
    with pytest.raises(AttributeError):
        cfg.seq_len = 3  # frozen


def test_every_result_says_how_it_was_held_out():
    tail = DataConfig(sources=["x"], split="tail", heldout_fraction=0.1).heldout_rule()
    assert "by position" in tail and "10%" in tail
    docs = DataConfig(sources=["x"], heldout_fraction=0.05).heldout_rule()
    assert "by document" in docs and "5%" in docs
