"""The built wheel is self-contained: presets ship inside it and `bytelm train --preset tiny`
works from a directory outside the repository, against the installed package only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_trains_the_tiny_preset_outside_the_repository(tmp_path):
    src = tmp_path / "src"  # build from a copy, so the repository gets no build/ or egg-info
    src.mkdir()
    shutil.copytree(REPO / "bytelm", src / "bytelm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    run = lambda *a, **kw: subprocess.run(a, check=True, capture_output=True, text=True, **kw)
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src))
    (wheel,) = (tmp_path / "dist").glob("bytelm-*.whl")

    # a fresh environment: the wheel, plus this environment's third-party packages on a .pth
    # line (a path added by a .pth line is not scanned for .pth files, so the editable
    # install of the repository stays out of sight)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    py = venv / "bin" / "python"
    site = run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel))

    outside = tmp_path / "elsewhere"
    (outside / "notes").mkdir(parents=True)
    for i in range(4):
        (outside / "notes" / f"n{i}.txt").write_text(f"note {i}: the cat sat on the mat. " * 40)
    where = run(str(py), "-c", "import bytelm; print(bytelm.__file__)", cwd=outside)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # not the repository
    train = run(
        str(venv / "bin" / "bytelm"), "train", "--preset", "tiny",
        "--data.sources", "notes", "--data.split", "tail", "--data.cache_dir", "cache",
        "--train.steps", "2", "--train.eval_every", "2", "--train.out_dir", "run",
        cwd=outside,
    )  # fmt: skip
    assert (outside / "run" / "checkpoint" / "model.safetensors").is_file(), train.stdout
