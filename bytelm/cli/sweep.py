"""`bytelm sweep plan`, `bytelm sweep run` and `bytelm fit`: scaling sweeps and their law.

The commands wrap `bytelm.evals.sweep` (the model family, grids, resumable runs) and
`bytelm.evals.scaling` (the law, its fit and design diagnostics). `plan_main`, `run_main`
and `fit_main` run one command from a script and return its exit code; `run_main` also takes
the train_fn that trains a grid row (default: a real run of the preset's family).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from bytelm import config as C
from bytelm.cli.common import ALL_KEYS, CLIError, Parser, add_command, default_of, dispatch
from bytelm.evals import scaling as S
from bytelm.evals.sweep import (
    FamilyFlops,
    family,
    make_train_fn,
    nearest_member,
    patcher_for,
    plan_grid,
    read_grid,
    run_sweep,
)

# The library's names come with the commands, so that a script (or a test) that drives the
# commands and inspects the family needs one namespace: `from bytelm.cli import sweep`.
__all__ = [
    "FamilyFlops",
    "add_parsers",
    "family",
    "fit_main",
    "make_train_fn",
    "nearest_member",
    "plan_main",
    "read_grid",
    "run_main",
]


# --------------------------------------------------------------------------- plan


def cmd_plan(args, overrides) -> int:
    base = C.load_preset(args.preset) if args.preset else None
    grid = plan_grid(
        args.budgets,
        args.sizes or [],
        args.rates,
        base,
        ratio_range=tuple(args.ratio_range) if args.ratio_range else None,
        min_ratios_per_N=args.min_ratios,
        min_spread=args.min_spread,
    )
    print(grid.to_markdown())
    if args.out:
        grid.write_csv(args.out)
        print(f"wrote {len(grid.rows)} runs to {args.out}")
    return 0


def _add_plan_parser(actions) -> None:
    p = add_command(
        actions,
        "plan",
        cmd_plan,
        help="print a run grid and how well it identifies the law",
        description="Print a run grid over budgets x sizes x rates, and how well it identifies "
        "the scaling law (condition numbers under a prior). --out writes the grid as the CSV "
        "that `bytelm sweep run` trains.",
    )
    p.add_argument("--budgets", type=float, nargs="+", required=True, help="training FLOPs")
    p.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        action="append",
        help="latent params N (with --preset: snapped to its family; default: the whole family); "
        "give it once per rate to shift sizes with the rate, which the full law needs "
        "when every rate has only 3 sizes",
    )
    p.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=list(default_of(S.plan, "compression_rates")),
        help="bytes per patch (default: %(default)s)",
    )
    p.add_argument(
        "--preset",
        help="count FLOPs with this ByteLM preset's family (local models included) "
        "instead of 6 N D / r",
    )
    p.add_argument(
        "--ratio-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="bytes per param kept (default: 2r to 500r)",
    )
    p.add_argument(
        "--min-ratios",
        type=int,
        default=default_of(S.plan, "min_ratios_per_N"),
        help="ratios per size (default: %(default)s)",
    )
    p.add_argument(
        "--min-spread",
        type=float,
        default=default_of(S.plan, "min_spread"),
        help="max/min ratio per size (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="write the grid as CSV")


# ---------------------------------------------------------------------------- run


def cmd_run(args, overrides) -> int:
    train_fn, base = args.train_fn, None
    if train_fn is None:
        base = C.override(C.load_preset(args.preset), overrides)
        family(base)  # a preset that cannot be a family fails here, before any run
        train_fn = make_train_fn(base, args.out_dir)
    elif overrides:
        raise CLIError(
            f"bytelm: unexpected option '--{next(iter(overrides))}'; config keys set the "
            "preset's runs, and this sweep trains with its own train_fn"
        )
    grid = read_grid(args.grid)
    for row in grid if base is not None else ():  # every rate has a patcher, before any run
        patcher_for(base.model.patcher, row["bpp"])
    try:
        n = run_sweep(grid, args.runs, train_fn)
    except KeyboardInterrupt:
        print(
            f"bytelm: interrupted; finished runs are in {args.runs}, rerun to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # a crashed training run: report it, keep finished rows
        if isinstance(e, ValueError) and str(e).startswith("bytelm:"):
            raise  # a user error: one line, exit 2
        print(
            f"bytelm: a sweep run failed ({type(e).__name__}: {e}); rerun to resume",
            file=sys.stderr,
        )
        return 1
    print(f"trained {n} run(s); {len(grid) - n} were already in {args.runs}")
    return 0


def _add_run_parser(actions, train_fn: Callable[[dict], dict] | None) -> None:
    p = add_command(
        actions,
        "run",
        cmd_run,
        help="train the grid's missing rows (resumable)",
        description="Train the rows of a grid that are not yet in the runs CSV, each a model "
        "of the preset's family; a killed sweep resumes where it stopped. --KEY VALUE config "
        "options (e.g. --data.sources FILE) apply to the preset first.",
        config_keys=ALL_KEYS,
    )
    p.add_argument("grid", type=Path, help="grid CSV from `sweep plan --out`")
    p.add_argument("--runs", type=Path, required=True, help="runs CSV, appended to")
    p.add_argument(
        "--preset", default="sweep", help="the ByteLM preset the family grows from (default: sweep)"
    )
    p.add_argument(
        "--out-dir",
        default=default_of(make_train_fn, "out_root"),
        help="checkpoints go to OUT_DIR/<run_id> (default: %(default)s)",
    )
    p.set_defaults(train_fn=train_fn)


# ---------------------------------------------------------------------------- fit


def cmd_fit(args, overrides) -> int:
    runs = S.load_runs(args.runs)
    comp = {"auto": None, "on": True, "off": False}[args.compression]
    law = S.fit(runs, with_compression=comp, n_boot=args.n_boot, seed=args.seed)
    compute = S.ComputeModel.fit(runs)
    print(law.summary())
    print("\nDesign diagnostics under the fitted law:\n")
    print(S.diagnose(runs, prior=law.params))
    if law.with_compression:  # which part of the law the design identifies
        chin = S.design_condition(runs.N, runs.D, replace(law.params, C=0.0), runs.bpp)
        print(f"the Chinchilla part alone (C = 0): condition number {chin.full:.3g}")
    if law.at_bounds():  # a law on its bounds is degenerate: judge the design alone too
        print("\nDesign diagnostics under the default prior (the design alone):\n")
        print(S.diagnose(runs))

    if args.budgets:
        budgets = sorted(args.budgets)
    else:
        lo, hi = math.floor(math.log10(runs.flops.min())), math.ceil(math.log10(runs.flops.max()))
        budgets = [10.0**e for e in range(lo, hi + 4)]
    N, D, r = law.optimal(budgets, flops=compute)
    print(f"\nCompute-optimal ({compute}):\n")
    print("| C | N* | D* | bytes/param | r* | loss |\n|---|---|---|---|---|---|")
    for c, n, d, rr in zip(budgets, N, D, r):
        loss = float(law.predict(n, d, rr))
        print(f"| {c:.3g} | {n:.3g} | {d:.3g} | {d / n:.3g} | {rr:.3g} | {loss:.4f} |")
    flat = {"alpha", "delta"} if law.with_compression else {"alpha"}
    if flat <= set(law.at_bounds()):
        print(
            "\nwarning: the fitted loss does not fall with N (alpha"
            + (" and delta" if law.with_compression else "")
            + " = 0), so N* is the search's lower bound, not an optimum: these runs are "
            "limited by data or steps at every size"
        )

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        iso = S.isoflop(runs, flops=compute)
    if iso.n_opt:
        print("\nIsoFLOP (parabola per budget and rate):\n")
        print(iso.summary())
    if caught:
        print(f"(isoflop skipped {len(caught)} group(s) with < 3 sizes or no minimum)")
    if args.plots:
        plots = S.write_plots(
            args.plots, iso if iso.groups else None, law, budgets, compute, args.plot_prefix
        )
        for path in plots:
            print(f"wrote {path}")
    return 0


def _add_fit_parser(sub) -> None:
    p = add_command(
        sub,
        "fit",
        cmd_fit,
        help="fit a compression-aware scaling law to a sweep's runs CSV",
        description="Fit the compression-aware scaling law to a runs CSV and print the "
        "compute-optimal choices. Compute is converted to and from (N, D, r) with a model "
        "fitted to the runs' own FLOPs column, so runs that count their local models' FLOPs "
        "are planned for correctly.",
    )
    p.add_argument("runs", type=Path, help="runs CSV (N, D, bpp, flops, loss)")
    p.add_argument(
        "--compression",
        choices=("auto", "on", "off"),
        default="auto",
        help="the C r^gamma / N^delta term (auto: on with 2+ rates)",
    )
    p.add_argument(
        "--n-boot",
        type=int,
        default=default_of(S.fit, "n_boot"),
        help="bootstrap refits for the CIs (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=default_of(S.fit, "seed"))
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        help="FLOPs to report optima at (default: decades around the runs')",
    )
    p.add_argument("--plots", type=Path, help="write PNG plots to this directory")
    p.add_argument(
        "--plot-prefix",
        default=default_of(S.write_plots, "prefix"),
        help="prefix of the PNG file names",
    )


# ------------------------------------------------------------------------ parsers


def cmd_sweep(args, overrides) -> int:
    """`bytelm sweep` without an action: its help."""
    args.parser.print_help()
    return 0


def add_parsers(sub, train_fn: Callable[[dict], dict] | None = None) -> None:
    """`sweep {plan,run}` and `fit`; train_fn replaces the preset's runs in `sweep run`."""
    p = add_command(
        sub,
        "sweep",
        cmd_sweep,
        help="plan or run a scaling sweep: bytelm sweep {plan,run} --help",
        description="Plan a scaling sweep's grid of runs, or train it. The runs CSV that "
        "`sweep run` writes is what `bytelm fit` reads.",
    )
    actions = p.add_subparsers(dest="action", metavar="{plan,run}", title="actions")
    _add_plan_parser(actions)
    _add_run_parser(actions, train_fn)
    _add_fit_parser(sub)


def _main(argv: Sequence[str], train_fn=None) -> int:
    root = Parser(prog="bytelm")
    add_parsers(root.add_subparsers(dest="command", required=True), train_fn)
    try:
        return dispatch(root, argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)


def plan_main(argv: Sequence[str]) -> int:
    """`bytelm sweep plan ARGV...`; returns the exit code."""
    return _main(["sweep", "plan", *argv])


def run_main(argv: Sequence[str], train_fn: Callable[[dict], dict] | None = None) -> int:
    """`bytelm sweep run ARGV...` with train_fn training each grid row (see `run_sweep`);
    returns the exit code."""
    return _main(["sweep", "run", *argv], train_fn)


def fit_main(argv: Sequence[str]) -> int:
    """`bytelm fit ARGV...`; returns the exit code."""
    return _main(["fit", *argv])
