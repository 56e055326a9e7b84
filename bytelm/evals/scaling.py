"""Compression-aware scaling laws on runs measured in bytes.

A run is (N, D, r, flops, loss): N non-embedding *latent* parameters (a
sweep grows the latent transformer and keeps the local models fixed), D
training bytes, r bytes per patch (the compression rate), training FLOPs, and
held-out bits-per-byte. The law fitted here is

    L(N, D, r) = E + A / N^alpha + B / D^beta + C * r^gamma / N^delta

The first three terms are Chinchilla's (Hoffmann et al. 2022, approach 3),
with data counted in bytes: compute-optimal tokenization work finds that data
should scale with parameters when counted in bytes, not tokens. The fourth
term is the price of compression at fixed N and D. Merging r bytes into one
latent step gives the latent model fewer steps and FLOPs per byte, which costs
loss (gamma >= 0), and a bigger latent model pays it more easily (delta >= 0).
With C = 0 the law is Chinchilla again. The benefit of compression is not in
the law; it is in the compute model:

    training FLOPs = k * N * D / r,   k = 6   (LATENT_FLOPS_PER_PARAM_PATCH)

The latent transformer sees D / r patches and spends about 6 FLOPs per
parameter per patch (forward plus backward). The local encoder and decoder
run once per byte and are left out, like embeddings in Chinchilla. Every
function that converts between compute and bytes takes `flops`: either k or
a callable `flops(N, D, r)` (for example one that adds the local models'
per-byte cost), which must be linear in D, as training FLOPs are.

The term C * r^gamma / N^delta is identifiable only from runs at two or more
rates. At a single rate it is one more power law in N, collinear with
A / N^alpha, so `fit` leaves it out when all runs share one r. Fitting a
single fixed data-per-parameter ratio is ill-conditioned in the same way:
with D = rho * N, the A and B columns of the Jacobian differ only by
N^(alpha - beta), and the condition number grows like 1 / (alpha - beta)^2.
`design_condition`, `diagnose` and `plan` measure and fix that.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

LATENT_FLOPS_PER_PARAM_PATCH = 6.0  # k in flops = k * N * D / r
CHINCHILLA_PATCHES_PER_PARAM = 20.0  # the fixed-ratio baseline: D = 20 * r * N bytes
COLUMNS = ("N", "D", "bpp", "flops", "loss")
PARAM_NAMES = ("E", "A", "alpha", "B", "beta", "C", "gamma", "delta")

Flops = float | Callable[..., object]


class ScalingError(ValueError):
    """A user error in scaling inputs; the message is one line starting with `bytelm: `."""

    def __init__(self, message: str):
        super().__init__("bytelm: " + " ".join(message.split()))


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


# ----------------------------------------------------------- compute model


def _flops_fn(flops: Flops) -> Callable:
    if callable(flops):
        return flops
    k = float(flops)
    if not k > 0:
        raise ScalingError(f"flops per parameter per patch must be > 0, got {k}")
    return lambda N, D, r: k * N * D / r


def bytes_for_budget(C, N, r=1.0, flops: Flops = LATENT_FLOPS_PER_PARAM_PATCH) -> np.ndarray:
    """Training bytes D with flops(N, D, r) == C; exact because FLOPs are linear in D."""
    f = _flops_fn(flops)
    return np.asarray(C, dtype=float) / np.asarray(f(N, 1.0, r), dtype=float)


@dataclass(frozen=True)
class ComputeModel:
    """flops(N, D, r) = D * (a + b / r + c * N / r), fitted to runs' own FLOPs.

    The form is exact for the latent-only 6 N D / r (a = b = 0, c = 6) and,
    up to attention terms, for a family whose local models are fixed while the
    latent grows: a is the per-byte cost of the local models, c N / r the
    latent's per-patch cost spread over r bytes. The coefficients come from
    least squares on relative errors; `max_rel_err` is the worst run's.
    """

    a: float
    b: float
    c: float
    max_rel_err: float

    @classmethod
    def fit(cls, runs: Runs) -> ComputeModel:
        y = runs.flops / runs.D  # FLOPs per byte
        X = np.stack([np.ones_like(y), 1 / runs.bpp, runs.N / runs.bpp], 1)
        coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones_like(y), rcond=None)
        coef = np.where(np.abs(coef) < 1e-9 * np.abs(coef).max(), 0.0, coef)  # exact zeros
        err = float(np.max(np.abs(X @ coef / y - 1)))
        return cls(*(float(c) for c in coef), max_rel_err=err)

    def __call__(self, N, D, r):
        N, D, r = (np.asarray(x, dtype=float) for x in (N, D, r))
        # floor at 1 FLOP per byte: the fit is only trusted where per-byte cost is positive
        return D * np.maximum(self.a + self.b / r + self.c * N / r, 1.0)

    def __str__(self) -> str:
        return (
            f"flops = D (a + b/r + c N/r), a = {self.a:.4g}, b = {self.b:.4g}, c = {self.c:.4g}; "
            f"max error on the runs {100 * self.max_rel_err:.2g}%"
        )


def size_for_ratio(C: float, bytes_per_param: float, r: float, flops: Flops) -> float:
    """The N that spends budget C at D = bytes_per_param * N."""
    if not callable(flops):  # closed form of k * N * (rho * N) / r = C
        return math.sqrt(C * r / (float(flops) * bytes_per_param))
    from scipy.optimize import brentq

    f = _flops_fn(flops)
    g = lambda u: math.log(float(f(math.exp(u), bytes_per_param * math.exp(u), r))) - math.log(C)
    return math.exp(brentq(g, 0.0, 80.0))


# --------------------------------------------------------------------- law


@dataclass(frozen=True)
class LawParams:
    """Parameters of L = E + A/N^alpha + B/D^beta + C r^gamma / N^delta (C=0: Chinchilla)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    C: float = 0.0
    gamma: float = 0.0
    delta: float = 0.0

    def predict(self, N, D, r=1.0) -> np.ndarray:
        """Predicted bits-per-byte; N, D, r broadcast together."""
        N, D, r = (np.asarray(a, dtype=float) for a in (N, D, r))
        L = self.E + self.A * N**-self.alpha + self.B * D**-self.beta
        if self.C > 0:
            L = L + self.C * r**self.gamma * N**-self.delta
        return L

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, n) for n in PARAM_NAMES)


