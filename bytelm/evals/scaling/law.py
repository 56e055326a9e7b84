"""The compute model and the law: FLOPs per run (`bytes_for_budget`,
`ComputeModel`, `size_for_ratio`), `LawParams` with its prediction and the
design prior `DEFAULT_PRIOR`, and the law's centred log parametrisation
(`_Frame`, `_to_theta`, `_from_theta`) with the log-prediction Jacobian that
both the fit and the design checks use. It imports only `io`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .io import Runs, ScalingError

LATENT_FLOPS_PER_PARAM_PATCH = 6.0  # k in flops = k * N * D / r
CHINCHILLA_PATCHES_PER_PARAM = 20.0  # the fixed-ratio baseline: D = 20 * r * N bytes
PARAM_NAMES = ("E", "A", "alpha", "B", "beta", "C", "gamma", "delta")

Flops = float | Callable[..., object]


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
