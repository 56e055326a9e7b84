"""IsoFLOP analysis (Chinchilla approach 2): runs are grouped by budget and
rate, each group gets a parabola in log N whose vertex is N*, and `isoflop`
fits power laws N*, D* ~ C^a per rate and finds the best rate per budget.
Holds `PowerLaw`, `IsoGroup`, `IsoFLOPResult` and `isoflop`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .io import Runs
from .law import LATENT_FLOPS_PER_PARAM_PATCH, Flops, bytes_for_budget

# ---------------------------------------------------------------- IsoFLOP


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * C^exponent, fitted by least squares in log-log."""

    exponent: float
    coef: float

    def __call__(self, C):
        return self.coef * np.asarray(C, dtype=float) ** self.exponent

    @classmethod
    def fit(cls, C, y) -> PowerLaw:
        slope, icpt = np.polyfit(np.log(C), np.log(y), 1)
        return cls(float(slope), float(math.exp(icpt)))


@dataclass(frozen=True)
class IsoGroup:
    """Runs at one compute budget and one rate, with a parabola in log N."""

    C: float
    r: float
    N: np.ndarray
    loss: np.ndarray
    coef: np.ndarray  # loss ~ coef[0] u^2 + coef[1] u + coef[2], u = log N
    N_opt: float
    D_opt: float
    L_opt: float
    bracketed: bool  # the minimum lies inside the sizes run


@dataclass(frozen=True)
class IsoFLOPResult:
    groups: list[IsoGroup]
    skipped: list[str]
    n_opt: dict[float, PowerLaw]  # per rate: N* ~ C^a
    d_opt: dict[float, PowerLaw]  # per rate: D* ~ C^b
    budgets: np.ndarray  # budgets with at least one group, ascending
    r_opt: np.ndarray  # best rate at each budget
    r_law: PowerLaw | None  # r* ~ C^c, None with fewer than 2 budgets or 1 rate

    def summary(self) -> str:
        lines = [
            "| bpp | budgets | minimum inside the sizes | N* ~ C^a | D* ~ C^b |",
            "|---|---|---|---|---|",
        ]
        for r, law in self.n_opt.items():
            gs = [g for g in self.groups if g.r == r]
            inside = sum(g.bracketed for g in gs)
            lines.append(
                f"| {r:g} | {len(gs)} | {inside} of {len(gs)} | a = {law.exponent:.3f} | "
                f"b = {self.d_opt[r].exponent:.3f} |"
            )
        if any(not g.bracketed for g in self.groups):
            lines.append(
                "\nwarning: a parabola whose minimum lies outside its sizes extrapolates N*; "
                "add sizes beyond the best one at those budgets"
            )
        if self.r_law is not None:
            lines += ["", "| C | r* |", "|---|---|"]
            lines += [f"| {c:.3g} | {r:.3g} |" for c, r in zip(self.budgets, self.r_opt)]
            lines += ["", f"r* ~ C^{self.r_law.exponent:.3f}"]
        return "\n".join(lines)


def _cluster_budgets(flops: np.ndarray, rel_tol: float) -> np.ndarray:
    """Label runs whose FLOPs match within rel_tol of their cluster's smallest."""
    order = np.argsort(flops)
    labels = np.empty(len(flops), dtype=int)
    k, start = -1, -math.inf
    for i in order:
        if flops[i] > start * (1 + rel_tol):
            k, start = k + 1, flops[i]
        labels[i] = k
    return labels


def isoflop(
    runs: Runs, rel_tol: float = 0.1, flops: Flops = LATENT_FLOPS_PER_PARAM_PATCH
) -> IsoFLOPResult:
    """Chinchilla approach 2 per rate, plus the best rate per budget.

    Runs are grouped by budget (FLOPs within rel_tol) and rate. Each group with
    3+ sizes gets a parabola in log N; its vertex gives N*, and D* is the bytes
    that budget buys at N*. Groups with fewer sizes, or no minimum, are skipped
    with a warning. r* at a budget is the rate whose parabola minimum is lowest,
    refined by a parabola in log r when 3+ rates have a convex, bracketed one.
    """
    labels = _cluster_budgets(runs.flops, rel_tol)
    groups, skipped = [], []
    for k in np.unique(labels):
        # one budget per cluster, shared by its rates, so that r* compares like with like
        C = float(np.exp(np.mean(np.log(runs.flops[labels == k]))))
        for r in np.unique(runs.bpp[labels == k]):
            sel = (labels == k) & (runs.bpp == r)
            N, L = runs.N[sel], runs.loss[sel]
            if len(np.unique(N)) < 3:
                skipped.append(f"budget {C:.3g}, bpp {r:g}: {len(np.unique(N))} size(s), need 3")
                continue
            u = np.log(N)
            coef = np.polyfit(u, L, 2)
            if coef[0] <= 0:
                skipped.append(f"budget {C:.3g}, bpp {r:g}: loss vs log N has no minimum")
                continue
            u_opt = -coef[1] / (2 * coef[0])
            N_opt = math.exp(u_opt)
            D_opt = float(bytes_for_budget(C, N_opt, r, flops))
            bracketed = bool(u.min() <= u_opt <= u.max())
            L_opt = float(np.polyval(coef, u_opt))
            groups.append(IsoGroup(C, float(r), N, L, coef, N_opt, D_opt, L_opt, bracketed))
    for s in skipped:
        warnings.warn(f"bytelm: isoflop skips {s}", stacklevel=2)

    n_opt, d_opt = {}, {}
    for r in sorted({g.r for g in groups}):
        gs = [g for g in groups if g.r == r]
        if len(gs) >= 2:
            n_opt[r] = PowerLaw.fit([g.C for g in gs], [g.N_opt for g in gs])
            d_opt[r] = PowerLaw.fit([g.C for g in gs], [g.D_opt for g in gs])

    budgets, r_opt = [], []
    for C in sorted({g.C for g in groups}):
        gs = sorted((g for g in groups if g.C == C), key=lambda g: g.r)
        best = min(gs, key=lambda g: g.L_opt)
        r_star = best.r
        if len(gs) >= 3:
            v = np.log([g.r for g in gs])
            c2 = np.polyfit(v, [g.L_opt for g in gs], 2)
            if c2[0] > 0 and v.min() <= -c2[1] / (2 * c2[0]) <= v.max():
                r_star = math.exp(-c2[1] / (2 * c2[0]))
        budgets.append(C)
        r_opt.append(r_star)
    rates = {g.r for g in groups}
    r_law = PowerLaw.fit(budgets, r_opt) if len(budgets) >= 2 and len(rates) > 1 else None
    return IsoFLOPResult(groups, skipped, n_opt, d_opt, np.array(budgets), np.array(r_opt), r_law)
