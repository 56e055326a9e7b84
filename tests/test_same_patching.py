"""A held-out document is patched the same in training, evaluation and generation.

Training and evaluation rows are windows cut from a split's stream of packed documents, and
most start inside a document. Their patch ends must be the document's own: the ends that
`step` gives when it is fed the whole document byte block by byte block (generation), read at
the window's positions. The training side is the Trainer's batch (`_host_batch`), the
evaluation side what the model is handed in `Trainer.evaluate` (`evaluate_bpb`).
"""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bytelm import config as C
from bytelm.data import DataConfig, load_corpus
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.patchers.entropy_rule import _diff
from bytelm.train import Trainer
from bytelm.vocab import BOS, EOS, PAD

SEQ_LEN, BATCH = 48, 8


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Four documents of stdlib code whose last halves (600-1000 bytes each) are held out."""
    d = tmp_path_factory.mktemp("docs")
    root = Path(sysconfig.get_paths()["stdlib"])
    for i, (name, n) in enumerate(
        [("textwrap.py", 1500), ("shlex.py", 2000), ("bisect.py", 1300), ("colorsys.py", 1700)]
    ):
        (d / f"doc{i}.py").write_bytes((root / name).read_bytes()[2000 : 2000 + n])
    cfg = DataConfig(
        sources=(str(d),),
        split="tail",
        heldout_fraction=0.5,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return load_corpus(cfg, progress=False)["heldout"]


def trainer_for(heldout, out_dir, patcher: dict) -> Trainer:
    """A tiny ByteLM Trainer whose training split is the held-out split itself."""
    cfg = C.load_preset("tiny")
    over = {
        "data.seq_len": str(SEQ_LEN),
        "data.batch_size": str(BATCH),
        "train.out_dir": str(out_dir),
        "train.eval_bytes": "0",
        "train.prefetch": "false",
        "model.patcher.max_patch_len": "6",
    }
    over.update({f"model.patcher.{k}": str(v) for k, v in patcher.items()})
    return Trainer(C.override(cfg, over), corpus={"train": heldout, "heldout": heldout})


def gap_threshold(values: np.ndarray) -> float:
    """The middle of the widest gap between sorted values in their 40-75% quantile range: far
    (in float16 ulps) from every value, so a cached and an incremental entropy never fall on
    opposite sides of it."""
    v = np.unique(
        values[(values >= np.quantile(values, 0.4)) & (values <= np.quantile(values, 0.75))]
    )
    i = int(np.argmax(np.diff(v)))
    return float((v[i] + v[i + 1]) / 2)


def generation_ends(patcher, split) -> list[torch.Tensor]:
    """Per document: `step` over [BOS] + bytes + [EOS], fed 7 bytes at a time."""
    out = []
    for d in range(split.n_docs):
        ids = torch.tensor([BOS, *split.doc(d), EOS])[None]
        state = patcher.start(1)
        out.append(
            torch.cat(
                [patcher.step(state, ids[:, i : i + 7]) for i in range(0, ids.shape[1], 7)], 1
            )[0]
        )
    return out


def check_rows(split, want, starts, ids, ends, mid_doc: list) -> int:
    """Every real position of every row (stream start starts[b]) against its document's ends;
    returns how many positions were checked and notes rows that start inside a document."""
    n = 0
    for b, s in enumerate(starts):
        pos = (int(s) + np.arange(ids.shape[1])) % split.stream_len
        doc = np.searchsorted(split.doc_starts, pos, side="right") - 1
        r = pos - split.doc_starts[doc]
        if r[0] > 0:
            mid_doc.append(int(r[0]))
        for t in range(ids.shape[1]):
            if ids[b, t] == PAD:
                continue
            assert ends[b, t] == want[doc[t]][r[t]], (
                f"row starting at stream {s} (document {doc[0]}, offset {r[0]}): byte {t} "
                f"(document {doc[t]}, offset {r[t]}) ends a patch: {bool(ends[b, t])}, "
                f"but {bool(want[doc[t]][r[t]])} for the whole document"
            )
            n += 1
    return n


PATCHERS = {
    "fixed": {"name": "fixed", "k": 4},
    "space": {"name": "space"},
    "entropy-global": {"name": "entropy", "mode": "global"},
    "entropy-monotonic": {"name": "entropy", "mode": "monotonic"},
}


@pytest.mark.parametrize("kind", list(PATCHERS))
def test_heldout_patching_is_the_same_in_training_evaluation_and_generation(
    kind, heldout, entropy_model, tmp_path
):
    spec = dict(PATCHERS[kind])
    if spec["name"] == "entropy":
        spec.update(entropy_model=entropy_model, target_bytes_per_patch=0, threshold=0.0)
        t = trainer_for(heldout, tmp_path / "probe", spec)
        ids, H = EntropyCache(heldout, t.raw_model.patcher).sample()
        values = H if spec["mode"] == "global" else _diff(H[None], ids[None])[0]
        spec["threshold"] = gap_threshold(values.numpy())
    t = trainer_for(heldout, tmp_path / "run", spec)
    patcher = t.raw_model.patcher
    want = generation_ends(patcher, heldout)
    assert any(e.any() for e in want) and not all(e.all() for e in want)

    mid_doc: list[int] = []
    n = 0
    for step in range(8):  # training windows: random starts, mostly inside documents
        ids, ends, _ = t._host_batch(step)
        starts = heldout.train_starts(step, BATCH, t.cfg.train.seed)
        n += check_rows(heldout, want, starts, ids, ends, mid_doc)

    seen = []  # evaluation windows: what the model is handed in `Trainer.evaluate`
    model, forward = t.raw_model, t.raw_model.forward

    def spy(ids, ends=None, **kw):
        seen.append((ids.cpu(), (model.patcher.ends(ids) if ends is None else ends).cpu()))
        return forward(ids, ends, **kw)

    model.forward = spy
    t.evaluate()
    ids = torch.cat([s[0] for s in seen])
    ends = torch.cat([s[1] for s in seen])
    assert len(ids) == heldout.n_eval_windows(SEQ_LEN)
    starts = np.arange(len(ids)) * (SEQ_LEN - 1)
    n += check_rows(heldout, want, starts, ids, ends, mid_doc)
    assert n > 4000 and len(mid_doc) > 50  # the check covered many windows inside documents
