"""Design checks and planning: `design_condition` measures how well a set of
(N, D, r) identifies the law (condition numbers of the normalised Gauss-Newton
matrix), `diagnose` warns when a set of runs cannot separate A/N^alpha from
B/D^beta, and `plan` lays out an IsoFLOP grid whose bytes-per-param ratios do,
next to a fixed-ratio baseline (`Plan`, `PlanRow`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .io import Runs, ScalingError, run_id
from .law import (
    CHINCHILLA_PATCHES_PER_PARAM,
    DEFAULT_PRIOR,
    LATENT_FLOPS_PER_PARAM_PATCH,
    Flops,
    LawParams,
    _flops_fn,
    _Frame,
    _log_pred_and_jac,
    _to_theta,
    bytes_for_budget,
    size_for_ratio,
)

# ------------------------------------------------------------ design checks


class DesignCondition(NamedTuple):
    """Condition numbers of the column-normalised Gauss-Newton matrix J^T J."""

    full: float  # all parameters of the law
    ab: float  # the A/B amplitude block alone


def _cond(J: np.ndarray) -> float:
    if J.shape[0] < J.shape[1]:
        return math.inf
    norms = np.linalg.norm(J, axis=0)
    if np.any(norms == 0):
        return math.inf
    s = np.linalg.svd(J / norms, compute_uv=False)
    return math.inf if s[-1] <= s[0] * 1e-15 else float((s[0] / s[-1]) ** 2)


def design_condition(N, D, params: LawParams = DEFAULT_PRIOR, r=None) -> DesignCondition:
    """How well runs at (N, D[, r]) identify the law near `params`.

    J is the Jacobian of predicted log-loss wrt (log E, log A, alpha, log B,
    beta[, log C, gamma, delta]) with log N, log D, log r centred on the design,
    each column scaled to unit norm, so the numbers do not depend on units. The
    compression columns are included when params.C > 0 and r holds 2+ rates.
    With one fixed ratio D = rho N, `ab` grows like 1 / (alpha - beta)^2.
    """
    N = np.asarray(N, dtype=float).reshape(-1)
    D = np.asarray(D, dtype=float).reshape(-1)
    r = np.ones_like(N) if r is None else np.broadcast_to(np.asarray(r, dtype=float), N.shape)
    comp = params.C > 0 and len(np.unique(r)) > 1
    fr = _Frame.of(N, D, r)
    _, J = _log_pred_and_jac(_to_theta(params, fr, comp), fr.X(N, D, r))
    return DesignCondition(full=_cond(J), ab=_cond(J[:, [1, 3]]))


@dataclass(frozen=True)
class DesignReport:
    condition: DesignCondition
    log_ratio_spread: float  # max - min of log(D / N) over the runs
    needed_log_spread: float  # the spread of log(D/N) per size that would pass
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"condition number (J^T J, normalised): full {self.condition.full:.3g}, "
            f"A/B block {self.condition.ab:.3g}",
            f"spread of log(D/N): {self.log_ratio_spread:.2f} "
            f"(D/N spans {math.exp(self.log_ratio_spread):.3g}x)",
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def diagnose(
    runs: Runs,
    prior: LawParams = DEFAULT_PRIOR,
    max_condition: float = 1e4,
    min_spread: float = 4.0,
) -> DesignReport:
    """Warn when a design cannot separate A/N^alpha from B/D^beta.

    The needed spread is the smallest factor s such that running every
    (N, rate) of the design at 3 ratios spanning s (around its current
    geometric-mean ratio) brings the full condition number under max_condition.
    """
    cond = design_condition(runs.N, runs.D, prior, runs.bpp)
    log_ratio = np.log(runs.D / runs.N)
    spread = float(log_ratio.max() - log_ratio.min())
    needed = math.inf
    keys = sorted(set(zip(runs.N.tolist(), runs.bpp.tolist())))
    for s in np.geomspace(min_spread, 1e4, 60):
        N, D, r = [], [], []
        for n, rate in keys:
            sel = (runs.N == n) & (runs.bpp == rate)
            rho = math.exp(float(log_ratio[sel].mean()))
            for f in (s**-0.5, 1.0, s**0.5):
                N.append(n), D.append(rho * f * n), r.append(rate)
        if design_condition(N, D, prior, r).full <= max_condition:
            needed = math.log(s)
            break
    warns = []
    if cond.full > max_condition and math.isfinite(needed):
        warns.append(
            f"the design is collinear (condition number {cond.full:.3g} > {max_condition:.3g}); "
            f"train each size at 3+ bytes-per-param ratios with log(D/N) spread >= "
            f"{needed:.2f} ({math.exp(needed):.3g}x)"
        )
    elif cond.full > max_condition:
        warns.append(
            f"the design is collinear (condition number {cond.full:.3g} > {max_condition:.3g}), "
            "and no spread of D/N fixes it: the terms in N (E, A/N^alpha, C r^gamma/N^delta) "
            "need more sizes per rate, sizes over a wider range, or more rates"
        )
    if spread < math.log(min_spread):
        warns.append(
            f"log(D/N) spans only {spread:.2f} (< log {min_spread:g} = "
            f"{math.log(min_spread):.2f}); A/N^alpha and B/D^beta cannot be told apart"
        )
    return DesignReport(cond, spread, needed, warns)


# --------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanRow:
    budget: float
    N: float
    D: float
    bpp: float
    flops: float

    @property
    def bytes_per_param(self) -> float:
        return self.D / self.N


@dataclass(frozen=True)
class Plan:
    rows: list[PlanRow]
    condition: DesignCondition
    fixed_rows: list[PlanRow]  # the fixed-ratio baseline with as many runs
    fixed_condition: DesignCondition
    fixed_bytes_per_patch_per_param: float
    warnings: list[str]

    def to_markdown(self) -> str:
        lines = ["| budget | N | D | bpp | bytes/param |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.budget:.3g} | {r.N:.3g} | {r.D:.3g} | {r.bpp:g} | {r.bytes_per_param:.3g} |"
            for r in self.rows
        ]
        lines += [
            "",
            f"{len(self.rows)} runs. Condition number (full / A-B block): "
            f"{self.condition.full:.3g} / {self.condition.ab:.3g}; fixed ratio "
            f"({self.fixed_bytes_per_patch_per_param:g} x bpp bytes per param, same budget range "
            f"and run count): {self.fixed_condition.full:.3g} / {self.fixed_condition.ab:.3g}",
        ]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])

    def write_csv(self, path: str | Path) -> None:
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run_id", "budget", "N", "D", "bpp", "flops"])
            for r in self.rows:
                vals = (r.budget, r.N, r.D, r.bpp, r.flops)
                w.writerow([run_id(r.N, r.D, r.bpp), *(repr(float(v)) for v in vals)])


def plan(
    budgets: Sequence[float],
    model_sizes: Sequence[float],
    ratio_range: tuple[float, float] | None = None,
    compression_rates: Sequence[float] = (1.0,),
    min_ratios_per_N: int = 3,
    min_spread: float = 4.0,
    prior: LawParams = DEFAULT_PRIOR,
    flops: Flops = LATENT_FLOPS_PER_PARAM_PATCH,
    fixed_ratio: float = CHINCHILLA_PATCHES_PER_PARAM,
    max_condition: float = 1e4,
) -> Plan:
    """An IsoFLOP grid whose bytes-per-param ratios identify the law.

    Every (budget, size, rate) spends exactly its budget: D is the bytes the
    budget buys (`bytes_for_budget`). Runs whose bytes per param fall outside
    `ratio_range` (default: 2 to 500 patches per param, i.e. 2r to 500r bytes)
    are dropped, and so is every (size, rate) left with fewer than
    `min_ratios_per_N` ratios or a spread under `min_spread`x. The baseline has
    as many runs at each rate, log-spaced over the same budgets, all at
    `fixed_ratio` x r bytes per param.
    """
    budgets = sorted(float(b) for b in budgets)
    sizes = sorted(float(n) for n in model_sizes)
    rates = sorted(float(r) for r in compression_rates)
    if not budgets or not sizes or not rates:
        raise ScalingError("plan needs at least one budget, one model size and one rate")
    if min(budgets) <= 0 or min(sizes) <= 0 or min(rates) < 1:
        raise ScalingError("budgets and model sizes must be > 0, and rates >= 1")
    rows, fixed, warns = [], [], []
    for r in rates:
        lo, hi = ratio_range if ratio_range is not None else (2.0 * r, 500.0 * r)
        cand = []
        for C in budgets:
            for N in sizes:
                D = float(bytes_for_budget(C, N, r, flops))
                if lo <= D / N <= hi:
                    cand.append(PlanRow(C, N, D, r, float(_flops_fn(flops)(N, D, r))))
        kept = []
        for N in sizes:
            mine = [row for row in cand if row.N == N]
            ratios = [row.bytes_per_param for row in mine]
            if len(mine) < min_ratios_per_N or max(ratios) / min(ratios) < min_spread * (1 - 1e-9):
                if mine:
                    warns.append(
                        f"size {N:.3g} at bpp {r:g} dropped: {len(mine)} ratio(s) in range, "
                        f"need {min_ratios_per_N} spanning {min_spread:g}x; add budgets"
                    )
                continue
            kept += mine
        for C in budgets:
            n = sum(row.budget == C for row in kept)
            if 0 < n < 3:
                warns.append(f"budget {C:.3g} at bpp {r:g} has {n} size(s); isoflop needs 3")
        rows += kept
        rho = fixed_ratio * r
        for C in np.geomspace(budgets[0], budgets[-1], max(len(kept), 1)):
            N = size_for_ratio(float(C), rho, r, flops)
            fixed.append(PlanRow(float(C), N, rho * N, r, float(C)))
    if not rows:
        raise ScalingError(
            f"no model size gets {min_ratios_per_N} bytes-per-param ratios spanning "
            f"{min_spread:g}x under these budgets; add budgets over a wider range"
        )
    rows.sort(
        key=lambda row: (row.budget, row.bpp, row.N)
    )  # cheapest first: a cut sweep has whole budgets

    def cond(rs):
        return design_condition([x.N for x in rs], [x.D for x in rs], prior, [x.bpp for x in rs])

    planned = cond(rows)
    if planned.full > max_condition:
        warns.append(
            f"condition number {planned.full:.3g} > {max_condition:.3g} under the prior; "
            "add budgets over a wider range, or more rates to identify the compression term"
        )
    return Plan(rows, planned, fixed, cond(fixed), fixed_ratio, warns)
