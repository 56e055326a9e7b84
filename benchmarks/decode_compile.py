"""Decode step: eager (data-dependent), eager fixed-shape, and compiled, on CPU.

    python -m benchmarks.decode_compile [--new-bytes 96] [--repeats 3]

The `demo` preset's ByteLM with fixed:4 patching (random weights; one output head),
greedy decoding of `--new-bytes` bytes with `ByteLM.decode` after a 32-byte prompt, batch
1 and 8, on one torch thread. Three steps over the same caches and bytes:

- eager: the default step (reads back how many patches close, one host sync per call,
  and steps only those);
- fixed: the fixed-shape step (every row steps one latent slot per byte, masked: no sync);
- compiled: `compile=True`, on CPU the hybrid step of `bytelm.model.decode_compile` (the
  byte-level halves compiled, default mode; the latent eager, only when a patch closes;
  compiled before timing, graphs per batch size).

Times are CPU time (`time.process_time`) per decoded byte of the decode loop (prefill
excluded), the median of `--repeats`, paths alternating inside each repeat so that a busy
machine slows them alike; compare the ratios, not the absolute times. Aten ops per byte
are counted with a dispatch mode for the two eager steps (the counter cannot see inside a
compiled graph). Results: benchmarks/results/decode_compile.{md,csv}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import write_results
from benchmarks.decode_ops import CountOps
from bytelm.config import load_preset, override
from bytelm.model import ByteLM

PROMPT = b"def fibonacci(n):\n    return n if n < 2 else fibona"


def run(model, batch, new_bytes, step, count=False):
    """CPU seconds per decoded byte (and aten ops per byte when `count`)."""
    prompt = torch.tensor([[256, *PROMPT[:31]]] * batch)
    kw = {"fixed": {"fixed_shapes": True}, "compiled": {"compile": True}}.get(step, {})
    cache = model.new_cache(batch, prompt.shape[1] + new_bytes + 8, heads=1, **kw)
    nxt = model.prefill(prompt, cache)[:, -1, 0].argmax(-1, keepdim=True)
    counter = CountOps() if count else None
    t0 = time.process_time()
    if counter:
        counter.__enter__()
    for _ in range(new_bytes):
        nxt = model.decode(nxt, cache)[:, -1, 0].argmax(-1, keepdim=True)
    if counter:
        counter.__exit__(None, None, None)
    dt = (time.process_time() - t0) / new_bytes
    return dt, (counter.n / new_bytes if counter else None)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-bytes", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = override(load_preset("demo"), {"model.patcher.name": "fixed", "model.patcher.k": 4})
    model = ByteLM(cfg.model).eval()
    steps = ("eager", "fixed", "compiled")
    rows = []
    for B in args.batches:
        t = time.process_time()
        run(model, B, 4, "compiled")  # compile this batch size's graph
        compile_s = time.process_time() - t
        ops = {s: run(model, B, args.new_bytes, s, count=True)[1] for s in steps[:2]}
        times = {s: [] for s in steps}
        for _ in range(args.repeats):
            for s in steps:
                times[s].append(run(model, B, args.new_bytes, s)[0])
        med = {s: statistics.median(v) for s, v in times.items()}
        for s in steps:
            rows.append({
                "batch": B,
                "step": s,
                "cpu_ms_per_byte": round(1e3 * med[s], 3),
                "vs_eager": round(med[s] / med["eager"], 3),
                "aten_ops_per_byte": "" if ops.get(s) is None else round(ops[s], 1),
                "compile_cpu_s": round(compile_s, 1) if s == "compiled" else "",
            })  # fmt: skip
            print(rows[-1], flush=True)
    notes = (
        f"`python -m benchmarks.decode_compile --new-bytes {args.new_bytes} "
        f"--repeats {args.repeats}`: demo preset, fixed:4, one output head, {args.new_bytes} "
        "greedy bytes after a 32-byte prompt, one torch thread; CPU time per decoded byte "
        "(median of the repeats; paths alternate inside each repeat); vs_eager: the ratio "
        "to the default eager step in the same run. aten ops per byte: dispatch-mode count "
        "(eager steps only)."
    )
    path = write_results(
        "decode_compile", rows, "Decode step: eager, fixed-shape, compiled (CPU)", notes
    )
    print(path)


if __name__ == "__main__":
    main()
