"""Rule patchers in the training forward: the vectorised `ends` against the byte-by-byte
`step` loop it replaced (which `ends` used to be), in tensor ops and CPU time, one run.

    python -m benchmarks.patcher_ops [--batch 16] [--seq-len 256 1024]

Counts every aten op dispatched (what a GPU would launch as kernels) and the
median CPU time; the ratio is step-loop / vectorised. Also `ends_to_lengths`,
which used to loop over rows with a host sync per row, and `window_ends`, what
training and evaluation call: `ends` on windows of the `stdlib` training split
at a training step's random starts, each continuing its document's patching
(`bytelm.patchers.windows`: the row starts, found by a look back, then `ends`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import count_ops, write_results
from bytelm.data import DataConfig, load_corpus
from bytelm.patchers import FixedPatcher, SpacePatcher, ends_to_lengths
from bytelm.patchers.windows import window_ends
from bytelm.vocab import BOS, EOS


def cpu_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(1e3 * (time.process_time() - t0))
    return statistics.median(times)


def text_batch(B: int, T: int) -> torch.Tensor:
    """Rows of words and spaces with a document boundary inside, like packed windows."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(ord("a"), ord("z") + 1, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < 0.18] = ord(" ")
    ids[:, T // 2] = EOS
    ids[:, T // 2 + 1] = BOS
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[256, 1024])
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = load_corpus(DataConfig(sources=("stdlib",)), progress=True)["train"]
    rows = []
    for T in args.seq_len:
        ids = text_batch(args.batch, T)
        starts = split.train_starts(0, args.batch, seed=0)
        windows = split.train_batch(0, args.batch, T, seed=0)
        for p in (FixedPatcher(4), SpacePatcher(16)):
            loop = lambda p=p, ids=ids: p.step(p.start(ids.shape[0]), ids)
            vec = lambda p=p, ids=ids: p.ends(ids)
            win = lambda p=p, s=starts, w=windows: window_ends(p, split, s, w)
            assert torch.equal(loop(), vec()), "vectorised ends must equal the step loop"
            ends, t_loop, t_vec = vec(), cpu_ms(loop), cpu_ms(vec)
            rows.append(
                {
                    "patcher": p.name,
                    "B x T": f"{args.batch} x {T}",
                    "ops: step loop": count_ops(loop),
                    "ops: vectorised": count_ops(vec),
                    "ms: step loop": t_loop,
                    "ms: vectorised": t_vec,
                    "speedup": t_loop / t_vec,
                    "ops: ends_to_lengths": count_ops(lambda e=ends: ends_to_lengths(e)),
                    "ops: window_ends": count_ops(win),
                    "ms: window_ends": cpu_ms(win),
                }
            )
            print(rows[-1])
    path = write_results(
        "patcher_ops",
        rows,
        "Rule patchers: vectorised ends vs the byte-by-byte step loop",
        "Command: `python -m benchmarks.patcher_ops`. CPU time, one torch thread, median of 5; "
        "ops = aten ops dispatched (kernel launches on a GPU). `ends_to_lengths` now runs "
        "a fixed number of ops whatever B and T (it looped over rows before). `window_ends`: "
        "the same patcher on a training step's windows of the stdlib training split, each "
        "continuing its document's patching (row starts from a look back, then `ends`).",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
