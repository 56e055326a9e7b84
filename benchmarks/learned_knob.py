"""The compression knob of a learned router: train at one target, evaluate at others.

    nice -n 15 python -m benchmarks.learned_knob                 # stdlib, 400 steps, target 4
    nice -n 15 python -m benchmarks.learned_knob --steps 200 --knobs 3,4,6,8

One learned ByteLM (the model of `benchmarks.entropy_vs_fixed`: local 64 wide x 1 layer each
side, latent 192 x 3, one head, seq 256, batch 16; `patcher.name = learned`, ratio loss
weight W toward the target) is trained with one torch thread. Then, on the first
`--eval-bytes` held-out bytes:

- held-out bpb (head 1) and the bytes per patch the router gives, at the training θ (0.5)
  and at θ calibrated to each `--knobs` target on the training split's calibration sample
  (`bytelm.model.chunking.calibrate`, as the end of training and `bytelm eval
  --target-bytes-per-patch` do);
- boundary statistics at each of these θ: mean, median, p95 and max patch length, the share
  of patches cut at max_patch_len, and where the boundaries fall: the closing byte is
  whitespace, a space or tab of a line's indentation, a word character followed by another
  (inside a word), or inside a run of one repeated byte (t, t-1, t-2 equal); each next to
  the share of all bytes of that kind, so that a reader can tell preference from frequency.
  A window's first byte (a forced end: no previous state) and BOS are not counted;
- the histogram of patch lengths (share of patches of each length);
- three control rows at θ = 0.5 (`bytelm.evals.latent`): the latent output zeroed (every
  byte reads u = 0), replaced by its mean over the batch's patch slots (a constant vector,
  the same for every patch), and taken from another window of the batch. They say how much
  the latent path, the only part the patching changes, contributes to the bpb, and how much
  of that depends on what the patches hold.

`--from-run DIR` evaluates the run a previous call trained in DIR (its checkpoint and
metrics.jsonl) instead of training again.

Results: benchmarks/results/learned_knob.{md,csv} and learned_knob_lengths.csv, with the
machine. One seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table, write_results
from benchmarks.entropy_vs_fixed import MODEL
from bytelm import config as C
from bytelm.checkpoint import load_model
from bytelm.data import load_corpus
from bytelm.evals.latent import ABLATIONS, ablated_latent
from bytelm.model.chunking import calibrate
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers import ends_to_lengths
from bytelm.train import Trainer
from bytelm.vocab import BOS, PAD

WS = np.array([32, 9, 10, 13])
WORD = np.array([c for c in range(256) if chr(c).isascii() and (chr(c).isalnum() or c == 95)])


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def byte_kinds(ids: np.ndarray) -> dict[str, np.ndarray]:
    """ids (B, T) -> masks (B, T) of the byte kinds the statistics count."""
    B, T = ids.shape
    ws, word = np.isin(ids, WS), np.isin(ids, WORD)
    nxt = np.concatenate([ids[:, 1:], np.full((B, 1), PAD)], 1)
    run = np.zeros_like(ws)
    run[:, 2:] = (ids[:, 2:] == ids[:, 1:-1]) & (ids[:, 1:-1] == ids[:, :-2])
    indent = np.zeros_like(ws)  # a space or tab with only spaces and tabs since the last newline
    for r in range(B):
        at_start = False
        for t in range(T):
            b = ids[r, t]
            if b == 10 or b == BOS:
                at_start = True
            elif b in (32, 9):
                indent[r, t] = at_start
            else:
                at_start = False
    return {
        "whitespace": ws,
        "indentation": indent,
        "inside_word": word & np.isin(nxt, WORD),
        "run": run,
    }


@torch.no_grad()
def evaluate(model, split, seq_len: int, max_bytes: int) -> tuple[dict, np.ndarray]:
    """Held-out bpb, bytes per patch and boundary statistics of the model at its θ, and the
    patch lengths."""
    nats = count = n_bytes = n_ends = 0
    lengths, counted, kinds_all, ends_all = [], [], [], []
    for ids in split.eval_batches(seq_len, 16, max_bytes=max_bytes):
        logits, r = model(ids, routing=True)
        out = multi_head_loss(logits[:, :, :1], ids, doc_ids(ids))
        nats, count = nats + float(out.nats), count + int(out.count)
        real = ids != PAD
        n_bytes, n_ends = n_bytes + int(real.sum()), n_ends + int((r.ends & real).sum())
        lens = ends_to_lengths(r.ends, real.sum(-1))
        lengths.append(lens[lens > 0].numpy())
        c = real.clone()
        c[:, 0] = False
        c &= ids != BOS
        counted.append(c.numpy().ravel())
        ends_all.append((r.ends & c).numpy().ravel())
        kinds_all.append({k: v.ravel() for k, v in byte_kinds(ids.numpy()).items()})
    lengths, counted, ends = (
        np.concatenate(lengths),
        np.concatenate(counted),
        np.concatenate(ends_all),
    )
    stats = {
        "heldout_bpb": nats / (math.log(2) * count),
        "bytes_per_patch": n_bytes / n_ends,
        "mean_len": float(lengths.mean()),
        "median_len": float(np.median(lengths)),
        "p95_len": float(np.percentile(lengths, 95)),
        "max_len": int(lengths.max()),
        "pct_at_max_len": 100 * float((lengths == model.patcher.max_patch_len).mean()),
    }
    for k in kinds_all[0]:
        kind = np.concatenate([d[k] for d in kinds_all])
        stats[f"pct_ends_{k}"] = 100 * float((ends & kind).sum() / max(ends.sum(), 1))
        stats[f"pct_bytes_{k}"] = 100 * float((counted & kind).sum() / max(counted.sum(), 1))
    return stats, lengths


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--target", type=float, default=4.0)
    ap.add_argument("--weight", default="0.03", help="ratio loss weight (the default config's)")
    ap.add_argument("--knobs", default="3,4,6,8", help="inference targets")
    ap.add_argument("--eval-bytes", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_learned_knob")
    ap.add_argument("--from-run", default="", help="evaluate this earlier run instead of training")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = C.override(
        C.RunConfig(),
        {
            **MODEL,
            "data.sources": args.data,
            "train.steps": str(args.steps),
            "train.eval_every": str(args.steps),
            "train.eval_bytes": str(args.eval_bytes),
            "train.save_every": str(args.steps),
            "train.log_every": "10",
            "train.seed": str(args.seed),
            "train.out_dir": args.out,
            "model.patcher.name": "learned",
            "model.patcher.target_bytes_per_patch": str(args.target),
            "model.patcher.ratio_loss_weight": args.weight,
            "model.patcher.max_patch_len": "16",
        },
    )
    if args.from_run:
        model, cfg = load_model(Path(args.from_run) / "checkpoint")
        corpus = load_corpus(cfg.data, progress=False)
        history = [json.loads(line) for line in open(Path(args.from_run) / "metrics.jsonl")]
        train_cpu, train_wall = history[-1]["cpu_s"], history[-1]["time_s"]
        args.steps, args.seed = history[-1]["step"], cfg.train.seed
        args.target = cfg.model.patcher.target_bytes_per_patch
        args.weight = f"{cfg.model.patcher.ratio_loss_weight:g}"
    else:
        t = Trainer(cfg)
        c0, w0 = cpu_s(), time.perf_counter()
        t.fit()
        train_cpu, train_wall = cpu_s() - c0, time.perf_counter() - w0
        model, corpus, history = t.raw_model, t.corpus, t.history
    model.eval()
    heldout, seq = corpus["heldout"], cfg.data.seq_len
    every = max(args.steps // 10, 1)
    curve = [
        f"{r['step']}: {r['bytes_per_patch']:.2f}"
        for r in history
        if "bytes_per_patch" in r and (r["step"] == 1 or r["step"] % every == 0)
    ]

    rows, hist = [], {}
    c1 = cpu_s()
    settings = [("trained (θ = 0.5)", None)] + [
        (f"θ calibrated to {float(k):g}", float(k)) for k in args.knobs.split(",") if k
    ]
    settings.append(("θ = 0.5, latent output zeroed", "zeroed"))
    settings.append(("θ = 0.5, latent output replaced by its mean", "mean"))
    settings.append(("θ = 0.5, latent output of another window", "shuffled"))
    for label, target in settings:
        ablation = target if target in ABLATIONS else None
        if target is None or ablation:
            model.patcher.threshold = 0.5
            cal_bpp = ""
        else:
            _, cal = calibrate(model, corpus["train"], target, seq)
            cal_bpp = cal.measured_bytes_per_patch
        with ablated_latent(model, ablation) if ablation else nullcontext():
            stats, lengths = evaluate(model, heldout, seq, args.eval_bytes)
        bpb = stats.pop("heldout_bpb")
        base = bpb if not rows else rows[0]["_bpb"]
        rows.append({"patching_at_eval": label, "theta": model.patcher.threshold,
                     "calibrated_bytes_per_patch": cal_bpp, "heldout_bpb": f"{bpb:.4f}",
                     "bpb_vs_trained": f"{bpb - base:+.4f}", "_bpb": bpb, **stats})  # fmt: skip
        if not ablation:
            hist[label] = np.bincount(lengths, minlength=17)[1:17] / len(lengths)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()},
              flush=True)  # fmt: skip
    eval_cpu = cpu_s() - c1
    for r in rows:
        del r["_bpb"]

    with open(RESULTS / "learned_knob_lengths.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patching_at_eval", *range(1, 17)])
        for label, h in hist.items():
            w.writerow([label, *(f"{x:.4f}" for x in h)])
    hist_rows = [
        {"patching_at_eval": label, **{str(n): f"{100 * x:.1f}" for n, x in enumerate(h, 1)}}
        for label, h in hist.items()
    ]
    notes = (
        f"Data {args.data}, one learned model trained {args.steps} steps (seq 256, batch 16, "
        f"seed {args.seed}) at target {args.target:g} bytes per patch, ratio loss weight "
        f"{args.weight}, max_patch_len 16, one torch thread: {train_cpu:.0f} CPU-s "
        f"({train_wall:.0f} s wall, a shared machine) to train, {eval_cpu:.0f} CPU-s for the "
        "rows. Held-out "
        f"rows over the first {args.eval_bytes:,} held-out bytes (bpb of head 1). θ is "
        "calibrated on the training split's calibration sample, never on the held-out bytes; "
        "`calibrated_bytes_per_patch` is the mean there, `bytes_per_patch` the held-out one "
        "(a window's first byte always ends a patch, as in training).\n\n"
        "`pct_ends_X`: share of the boundaries whose closing byte is of kind X; "
        "`pct_bytes_X`: share of all bytes of that kind (the rate a boundary placed at random "
        "would show). Kinds: whitespace (space, tab, newline, CR), indentation (a space or tab "
        "with only spaces and tabs since the line's start), inside_word (a word character "
        "followed by another), run (the byte equals the two before it).\n\n"
        "Training bytes per patch (step: bytes/patch): " + ", ".join(curve) + "\n\n"
        "Patch lengths (% of patches of each length, 1..16; also learned_knob_lengths.csv):\n\n"
        + markdown_table(hist_rows)
    )
    path = write_results(
        "learned_knob",
        rows,
        f"The knob of a learned router: trained at {args.target:g}, evaluated at "
        f"{args.knobs.replace(',', ', ')} bytes per patch ({args.data})",
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
