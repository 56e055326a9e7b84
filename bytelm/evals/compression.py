"""Compression: how many bytes each patcher puts in a patch, what that costs, and what it buys.

`compare` measures, for every corpus x patcher, on the corpus's held-out split
(whole documents from its start, up to `max_bytes` stream positions, each
document patched as [BOS] + bytes + [EOS]):

    mean bytes/patch = positions / patches   (BOS and EOS count, as in ByteLM)
    median, p95, max patch length, patches per KiB (= latent steps per KiB)
    FLOPs/byte of a ByteLM config at that patch size (`bytelm.evals.flops`):
        training (entropies precomputed) and inference (entropy model included)
    held-out bits-per-byte, when a checkpoint is given for the patcher

Patchers are spec strings: `fixed:4`, `space`, `entropy:6` (target bytes per
patch; θ is calibrated on the training split's calibration sample, never on the
held-out sample it is measured on), `bpe:8k` (vocabulary size; the tokenizer is
trained on the training split), `learned:CKPT` (the router of a learned ByteLM
checkpoint at its own θ; `learned:CKPT@6` calibrates θ to 6 on the training
split's calibration sample; its held-out bpb fills the bpb column; the stream is routed
in windows of the checkpoint's seq_len, as its evaluation sees it). `--calibrate-on NAME` fits θ and
the BPE tokenizer on one corpus and applies them to all, to see how one
patcher's compression moves across corpora; by default each corpus gets its own.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from bytelm import config as C
from bytelm.patchers.base import ends_to_lengths
from bytelm.vocab import BOS, PAD

DEFAULT_SPECS = ("fixed:4", "fixed:8", "space", "entropy:4", "entropy:6", "entropy:8", "bpe:8k")
COLUMNS = (
    "corpus",
    "patcher",
    "positions",
    "patches",
    "mean",
    "median",
    "p95",
    "max",
    "patches_per_kib",
    "train_flops_per_byte",
    "infer_flops_per_byte",
    "threshold",
    "bpb",
    "note",
)


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str  # fixed | space | entropy | bpe | learned
    value: float  # k, target bytes/patch, or vocabulary size (0 for space, learned at its θ)
    text: str
    path: str = ""  # learned: the checkpoint

    def __str__(self):
        return self.text


def parse_spec(text: str) -> Spec:
    """'fixed:4' | 'space' | 'entropy:4.5' | 'bpe:8k' | 'learned:CKPT[@6]' -> Spec."""
    from bytelm.patchers.bpe import parse_vocab

    kind, _, arg = text.strip().partition(":")
    if kind == "learned" and arg:
        path, at, target = arg.rpartition("@") if "@" in arg else (arg, "", "")
        try:
            if not at or float(target) > 1:
                return Spec("learned", float(target) if at else 0.0, text, path)
        except ValueError:
            pass
    try:
        if kind == "space" and not arg:
            return Spec("space", 0, text)
        if kind == "fixed" and int(arg) >= 1:
            return Spec("fixed", int(arg), text)
        if kind == "entropy" and float(arg) >= 1:
            return Spec("entropy", float(arg), text)
        if kind == "bpe" and parse_vocab(arg) >= 257:
            return Spec("bpe", parse_vocab(arg), text)
    except ValueError:
        pass
    raise ValueError(
        f"bytelm: bad patcher spec {text!r}; use fixed:K, space, entropy:TARGET (>= 1), bpe:VOCAB "
        "or learned:CKPT[@TARGET] (e.g. fixed:4 space entropy:6 bpe:8k learned:runs/x@6)"
    )


# ----------------------------------------------------------------------------- patching a split


def heldout_sample(split, max_bytes: int | None) -> torch.Tensor:
    """Whole documents from the split's start, up to max_bytes positions (at least one)."""
    n = int(split.stream_len)
    if max_bytes is not None and max_bytes < n:
        k = max(1, int(np.searchsorted(split.doc_starts, max_bytes, side="right")) - 1)
        n = int(split.doc_starts[k])
    return torch.from_numpy(split.window(0, n))


