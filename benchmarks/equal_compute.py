"""Flat byte transformers against ByteLMs at equal compute: does the hierarchy pay?

    python -m benchmarks.equal_compute --data stdlib --budgets 1.5,4
    python -m benchmarks.equal_compute --data ../shared/data/tinyshakespeare.txt --split tail
    python -m benchmarks.equal_compute --data stdlib --seeds 1 --only flat-128x4,lm-1h   # 2nd seed
    python -m benchmarks.equal_compute --data stdlib --flops 12 --only flat-96x3,lm-lean-k6
    python -m benchmarks.equal_compute --data stdlib --flops 40 --only flat-96x3,lm-lean-k4
    python -m benchmarks.equal_compute --step-cost 6 --only lm-1h-96,lm-8det-96,flat-96x3
    python -m benchmarks.equal_compute --report        # tables and plot from what has run

Every run gets a budget in CPU-minutes of one thread (`time.process_time`, one torch thread
per run, so runs side by side on a 2-core machine each get their own core) or, with
`--flops`, in training TFLOPs. A CPU budget's step count comes from the measured CPU cost of
a few probe steps; a FLOP budget's from the analytic training FLOPs per byte at the
patcher's nominal bytes per patch (k, or the target), with no probe and no noise. The
cosine schedule runs to that step count; the run then records the CPU time it really took and its training FLOPs (analytic,
`bytelm.evals.flops`, at the bytes per patch it reached on held-out text; a frozen entropy
model's forward counted too). Held-out bpb is head 1's on the first `--eval-bytes` bytes of
the held-out split. Runs with several output heads also report the teacher-forced bytes
per forward pass of self-speculative decoding on the same bytes: 1 + the number of leading
draft heads (2, 3, ...) whose greedy byte equals the true one.

The families (all seq 256, batch 16, lr 3e-3, draft heads trained at every position, the
`demo` preset otherwise):

    flat-*     ByteTransformer at four sizes (width x layers)
    lm-1h      ByteLM, local 128 (encoder 1 layer, decoder 2), latent 256 x 4, fixed:4, one
               head: the decoder's output (out_heads.kind = mlp, n = 1)
    lm-1h-96   the same with 96-wide local layers
    lm-1h-64   the same with 64-wide local layers, a 192 x 3 latent and 4096 n-gram buckets
    lm-1h-L384 the same with a 384-wide latent
    lm-4mlp    lm-1h with 4 heads, heads 2-4 residual MLPs, loss weights 1, .25, .25, .25
    lm-4mlp-64 lm-1h-64 with those 4 heads
    lm-4det-96 lm-1h-96 with 4 residual MLP heads whose losses train only their own layers
               (out_heads.draft_grad = false): head 1 trains as in a one-head model
    lm-4mlp-eq the same, equal loss weights
    lm-4block  lm-1h with 4 heads that are each a transformer block (the design before
               out_heads.kind existed), equal weights
    lm-8det-96 lm-4det-96 with 8 heads (the drafting benchmark's model: `benchmarks.drafting`)
    lm-8det-96-s25  lm-8det-96 with its draft heads trained at a random quarter of the
               positions (out_heads.draft_sample = 0.25)
    lm-1h-space / -entropy / -learned   lm-1h with another patcher at about 4 bytes/patch
    lm-1h-k8 / -entropy8 / -learned8    lm-1h at 8 bytes/patch: fixed:8, entropy, learned
    lm-lean-k4 / -k6 / -k8   FLOP-lean ByteLMs, about a flat 96 x 3's training FLOPs per byte:
               local 64 (encoder 1 layer, decoder 1), latent 192 x 3 at fixed:4, 256 x 2 at
               fixed:6, 256 x 4 at fixed:8; one head
    lm-core-k4 / -k8   the best flat model's byte layers (96 wide, 16-byte windows, hashed
               3..8-gram embeddings: flat-96x3-w16-ng) as encoder 1 + decoder 1, its middle
               layer traded for a latent of about the same FLOPs per byte: 128 x 2 over
               fixed:4, 192 x 2 over fixed:8; -k4-L192 a 192 x 2 latent over fixed:4;
               -k4-w64 64-byte local windows; -8h that one with 8 heads drafting as in
               lm-8det-96-s25 (the drafting benchmark's lm-core model), -8c with chain
               heads (each draft reads the drafts before it), -8h-s10 the -8h model with
               its draft heads trained at a tenth of the positions (draft_sample = 0.1),
               -4h-s10 the same with 4 heads; lm-core3-k8 keeps all three byte layers;
               -space / -entropy8 / -learned8 the -k8 model with space patches (about 7.8
               bytes each on stdlib) / entropy / learned patches at a target of 8
    *-w16 / -w8  with local attention windows of 16 / 8 bytes: context beyond a few
               patches must come through the latent (flat-96x3-w16: the flat model's own
               attention windowed, the baseline that says whether context beyond 16 bytes
               pays at all at a budget; -ng adds the ByteLM's hashed 3..8-gram embeddings)
    *-w256     with local attention windows of 256 bytes (the demo preset's are 64): the
               whole training window, as the flat models see it, at no extra CPU time here
    *-nd3      with n-gram dropout 0.3 (each table lookup dropped in training: model.ngram.dropout,
               transformer.ngram_dropout), against memorised n-grams of a small corpus
    *-do / -do2 / -do3  with residual dropout 0.1 / 0.2 / 0.3 in every stack and, for a ByteLM, on the
               n-gram lookups (model.ngram.dropout): for many epochs of a small corpus

Results append to benchmarks/results/equal_compute_runs.jsonl (a rerun skips what is
there); `--report` writes equal_compute.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from benchmarks.common import RESULTS, machine, markdown_table, write_results

RUNS_FILE = RESULTS / "equal_compute_runs.jsonl"
LOCAL = lambda d, enc, dec: {
    "model.encoder.dim": str(d), "model.encoder.n_layers": str(enc),
    "model.decoder.dim": str(d), "model.decoder.n_layers": str(dec),
}  # fmt: skip
ONE_HEAD = {"model.out_heads.n": "1", "model.out_heads.kind": "mlp"}
LM = {**LOCAL(128, 1, 2), "model.latent.dim": "256", "model.latent.n_layers": "4", **ONE_HEAD}
FIXED4 = {"model.patcher.name": "fixed", "model.patcher.k": "4"}
LM64 = {**LOCAL(64, 1, 2), "model.latent.dim": "192", "model.latent.n_layers": "3",
        "model.ngram.buckets": "4096"}  # fmt: skip
MLP4 = {"model.out_heads.n": "4", "model.out_heads.weights": "1,.25,.25,.25"}
DET4 = {"model.out_heads.n": "4", "model.out_heads.draft_grad": "false"}
FLAT = lambda d, n: {
    "arch": "transformer",
    "transformer.dim": str(d),
    "transformer.n_layers": str(n),
}
LATENT = lambda d, n: {"model.latent.dim": str(d), "model.latent.n_layers": str(n)}
FIXED = lambda k: {"model.patcher.name": "fixed", "model.patcher.k": str(k)}
WINDOW = lambda w: {"model.encoder.window": str(w), "model.decoder.window": str(w)}
# the best flat model's byte layers (96 wide, 16-byte windows, hashed n-grams), encoder 1 +
# decoder 1: its middle layer traded for a latent over patches that costs about as much per byte
CORE = {**LM, **LOCAL(96, 1, 1), **WINDOW(16)}
DROP = lambda where, p: {  # residual dropout in every stack (and on the n-gram lookups)
    f"{where}.{k}dropout": str(p)
    for k in (("",) if where == "transformer" else ("encoder.", "latent.", "decoder.", "ngram."))
}  # fmt: skip
FAMILIES = {
    "flat-64x4": FLAT(64, 4),
    "flat-96x3": FLAT(96, 3),
    "flat-128x4": FLAT(128, 4),
    "flat-192x4": FLAT(192, 4),
    "lm-1h": {**LM, **FIXED4},
    "lm-1h-96": {**LM, **FIXED4, **LOCAL(96, 1, 2)},
    "lm-1h-64": {**LM, **FIXED4, **LM64},
    "lm-4mlp-64": {**LM, **FIXED4, **LM64, **MLP4},
    "lm-4det-96": {**LM, **FIXED4, **LOCAL(96, 1, 2), **DET4},
    "lm-8det-96": {**LM, **FIXED4, **LOCAL(96, 1, 2), **DET4, "model.out_heads.n": "8"},
    "lm-1h-L384": {**LM, **FIXED4, "model.latent.dim": "384", "model.latent.attn_heads": "6"},
    "lm-4mlp": {**LM, **FIXED4, **MLP4},
    "lm-4mlp-eq": {**LM, **FIXED4, "model.out_heads.n": "4"},
    "lm-4block": {**LM, **FIXED4, "model.out_heads.n": "4", "model.out_heads.kind": "block"},
    "lm-1h-space": {**LM, "model.patcher.name": "space"},
    "lm-1h-entropy": {**LM, "model.patcher.name": "entropy", "model.patcher.target_bytes_per_patch": "4"},
    "lm-1h-learned": {**LM, "model.patcher.name": "learned", "model.patcher.target_bytes_per_patch": "4"},
    "lm-1h-k8": {**LM, "model.patcher.name": "fixed", "model.patcher.k": "8"},
    "lm-1h-entropy8": {**LM, "model.patcher.name": "entropy", "model.patcher.target_bytes_per_patch": "8"},
    "lm-1h-learned8": {**LM, "model.patcher.name": "learned", "model.patcher.target_bytes_per_patch": "8"},
    "lm-lean-k4": {**LM, **LOCAL(64, 1, 1), "model.latent.dim": "192", "model.latent.n_layers": "3", **FIXED4},
    "lm-lean-k6": {**LM, **LOCAL(64, 1, 1), "model.latent.n_layers": "2", "model.patcher.name": "fixed", "model.patcher.k": "6"},
    "lm-lean-k8": {**LM, **LOCAL(64, 1, 1), "model.patcher.name": "fixed", "model.patcher.k": "8"},
    "lm-8det-96-s25": {**LM, **FIXED4, **LOCAL(96, 1, 2), **DET4, "model.out_heads.n": "8", "model.out_heads.draft_sample": "0.25"},
    "lm-1h-96-w256": {**LM, **FIXED4, **LOCAL(96, 1, 2), **WINDOW(256)},
    "lm-lean-k4-w256": {**LM, **LOCAL(64, 1, 1), "model.latent.dim": "192", "model.latent.n_layers": "3", **FIXED4, **WINDOW(256)},
    "flat-96x3-do": {**FLAT(96, 3), **DROP("transformer", 0.1)},
    "flat-96x3-w16": {**FLAT(96, 3), "transformer.window": "16"},
    "flat-96x3-w16-ng": {**FLAT(96, 3), "transformer.window": "16", "transformer.ngram_ns": "3,4,5,6,7,8"},
    "flat-96x3-w16-ng-nd3": {**FLAT(96, 3), "transformer.window": "16", "transformer.ngram_ns": "3,4,5,6,7,8",
                             "transformer.ngram_dropout": "0.3"},
    "lm-1h-96-do": {**LM, **FIXED4, **LOCAL(96, 1, 2), **DROP("model", 0.1)},
    "lm-lean-k4-do2": {**LM, **LOCAL(64, 1, 1), "model.latent.dim": "192", "model.latent.n_layers": "3", **FIXED4, **DROP("model", 0.2)},
    "lm-1h-96-do2": {**LM, **FIXED4, **LOCAL(96, 1, 2), **DROP("model", 0.2)},
    "lm-1h-96-w16": {**LM, **FIXED4, **LOCAL(96, 1, 2), **WINDOW(16)},
    "lm-1h-96-w8": {**LM, **FIXED4, **LOCAL(96, 1, 2), **WINDOW(8)},
    "lm-core-k8": {**CORE, **LATENT(192, 2), **FIXED(8)},
    "lm-core-k4": {**CORE, **LATENT(128, 2), **FIXED(4)},
    "lm-core-k4-L192": {**CORE, **LATENT(192, 2), **FIXED(4)},
    "lm-core-k4-w64": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4)},
    "lm-core-k4-w64-nd3": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4), "model.ngram.dropout": "0.3"},
    "lm-core-8h": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4), **DET4,
                   "model.out_heads.n": "8", "model.out_heads.draft_sample": "0.25"},
    "lm-core-8c": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4), **DET4,
                   "model.out_heads.n": "8", "model.out_heads.draft_sample": "0.25",
                   "model.out_heads.kind": "chain"},
    "lm-core-8h-s10": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4), **DET4,
                       "model.out_heads.n": "8", "model.out_heads.draft_sample": "0.1"},
    "lm-core-4h-s10": {**CORE, **WINDOW(64), **LATENT(128, 2), **FIXED(4), **DET4,
                       "model.out_heads.draft_sample": "0.1"},
    # the space patcher has no knob: its target is only the nominal rate a FLOP budget's step
    # count is computed at (held-out stdlib: 7.76 bytes per patch)
    "lm-core-space": {**CORE, **LATENT(192, 2),
                      "model.patcher.name": "space", "model.patcher.target_bytes_per_patch": "7.8"},
    "lm-core-entropy8": {**CORE, **LATENT(192, 2),
                         "model.patcher.name": "entropy", "model.patcher.target_bytes_per_patch": "8"},
    "lm-core-learned8": {**CORE, **LATENT(192, 2),
                         "model.patcher.name": "learned", "model.patcher.target_bytes_per_patch": "8"},
    "lm-core3-k8": {**LM, **LOCAL(96, 1, 2), **WINDOW(16), **LATENT(192, 2), **FIXED(8)},
    "lm-lean-k4-do3": {**LM, **LOCAL(64, 1, 1), "model.latent.dim": "192", "model.latent.n_layers": "3", **FIXED4, **DROP("model", 0.3)},
}  # fmt: skip
SMALL_BUDGET = [
    "flat-96x3",
    "flat-128x4",
    "flat-192x4",
    "lm-1h",
    "lm-1h-96",
    "lm-1h-L384",
    "lm-4mlp",
]
COMMON = {
    "data.seq_len": "256", "data.batch_size": "16", "train.lr": "3e-3", "train.warmup_steps": "30",
    "train.progress": "false", "train.keep_checkpoints": "1", "train.compile": "off",
    "model.out_heads.draft_sample": "1",  # the families as first run; -s25 samples
}  # fmt: skip


def corpus_name(data: str) -> str:
    return "stdlib" if data == "stdlib" else Path(data).stem


def data_overrides(args) -> dict:
    return {"data.sources": args.data, "data.split": args.split, "data.heldout_fraction": "0.1"}


def entropy_model(args, runs: Path) -> str:
    """The corpus's entropy model (the `entropy` preset, trained once, outside any budget)."""
    import torch

    from bytelm import config as C
    from bytelm.train import Trainer

    torch.set_num_threads(1)
    out = runs / "entropy-model"
    if not (out / "checkpoint" / "model.safetensors").exists():
        over = {**data_overrides(args), "train.out_dir": str(out), "train.progress": "false"}
        Trainer(C.override(C.load_preset("entropy"), over)).fit()
    return str(out / "checkpoint")


