"""The entropy rule and its calibration: from H_t to patch ends, and from a target
bytes-per-patch to the threshold θ.

Byte t ends its patch when H_t > θ (global), H_t - H_{t-1} > θ (monotonic), or
both H_t > θ and H_t - H_{t-1} > delta (both); also at `max_patch_len` and after
EOS. At a document's BOS H_{t-1} is taken to be H_t; a row that starts inside a document
takes the document's H_{t-1} (`prev_H`, from `RowStart`), and a row without one is taken
to start a document (H_{t-1} := H_t at its first byte too).

Where θ is calibrated. On the *training* split, never on the held-out one that bpb and
bytes per patch are reported on: a θ fitted on the evaluation sample meets its target
there by construction, so "within 2% on held-out" would say nothing. The calibration
sample is sample 0 of `ByteCorpus.sample_starts`: `CALIBRATION_WINDOW`-position windows
dealt from a fixed permutation of the whole split (not its first documents, which are
rarely typical of a corpus), `CALIBRATION_BYTES` positions in all. Why the training split
rather than a part carved out of the held-out one: the held-out split stays whole for
evaluation (and identical to before), the two splits share no document (hash split, exact
duplicates dropped), and θ is then fitted like any other parameter, on training data.
The cost is a possible bias where the entropy model (or the learned router's ByteLM) was
trained on the same documents and is less surprised by them; the promise is checked on
samples the calibration never saw (sample 1 of the training split, and the held-out split)
in the tests and in `benchmarks/calibration.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bytelm.patchers.base import ends_from_fire
from bytelm.vocab import BOS, EOS

CALIBRATION_TOL = 0.02  # the promise: the mean on unseen data within 2% of the target
# positions per calibration window: short windows from many documents make a sample whose
# mean varies little from one sample to the next (see the module docstring)
CALIBRATION_WINDOW = 256


class CalibrationError(ValueError):
    """A target bytes-per-patch that the patcher cannot reach on the given data."""


@dataclass
class Calibration:
    threshold: float
    measured_bytes_per_patch: float  # on the calibration sample, with the real patcher
    target_bytes_per_patch: float
    method: str  # "quantile" (exact) or "bisection"
    n_positions: int  # stream positions (bytes + BOS/EOS) it was measured on


# ----------------------------------------------------------------------------- the rule


def _diff(H: torch.Tensor, ids: torch.Tensor, prev_H: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) -> H_t - H_{t-1}, with 0 at BOS (a new document has no H_{t-1}); at a row's first
    byte H_{t-1} is `prev_H` (B,) (the document's, for a row that starts inside it), or H_t
    itself without it (a difference of 0)."""
    first = H[:, :1] if prev_H is None else prev_H.to(H)[:, None]
    prev = torch.cat([first, H[:, :-1]], dim=1)
    return H - torch.where(ids == BOS, H, prev)


def fire_rule(
    H: torch.Tensor,
    ids: torch.Tensor,
    mode: str,
    threshold: float,
    delta: float = 0.0,
    prev_H: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) entropies and ids -> (B, T) bool: the entropy rule fires at t (no max_len, no EOS).
    `prev_H` (B,): H_{t-1} of each row's first byte (see `_diff`)."""
    diff = _diff(H, ids, prev_H)
    if mode == "global":
        return H > threshold
    if mode == "monotonic":
        return diff > threshold
    return (H > threshold) & (diff > delta)


# ----------------------------------------------------------------------------- calibration


def mean_bytes_per_patch(
    ids: torch.Tensor, H: torch.Tensor, mode: str, threshold: float, max_patch_len: int, delta=0.0
) -> float:
    """Mean patch length of the real patcher on a packed stream (1-D ids and entropies)."""
    ends = ends_from_fire(
        fire_rule(H[None], ids[None], mode, threshold, delta), ids[None], max_patch_len
    )
    n_patches = int(ends.sum()) + int(not bool(ends[0, -1]))  # a trailing open patch counts
    return ids.numel() / n_patches


