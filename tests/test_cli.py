"""The `bytelm` command: bad input gets a one-line error, never a traceback."""

import pytest

from bytelm import config as C
from bytelm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, fragment):
    """Exit code 2, no traceback, and exactly one error line (a progress bar may come before)."""
    assert code == 2
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if x.startswith("bytelm: ")]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert fragment in lines[0] and err.strip().endswith(lines[0]), lines[0]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "tiny", "--data.sources", "/no/such/dir/*.txt"], "no files match"),
        (["train", "--preset", "tiny", "--data.sources", "/no/such/file.txt"], "does not exist"),
        (
            ["train", "--preset", "tiny", "--model.latnt.dim", "64"],
            "unknown config key 'model.latnt.dim'",
        ),
        (["train", "--preset", "tiny", "--train.steps", "0"], "train.steps must be >= 1"),
        (["train", "--preset", "tiny", "--model.out_heads.n", "0"], "heads.n must lie in 1..16"),
        (["train", "--preset", "tiny", "--train.lr", "fast"], "expects float"),
        (
            ["train", "--preset", "tiny", "--model.latent.dropout", "1"],
            "model.latent: dropout must lie in [0, 1)",
        ),
        (["train", "--preset", "tiny", "--model.ngram.dropout", "-0.1"], "model.ngram: dropout"),
        (["train", "--preset", "tiny", "--data.heldout_fraction", "1.5"], "heldout_fraction"),
        (["train", "--preset", "tiny", "--model.pooling", "median"], "model.pooling"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--preset", "tiny", "--model.patcher.name", "magic"], "unknown patcher 'magic'"),
        (["train", "--preset", "tiny", "--steps", "3"], "unknown option '--steps'"),
        (["eval", "/no/such/checkpoint"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, fragment)


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    code, _, err = run(
        capsys, "train", "--preset", "tiny", "--data.sources", str(tmp_path / "*.txt")
    )
    one_line_error(code, err, "empty")


def test_corrupt_checkpoint(capsys, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    (ck / "model.safetensors").write_bytes(b"\x00" * 16)
    code, _, err = run(capsys, "eval", str(ck))
    one_line_error(code, err, "corrupt model.safetensors")


@pytest.mark.parametrize("cmd", ["train", "eval", "demo"])
def test_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    if cmd != "eval":
        assert "--model.latent.dim" in out and "--train.steps" in out


def test_overrides_and_toml_round_trip(tmp_path):
    cfg = C.override(
        C.load_preset("tiny"),
        {
            "model.latent.dim": "64",
            "model.ngram.ns": "3,5",
            "data.sources": "a,b",
            "train.progress": "false",
        },
    )
    assert cfg.model.latent.dim == 64 and cfg.model.ngram.ns == (3, 5)
    assert cfg.data.sources == ("a", "b") and cfg.train.progress is False
    C.save_json(cfg, tmp_path / "c.json")
    assert C.load(tmp_path / "c.json") == cfg
    # a default lives in one place: an empty TOML gives the dataclass defaults
    (tmp_path / "empty.toml").write_text("")
    assert C.load(tmp_path / "empty.toml") == C.RunConfig()


def test_patch_needs_the_entropy_model_it_is_given(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/entropy/checkpoint here
    missing = str(tmp_path / "no" / "such" / "dir")
    for patcher in ([], ["--patcher", "entropy:4"], ["--patcher", "space"]):
        code, out, err = run(capsys, "patch", "hello world", "--entropy-model", missing, *patcher)
        one_line_error(code, err, f"no entropy model at '{missing}'")
        assert out == ""
    # only without --entropy-model: the default's absence falls back to space, and says so
    code, out, err = run(capsys, "patch", "hello world", "--no-color")
    assert code == 0 and "space: 12 bytes" in out
    notes = [x for x in err.splitlines() if "no entropy model" in x]
    assert len(notes) == 1 and "patching with space" in notes[0]


@pytest.mark.parametrize(
    "argv, options",
    [
        (["sweep"], ["plan", "run"]),
        (["sweep", "plan"], ["--budgets", "--sizes", "--rates", "--preset", "--ratio-range",
                             "--min-ratios", "--min-spread", "--out"]),
        (["sweep", "run"], ["--runs", "--preset", "--out-dir", "--data.sources"]),
        (["fit"], ["--compression", "--n-boot", "--seed", "--budgets", "--plots",
                   "--plot-prefix"]),
    ],
)  # fmt: skip
def test_sweep_and_fit_help(capsys, argv, options):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: bytelm {' '.join(argv)} ")
    for option in options:
        assert option in out, option


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["sweep", "plan", "--rates", "2"], "required: --budgets"),
        (["sweep", "plan", "--budgets", "1e12", "--sizes", "1e6", "--model.latent.dim", "8"],
         "unknown option '--model.latent.dim'"),
        (["fit", "runs.csv", "--n-boot", "many"], "invalid int value: 'many'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["compare", "--model.latent.dim", "8"], "takes only --data.* config options"),
        (["generate"], "required: checkpoint"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, fragment)


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "bytelm.cli", "sweep", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("usage: bytelm sweep"), r.stderr


def test_only_the_cli_parses_arguments():
    """Library modules never import `bytelm.cli`, and only `bytelm.cli` builds parsers."""
    import ast
    from pathlib import Path

    import bytelm

    root = Path(bytelm.__file__).parent
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert name != "argparse", f"{path} imports argparse"
                assert not name.startswith("bytelm.cli"), f"{path} imports {name}"


# ------------------------------------------------------------------ checkpoints and run dirs


def small_corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(6):
        (d / f"d{i}.txt").write_text(f"document {i}: " + "the cat sat on the mat. " * 20)
    return ["--data.sources", str(d), "--data.heldout_fraction", "0.3",
            "--data.cache_dir", str(tmp_path / "cache")]  # fmt: skip


def test_out_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    for out in ("afile", "afile/run"):
        code, _, err = run(capsys, "train", "--preset", "tiny", "--train.out_dir",
                           str(tmp_path / out))  # fmt: skip
        one_line_error(code, err, f"'{tmp_path / 'afile'}' is a file")


def test_checkpoint_whose_config_no_longer_matches_its_weights_is_one_line(capsys, tmp_path):
    import json

    from bytelm.checkpoint import save_checkpoint
    from bytelm.model import ByteLM

    cfg = C.load_preset("tiny")
    ck = save_checkpoint(tmp_path / "ck", ByteLM(cfg.model), cfg)
    d = json.loads((ck / "config.json").read_text())
    d["model"]["latent"]["dim"] = 64  # edited after the save
    (ck / "config.json").write_text(json.dumps(d))
    code, _, err = run(capsys, "eval", str(ck))
    one_line_error(code, err, f"checkpoint '{ck}' does not match its config.json")


def test_resume_without_a_complete_checkpoint_is_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')  # killed before a save
    argv = ["train", "--preset", "tiny", *small_corpus(tmp_path), "--train.out_dir", str(out)]
    code, _, err = run(capsys, *argv, "--resume")
    one_line_error(code, err, "holds a run but no complete checkpoint")
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n'  # untouched


def test_old_format_checkpoint_is_one_line_then_converts(capsys, tmp_path):
    import torch

    from bytelm.checkpoint import save_checkpoint
    from bytelm.model import ByteLM

    out = tmp_path / "run"
    cfg = C.override(C.load_preset("tiny"), {"train.out_dir": str(out)})
    ck = save_checkpoint(out / "checkpoint", ByteLM(cfg.model), cfg)
    torch.save({"step": 1, "history": [{"step": 1, "loss": 5.0}]}, ck / "trainer_state.pt")
    argv = ["train", "--preset", "tiny", *small_corpus(tmp_path), "--train.out_dir", str(out)]
    code, _, err = run(capsys, *argv, "--resume")
    one_line_error(code, err, f"convert it with `bytelm convert {ck}`")
    code, out_text, err = run(capsys, "convert", str(out))
    assert code == 0 and "unpickles" in err and "trust" in err
    assert "converted" in out_text and (ck / "trainer_state.json").is_file()
    assert not (ck / "trainer_state.pt").exists()
    code, _, err = run(capsys, "convert", str(out))
    one_line_error(code, err, "already in the new format")


def notes_checkpoint(tmp_path):
    """An untrained tiny ByteLM checkpoint whose corpus is one file, the last 10% held out."""
    from bytelm.checkpoint import save_checkpoint
    from bytelm.model import ByteLM

    (tmp_path / "notes.txt").write_text("the cat sat on the mat. " * 200)
    cfg = C.override(
        C.load_preset("tiny"),
        {"data.sources": str(tmp_path / "notes.txt"), "data.split": "tail",
         "data.heldout_fraction": "0.1", "data.cache_dir": str(tmp_path / "cache")},
    )  # fmt: skip
    return save_checkpoint(tmp_path / "ck", ByteLM(cfg.model), cfg)


def test_eval_says_how_the_heldout_split_was_made(capsys, tmp_path):
    ck = notes_checkpoint(tmp_path)
    code, out, _ = run(capsys, "eval", str(ck))
    assert code == 0 and "bits per byte" in out
    assert "held out by position: the last 10% of each document" in out


def test_eval_latent_prints_each_ablation(capsys, tmp_path):
    ck = notes_checkpoint(tmp_path)
    code, out, _ = run(capsys, "eval", str(ck), "--latent", "--max-bytes", "2000")
    assert code == 0 and "bits per byte" in out and "zeroed" in out and "another window" in out
    code, _, err = run(capsys, "eval", str(ck), "--latent", "--target-bytes-per-patch", "4")
    one_line_error(code, err, "drop --target-bytes-per-patch")
