"""Scaling sweeps: plan a grid, train it row by row, resumably.

    plan_grid   budgets, sizes, rates (+ a preset's family) -> a Plan (Markdown, CSV)
    run_sweep   grid rows + train_fn -> runs.csv, resumable row by row
    make_train_fn   a grid row -> a real training run of a preset's family

The `bytelm sweep plan|run` and `bytelm fit` commands (`bytelm.cli.sweep`) are
thin wrappers over these and over `bytelm.evals.scaling`.

A sweep scales one ByteLM preset along a ladder of latent transformers
(`LATENT_LADDER`, width and depth together); the local encoder, decoder and
heads stay as the preset sets them. A run's N is its latent parameter count
(`flops.param_counts(cfg)["latent"]`, no embeddings), D its training bytes,
bpp the mean patch length measured on the held-out windows, and flops the
analytic training FLOPs of the whole model (`flops.flops_per_byte * D`), local
models included. `make_train_fn` turns a grid row into a training run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from bytelm.evals import scaling as S

RUN_COLUMNS = ("run_id", "N", "D", "bpp", "flops", "loss", "config")


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
    calibrated to r by the Trainer before training; a learned router
    (`"learned"`) trains toward r (its ratio loss, at θ = 0.5) and is calibrated
    to r at the end of training; anything else becomes fixed:r, which needs an
    integer r.
    """
    if patcher.name == "entropy":
        return replace(patcher, target_bytes_per_patch=float(r), measured_bytes_per_patch=0.0)
    if patcher.name == "learned":
        return replace(
            patcher, target_bytes_per_patch=float(r), measured_bytes_per_patch=0.0, threshold=0.0
        )
    if float(r).is_integer():
        k = int(r)
        return replace(patcher, name="fixed", k=k, max_patch_len=max(patcher.max_patch_len, k))
    raise S.ScalingError(
        f"bytes per patch {r:g} is not an integer; fixed:k patching needs integer rates "
        "(or set model.patcher.name = entropy or learned in the preset to reach any rate)"
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
    """Mean patch length over the first held-out windows (the same bytes every call), each
    window patched as its documents are, as the evaluation patches it."""
    import torch

    from bytelm.evals.bpb import split_patching
    from bytelm.patchers import ends_to_lengths
    from bytelm.vocab import PAD

    n_bytes = n_patches = 0
    patching = split_patching(patcher, corpus)
    starts = corpus.eval_starts(seq_len, max_bytes)
    with torch.no_grad():
        for i, ids in enumerate(corpus.eval_batches(seq_len, 64, max_bytes)):
            real = (ids != PAD).sum(-1)
            lengths = ends_to_lengths(patching(ids, starts[64 * i : 64 * i + len(ids)]), real)
            n_bytes += int(real.sum())
            n_patches += int((lengths > 0).sum())
    return n_bytes / max(n_patches, 1)


def learned_bytes_per_patch(model, corpus, seq_len: int, max_bytes: int = 131072) -> float:
    """Mean patch length of a learned ByteLM's own boundaries (at its θ) over the first
    held-out windows, the windows its bpb is measured on."""
    import torch

    from bytelm.vocab import PAD

    n_bytes = n_ends = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids in corpus.eval_batches(seq_len, 64, max_bytes):
            ids = ids.to(device)
            real = ids != PAD
            n_bytes += int(real.sum())
            n_ends += int((model.route(ids)[1] & real).sum())
    model.train(was_training)
    return n_bytes / max(n_ends, 1)


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
        learned = patcher.name == "learned"
        if patcher.name == "entropy":  # the mean on its calibration sample (training split)
            bpp = patcher.measured_bytes_per_patch
            name = f"entropy:{patcher.target_bytes_per_patch:g}"
        elif learned:  # measured after training, at the θ calibrated then
            bpp, name = row["bpp"], f"learned:{patcher.target_bytes_per_patch:g}"
        else:
            bpp = measure_bytes_per_patch(
                make_patcher(patcher), corpus["heldout"], dc.seq_len, tc.eval_bytes or 131072
            )
            name = f"fixed:{patcher.k}"
        D = steps * bytes_per_step
        counts = param_counts(cfg.model)
        lat = cfg.model.latent
        size = f"{row['run_id']}: latent {lat.dim}x{lat.n_layers} (N = {N:,})"
        if not learned:
            # entropies are computed once and cached, so the frozen entropy model is not counted
            fpb = flops_per_byte(cfg.model, bpp, dc.seq_len)["total"]
            log(f"{size}, {name} ({bpp:.3f} bytes/patch), {steps} steps = {D:,} bytes, "
                f"{fpb * D:.3g} FLOPs")  # fmt: skip
        else:
            log(f"{size}, {name}, {steps} steps = {D:,} bytes")
        t0 = time.perf_counter()
        last = trainer.fit()
        wall = time.perf_counter() - t0
        extra = {}
        if learned:
            # the router's rate on the windows the loss is measured on, at the θ the end of
            # training calibrated to the target (the Trainer's last evaluation ran at it); the
            # FLOPs count the router and take that rate for the whole run (it trains toward it)
            model = trainer.raw_model
            bpp = learned_bytes_per_patch(model, corpus["heldout"], dc.seq_len,
                                          tc.eval_bytes or 131072)  # fmt: skip
            fpb = flops_per_byte(cfg.model, bpp, dc.seq_len)["total"]
            extra = {k: last[k] for k in ("threshold", "calibrated_bytes_per_patch") if k in last}
            log(f"{row['run_id']}: {bpp:.3f} held-out bytes/patch at θ = "
                f"{model.patcher.threshold:.4f}, {fpb * D:.3g} FLOPs")  # fmt: skip
        log(f"{row['run_id']}: held-out bpb {last['bpb']:.4f} in {wall:.0f} s")
        return {
            **extra,
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


def plan_grid(
    budgets: Sequence[float],
    sizes: Sequence[Sequence[float]],
    rates: Sequence[float],
    base=None,
    **plan_kw,
) -> S.Plan:
    """A run grid over budgets x sizes x rates (`scaling.plan`, whose options plan_kw are).

    sizes: one list of latent params N for every rate, or one list per rate (sizes that shift
    with the rate, which the full law needs when every rate has only 3 sizes). base: a ByteLM
    RunConfig whose family counts the FLOPs (local models included) instead of 6 N D / r; its
    sizes are snapped to the family, and an empty list means the whole family.
    """
    sizes = [list(ns) for ns in sizes] or [[]]
    if len(sizes) not in (1, len(rates)):
        raise S.ScalingError(
            f"give --sizes once, or once per rate ({len(rates)} times); got {len(sizes)}"
        )
    if base is not None:
        plan_kw["flops"] = FamilyFlops(base)
        members = [n for n, _ in family(base)]
        # snapped, so that every planned N is a model that exists
        sizes = [sorted({nearest_member(base, n)[0] for n in ns}) or members for ns in sizes]
    elif not all(sizes):
        raise S.ScalingError("give --sizes, or --preset to plan over its family")
    if len(sizes) == 1:
        return S.plan(budgets, sizes[0], compression_rates=rates, **plan_kw)
    parts = [S.plan(budgets, ns, compression_rates=[r], **plan_kw) for ns, r in zip(sizes, rates)]
    return _merge_plans(parts)


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
    """Rows of a grid CSV (as `bytelm sweep plan --out` writes), with float N, D, bpp."""
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
