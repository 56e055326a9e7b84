"""`bytelm demo`: train a small ByteLM on the stdlib corpus, compare with gzip and xz, sample."""

from __future__ import annotations

import dataclasses
import gzip
import lzma
import time

from bytelm.config import CALIBRATION_BYTES, RunConfig, entropy_model_path
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


def ensure_entropy_model(cfg: RunConfig) -> None:
    """Train the entropy patcher's model (preset 'entropy', ~1 min) unless it exists already."""
    from bytelm.config import load_preset, override
    from bytelm.train import Trainer

    pc = cfg.model.patcher
    path = entropy_model_path(pc, cfg.train.out_dir)
    if cfg.arch != "bytelm" or pc.name != "entropy" or (path / "model.safetensors").is_file():
        return
    ecfg = override(load_preset("entropy"), {"train.out_dir": str(path.parent)})
    ecfg = dataclasses.replace(ecfg, data=dataclasses.replace(ecfg.data, sources=cfg.data.sources))
    print(f"bytelm demo: training the entropy model first ({ecfg.train.steps} steps) -> {path}")
    Trainer(ecfg).fit()


def compression_table(trainer, max_bytes: int = CALIBRATION_BYTES) -> str:
    """Fixed, space and entropy patching of the held-out split (Markdown). The entropy row is
    calibrated on the same training sample as training calibrated, so its θ is the model's."""
    from bytelm.evals.compression import compare, to_markdown

    cfg = trainer.cfg
    pc = cfg.model.patcher
    specs = [f"fixed:{pc.k}", "space"]
    if pc.name == "entropy":
        specs.append(f"entropy:{pc.target_bytes_per_patch:g}")
    rows = compare(
        {"held-out": trainer.corpus},
        specs,
        model_cfg=cfg.model,
        entropy_model=str(entropy_model_path(pc, cfg.train.out_dir)),
        max_bytes=max_bytes,
        max_patch_len=pc.max_patch_len,
        mode=pc.mode,
        seq_len=cfg.data.seq_len,
    )
    return to_markdown(rows)


def run_demo(cfg: RunConfig) -> int:
    from bytelm.generate import generate
    from bytelm.train import Trainer

    t0 = time.perf_counter()
    ensure_entropy_model(cfg)
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
        f"\nheld-out bits per byte ({ev['eval_bytes']:,} bytes, {cfg.data.heldout_rule()}, "
        f"{train_s / 60:.1f} min of training):"
    )
    for name, v in rows:
        print(f"  {name:<20} {v:6.3f}")
    print("\ncompression on the held-out split (bytes per patch; FLOPs per byte of this model):")
    print(compression_table(trainer))
    prompt, model, kw = b"def ", trainer.raw_model, dict(temperature=0.7, seed=cfg.train.seed)
    plain = generate(model, prompt, 240, **kw)
    spec = generate(model, prompt, 240, speculative=model.n_heads_out > 1, **kw)
    print(
        f"\nsample (temperature 0.7, self-speculative decoding: "
        f"{spec.stats.bytes_per_forward:.2f} bytes per forward pass, "
        f"plain decoding {plain.stats.bytes_per_forward:.2f}):\n"
        + (prompt + spec.bytes).decode("utf-8", "replace")
    )
    return 0
