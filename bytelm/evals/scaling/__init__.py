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

The package is split by layer; each module imports only the ones listed before it:
`io` (the error type, run records, the runs CSV), `law` (the compute model and
the law's parametrisation), `fitting` (the Huber fit and its bootstrap),
`isoflops` (Chinchilla approach 2), `design` (condition numbers, diagnosis and
planning) and `plots` (matplotlib, imported only when a plot is drawn).
"""

from __future__ import annotations

from .design import DesignCondition, DesignReport, Plan, PlanRow, design_condition, diagnose, plan
from .fitting import EXPONENT_BOUNDS, ScalingFit, fit
from .io import COLUMNS, Runs, ScalingError, load_runs, run_id
from .isoflops import IsoFLOPResult, IsoGroup, PowerLaw, isoflop
from .law import (
    CHINCHILLA_PATCHES_PER_PARAM,
    DEFAULT_PRIOR,
    LATENT_FLOPS_PER_PARAM_PATCH,
    PARAM_NAMES,
    ComputeModel,
    Flops,
    LawParams,
    bytes_for_budget,
    size_for_ratio,
)
from .plots import plot_compression, plot_frontier, plot_isoflop, write_plots

__all__ = [
    "CHINCHILLA_PATCHES_PER_PARAM",
    "COLUMNS",
    "ComputeModel",
    "DEFAULT_PRIOR",
    "DesignCondition",
    "DesignReport",
    "EXPONENT_BOUNDS",
    "Flops",
    "IsoFLOPResult",
    "IsoGroup",
    "LATENT_FLOPS_PER_PARAM_PATCH",
    "LawParams",
    "PARAM_NAMES",
    "Plan",
    "PlanRow",
    "PowerLaw",
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
    "plot_compression",
    "plot_frontier",
    "plot_isoflop",
    "run_id",
    "size_for_ratio",
    "write_plots",
]
