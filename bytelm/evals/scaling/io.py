"""Run records and their CSV: the `ScalingError` every scaling function raises
for bad input, the runs CSV's `COLUMNS`, the `Runs` arrays, `load_runs` that
reads and validates a runs CSV, and `run_id`, the id a planned run is written
under. It is the bottom of the package and imports none of its siblings.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("N", "D", "bpp", "flops", "loss")


class ScalingError(ValueError):
    """A user error in scaling inputs; the message is one line starting with `bytelm: `."""

    def __init__(self, message: str):
        super().__init__("bytelm: " + " ".join(message.split()))


# --------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Runs:
    """A set of runs as parallel float64 arrays of shape (n,)."""

    N: np.ndarray
    D: np.ndarray
    bpp: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    run_id: tuple[str, ...] = ()

    @classmethod
    def from_arrays(cls, N, D, bpp, flops, loss, run_id=()) -> Runs:
        arrs = [np.asarray(a, dtype=np.float64).reshape(-1) for a in (N, D, bpp, flops, loss)]
        arrs = np.broadcast_arrays(*arrs)
        for name, a in zip(COLUMNS, arrs):
            if not np.all(np.isfinite(a)) or np.any(a <= 0):
                raise ScalingError(f"column '{name}' must be finite and > 0")
        if np.any(arrs[2] < 1):
            raise ScalingError("column 'bpp' must be >= 1 (a patch holds at least one byte)")
        return cls(*(np.array(a) for a in arrs), run_id=tuple(run_id))

    def __len__(self) -> int:
        return len(self.N)

    def take(self, idx) -> Runs:
        ids = tuple(self.run_id[i] for i in idx) if self.run_id else ()
        return Runs(*(getattr(self, c)[idx] for c in COLUMNS), run_id=ids)

    @property
    def rates(self) -> np.ndarray:
        return np.unique(self.bpp)


def load_runs(csv_path: str | Path, min_runs: int = 6) -> Runs:
    """Read a runs CSV with columns N, D, bpp, flops, loss (others are ignored).

    `min_runs` defaults to 6: the 5 parameters of the Chinchilla law, plus one.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ScalingError(f"no runs file at '{path}'")
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets add a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ScalingError(
                f"{path} lacks column(s) {', '.join(missing)}; a runs CSV needs {', '.join(COLUMNS)}"
            )
        reader.fieldnames = header
        cols = {c: [] for c in COLUMNS}
        ids = []
        for lineno, row in enumerate(reader, start=2):
            for c in COLUMNS:
                raw = (row.get(c) or "").strip()
                try:
                    v = float(raw)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v) or v <= 0 or (c == "bpp" and v < 1):
                    need = ">= 1" if c == "bpp" else "> 0"
                    raise ScalingError(
                        f"{path} line {lineno}: column '{c}' is {raw!r}, expected a number {need}"
                    )
                cols[c].append(v)
            ids.append((row.get("run_id") or f"row{lineno}").strip())
    if len(ids) < min_runs:
        raise ScalingError(
            f"{path} has {len(ids)} run(s); fitting needs at least {min_runs} "
            "(the law's free parameters plus one)"
        )
    return Runs.from_arrays(*(cols[c] for c in COLUMNS), run_id=ids)


def run_id(N: float, D: float, bpp: float) -> str:
    """A stable, readable id for a run of the grid."""
    return f"N{N:.6g}_D{D:.6g}_r{bpp:.6g}"
