"""Trainer: one code path for CPU, one GPU and many (DDP/FSDP via `accelerate launch`).

AdamW with linear warmup and cosine decay, gradient clipping, gradient
accumulation, bf16 autocast on CUDA. Held-out bits-per-byte is evaluated at
intervals. The data order is a pure function of (seed, step), so a resumed run
sees exactly the batches an uninterrupted run would have seen.

A training step reads nothing back from the device: patch ends are found and
counted on the host, where the batch is made, the batch is copied from pinned
memory without blocking, and the metrics stay on the device until `fit` reads
several steps' worth at once. `train.compile` compiles the forward and the loss
with `dynamic=False`; the patch axis is then padded to `model.patch_bucket` so
that it takes a few sizes over a run, one graph each. `raw_model` stays
uncompiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors import SafetensorError

from bytelm.checkpoint import (
    METRICS_FILE,
    CheckpointError,
    build_model,
    build_patcher,
    find_resumable,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
    save_run_checkpoint,
)
from bytelm.config import CHECKPOINT_DIR, RunConfig
from bytelm.data import load_corpus
from bytelm.distributed import (
    FullWeights,
    ShardedLoad,
    WrappedForward,
    full_state,
    is_fsdp,
    load_optimizer_state,
)
from bytelm.evals.bpb import evaluate_bpb
from bytelm.evals.flops import run_size
from bytelm.kernels.attention import resolve_backend as attention_backend
from bytelm.kernels.dispatch import resolve_backend as kernel_backend
from bytelm.model.chunking import STATS, calibrate, routing_stats, routing_warnings
from bytelm.model.heads import draft_positions
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers import ends_to_lengths
from bytelm.patchers.entropy_cache import prepare_training as prepare_entropy
from bytelm.patchers.windows import window_ends
from bytelm.vocab import PAD

CHECKPOINT = CHECKPOINT_DIR


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; never decay norms, biases or embedding tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = (
            ".byte." in f".{name}" or ".ngram." in f".{name}" or name.startswith("embed.")
        )
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _rng_state() -> dict:
    """Every RNG a step may draw from: plain values and tensors (`checkpoint.encode_state`)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


