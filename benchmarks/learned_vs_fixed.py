"""Learned chunking against fixed patching at the same target, steps and data order.

    python -m benchmarks.learned_vs_fixed                  # stdlib, 100 steps, target 4
    python -m benchmarks.learned_vs_fixed --steps 300 --weights 0.03,0.3

The ByteLM of `benchmarks.entropy_vs_fixed` (local 64 wide x 1 layer each side, latent
192 x 3, one head, seq 256, batch 16) is trained in one process with `fixed:K` and with
the learned router (`patcher.name = learned`, target K bytes per patch, ratio loss weight
W; threshold 0.5 in training, H-Net's cut). Reported per run: the bytes per patch over the
training steps (the live rate the progress bar shows), held-out bpb of head 1 and the
bytes per patch in the eval windows, and CPU seconds. Then the knob: each learned model's
threshold is calibrated to K and to each `--knob` target on the training split's
calibration sample (`bytelm.model.chunking.calibrate`, as `bytelm eval
--target-bytes-per-patch` does) and bpb is measured at that θ on held-out bytes; the fixed model is run
at k = each `--knob` target, for comparison.

Results: benchmarks/results/learned_vs_fixed_<data>_<steps>.{md,csv}, with the machine. One
seed, short budgets: a difference of a few hundredths of a bit is within run-to-run noise.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from benchmarks.common import write_results
from benchmarks.entropy_vs_fixed import MODEL
from bytelm import config as C
from bytelm.model.chunking import calibrate
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers import FixedPatcher
from bytelm.train import Trainer
from bytelm.vocab import PAD


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def eval_at(model, split, seq_len, max_bytes, ends_fn=None) -> tuple[float, float]:
    """(held-out bpb of head 1, mean bytes per patch) over the eval windows; `ends_fn(ids)`
    overrides the model's ends (a fixed model run at another k), else a learned model routes."""
    nats = count = n = ends = 0
    with torch.no_grad():
        for ids in split.eval_batches(seq_len, 16, max_bytes=max_bytes):
            e = ends_fn(ids) if ends_fn is not None else model.route(ids)[1]
            out = multi_head_loss(model(ids, ends=e)[:, :, :1], ids, doc_ids(ids))
            nats, count = nats + float(out.nats), count + int(out.count)
            n, ends = n + int((ids != PAD).sum()), ends + int((e & (ids != PAD)).sum())
    return nats / (math.log(2) * count), n / max(ends, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--target", type=float, default=4.0)
    ap.add_argument("--weights", default="0.03,0.3", help="ratio loss weights of learned runs")
    ap.add_argument("--knob", default="8", help="inference targets besides the trained one")
    ap.add_argument("--eval-bytes", type=int, default=65536)
    ap.add_argument("--out", default="runs/bench_learned")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    K = args.target
    base = C.override(
        C.RunConfig(),
        {
            **MODEL,
            "data.sources": args.data,
            "train.steps": str(args.steps),
            "train.eval_every": str(args.steps),
            "train.eval_bytes": str(args.eval_bytes),
            "train.save_every": str(args.steps),
            "train.log_every": "10",
            "model.patcher.max_patch_len": "16",
        },
    )
    runs = [("fixed", {"model.patcher.name": "fixed", "model.patcher.k": str(int(K))})]
    for w in args.weights.split(","):
        runs.append(
            (
                f"learned w={w}",
                {
                    "model.patcher.name": "learned",
                    "model.patcher.target_bytes_per_patch": str(K),
                    "model.patcher.ratio_loss_weight": w,
                },
            )
        )
    rows, curves = [], {}
    knobs = [float(x) for x in args.knob.split(",") if x]
    every = max(args.steps // 10, 1)

    def row(run, at, bpb, bpp, cpu, wall, theta):
        return {
            "run": run, "steps": args.steps, "patching_at_eval": at, "heldout_bpb": bpb,
            "eval_bytes_per_patch": bpp, "theta": theta, "train_cpu_s": cpu, "train_wall_s": wall,
        }  # fmt: skip

    for name, over in runs:
        cfg = C.override(base, {**over, "train.out_dir": f"{args.out}/{name.replace(' ', '_')}"})
        t = Trainer(cfg)
        c0, w0 = cpu_s(), time.perf_counter()
        t.fit()
        cpu, wall = cpu_s() - c0, time.perf_counter() - w0
        heldout, seq = t.corpus["heldout"], cfg.data.seq_len
        model = t.raw_model.eval()
        learned = name != "fixed"
        label = name if learned else f"fixed:{int(K)}"
        curves[label] = [
            (r["step"], r["bytes_per_patch"])
            for r in t.history
            if "bytes_per_patch" in r and (r["step"] == 1 or r["step"] % every == 0)
        ]
        for target in (K, *knobs):
            if learned and target == K:  # as trained: threshold 0.5 (fit ends calibrated to K)
                model.patcher.threshold = 0.5
                bpb, bpp = eval_at(model, heldout, seq, args.eval_bytes)
                rows.append(row(label, "trained (θ = 0.5)", bpb, bpp, cpu, wall, 0.5))
            if learned:
                _, cal = calibrate(model, t.corpus["train"], target, seq)
                bpb, bpp = eval_at(model, heldout, seq, args.eval_bytes)
                rows.append(
                    row(label, f"θ calibrated to {target:g}", bpb, bpp, cpu, wall, cal.threshold)
                )
            else:
                fp = FixedPatcher(int(target), cfg.model.patcher.max_patch_len)
                bpb, bpp = eval_at(model, heldout, seq, args.eval_bytes, fp.ends)
                rows.append(row(label, f"k = {int(target)}", bpb, bpp, cpu, wall, ""))
        print(*rows[-1 - len(knobs) - learned :], sep="\n", flush=True)
    curve_lines = [
        f"- {n}: " + ", ".join(f"{s}: {b:.2f}" for s, b in c) for n, c in curves.items() if c
    ]
    notes = (
        f"Data {args.data}, target {K:g} bytes per patch, {args.steps} steps, seq 256, batch 16, "
        f"one seed; held-out bpb on the first {args.eval_bytes:,} held-out bytes. The learned "
        "runs train with threshold 0.5; the θ-calibrated rows are the same model with θ fitted "
        "to that target on the training split's calibration sample (the inference knob); the fixed model is "
        "also run at another k. CPU seconds are the training run's.\n\n"
        "Training bytes per patch of the learned runs (step: bytes/patch):\n\n"
        + "\n".join(curve_lines)
    )
    name = args.data.replace("/", "_").split(".")[0]
    path = write_results(
        f"learned_vs_fixed_{name}_{args.steps}",
        rows,
        f"Learned chunking vs fixed:{int(K)} on {args.data}",
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
