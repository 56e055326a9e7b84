"""Fitting the law (Chinchilla approach 3): the Huber objective on log
residuals, the exponents' search box `EXPONENT_BOUNDS`, the variable-projection
start grid, multi-start L-BFGS-B, and `fit`, which returns a `ScalingFit`
with bootstrap percentile intervals and the compute-optimal (N*, D*, r*).
scipy (and threadpoolctl, when installed) are imported only while fitting.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .io import Runs, ScalingError
from .law import (
    LATENT_FLOPS_PER_PARAM_PATCH,
    PARAM_NAMES,
    Flops,
    LawParams,
    _Frame,
    _from_theta,
    _log_pred_and_jac,
    bytes_for_budget,
)


def _need_scipy():
    try:
        import scipy.optimize  # noqa: F401
    except ImportError as e:  # scipy is in the dev extra, not a core dependency
        raise ScalingError("scaling fits need scipy; run `pip install scipy`") from e


@contextmanager
def _one_blas_thread():
    """L-BFGS-B on 5-8 parameters makes many tiny LAPACK calls. A threaded
    OpenBLAS turns each into a thread hand-off, which is 10x slower on a busy
    machine; threadpoolctl (optional) pins it to one thread while we fit."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _huber_objective(th, X, logL, delta, weight):
    """Weighted mean Huber loss of log residuals, divided by delta so that
    values are O(|residual| / delta) and L-BFGS's tolerances bite."""
    pred, J = _log_pred_and_jac(th, X)
    res = pred - logL
    a = np.abs(res)
    h = np.where(a <= delta, 0.5 * res**2, delta * (a - 0.5 * delta))
    psi = np.clip(res, -delta, delta) * weight
    norm = weight.sum() * delta
    return float(h @ weight) / norm, (psi @ J) / norm


# the exponents' search box; gamma, delta >= 0: see the module doc
EXPONENT_BOUNDS = {
    "alpha": (0.0, 3.0),
    "beta": (0.0, 3.0),
    "gamma": (0.0, 4.0),
    "delta": (0.0, 3.0),
}


def _bounds(logL: np.ndarray, comp: bool):
    top = float(logL.max()) + math.log(2.0)  # no term exceeds twice the largest loss
    eb = EXPONENT_BOUNDS
    b = [(-20.0, top), (-30.0, top), eb["alpha"], (-30.0, top), eb["beta"]]
    if comp:
        b += [(-30.0, top), eb["gamma"], eb["delta"]]
    return b


def _init_grid(X, L, comp: bool, delta: float) -> list[np.ndarray]:
    """Starting points, best first. For fixed exponents the law is linear in
    (E, A, B, C), so each exponent combination gets its amplitudes from
    non-negative least squares on relative residuals (variable projection)."""
    from scipy.optimize import nnls

    x, y, z = X.T
    exps = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
    extra = [(g, d) for g in (0.5, 1.0, 2.0) for d in (0.0, 0.25, 0.5)] if comp else [None]
    tiny = 1e-4 * float(L.min())  # an amplitude NNLS zeroed starts negligible, not at log(0)
    logL = np.log(L)
    starts = []
    for al in exps:
        for be in exps:
            for gd in extra:
                cols = [np.ones_like(x), np.exp(-al * x), np.exp(-be * y)]
                if gd is not None:
                    cols.append(np.exp(gd[0] * z - gd[1] * x))
                M = np.stack(cols, 1) / L[:, None]
                coef, _ = nnls(M, np.ones_like(L))
                lc = np.log(np.maximum(coef, tiny))
                th = [lc[0], lc[1], al, lc[2], be] + ([lc[3], *gd] if gd is not None else [])
                th = np.array(th)
                score = _huber_objective(th, X, logL, delta, np.ones_like(L))[0]
                starts.append((score, th))
    starts.sort(key=lambda s: s[0])
    return [th for _, th in starts]


