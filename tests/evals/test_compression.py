"""`bytelm compare`, `bytelm patch` and `bytelm eval --target-bytes-per-patch` on small corpora;
the table's numbers must agree with direct calls to the patchers."""

import csv
import random
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bytelm.checkpoint import load_entropy_model
from bytelm.cli import main
from bytelm.data import DataConfig, load_corpus
from bytelm.patchers import FixedPatcher, SpacePatcher
from bytelm.patchers.entropy import EntropyPatcher
from tests.patchers.tiny_entropy import save_tiny_entropy_model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    code, prose = root / "code", root / "prose"
    code.mkdir()
    prose.mkdir()
    lib = Path(sysconfig.get_paths()["stdlib"])
    for f in ("bisect.py", "colorsys.py", "keyword.py", "this.py", "textwrap.py", "shlex.py"):
        shutil.copy(lib / f, code / f)
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away and birds sang".split()
    for i in range(8):
        text = ". ".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(60))
        (prose / f"p{i}.txt").write_text(text)
    return {"root": root, "code": code, "prose": prose, "cache": root / "cache"}


@pytest.fixture(scope="module")
def entropy_model(tmp_path_factory):
    return save_tiny_entropy_model(tmp_path_factory.mktemp("ent") / "ckpt", context=48)


def _doc_means(split, patcher):
    """Mean bytes/patch over the held-out docs, one direct `patch` call per document."""
    n = p = 0
    for d in range(split.n_docs):
        a, b = int(split.doc_starts[d]), int(split.doc_starts[d + 1])
        lengths = patcher.patch(torch.from_numpy(split.window(a, b - a))[None])[0]
        n, p = n + b - a, p + int((lengths > 0).sum())
    return n / p


def test_compare_table_agrees_with_direct_patcher_calls(dirs, entropy_model, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "compare",
            "--corpus", f"code={dirs['code']}",
            "--corpus", f"prose={dirs['prose']}",
            "--patchers", "fixed:4", "space", "entropy:3", "bpe:300",
            "--entropy-model", str(entropy_model),
            "--preset", "tiny",
            "--max-bytes", "0",
            "--out", str(out),
            "--data.split", "tail",
            "--data.heldout_fraction", "0.3",
            "--data.cache_dir", str(dirs["cache"]),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| corpus | patcher |" in printed
    for f in ("compare.md", "compare.csv", "compare.png"):
        assert (out / f).stat().st_size > 0
    rows = {(r["corpus"], r["patcher"]): r for r in csv.DictReader(open(out / "compare.csv"))}
    assert len(rows) == 8
    model, context = load_entropy_model(entropy_model)
    for name in ("code", "prose"):
        cfg = DataConfig(
            sources=(str(dirs[name]),),
            split="tail",
            heldout_fraction=0.3,
            cache_dir=str(dirs["cache"]),
        )
        held = load_corpus(cfg, progress=False)["heldout"]
        n_pos = int(held.stream_len)
        assert int(rows[name, "fixed:4"]["positions"]) == n_pos
        for spec, patcher in [("fixed:4", FixedPatcher(4)), ("space", SpacePatcher(16))]:
            assert float(rows[name, spec]["mean"]) == pytest.approx(_doc_means(held, patcher))
        theta = float(rows[name, "entropy:3"]["threshold"])
        ent = EntropyPatcher(model, context, "global", theta, 16)
        assert float(rows[name, "entropy:3"]["mean"]) == pytest.approx(3.0, rel=0.02)
        assert float(rows[name, "entropy:3"]["mean"]) == pytest.approx(
            _doc_means(held, ent), rel=1e-3
        )
        assert float(rows[name, "fixed:4"]["train_flops_per_byte"]) > 0
        # the entropy model costs FLOPs at inference, not in training (entropies are cached)
        e, f = rows[name, "entropy:3"], rows[name, "fixed:4"]
        assert float(e["infer_flops_per_byte"]) - float(e["train_flops_per_byte"]) / 3 > 0
    per_kib = float(rows["code", "space"]["patches_per_kib"])
    assert per_kib == pytest.approx(1024 / float(rows["code", "space"]["mean"]))


def test_compare_needs_an_entropy_model_and_good_specs(dirs, tmp_path, capsys):
    args = ["compare", "--corpus", str(dirs["prose"]), "--out", str(tmp_path)]
    args += ["--data.split", "tail", "--data.cache_dir", str(dirs["cache"])]
    missing = tmp_path / "nothing"
    assert main([*args, "--patchers", "entropy:4", "--entropy-model", str(missing)]) == 2
    assert "needs an entropy model" in capsys.readouterr().err
    assert main([*args, "--patchers", "fixed:zero"]) == 2
    assert "bad patcher spec" in capsys.readouterr().err


def test_patch_command_shows_patches_and_plots(entropy_model, tmp_path, capsys):
    text = "def foo(x):\n    return x + 1\n"
    assert main(["patch", text, "--patcher", "fixed:4", "--no-color"]) == 0
    shown = capsys.readouterr().out.splitlines()
    body = "\n".join(shown[: text.count("\n") + 1])
    assert body.startswith("⟨bos⟩def|")
    png = tmp_path / "h.png"
    args = ["patch", text, "--patcher", "entropy:3", "--entropy-model", str(entropy_model)]
    assert main([*args, "--threshold", "1.5", "--entropies", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "θ = 1.5000" in out and "H after each byte" in out
    assert png.stat().st_size > 1000


def test_eval_turns_the_knob_at_inference(dirs, entropy_model, tmp_path, capsys):
    from bytelm import config as C
    from bytelm.train import Trainer

    cfg = C.override(
        C.load_preset("tiny"),
        {
            "data.sources": str(dirs["prose"]),
            "data.split": "tail",
            "data.heldout_fraction": "0.3",
            "data.cache_dir": str(dirs["cache"]),
            "model.patcher.name": "entropy",
            "model.patcher.target_bytes_per_patch": "3",
            "model.patcher.entropy_model": str(entropy_model),
            "train.steps": "1",
            "train.eval_bytes": "256",
            "train.out_dir": str(tmp_path / "run"),
        },
    )
    Trainer(cfg).fit()
    ckpt = str(tmp_path / "run" / "checkpoint")
    capsys.readouterr()
    assert main(["eval", ckpt, "--target-bytes-per-patch", "5", "--max-bytes", "2048"]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "trained at 3" in out
    calibrated = float(out.split("bytes/patch calibrated")[0].split("(")[-1])
    assert calibrated == pytest.approx(5, rel=0.02)
    assert np.isfinite(float(out.split(": ")[1].split()[0]))