def stream_patch_lengths(patcher, ids: torch.Tensor, entropies: torch.Tensor | None = None):
    """Patch lengths (np.int64, in order) of a packed stream of whole documents, each
    patched on its own. `entropies` (aligned with ids) skips the entropy model."""
    if patcher.name == "learned":  # the model's windows: rows of seq_len
        L, n = patcher.seq_len, len(ids)
        rows = torch.full((-(-n // L), L), 258, dtype=ids.dtype)
        rows.view(-1)[:n] = ids
        lengths = patcher.patch(rows)
        return lengths[lengths > 0].numpy()
    if patcher.name in ("entropy", "bpe"):  # vectorised over the stream: one row
        kw = {} if entropies is None else {"entropies": entropies[None]}
        lengths = patcher.patch(ids[None], **kw)[0]
        return lengths[lengths > 0].numpy()
    # rule patchers step byte by byte: run the documents side by side, longest first
    starts = (ids == BOS).nonzero().flatten().tolist()
    docs = [ids[a:b] for a, b in zip(starts, starts[1:] + [len(ids)])]
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    out: list = [None] * len(docs)
    for i in range(0, len(order), 256):
        idx = order[i : i + 256]
        rows = torch.nn.utils.rnn.pad_sequence([docs[j] for j in idx], True, 258)
        lengths = patcher.patch(rows)
        for r, j in enumerate(idx):
            out[j] = lengths[r][lengths[r] > 0].numpy()
    return np.concatenate(out)


def patch_stats(lengths: np.ndarray) -> dict:
    n, p = int(lengths.sum()), len(lengths)
    return {
        "positions": n,
        "patches": p,
        "mean": n / p,
        "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "patches_per_kib": 1024 * p / n,
    }


# ----------------------------------------------------------------------------- patchers from specs


def default_entropy_model() -> str:
    """The entropy model a default run would use (`config.entropy_model_path`)."""
    return str(C.entropy_model_path(C.PatcherConfig(), C.TrainConfig().out_dir))


def _need_entropy_model(path: str | None) -> str:
    path = path or default_entropy_model()
    if not Path(path, "model.safetensors").is_file():
        raise ValueError(
            f"bytelm: entropy:X needs an entropy model; none at '{path}' (`make demo` and "
            "`bytelm train-entropy` write one there); pass --entropy-model CKPT"
        )
    return path


class PatcherFactory:
    """Builds (and caches) the patcher for a spec on a corpus: loads the entropy model once,
    calibrates θ on the training split's calibration sample (`EntropyPatcher.calibrate`),
    trains BPE on the training split."""

    def __init__(
        self, entropy_model: str | None = None, max_patch_len: int = C.MAX_PATCH_LEN, mode="global"
    ):
        self.entropy_path = entropy_model
        self.max_patch_len, self.mode = max_patch_len, mode
        self._entropy = None

    def entropy_base(self):
        from bytelm.checkpoint import load_entropy_model
        from bytelm.patchers.entropy import EntropyPatcher

        if self._entropy is None:
            path = _need_entropy_model(self.entropy_path)
            model, context = load_entropy_model(path)
            self._entropy = EntropyPatcher(
                model, context, self.mode, None, self.max_patch_len, source=path
            )
        return self._entropy

    def build(self, spec: Spec, corpus: dict, max_bytes: int | None):
        """-> (patcher, threshold or None)."""
        from bytelm.patchers import FixedPatcher, SpacePatcher

        if spec.kind == "fixed":
            return FixedPatcher(int(spec.value)), None
        if spec.kind == "space":
            return SpacePatcher(self.max_patch_len), None
        if spec.kind == "bpe":
            from bytelm.patchers.bpe import BPEPatcher

            return BPEPatcher.for_corpus(corpus["train"], int(spec.value)), None
        if spec.kind == "learned":
            return LearnedPatching.load(spec, corpus, max_bytes)
        base = self.entropy_base()
        p = _copy_entropy(base)  # one model, a threshold per spec and corpus
        cal = p.calibrate(corpus["train"], spec.value)  # out of the held-out sample
        return p, cal.threshold


class LearnedPatching:
    """The patches of a learned ByteLM checkpoint's router, as a patcher: `patch(ids)` routes
    rows (B, T) through the model's embedding, encoder and router."""

    name = "learned"

    def __init__(self, model, seq_len: int):
        self.model, self.seq_len = model, seq_len

    @classmethod
    def load(cls, spec: Spec, corpus: dict | None, max_bytes: int | None):
        """-> (patching, θ): the checkpoint's θ, or θ calibrated to spec.value on the
        calibration sample of `corpus`'s training split."""
        from bytelm.checkpoint import load_model

        model, cfg = load_model(spec.path)
        if cfg.arch != "bytelm" or cfg.model.patcher.name != "learned":
            raise ValueError(f"bytelm: {spec.text}: '{spec.path}' is not a learned ByteLM")
        if spec.value:
            from bytelm.model.chunking import calibrate

            calibrate(model, corpus["train"], spec.value, cfg.data.seq_len)
        return cls(model, cfg.data.seq_len), model.patcher.threshold

    @property
    def max_patch_len(self) -> int:
        return self.model.patcher.max_patch_len

    @torch.no_grad()
    def patch(self, ids: torch.Tensor) -> torch.Tensor:
        return ends_to_lengths(self.model.route(ids)[1], (ids != PAD).sum(-1))


def _copy_entropy(p):
    from bytelm.patchers.entropy import EntropyPatcher

    return EntropyPatcher(
        p.model, p.context, p.mode, p.threshold, p.max_patch_len, p.delta, p.overlap, p.source
    )


# ----------------------------------------------------------------------------- compare


def compare(
    corpora: dict[str, dict],
    specs: list[str],
    model_cfg=None,
    entropy_model: str | None = None,
    max_bytes: int | None = C.CALIBRATION_BYTES,
    checkpoints: dict[str, str] | None = None,
    calibrate_on: str | None = None,
    max_patch_len: int = C.MAX_PATCH_LEN,
    mode: str = "global",
    seq_len: int = 512,
    log=None,
) -> list[dict]:
    """One row per corpus x patcher (see the module docstring). `corpora`: name -> load_corpus()
    output; `checkpoints`: spec -> ByteLM checkpoint whose held-out bpb fills the bpb column."""
    from bytelm.evals.flops import flops_per_byte
    from bytelm.patchers.entropy import CalibrationError

    parsed = [parse_spec(s) for s in specs]
    factory = PatcherFactory(entropy_model, max_patch_len, mode)
    entropy_cfg = None
    if any(s.kind == "entropy" for s in parsed):
        from bytelm.checkpoint import load_config

        entropy_cfg = load_config(_need_entropy_model(entropy_model)).transformer
    if calibrate_on is not None and calibrate_on not in corpora:
        raise ValueError(
            f"bytelm: --calibrate-on {calibrate_on!r} is not one of the corpora "
            f"({', '.join(corpora)})"
        )
    fitted = {}
    if calibrate_on is not None:
        fitted = {s: factory.build(s, corpora[calibrate_on], max_bytes) for s in parsed}
    rows = []
    for name, corpus in corpora.items():
        ids = heldout_sample(corpus["heldout"], max_bytes)
        for spec in parsed:
            try:
                patcher, theta = fitted.get(spec) or factory.build(spec, corpus, max_bytes)
            except CalibrationError as e:  # one unreachable target does not sink the table
                rows.append(
                    {"corpus": name, "patcher": spec.text, "note": str(e).split(": ", 1)[1]}
                )
                if log is not None:
                    log(f"{name:>12} {spec.text:<12} skipped: {rows[-1]['note']}")
                continue
            H = None
            if spec.kind == "entropy":
                from bytelm.patchers.entropy_cache import EntropyCache

                H = EntropyCache(corpus["heldout"], patcher).at(np.arange(len(ids)))
            row = {"corpus": name, "patcher": spec.text}
            row.update(patch_stats(stream_patch_lengths(patcher, ids, H)))
            row["threshold"] = theta
            if model_cfg is not None:
                r = row["mean"]
                ent = entropy_cfg if spec.kind == "entropy" else None
                cfg = model_cfg
                if spec.kind == "learned":  # the same model, with the router's cost
                    cfg = dataclasses.replace(model_cfg, patcher=C.PatcherConfig("learned"))
                row["train_flops_per_byte"] = flops_per_byte(cfg, r, seq_len, True)["total"]
                row["infer_flops_per_byte"] = flops_per_byte(
                    cfg, r, seq_len, False, entropy_model=ent
                )["total"]
            if spec.kind == "learned":  # the checkpoint is in the spec, at the row's θ
                from bytelm.evals.bpb import evaluate_bpb

                held = corpus["heldout"]
                row["bpb"] = evaluate_bpb(patcher.model, held, patcher.seq_len, 8, max_bytes)["bpb"]
            elif checkpoints and spec.text in checkpoints:
                row["bpb"] = bpb_at(checkpoints[spec.text], corpus, spec, max_bytes)
            rows.append(row)
            if log is not None:
                log(f"{name:>12} {spec.text:<12} {row['mean']:6.2f} bytes/patch")
    return rows


def bpb_at(path: str, corpus: dict, spec: Spec | None = None, max_bytes=None) -> float:
    """Held-out bpb of a ByteLM checkpoint on `corpus` (load_corpus() output); an entropy or
    learned checkpoint is first re-calibrated to the spec's target on the training split."""
    from bytelm.checkpoint import load_model
    from bytelm.evals.bpb import evaluate_bpb

    model, cfg = load_model(path)
    if spec is not None and spec.kind == "entropy" and cfg.model.patcher.name == "entropy":
        model.patcher.calibrate(corpus["train"], spec.value)
    if spec is not None and spec.kind == "learned" and spec.value:
        from bytelm.model.chunking import calibrate

        calibrate(model, corpus["train"], spec.value, cfg.data.seq_len)
    return evaluate_bpb(model, corpus["heldout"], cfg.data.seq_len, 8, max_bytes)["bpb"]


def eval_at_target(path: str, target: float, sources=None, max_bytes=None, batch_size=8) -> dict:
    """`bytelm eval CKPT --target-bytes-per-patch X`: re-calibrate θ on the calibration sample
    of the training split, then measure bpb and the bytes per patch the model actually used
    in the held-out eval windows (a sample the calibration never saw)."""
    from bytelm.checkpoint import load_model
    from bytelm.data import load_corpus
    from bytelm.evals.bpb import eval_batches_with_ends, evaluate_bpb

    model, cfg = load_model(path)
    if cfg.arch != "bytelm" or cfg.model.patcher.name not in ("entropy", "learned"):
        raise ValueError(
            f"bytelm: --target-bytes-per-patch needs a ByteLM with the entropy or learned "
            f"patcher; '{path}' uses {cfg.model.patcher.name if cfg.arch == 'bytelm' else cfg.arch}"
        )
    data = cfg.data if sources is None else dataclasses.replace(cfg.data, sources=tuple(sources))
    corpus = load_corpus(data)
    heldout = corpus["heldout"]
    learned = cfg.model.patcher.name == "learned"
    if learned:  # the router's p on windows of the training split, as long as the eval's
        from bytelm.model.chunking import calibrate

        _, cal = calibrate(model, corpus["train"], target, data.seq_len, batch_size)
    else:
        cal = model.patcher.calibrate(corpus["train"], target, progress=True)
    r = evaluate_bpb(model, heldout, data.seq_len, batch_size, max_bytes)
    r["heldout_rule"] = data.heldout_rule()
    n = p = 0  # the patches the model read in the eval windows: its documents' (entropy)
    for ids, ends in eval_batches_with_ends(model, heldout, data.seq_len, batch_size, max_bytes):
        if learned:
            with torch.no_grad():
                ends = model.route(ids)[1]
        lengths = ends_to_lengths(ends, (ids != PAD).sum(-1))
        n, p = n + int(lengths.sum()), p + int((lengths > 0).sum())
    return {
        **r,
        "threshold": cal.threshold,
        "trained_target": cfg.model.patcher.target_bytes_per_patch,
        "calibrated_bytes_per_patch": cal.measured_bytes_per_patch,
        "eval_bytes_per_patch": n / max(p, 1),
    }


# ----------------------------------------------------------------------------- outputs


def _fmt(v, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if col.endswith("flops_per_byte"):
        return f"{v / 1e6:.2f}M"
    if col in ("positions", "patches", "max"):
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.3f}" if col in ("bpb", "threshold") else f"{v:.2f}"
    return str(v)


def to_markdown(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    head = "| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |\n" for r in rows)


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in COLUMNS})


def plot(rows: list[dict], path: str | Path) -> None:
    """Bytes per patch per corpus for each patcher; bpb vs FLOPs/byte where bpb is known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("mean") is not None]
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    patchers = list(dict.fromkeys(r["patcher"] for r in rows))
    with_bpb = [r for r in rows if r.get("bpb") is not None and r.get("train_flops_per_byte")]
    fig, axes = plt.subplots(1, 2 if with_bpb else 1, figsize=(12 if with_bpb else 8, 4.5))
    ax = axes[0] if with_bpb else axes
    w = 0.8 / len(patchers)
    for i, p in enumerate(patchers):
        ys = [
            next((r["mean"] for r in rows if r["corpus"] == c and r["patcher"] == p), 0)
            for c in corpora
        ]
        ax.bar(np.arange(len(corpora)) + (i - (len(patchers) - 1) / 2) * w, ys, w, label=p)
    ax.set_xticks(np.arange(len(corpora)), corpora)
    ax.set_ylabel("mean bytes per patch (held-out)")
    ax.set_title("compression by patcher")
    ax.legend(fontsize=8, ncol=2)
    if with_bpb:
        ax = axes[1]
        for r in with_bpb:
            ax.scatter(r["train_flops_per_byte"] / 1e6, r["bpb"])
            ax.annotate(
                f"{r['patcher']} ({r['corpus']})",
                (r["train_flops_per_byte"] / 1e6, r["bpb"]),
                fontsize=8,
            )
        ax.set_xlabel("training MFLOPs per byte")
        ax.set_ylabel("held-out bits per byte")
        ax.set_title("quality vs compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
