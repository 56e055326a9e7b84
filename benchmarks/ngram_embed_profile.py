"""Does hashed n-gram embedding pay for a fused kernel? A profile of the encoder step.

DESIGN.md asks for `bytelm/kernels/ngram_embed` (hashing plus embedding-bag
sum, fused) only if a profile shows that hashing plus summing the n-gram
embeddings costs more than 10% of the encoder step. The encoder step is
embed (byte + hashed n-grams) + local encoder forward + backward, at the
preset's shapes (batch_size x seq_len bytes); the loss is a fixed random
projection of the encoder output, so every gradient is non-trivial.

Measurements, on the same inputs, in process CPU time of single calls,
interleaved round by round so that background load hits all alike:

1. ablation: the step with and without the n-gram part (hash, lookup, sum
   and their backward); the difference is what a fused kernel could at most
   remove;
2. the parts alone: hashing, and lookup + sum forward and backward (this
   adds their own autograd overhead, so it errs high);
3. torch.profiler: where the time goes, by region (forward) and by op.

The decision takes the largest of the estimates (median and min of 1 and 2)
as the n-gram share of the step, and measures the same with PyTorch's own
fused lookup + sum, `F.embedding_bag(mode="sum")`, the first thing to try
before a custom kernel.

    python -m benchmarks.ngram_embed_profile [--preset demo] [--rounds 20] [--threads 1]

Writes benchmarks/results/ngram_embed_profile.md with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import RESULTS, machine, markdown_table
from bytelm.config import load_preset
from bytelm.model.embed import ByteEmbedding, ngram_hashes
from bytelm.model.layers import Stack, doc_ids, init_weights
from bytelm.vocab import BOS

THRESHOLD = 0.10  # DESIGN.md: build the fused kernel above this share


def make_step(emb: ByteEmbedding, enc: Stack, ids: torch.Tensor, ngram: str | None):
    """The step; `ngram` is "embedding" (lookup then sum, as ByteEmbedding does),
    "bag" (PyTorch's fused F.embedding_bag, mode "sum") or None (no n-grams)."""
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    proj = torch.randn(B, T, emb.byte.embedding_dim, generator=torch.Generator().manual_seed(1))
    params = list(emb.parameters()) + list(enc.parameters())

    def step():
        docs = doc_ids(ids)
        with record_function("byte_embed"):
            x = emb.byte(ids)
        if ngram:  # ByteEmbedding.forward's n-gram part
            with record_function("ngram_hash"):
                idx = ngram_hashes(ids, docs, emb.ns, emb.buckets) + emb.offsets  # (B, T, n_ns)
            with record_function("ngram_lookup_sum"):
                x = x + lookup_sum(emb, idx, ngram)  # (B, T, D)
        with record_function("encoder_forward"):
            h = enc(x, docs, pos, "sdpa")  # (B, T, D)
            loss = (h * proj).sum() / (B * T)
        with record_function("backward"):
            loss.backward()
        for p in params:
            p.grad = None
        return x

    return step


def lookup_sum(emb: ByteEmbedding, idx: torch.Tensor, how: str) -> torch.Tensor:
    """idx (B, T, n_ns) -> the sum of the n-gram rows (B, T, D)."""
    if how == "bag":
        bag = F.embedding_bag(idx.reshape(-1, idx.shape[-1]), emb.ngram.weight, mode="sum")
        return bag.view(*idx.shape[:2], -1)
    return emb.ngram(idx).sum(dim=2)


def cpu_ms(fn) -> float:
    """Process CPU milliseconds of one fn() call: on a shared machine wall time mostly
    measures the neighbours, CPU time the work (one torch thread: the two agree when idle)."""
    t0 = time.process_time()
    fn()
    return 1e3 * (time.process_time() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_preset(args.preset)
    m, B, T = cfg.model, cfg.data.batch_size, cfg.data.seq_len
    emb = ByteEmbedding(m.encoder.dim, m.ngram.ns, m.ngram.buckets)
    enc = Stack(m.encoder)
    init_weights(enc, m.encoder.n_layers)
    ids = torch.randint(0, 256, (B, T))
    ids[:, 0] = BOS
    ids[torch.rand(B, T) < 1 / 2048] = BOS  # a few document starts inside windows

    full, bare = make_step(emb, enc, ids, "embedding"), make_step(emb, enc, ids, None)
    full_bag = make_step(emb, enc, ids, "bag")
    torch.testing.assert_close(full(), emb(ids, doc_ids(ids)))  # the step embeds like the model
    torch.testing.assert_close(full_bag(), full())
    for _ in range(3):
        full(), full_bag(), bare()
    docs = doc_ids(ids)
    idx = ngram_hashes(ids, docs, emb.ns, emb.buckets) + emb.offsets
    grad = torch.randn(B, T, m.encoder.dim)

    def alone(how):  # lookup + sum, forward and backward, alone
        def run():
            lookup_sum(emb, idx, how).backward(grad)
            emb.ngram.weight.grad = None

        return run

    def hash_():
        return ngram_hashes(ids, docs, emb.ns, emb.buckets) + emb.offsets

    parts = {
        "embed + encoder fwd + bwd, with n-grams": full,
        "the same without the n-gram part": bare,
        "the same with n-grams through F.embedding_bag": full_bag,
        "hashing alone (forward)": hash_,
        "lookup + sum alone (forward + backward)": alone("embedding"),
        "F.embedding_bag alone (forward + backward)": alone("bag"),
    }
    samples = {k: [] for k in parts}
    for _ in range(args.rounds):  # interleaved, so that background load hits all alike
        for k, fn in parts.items():
            samples[k] += [cpu_ms(fn), cpu_ms(fn)]
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    f, n, fb, h, g, gb = parts
    stats = (("median", med), ("min", low))
    # estimates of what a fused kernel could at most remove, as a share of the step: the
    # ablation, and the parts timed alone (which adds their own autograd overhead)
    ablation = {s: (d[f] - d[n]) / d[f] for s, d in stats}
    alone_share = {s: (d[h] + d[g]) / d[f] for s, d in stats}
    ablation_bag = {s: (d[fb] - d[n]) / d[fb] for s, d in stats}
    alone_bag = {s: (d[h] + d[gb]) / d[fb] for s, d in stats}
    share = max(*ablation.values(), *alone_share.values())
    share_bag = max(*ablation_bag.values(), *alone_bag.values())

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            full()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    regions = {
        e.key: e.cpu_time_total for e in events if e.key in ("byte_embed", "ngram_hash",
        "ngram_lookup_sum", "encoder_forward", "backward")
    }  # fmt: skip
    region_rows = [
        {"region": k, "ms per step": v / 5e3, "share of step": v / total_us}
        for k, v in regions.items()
    ]
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    op_rows = [
        {"op": e.key, "calls per step": e.count // 5, "self ms per step": e.self_cpu_time_total / 5e3,
         "share of step": e.self_cpu_time_total / total_us}
        for e in top
    ]  # fmt: skip

    if share <= THRESHOLD:
        decision = "under the threshold: do not build the kernel"
    elif share_bag <= THRESHOLD:
        decision = (
            "over the threshold as ByteEmbedding computes it today (lookup, then sum), under it "
            "with PyTorch's own fused `F.embedding_bag(mode='sum')`: use that, no custom kernel"
        )
    else:
        decision = "over the threshold even with F.embedding_bag: build the fused kernel"
    abl_rows = [
        {
            "step": k,
            "median CPU ms": med[k],
            "min CPU ms": low[k],
            "share (median)": med[k] / med[f],
        }
        for k in parts
    ]
    abl_rows.insert(
        2,
        {"step": "n-gram part (difference)", "median CPU ms": med[f] - med[n],
         "min CPU ms": low[f] - low[n], "share (median)": ablation["median"]},
    )  # fmt: skip
    pct = lambda x: f"{100 * x:.1f}%"
    md = f"""# Hashed n-gram embedding: share of the encoder step

Machine: {machine()}

Preset `{args.preset}`: batch {B} x {T} bytes, encoder dim {m.encoder.dim}, {m.encoder.n_layers} layer(s),
{m.encoder.attn_heads} heads, window {m.encoder.window}; n-grams n = {", ".join(map(str, emb.ns))},
{emb.buckets} buckets per n ({len(emb.ns) * emb.buckets} x {m.encoder.dim} table).
Step = embed + encoder forward + backward (sdpa attention); times are process CPU
times of single calls, 2 per round, {args.rounds} interleaved rounds.

## Ablation (the decision)

{markdown_table(abl_rows)}

Share of the encoder step that hashing plus summing the n-gram embeddings takes:

| n-gram sum | ablation (median) | ablation (min) | parts alone (median) | parts alone (min) |
|---|---|---|---|---|
| lookup, then sum (ByteEmbedding today) | {pct(ablation["median"])} | {pct(ablation["min"])} | {pct(alone_share["median"])} | {pct(alone_share["min"])} |
| F.embedding_bag, mode "sum" | {pct(ablation_bag["median"])} | {pct(ablation_bag["min"])} | {pct(alone_bag["median"])} | {pct(alone_bag["min"])} |

**Largest estimates: {pct(share)} today, {pct(share_bag)} with embedding_bag; threshold
{pct(THRESHOLD)}. Decision: {decision}.**

## torch.profiler, 5 steps with n-grams (inclusive time per region)

The profiler's times are elapsed times per op, so on a busy machine they
include time the thread was preempted; shares are indicative, the ablation
(CPU time) decides.

{markdown_table(region_rows)}

Backward ops are not split by region: the n-gram part of the backward is
`SumBackward1` (the sum over n) plus the n-gram table's share of
`EmbeddingBackward0`, which the ablation above includes.

## Top ops by self CPU time

{markdown_table(op_rows)}

Produced by `python -m benchmarks.ngram_embed_profile --preset {args.preset} --rounds {args.rounds} --threads {args.threads}`.
"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "ngram_embed_profile.md"
    out.write_text(md)
    print(md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
