"""The compression knob at inference: entropy and learned models trained at one bytes per
patch, evaluated at others, side by side, against models trained at each setting.

    python -m benchmarks.knob --runs runs/equal_compute/stdlib          # after equal_compute
    python -m benchmarks.knob --runs runs/equal_compute/tinyshakespeare --knobs 3,4,6,8

Reads the checkpoints `benchmarks.equal_compute` left in `--runs` (the 4-CPU-minute runs of
`--seeds`): the entropy and learned ByteLMs trained at 4 bytes per patch (lm-1h-entropy,
lm-1h-learned) are evaluated at each `--knobs` target, θ re-calibrated on the training
split's calibration sample (`bytelm eval CKPT --target-bytes-per-patch X`), over the first
`--max-bytes` held-out bytes. Beside them, every model trained at a knob's setting (fixed:4,
fixed:8, entropy and learned at 8) at its own setting: what retraining at that compression
gets, against what turning the knob gets.

Results: benchmarks/results/knob_<corpus>.{md,csv}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import markdown_table, write_results
from bytelm.evals.bpb import bpb_of_checkpoint
from bytelm.evals.compression import eval_at_target

KNOBBED = {"lm-1h-entropy": "entropy", "lm-1h-learned": "learned"}  # trained at 4 bytes/patch
TRAINED = {  # family: (patcher, the bytes per patch it was trained at)
    "lm-1h": ("fixed", 4.0), "lm-1h-entropy": ("entropy", 4.0), "lm-1h-learned": ("learned", 4.0),
    "lm-1h-k8": ("fixed", 8.0), "lm-1h-entropy8": ("entropy", 8.0),
    "lm-1h-learned8": ("learned", 8.0),
}  # fmt: skip


def checkpoint(runs: Path, family: str, budget: float, seed: int) -> Path | None:
    path = runs / f"{family}-b{budget}-s{seed}" / "checkpoint"
    return path if (path / "model.safetensors").is_file() else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", default="runs/equal_compute/stdlib")
    ap.add_argument("--budget", type=float, default=4.0, help="the runs' CPU-minute budget")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--knobs", default="3,4,6,8")
    ap.add_argument("--max-bytes", type=int, default=131072)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = Path(args.runs)
    knobs = [float(k) for k in args.knobs.split(",")]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam, (patcher, trained_at) in TRAINED.items():
            ckpt = checkpoint(runs, fam, args.budget, seed)
            if ckpt is None:
                print(f"skipped {fam} seed {seed}: no checkpoint in {runs}", flush=True)
                continue
            for target in knobs if fam in KNOBBED else [trained_at]:
                if patcher == "fixed":
                    r = bpb_of_checkpoint(str(ckpt), None, args.max_bytes, 8)
                    bpp, theta = trained_at, ""
                else:
                    r = eval_at_target(str(ckpt), target, None, args.max_bytes, 8)
                    bpp, theta = r["eval_bytes_per_patch"], r["threshold"]
                rows.append({
                    "patcher": patcher, "trained at": trained_at, "evaluated at": target,
                    "seed": seed, "held-out bpb": r["bpb"], "eval bytes/patch": bpp,
                    "theta": theta,
                })  # fmt: skip
                print(rows[-1], flush=True)
    if not rows:
        raise SystemExit(f"bytelm: no checkpoints of {list(TRAINED)} in {runs}")
    for r in rows:  # the cost of the knob: against the same model at the setting it trained at
        same = [
            x["held-out bpb"] for x in rows
            if (x["patcher"], x["trained at"], x["seed"]) == (r["patcher"], r["trained at"], r["seed"])
            and x["evaluated at"] == x["trained at"]
        ]  # fmt: skip
        r["bpb vs trained setting"] = r["held-out bpb"] - same[0] if same else ""
    summary = []  # per setting: the knobbed models against those trained there (seed means)
    for target in knobs:
        line = {"bytes/patch": target}
        for label, keep in (
            ("entropy, knob from 4", lambda r: r["patcher"] == "entropy" and r["trained at"] == 4),
            ("learned, knob from 4", lambda r: r["patcher"] == "learned" and r["trained at"] == 4),
            ("fixed, trained there", lambda r: r["patcher"] == "fixed"),
            ("entropy, trained there", lambda r: r["patcher"] == "entropy"),
            ("learned, trained there", lambda r: r["patcher"] == "learned"),
        ):
            trained_there = "trained there" in label
            vals = [
                r["held-out bpb"] for r in rows
                if keep(r) and r["evaluated at"] == target
                and (not trained_there or r["trained at"] == target)
            ]  # fmt: skip
            line[label] = sum(vals) / len(vals) if vals else ""
        summary.append(line)
    corpus = runs.name
    notes = (
        "Mean held-out bpb over the seeds, per setting: the entropy and learned models trained "
        "at 4 bytes per patch with θ re-calibrated to each setting, and the models trained at "
        "that setting (at 4 the knobbed models are their own trained-there rows):\n\n"
        + markdown_table(summary)
        + f"\n\nCheckpoints: `{runs}`, the {args.budget:g}-CPU-minute runs of "
        f"`benchmarks.equal_compute`; {args.max_bytes} held-out bytes.\n\n"
        f"    python -m benchmarks.knob --runs {runs}\n"
    )
    md = write_results(
        f"knob_{corpus}", rows, f"The compression knob at inference ({corpus})", notes
    )
    print(md.read_text())


if __name__ == "__main__":
    main()
