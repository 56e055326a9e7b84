"""One-shot GPU suite: CUDA tests, kernels, attention, training MFU and decoding, in one call.

Device command. A session lent an H100/H200 runs the whole suite with one call of the
device tool (see /work/.library/device/README.md), with nothing in `carry`:

    run(timeout_s=600, command="set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD; python3 -m benchmarks.gpu_suite --minutes 8 2>&1 | tee $OUT/gpu_suite.log; rc=$?; tar czf $OUT/gpu_results.tgz benchmarks/results/gpu_*; exit $rc")

then, here, from the repository root: `tar xzf <files_at>/gpu_results.tgz` and commit
benchmarks/results/gpu_*. Why nothing is carried: the device machine reaches no package
registry, so no `make venv` and no pip install there, and none is needed. Its image's
python3 already holds torch (2.11, CUDA 13), triton, accelerate, einops, safetensors,
tokenizers, numpy, tqdm, pytest and hypothesis, and bytelm is imported from the working
tree through PYTHONPATH. xformers is not on the image, so the attention part times sdpa and
flex only; to add xformers, download a wheel built for the device's torch into `.whl`, carry
it and install it first as that README's Notes say (then PYTHONPATH=$PWD:/tmp/site). The
results come back as one tarball because at most 8 files return from $OUT. The suite stops
itself after --minutes (8), which leaves the call two minutes of its 10 and keeps the whole
lease (start included) near 11 of the 15 device minutes.

    python -m benchmarks.gpu_suite --minutes 8             # CUDA: every part, <= 8 minutes
    python -m benchmarks.gpu_suite --dry-run --out DIR     # CPU: tiny shapes, a few steps

Parts, in order (each in its own process, so a crash or a hang costs only that part):

1. pytest: `pytest -m gpu -q`; its summary line.
2. kernels: `benchmarks.kernels.run`: Triton pooling (sum/mean/max) and unpooling, forward
   and forward+backward, against the PyTorch reference (scatter_add/scatter_reduce),
   `index_add` and `segment_reduce`, with effective GB/s and its share of the device's
   HBM peak (H100 SXM 3350, H200 4800 GB/s); the verify step at batch 1 and 64.
3. attention: `benchmarks.attention.run`: sdpa, flex (and xformers if installed) on the
   model's local, latent and pooling masks, forward and forward+backward.
4. train: bf16 training throughput, eager and `torch.compile`d, with MFU = analytic FLOPs
   (`bytelm.evals.flops.flops_per_byte`) x bytes/s / the peak bf16 dense FLOP/s (H100 SXM
   and H200: 989e12; other devices: MFU left blank), for a ByteTransformer 768 x 12 and
   ByteLMs with that latent (local 256: encoder 1 layer, decoder 2, 4 heads), fixed:8 and
   fixed:4, 16 x 4096 random bytes per step. Plain steps (forward, loss, backward, fused
   AdamW), not the Trainer.
5. decode: greedy `bytelm.generate`, plain and self-speculative, batch 1 and 16, on a
   random-init ByteLM (the train part's fixed:4 model, bf16). Random weights draft badly:
   bytes per forward and bytes/s are reported as measured.

Each part gets a share of the time left (unused time rolls over to later parts), stops
starting new work near its share, and is killed at its end; a part that would get under
20 s is "skipped: budget". Results: <out>/gpu_<part>.{md,csv} with the machine, and
<out>/gpu_suite.md: each part's status (ok / failed: one line / skipped: why) and wall time.
--out defaults to benchmarks/results (a temporary folder for --dry-run, so CPU numbers never
overwrite the repository's results). --dry-run skips the CUDA-only parts (kernels,
attention) with "skipped: needs CUDA"; `--skip pytest` avoids pytest-in-pytest in tests.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]
# name -> share of the time budget; a part's budget is its share of what is left
PARTS = {"pytest": 0.15, "kernels": 0.12, "attention": 0.18, "train": 0.40, "decode": 0.15}
CUDA_ONLY = ("kernels", "attention")
MIN_SECONDS = 20.0  # a part with less than this is skipped, not started
# a part stops starting new work once this share of its budget is left: attention and
# kernels write their rows only at the end, one mask or shape at a time
RESERVE = {"kernels": 0.25, "attention": 0.4, "train": 0.1, "decode": 0.15}
STATUS_TAG = "@@gpu_suite_status "


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


def device_peaks(name: str) -> tuple[float | None, float | None]:
    """(dense bf16 FLOP/s, HBM GB/s) from the device name's datasheet; None when unknown."""
    if "H200" in name:
        return 989e12, 4800.0
    if "H100" in name and ("SXM" in name or "HBM3" in name):  # torch: "NVIDIA H100 80GB HBM3"
        return 989e12, 3350.0
    return None, None