def calibrate_threshold(
    ids: torch.Tensor,
    H: torch.Tensor,
    target: float,
    mode: str,
    max_patch_len: int,
    delta: float = 0.0,
    tol: float = CALIBRATION_TOL,
) -> Calibration:
    """The threshold whose real mean bytes-per-patch on (ids, H) is closest to `target`.

    Global mode: the exact quantile of H (k = #positions/target - #EOS positions must
    exceed it); kept when max_patch_len does not move the mean by more than tol/4.
    Otherwise (monotonic, both, or max_patch_len cutting many patches) a bisection over
    the sorted distinct candidate values with the real patcher, which is exact too:
    the patch count only falls as the threshold rises.
    Raises `CalibrationError` for a target below 1 or beyond what the mode and
    max_patch_len can reach on this data.
    """
    ids, H = ids.flatten().cpu(), H.flatten().float().cpu()
    N = ids.numel()
    if target < 1:
        raise CalibrationError(f"bytelm: target bytes per patch must be >= 1, got {target}")
    # the reachable range: threshold -> +inf (fewest patches) and -inf (most)
    hi = mean_bytes_per_patch(ids, H, mode, math.inf, max_patch_len, delta)
    lo = mean_bytes_per_patch(ids, H, mode, -math.inf, max_patch_len, delta)
    if target > hi * (1 + tol):
        why = f"max_patch_len={max_patch_len} and one patch per EOS"
        raise CalibrationError(
            f"bytelm: target {target:g} bytes per patch is above what {why} allow on this data "
            f"(at most {hi:.2f}); raise patcher.max_patch_len or lower the target"
        )
    if target < lo * (1 - tol):
        raise CalibrationError(
            f"bytelm: target {target:g} bytes per patch is below what mode {mode!r} can reach on "
            f"this data (at least {lo:.2f}); use mode 'global' or lower patcher.delta"
        )
    measure = lambda th: mean_bytes_per_patch(ids, H, mode, th, max_patch_len, delta)

    if mode == "global":
        not_eos = H[ids != EOS]
        k = int(round(N / target)) - int((ids == EOS).sum())  # how many rule fires we need
        theta = _quantile_threshold(not_eos, k)
        got = measure(theta)
        if abs(got / target - 1) <= tol / 4:
            return Calibration(theta, got, target, "quantile", N)

    values = _diff(H[None], ids[None])[0] if mode == "monotonic" else H
    cands = _candidates(
        values
    )  # ascending thresholds between distinct values, -inf first, +inf last
    # the mean is non-decreasing in the threshold: find the first candidate reaching the target
    a, b = 0, len(cands) - 1
    while a < b:
        m = (a + b) // 2
        if measure(cands[m]) >= target:
            b = m
        else:
            a = m + 1
    best = min({a, max(a - 1, 0)}, key=lambda i: abs(measure(cands[i]) - target))
    theta, got = cands[best], measure(cands[best])
    if abs(got / target - 1) > tol:
        why = "calibrate on more data"
        if len(cands) < 64:
            why = f"its entropies take only {len(cands) - 2} distinct values: is the entropy model trained?"
        raise CalibrationError(
            f"bytelm: cannot calibrate to {target:g} bytes per patch within {tol:.0%} on "
            f"{N:,} positions (closest: {got:.3f}); {why}"
        )
    return Calibration(theta, got, target, "bisection", N)


def _candidates(values: torch.Tensor) -> list[float]:
    """-inf, the midpoints between consecutive distinct values, +inf (as Python floats)."""
    u = np.unique(values.numpy().astype(np.float64))
    mids = ((u[:-1] + u[1:]) / 2).tolist()
    return [-math.inf, *mids, math.inf]


def _quantile_threshold(values: torch.Tensor, k: int) -> float:
    """A threshold that k of `values` exceed, as nearly as ties allow (between distinct values)."""
    u = np.unique(values.numpy().astype(np.float64))  # ascending
    if k <= 0 or len(u) == 0:
        return math.inf
    above = len(values) - np.searchsorted(np.sort(values.numpy().astype(np.float64)), u, "right")
    # above[i] = how many values exceed u[i]; thresholds between u[i] and u[i+1] give above[i]
    i = int(np.argmin(np.abs(above - k)))
    return float((u[i] + u[i + 1]) / 2) if i + 1 < len(u) else math.inf
