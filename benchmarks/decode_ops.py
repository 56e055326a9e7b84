"""Tensor ops per decoded byte: what a GPU would launch per byte, counted with a dispatch mode.

    python -m benchmarks.decode_ops [--new-bytes 128] [--fixed-shapes]

The `demo` preset's ByteLM (random weights; fixed:4 and space patching),
greedy plain decoding of `--new-bytes` after a 32-byte prompt, batch 1. Counts
every aten op dispatched during the decode calls (prefill excluded) and divides
by the bytes decoded. Runs against whatever `bytelm` is importable, so the same
file measures an older checkout (`PYTHONPATH=old_checkout python -m ...`).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bytelm.config import load_preset, override
from bytelm.model import ByteLM


class CountOps(TorchDispatchMode):  # not benchmarks.common's: this file runs on old checkouts
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def ops_per_byte(patcher: str, new_bytes: int, fixed: bool = False) -> float:
    torch.manual_seed(0)
    cfg = override(load_preset("demo"), {"model.patcher.name": patcher}).model
    model = ByteLM(cfg).eval()
    prompt = torch.tensor([[256, *b"def fibonacci(n):\n    return n"[:31]]])
    kw = {"fixed_shapes": True} if fixed else {}  # older checkouts have no such option
    cache = model.new_cache(1, prompt.shape[1] + new_bytes + 8, heads=1, **kw)
    logits = model.prefill(prompt, cache)
    nxt = logits[:, -1, 0].argmax(-1, keepdim=True)
    with CountOps() as c:
        for _ in range(new_bytes):
            logits = model.decode(nxt, cache)
            nxt = logits[:, -1, 0].argmax(-1, keepdim=True)
    return c.n / new_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-bytes", type=int, default=128)
    ap.add_argument("--fixed-shapes", action="store_true", help="also the fixed-shape step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for p in ("fixed", "space"):
        print(f"demo preset, {p}: {ops_per_byte(p, args.new_bytes):.1f} aten ops per decoded byte")
    if args.fixed_shapes:
        for p in ("fixed", "space"):
            n = ops_per_byte(p, args.new_bytes, fixed=True)
            print(f"demo preset, {p}, fixed-shape step: {n:.1f} aten ops per decoded byte")


if __name__ == "__main__":
    main()
