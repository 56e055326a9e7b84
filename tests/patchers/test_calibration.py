"""Out-of-sample calibration: θ is fitted on a sample of the training split, and the promise
(mean bytes per patch within 2% of the target) is checked on a third sample, neither the
calibration sample nor the held-out split bpb is reported on; and on the held-out split.
For the entropy patcher and for a learned router."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bytelm.checkpoint import load_entropy_model
from bytelm.data import DataConfig, load_corpus
from bytelm.model.chunking import calibrate
from bytelm.patchers.entropy import CALIBRATION_TOL, EntropyPatcher, mean_bytes_per_patch
from bytelm.patchers.entropy_cache import EntropyCache, model_key
from bytelm.patchers.entropy_rule import calibrate_threshold
from bytelm.vocab import PAD
from tests.patchers.tiny_entropy import save_tiny_entropy_model

SAMPLE = 131072  # positions per sample: two fit in the training split below


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~1 MB of stdlib sources (five packages), hash-split by document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [str(p) for d in ("email", "json", "logging", "http", "unittest") for p in
             sorted((root / d).glob("*.py"))]  # fmt: skip
    cfg = DataConfig(
        sources=tuple(files),
        heldout_fraction=0.3,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return load_corpus(cfg, progress=False)


@pytest.fixture(scope="module")
def entropy_model(tmp_path_factory):
    return load_entropy_model(save_tiny_entropy_model(tmp_path_factory.mktemp("m") / "c", 48))


def test_samples_are_disjoint_spread_and_fixed(corpus):
    train = corpus["train"]
    a, b = train.sample_starts(256, SAMPLE, 0), train.sample_starts(256, SAMPLE, 1)
    assert len(a) == len(b) == SAMPLE // 256
    assert np.array_equal(a, np.sort(a)) and np.array_equal(a, train.sample_starts(256, SAMPLE))
    assert not set(a.tolist()) & set(b.tolist()) and (a % 256 == 0).all()
    docs = np.searchsorted(train.doc_starts, a, side="right") - 1
    assert len(set(docs.tolist())) > train.n_docs // 2, "spread over the split, not its start"
    with pytest.raises(ValueError, match="too few for sample 7"):
        train.sample_starts(256, SAMPLE, 7)


@pytest.mark.parametrize("mode", ["global", "monotonic"])
@pytest.mark.parametrize("target", [2.0, 3.5, 5.0])
def test_entropy_calibration_holds_on_a_third_sample(corpus, entropy_model, mode, target):
    model, context = entropy_model
    p = EntropyPatcher(model, context, mode, max_patch_len=12, source="t")
    cal = p.calibrate(corpus["train"], target, max_bytes=SAMPLE)  # sample 0 of the train split
    assert cal.n_positions == SAMPLE
    assert abs(cal.measured_bytes_per_patch / target - 1) <= CALIBRATION_TOL
    # the third sample: training windows the calibration never read
    ids, H = EntropyCache(corpus["train"], p).calibration_sample(SAMPLE, sample=1)
    third = mean_bytes_per_patch(ids, H, mode, p.threshold, 12)
    assert abs(third / target - 1) <= CALIBRATION_TOL, (third, cal)
    # and the whole held-out split, where bpb and bytes per patch are reported
    hid, hH = EntropyCache(corpus["heldout"], p).calibration_sample(None)
    held = mean_bytes_per_patch(hid, hH, mode, p.threshold, 12)
    assert abs(held / target - 1) <= CALIBRATION_TOL, (held, cal)
    # the check can fail: θ fitted to another target misses this one by far more than 2%
    off = calibrate_threshold(ids, H, target * 1.1, mode, 12).threshold
    assert abs(mean_bytes_per_patch(ids, H, mode, off, 12) / target - 1) > CALIBRATION_TOL


def test_training_calibrates_without_reading_the_heldout_split(corpus, tmp_path):
    """The Trainer's calibration computes no held-out entropy: it never sees that split."""
    from bytelm import config as C
    from bytelm.train import Trainer

    ent = save_tiny_entropy_model(tmp_path / "entropy", context=48, seed=2)  # own cache key
    cfg = C.override(
        C.load_preset("tiny"),
        {
            "model.patcher.name": "entropy",
            "model.patcher.target_bytes_per_patch": "3",
            "model.patcher.max_patch_len": "8",
            "model.patcher.entropy_model": str(ent),
            "train.steps": "1",
            "train.out_dir": str(tmp_path / "run"),
        },
    )
    trainer = Trainer(cfg, corpus=corpus)
    patcher = trainer.raw_model.patcher
    assert abs(trainer.cfg.model.patcher.measured_bytes_per_patch / 3 - 1) <= CALIBRATION_TOL
    assert trainer.entropy_feed.cache.done.any()  # the calibration sample, cached for training
    held = Path(corpus["heldout"].path) / "entropy" / model_key(patcher)
    assert not held.exists(), "calibration read the held-out split"


def _router_mean(model, batches) -> float:
    """Mean bytes per patch the router's p gives at its θ over windows, as `calibrate` counts."""
    ids_all, p_all = [], []
    with torch.no_grad():
        for ids in batches:
            p, _ = model.route(ids)
            ids_all.append(ids[ids != PAD])
            p_all.append(p[ids != PAD])
    ids, p = torch.cat(ids_all), torch.cat(p_all)
    return mean_bytes_per_patch(
        ids, p, "global", model.patcher.threshold, model.patcher.max_patch_len
    )


@pytest.mark.parametrize("target", [3.0, 5.0])
def test_learned_calibration_holds_on_a_third_sample(corpus, target):
    from tests.model.test_learned import learned_model

    model = learned_model()
    seq, n = 128, 32768
    _, cal = calibrate(model, corpus["train"], target, seq, batch_size=32, max_bytes=n)
    assert cal.n_positions == n and abs(cal.measured_bytes_per_patch / target - 1) <= 0.02
    third = _router_mean(model, corpus["train"].sample_batches(seq, 32, n, sample=1))
    assert abs(third / target - 1) <= CALIBRATION_TOL, (third, cal)
    held = _router_mean(model, corpus["heldout"].sample_batches(seq, 32, n))  # spread windows
    assert abs(held / target - 1) <= CALIBRATION_TOL, (held, cal)