def teacher_forced(model, split, seq_len: int, max_bytes: int) -> dict:
    """Bytes per forward pass of greedy self-speculative decoding along the true text (with
    every draft head, and `tf_by_drafts[D]` with the first D), and each head's greedy
    accuracy."""
    import torch

    from bytelm.model.layers import doc_ids
    from bytelm.model.loss import target_mask

    total = hits = None
    n = 0
    with torch.no_grad():
        for ids in split.eval_batches(seq_len, 16, max_bytes=max_bytes):
            pred = model(ids).argmax(-1)  # (B, T, K)
            K, T = pred.shape[2], ids.shape[1]
            docs = doc_ids(ids)
            offsets = getattr(getattr(model, "heads", None), "offsets", range(1, K + 1))
            ok = []  # ok[k-1]: head k's byte for t + k equals it, for t < T - K
            for k, o in zip(range(1, K + 1), offsets):
                # head k's logit at s predicts byte s + o: byte t + k's is at s = t + k - o
                p = pred[:, k - o : T - o, k - 1]  # (B, T - k) aligned at t
                good = (p == ids[:, k:]) & target_mask(ids, docs, k)
                ok.append(good[:, : T - K])
            ok = torch.stack(ok, -1)  # (B, T - K, K)
            valid = target_mask(ids, docs, K)[:, : T - K] & target_mask(ids, docs, 1)[:, : T - K]
            lead = ok[..., 1:].long().cumprod(-1)  # (B, T - K, K - 1) draft i and all before
            by = torch.cat([lead.new_ones(*lead.shape[:2], 1), lead], -1).cumsum(-1)
            t = by[valid].sum(0)  # bytes per forward with 0, 1, .., K - 1 drafts, summed
            total = t if total is None else total + t
            n += int(valid.sum())
            h = ok[valid].sum(0)
            hits = h if hits is None else hits + h
    by_drafts = [int(x) / max(n, 1) for x in total]
    return {"tf_bytes_per_forward": by_drafts[-1], "tf_by_drafts": by_drafts,
            "head_acc": [int(x) / n for x in hits]}  # fmt: skip


