"""Scaling sweeps from the command line: plan a grid, run it, fit it.

Each `*_main` takes an argv list and returns an exit code; the `bytelm`
command dispatches to them. Users see one-line `bytelm: ...` errors, never
tracebacks, for bad inputs.

    plan_main   budgets, sizes, rates -> a Markdown grid (+ --out grid.csv)
    run_main    grid.csv + train_fn -> runs.csv, resumable row by row
    fit_main    runs.csv -> the fitted law, compute-optimal ratios, plots

A sweep scales one ByteLM preset along a ladder of latent transformers
(`LATENT_LADDER`, width and depth together); the local encoder, decoder and
heads stay as the preset sets them. A run's N is its latent parameter count
(`flops.param_counts(cfg)["latent"]`, no embeddings), D its training bytes,
bpp the mean patch length measured on the held-out windows, and flops the
analytic training FLOPs of the whole model (`flops.flops_per_byte * D`), local
models included. `make_train_fn` turns a grid row into a training run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from bytelm.evals import scaling as S

RUN_COLUMNS = ("run_id", "N", "D", "bpp", "flops", "loss", "config")


def _parse(parser: argparse.ArgumentParser, argv):
    """parse_args that returns an exit code instead of exiting."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return None, int(e.code or 0)


def _fail(err: Exception) -> int:
    """A user error: one line on stderr, exit code 2 (as `bytelm` gives every user error)."""
    print(str(err).splitlines()[0], file=sys.stderr)
    return 2


# ------------------------------------------------------------ model family

# (latent dim, latent layers): width and depth grow together, each step about
# doubling the latent parameters at local dim 32 (4k, 15k, 31k, 54k, 105k, 228k, ...).
LATENT_LADDER = (
    (16, 1),
    (32, 1),
    (48, 1),
    (64, 1),
    (64, 2),
    (96, 2),
    (128, 2),
    (128, 3),
    (192, 3),
    (256, 4),
    (384, 6),
    (512, 8),
    (768, 12),
    (1024, 16),
)