def _minimise(starts, X, logL, delta, weight, bounds):
    from scipy.optimize import minimize

    best = None
    for th0 in starts:
        th0 = np.clip(th0, [b[0] for b in bounds], [b[1] for b in bounds])
        res = minimize(
            _huber_objective,
            th0,
            args=(X, logL, delta, weight),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options=dict(maxiter=500, ftol=1e-12, gtol=1e-8),
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x, float(best.fun)


# --------------------------------------------------------------------- fit


@dataclass(frozen=True)
class ScalingFit:
    """A fitted law with bootstrap percentile intervals.

    `boot` holds the bootstrap refits, shape (n_boot, 8), in PARAM_NAMES order.
    """

    params: LawParams
    ci: dict[str, tuple[float, float]]
    boot: np.ndarray
    with_compression: bool
    n_runs: int
    rmse_log: float  # root mean square of log-loss residuals
    rates: tuple[float, ...]  # distinct bytes-per-patch values seen in the runs
    ci_level: float = 0.95

    def predict(self, N, D, r=1.0) -> np.ndarray:
        return self.params.predict(N, D, r)

    def _r_grid(self, r_grid):
        if r_grid is not None:
            return np.atleast_1d(np.asarray(r_grid, dtype=float))
        if not self.with_compression:
            # without the compression term the law cannot choose r: keep the one seen
            return np.array([math.exp(np.mean(np.log(self.rates)))])
        # interpolate between the rates seen, never extrapolate
        return np.geomspace(min(self.rates), max(self.rates), 41)

    def optimal(self, C, flops: Flops = LATENT_FLOPS_PER_PARAM_PATCH, r_grid=None):
        """(N*, D*, r*) minimising predicted loss subject to flops(N, D, r) == C.

        C is a scalar or an array of budgets; results have its shape. For each r
        the loss along the budget is convex in log N (a sum of exponentials in
        log N), so a bounded 1-D search finds the optimum. r is searched on
        r_grid, then refined between the grid neighbours of the best point.
        """
        from scipy.optimize import minimize_scalar

        def best_at(c, r):  # (loss, N, D) at the best size for budget c, rate r
            D_of = lambda u: float(bytes_for_budget(c, math.exp(u), r, flops))
            f = lambda u: float(self.params.predict(math.exp(u), D_of(u), r))
            res = minimize_scalar(f, bounds=(0.0, math.log(c)), method="bounded")
            return float(res.fun), math.exp(res.x), D_of(res.x)

        grid = np.sort(self._r_grid(r_grid))
        Cs = np.asarray(C, dtype=float)
        out = np.empty((Cs.size, 3))
        for i, c in enumerate(Cs.reshape(-1)):
            losses = [best_at(c, r)[0] for r in grid]
            j = int(np.argmin(losses))
            r = grid[j]
            if 0 < j < len(grid) - 1:
                lo, hi = math.log(grid[j - 1]), math.log(grid[j + 1])
                g = lambda v, c=c: best_at(c, math.exp(v))[0]
                r = math.exp(minimize_scalar(g, bounds=(lo, hi), method="bounded").x)
            out[i] = (*best_at(c, r)[1:], r)
        if Cs.ndim == 0:
            return tuple(float(v) for v in out[0])
        return tuple(out[:, j].reshape(Cs.shape) for j in range(3))

    def compute_optimal_bytes_per_param(
        self, C, flops: Flops = LATENT_FLOPS_PER_PARAM_PATCH, r_grid=None
    ):
        """D*/N* at budget(s) C."""
        N, D, _ = self.optimal(C, flops, r_grid)
        return np.asarray(D) / np.asarray(N)

    def summary(self) -> str:
        """The law with its intervals, as a Markdown table."""
        names = PARAM_NAMES if self.with_compression else PARAM_NAMES[:5]
        law = "L(N, D, r) = E + A/N^alpha + B/D^beta"
        law += " + C*r^gamma/N^delta" if self.with_compression else ""
        pct = f"{100 * self.ci_level:g}%"
        lines = [f"{law}   ({self.n_runs} runs, rms log residual {self.rmse_log:.2e})", ""]
        lines += [f"| param | value | {pct} CI |", "|---|---|---|"]
        for n in names:
            lo, hi = self.ci[n]
            lines.append(f"| {n} | {getattr(self.params, n):.4g} | [{lo:.4g}, {hi:.4g}] |")
        for n in self.at_bounds():
            lines.append(
                f"\nwarning: {n} = {getattr(self.params, n):g} sits on its bound "
                f"{EXPONENT_BOUNDS[n]}: the runs do not pin this term down, and its interval is "
                "the box's, not the data's"
            )
        return "\n".join(lines)

    def at_bounds(self, tol: float = 1e-6) -> list[str]:
        """Exponents the fit left on an edge of their search box."""
        names = ["alpha", "beta"] + (["gamma", "delta"] if self.with_compression else [])
        return [
            n
            for n in names
            if min(abs(getattr(self.params, n) - b) for b in EXPONENT_BOUNDS[n]) < tol
        ]


def fit(
    runs: Runs,
    with_compression: bool | None = None,
    huber_delta: float = 1e-3,
    n_boot: int = 200,
    seed: int = 0,
    ci_level: float = 0.95,
    n_starts: int = 8,
) -> ScalingFit:
    """Fit the law to runs by Huber loss on log residuals (Chinchilla approach 3).

    L-BFGS-B runs from the `n_starts` best points of an exponent grid; the best
    result wins. Intervals are bootstrap percentiles: runs are resampled with
    replacement `n_boot` times (seeded) and refitted from the best fit and the
    second-best grid start. with_compression=None turns the compression term on
    exactly when the runs hold two or more rates.
    """
    _need_scipy()
    with _one_blas_thread():
        return _fit(runs, with_compression, huber_delta, n_boot, seed, ci_level, n_starts)


def _fit(runs, with_compression, huber_delta, n_boot, seed, ci_level, n_starts) -> ScalingFit:
    rates = runs.rates
    if with_compression is None:
        with_compression = len(rates) > 1
    if with_compression and len(rates) < 2:
        raise ScalingError(
            f"the compression term needs runs at two or more bytes-per-patch rates; "
            f"all runs use {rates[0]:g}"
        )
    n_params = 8 if with_compression else 5
    if len(runs) < n_params + 1:
        raise ScalingError(
            f"{len(runs)} runs are too few to fit {n_params} parameters; need {n_params + 1}"
        )
    fr = _Frame.of(runs.N, runs.D, runs.bpp)
    X = fr.X(runs.N, runs.D, runs.bpp)
    logL = np.log(runs.loss)
    bounds = _bounds(logL, with_compression)
    ones = np.ones(len(runs))
    starts = _init_grid(X, runs.loss, with_compression, huber_delta)
    th, _ = _minimise(starts[:n_starts], X, logL, huber_delta, ones, bounds)
    params = _from_theta(th, fr)
    pred, _ = _log_pred_and_jac(th, X)
    rmse = float(np.sqrt(np.mean((pred - logL) ** 2)))

    # bootstrap: a resample is a multiplicity per run, i.e. a weight vector
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, 8))
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, len(runs), len(runs)), minlength=len(runs)).astype(float)
        tb, _ = _minimise([th, starts[1]], X, logL, huber_delta, w, bounds)
        boot[i] = _from_theta(tb, fr).as_tuple()
    q = (100 * (1 - ci_level) / 2, 100 * (1 + ci_level) / 2)
    ci = {}
    for j, n in enumerate(PARAM_NAMES):
        if n_boot:
            lo, hi = np.percentile(boot[:, j], q)
        else:
            lo = hi = math.nan
        ci[n] = (float(lo), float(hi))
    return ScalingFit(
        params=params,
        ci=ci,
        boot=boot,
        with_compression=with_compression,
        n_runs=len(runs),
        rmse_log=rmse,
        rates=tuple(float(r) for r in rates),
        ci_level=ci_level,
    )
