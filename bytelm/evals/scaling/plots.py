"""Plots of an IsoFLOP analysis and a fitted law, written as PNGs: loss vs N
per budget (`plot_isoflop`), the compute-optimal N* and D* (`plot_frontier`),
the optimal bytes per patch (`plot_compression`), and `write_plots` for all
three. matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .isoflops import IsoFLOPResult
from .law import LATENT_FLOPS_PER_PARAM_PATCH, Flops

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