def budget_field(job: dict) -> dict:
    kind = "budget_tflops" if job.get("kind") == "tflops" else "budget_cpu_min"
    return {kind: job["budget"]}


def budget_key(row: dict) -> tuple[str, float]:
    """("CPU-min", x) or ("TFLOPs", x): how a run's budget was given."""
    if row.get("budget_tflops") is not None:
        return ("TFLOPs", row["budget_tflops"])
    return ("CPU-min", row["budget_cpu_min"])


def nominal_rate(pc) -> float:
    """A patcher config's nominal bytes per patch: k for fixed patches, else the target."""
    return pc.k if pc.name == "fixed" else pc.target_bytes_per_patch


def train_flops_per_byte(cfg, job: dict, r: float | None = None) -> float:
    """Training FLOPs per byte of a run's config at r bytes per patch (default: its patcher's
    nominal rate, k or the target), a frozen entropy model's forward included."""
    from bytelm.evals.flops import flops_per_byte

    if cfg.arch == "transformer":
        return flops_per_byte(cfg.transformer, seq_len=cfg.data.seq_len)["total"]
    pc = cfg.model.patcher
    r = r or nominal_rate(pc)
    ent = None
    if pc.name == "entropy":
        from bytelm.checkpoint import load_config

        ent = load_config(job["entropy_model"]).transformer
    return flops_per_byte(cfg.model, r, cfg.data.seq_len, entropy_model=ent)["total"]


