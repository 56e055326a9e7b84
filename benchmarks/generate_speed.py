"""Generation speed: cached vs full recomputation, and speculative vs plain decoding.

    python -m benchmarks.generate_speed                # trains runs/genbench first if missing
    python -m benchmarks.generate_speed --checkpoint runs/genbench/checkpoint

Two ratios, each measured in the same run with the same model:

1. Time per new byte of cached incremental decoding (`model.decode`, one byte)
   vs full recomputation (`model(ids)` over the whole context, what decoding
   without caches pays per byte) at 256, 1024 and 4096 bytes of context.
2. Greedy self-speculative decoding with 1, 3 and 7 draft heads (K = 2, 4 and
   8 heads: the first heads of one 8-head model) vs plain cached greedy
   decoding: bytes per forward pass, acceptance per draft head and wall-clock
   speedup, on prompts from the held-out tail of tinyshakespeare. The
   speculative bytes are checked to equal the plain ones.

The model is a small ByteLM with 8 heads trained on tinyshakespeare for a
bounded number of steps with `bytelm train` (the checkpoint stays in runs/,
which git ignores). Results go to benchmarks/results/generate_speed.{csv,md}
with the machine they ran on.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bytelm
from benchmarks.common import machine as common_machine
from bytelm.checkpoint import load_model, load_trainer_state
from bytelm.vocab import BOS

DATA = "/work/shared/data/tinyshakespeare.txt"
RESULTS = Path(__file__).parent / "results"
TRAIN_ARGS = [  # a small 8-head ByteLM; --train.steps is set from --steps
    "--preset", "demo",
    "--data.sources", DATA, "--data.split", "tail", "--data.heldout_fraction", "0.1",
    "--data.seq_len", "128", "--data.batch_size", "16",
    "--model.out_heads.n", "8", "--model.patcher.name", "fixed", "--model.patcher.k", "4",
    "--model.encoder.dim", "64", "--model.decoder.dim", "64",
    "--model.latent.dim", "128", "--model.latent.n_layers", "2",
    "--train.lr", "4e-3", "--train.warmup_steps", "30", "--train.eval_every", "100000",
    "--train.eval_bytes", "32768", "--train.save_every", "60",
]  # fmt: skip


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{common_machine()}, load average {load:.1f} at start"


def train(out_dir: str, steps: int, threads: int) -> None:
    """`bytelm train` for a fixed number of steps (1-2 s each on one busy CPU core)."""
    cmd = [sys.executable, "-m", "bytelm.cli", "train", *TRAIN_ARGS]
    cmd += ["--train.steps", str(steps), "--train.out_dir", out_dir]
    print("training:", " ".join(cmd), flush=True)
    # one OpenMP thread: on a shared CPU, more threads spin against each other
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def heldout_text() -> bytes:
    data = Path(DATA).read_bytes()
    return data[int(len(data) * 0.9) :]


def timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def cached_vs_full(model, text: bytes, contexts=(256, 1024, 4096), new=32) -> list[dict]:
    rows = []
    for C in contexts:
        ids = torch.tensor([[BOS, *text[: C - 1 + new]]])  # C bytes of context, then `new`
        times = []
        for _ in range(3):
            cache = model.new_cache(1, C + new)  # every head, as the full forward computes
            model.prefill(ids[:, :C], cache)
            t = time.perf_counter()
            for i in range(new):  # one byte per call, at contexts C .. C + new - 1
                model.decode(ids[:, C + i : C + i + 1], cache)
            times.append((time.perf_counter() - t) / new)
        t_cached = statistics.median(times)
        t_full = timed(lambda x=ids[:, :C]: model(x), 3 if C <= 1024 else 2)
        rows.append(
            {
                "context_bytes": C,
                "cached_ms_per_byte": 1e3 * t_cached,
                "full_ms_per_byte": 1e3 * t_full,
                "speedup": t_full / t_cached,
            }
        )
        print(
            f"context {C:5d}: cached {1e3 * t_cached:7.2f} ms/byte, full {1e3 * t_full:8.2f} "
            f"ms/byte, ratio {t_full / t_cached:6.1f}x",
            flush=True,
        )
    return rows


def speculative_vs_plain(model, text: bytes, n_prompts=4, prompt_len=200, new=256) -> list[dict]:
    step = len(text) // n_prompts
    prompts = [text[i * step : i * step + prompt_len] for i in range(n_prompts)]
    rows, base = [], None
    for D in (0, 1, 3, 7):
        outs, secs, nbytes, forwards, drafted, accepted = [], 0.0, 0, 0, [0] * D, [0] * D
        kw = dict(temperature=0.0, speculative=D > 0, draft_heads=D)
        bytelm.generate(model, prompts[0], 16, **kw)  # warm-up
        for p in prompts:  # one prompt at a time: batch 1, the latency case
            r = bytelm.generate(model, p, new, **kw)
            outs.append(r.bytes)
            secs += r.stats.seconds - r.stats.prefill_seconds
            nbytes += r.stats.new_bytes
            forwards += r.stats.forward_passes
            drafted = [a + b for a, b in zip(drafted, r.stats.drafted)]
            accepted = [a + b for a, b in zip(accepted, r.stats.accepted)]
        if base is None:
            base = {"outs": outs, "secs": secs}
        assert outs == base["outs"], f"speculative greedy with {D} drafts changed the output"
        row = {
            "heads": D + 1,
            "draft_heads": D,
            "bytes_per_forward": nbytes / forwards,
            "bytes_per_s": nbytes / secs,
            "speedup": base["secs"] / secs,
            "accept_rate": " ".join(f"{a / max(d, 1):.2f}" for a, d in zip(accepted, drafted)),
        }
        rows.append(row)
        print(
            f"heads {D + 1}: {row['bytes_per_forward']:.2f} bytes/forward, "
            f"{row['bytes_per_s']:.0f} bytes/s, speedup {row['speedup']:.2f}x, "
            f"acceptance {row['accept_rate'] or '-'}",
            flush=True,
        )
    return rows


def markdown(title: str, rows: list[dict], fmt: dict) -> str:
    keys = list(rows[0])
    out = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(k, "{}").format(r[k]) for k in keys) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/genbench/checkpoint")
    ap.add_argument(
        "--steps", type=int, default=480, help="training steps if it is missing (~8 min, 2 cores)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings)")
    ap.add_argument("--new-bytes", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.checkpoint).exists():
        train(str(Path(args.checkpoint).parent), args.steps, args.threads)
    model, cfg = load_model(args.checkpoint)
    try:
        state = load_trainer_state(args.checkpoint)
        steps = state.get("step", "?")
    except ValueError:
        steps = "?"
    n_params = sum(p.numel() for p in model.parameters())
    info = machine()
    desc = (
        f"ByteLM {n_params / 1e6:.2f}M parameters, {cfg.model.out_heads.n} heads, patcher "
        f"{cfg.model.patcher.name} (k={cfg.model.patcher.k}), encoder/decoder window "
        f"{cfg.model.encoder.window}, trained {steps} steps on tinyshakespeare"
    )
    print(f"{desc}\nmachine: {info}\n", flush=True)
    text = heldout_text()

    full = cached_vs_full(model, text)
    spec = speculative_vs_plain(model, text, new=args.new_bytes)

    md = (
        "## Generation speed (`benchmarks/generate_speed.py`)\n\n"
        f"Model: {desc}.\n\nMachine: {info}.\n\n"
        + markdown(
            "Cached incremental decoding vs full recomputation (batch 1, time per new byte)",
            full,
            {"cached_ms_per_byte": "{:.2f}", "full_ms_per_byte": "{:.2f}", "speedup": "{:.1f}x"},
        )
        + "\n"
        + markdown(
            f"Self-speculative vs plain cached greedy decoding (batch 1, {args.new_bytes} new "
            "bytes after 4 held-out prompts of 200 bytes; identical output checked; "
            "acceptance per draft head = P(accepted | earlier drafts accepted))",
            spec,
            {"bytes_per_forward": "{:.2f}", "bytes_per_s": "{:.0f}", "speedup": "{:.2f}x"},
        )
    )
    print("\n" + md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generate_speed.md").write_text(md)
    with open(RESULTS / "generate_speed.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "setting", "metric", "value", "model", "machine"])
        for r in full:
            for k in ("cached_ms_per_byte", "full_ms_per_byte", "speedup"):
                w.writerow(["cached_vs_full", f"context={r['context_bytes']}", k, r[k], desc, info])
        for r in spec:
            for k in ("bytes_per_forward", "bytes_per_s", "speedup", "accept_rate"):
                w.writerow(["speculative_vs_plain", f"heads={r['heads']}", k, r[k], desc, info])
    return 0


if __name__ == "__main__":
    sys.exit(main())
