"""Scaling sweeps from the command line: plan a grid, run it, fit it.

Each `*_main` takes an argv list and returns an exit code; the `bytelm`
command dispatches to them. Users see one-line `bytelm: ...` errors, never
tracebacks, for bad inputs.

    plan_main   budgets, sizes, rates -> a Markdown grid (+ --out grid.csv)
    run_main    grid.csv + train_fn -> runs.csv, resumable row by row
    fit_main    runs.csv -> the fitted law, compute-optimal ratios, plots
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bytelm.evals import scaling as S

RUN_COLUMNS = ("run_id", "N", "D", "bpp", "flops", "loss", "config")


def _parse(parser: argparse.ArgumentParser, argv):
    """parse_args that returns an exit code instead of exiting."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return None, int(e.code or 0)


def _fail(err: Exception) -> int:
    print(str(err), file=sys.stderr)
    return 1


# --------------------------------------------------------------------- plan


def plan_main(argv: Sequence[str] | None = None) -> int:
    """`bytelm sweep plan`: print a run grid and how well it identifies the law."""
    p = argparse.ArgumentParser(prog="bytelm sweep plan", description=plan_main.__doc__)
    p.add_argument("--budgets", type=float, nargs="+", required=True, help="training FLOPs")
    p.add_argument("--sizes", type=float, nargs="+", required=True, help="latent params N")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0], help="bytes per patch")
    p.add_argument(
        "--ratio-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="bytes per param kept (default: 2r to 500r)",
    )
    p.add_argument("--min-ratios", type=int, default=3, help="ratios per size")
    p.add_argument("--min-spread", type=float, default=4.0, help="max/min ratio per size")
    p.add_argument("--out", type=Path, help="write the grid as CSV")
    args, code = _parse(p, argv)
    if args is None:
        return code
    try:
        grid = S.plan(
            args.budgets,
            args.sizes,
            ratio_range=tuple(args.ratio_range) if args.ratio_range else None,
            compression_rates=args.rates,
            min_ratios_per_N=args.min_ratios,
            min_spread=args.min_spread,
        )
    except S.ScalingError as e:
        return _fail(e)
    print(grid.to_markdown())
    if args.out:
        grid.write_csv(args.out)
        print(f"wrote {len(grid.rows)} runs to {args.out}")
    return 0


# ---------------------------------------------------------------------- run


def read_grid(path: str | Path) -> list[dict]:
    """Rows of a grid CSV (as written by `plan_main --out`), with float N, D, bpp."""
    path = Path(path)
    if not path.is_file():
        raise S.ScalingError(f"no grid file at '{path}'")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            N, D, bpp = (float(row[c]) for c in ("N", "D", "bpp"))
        except (KeyError, TypeError, ValueError):
            raise S.ScalingError(f"{path} line {i}: needs numeric N, D and bpp columns") from None
        row = {**row, "N": N, "D": D, "bpp": bpp}
        row["run_id"] = row.get("run_id") or S.run_id(N, D, bpp)
        out.append(row)
    return out


def _done_ids(runs_csv: Path) -> set[str]:
    """Run ids already in runs_csv. A torn last line (a kill mid-write) is cut
    off, so that run is trained again instead of corrupting the file."""
    if not runs_csv.exists():
        return set()
    data = runs_csv.read_bytes()
    if data and not data.endswith(b"\n"):
        with runs_csv.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    with runs_csv.open(newline="") as f:
        return {row["run_id"] for row in csv.DictReader(f) if row.get("run_id")}


