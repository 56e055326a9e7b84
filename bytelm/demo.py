"""`bytelm demo`: train a small ByteLM on the stdlib corpus, compare with gzip and xz, sample."""

from __future__ import annotations

import dataclasses
import gzip
import lzma
import time
from pathlib import Path

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


# The flat baseline the demo trains for the same CPU time as its ByteLM: the best flat model in
# benchmarks/results/equal_compute.md at this budget (96 x 3, attention over the last 16 bytes,
# the same hashed 3..8-gram embeddings as the ByteLM's encoder), so that the comparison is
# between designs and not between input embeddings.
FLAT = {"dim": 96, "n_layers": 3, "attn_heads": 4, "window": 16, "ngram_ns": (3, 4, 5, 6, 7, 8)}
FLAT_NAME = f"flat {FLAT['dim']}x{FLAT['n_layers']} w{FLAT['window']} n-grams"


def flat_config(cfg: RunConfig, steps: int) -> RunConfig:
    """A plain ByteTransformer on the demo's data, batch, lr and schedule, for `steps` steps."""
    from bytelm.config import TransformerConfig

    tc = dataclasses.replace(
        cfg.train,
        steps=steps,
        eval_every=max(1, steps // 4),
        save_every=steps,
        out_dir=str(Path(cfg.train.out_dir).with_name(Path(cfg.train.out_dir).name + "-flat")),
    )
    return dataclasses.replace(
        cfg, arch="transformer", transformer=TransformerConfig(**FLAT), train=tc
    )


def cpu_per_step(cfg: RunConfig, n: int = 3) -> float:
    """CPU seconds of one training step of `cfg`, from `n` steps after a warm-up one."""
    from bytelm.train import Trainer

    probe = Trainer(cfg)  # prefetch as in the run: its thread's CPU counts too
    probe.train_step()
    c0 = time.process_time()
    for _ in range(n):
        probe.train_step()
    return (time.process_time() - c0) / n


def curve(trainer) -> list[tuple[float, float]]:
    """(training CPU seconds, held-out bpb) at every evaluation of a fit."""
    return [(r["cpu_s"], r["bpb"]) for r in trainer.history if "bpb" in r and "cpu_s" in r]


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([c / 60 for c, _ in pts], [b for _, b in pts], "o-", label=name)
    ax.set_xlabel("training time (CPU-minutes, this process)")
    ax.set_ylabel("held-out bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def show_patching(model, held, n: int = 240) -> str:
    """How the model patches a held-out snippet: patches separated by '|'."""
    import torch

    from bytelm.patchers import ends_to_lengths
    from bytelm.viz import render
    from bytelm.vocab import encode

    raw = heldout_bytes(held, 8192)
    start = raw.find(b"\n    ", len(raw) // 3) + 1  # an indented line of held-out code
    ids = encode(raw[start : start + n], bos=True, eos=False)[None]
    with torch.no_grad():
        ends = model.route(ids)[1] if model.learned else model.patcher.ends(ids)
    lengths = ends_to_lengths(ends, torch.tensor([ids.shape[1]]))[0]
    lengths = lengths[lengths > 0].tolist()
    return render(ids[0].tolist(), lengths, color=False) + (
        f"\n({ids.shape[1]} bytes with BOS in {len(lengths)} patches, "
        f"{ids.shape[1] / len(lengths):.2f} bytes/patch)"
    )


def run_share(data: bytes, min_run: int = 4) -> float:
    """The share of `data` inside runs of at least `min_run` copies of one byte (a line of
    spaces), where every draft head agrees and speculative decoding looks better than it is."""
    inside, i = 0, 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        if j - i >= min_run:
            inside += j - i
        i = j
    return inside / max(len(data), 1)


def run_demo(cfg: RunConfig) -> int:
    from bytelm.generate import generate
    from bytelm.train import Trainer

    ensure_entropy_model(cfg)
    trainer = Trainer(cfg)
    n_params = sum(p.numel() for p in trainer.raw_model.parameters())
    print(
        f"bytelm demo: {cfg.arch} with {n_params / 1e6:.2f}M parameters, patcher "
        f"{cfg.model.patcher.name}, {cfg.model.out_heads.n} output heads, {cfg.train.steps} "
        f"steps of {cfg.data.batch_size}x{cfg.data.seq_len} bytes on {', '.join(cfg.data.sources)}"
    )
    trainer.fit()
    lm_cpu = curve(trainer)[-1][0]

    # the flat baseline: as many CPU seconds of training as the ByteLM took
    flat_step = cpu_per_step(flat_config(cfg, 1000))
    steps = max(10, round(lm_cpu / flat_step))
    fcfg = flat_config(cfg, steps)
    print(
        f"\nbytelm demo: a {FLAT_NAME} ByteTransformer for the same "
        f"{lm_cpu / 60:.1f} CPU-minutes: {steps} steps"
    )
    flat = Trainer(fcfg)
    flat.fit()

    held = trainer.corpus["heldout"]
    ev, fev = trainer.evaluate(), flat.evaluate()
    raw = heldout_bytes(held, cfg.train.eval_bytes or None)
    rows = [
        (f"bytelm ({cfg.model.patcher.name})", ev["bpb"], curve(trainer)[-1][0]),
        (FLAT_NAME, fev["bpb"], curve(flat)[-1][0]),
    ]
    rows += [(k, v, None) for k, v in compressor_bpb(raw).items()]
    print(f"\nheld-out bits per byte ({ev['eval_bytes']:,} bytes, {cfg.data.heldout_rule()}):")
    for name, v, cpu in rows:
        t = f"  ({cpu / 60:.1f} CPU-min of training)" if cpu is not None else ""
        print(f"  {name:<26} {v:6.3f}{t}")
    verdict = "ahead of" if ev["bpb"] < fev["bpb"] else "behind"
    print(f"  the ByteLM is {verdict} the flat model by {abs(fev['bpb'] - ev['bpb']):.3f} bpb")
    png = Path(cfg.train.out_dir) / "demo_bpb.png"
    plot_curves({"bytelm": curve(trainer), "flat": curve(flat)}, png)
    print(f"  (held-out bpb against training time: {png})")

    print("\ncompression on the held-out split (bytes per patch; FLOPs per byte of this model):")
    print(compression_table(trainer))
    model = trainer.raw_model.eval()
    print("\nhow the ByteLM patches a held-out snippet ('|' ends a patch):")
    print(show_patching(model, held))

    prompt, kw = b"def ", dict(temperature=0.7, seed=cfg.train.seed)
    t0 = time.perf_counter()
    plain = generate(model, prompt, 240, **kw)
    t1 = time.perf_counter()
    spec = generate(model, prompt, 240, speculative=model.n_heads_out > 1, **kw)
    t2 = time.perf_counter()
    plain_bps, spec_bps = len(plain.bytes) / (t1 - t0), len(spec.bytes) / (t2 - t1)
    print(
        f"\ndecoding 240 bytes at temperature 0.7: plain {plain_bps:,.0f} bytes/s, "
        f"self-speculative {spec_bps:,.0f} bytes/s ({spec_bps / plain_bps:.2f}x; "
        f"{spec.stats.bytes_per_forward:.2f} bytes per forward pass; "
        f"{100 * run_share(spec.bytes):.0f}% of the text in runs of one repeated byte)"
    )
    print("sample:\n" + (prompt + spec.bytes).decode("utf-8", "replace"))
    return 0