def family_config(name: str, over: dict):
    """The RunConfig of family `name` (COMMON and the family's keys on the `demo` preset, or
    on the `entropy` one for a flat model), with `over` on top."""
    from bytelm import config as C

    over = {**COMMON, **FAMILIES[name], **over}
    preset = C.load_preset("demo")
    if over.get("arch") == "transformer":
        preset = C.override(C.load_preset("entropy"), {"transformer.attn_heads": "4"})
    return C.override(preset, {k: v for k, v in over.items() if k != "arch"})


def step_cost(args) -> None:
    """CPU seconds per training step of each family, one after another in one process with
    one torch thread: the ratios are what the CPU budgets buy."""
    import torch

    from bytelm.demo import cpu_per_step

    torch.set_num_threads(1)
    rows = []
    for name in [n for n in args.only.split(",") if n]:
        if "entropy" in name:
            raise SystemExit(f"bytelm: --step-cost needs no entropy model; drop {name}")
        cfg = family_config(name, {**data_overrides(args), "train.out_dir": f"/tmp/step_cost/{name}",
                                   "train.prefetch": "false"})  # fmt: skip
        rows.append({"family": name, "CPU-s/step": cpu_per_step(cfg, n=args.step_cost)})
        print(rows[-1], flush=True)
    base = rows[0]["CPU-s/step"]
    for r in rows:
        r["vs first"] = r["CPU-s/step"] / base
    write_results("equal_compute_step_cost", rows, "CPU cost of a training step per family",
                  f"{args.step_cost} steps each after a warm-up one, seq 256, batch 16, one "
                  f"torch thread, one process.\n\n    python -m benchmarks.equal_compute "
                  f"--step-cost {args.step_cost} --only {args.only}")  # fmt: skip