def run_sweep(grid: Sequence[dict], runs_csv: str | Path, train_fn: Callable[[dict], dict]) -> int:
    """Train every grid row not yet in runs_csv; returns how many were trained.

    train_fn(row) gets a grid row (run_id, N, D, bpp, ...) and returns a dict
    with at least `loss` (held-out bits per byte). It may also return measured
    N, D, bpp or flops, which replace the planned ones (an entropy patcher's
    real bytes per patch is within 2% of its target, not equal to it); other
    keys go into the JSON `config` column. Each finished row is appended and
    fsynced before the next run starts, so a killed sweep resumes where it
    stopped. Exceptions from train_fn propagate; finished rows stay written.
    """
    runs_csv = Path(runs_csv)
    done = _done_ids(runs_csv)
    trained = 0
    for row in grid:
        if row["run_id"] in done:
            continue
        result = dict(train_fn(dict(row)))
        loss = float(result.pop("loss", math.nan))
        if not loss > 0 or not math.isfinite(loss):
            raise S.ScalingError(f"run {row['run_id']}: train_fn returned loss {loss!r}")
        N, D, bpp = (float(result.pop(c, row[c])) for c in ("N", "D", "bpp"))
        # measured FLOPs if train_fn counts them, else the latent compute model
        flops = float(result.pop("flops", S.LATENT_FLOPS_PER_PARAM_PATCH * N * D / bpp))
        config = {k: v for k, v in row.items() if k not in RUN_COLUMNS} | result
        out = dict(
            run_id=row["run_id"],
            N=repr(N),
            D=repr(D),
            bpp=repr(bpp),
            flops=repr(flops),
            loss=repr(loss),
            config=json.dumps(config, default=str),
        )
        new = not runs_csv.exists() or runs_csv.stat().st_size == 0
        with runs_csv.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(out)
            f.flush()
            os.fsync(f.fileno())
        done.add(row["run_id"])
        trained += 1
    return trained


def run_main(argv: Sequence[str] | None, train_fn: Callable[[dict], dict]) -> int:
    """`bytelm sweep run GRID --runs RUNS`: train the grid's missing rows."""
    p = argparse.ArgumentParser(prog="bytelm sweep run", description=run_main.__doc__)
    p.add_argument("grid", type=Path, help="grid CSV from `sweep plan --out`")
    p.add_argument("--runs", type=Path, required=True, help="runs CSV, appended to")
    args, code = _parse(p, argv)
    if args is None:
        return code
    try:
        grid = read_grid(args.grid)
        n = run_sweep(grid, args.runs, train_fn)
    except S.ScalingError as e:
        return _fail(e)
    except Exception as e:  # a crashed training run: report it, keep finished rows
        print(
            f"bytelm: a sweep run failed ({type(e).__name__}: {e}); rerun to resume",
            file=sys.stderr,
        )
        return 1
    print(f"trained {n} run(s); {len(grid) - n} were already in {args.runs}")
    return 0


# ---------------------------------------------------------------------- fit


def fit_main(argv: Sequence[str] | None = None) -> int:
    """`bytelm sweep fit RUNS`: fit the law, print compute-optimal choices."""
    p = argparse.ArgumentParser(prog="bytelm sweep fit", description=fit_main.__doc__)
    p.add_argument("runs", type=Path, help="runs CSV (N, D, bpp, flops, loss)")
    p.add_argument(
        "--compression",
        choices=("auto", "on", "off"),
        default="auto",
        help="the C r^gamma / N^delta term (auto: on with 2+ rates)",
    )
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap refits for the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        help="FLOPs to report optima at (default: decades around the runs')",
    )
    p.add_argument("--plots", type=Path, help="write PNG plots to this directory")
    args, code = _parse(p, argv)
    if args is None:
        return code
    try:
        runs = S.load_runs(args.runs)
        comp = {"auto": None, "on": True, "off": False}[args.compression]
        law = S.fit(runs, with_compression=comp, n_boot=args.n_boot, seed=args.seed)
    except S.ScalingError as e:
        return _fail(e)
    print(law.summary())
    print()
    print(S.diagnose(runs, prior=law.params))

    if args.budgets:
        budgets = sorted(args.budgets)
    else:
        lo, hi = math.floor(math.log10(runs.flops.min())), math.ceil(math.log10(runs.flops.max()))
        budgets = [10.0**e for e in range(lo, hi + 4)]
    N, D, r = law.optimal(budgets)
    print(f"\nCompute-optimal (flops = {S.LATENT_FLOPS_PER_PARAM_PATCH:g} N D / r):\n")
    print("| C | N* | D* | bytes/param | r* | loss |\n|---|---|---|---|---|---|")
    for c, n, d, rr in zip(budgets, N, D, r):
        loss = float(law.predict(n, d, rr))
        print(f"| {c:.3g} | {n:.3g} | {d:.3g} | {d / n:.3g} | {rr:.3g} | {loss:.4f} |")

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        iso = S.isoflop(runs)
    if iso.n_opt:
        print("\nIsoFLOP (parabola per budget and rate):\n")
        print(iso.summary())
    if caught:
        print(f"(isoflop skipped {len(caught)} group(s) with < 3 sizes or no minimum)")
    if args.plots:
        for path in S.write_plots(args.plots, iso if iso.groups else None, law, budgets):
            print(f"wrote {path}")
    return 0
