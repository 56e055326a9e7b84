"""FSDP through accelerate, on CPU: two processes over gloo train a tiny ByteLM with the
Trainer, save, evaluate and resume (tests/fsdp_worker.py has the details and says how FSDP
is switched on: accelerate enables it only for accelerator devices).

The checkpoint holds the full weights, not a shard, and they load into a plain model
identical to the sharded model's gathered weights; the Trainer's held-out bpb (the wrapped
model's forward) equals the plain model's; resume restores the weights and the optimizer.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_two_processes_save_full_weights_and_resume(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"d{i}.txt").write_text(f"document {i}: " + "the cat sat on the mat. " * 40)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.fsdp_worker", str(r), "2", str(port), str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    logs = [p.communicate(timeout=170)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    r = json.loads((tmp_path / "rank0.json").read_text())
    assert r["sharded"] and r["local_numel"] < r["full_numel"], r  # really sharded
    assert r["same_weights"], "the checkpoint is not the sharded model's full weights"
    assert r["resumed"] and r["same_after_resume"], r
    assert r["optimizer_steps"] == [3], r  # the optimizer state came back too
    assert abs(r["bpb_trainer"] - r["bpb_plain"]) < 1e-4, r