def run_one(job: dict) -> dict:
    """One training run in its own process with one torch thread."""
    import torch

    torch.set_num_threads(1)
    from bytelm import config as C
    from bytelm.demo import cpu_per_step
    from bytelm.evals.latent import latent_ablation
    from bytelm.patchers import ends_to_lengths
    from bytelm.train import Trainer
    from bytelm.vocab import PAD

    tag = "f" if job.get("kind") == "tflops" else "b"
    out = Path(job["runs"]) / f"{job['name']}-{tag}{job['budget']}-s{job['seed']}"
    cfg = family_config(job["name"], {
        **job["data"], "train.seed": str(job["seed"]), "train.out_dir": str(out),
        "train.eval_bytes": str(job["eval_bytes"]),
        **({"model.patcher.entropy_model": job["entropy_model"]} if "entropy" in job["name"] else {}),
    })  # fmt: skip

    if job.get("kind") == "tflops":  # analytic: FLOPs per byte at the nominal bytes per patch
        steps = max(20, int(job["budget"] * 1e12 / (train_flops_per_byte(cfg, job)
                                                    * cfg.data.batch_size * cfg.data.seq_len)))  # fmt: skip
    else:  # the step cost, from a throwaway trainer's steps after one warm-up
        probe_cfg = C.override(cfg, {"train.steps": "1000", "train.eval_every": "100000",
                                     "train.save_every": "100000", "train.prefetch": "false"})  # fmt: skip
        step_s = cpu_per_step(probe_cfg, n=3 if job["budget"] < 10 else 8)
        steps = max(20, int(job["budget"] * 60 / step_s))
    cfg = C.override(cfg, {"train.steps": str(steps), "train.eval_every": str(steps),
                           "train.save_every": str(steps), "train.prefetch": "false"})  # fmt: skip

    trainer = Trainer(cfg)
    c0, w0 = time.process_time(), time.perf_counter()
    trainer.fit()
    cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
    ev = trainer.evaluate()
    model = trainer.raw_model.eval()
    row = {
        "corpus": job["corpus"], "name": job["name"], **budget_field(job), "seed": job["seed"], "steps": steps, "cpu_min": cpu_s / 60, "wall_min": wall_s / 60,
        "bpb": ev["bpb"], "eval_bytes": ev["eval_bytes"],
    }  # fmt: skip
    bytes_trained = steps * cfg.data.batch_size * cfg.data.seq_len
    if cfg.arch == "transformer":
        fpb, r, heads = train_flops_per_byte(cfg, job), 1.0, 1
    else:
        n_bytes = n_patches = 0
        with torch.no_grad():  # the bytes per patch this model reaches on the held-out bytes
            for ids in trainer.corpus["heldout"].eval_batches(
                cfg.data.seq_len, 16, max_bytes=job["eval_bytes"]
            ):
                ends = model.route(ids)[1] if model.learned else model.patcher.ends(ids)
                nb = (ids != PAD).sum(-1)
                n_bytes += int(nb.sum())
                n_patches += int(ends_to_lengths(ends, nb).gt(0).sum())
        r = n_bytes / n_patches
        fpb = train_flops_per_byte(cfg, job, r)
        heads = cfg.model.out_heads.n
        if heads > 1:
            row.update(teacher_forced(model, trainer.corpus["heldout"], cfg.data.seq_len,
                                      job["eval_bytes"]))  # fmt: skip
        ab = latent_ablation(model, trainer.corpus["heldout"], cfg.data.seq_len, 16,
                             job["eval_bytes"])  # fmt: skip
        row.update(bpb_latent_zeroed=ab["zeroed"], bpb_latent_shuffled=ab["shuffled"])
    from bytelm.evals.flops import run_size

    row.update(
        bytes_per_patch=r, heads=heads, train_flops=fpb * bytes_trained, flops_per_byte=fpb,
        params_non_embedding=run_size(cfg)["params_non_embedding"], train_bytes=bytes_trained,
    )  # fmt: skip
    return row


