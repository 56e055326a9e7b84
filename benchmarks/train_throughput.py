"""Training throughput: ByteLM (fixed patches of 4 and 8) against a plain ByteTransformer.

The baseline has the width and depth of ByteLM's latent transformer, so the
ratio shows what moving the bulk of the compute from bytes to patches buys.
All models train on the same bytes in one run; timings interleave the models
round by round so that background load affects each alike.

    python -m benchmarks.train_throughput [--preset demo] [--rounds 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import markdown_table, write_results
from bytelm import config as C
from bytelm.model import ByteLM, ByteTransformer
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.vocab import BOS


def step_fn(model, ids):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        out = multi_head_loss(model(ids), ids, doc_ids(ids))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per model per round")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--seq-len", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = C.load_preset(args.preset)
    B = args.batch_size or cfg.data.batch_size
    T = args.seq_len or cfg.data.seq_len
    torch.manual_seed(0)
    ids = torch.randint(32, 127, (B, T))
    ids[:, 0] = BOS
    lat = cfg.model.latent
    models = {
        f"ByteTransformer (dim {lat.dim}, {lat.n_layers} layers)": ByteTransformer(lat),
    }
    for k in (4, 8):
        mc = C.override(cfg, {"model.patcher.name": "fixed", "model.patcher.k": str(k)}).model
        models[f"ByteLM fixed:{k}"] = ByteLM(mc)
    steps = {name: step_fn(m, ids) for name, m in models.items()}
    for s in steps.values():  # warm up allocators and kernels
        s()
    # wall time, and this process's CPU time: on a shared machine the CPU time is the
    # steadier of the two, since time spent waiting for a core is not counted
    secs, cpu = dict.fromkeys(steps, 0.0), dict.fromkeys(steps, 0.0)
    for _ in range(args.rounds):
        for name, s in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                s()
            secs[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    n_bytes = B * T * args.steps * args.rounds
    base = next(iter(secs))
    rows = []
    for name, m in models.items():
        rows.append(
            {
                "model": name,
                "params (M)": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                "bytes/s (wall)": round(n_bytes / secs[name]),
                "bytes per CPU-s": round(n_bytes / cpu[name]),
                "ratio vs baseline (wall)": round(secs[base] / secs[name], 2),
                "ratio vs baseline (CPU)": round(cpu[base] / cpu[name], 2),
            }
        )
    print(markdown_table(rows))
    notes = (
        f"Preset `{args.preset}`, batch {B} x {T} bytes, {args.rounds} interleaved rounds of "
        f"{args.steps} training steps (forward, backward, AdamW) per model, "
        f"{torch.get_num_threads()} torch threads."
    )
    print(
        write_results(
            "train_throughput", rows, "Training throughput: ByteLM vs ByteTransformer", notes
        )
    )


if __name__ == "__main__":
    main()
