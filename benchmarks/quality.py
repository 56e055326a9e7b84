"""Held-out bits-per-byte after a fixed compute budget, next to gzip and xz.

    python -m benchmarks.quality --data ../shared/data/tinyshakespeare.txt --split tail --minutes 10
    python -m benchmarks.quality --data stdlib --minutes 10

The budget is in minutes of the 2-core machine's time, counted as this
process's CPU time divided by the torch thread count, so that other work on a
shared machine does not shrink the training. The number of steps is set from
the measured cost of a few warm-up steps, and the cosine schedule runs to it.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import markdown_table, write_results
from bytelm import config as C
from bytelm.demo import compressor_bpb, heldout_bytes
from bytelm.train import Trainer


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--split", default="hash", choices=["hash", "tail"])
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train exactly this many steps instead of deriving them from --minutes "
        "(for a shared machine: measure the idle step time separately and report both)",
    )
    ap.add_argument("--eval-bytes", type=int, default=0, help="0 = the whole held-out split")
    ap.add_argument("--name", default="", help="result file name (default: quality_<data>)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides as key=value")
    args = ap.parse_args(argv)

    over = {
        "data.sources": args.data,
        "data.split": args.split,
        "data.heldout_fraction": str(args.heldout_fraction),
        "train.eval_bytes": str(args.eval_bytes),
        "train.out_dir": f"runs/quality-{args.name or 'run'}",
        "train.progress": "false",
    }
    over.update(kv.split("=", 1) for kv in args.overrides)
    cfg = C.override(C.load_preset(args.preset), over)

    # measure the cost of a step on a throwaway trainer
    threads = torch.get_num_threads()
    probe = Trainer(C.override(cfg, {"train.eval_every": "100000", "train.save_every": "100000"}))
    probe.train_step()
    c0 = time.process_time()
    for _ in range(3):
        probe.train_step()
    step_s = (time.process_time() - c0) / 3 / threads
    steps = args.steps or max(10, int(args.minutes * 60 / step_s * 0.95))  # room for evaluation
    del probe

    cfg = C.override(cfg, {"train.steps": str(steps), "train.eval_every": str(max(1, steps // 4))})
    print(f"{steps} steps; a step measured ~{step_s:.2f}s of machine time here")
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg)
    trainer.fit()
    wall, machine = time.perf_counter() - t0, (time.process_time() - c0) / threads
    ev = trainer.evaluate()
    raw = heldout_bytes(trainer.corpus["heldout"], cfg.train.eval_bytes or None)
    comp = compressor_bpb(raw)
    name = args.name or (
        "quality_"
        + ("stdlib" if args.data == "stdlib" else args.data.rsplit("/", 1)[-1].split(".")[0])
    )
    rows = [
        {
            "model": f"bytelm ({args.preset}, {steps} steps)",
            "held-out bpb": round(ev["bpb"], 4),
            "train bytes": steps * cfg.data.batch_size * cfg.data.seq_len,
            "minutes (machine)": round(machine / 60, 2),
            "minutes (wall)": round(wall / 60, 2),
        }
    ]
    for k, v in comp.items():
        rows.append(
            {
                "model": k,
                "held-out bpb": round(v, 4),
                "train bytes": "",
                "minutes (machine)": "",
                "minutes (wall)": "",
            }
        )
    print(markdown_table(rows))
    notes = (
        f"Data `{args.data}` (split `{args.split}`, held-out fraction {args.heldout_fraction}), "
        f"{ev['eval_bytes']:,} held-out bytes scored; compressors see the same bytes without BOS/EOS. "
        f"Overrides: {dict(kv.split('=', 1) for kv in args.overrides) or 'none'}."
    )
    print(write_results(name, rows, "Held-out bits per byte after a fixed budget", notes))


if __name__ == "__main__":
    main()
