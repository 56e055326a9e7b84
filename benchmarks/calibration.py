"""Calibration error out of sample: does θ, fitted to a target bytes per patch, keep it on text
the calibration never saw?

    nice -n 15 python -m benchmarks.calibration                   # stdlib and tinyshakespeare
    nice -n 15 python -m benchmarks.calibration --corpora stdlib --targets 4,6

For each corpus, an entropy model is trained (preset `entropy`, on the corpus's training
split; reused when already there), and for each target θ is calibrated as the library does
(`EntropyPatcher.calibrate`: sample 0 of the training split, `CALIBRATION_BYTES` positions
in 256-position windows). The mean bytes per patch at that θ is then measured on

- the calibration sample itself (in sample: within 2% by construction),
- a third sample: sample 1 of the training split, as many positions, disjoint from sample 0,
- the held-out split (windows spread over it, up to `--heldout-bytes` positions; the split
  bpb is reported on, which the entropy model did not train on either),

and the error is mean / target - 1. Results: benchmarks/results/calibration.{md,csv}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import write_results
from bytelm import config as C
from bytelm.checkpoint import build_patcher
from bytelm.data import load_corpus
from bytelm.patchers.entropy import CALIBRATION_TOL, mean_bytes_per_patch
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.train import Trainer

SHAKESPEARE = "/work/shared/data/tinyshakespeare.txt"
# name -> (sources, split): tinyshakespeare is one file, so it is held out by position
CORPORA = {"stdlib": ("stdlib", "hash"), "tinyshakespeare": (SHAKESPEARE, "tail")}


def entropy_model(name: str, data: dict, runs: Path, steps: int) -> Path:
    """The corpus's entropy model checkpoint, trained first if missing."""
    out = runs / name / "entropy-model"
    ckpt = out / C.CHECKPOINT_DIR
    if not (ckpt / "model.safetensors").is_file():
        cfg = C.override(
            C.load_preset("entropy"),
            {**data, "train.steps": str(steps), "train.out_dir": str(out),
             "train.progress": "false"},
        )  # fmt: skip
        t0 = time.perf_counter()
        last = Trainer(cfg).fit()
        print(f"{name}: entropy model {ckpt}, {last.get('bpb', float('nan')):.3f} bpb, "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return ckpt


def rows_for(name, corpus, ckpt, targets, mode, max_patch_len, heldout_bytes) -> list[dict]:
    rows = []
    for target in targets:
        pc = C.PatcherConfig(
            name="entropy",
            entropy_model=str(ckpt),
            target_bytes_per_patch=target,
            mode=mode,
            max_patch_len=max_patch_len,
        )
        p = build_patcher(pc)
        cal = p.calibrate(corpus["train"], target)  # the library's calibration: sample 0
        ids, H = EntropyCache(corpus["train"], p).calibration_sample(cal.n_positions, 1)
        third = mean_bytes_per_patch(ids, H, mode, p.threshold, max_patch_len)
        h_ids, h_H = EntropyCache(corpus["heldout"], p).calibration_sample(heldout_bytes)
        held = mean_bytes_per_patch(h_ids, h_H, mode, p.threshold, max_patch_len)
        rows.append(
            {
                "corpus": name,
                "mode": mode,
                "target": target,
                "theta": cal.threshold,
                "calibration_bpp": cal.measured_bytes_per_patch,
                "calibration_err_%": 100 * (cal.measured_bytes_per_patch / target - 1),
                "third_bpp": third,
                "third_err_%": 100 * (third / target - 1),
                "heldout_bpp": held,
                "heldout_err_%": 100 * (held / target - 1),
                "positions": cal.n_positions,
                "heldout_positions": h_ids.numel(),
            }
        )
        r = rows[-1]
        print(f"{name:>16} {mode} target {target:g}: calibration {r['calibration_err_%']:+.2f}%, "
              f"third {r['third_err_%']:+.2f}%, held-out {r['heldout_err_%']:+.2f}%")  # fmt: skip
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpora", default="stdlib,tinyshakespeare")
    ap.add_argument("--targets", default="2,3,4,6,8")
    ap.add_argument("--modes", default="global")
    ap.add_argument("--max-patch-len", type=int, default=C.MAX_PATCH_LEN)
    ap.add_argument("--entropy-steps", type=int, default=400)
    ap.add_argument("--heldout-bytes", type=int, default=C.CALIBRATION_BYTES)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--runs", default="runs/bench-calibration")
    ap.add_argument("--name", default="calibration", help="result file name")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [float(t) for t in args.targets.split(",")]
    rows = []
    t0 = time.perf_counter()
    for name in args.corpora.split(","):
        sources, split = CORPORA[name]
        data = {"data.sources": sources, "data.split": split}
        ckpt = entropy_model(name, data, Path(args.runs), args.entropy_steps)
        corpus = load_corpus(C.override(C.RunConfig(), data).data)
        for mode in args.modes.split(","):
            rows += rows_for(
                name, corpus, ckpt, targets, mode, args.max_patch_len, args.heldout_bytes
            )
    worst = max(abs(r[k]) for r in rows for k in ("third_err_%", "heldout_err_%"))
    notes = (
        f"θ calibrated on sample 0 of the training split ({C.CALIBRATION_BYTES:,} positions in "
        "256-position windows dealt from a fixed permutation of the split); `third`: sample 1 "
        "of the training split (disjoint, as many positions); `heldout`: windows spread over the "
        f"held-out split (up to {args.heldout_bytes:,} positions; stdlib: hash split by "
        "document, tinyshakespeare: the last 10% of the file). err = mean bytes per patch / "
        f"target - 1. Entropy model: preset `entropy`, {args.entropy_steps} steps on each "
        f"corpus's training split. max_patch_len {args.max_patch_len}. Worst out-of-sample "
        f"error: {worst:.2f}% (the promise: {100 * CALIBRATION_TOL:.0f}%). "
        f"Total time {time.perf_counter() - t0:.0f} s.\n\n"
        f"`nice -n 15 python -m benchmarks.calibration --corpora {args.corpora} --targets "
        f"{args.targets} --modes {args.modes}`"
    )
    print(write_results(args.name, rows, "Calibration error out of sample", notes))


if __name__ == "__main__":
    main()
