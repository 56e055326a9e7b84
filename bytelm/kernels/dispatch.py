"""Backend choice shared by every kernel op: "auto" | "triton" | "reference".

"auto" means Triton when the input lives on CUDA and the `triton` package is
installed, and the PyTorch reference otherwise. The choice is logged once per
(op, backend) on the "bytelm" logger. "triton" on a CPU tensor runs the Triton
interpreter, which only works when TRITON_INTERPRET=1 was set before triton was
imported (the tests do this). Triton itself is never imported here: core
installs do not have it, and each op imports its `triton.py` only on use.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from functools import cache

import torch

BACKENDS = ("auto", "triton", "reference")

logger = logging.getLogger("bytelm")
_logged: set[tuple[str, str]] = set()


@cache
def triton_available() -> bool:
    """Is the `triton` package importable? Checked without importing it."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compiling() -> bool:
    """Inside a torch.compile trace? Without importing dynamo (and triton) when it is not
    loaded: nothing can be compiling then."""
    return "torch._dynamo" in sys.modules and torch.compiler.is_compiling()


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """Turn a user's `backend` into "triton" or "reference", or raise a one-line error."""
    if backend not in BACKENDS:
        raise ValueError(f"bytelm: {op} backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        choice = "triton" if device.type == "cuda" and triton_available() else "reference"
    else:
        choice = backend
    if choice == "triton":
        if not triton_available():
            raise RuntimeError(
                f"bytelm: {op} backend='triton' needs the triton package; "
                "install bytelm[gpu] or use backend='reference'"
            )
        if device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(
                f"bytelm: {op} backend='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 "
                "set before triton is imported; use backend='reference' on CPU"
            )
    if not compiling() and (op, choice) not in _logged:  # a log call would break the graph
        _logged.add((op, choice))
        logger.info(
            "bytelm: %s uses the %s backend (asked %r, device %s)", op, choice, backend, device
        )
    return choice