def _latent(base, dim: int, layers: int):
    head_dim = 16 if dim < 128 else 32 if dim < 512 else 64
    return replace(base, dim=dim, n_layers=layers, attn_heads=dim // head_dim)


def family(base) -> list[tuple[int, object]]:
    """(N, RunConfig) for every latent size of the ladder, ascending in N.

    N is the latent parameter count: `param_counts(cfg.model)["latent"]`.
    """
    from bytelm.evals.flops import param_counts

    if base.arch != "bytelm":
        raise S.ScalingError(
            f"sweeps scale ByteLM's latent transformer; the preset has arch {base.arch!r}"
        )
    out = []
    for dim, layers in LATENT_LADDER:
        latent = _latent(base.model.latent, dim, layers)
        cfg = replace(base, model=replace(base.model, latent=latent))
        out.append((param_counts(cfg.model)["latent"], cfg))
    return sorted(out, key=lambda m: m[0])


def nearest_member(base, N: float) -> tuple[int, object]:
    """The family member whose N is nearest to N in log space."""
    return min(family(base), key=lambda m: abs(math.log(m[0] / N)))


def patcher_for(patcher, r: float):
    """The PatcherConfig that gives r bytes per patch.

    An entropy patcher (the preset's `model.patcher.name = "entropy"`) is
    calibrated to r by the Trainer; anything else becomes fixed:r, which needs
    an integer r.
    """
    if patcher.name == "entropy":
        return replace(patcher, target_bytes_per_patch=float(r), measured_bytes_per_patch=0.0)
    if float(r).is_integer():
        k = int(r)
        return replace(patcher, name="fixed", k=k, max_patch_len=max(patcher.max_patch_len, k))
    raise S.ScalingError(
        f"bytes per patch {r:g} is not an integer; fixed:k patching needs integer rates "
        "(or set model.patcher.name = entropy in the preset to calibrate to any rate)"
    )


class FamilyFlops:
    """Training FLOPs of a family as `flops(N, D, r)`, the compute model `plan` takes.

    Exact (`flops_per_byte` of the member, times D) at the family's sizes, and
    piecewise linear in N between and beyond them, so that `plan` can solve
    for N. Linear in D, as training FLOPs are.
    """

    def __init__(self, base):
        from bytelm.evals.flops import flops_per_byte

        members = family(base)
        self.N = np.array([n for n, _ in members], dtype=float)
        self._cfgs = [cfg.model for _, cfg in members]
        self._seq_len = base.data.seq_len
        self._fpb = flops_per_byte
        self._cache: dict[float, np.ndarray] = {}

    def per_byte(self, N, r) -> np.ndarray:
        def one(n, rr):
            if rr not in self._cache:
                fs = [self._fpb(c, rr, self._seq_len)["total"] for c in self._cfgs]
                self._cache[rr] = np.array(fs)
            y = self._cache[rr]
            j = int(np.clip(np.searchsorted(self.N, n) - 1, 0, len(self.N) - 2))
            slope = (y[j + 1] - y[j]) / (self.N[j + 1] - self.N[j])
            return max(y[j] + slope * (n - self.N[j]), 1.0)

        return np.vectorize(one, otypes=[float])(N, r)

    def __call__(self, N, D, r):
        return self.per_byte(N, r) * np.asarray(D, dtype=float)


# ------------------------------------------------------------- training runs


def measure_bytes_per_patch(patcher, corpus, seq_len: int, max_bytes: int = 131072) -> float:
    """Mean patch length over the first held-out windows (the same bytes every call)."""
    import torch

    from bytelm.patchers import ends_to_lengths
    from bytelm.vocab import PAD

    n_bytes = n_patches = 0
    with torch.no_grad():
        for ids in corpus.eval_batches(seq_len, 64, max_bytes):
            real = (ids != PAD).sum(-1)
            lengths = ends_to_lengths(patcher.ends(ids), real)
            n_bytes += int(real.sum())
            n_patches += int((lengths > 0).sum())
    return n_bytes / max(n_patches, 1)


def make_train_fn(base, out_root: str | Path = "runs/sweep", log=print) -> Callable[[dict], dict]:
    """A train_fn for `run_sweep`: grid row -> a real training run of the family.

    The row's N picks the nearest latent size of `family(base)`, its bpp the
    patcher (`patcher_for`), its D the steps: D / (batch_size * seq_len *
    grad_accum), rounded. Each run gets its own warmup + cosine schedule over
    its steps, one held-out evaluation at the end, and its checkpoint in
    out_root/<run_id>. Returns the measured N, D, bpp, flops and loss (held-out
    bits per byte) plus details that go into the runs CSV's config column.
    """
    from bytelm.data import load_corpus
    from bytelm.evals.flops import flops_per_byte, param_counts
    from bytelm.patchers import make_patcher
    from bytelm.train import Trainer

    corpus = {}

    def train_fn(row: dict) -> dict:
        if not corpus:
            corpus.update(load_corpus(base.data, progress=False))
        N, cfg = nearest_member(base, row["N"])
        if abs(math.log(N / row["N"])) > math.log(1.25):
            log(f"note: {row['run_id']}: no latent size near N = {row['N']:.3g}; using {N}")
        dc, tc = cfg.data, cfg.train
        bytes_per_step = dc.batch_size * dc.seq_len * tc.grad_accum
        steps = max(1, round(row["D"] / bytes_per_step))
        patcher = patcher_for(cfg.model.patcher, row["bpp"])
        cfg = replace(
            cfg,
            model=replace(cfg.model, patcher=patcher),
            train=replace(
                tc,
                steps=steps,
                warmup_steps=min(tc.warmup_steps, steps // 10),
                eval_every=steps,
                save_every=steps,
                out_dir=str(Path(out_root) / row["run_id"]),
                progress=False,
            ),
        )
        trainer = Trainer(cfg, corpus=corpus)  # calibrates an entropy patcher to its target
        patcher = trainer.cfg.model.patcher
        if patcher.name == "entropy":  # held-out mean after calibration
            bpp = patcher.measured_bytes_per_patch
            name = f"entropy:{patcher.target_bytes_per_patch:g}"
        else:
            bpp = measure_bytes_per_patch(
                make_patcher(patcher), corpus["heldout"], dc.seq_len, tc.eval_bytes or 131072
            )
            name = f"fixed:{patcher.k}"
        D = steps * bytes_per_step
        # entropies are computed once and cached, so the frozen entropy model is not counted
        fpb = flops_per_byte(cfg.model, bpp, dc.seq_len)["total"]
        counts = param_counts(cfg.model)
        log(
            f"{row['run_id']}: latent {cfg.model.latent.dim}x{cfg.model.latent.n_layers} "
            f"(N = {N:,}), {name} ({bpp:.3f} bytes/patch), {steps} steps = {D:,} bytes, "
            f"{fpb * D:.3g} FLOPs"
        )
        t0 = time.perf_counter()
        last = trainer.fit()
        wall = time.perf_counter() - t0
        log(f"{row['run_id']}: held-out bpb {last['bpb']:.4f} in {wall:.0f} s")
        return {
            "loss": last["bpb"],
            "N": N,
            "D": D,
            "bpp": bpp,
            "flops": fpb * D,
            "latent": f"{cfg.model.latent.dim}x{cfg.model.latent.n_layers}",
            "patcher": name,
            "steps": steps,
            "non_embedding_params": counts["non_embedding"],
            "embedding_params": counts["embedding"],
            "flops_per_byte": fpb,
            "train_loss": last.get("loss"),
            "wall_s": round(wall, 1),
            "planned_N": row["N"],
            "planned_D": row["D"],
        }

    return train_fn


# --------------------------------------------------------------------- plan


def plan_main(argv: Sequence[str] | None = None) -> int:
    """`bytelm sweep plan`: print a run grid and how well it identifies the law."""
    p = argparse.ArgumentParser(prog="bytelm sweep plan", description=plan_main.__doc__)
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
    p.add_argument("--rates", type=float, nargs="+", default=[1.0], help="bytes per patch")
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
    p.add_argument("--min-ratios", type=int, default=3, help="ratios per size")
    p.add_argument("--min-spread", type=float, default=4.0, help="max/min ratio per size")
    p.add_argument("--out", type=Path, help="write the grid as CSV")
    args, code = _parse(p, argv)
    if args is None:
        return code
    try:
        flops, sizes = S.LATENT_FLOPS_PER_PARAM_PATCH, args.sizes or [[]]
        if len(sizes) not in (1, len(args.rates)):
            raise S.ScalingError(
                f"give --sizes once, or once per rate ({len(args.rates)} times); got {len(sizes)}"
            )
        if args.preset:
            from bytelm.config import load_preset

            base = load_preset(args.preset)
            flops = FamilyFlops(base)
            members = [n for n, _ in family(base)]
            # snapped, so that every planned N is a model that exists
            sizes = [sorted({nearest_member(base, n)[0] for n in ns}) or members for ns in sizes]
        elif not all(sizes):
            raise S.ScalingError("give --sizes, or --preset to plan over its family")
        kw = dict(
            ratio_range=tuple(args.ratio_range) if args.ratio_range else None,
            min_ratios_per_N=args.min_ratios,
            min_spread=args.min_spread,
            flops=flops,
        )
        if len(sizes) == 1:
            grid = S.plan(args.budgets, sizes[0], compression_rates=args.rates, **kw)
        else:
            parts = [
                S.plan(args.budgets, ns, compression_rates=[r], **kw)
                for ns, r in zip(sizes, args.rates)
            ]
            grid = _merge_plans(parts)
    except ValueError as e:  # ScalingError and config errors: both start with "bytelm:"
        return _fail(e)
    print(grid.to_markdown())
    if args.out:
        grid.write_csv(args.out)
        print(f"wrote {len(grid.rows)} runs to {args.out}")
    return 0


def _merge_plans(parts: Sequence[S.Plan], max_condition: float = 1e4) -> S.Plan:
    """One plan from per-rate plans, its conditioning measured on the union."""

    def cond(rows):
        N, D, r = ([getattr(x, c) for x in rows] for c in ("N", "D", "bpp"))
        return S.design_condition(N, D, S.DEFAULT_PRIOR, r)

    rows = sorted(
        (row for part in parts for row in part.rows), key=lambda x: (x.budget, x.bpp, x.N)
    )
    fixed = [row for part in parts for row in part.fixed_rows]
    warns = [w for part in parts for w in part.warnings if not w.startswith("condition number")]
    planned = cond(rows)
    if planned.full > max_condition:
        warns.append(
            f"condition number {planned.full:.3g} > {max_condition:.3g} under the prior; "
            "add budgets over a wider range, or more rates to identify the compression term"
        )
    return S.Plan(
        rows, planned, fixed, cond(fixed), parts[0].fixed_bytes_per_patch_per_param, warns
    )


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


def run_main(argv: Sequence[str] | None, train_fn: Callable[[dict], dict] | None = None) -> int:
    """`bytelm sweep run GRID --runs RUNS`: train the grid's missing rows.

    Without train_fn, each row trains a model of the preset's family
    (`make_train_fn`); `--KEY VALUE` config overrides (e.g. `--data.sources
    FILE`) apply to the preset first.
    """
    p = argparse.ArgumentParser(prog="bytelm sweep run", description=run_main.__doc__)
    p.add_argument("grid", type=Path, help="grid CSV from `sweep plan --out`")
    p.add_argument("--runs", type=Path, required=True, help="runs CSV, appended to")
    p.add_argument("--preset", default="sweep", help="the ByteLM preset the family grows from")
    p.add_argument("--out-dir", default="runs/sweep", help="checkpoints go to OUT_DIR/<run_id>")
    try:
        args, rest = p.parse_known_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    base = None
    try:
        if train_fn is None:
            from bytelm.cli import _split_overrides
            from bytelm.config import load_preset, override

            base = override(load_preset(args.preset), _split_overrides(rest))
            family(base)  # a preset that cannot be a family fails here, before any run
            train_fn = make_train_fn(base, args.out_dir)
        elif rest:
            raise S.ScalingError(f"unexpected argument '{rest[0]}'")
        grid = read_grid(args.grid)
        for row in grid if base is not None else ():  # every rate has a patcher, before any run
            patcher_for(base.model.patcher, row["bpp"])
        n = run_sweep(grid, args.runs, train_fn)
    except ValueError as e:
        if not str(e).startswith("bytelm:"):
            raise
        return _fail(e)
    except KeyboardInterrupt:
        print(
            f"bytelm: interrupted; finished runs are in {args.runs}, rerun to resume",
            file=sys.stderr,
        )
        return 130
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
    """`bytelm fit RUNS`: fit the law, print compute-optimal choices.

    Compute is converted to and from (N, D, r) with a model fitted to the runs'
    own FLOPs column (`scaling.ComputeModel`), so runs that count their local
    models' FLOPs are planned for correctly.
    """
    p = argparse.ArgumentParser(prog="bytelm fit", description=fit_main.__doc__)
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
    p.add_argument("--plot-prefix", default="", help="prefix of the PNG file names")
    args, code = _parse(p, argv)
    if args is None:
        return code
    try:
        runs = S.load_runs(args.runs)
        comp = {"auto": None, "on": True, "off": False}[args.compression]
        law = S.fit(runs, with_compression=comp, n_boot=args.n_boot, seed=args.seed)
        compute = S.ComputeModel.fit(runs)
    except S.ScalingError as e:
        return _fail(e)
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
