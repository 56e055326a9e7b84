"""Evaluations: bits-per-byte, compression, FLOPs, scaling laws, speed.

Names are imported lazily, so `import bytelm.evals` stays cheap and pulls in
neither scipy nor matplotlib until a scaling function is used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    name: "bytelm.evals.scaling"
    for name in (
        "DEFAULT_PRIOR",
        "DesignCondition",
        "DesignReport",
        "IsoFLOPResult",
        "LawParams",
        "Plan",
        "Runs",
        "ScalingError",
        "ScalingFit",
        "bytes_for_budget",
        "design_condition",
        "diagnose",
        "fit",
        "isoflop",
        "load_runs",
        "plan",
        "write_plots",
    )
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bytelm.evals' has no attribute {name!r}")