# ------------------------------------------------------------------ inside a part's process


@dataclass
class Ctx:
    out: Path
    dry: bool
    deadline: float  # time.monotonic(): start no new work after this
    device: torch.device

    def late(self) -> bool:
        return time.monotonic() > self.deadline


def write_part(ctx: Ctx, part: str, rows: list[dict], title: str, notes: str) -> None:
    """<out>/gpu_<part>.csv and .md, with the machine and the command."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m benchmarks.gpu_suite" + (" --dry-run" if ctx.dry else "")
    md = f"# {title}\n\nMachine: {machine()}\n\nRun by `{cmd}`.\n\n"
    md += (markdown_table(rows, "{:.4g}") if rows else "(no rows)") + "\n"
    md += f"\n{notes}\n" if notes else ""
    (ctx.out / f"gpu_{part}.md").write_text(md)
    if rows:
        with open(ctx.out / f"gpu_{part}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def part_kernels(ctx: Ctx) -> str:
    from benchmarks import kernels

    _, peak_gbps = device_peaks(device_name())
    known = peak_gbps is not None
    peak_gbps = peak_gbps or 3350.0
    rows = kernels.run(ctx.device, quick=ctx.dry, peak_gbps=peak_gbps, deadline=ctx.deadline)
    shapes = {(r["D"], r["mean_len"]) for r in rows if r["op"] == "pool"}
    full = 2 if ctx.dry else 9
    notes = (
        f"`benchmarks.kernels.run` ({'quick' if ctx.dry else 'full'} shapes: B*T = "
        f"{'4k' if ctx.dry else '64k'} bytes, bf16 on CUDA). speedup is over `reference` in "
        "the same run; GB/s is effective (the bytes the op must move at least over the time); "
        f"%peak is of {peak_gbps:g} GB/s"
        + ("" if known else " (device not in the table: the H100 SXM figure, assumed)")
        + ". verify: batch B, K=4 drafts, V=259."
    )
    if len(shapes) < full:
        notes += f" Budget reached: pooling ran {len(shapes)} of {full} (D, mean_len) shapes."
    write_part(ctx, "kernels", rows, "Kernels: Triton against PyTorch", notes)
    return f"{len(rows)} rows" + ("" if len(shapes) == full else f", {len(shapes)}/{full} shapes")


def part_attention(ctx: Ctx) -> str:
    from benchmarks import attention
    from bytelm.kernels.attention import xformers_available

    rows, notes = attention.run(ctx.device, quick=ctx.dry, deadline=ctx.deadline)
    masks = len({r["mask"] for r in rows})
    if not xformers_available():
        notes += " xformers is not installed here: no xformers rows."
    if masks < 3:
        notes += f" Budget reached after {masks} of 3 masks."
    write_part(ctx, "attention", rows, "Attention backends on ByteLM masks", notes)
    return f"{len(rows)} rows, {masks}/3 masks"


def train_setups(dry: bool):
    """(B, T, [(name, config, fixed k or None)], description) for the train part."""
    from bytelm.config import (
        ByteLMConfig,
        NGramConfig,
        OutputHeadsConfig,
        PatcherConfig,
        TransformerConfig,
    )

    if dry:
        B, T, heads, ngram = 2, 128, 2, NGramConfig(ns=(3, 4), buckets=256)
        latent = TransformerConfig(dim=48, n_layers=2, attn_heads=2)
        enc = TransformerConfig(dim=32, n_layers=1, attn_heads=2, window=32)
        dec = enc
    else:
        B, T, heads, ngram = 16, 4096, 4, NGramConfig()
        latent = TransformerConfig(dim=768, n_layers=12, attn_heads=12)
        enc = TransformerConfig(dim=256, n_layers=1, attn_heads=4, window=512)
        dec = replace(enc, n_layers=2)
    models = [("ByteTransformer", latent, None)]
    for k in (8, 4):
        cfg = ByteLMConfig(
            ngram=ngram,
            encoder=enc,
            latent=latent,
            decoder=dec,
            out_heads=OutputHeadsConfig(n=heads),
            patcher=PatcherConfig(name="fixed", k=k, max_patch_len=k),
        )
        models.append((f"ByteLM fixed:{k}", cfg, k))
    desc = (
        f"ByteTransformer: the latent ({latent.dim} x {latent.n_layers}) over bytes, full causal "
        f"attention. ByteLM: that latent over fixed:k patches; local encoder {enc.n_layers} "
        f"layer(s) and decoder {dec.n_layers} ({enc.dim} wide, window {enc.window}), {heads} "
        f"output heads, hashed n-grams n = {','.join(map(str, ngram.ns))}."
    )
    return B, T, models, desc


def train_row(ctx: Ctx, name: str, cfg, k: int | None, mode: str, B: int, T: int) -> dict:
    """Time plain training steps of one model -> a table row."""
    from bytelm.evals.flops import flops_per_byte
    from bytelm.model import ByteLM, ByteTransformer
    from bytelm.model.layers import doc_ids
    from bytelm.model.loss import multi_head_loss
    from bytelm.vocab import BOS

    dev, cuda = ctx.device, ctx.device.type == "cuda"
    warmup, steps = (1, 2) if ctx.dry else (3, 10)
    torch.manual_seed(0)
    model = ByteTransformer(cfg, attn_backend="auto") if k is None else ByteLM(cfg)
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    ids = torch.randint(0, 256, (B, T))
    ids[:, 0] = BOS  # one document per window
    r = 1.0
    if k is not None:  # the patch rate the FLOPs need, measured on this batch
        r = ids.numel() / float(model.patcher.ends(ids).sum())
    ids = ids.to(dev)

    def loss_fn(ids):
        # bf16 autocast over fp32 master weights on CUDA; plain fp32 on CPU (dry run)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            return multi_head_loss(model(ids), ids, doc_ids(ids)).loss

    fn = torch.compile(loss_fn) if mode == "compiled" else loss_fn

    def step():
        loss = fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    first = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < steps and (n == 0 or not ctx.late()):  # at least one timed step
        loss = step()
        n += 1
    sync()
    sec = (time.perf_counter() - t0) / n
    fpb = flops_per_byte(cfg, r, T, training=True)["total"]
    bps = B * T / sec
    peak, _ = device_peaks(device_name())
    row = {
        "model": name,
        "mode": mode,
        "dtype": "bf16 autocast" if cuda else "fp32",
        "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch x seq": f"{B}x{T}",
        "bytes/patch": round(r, 3),
        "steps": n,
        "ms/step": round(1e3 * sec, 2),
        "bytes/s": round(bps),
        "GFLOP/byte": round(fpb / 1e9, 4),
        "TFLOP/s": round(fpb * bps / 1e12, 4),
        "MFU %": round(100 * fpb * bps / peak, 1) if peak else "",
        "warm-up s": round(first, 2),
        "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else "",
        "loss": round(float(loss), 3),
    }
    print(row, flush=True)
    return row


def part_train(ctx: Ctx) -> str:
    B, T, models, desc = train_setups(ctx.dry)
    order = [(models[0], "eager"), (models[1], "eager")]
    if ctx.device.type == "cuda":  # compiling on CPU takes minutes: not in the dry run
        order += [(models[0], "compiled"), (models[1], "compiled")]
        order += [(models[2], "eager"), (models[2], "compiled")]
    else:
        order += [(models[2], "eager")]
    notes = (
        "Plain training steps, not the Trainer: forward under bf16 autocast (fp32 master "
        "weights; fp32 on CPU), multi-head cross-entropy, backward, AdamW (lr 1e-4, fused on "
        f"CUDA), on {B} x {T} random bytes 0..255 with BOS at position 0 (one document per "
        f"window), the same batch every step. {desc} Attention backend `auto` (flex on CUDA, "
        "sdpa on CPU). "
        "GFLOP/byte: `flops_per_byte(cfg, bytes/patch, seq_len, training=True)` (causal: the "
        "keys each query may read), with bytes/patch measured on the batch; MFU % = "
        "GFLOP/byte x bytes/s / the device's peak dense bf16 (H100 SXM, H200: 989 TFLOP/s; "
        "blank elsewhere). warm-up s: the first steps, compilation included. "
        "`compiled` wraps the forward and the loss in `torch.compile` (default mode)."
    )
    if ctx.device.type != "cuda":
        notes += " torch.compile rows need CUDA: not run on CPU."
    rows, skipped = [], []
    for (name, cfg, k), mode in order:
        if ctx.late():
            skipped.append(f"{name} {mode}")
            continue
        try:
            rows.append(train_row(ctx, name, cfg, k, mode, B, T))
        except Exception as e:  # one model failing (e.g. a compile error) keeps the others
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            print(f"{name} {mode} failed: {msg}", flush=True)
            skipped.append(f"{name} {mode} (failed: {msg})")
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        note = notes + (f" Not measured: {'; '.join(skipped)}." if skipped else "")
        write_part(ctx, "train", rows, "Training throughput and MFU", note)
    if not rows:
        raise RuntimeError(f"no training row measured: {'; '.join(skipped)}")
    return f"{len(rows)} rows" + (f", not measured: {'; '.join(skipped)}" if skipped else "")


def part_decode(ctx: Ctx) -> str:
    from bytelm.generate import generate
    from bytelm.model import ByteLM

    cuda = ctx.device.type == "cuda"
    _, _, models, _ = train_setups(ctx.dry)
    cfg = replace(models[2][1], out_heads=replace(models[2][1].out_heads, n=4))  # fixed:4
    torch.manual_seed(0)
    model = ByteLM(cfg).to(ctx.device, torch.bfloat16 if cuda else torch.float32).eval()
    new = 16 if ctx.dry else 256
    text = b"The quick brown fox jumps over the lazy dog; then it wrote a byte-level model. " * 2
    rows, base = [], {}
    for batch in (1, 16):
        prompts = [text[: 64 + i] for i in range(batch)]  # different lengths: ragged rows
        for mode, spec, cross in (
            ("plain", False, False),
            ("speculative", True, False),
            ("speculative, cross", True, True),
        ):
            if ctx.late():
                break
            kw = dict(temperature=0.0, speculative=spec, cross_patches=cross)
            generate(model, prompts, 8, **kw)  # warm-up
            res = generate(model, prompts, new, **kw)
            s = res.stats
            decode_bps = s.new_bytes / max(s.seconds - s.prefill_seconds, 1e-9)
            base.setdefault(batch, (decode_bps, res.bytes))
            rows.append(
                {
                    "batch": batch,
                    "mode": mode,
                    "draft heads": s.draft_heads,
                    "new bytes": s.new_bytes,
                    "bytes/forward": round(s.bytes_per_forward, 3),
                    "bytes/s": round(s.bytes_per_s, 1),
                    "decode bytes/s": round(decode_bps, 1),
                    "speedup vs plain": round(decode_bps / base[batch][0], 2),
                    "accept rate": " ".join(f"{a:.2f}" for a in s.accept_rate) or "-",
                    "same bytes as plain": res.bytes == base[batch][1],
                }
            )
            print(rows[-1], flush=True)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    notes = (
        f"Random-init ByteLM ({n_params:.1f}M parameters: the train part's fixed:4 model, 4 "
        f"output heads, {'bf16' if cuda else 'fp32'}), greedy `bytelm.generate`, {new} new "
        "bytes per row after prompts of 64.. bytes (batch 16: 64..79, so rows close patches "
        "at different bytes). speculative: every extra head drafts (3 drafts per forward), "
        "verify blocks stop at patch ends; cross: they cross them (`cross_patches`). "
        "Random weights draft badly, so bytes/forward stays near 1 and speculation may cost "
        "more than it saves; the numbers are as measured. bytes/s: the whole call, prefill "
        "included; decode bytes/s: prefill excluded. same bytes as plain: greedy speculative "
        "output equals plain greedy (with random weights near-tied logits can flip in bf16)."
    )
    write_part(ctx, "decode", rows, "Decoding speed: plain and self-speculative", notes)
    if not rows:
        raise RuntimeError("budget reached before the first decoding row")
    return f"{len(rows)} rows"


PART_FNS = {
    "kernels": part_kernels,
    "attention": part_attention,
    "train": part_train,
    "decode": part_decode,
}


def run_child(args) -> int:
    """Run one part in this process (started by the suite with --part)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny shapes: a second thread only adds contention
    ctx = Ctx(args.out, args.dry_run, args.deadline, device)
    note = PART_FNS[args.part](ctx)
    print(STATUS_TAG + json.dumps({"note": note}), flush=True)
    return 0


