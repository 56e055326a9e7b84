"""The entropy patcher: per-document entropies, the rule, step == ends, calibration, the cache."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bytelm.checkpoint import build_patcher, load_entropy_model
from bytelm.config import PatcherConfig
from bytelm.data import DataConfig, load_corpus
from bytelm.patchers.entropy import (
    CalibrationError,
    EntropyPatcher,
    _forward_pieces,
    chunk_start,
)
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.vocab import BOS, EOS, PAD
from tests.patchers.tiny_entropy import save_tiny_entropy_model

CONTEXT = 48  # the tiny model's context: documents longer than this are chunked


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_entropy_model(tmp_path_factory.mktemp("ent") / "ckpt", context=CONTEXT)


@pytest.fixture(scope="module")
def patcher(model_dir):
    model, context = load_entropy_model(model_dir)
    return EntropyPatcher(model, context, threshold=1.5, max_patch_len=8, source=str(model_dir))


@pytest.fixture(scope="module", params=["bytes", "ngrams"])
def any_patcher(request, patcher, tmp_path_factory):
    """The patcher, and one whose entropy model also reads hashed 3- and 4-grams (its
    cached step keeps every position's byte: chunk restarts and replays must carry them)."""
    if request.param == "bytes":
        return patcher
    path = save_tiny_entropy_model(
        tmp_path_factory.mktemp("ent-ngram") / "ckpt", context=CONTEXT, ngram_ns=(3, 4)
    )
    model, context = load_entropy_model(path)
    return EntropyPatcher(model, context, threshold=1.5, max_patch_len=8, source=str(path))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~60 KB of real text: a few stdlib modules, each split into a train head and held-out tail."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [str(root / "json" / f) for f in ("decoder.py", "encoder.py", "scanner.py", "tool.py")]
    files += [str(root / f) for f in ("textwrap.py", "bisect.py", "colorsys.py", "shlex.py")]
    cfg = DataConfig(
        sources=tuple(files),
        split="tail",
        heldout_fraction=0.5,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return load_corpus(cfg, progress=False)


def text_ids(n: int = 150, seed: int = 0) -> list[int]:
    text = Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_bytes()
    start = np.random.default_rng(seed).integers(0, len(text) - n)
    return list(text[start : start + n])


# ------------------------------------------------------------------------ entropies


def test_entropies_do_not_depend_on_packed_documents(patcher):
    doc = [BOS, *text_ids(120), EOS]
    alone = patcher.entropies(torch.tensor([doc]))[0]
    before = [BOS, *text_ids(70, seed=1), EOS]
    after = [BOS, *text_ids(30, seed=2)]
    packed = patcher.entropies(torch.tensor([before + doc + after]))[0]
    got = packed[len(before) : len(before) + len(doc)]
    assert torch.allclose(got, alone, atol=2e-3), (got - alone).abs().max()
    # ... and in a batch next to another row, right-padded
    other = before + after
    T = max(len(doc), len(other)) + 5
    batch = torch.tensor([doc + [PAD] * (T - len(doc)), other + [PAD] * (T - len(other))])
    assert torch.allclose(patcher.entropies(batch)[0, : len(doc)], alone, atol=2e-3)
    # the check can fail: the same bytes continuing another document's context differ
    glued = patcher.entropies(torch.tensor([before[:-1] + doc[1:]]))[0]
    assert (glued[len(before) - 1 :] - alone[1:]).abs().max() > 0.1


def test_long_documents_use_a_sliding_window_with_overlap(patcher):
    doc = torch.tensor([BOS, *text_ids(3 * CONTEXT + 7)])
    H = patcher.entropies(doc[None])[0]
    L, O = patcher.context, patcher.overlap
    for r in [0, 5, L - 1, L, L + 1, L + O, 2 * L, len(doc) - 1]:
        a = chunk_start(r, L, O)
        assert r - a >= min(r, O), "every position keeps at least `overlap` bytes of context"
        assert r - a < L
        want = _forward_pieces(patcher.model, [doc[a : r + 1]], rows=1)[0][-1]
        assert abs(float(H[r]) - float(want)) < 2e-3, r


# ------------------------------------------------------------------------ the rule


@pytest.mark.parametrize("mode", ["global", "monotonic", "both"])
def test_step_equals_ends(any_patcher, mode):
    patcher = any_patcher
    p = EntropyPatcher(
        patcher.model,
        patcher.context,
        mode,
        threshold=1.2 if mode != "monotonic" else 0.4,
        max_patch_len=6,
        delta=0.2,
    )
    g = torch.Generator().manual_seed(3)
    rand = torch.randint(0, 256, (70,), generator=g).tolist()
    real = text_ids(CONTEXT + 40)
    rows = [[BOS, *real[:50], EOS, BOS, *rand[:45]], [*real[10:], EOS, BOS, *rand[:8]]]
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    ends = p.ends(ids)
    state = p.start(2)
    stepped = torch.cat([p.step(state, ids[:, i : i + 7]) for i in range(0, T, 7)], dim=1)
    for b, r in enumerate(rows):
        assert torch.equal(stepped[b, : len(r)], ends[b, : len(r)]), b
    assert ends.any() and not ends.all()
    # a cloned state continues independently of the original (generation branches, rollback)
    state = p.start(2)
    p.step(state, ids[:, :60])
    branch = state.clone()
    p.step(state, torch.randint(0, 256, (2, 30), generator=g))  # the original wanders off
    assert torch.equal(p.step(branch, ids[:, 60:80]), ends[:, 60:80])


def test_prefix_patching_and_contract(patcher):
    ids = torch.tensor([[BOS, *text_ids(90), EOS, BOS, *text_ids(40, seed=5)]])
    full = patcher.ends(ids)[0]
    for t in [1, 17, 60, 92, 100, ids.shape[1]]:
        assert torch.equal(patcher.ends(ids[:, :t])[0], full[:t])
    lengths = patcher.patch(ids)[0]
    real = lengths[lengths > 0]
    assert int(real.sum()) == ids.shape[1] and (real <= patcher.max_patch_len).all()
    assert full[(ids[0] == EOS)].all(), "EOS closes its patch"


def test_rule_modes_on_known_entropies(patcher):
    ids = torch.tensor([[BOS, 97, 98, 99, 100, 101, 102, EOS]])
    H = torch.tensor([[3.0, 1.0, 2.5, 2.0, 4.0, 0.5, 0.6, 1.0]])
    g = EntropyPatcher(patcher.model, 48, "global", threshold=2.2, max_patch_len=16)
    assert g.ends(ids, entropies=H)[0].nonzero().flatten().tolist() == [0, 2, 4, 7]
    m = EntropyPatcher(patcher.model, 48, "monotonic", threshold=0.5, max_patch_len=16)
    assert m.ends(ids, entropies=H)[0].nonzero().flatten().tolist() == [2, 4, 7]
    both = EntropyPatcher(patcher.model, 48, "both", threshold=2.2, delta=0.5, max_patch_len=16)
    assert both.ends(ids, entropies=H)[0].nonzero().flatten().tolist() == [2, 4, 7]
    capped = EntropyPatcher(patcher.model, 48, "global", threshold=9.0, max_patch_len=3)
    assert capped.ends(ids, entropies=H)[0].nonzero().flatten().tolist() == [2, 5, 7]


# ------------------------------------------------------------------------ calibration


@pytest.mark.parametrize("mode", ["global", "monotonic"])
@pytest.mark.parametrize("target", [2.0, 3.5, 5.0])
def test_calibration_hits_target_on_its_sample(patcher, corpus, mode, target):
    """In-sample, against the live patcher; out of sample: tests/patchers/test_calibration.py."""
    train = corpus["train"]
    p = EntropyPatcher(patcher.model, patcher.context, mode, max_patch_len=12, source="t")
    cal = p.calibrate(train, target)  # every 256-position window of the split, from the cache
    assert abs(cal.measured_bytes_per_patch / target - 1) <= 0.02
    assert cal.n_positions == train.stream_len // 256 * 256
    # measured independently: the live patcher (no cache) document by document
    n_pos = n_patches = 0
    for d in range(train.n_docs):
        a, b = int(train.doc_starts[d]), int(train.doc_starts[d + 1])
        lengths = p.patch(torch.from_numpy(train.window(a, b - a))[None])[0]
        n_pos, n_patches = n_pos + b - a, n_patches + int((lengths > 0).sum())
    assert abs(n_pos / n_patches / target - 1) <= 0.02, (n_pos / n_patches, cal)


def test_calibration_uses_exact_quantile_in_global_mode(patcher, corpus):
    p = EntropyPatcher(patcher.model, patcher.context, "global", max_patch_len=64, source="t")
    assert p.calibrate(corpus["heldout"], 3.0).method == "quantile"
    p2 = EntropyPatcher(patcher.model, patcher.context, "global", max_patch_len=4, source="t")
    cal = p2.calibrate(corpus["heldout"], 3.5)  # max_patch_len cuts many patches: bisection
    assert cal.method == "bisection" and abs(cal.measured_bytes_per_patch / 3.5 - 1) <= 0.02


def test_impossible_targets_raise(patcher, corpus):
    held = corpus["heldout"]
    p = EntropyPatcher(patcher.model, patcher.context, "global", max_patch_len=6, source="t")
    with pytest.raises(CalibrationError, match="must be >= 1"):
        p.calibrate(held, 0.5)
    with pytest.raises(CalibrationError, match="max_patch_len=6"):
        p.calibrate(held, 9.0)
    both = EntropyPatcher(patcher.model, patcher.context, "both", 0.0, 16, delta=1.5, source="t")
    with pytest.raises(CalibrationError, match="below what mode 'both'"):
        both.calibrate(held, 1.05)
    with pytest.raises(ValueError, match="target_bytes_per_patch must be >= 1"):
        PatcherConfig(name="entropy", target_bytes_per_patch=0.5)


def test_uncalibrated_patcher_says_so(model_dir):
    p = build_patcher(PatcherConfig(name="entropy", entropy_model=str(model_dir)))
    with pytest.raises(ValueError, match="not calibrated"):
        p.ends(torch.tensor([[BOS, 97, 98]]))


# ------------------------------------------------------------------------ the cache


def test_cache_matches_live_entropies_and_train_windows(patcher, corpus, tmp_path):
    train = corpus["train"]
    cache = EntropyCache(train, patcher, root=tmp_path)
    d = 1  # a whole document, live, equals the cached values at its stream positions
    a, b = int(train.doc_starts[d]), int(train.doc_starts[d + 1])
    live = patcher.entropies(torch.from_numpy(train.window(a, b - a))[None])[0]
    assert torch.allclose(cache.window(a, b - a), live, atol=2e-3)
    # training windows: the same starts as ByteCorpus.train_batch, so ids and entropies align
    ids = train.train_batch(7, 3, 64, seed=1, rank=1, world_size=2)
    starts = train.train_starts(7, 3, seed=1, rank=1, world_size=2)
    assert torch.equal(
        ids, torch.stack([torch.from_numpy(train.window(int(s), 64)) for s in starts])
    )
    H = cache.train_batch(7, 3, 64, seed=1, rank=1, world_size=2)
    want = torch.stack([cache.window(int(s), 64) for s in starts])
    assert torch.equal(H, want)
    # computed once: a fresh handle reads the flags and values from disk
    again = EntropyCache(train, patcher, root=tmp_path)
    assert again.done.sum() == cache.done.sum() > 0
    again.build(progress=False)
    assert again.complete and torch.equal(again.window(a, b - a), cache.window(a, b - a))


# ------------------------------------------------------------------------ training


def test_training_calibrates_caches_and_bundles_the_entropy_model(corpus, tmp_path):
    import shutil

    from bytelm import config as C
    from bytelm.checkpoint import load_config, load_model
    from bytelm.train import Trainer

    ent = save_tiny_entropy_model(tmp_path / "entropy", context=CONTEXT, seed=1)  # own cache key
    cfg = C.override(
        C.load_preset("tiny"),
        {
            "model.patcher.name": "entropy",
            "model.patcher.target_bytes_per_patch": "3",
            "model.patcher.max_patch_len": "8",
            "model.patcher.entropy_model": str(ent),
            "train.steps": "2",
            "train.eval_every": "2",
            "train.eval_bytes": "512",
            "train.out_dir": str(tmp_path / "run"),
        },
    )
    trainer = Trainer(cfg, corpus=corpus)
    pc = trainer.cfg.model.patcher
    assert abs(pc.measured_bytes_per_patch / 3 - 1) <= 0.02 and pc.threshold != 0
    cache = trainer.entropy_feed.cache  # calibrated on the training split: those chunks cached
    assert cache.done.any()
    trainer.fit()
    assert cache.done.any()
    ckpt = tmp_path / "run" / "checkpoint"
    shutil.rmtree(ent)  # the checkpoint must not need the original entropy model
    assert (ckpt / "entropy_model" / "model.safetensors").is_file()
    model, loaded = load_model(ckpt)
    assert loaded.model.patcher.threshold == pc.threshold
    assert Path(load_config(ckpt).model.patcher.entropy_model) == ckpt / "entropy_model"
    ids = torch.from_numpy(corpus["heldout"].window(0, 64))[None]
    assert model.patcher.ends(ids).any()


def ragged_rows(seed: int = 0) -> tuple[list[list[int]], torch.Tensor]:
    """Rows of different lengths that cross chunk boundaries at different bytes: a document
    from the row start, one from a BOS at byte 60, a BOS at byte 112 after an EOS, random
    bytes."""
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, 256, (200,), generator=g).tolist()
    rows = [
        [BOS, *text_ids(199, seed=seed)],
        [*text_ids(59, seed=seed + 1), BOS, *text_ids(71, seed=seed + 2)],
        [BOS, *text_ids(110, seed=seed + 3), EOS, BOS, *rand[:45]],
        rand[:160],
    ]
    T = max(len(r) for r in rows)
    return rows, torch.tensor([r + [PAD] * (T - len(r)) for r in rows])


def count_model_calls(monkeypatch, model) -> list[int]:
    """Counts the entropy model's forwards: cached steps and prefills, and batched forwards."""
    calls = [0]

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(model, "step", counted(model.step))
    monkeypatch.setattr(model.stack, "forward", counted(model.stack.forward))
    return calls


def test_step_is_batched_over_rows_and_bytes(patcher, monkeypatch):
    """A prompt in one (B, 100) call, then uneven calls (1, 3, 7, ... bytes): every row's
    ends equal `ends`, while rows cross chunk boundaries (every S bytes past L) and BOS at
    different calls, and each call runs the entropy model at most 3 times, never per row
    or per byte: once per call (one cached step) when no row starts a chunk."""
    p = EntropyPatcher(
        patcher.model, patcher.context, "both", threshold=1.2, max_patch_len=6, delta=0.2
    )
    L, O = p.context, p.overlap
    rows, ids = ragged_rows()
    ends = p.ends(ids)
    chunk_starts = torch.zeros(ids.shape, dtype=torch.bool)  # where a row starts a chunk
    for b, row in enumerate(ids.tolist()):  # the PAD after a short row is fed too
        r = -1
        for t, c in enumerate(row):
            r = 0 if c == BOS else r + 1
            chunk_starts[b, t] = r == 0 or (r >= L and (r - O) % (L - O) == 0)
    calls = count_model_calls(monkeypatch, p.model)
    state, out, t, i = p.start(len(rows)), [], 0, 0
    sizes = [100, 1, 3, 7, 1, 12, 2, 5, 11, 1, 1, 30, 4]
    one_call, restarts = 0, 0
    while t < ids.shape[1]:
        n = min(sizes[i % len(sizes)], ids.shape[1] - t)
        before = calls[0]
        out.append(p.step(state, ids[:, t : t + n]))
        starts = bool(chunk_starts[:, t : t + n].any())
        assert 1 <= calls[0] - before <= (3 if starts else 1), (t, n)
        one_call += not starts
        restarts += starts and t > 0
        t, i = t + n, i + 1
    stepped = torch.cat(out, 1)
    for b, r in enumerate(rows):
        assert torch.equal(stepped[b, : len(r)], ends[b, : len(r)]), b
    assert restarts >= 4 and one_call >= 6
    assert ends.any() and not ends.all()


def test_replay_across_chunk_starts_keeps_snapshots_intact(any_patcher):
    """Speculative rollback (`replay_patcher`) from a snapshot taken before calls in which
    rows start chunks: the replayed state continues like a run that saw only the kept
    bytes, and the snapshot, replayed again, still does (its storage was not overwritten).
    `step(snapshot, ids, n_valid=keep)` is the same replay in one call."""
    from bytelm.model.cache import replay_patcher

    patcher = any_patcher
    p = EntropyPatcher(patcher.model, patcher.context, "global", threshold=1.2, max_patch_len=6)
    rows, ids = ragged_rows(seed=4)
    ids, B = ids[:, :150], len(rows)
    state = p.start(B)
    p.step(state, ids[:, :40])
    g = torch.Generator().manual_seed(0)
    kept = [ids[b, :40].tolist() for b in range(B)]
    t = torch.full((B,), 40)
    while int(t.min()) < 130:
        feed = torch.stack([ids[b, t[b] : t[b] + 9] for b in range(B)])
        feed[:, 6:] = torch.randint(0, 256, (B, 3), generator=g)  # rejected drafts
        keep = torch.randint(1, 7, (B,), generator=g)
        snap = state.clone()
        p.step(state, feed)
        state = replay_patcher(p, snap, feed, keep)
        again = replay_patcher(p, snap, feed, keep)  # the snapshot is still intact
        once = snap.clone()
        p.step(once, feed, n_valid=keep)
        for k in ("r", "history"):
            assert torch.equal(once.extra[k], state.extra[k]), k
        assert torch.equal(once.patch_len, state.patch_len) and torch.equal(once.prev, state.prev)
        assert torch.equal(once.extra["kv"].cache.length, state.extra["kv"].cache.length)
        for b in range(B):
            kept[b] += feed[b, : keep[b]].tolist()
        t += keep
        tail = torch.tensor([[ord("x"), ord(" "), 40, 41]] * B)
        got = [p.step(s, tail) for s in (state.clone(), again, once)]
        for b in range(B):
            ref = p.ends(torch.tensor([kept[b] + tail[b].tolist()]))[0, -4:]
            assert all(torch.equal(x[b], ref) for x in got), (b, int(t[b]))