# A design prior, for conditioning only (never predict with it): Chinchilla's
# fit (nats per token) in bits per byte at ~4 bytes per token, plus a guessed
# compression term worth ~0.05 bits/byte at N = 1e8, r = 4. Pass your own
# fitted law once you have one.
DEFAULT_PRIOR = LawParams(
    E=0.61, A=147.0, alpha=0.34, B=219.0, beta=0.28, C=3.0, gamma=1.0, delta=0.3
)


class _Frame(NamedTuple):
    """Centres of log N, log D, log r. The fit works with centred logs, so a
    term's amplitude is its value at the design's centre: without this the
    amplitude and exponent columns are nearly collinear (log N ~ 20 +- 2)."""

    x0: float
    y0: float
    z0: float

    @classmethod
    def of(cls, N, D, r) -> _Frame:
        return cls(float(np.mean(np.log(N))), float(np.mean(np.log(D))), float(np.mean(np.log(r))))

    def X(self, N, D, r) -> np.ndarray:  # (n, 3) centred log N, log D, log r
        return np.stack([np.log(N) - self.x0, np.log(D) - self.y0, np.log(r) - self.z0], 1)


def _to_theta(p: LawParams, fr: _Frame, comp: bool) -> np.ndarray:
    th = [math.log(p.E), math.log(p.A) - p.alpha * fr.x0, p.alpha]
    th += [math.log(p.B) - p.beta * fr.y0, p.beta]
    if comp:
        th += [math.log(p.C) + p.gamma * fr.z0 - p.delta * fr.x0, p.gamma, p.delta]
    return np.array(th)


def _from_theta(th: np.ndarray, fr: _Frame) -> LawParams:
    e, a, al, b, be = th[:5]
    p = dict(E=math.exp(e), A=math.exp(a + al * fr.x0), alpha=al, B=math.exp(b + be * fr.y0))
    p["beta"] = be
    if len(th) == 8:
        c, ga, de = th[5:]
        p.update(C=math.exp(c - ga * fr.z0 + de * fr.x0), gamma=ga, delta=de)
    return LawParams(**{k: float(v) for k, v in p.items()})


def _log_pred_and_jac(th: np.ndarray, X: np.ndarray):
    """log L at each run, (n,), and its Jacobian wrt theta, (n, p).

    log L = logsumexp(e, a - alpha x, b - beta y[, c + gamma z - delta x]);
    d logL / d term_j is the softmax weight w_j of that term.
    """
    x, y, z = X.T
    T = [np.full_like(x, th[0]), th[1] - th[2] * x, th[3] - th[4] * y]
    if len(th) == 8:
        T.append(th[5] + th[6] * z - th[7] * x)
    T = np.stack(T, 1)  # (n, terms)
    m = T.max(1, keepdims=True)
    ex = np.exp(T - m)
    s = ex.sum(1, keepdims=True)
    logL = (m + np.log(s))[:, 0]
    w = ex / s
    cols = [w[:, 0], w[:, 1], -x * w[:, 1], w[:, 2], -y * w[:, 2]]
    if len(th) == 8:
        cols += [w[:, 3], z * w[:, 3], -x * w[:, 3]]
    return logL, np.stack(cols, 1)


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