# ------------------------------------------------------------------------- the suite


def spawn(part: str, cmd: list[str], timeout: float) -> tuple[int | None, list[str], float]:
    """Run cmd, echoing its output prefixed with [part]; kill its process group at `timeout`.
    -> (exit code or None when killed, output lines, seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own group: a kill also ends compile workers
    )
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"[{part}] {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    reader.join(timeout=5)
    return rc, lines, time.monotonic() - t0


def last_error(lines: list[str]) -> str:
    """The line that says what went wrong: the last non-empty one (a traceback's exception)."""
    text = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(STATUS_TAG)]
    return (text[-1] if text else "no output")[:200]


PYTEST_SUMMARY = re.compile(r"\b\d+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")


def run_pytest(out: Path, budget: float) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=--import-mode=importlib", "tests"]
    rc, lines, sec = spawn("pytest", cmd, budget)
    summary = next((ln.strip("= ") for ln in reversed(lines) if PYTEST_SUMMARY.search(ln)), "")
    counts = {m[1]: int(m[0]) for m in re.findall(r"(\d+) (\w+)", summary)}
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    md = (
        f"# pytest -m gpu\n\nMachine: {machine()}\n\nCommand: `python {' '.join(cmd[1:])}`, "
        f"{sec:.0f} s.\n\nSummary: {summary or '(none)'}\n"
    )
    md += "".join(f"\n- {ln}" for ln in failures[:50]) + ("\n" if failures else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_pytest.md").write_text(md)
    with open(out / "gpu_pytest.csv", "w", newline="") as f:
        keys = ["passed", "failed", "skipped", "deselected", "error", "errors"]
        w = csv.DictWriter(f, fieldnames=["summary", "exit code", "seconds", *keys])
        w.writeheader()
        w.writerow({"summary": summary, "exit code": rc, "seconds": round(sec, 1), **counts})
    if rc is None:
        return f"failed: over budget, killed after {budget:.0f} s", summary
    if rc in (0, 5):  # 5: no test collected
        return "ok", summary
    return f"failed: {summary or last_error(lines)}", summary


def write_summary(out: Path, rows: list[dict], header: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_suite.md"
    cells = [
        {k: v.replace("|", "/") if isinstance(v, str) else v for k, v in r.items()} for r in rows
    ]
    path.write_text(f"{header}\n\n{markdown_table(cells, '{:.1f}')}\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget for the whole suite")
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, a few steps")
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    ap.add_argument("--part", choices=list(PART_FNS), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.out is None:
        dry_dir = Path(tempfile.gettempdir()) / "bytelm-gpu-suite-dry-run"
        args.out = dry_dir if args.dry_run else RESULTS
    if args.part:
        return run_child(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(PARTS)
    if unknown:
        ap.error(
            f"unknown part(s) in --skip: {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}"
        )
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("bytelm: the GPU suite needs a CUDA device; on CPU run it with --dry-run")
        return 2

    start, stamp = time.monotonic(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    end = start + 60 * args.minutes
    cmd = "python -m benchmarks.gpu_suite " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        f"# GPU suite\n\nMachine: {machine()}\n\nCommand: `{cmd.strip()}`; started {stamp}; "
        f"budget {args.minutes:g} min{' (dry run: tiny shapes on CPU)' if args.dry_run else ''}. "
        "Each part's results: gpu_<part>.md and .csv beside this file."
    )
    runnable = [p for p in PARTS if p not in skip and (cuda or p not in CUDA_ONLY)]
    rows, failed = [], False
    for part in PARTS:
        t0 = time.monotonic()
        left = end - t0
        budget = left * PARTS[part] / sum(PARTS[p] for p in runnable) if part in runnable else 0.0
        note = ""
        if part in skip:
            status = "skipped: --skip"
        elif part not in runnable:
            status = "skipped: needs CUDA"
        elif budget < MIN_SECONDS:
            status = "skipped: budget"
        elif part == "pytest":
            status, note = run_pytest(args.out, budget)
        else:
            deadline = t0 + budget * (1 - RESERVE[part])
            child = [sys.executable, "-m", "benchmarks.gpu_suite", "--part", part]
            child += ["--out", str(args.out), "--deadline", repr(deadline)]
            child += ["--dry-run"] if args.dry_run else []
            rc, lines, _ = spawn(part, child, budget)
            got = [ln for ln in lines if ln.startswith(STATUS_TAG)]
            if rc is None:
                status = f"failed: over budget, killed after {budget:.0f} s"
            elif rc != 0 or not got:
                status = f"failed: {last_error(lines)}"
            else:
                status, note = "ok", json.loads(got[-1][len(STATUS_TAG) :])["note"]
        if part in runnable:
            runnable.remove(part)
        failed |= status.startswith("failed")
        wall = time.monotonic() - t0
        rows.append(
            {"part": part, "status": status, "wall s": wall, "budget s": budget, "notes": note}
        )
        print(f"gpu_suite: {part}: {status} ({wall:.1f} s){': ' + note if note else ''}")
        path = write_summary(args.out, rows, header)
    total = time.monotonic() - start
    path = write_summary(args.out, rows, header + f" Total wall time {total:.0f} s.")
    print("\n" + path.read_text() + f"\nwrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