def done_keys() -> set:
    if not RUNS_FILE.exists():
        return set()
    rows = [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]
    return {(r["corpus"], r["name"], budget_key(r), r["seed"]) for r in rows}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--split", default="hash", choices=["hash", "tail"])
    ap.add_argument("--budgets", default="1.5,4", help="CPU-minutes per run (one thread)")
    ap.add_argument("--flops", default="", help="training TFLOPs per run, instead of --budgets")
    ap.add_argument("--only", default="", help="comma-separated family names (default: all)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--workers", type=int, default=2, help="runs side by side, one thread each")
    ap.add_argument("--eval-bytes", type=int, default=131072)
    ap.add_argument("--runs", default="runs/equal_compute")
    ap.add_argument("--report", action="store_true", help="only write the tables and plot")
    ap.add_argument("--step-cost", type=int, default=0, metavar="N",
                    help="only time N training steps of each --only family (CPU s/step)")  # fmt: skip
    ap.add_argument("--runs-file", default="", help="where run rows go (default: results)")
    args = ap.parse_args(argv)
    global RUNS_FILE
    RUNS_FILE = Path(args.runs_file) if args.runs_file else RUNS_FILE
    if args.report:
        return report()
    if args.step_cost:
        return step_cost(args)
    name = corpus_name(args.data)
    runs = Path(args.runs) / name
    kind = "tflops" if args.flops else "cpu"
    budgets = [float(b) for b in (args.flops or args.budgets).split(",")]
    only = [n for n in args.only.split(",") if n] or list(FAMILIES)
    unknown = set(only) - set(FAMILIES)
    if unknown:
        raise SystemExit(
            f"bytelm: unknown families {sorted(unknown)}; choose from {list(FAMILIES)}"
        )
    done = done_keys()
    jobs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for b in budgets:  # in the order given: the runs that matter most first
            for fam in only:
                if kind == "cpu" and b != max(budgets) and fam not in SMALL_BUDGET:
                    continue
                key = ("TFLOPs" if kind == "tflops" else "CPU-min", b)
                if (name, fam, key, seed) in done:
                    continue
                jobs.append({"corpus": name, "name": fam, "budget": b, "kind": kind, "seed": seed,
                             "data": data_overrides(args), "runs": str(runs),
                             "eval_bytes": args.eval_bytes})  # fmt: skip
    if any("entropy" in j["name"] for j in jobs):
        ent = entropy_model(args, runs)
        for j in jobs:
            j["entropy_model"] = ent
    print(f"{len(jobs)} runs: " + ", ".join(f"{j['name']}@{j['budget']}" for j in jobs), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:  # fmt: skip
        futures = {pool.submit(run_one, j): j for j in jobs}
        for fut in as_completed(futures):
            j = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # one failed run is reported, the others go on
                print(f"FAILED {j['name']}@{j['budget']} seed {j['seed']}: {e!r}", flush=True)
                continue
            row["load_avg"] = os.getloadavg()[0]
            with open(RUNS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    report()


# --------------------------------------------------------------------------- report


def family(name: str, heads: int) -> str:
    if name.startswith("flat"):
        return "flat"
    return "bytelm, 1 head" if heads == 1 else "bytelm, 4+ heads"


def report() -> None:
    rows = [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]
    table = []
    for r in sorted(rows, key=lambda r: (r["corpus"], budget_key(r), r["bpb"])):
        table.append({
            "corpus": r["corpus"], "budget": "{1:g} {0}".format(*budget_key(r)), "run": r["name"],
            "seed": r["seed"], "held-out bpb": round(r["bpb"], 4),
            "bytes/patch": round(r["bytes_per_patch"], 2), "heads": r["heads"],
            "TF bytes/fwd": round(r["tf_bytes_per_forward"], 3) if "tf_bytes_per_forward" in r else "",
            "latent gain": round(r["bpb_latent_zeroed"] - r["bpb"], 4) if "bpb_latent_zeroed" in r else "",
            "latent content gain": round(r["bpb_latent_shuffled"] - r["bpb"], 4) if "bpb_latent_shuffled" in r else "",
            "train TFLOPs": round(r["train_flops"] / 1e12, 2), "CPU-min": round(r["cpu_min"], 2),
            "steps": r["steps"], "params (non-emb)": r["params_non_embedding"],
        })  # fmt: skip
    summary = summarize(rows)
    import torch

    torch.set_num_threads(1)  # what each run used
    md = (
        "# Equal compute: flat byte transformers against ByteLMs\n\n"
        f"Machine: {machine()}; each run one torch thread, two runs side by side.\n\n"
        + "\n".join(summary)
        + "\n\n"
        + NOTES
        + "\n\n## All runs\n\n"
        + markdown_table(table)
        + "\n\n"
        + (__doc__ or "").split("\n\n", 1)[1]
    )
    (RUNS_FILE.parent / "equal_compute.md").write_text(md)
    import csv

    with open(RUNS_FILE.parent / "equal_compute.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    plot(rows)
    print(md)


NOTES = """Read with care:

- The fair flat baseline has hashed n-gram embeddings too (flat-96x3-w16-ng: 1.777 / 1.779
  at 12 TFLOPs, two seeds; 1.625 / 1.624 at 40). Against it the ByteLMs of the bullets
  below lose; the lm-core design (the flat model's first and last layer as encoder and
  decoder, its middle layer traded for a latent of about the same FLOPs per byte) ties it
  at 12 TFLOPs (lm-core-k4-w64 1.771 / 1.797: behind by 0.006 on the means) and leads at
  40 (1.599 / 1.610: ahead by 0.020, each seed ahead of each flat seed, with 4,302 steps to
  the flat model's 4,452 and 20.2-20.4 CPU-min to its 22.9-23.2), and further at 100
  (1.528 / 1.531 against 1.576, ahead by 0.046; 53.4 / 49.8 CPU-min to 60.1). Its latent's
  content gain is 0.007 / 0.019 at 12 TFLOPs, 0.032 / 0.040 at 40 and 0.053 / 0.053 at 100. 16-byte local windows
  (lm-core-k4) make the latent carry more (0.033 at 12 TFLOPs) and the model worse
  (1.790 / 1.806); a wider latent over the same
  patches gets too few steps (lm-core-k4-L192, 999 steps: 1.887); 8-byte patches under a
  192 x 2 latent 1.831. Per-position latent outputs (MEGABYTE's: byte t reads its own
  projection of the last patch, by its distance from that patch's end; a prototype option,
  not kept) were worse: 1.808 with 64-byte windows, 1.814 with 16. Patchers on the -k8
  model at 12 TFLOPs (seed 0): fixed:8 1.831, space 1.829 (7.36 bytes per patch), learned
  1.851 (8.16), entropy 1.876 (8.57; its entropy model's forward is counted, so 1,166
  steps to fixed's 1,323): dynamic patching is not ahead here either. At 40 TFLOPs space
  (7.36 bytes per patch, 40.8 TFLOPs at that rate) against fixed:8: 1.636 / 1.652 against
  1.647 / 1.644 (seeds 0 / 1), a tie on the means (space ahead by 0.001; the seeds
  disagree); the latent's content gain is 0.045-0.079, so with 16-byte windows the patches
  carry real context, but both are behind lm-core-k4-w64 and the flat model. On tinyshakespeare
  at 12 TFLOPs (seed 0; about 5 epochs of its 1 MB) lm-core-k4-w64 2.709 is behind
  flat-96x3-w16-ng 2.680, and both are behind the flat 96 x 3 without n-gram tables
  (2.328): the tables memorise the small corpus. With n-gram dropout 0.3 (-nd3) both gain
  0.4 bpb and tie: lm-core-k4-w64-nd3 2.283 / 2.284, flat-96x3-w16-ng-nd3 2.283 / 2.276
  (seeds 0 / 1). At 40 TFLOPs (about 17 epochs) both overfit even so: 2.549 against 2.607
  (seed 0), both worse than at 12.
- Heads that draft on lm-core at 40 TFLOPs (seed 0): 8 heads cost 17% of the steps (3,584
  against 4,302) and the 8-head model ties the flat one (lm-core-8h 1.628, flat 1.625 /
  1.624) instead of leading it by 0.05. Its mlp drafts give 2.21 teacher-forced bytes per
  forward with 7 drafts; chain drafts (lm-core-8c, each reading the drafts before it) the
  same head-1 bpb (1.628) and 2.39 (head 2's accuracy 0.47 against 0.40, head 8's 0.36
  against 0.27). Trained at a tenth of the positions instead of a quarter (lm-core-8h-s10,
  now the default draft_sample) the heads cost 8% of the FLOPs (3,983 steps): head 1 1.612
  / 1.614 at 40 TFLOPs (two seeds, within 0.009 of the one-head mean) with 2.19 / 2.20
  teacher-forced bytes per forward (4 heads, lm-core-4h-s10: 1.610, 1.80), and 1.526 at 100 (seed 0; the one-head seeds 1.528 / 1.531) with 2.26: ahead of
  the flat model by 0.050 (0.0499 unrounded). Wall clock: `benchmarks.drafting`
  (drafting_lm-core-8*.md).
- The bullets below predate the n-gram flat baseline; their "best flat" has no n-gram tables.
- On stdlib the one-head ByteLM's lead over the best flat model shrinks with the budget and
  turns into a loss: -0.09 bpb at 1.5 CPU-minutes, +0.09 at 4 (+0.25 for fixed:8 patches,
  lm-1h-k8), +0.04 at an equal 12 training TFLOPs (the lean lm-lean-k4 against flat 64 x 4;
  the wider lm-1h-96 is behind there, 2.117 against 1.997), and -0.05 at 20 CPU-minutes
  (flat 96 x 3 1.630 with 51.5 TFLOPs, lm-1h-96 1.680 with 69 TFLOPs, lm-lean-k4 1.709 with
  57 TFLOPs). The hashed n-gram embeddings learn local statistics fast; more compute lets
  the flat model catch up and pass. At equal training FLOPs the same: the lean ByteLM's lead
  of 0.04 at 12 TFLOPs (0.11 over flat 96 x 3) is a tie at 40 (lm-lean-k4 1.751 at 3,400
  steps, flat 96 x 3 1.745 at 3,779: behind by 0.007).
- The two seeds at 20 CPU-minutes on stdlib ran on two days whose machine differed in speed
  by 1.6x (a flat 96 x 3 step took 0.25 CPU-s on the first, 0.40 on the second:
  `equal_compute_step_cost.md`), so they are two budgets, not two seeds, and the summary
  line's means over seeds mix them; read the rows. Seed 0 (the faster day): flat 1.630 at
  4,864 steps, lm-1h-96 1.680 at 2,336: behind by 0.05. Seed 1 (the slower day, about 12
  of the faster day's CPU-minutes): flat 1.822 at 2,941 steps, lm-1h-96 1.796 at 1,333:
  ahead by 0.026; lm-1h-96-w256 (seed 0, that day) 1.757 at 1,570 steps, ahead by 0.065,
  though its lead over lm-1h-96 comes with 18% more steps from its probe (their steps cost
  the same, 0.867 and 0.874 CPU-s), so the window's share of it is not known; and the
  8-head lm-8det-96-s25 (seed 0, that day) 1.780 at 1,440 steps: head 1 as good as the
  one-head model's (0.016 ahead), 0.042 ahead of the flat model, with 2.11 teacher-forced
  bytes per forward (2.12 for lm-8det-96, whose drafts train at every position and whose
  step costs 1.56x a one-head one's, against 1.05x).
- tinyshakespeare is too small for 20 CPU-minutes of an unregularised ByteLM: lm-1h-96
  trains ~9 epochs of its 1 MB, ends at a training loss of 0.61 nats per byte (0.88 bits)
  and 3.435 held-out bpb, where the flat 96 x 3 (17 epochs, 0.36M non-embedding parameters
  and no n-gram tables to memorise with) reaches 2.184. Dropout (every stack, and whole
  n-gram lookups) closes most of that: 2.493 at 0.1 and 2.352 at 0.2 (lm-1h-96-do,
  -do2), 2.322 for the lean ByteLM at 0.2 (lm-lean-k4-do2), still 0.14 behind the flat
  model, which dropout 0.1 does not help (2.216, though on 2,817 steps to the other's
  4,184: its probe ran on a busier machine). The ByteLM still overfits at 0.2 (training
  loss 1.21 nats against 2.35 held-out bits), so more dropout may help further.
- A CPU budget's step count comes from a CPU-time probe of a few steps; on a shared machine
  (load 4-9 on 2 cores for most of these runs) that probe moved by up to 25% between two
  seeds of one config (lm-1h-96 on stdlib at 4 CPU-minutes: 349 and 277 steps, 2.169 and
  2.274 bpb), and some runs got 15-28% less than their budget. Compare the steps and
  CPU-min columns with the bpb; the TFLOPs budgets have no such noise.
- Equal CPU time is not equal FLOPs: a 256-wide latent does more FLOPs per CPU-second than
  a 64-wide flat model on this CPU. The plot is against training FLOPs.
- The entropy model is trained once per corpus outside any budget (the `entropy` preset);
  the entropy runs' CPU time includes computing the entropies of the windows they read.
- The learned runs pay for more patches early in training (the router starts near 2.5
  bytes per patch) and for the router; at equal CPU they get 25-35% fewer steps than fixed.
- At these budgets the latent's content is worth little (`learned_knob.md`: replacing its
  output by a constant costs 0.010 bpb), so what wins here is mostly the local models with
  hashed n-gram embeddings and the latent as a cheap extra depth per patch."""


PATCHERS = {  # the patcher comparisons, per target bytes per patch: (patcher, family)
    4: [("fixed", "lm-1h"), ("space", "lm-1h-space"), ("entropy", "lm-1h-entropy"),
        ("learned", "lm-1h-learned")],
    8: [("fixed", "lm-1h-k8"), ("entropy", "lm-1h-entropy8"), ("learned", "lm-1h-learned8")],
}  # fmt: skip


def summarize(rows: list[dict]) -> list[str]:
    """Per corpus and budget: the best of each family (a run's bpb is its mean over seeds),
    the margins over the best flat model, the seed spreads, and the patchers on lm-1h."""
    out = []
    for corpus in sorted({r["corpus"] for r in rows}):
        for b in sorted({budget_key(r) for r in rows if r["corpus"] == corpus}):
            rs = [r for r in rows if r["corpus"] == corpus and budget_key(r) == b]
            seeds: dict[str, list[float]] = {}
            heads = {r["name"]: r["heads"] for r in rs}
            for r in rs:
                seeds.setdefault(r["name"], []).append(r["bpb"])
            mean = {n: sum(v) / len(v) for n, v in seeds.items()}
            best: dict[str, tuple[float, str]] = {}
            for n, v in mean.items():
                f = family(n, heads[n])
                best[f] = min(best.get(f, (math.inf, "")), (v, n))
            line = f"- **{corpus}, {b[1]:g} {b[0]}**: " + ", ".join(
                f"best {f} {v:.3f} ({n})" for f, (v, n) in sorted(best.items())
            )
            if "flat" in best:
                for f in ("bytelm, 1 head", "bytelm, 4+ heads"):
                    if f in best:
                        line += f"; {f} ahead of flat by {best['flat'][0] - best[f][0]:+.3f}"
            spread = {n: max(v) - min(v) for n, v in seeds.items() if len(v) > 1}
            if spread:
                line += "; seed spread (max - min) " + ", ".join(
                    f"{n} {s:.3f}" for n, s in spread.items()
                )
            rate = {r["name"]: r["bytes_per_patch"] for r in rs}
            for target, pat in PATCHERS.items():
                have = [(p, n) for p, n in pat if n in mean]
                if len(have) > 1:
                    line += f"; patchers on lm-1h at {target} B/patch: " + ", ".join(
                        f"{p} {mean[n]:.3f} ({rate[n]:.2f})" for p, n in have
                    )
            out.append(line)
    return out


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({r["corpus"] for r in rows})
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for name in FAMILIES:
            rs = sorted(
                (r for r in rows if r["corpus"] == corpus and r["name"] == name),
                key=lambda r: r["train_flops"],
            )
            if not rs:
                continue
            style = {"flat": "o--", "bytelm, 1 head": "s-"}.get(family(name, rs[0]["heads"]), "^-")
            ax.plot([r["train_flops"] for r in rs], [r["bpb"] for r in rs], style, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (analytic)")
        ax.set_ylabel("held-out bpb (head 1)")
        ax.set_title(corpus)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RUNS_FILE.parent / "equal_compute.png", dpi=120)


if __name__ == "__main__":
    main()