def run_id(N: float, D: float, bpp: float) -> str:
    """A stable, readable id for a run of the grid."""
    return f"N{N:.6g}_D{D:.6g}_r{bpp:.6g}"


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


# -------------------------------------------------------------------- plots


def _figure():
    # the object API writes PNGs without pyplot or a global backend switch
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    return fig, fig.add_subplot()


_STYLES = ("-", "--", ":", "-.")


def plot_isoflop(iso: IsoFLOPResult, path: str | Path) -> Path:
    """Loss vs N with its parabola: colour is the budget, line style the rate."""
    from matplotlib import colormaps

    fig, ax = _figure()
    Cs = sorted({g.C for g in iso.groups})
    rates = sorted({g.r for g in iso.groups})
    for g in iso.groups:
        color = colormaps["viridis"](Cs.index(g.C) / max(len(Cs) - 1, 1))
        style = _STYLES[rates.index(g.r) % len(_STYLES)]
        u = np.linspace(np.log(g.N).min(), np.log(g.N).max(), 100)
        label = f"{g.C:.2g} FLOPs" if g.r == rates[0] else None
        ax.plot(g.N, g.loss, "o", color=color, ms=3)
        ax.plot(np.exp(u), np.polyval(g.coef, u), style, color=color, label=label)
        ax.plot([g.N_opt], [g.L_opt], "*", color=color, ms=9)
    for k, r in enumerate(rates):
        ax.plot([], [], _STYLES[k % len(_STYLES)], color="grey", label=f"bpp {r:g}")
    ax.set(xscale="log", xlabel="N (latent params)", ylabel="loss (bits/byte)", title="IsoFLOP")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_frontier(
    path: str | Path, iso: IsoFLOPResult | None = None, law_fit=None, C=None, flops=None
):
    """N* (circles) and D* (squares) vs compute, per rate, with the fitted law's optimum."""
    fig, ax = _figure()
    for k, (r, law) in enumerate(iso.n_opt.items() if iso else []):
        color = f"C{k}"
        gs = [g for g in iso.groups if g.r == r]
        c = np.array([g.C for g in gs])
        ax.plot(c, [g.N_opt for g in gs], "o", color=color, label=f"isoflop bpp {r:g}")
        ax.plot(c, [g.D_opt for g in gs], "s", color=color)
        ax.plot(c, law(c), "-", color=color, lw=0.8)
        ax.plot(c, iso.d_opt[r](c), "-", color=color, lw=0.8)
    if law_fit is not None and C is not None:
        N, D, _ = law_fit.optimal(C, flops or LATENT_FLOPS_PER_PARAM_PATCH)
        ax.plot(C, N, "k--", label="fit: N*")
        ax.plot(C, D, "k:", label="fit: D* (bytes)")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", title="compute-optimal N*, D*")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_compression(
    path: str | Path, iso: IsoFLOPResult | None = None, law_fit=None, C=None, flops=None
):
    """Optimal bytes per patch vs compute."""
    fig, ax = _figure()
    if iso is not None and len(iso.budgets):
        ax.plot(iso.budgets, iso.r_opt, "o", label="isoflop r*")
        if iso.r_law is not None:
            ax.plot(iso.budgets, iso.r_law(iso.budgets), "-", label=f"C^{iso.r_law.exponent:.3f}")
    if law_fit is not None and C is not None:
        ax.plot(
            C, law_fit.optimal(C, flops or LATENT_FLOPS_PER_PARAM_PATCH)[2], "k--", label="fit r*"
        )
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="bytes per patch", title="optimal r")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return Path(path)


def write_plots(
    out_dir: str | Path,
    iso: IsoFLOPResult | None = None,
    law_fit=None,
    C=None,
    flops: Flops | None = None,
    prefix: str = "",
):
    """Write {prefix}isoflop.png, frontier.png and compression.png; returns their paths.

    `flops` is the compute model for the fitted law's optimum (default 6 N D / r).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if iso is not None and iso.groups:
        paths.append(plot_isoflop(iso, out / f"{prefix}isoflop.png"))
    paths.append(plot_frontier(out / f"{prefix}frontier.png", iso, law_fit, C, flops))
    paths.append(plot_compression(out / f"{prefix}compression.png", iso, law_fit, C, flops))
    return paths
