"""Entropy vs fixed patching at matched mean patch size and equal training compute.

    python -m benchmarks.entropy_vs_fixed --data ../shared/data/tinyshakespeare.txt --split tail
    python -m benchmarks.entropy_vs_fixed --data stdlib

For one corpus:

1. train an entropy model (preset `entropy`, on the corpus's training split);
2. time building its entropy cache over the whole training split, and calibration
   on the held-out split, cold (entropies computed) and warm (from the cache);
3. a compression table: bytes per patch of fixed, space, entropy and BPE patchers
   on the held-out split (`bytelm.evals.compression.compare`);
4. two ByteLMs with the same config, data order, steps and batch: `fixed:K` and
   `entropy` calibrated to K bytes per patch. At the same mean patch size the
   analytic training FLOPs per byte are the same (the entropies are precomputed;
   the entropy model's forward is reported as inference cost). Held-out bpb of
   head 1 is the result; the bytes per patch each model actually used in the eval
   windows is reported next to it.

Results go to benchmarks/results/entropy_vs_fixed_<name>.{md,csv} and
compression_<name>.{md,csv,png}. One seed: differences of a few hundredths of a
bit are within run-to-run noise at this budget.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, machine, write_results
from bytelm import config as C
from bytelm.data import load_corpus
from bytelm.evals import compression as comp
from bytelm.evals.bpb import eval_batches_with_ends
from bytelm.evals.flops import flops_per_byte
from bytelm.patchers import ends_to_lengths, make_patcher
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.train import Trainer
from bytelm.vocab import PAD

# a small ByteLM: local dim 64 (1 layer each side), latent 192 x 3, next-byte head only
MODEL = {
    "model.encoder.dim": "64",
    "model.encoder.n_layers": "1",
    "model.encoder.attn_heads": "4",
    "model.encoder.window": "64",
    "model.decoder.dim": "64",
    "model.decoder.n_layers": "1",
    "model.decoder.attn_heads": "4",
    "model.decoder.window": "64",
    "model.latent.dim": "192",
    "model.latent.n_layers": "3",
    "model.latent.attn_heads": "4",
    "model.out_heads.n": "1",
    "model.ngram.buckets": "4096",
    "data.seq_len": "256",
    "data.batch_size": "16",
    "train.lr": "3e-3",
    "train.warmup_steps": "30",
    "train.progress": "false",
}


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--split", default="hash", choices=["hash", "tail"])
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--name", default="", help="result name (default: the data's stem)")
    ap.add_argument("--k", type=int, default=4, help="the matched mean patch size")
    ap.add_argument("--steps", type=int, default=400, help="ByteLM training steps (each model)")
    ap.add_argument("--entropy-steps", type=int, default=300)
    ap.add_argument("--eval-bytes", type=int, default=131072)
    ap.add_argument("--compare-bytes", type=int, default=262144)
    ap.add_argument(
        "--cache-bytes",
        type=int,
        default=0,
        help="time the cache build on this many positions (0 = the whole training split)",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)"
    )
    ap.add_argument("--runs", default="runs/bench-entropy")
    ap.add_argument("--only-train", action="store_true", help="skip the timings and the table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.name or Path(args.data).stem
    runs = Path(args.runs) / name
    data = {
        "data.sources": args.data,
        "data.split": args.split,
        "data.heldout_fraction": str(args.heldout_fraction),
    }

    # 1. the entropy model
    ecfg = C.override(
        C.load_preset("entropy"),
        {**data, "train.steps": str(args.entropy_steps), "train.out_dir": str(runs / "entropy-model"),
         "train.progress": "false"},
    )  # fmt: skip
    ent_ckpt = runs / "entropy-model" / "checkpoint"
    t0 = time.perf_counter()
    if not (ent_ckpt / "model.safetensors").is_file():
        ent_last = Trainer(ecfg).fit()
    else:  # trained by an earlier run: its last held-out eval
        import json

        lines = (runs / "entropy-model" / "metrics.jsonl").read_text().splitlines()
        ent_last = [r for r in map(json.loads, lines) if "bpb" in r][-1]
    ent_train_s = time.perf_counter() - t0
    print(
        f"entropy model: {ent_ckpt} ({ent_train_s:.0f} s), {ent_last.get('bpb', float('nan')):.3f} bpb"
    )

    base = C.override(C.load_preset("demo"), {**MODEL, **data})
    corpus = load_corpus(base.data)
    if not args.only_train:
        timings_and_table(args, name, corpus, base, ecfg, ent_ckpt)
    train_pair(args, name, corpus, data, runs, ecfg, ent_ckpt, ent_last)


def timings_and_table(args, name, corpus, base, ecfg, ent_ckpt):
    # 2. cache build and calibration timings
    pc = C.PatcherConfig(
        name="entropy", entropy_model=str(ent_ckpt), target_bytes_per_patch=float(args.k)
    )
    patcher = make_patcher(pc)
    train_cache = EntropyCache(corpus["train"], patcher)
    shutil.rmtree(train_cache.dir)  # time a cold build
    train_cache = EntropyCache(corpus["train"], patcher)
    n_build = corpus["train"].stream_len
    if args.cache_bytes:
        n_build = min(n_build, args.cache_bytes)
    t0, c0 = time.perf_counter(), cpu_s()
    if n_build == corpus["train"].stream_len:
        train_cache.build(progress=True)
    else:  # a prefix of a big split: the chunks covering its first n_build positions
        train_cache._fill(train_cache.chunks_of(np.arange(n_build)))
    build_s, build_cpu = time.perf_counter() - t0, cpu_s() - c0
    build_mb = n_build / 1e6
    held_cache = EntropyCache(corpus["heldout"], patcher)
    shutil.rmtree(held_cache.dir)
    t0, c0 = time.perf_counter(), cpu_s()
    cal = patcher.calibrate(corpus["heldout"], float(args.k), max_bytes=None)
    cold_s, cold_cpu = time.perf_counter() - t0, cpu_s() - c0
    t0 = time.perf_counter()
    patcher.calibrate(corpus["heldout"], float(args.k), max_bytes=None)
    warm_s = time.perf_counter() - t0
    cal_mb = cal.n_positions / 1e6
    timing = [
        {"what": "entropy cache build (train split positions)", "MB": build_mb, "wall_s": build_s,
         "cpu_s": build_cpu, "wall_s_per_MB": build_s / build_mb},
        {"what": "calibration, cold (entropies computed)", "MB": cal_mb, "wall_s": cold_s,
         "cpu_s": cold_cpu, "wall_s_per_MB": cold_s / cal_mb},
        {"what": "calibration, warm (entropies cached)", "MB": cal_mb, "wall_s": warm_s,
         "cpu_s": float("nan"), "wall_s_per_MB": warm_s / cal_mb},
    ]  # fmt: skip
    write_results(
        f"entropy_timing_{name}",
        timing,
        f"Entropy cache and calibration time on CPU ({name})",
        f"Entropy model: {ecfg.transformer}, context {patcher.context}. Calibration: "
        f"{cal.method}, {cal.measured_bytes_per_patch:.3f} bytes/patch for target {args.k}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    )

    # 3. the compression table
    specs = [f"fixed:{args.k}", "fixed:8", "space", f"entropy:{args.k}", "entropy:6", "entropy:8"]
    specs += ["bpe:8k", "bpe:32k"]
    rows = comp.compare(
        {name: corpus},
        specs,
        model_cfg=base.model,
        entropy_model=str(ent_ckpt),
        max_bytes=args.compare_bytes,
        seq_len=base.data.seq_len,
        log=print,
    )
    (RESULTS / f"compression_{name}.md").write_text(
        f"# Compression on the held-out split of {name}\n\nMachine: {machine()}\n\n"
        f"FLOPs per byte: the ByteLM of benchmarks/entropy_vs_fixed.py "
        f"(seq_len {base.data.seq_len}).\n\n{comp.to_markdown(rows)}"
    )
    comp.write_csv(rows, RESULTS / f"compression_{name}.csv")
    comp.plot(rows, RESULTS / f"compression_{name}.png")


def train_pair(args, name, corpus, data, runs, ecfg, ent_ckpt, ent_last):
    # 4. fixed vs entropy ByteLMs, same steps, batch, data order, config
    tag = name if args.k == 4 else f"{name}_k{args.k}"
    runs = runs if args.k == 4 else runs / f"k{args.k}"
    results = []
    for kind in ("fixed", "entropy"):
        over = {
            **MODEL,
            **data,
            "model.patcher.name": kind,
            "model.patcher.k": str(args.k),
            "model.patcher.target_bytes_per_patch": str(float(args.k)),
            "model.patcher.entropy_model": str(ent_ckpt),
            "train.steps": str(args.steps),
            "train.eval_every": str(args.steps),
            "train.save_every": str(args.steps),
            "train.eval_bytes": str(args.eval_bytes),
            "train.out_dir": str(runs / f"bytelm-{kind}"),  # never the entropy model's dir
        }
        cfg = C.override(C.load_preset("demo"), over)
        t0, c0 = time.perf_counter(), cpu_s()
        trainer = Trainer(cfg, corpus=corpus)
        last = trainer.fit()
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        model = trainer.raw_model.eval()
        n = p = 0  # the patches the evaluation gave the model: its documents' patches
        held = corpus["heldout"]
        for ids, ends in eval_batches_with_ends(model, held, cfg.data.seq_len, 8, args.eval_bytes):
            lengths = ends_to_lengths(ends, (ids != PAD).sum(-1))
            n, p = n + int(lengths.sum()), p + int((lengths > 0).sum())
        r = n / p
        flops = flops_per_byte(cfg.model, r, cfg.data.seq_len, True)["total"]
        ent_cfg = ecfg.transformer if kind == "entropy" else None
        infer = flops_per_byte(cfg.model, r, cfg.data.seq_len, False, entropy_model=ent_cfg)
        results.append(
            {
                "patcher": f"fixed:{args.k}" if kind == "fixed" else f"entropy:{args.k}",
                "heldout_bpb": last["bpb"],
                "eval_bytes_per_patch": r,
                "train_MFLOPs_per_byte": flops / 1e6,
                "infer_MFLOPs_per_byte": infer["total"] / 1e6,
                "steps": args.steps,
                "train_bytes": args.steps * cfg.data.batch_size * cfg.data.seq_len,
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
        print(results[-1])
    d = results[1]["heldout_bpb"] - results[0]["heldout_bpb"]
    verdict = (
        f"entropy patching is {'better' if d < 0 else 'worse'} than fixed by {abs(d):.3f} bpb "
        f"at {results[1]['eval_bytes_per_patch']:.2f} vs {results[0]['eval_bytes_per_patch']:.2f} "
        "bytes/patch in the eval windows"
    )
    if abs(d) < 0.02:
        verdict += " (a tie: within single-seed noise at this budget)"
    write_results(
        f"entropy_vs_fixed_{tag}",
        results,
        f"Entropy vs fixed patching on {name}: held-out bpb at equal compute",
        f"{verdict}. Same ByteLM config ({MODEL}), data order (seed 0), steps and batch; "
        f"eval on the first {args.eval_bytes:,} held-out bytes. Entropy model: {ecfg.transformer} "
        f"trained {args.entropy_steps} steps ({ent_last.get('bpb', float('nan')):.3f} bpb). "
        "One seed. wall/cpu seconds were measured on a CPU shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores).",
    )
    print(verdict)


if __name__ == "__main__":
    main()
