"""`bytelm demo`: train a small ByteLM on the stdlib corpus, compare with gzip and xz, sample."""

from __future__ import annotations

import gzip
import lzma
import time

from bytelm.config import RunConfig
from bytelm.vocab import decode


def compressor_bpb(data: bytes) -> dict[str, float]:
    """Bits per byte of standard compressors on `data` (the same bytes the model is scored on)."""
    n = max(len(data), 1)
    return {
        "gzip -9": 8 * len(gzip.compress(data, compresslevel=9)) / n,
        "xz -9": 8 * len(lzma.compress(data, preset=9)) / n,
    }


def heldout_bytes(split, max_bytes: int | None) -> bytes:
    """The raw bytes (specials dropped) of the held-out stream prefix that evaluation scores."""
    n = split.stream_len if not max_bytes else min(split.stream_len, max_bytes + 1)
    return decode(split.window(0, n).tolist())


def run_demo(cfg: RunConfig) -> int:
    from bytelm.generate import generate_naive
    from bytelm.train import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    n_params = sum(p.numel() for p in trainer.raw_model.parameters())
    print(
        f"bytelm demo: {cfg.arch} with {n_params / 1e6:.2f}M parameters, patcher "
        f"{cfg.model.patcher.name}, {cfg.train.steps} steps of "
        f"{cfg.data.batch_size}x{cfg.data.seq_len} bytes on {', '.join(cfg.data.sources)}"
    )
    trainer.fit()
    train_s = time.perf_counter() - t0
    held = trainer.corpus["heldout"]
    ev = trainer.evaluate()
    raw = heldout_bytes(held, cfg.train.eval_bytes or None)
    rows = [("bytelm (this run)", ev["bpb"])] + list(compressor_bpb(raw).items())
    print(
        f"\nheld-out bits per byte ({ev['eval_bytes']:,} bytes, {train_s / 60:.1f} min of training):"
    )
    for name, v in rows:
        print(f"  {name:<20} {v:6.3f}")
    prompt = b"def "
    sample = generate_naive(trainer.raw_model, prompt, 240, temperature=0.7, seed=cfg.train.seed)
    print(
        "\nsample (plain sampling, temperature 0.7):\n"
        + (prompt + sample).decode("utf-8", "replace")
    )
    return 0
