"""Backend dispatch shared by the kernel ops: choice, logging, errors, lazy import."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from bytelm.kernels import dispatch
from bytelm.kernels.pooling import pool
from bytelm.kernels.pooling.reference import pool_reference


def test_auto_uses_reference_on_cpu_and_logs_once(caplog):
    dispatch._logged.clear()
    x = torch.randn(1, 4, 3)
    lengths = torch.tensor([[2, 2]])
    with caplog.at_level(logging.INFO, logger="bytelm"):
        out = pool(x, lengths, "sum")
        pool(x, lengths, "sum")
    torch.testing.assert_close(out, pool_reference(x, lengths, "sum"))
    logs = [r.getMessage() for r in caplog.records if "pool uses" in r.getMessage()]
    assert logs == ["bytelm: pool uses the reference backend (asked 'auto', device cpu)"]


def test_resolve_backend():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dispatch.resolve_backend("op", "auto", cpu) == "reference"
    assert dispatch.resolve_backend("op", "reference", cuda) == "reference"
    if dispatch.triton_available():
        assert dispatch.resolve_backend("op", "auto", cuda) == "triton"


def test_backend_errors(monkeypatch):
    x, lengths = torch.randn(1, 4, 3), torch.tensor([[4]])
    with pytest.raises(ValueError, match="backend must be one of"):
        pool(x, lengths, "sum", backend="cuda")
    with pytest.raises(ValueError, match="mode must be one of"):
        pool(x, lengths, "median", backend="reference")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        pool(x, lengths, "sum", backend="triton")


def test_triton_is_imported_lazily():
    """Core installs have no triton: bytelm and "auto" on CPU must not import it."""
    code = (
        "import sys, torch\n"
        "from bytelm.kernels.pooling import pool, unpool\n"
        "from bytelm.kernels.verify import verify\n"
        "pool(torch.randn(1, 4, 3), torch.tensor([[4]]))\n"
        "unpool(torch.randn(1, 1, 3), torch.zeros(1, 4, dtype=torch.long))\n"
        "verify(torch.zeros(1, 2, dtype=torch.long), None, torch.randn(1, 3, 259), 0.0)\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
