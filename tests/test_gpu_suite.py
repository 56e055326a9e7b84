"""The GPU suite's dry run on CPU, so that the one-shot device command does not rot.

The suite itself runs in this process; its training and decoding parts run as
child processes, as on the GPU. pytest -m gpu is skipped (no pytest in pytest).
"""

import csv
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_suite


def status_lines(md: str) -> dict[str, str]:
    """part -> status, from gpu_suite.md's table."""
    out = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in gpu_suite.PARTS:
            out[cells[0]] = cells[1]
    return out


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dry_run_reports_every_part(tmp_path):
    rc = gpu_suite.main(["--dry-run", "--out", str(tmp_path), "--skip", "pytest", "--minutes", "3"])
    assert rc == 0, "the dry run must succeed on CPU"
    status = status_lines((tmp_path / "gpu_suite.md").read_text())
    assert set(status) == set(gpu_suite.PARTS), f"a part has no status line: {status}"
    assert status["pytest"] == "skipped: --skip"
    if not torch.cuda.is_available():
        for part in gpu_suite.CUDA_ONLY:
            assert status[part] == "skipped: needs CUDA", (part, status[part])
    assert status["train"] == "ok" and status["decode"] == "ok", status

    train = read_csv(tmp_path / "gpu_train.csv")
    assert {r["model"] for r in train} >= {"ByteTransformer", "ByteLM fixed:8", "ByteLM fixed:4"}
    for r in train:
        for key in ("ms/step", "bytes/s", "GFLOP/byte", "TFLOP/s"):
            assert float(r[key]) > 0, (r["model"], key, r[key])
    # fixed:k patches every k bytes exactly on windows without EOS
    assert {float(r["bytes/patch"]) for r in train if r["model"] == "ByteLM fixed:4"} == {4.0}

    decode = read_csv(tmp_path / "gpu_decode.csv")
    assert {(r["batch"], r["mode"]) for r in decode} == {
        (b, m) for b in ("1", "16") for m in ("plain", "speculative", "speculative, cross")
    }
    for r in decode:
        assert float(r["bytes/s"]) > 0 and float(r["decode bytes/s"]) > 0, r
        assert float(r["bytes/forward"]) >= 1, r
    for part in ("train", "decode"):
        assert "Machine: " in (tmp_path / f"gpu_{part}.md").read_text()


def test_a_part_over_budget_is_killed():
    t0 = time.monotonic()
    rc, _, _ = gpu_suite.spawn("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], 1.0)
    assert rc is None, "a part past its budget must be killed"
    assert time.monotonic() - t0 < 20


def test_failure_line_is_the_exception():
    cmd = [sys.executable, "-c", "print('working'); raise ValueError('bad shape')"]
    rc, lines, _ = gpu_suite.spawn("boom", cmd, 60.0)
    assert rc == 1
    assert gpu_suite.last_error(lines) == "ValueError: bad shape"


def test_peaks_by_device_name():
    assert gpu_suite.device_peaks("NVIDIA H100 80GB HBM3") == (989e12, 3350.0)
    assert gpu_suite.device_peaks("NVIDIA H200") == (989e12, 4800.0)
    assert gpu_suite.device_peaks("NVIDIA A100-SXM4-80GB") == (None, None)


def test_full_run_refuses_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--minutes", "1"],
        cwd=gpu_suite.ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--dry-run" in out.stdout