class Trainer:
    def __init__(
        self, cfg: RunConfig, corpus: dict | None = None, accelerator: Accelerator | None = None
    ):
        self.cfg = cfg
        tc = cfg.train
        out = Path(tc.out_dir)  # checked before the slow part: made if missing, else a dir
        there = next((p for p in (out, *out.parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            raise CheckpointError(
                f"bytelm: train.out_dir '{out}' cannot be a directory: '{there}' is a file; "
                "choose another --train.out_dir"
            )
        if accelerator is None:
            cuda = torch.cuda.is_available()
            bf16 = tc.precision == "bf16" or (tc.precision == "auto" and cuda)
            accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda)
        self.acc = accelerator
        set_seed(tc.seed)
        if corpus is None:
            with self.acc.main_process_first():  # rank 0 builds the byte cache, the others reuse it
                corpus = load_corpus(cfg.data, progress=self.acc.is_main_process)
        self.corpus = corpus
        patcher = None
        if cfg.arch == "bytelm":  # built once: calibrated here, then handed to the model
            patcher = build_patcher(cfg.model.patcher, tc.out_dir)
        with self.acc.main_process_first():  # calibrate θ, fill the entropy cache (entropy patcher)
            cfg, self.entropy_feed = prepare_entropy(
                cfg, corpus, patcher, main=self.acc.is_main_process
            )
        self.cfg = cfg
        # a learned source: the model finds the ends (after its encoder) and adds a ratio loss
        self.learned = cfg.arch == "bytelm" and cfg.model.patcher.name == "learned"
        self.warned: set[str] = set()  # routing warnings shown and still true
        self.routing: torch.Tensor | None = None  # the last micro-batch's routing stats
        self.model = build_model(cfg, patcher)
        self.size = run_size(cfg)  # non-embedding params, analytic training FLOPs per byte
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, tc.weight_decay),
            lr=tc.lr,
            betas=(tc.beta1, tc.beta2),
            fused=self.acc.device.type == "cuda",  # one kernel for every parameter on GPU
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        )
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        self.fsdp = is_fsdp(self.acc)  # sharded: state dicts are collectives (bytelm.distributed)
        cuda = self.acc.device.type == "cuda"
        # auto: on CUDA only. On CPU a compiled demo step is 1.06x (bucket 64) to 1.33x (16) an
        # eager one, but a cold compile costs 70-120 CPU-s: it pays only after ~600-1400 steps
        # (benchmarks/results/train_compile.md), and the demo and the tests run far fewer
        self.compiled = tc.compile == "on" or (tc.compile == "auto" and cuda)
        self._prefetcher = ThreadPoolExecutor(1, "bytelm-batches") if tc.prefetch else None
        self._prefetched: dict[int, Future] = {}
        self.forward_loss = self._forward_loss
        if self.compiled:  # the wrapped model inside, so DDP still syncs gradients
            # choose the attention and kernel backends before tracing: each logs its choice
            # once, and a log call inside the trace breaks the graph (11 graphs instead of 1)
            attention_backend(cfg.model.attn_backend, self.acc.device)
            for op in ("pool", "unpool"):
                kernel_backend(op, "auto", self.acc.device)
            self.forward_loss = torch.compile(self._forward_loss, dynamic=False)
        self.step = 0
        self.history: list[dict] = []  # every step's metrics; metrics.jsonl holds them too
        self.out_dir = Path(tc.out_dir)
        self._kept: list[str] = []  # this run's step directories in out_dir, newest first
        self._logged = 0  # lines of out_dir/metrics.jsonl that are this run's history
        self._log = None  # metrics.jsonl, open while `fit` runs (main process)

    @property
    def raw_model(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    # ---------------------------------------------------------------- state

    def save(self, path: Path | None = None) -> Path:
        """Checkpoint the run: a new step directory in `out_dir`, named by the pointer, the
        last `train.keep_checkpoints` kept (`checkpoint.save_run_checkpoint`); or, given a
        `path` other than `out_dir/checkpoint`, one standalone checkpoint directory there.
        Returns the checkpoint directory."""
        tc = self.cfg.train
        run = path is None or Path(path) == self.out_dir / CHECKPOINT
        out = self.out_dir / CHECKPOINT if run else Path(path)
        self.acc.wait_for_everyone()
        # every rank: under FSDP gathering the full state dicts is a collective
        weights, optim = full_state(self.acc, self.model, self.optimizer)
        if self.acc.is_main_process:
            if self._log is not None:  # the history the checkpoint names is durable first
                self._log.flush()
                os.fsync(self._log.fileno())
            state = {
                "step": self.step,
                "optimizer": optim,
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "metrics_records": self._logged,
            }
            try:
                if run:
                    out, self._kept = save_run_checkpoint(
                        self.out_dir, self.step, FullWeights(weights), self.cfg, state,
                        self._kept, tc.keep_checkpoints,
                    )  # fmt: skip
                else:
                    save_checkpoint(out, FullWeights(weights), self.cfg, state)
            except (OSError, SafetensorError) as e:  # a full disk, a lost mount: not a bug
                raise self._save_failed(out, e) from None
        self.acc.wait_for_everyone()
        return out

    def _save_failed(self, out: Path, e: Exception) -> CheckpointError:
        """A save the file system refused -> one line that says what survives: the save
        writes a new step directory and commits it last, so the previous checkpoint is
        intact."""
        why = getattr(e, "strerror", None) or str(e).split(" (os error")[0] or type(e).__name__
        found = latest_checkpoint(self.out_dir)
        kept = f"'{found[0]}' is intact" if found else "there is no earlier checkpoint"
        return CheckpointError(
            f"bytelm: cannot save the checkpoint of step {self.step} to '{out}': {why}; {kept}"
        )

    def resume(self, path: Path | None = None) -> bool:
        """Continue from the newest complete checkpoint of `out_dir` (or of `path`: a run or
        checkpoint directory), and say which in one line. Returns whether one was loaded.

        Nothing to resume (no such directory, or nothing a run writes in it) is a fresh
        start, said so too; run state without a complete checkpoint, or an old-format
        checkpoint, is a CheckpointError. The history up to the checkpoint comes back from
        metrics.jsonl, whose later lines (a run killed after its last save) are dropped.
        """
        where = Path(path) if path is not None else self.out_dir
        found = find_resumable(where)
        main = self.acc.is_main_process
        if found is None:
            if main:
                print(f"resume: nothing to resume in {where}; starting from step 0", flush=True)
            return False
        ckpt, kept = found
        state = load_trainer_state(ckpt)
        load_weights(ckpt, ShardedLoad(self.acc, self.model) if self.fsdp else self.raw_model)
        load_optimizer_state(self.acc, self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = state["step"]
        note = ""
        if ckpt.parent.resolve() == self.out_dir.resolve():  # this run's: its history, its kept
            self._kept = kept
            note = self._restore_history(state.get("metrics_records", 0), truncate=main)
        if main:
            print(f"resume: continuing from {ckpt} (step {self.step}){note}", flush=True)
        return True

    def _restore_history(self, n: int, truncate: bool) -> str:
        """The first `n` lines of out_dir/metrics.jsonl -> `history`; with `truncate`, the
        file is cut after them. Returns a note for the resume line when they are not there."""
        path, lines = self.out_dir / METRICS_FILE, []
        try:
            with path.open("rb") as f:
                lines = [f.readline() for _ in range(n)]
            records = [json.loads(x) for x in lines]
        except (OSError, ValueError):
            records = []
        if len(records) != n or (n and records[-1].get("step", math.inf) > self.step):
            self._logged = sum(1 for _ in path.open("rb")) if path.is_file() else 0
            return f"; {METRICS_FILE} does not hold its history, so `history` starts here"
        self.history, self._logged = records, n
        if truncate and path.is_file():
            os.truncate(path, sum(len(x) for x in lines))
        return ""

    # ----------------------------------------------------------------- loop

    def evaluate(self) -> dict:
        """Held-out bpb. Under FSDP the wrapped model runs (only its forward gathers the
        sharded parameters), and its forward is a collective, so every rank scores every
        window (the same number of forwards on each); otherwise each rank scores every
        world_size-th batch and the sums are reduced."""
        tc, dc = self.cfg.train, self.cfg.data
        shard = (0, 1) if self.fsdp else (self.acc.process_index, self.acc.num_processes)
        model = WrappedForward(self.model, self.raw_model) if self.fsdp else self.raw_model
        with self.acc.autocast():
            r = evaluate_bpb(
                model,
                self.corpus["heldout"],
                dc.seq_len,
                dc.batch_size,
                max_bytes=tc.eval_bytes or None,
                rank=shard[0],
                world_size=shard[1],
                device=self.acc.device,
            )
        t = torch.tensor([r["nats"], r["bytes"]], dtype=torch.float64, device=self.acc.device)
        nats, count = t.tolist() if self.fsdp else self.acc.reduce(t, reduction="sum").tolist()
        return {"bpb": nats / (math.log(2) * max(count, 1)), "eval_bytes": int(count)}

    def batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        """Training micro-batch `micro_step` -> (ids (B, T), ends (B, T) or None, P or None) on
        the device, for `forward_loss`.

        With `train.prefetch`, micro-batch `micro_step + 1` is then built on the host in a
        background thread while this one trains. A batch is a pure function of its step, so
        prefetching changes no batch, and at most one is built at a time (the next call waits
        for it), so the entropy cache is never filled from two threads at once.
        """
        future = self._prefetched.pop(micro_step, None)
        for stale in self._prefetched.values():  # a jump (resume): never two builds at once
            stale.result()
        ids, ends, n_patches = (
            future.result() if future is not None else self._host_batch(micro_step)
        )
        if self._prefetcher is not None:
            self._prefetched = {
                micro_step + 1: self._prefetcher.submit(self._host_batch, micro_step + 1)
            }
        dev = self.acc.device
        to = lambda x: x.to(dev, non_blocking=dev.type == "cuda")  # pinned by _host_batch
        return to(ids), None if ends is None else to(ends), n_patches

    def draft_positions(self, micro_step: int) -> torch.Tensor | None:
        """Where heads 2..K train in micro-batch `micro_step` (`heads.draft_positions`)."""
        if self.cfg.arch != "bytelm":
            return None
        c = self.cfg
        at = draft_positions(c.model.out_heads, c.data.seq_len, c.train.seed, micro_step)
        return None if at is None else at.to(self.acc.device)

    def _host_batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        """`batch` on the host (pinned on CUDA, so the copy to the device does not wait).

        For a ByteLM the patch ends are found on the host, where the batch is made, each
        window patched as its documents are (`bytelm.patchers.windows`: from the cached
        entropies for the entropy patcher), and counted there, so the forward reads
        nothing back. A compiled step rounds the count up to `model.patch_bucket` (capped at
        T), so that P takes a few values over a run, one graph each; an eager step keeps the
        exact count, since padded slots cost latent work and buy an eager step nothing (the
        demo on CPU: bucket 64 pads P from ~78 to 128, 20% slower; train_compile.md).
        A learned source decides from the model's encoder states, so it gets neither: the
        forward finds the ends and reads their count back, one host sync per micro-batch
        (rounded up to the bucket there when compiled).
        """
        tc, dc = self.cfg.train, self.cfg.data
        rank, world = self.acc.process_index, self.acc.num_processes
        ids = self.corpus["train"].train_batch(
            micro_step, dc.batch_size, dc.seq_len, tc.seed, rank=rank, world_size=world
        )
        ends = n_patches = None
        if self.cfg.arch == "bytelm" and not self.learned:
            if self.entropy_feed is not None:
                ends = self.entropy_feed.train_ends(ids, micro_step, rank, world)
            else:
                split = self.corpus["train"]
                starts = split.train_starts(micro_step, dc.batch_size, tc.seed, rank, world)
                ends = window_ends(self.raw_model.patcher, split, starts, ids)
            count = ends_to_lengths(ends, (ids != PAD).sum(-1)).shape[1]  # host tensors: no sync
            bucket = self.cfg.model.patch_bucket if self.compiled else 1
            n_patches = min(-(-count // bucket) * bucket, ids.shape[1])
        if self.acc.device.type == "cuda":  # a pageable copy would wait for the GPU to drain
            ids, ends = ids.pin_memory(), None if ends is None else ends.pin_memory()
        return ids, ends, n_patches

    def _forward_loss(self, ids, ends=None, n_patches=None, draft_at=None):
        """A micro-batch from `batch` (ids (B, T), ends (B, T) or None, P or None) and the
        positions of `draft_positions` (T',) or None -> (loss, nats per head (K,)): what
        `train.compile` compiles, through the prepared (DDP-wrapped) model. A learned source
        adds its ratio loss, weighted by `patcher.ratio_loss_weight`, and leaves its metrics
        (STATS, on the device) in `self.routing`."""
        stats = None
        if self.learned:
            pc = self.cfg.model.patcher
            logits, routing = self.model(
                ids, ends, n_patches=n_patches, routing=True, draft_at=draft_at
            )
            stats = routing_stats(
                routing, pc.target_bytes_per_patch, self.raw_model.patcher.threshold
            )
        elif self.cfg.arch == "bytelm":
            logits = self.model(ids, ends, n_patches=n_patches, draft_at=draft_at)
        else:
            logits = self.model(ids)
        lm = self.cfg.arch == "bytelm"
        weights = self.cfg.model.out_heads.weights if lm else ()
        offsets = self.raw_model.heads.offsets if lm else None
        out = multi_head_loss(logits, ids, doc_ids(ids), weights, draft_at, offsets)
        loss = out.loss
        if stats is not None:
            self.routing = stats.detach()
            if pc.ratio_loss_weight > 0:
                loss = loss + pc.ratio_loss_weight * stats[0]
        return loss, out.per_head

    def train_step(self) -> dict:
        """One optimizer step. Its metrics stay on the device (no host sync): `fit` reads them
        in one transfer every `log_every` steps (`_materialize`)."""
        tc = self.cfg.train
        self.model.train()
        heads = getattr(self.raw_model, "n_heads_out", 1)
        # loss, grad norm (NaN without clipping), nats per head
        metrics = torch.zeros(2 + heads, device=self.acc.device)
        routing = torch.zeros(len(STATS), device=self.acc.device)  # learned source only
        for micro in range(tc.grad_accum):
            i = self.step * tc.grad_accum + micro
            args, draft_at = self.batch(i), self.draft_positions(i)
            sync = micro == tc.grad_accum - 1
            with nullcontext() if sync else self.acc.no_sync(self.model), self.acc.autocast():
                loss, per_head = self.forward_loss(*args, draft_at)
            self.acc.backward(loss / tc.grad_accum)
            metrics[0] += loss.detach().float() / tc.grad_accum
            metrics[2:] += per_head.detach().float() / tc.grad_accum
            if self.learned:
                routing += self.routing / tc.grad_accum
        metrics[1] = math.nan
        if tc.grad_clip > 0:
            norm = self.acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            metrics[1] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        rec = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "_metrics": metrics}
        if self.learned:
            rec["_routing"] = routing
        return rec

    @staticmethod
    def _materialize(recs: list[dict]) -> None:
        """Device metrics of several steps -> floats, in one host transfer."""
        if not recs:
            return
        values = torch.stack([r.pop("_metrics") for r in recs]).cpu().tolist()
        for r, v in zip(recs, values):
            r["loss"], r["head_nats"] = v[0], [round(x, 5) for x in v[2:]]
            if not math.isnan(v[1]):
                r["grad_norm"] = v[1]
        if "_routing" in recs[0]:  # a learned source: its stats, and bytes per patch
            routing = torch.stack([r.pop("_routing") for r in recs]).cpu().tolist()
            for r, v in zip(recs, routing):
                r.update({k: round(x, 5) for k, x in zip(STATS, v)})
                r["bytes_per_patch"] = round(1 / max(r["boundary_rate"], 1e-9), 4)

    def _check_routing(self, recs: list[dict]) -> None:
        """Warn, once while each holds, about the known failure modes of learned chunking
        (`routing_warnings`) over the materialized steps `recs`; the warnings go into the
        last record too."""
        if not self.learned or not recs or "boundary_rate" not in recs[0]:
            return
        from tqdm.auto import tqdm

        mean = {k: sum(r[k] for r in recs) / len(recs) for k in STATS}
        tc, pc = self.cfg.train, self.cfg.model.patcher
        past_warmup = self.step >= max(2 * tc.warmup_steps, 100)
        found = routing_warnings(mean, pc.target_bytes_per_patch, pc.max_patch_len, past_warmup)
        for kind, w in found.items():
            if kind not in self.warned and self.acc.is_main_process:
                tqdm.write(f"bytelm: step {self.step}: {w}")
        self.warned = set(found)
        if found:
            recs[-1]["routing_warnings"] = found

    def calibrate_router(self) -> dict:
        """A learned source at the end of training: θ calibrated to patcher.target_bytes_per_patch
        on the training split's calibration sample (`chunking.calibrate`) and written into the
        config the checkpoint saves (patcher.threshold, measured_bytes_per_patch), as an entropy
        patcher's θ is before training; the last evaluation then runs at that θ. (Not before:
        the router changes while it trains, at θ = 0.5.) A threshold the config sets is the
        user's and is kept. Every rank calibrates the same weights on the same sample. -> the
        step record's `threshold` and `calibrated_bytes_per_patch`, or {} when there is
        nothing to calibrate."""
        pc, dc = self.cfg.model.patcher, self.cfg.data
        if not self.learned or pc.target_bytes_per_patch <= 1 or pc.threshold:
            return {}
        main = self.acc.is_main_process
        target = pc.target_bytes_per_patch
        try:
            new, cal = calibrate(
                self.raw_model, self.corpus["train"], target, dc.seq_len, dc.batch_size
            )
        except ValueError as e:  # a collapsed router: no θ in (0, 1) gives the target
            if main:
                print(f"{e}; the router keeps θ = {self.raw_model.patcher.threshold:.4f}")
            return {}
        self.cfg = dataclasses.replace(
            self.cfg, model=dataclasses.replace(self.cfg.model, patcher=new)
        )
        if main:
            print(
                f"bytelm: router threshold {cal.threshold:.4f} gives "
                f"{cal.measured_bytes_per_patch:.3f} bytes/patch on {cal.n_positions:,} "
                f"calibration positions (target {target:g}); saved with the checkpoint",
                flush=True,
            )
        return {
            "threshold": cal.threshold,
            "calibrated_bytes_per_patch": cal.measured_bytes_per_patch,
        }

    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train to `train.steps` (or `stop_after` more steps). Returns the last metrics.

        Every step's metrics go to `history` and to out_dir/metrics.jsonl (read back from the
        device every `train.log_every` steps); a fresh run starts that file afresh, and its
        first save replaces the checkpoints of a run that was in `out_dir` before.
        """
        tc, dc = self.cfg.train, self.cfg.data
        if resume:
            self.resume()
        main = self.acc.is_main_process
        earlier = latest_checkpoint(self.out_dir) if main and not resume and not self.step else None
        if earlier is not None:
            print(
                f"train: {self.out_dir} holds an earlier run ({earlier[0].name}); this run "
                "replaces it at its first save (--resume continues it instead)",
                flush=True,
            )
        if main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(
                    f"bytelm: cannot make train.out_dir '{self.out_dir}': {e.strerror or e}"
                ) from None
        log = (self.out_dir / METRICS_FILE).open("a" if self._logged else "w") if main else None
        self._log = log
        bar = None
        if main and tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, desc="train", dynamic_ncols=True)
        end = tc.steps if stop_after is None else min(tc.steps, self.step + stop_after)
        bytes_per_step = dc.batch_size * dc.seq_len * tc.grad_accum * self.acc.num_processes
        last_eval, t0, steps0 = None, time.perf_counter(), self.step
        c0, eval_wall, eval_cpu = time.process_time(), 0.0, 0.0
        pending: list[dict] = []  # steps whose metrics are still on the device
        while self.step < end:
            rec = self.train_step()
            rate = bytes_per_step * (self.step - steps0) / (time.perf_counter() - t0)
            rec["bytes_per_s"] = rate
            if "flops_per_byte" in self.size:  # cumulative training FLOPs (analytic)
                rec["flops"] = self.size["flops_per_byte"] * bytes_per_step * self.step
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                # this fit's training time so far (wall and this process's CPU), evals excluded
                w, c = time.perf_counter(), time.process_time()
                rec.update(time_s=w - t0 - eval_wall, cpu_s=c - c0 - eval_cpu)
                if self.step == tc.steps:  # a learned router: θ fitted to its target, then saved
                    rec.update(self.calibrate_router())
                last_eval = self.evaluate()
                eval_wall += time.perf_counter() - w
                eval_cpu += time.process_time() - c
                rec.update(last_eval, world_size=self.acc.num_processes)
                rec["params_non_embedding"] = self.size["params_non_embedding"]
            self.history.append(rec)
            pending.append(rec)
            saving = self.step % tc.save_every == 0 or self.step == end
            if self.step % tc.log_every == 0 or "bpb" in rec or saving:  # the one host sync
                self._materialize(pending)
                self._check_routing(pending)
                if log is not None:  # every step: metrics.jsonl is the run's history
                    log.writelines(json.dumps(r) + "\n" for r in pending)
                    log.flush()
                    self._logged += len(pending)
                pending = []
                if bar is not None:
                    post = {"loss": f"{rec['loss']:.3f}", "B/s": f"{rate:,.0f}"}
                    if last_eval:
                        post["bpb"] = f"{last_eval['bpb']:.3f}"
                    if "bytes_per_patch" in rec:  # a learned source's live rate
                        post["B/patch"] = f"{rec['bytes_per_patch']:.2f}"
                    bar.set_postfix(post, refresh=False)
            if bar is not None:
                bar.update(1)
            if self.step % tc.save_every == 0 or self.step == tc.steps:
                self.save()
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        self._log = None
        return self.history[-1] if self.history else {}


def train(cfg: RunConfig, resume: bool = False) -> Trainer:
    trainer = Trainer(cfg)
    trainer.fit(resume=resume)
    return trainer
