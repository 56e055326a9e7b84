"""Configs: small frozen dataclasses, one per component, with TOML/JSON io and dotted overrides.

A default lives here and nowhere else. The CLI reads TOML presets into these
classes and applies `--section.field value` overrides; it never repeats a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bytelm.data import DataConfig

# The names and defaults other layers validate against; defined here, once, and imported
# by the patchers, kernels and CLI (this module imports nothing above `data`).
PATCHERS = ("fixed", "space", "entropy", "bpe", "learned")
PATCHER_MODES = ("global", "monotonic", "both")  # entropy patcher threshold modes
ATTN_BACKENDS = ("auto", "sdpa", "flex", "xformers")
POOLINGS = ("mean", "max", "sum", "attn")
HEAD_KINDS = ("block", "mlp", "linear", "chain")  # see bytelm.model.heads
MAX_PATCH_LEN = 16  # the default cap on a patch, for every patcher
CALIBRATION_BYTES = (
    262144  # held-out stream positions a threshold is calibrated on (and tables use)
)
CHECKPOINT_DIR = "checkpoint"  # a run keeps its checkpoint in out_dir/checkpoint
ENTROPY_RUN = "entropy"  # the default entropy model is the sibling run out_dir/../entropy


class ConfigError(ValueError):
    """A user error in a config: unknown key, bad value, value out of range."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(f"bytelm: {msg}")


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of pre-norm blocks: RMSNorm, RoPE attention, SwiGLU MLP."""

    dim: int = 128
    n_layers: int = 2
    attn_heads: int = 4  # attention heads per layer (output heads are `out_heads`)
    window: int = 0  # sliding-window attention span in positions; 0 = full causal attention
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = mlp_ratio * dim, rounded up to a multiple of 16
    rope_theta: float = 10000.0
    # residual dropout on each block's attention and MLP outputs, in training only: the
    # regulariser for many epochs of a small corpus (benchmarks/results/equal_compute.md)
    dropout: float = 0.0
    # hashed n-gram input embeddings of a plain ByteTransformer (empty = bytes only), with
    # ngram_buckets per n (0 = auto); a ByteLM's are model.ngram and its stacks leave these
    # empty. The honest flat baseline: at small budgets they are worth more than the
    # hierarchy (benchmarks/results/equal_compute.md)
    ngram_ns: tuple[int, ...] = ()
    ngram_buckets: int = 0
    ngram_dropout: float = 0.0  # as model.ngram.dropout: each lookup dropped in training

    def __post_init__(self):
        object.__setattr__(self, "ngram_ns", tuple(self.ngram_ns))
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        _check(
            0.0 <= self.ngram_dropout < 1.0,
            f"ngram_dropout must lie in [0, 1), got {self.ngram_dropout}",
        )
        _check(
            all(2 <= n <= 16 for n in self.ngram_ns),
            f"ngram_ns must lie in 2..16, got {self.ngram_ns}",
        )
        _check(
            self.ngram_buckets >= 0,
            f"ngram_buckets must be >= 0 (0 = auto), got {self.ngram_buckets}",
        )
        _check(self.dim >= 8, f"dim must be >= 8, got {self.dim}")
        _check(self.n_layers >= 0, f"n_layers must be >= 0, got {self.n_layers}")
        _check(self.attn_heads >= 1, f"attn_heads must be >= 1, got {self.attn_heads}")
        _check(
            self.dim % self.attn_heads == 0 and (self.dim // self.attn_heads) % 2 == 0,
            f"dim ({self.dim}) must be a multiple of attn_heads ({self.attn_heads}) with an even "
            "head size",
        )
        _check(self.window >= 0, f"window must be >= 0 (0 = full attention), got {self.window}")
        _check(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")


@dataclass(frozen=True)
class NGramConfig:
    """Hashed n-gram input embeddings (BLT, Over-Tokenized Transformers)."""

    ns: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    # buckets per n. 0 = sized to the model: 32 * encoder dim, rounded up to a power of two.
    buckets: int = 0
    # in training, each byte's lookup in each n's table is dropped with this probability (the
    # rest scaled by 1 / (1 - dropout)), so that the model cannot lean on memorised long
    # n-grams of a small corpus; evaluation and generation read every table
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "ns", tuple(self.ns))
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        _check(all(2 <= n <= 16 for n in self.ns), f"ngram ns must lie in 2..16, got {self.ns}")
        _check(self.buckets >= 0, f"ngram buckets must be >= 0 (0 = auto), got {self.buckets}")


@dataclass(frozen=True)
class OutputHeadsConfig:
    """K output (prediction) heads; head k predicts byte t+k. K=1 is plain next-byte prediction."""

    n: int = 4
    weights: tuple[float, ...] = ()  # per-head loss weights; empty = equal weights
    # block: each head a transformer block; mlp / linear: head 1 is the decoder's output and
    # heads 2..K a residual MLP / linear map on it; chain: heads 2..K residual MLPs that also
    # read the bytes drafted before theirs (bytelm.model.heads). The defaults (mlp,
    # draft_grad false) won benchmarks/results/equal_compute.md: 4 block heads trained on
    # every loss cost 1.06 bpb at 4 CPU-minutes on stdlib, mlp heads 0.20, these 0.10
    kind: str = "mlp"
    # False: the draft heads' (2..K) losses train only their own layers, never the decoder,
    # encoder, latent or the shared norm and unembedding, so head 1 learns as in a one-head model
    draft_grad: bool = False
    # the share of each training window's positions at which heads 2..K are computed and
    # trained (a fresh random sample every micro-batch; head 1 always trains on every
    # position, and evaluation and generation compute every head everywhere). Their losses
    # are unbiased estimates from the sample, at this share of the heads' training cost.
    # None: 0.1 for residual heads (mlp, linear, chain), 1 for block heads. At 20 CPU-minutes
    # on stdlib, 8 heads at 0.25 draft as well as at 1 (2.11 teacher-forced bytes per forward
    # against 2.12) and a step costs 1.05x a one-head model's (1.56x at 1); on lm-core at 40
    # TFLOPs, 8 heads at 0.1 draft 2.19 (2.21 at 0.25) and head 1 scores 1.612 bpb (1.628 at
    # 0.25; 1.599 / 1.610 with one head): the drafts cost 8% of the FLOPs instead of 20%
    draft_sample: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if self.draft_sample is None:
            object.__setattr__(self, "draft_sample", 1.0 if self.kind == "block" else 0.1)
        _check(1 <= self.n <= 16, f"out_heads.n must lie in 1..16, got {self.n}")
        _check(
            0.0 < self.draft_sample <= 1.0,
            f"out_heads.draft_sample must lie in (0, 1], got {self.draft_sample}",
        )
        _check(
            self.draft_sample == 1.0 or self.kind != "block",
            "out_heads.draft_sample < 1 needs out_heads.kind mlp, linear or chain (a block head "
            "attends over every position)",
        )
        _check(
            not self.weights or len(self.weights) == self.n,
            f"out_heads.weights needs {self.n} values (one per head), got {len(self.weights)}",
        )
        _check(all(w >= 0 for w in self.weights), "out_heads.weights must be >= 0")
        _check(
            self.kind in HEAD_KINDS,
            f"out_heads.kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}",
        )


@dataclass(frozen=True)
class PatcherConfig:
    name: str = "fixed"  # fixed | space | entropy | bpe | learned
    k: int = 4  # fixed: bytes per patch
    max_patch_len: int = MAX_PATCH_LEN
    # entropy: byte t ends its patch when H_t > threshold (global), H_t - H_{t-1} > threshold
    # (monotonic), or H_t > threshold and H_t - H_{t-1} > delta (both); H in bits.
    # learned: when the router's boundary probability p_t > threshold, in [0, 1); 0 = 0.5
    # (H-Net's cut, what training uses until `bytelm.model.chunking.calibrate` sets it)
    mode: str = "global"
    # entropy: > 0: calibrate threshold to this; 0: use threshold as set. learned: the ratio
    # loss pulls the boundary rate toward 1 / this in training (> 1); calibration fits to it
    target_bytes_per_patch: float = 4.0
    threshold: float = 0.0
    delta: float = 0.0
    measured_bytes_per_patch: float = 0.0  # written by calibration (its sample's mean); 0 = not yet
    # entropy-model checkpoint dir; "" = the sibling run's, `<train.out_dir>/../entropy/checkpoint`
    # (see `entropy_model_path`)
    entropy_model: str = ""
    vocab_size: int = 8192  # bpe: tokenizer vocabulary size
    ratio_loss_weight: float = 0.03  # learned: weight of the ratio loss (H-Net's alpha)

    def __post_init__(self):
        _check(
            self.name in PATCHERS,
            f"unknown patcher {self.name!r}; choose one of {', '.join(PATCHERS)}",
        )
        _check(
            self.mode in PATCHER_MODES,
            f"patcher.mode must be one of {', '.join(PATCHER_MODES)}, got {self.mode!r}",
        )
        _check(
            self.target_bytes_per_patch == 0 or self.target_bytes_per_patch >= 1,
            "patcher.target_bytes_per_patch must be >= 1 (or 0 to use patcher.threshold as set), "
            f"got {self.target_bytes_per_patch}",
        )
        _check(self.vocab_size >= 257, f"patcher.vocab_size must be >= 257, got {self.vocab_size}")
        _check(self.k >= 1, f"patcher.k must be >= 1, got {self.k}")
        _check(
            self.max_patch_len >= 1, f"patcher.max_patch_len must be >= 1, got {self.max_patch_len}"
        )
        _check(
            self.ratio_loss_weight >= 0,
            f"patcher.ratio_loss_weight must be >= 0, got {self.ratio_loss_weight}",
        )
        if self.name == "learned":
            _check(
                0 <= self.threshold < 1,
                "patcher.threshold must lie in [0, 1) for the learned patcher (a boundary "
                f"probability; 0 = 0.5), got {self.threshold}",
            )
            _check(
                self.ratio_loss_weight == 0 or self.target_bytes_per_patch > 1,
                "patcher.target_bytes_per_patch must be > 1 for the learned patcher's ratio loss "
                f"(or set patcher.ratio_loss_weight = 0), got {self.target_bytes_per_patch}",
            )


@dataclass(frozen=True)
class ByteLMConfig:
    """The hierarchical model: embed, encode, pool, latent, unpool, decode, heads."""

    ngram: NGramConfig = field(default_factory=NGramConfig)
    encoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(window=128))
    latent: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim=256, n_layers=4)
    )
    decoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(window=128))
    out_heads: OutputHeadsConfig = field(default_factory=OutputHeadsConfig)
    patcher: PatcherConfig = field(default_factory=PatcherConfig)
    pooling: str = "mean"  # mean | max | sum | attn (cross-attention, queries start as the mean)
    attn_backend: str = "auto"  # auto (flex on CUDA, sdpa elsewhere) | sdpa | flex | xformers
    # a compiled training step (train.compile) pads the patch axis to a multiple of this, capped
    # at seq_len, so that its shapes repeat: one graph per bucket; 1 = the exact count. Eager
    # steps, eval and generation use the exact count.
    patch_bucket: int = 64

    def __post_init__(self):
        _check(
            self.patch_bucket >= 1,
            f"model.patch_bucket must be >= 1 (1 = exact patch count), got {self.patch_bucket}",
        )
        _check(
            self.attn_backend in ATTN_BACKENDS,
            f"model.attn_backend must be one of {', '.join(ATTN_BACKENDS)}, got {self.attn_backend!r}",
        )
        _check(
            self.pooling in POOLINGS,
            f"model.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}",
        )
        for name in ("encoder", "latent", "decoder"):
            stack = getattr(self, name)
            _check(
                not stack.ngram_ns and not stack.ngram_buckets and not stack.ngram_dropout,
                f"model.{name}.ngram_* are for a plain ByteTransformer; a ByteLM's n-gram "
                "embeddings are model.ngram",
            )
        _check(
            self.encoder.dim == self.decoder.dim,
            f"encoder.dim ({self.encoder.dim}) and decoder.dim ({self.decoder.dim}) must match",
        )


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 200
    eval_bytes: int = 131072  # held-out bytes per evaluation (0 = the whole split)
    save_every: int = 500
    keep_checkpoints: int = 2  # step directories kept in out_dir, the newest included
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/default"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    # torch.compile the forward and loss: auto (on CUDA; off on CPU, see
    # benchmarks/results/train_compile.md) | on | off
    compile: str = "auto"
    prefetch: bool = True  # build the next micro-batch in a background thread during the step
    progress: bool = True

    def __post_init__(self):
        _check(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(
            0 <= self.min_lr_ratio <= 1,
            f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}",
        )
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.grad_clip >= 0, f"train.grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.eval_every >= 1, f"train.eval_every must be >= 1, got {self.eval_every}")
        _check(self.save_every >= 1, f"train.save_every must be >= 1, got {self.save_every}")
        _check(
            self.keep_checkpoints >= 1,
            f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
        )
        _check(self.eval_bytes >= 0, f"train.eval_bytes must be >= 0, got {self.eval_bytes}")
        _check(
            self.precision in ("auto", "fp32", "bf16"),
            f"train.precision must be auto, fp32 or bf16, got {self.precision!r}",
        )
        _check(
            self.compile in ("auto", "on", "off"),
            f"train.compile must be auto, on or off, got {self.compile!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs. `arch` picks ByteLM or the plain ByteTransformer."""

    arch: str = "bytelm"  # bytelm | transformer
    model: ByteLMConfig = field(default_factory=ByteLMConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _check(
            self.arch in ("bytelm", "transformer"),
            f"arch must be bytelm or transformer, got {self.arch!r}",
        )


# ---------------------------------------------------------------------------- io

# Keys renamed since configs were first written: attention heads and output (prediction)
# heads both used to be called "heads". (class, old key) -> new key.
RENAMED = {
    (TransformerConfig, "n_heads"): "attn_heads",
    (ByteLMConfig, "heads"): "out_heads",
}


# Keys added with a default that differs from how configs written before them were built:
# (class, key) -> the value an older config means by leaving it out.
ADDED = {
    (OutputHeadsConfig, "kind"): "block",
    (OutputHeadsConfig, "draft_grad"): True,
    (OutputHeadsConfig, "draft_sample"): 1.0,
}


def _renamed_error(cls, key: str, where: str) -> ConfigError | None:
    new = RENAMED.get((cls, key))
    if new is None:
        return None
    return ConfigError(
        f"bytelm: config key '{where}' is now '{where[: len(where) - len(key)]}{new}' "
        "(attn_heads: attention heads per layer; out_heads: output heads, head k predicts byte t+k)"
    )


def upgrade(cls, d: dict) -> dict:
    """A config dict written before the renames in `RENAMED` -> today's keys (for checkpoints;
    user configs with an old key get an error that names the new one instead)."""
    if not isinstance(d, dict):
        return d
    hints = _hints(cls)
    out = {k: v for (c, k), v in ADDED.items() if c is cls}
    for k, v in d.items():
        k = RENAMED.get((cls, k), k)
        t = hints.get(k)
        out[k] = upgrade(t, v) if t is not None and dataclasses.is_dataclass(t) else v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, d: dict, prefix: str = ""):
    """Build `cls` from a nested dict; unknown keys are an error that names them."""
    if not isinstance(d, dict):
        raise ConfigError(f"bytelm: config section '{prefix or cls.__name__}' must be a table")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        renamed = _renamed_error(cls, unknown[0], where)
        if renamed is not None:
            raise renamed
        raise ConfigError(
            f"bytelm: unknown config key '{where}'; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for k, v in d.items():
        t = hints[k]
        key = f"{prefix}.{k}" if prefix else k
        if dataclasses.is_dataclass(t):
            kwargs[k] = from_dict(t, v, key)
        else:
            kwargs[k] = _coerce(t, v, key)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # name the section: "dropout" alone does not say which stack
        msg = str(e).removeprefix("bytelm: ")
        raise ConfigError(f"bytelm: {prefix}: {msg}" if prefix else str(e)) from None


def _coerce(t, v, key: str):
    origin = typing.get_origin(t)
    try:
        if origin is tuple:
            (inner, *_) = typing.get_args(t)
            if isinstance(v, str):
                v = [s for s in v.split(",") if s.strip()]
            return tuple(_coerce(inner, x, key) for x in v)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            return _coerce(args[0], v, key)
        if t is bool:
            if isinstance(v, str):
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(v)
            return bool(v)
        if t is int:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(v)
            return int(v)
        if t is float:
            return float(v)
        if t is str:
            return str(v)
    except (TypeError, ValueError):
        raise ConfigError(
            f"bytelm: config key '{key}' expects {getattr(t, '__name__', t)}, got {v!r}"
        ) from None
    return v


def load(path: str | Path, cls=RunConfig):
    """Read a TOML or JSON file into `cls`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bytelm: config file '{p}' does not exist")
    try:
        d = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"bytelm: cannot parse config '{p}': {e}") from None
    return from_dict(cls, d)


def save_json(cfg, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def override(cfg, overrides: dict[str, str]):
    """Apply dotted overrides, e.g. {"model.latent.dim": "256"}; values are parsed per field type."""
    d = to_dict(cfg)
    for key, value in overrides.items():
        node, parts = d, key.split(".")
        cls = type(cfg)
        for i, part in enumerate(parts):
            names = {f.name: f for f in dataclasses.fields(cls)}
            if part not in names:
                renamed = _renamed_error(cls, part, ".".join(parts[: i + 1]))
                if renamed is not None:
                    raise renamed
                raise ConfigError(
                    f"bytelm: unknown config key '{key}'; '{'.'.join(parts[: i + 1])}' is not one of "
                    f"{', '.join(sorted(names))}"
                )
            t = _hints(cls)[part]
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(t):
                    raise ConfigError(
                        f"bytelm: '{key}' is a section; set one of its fields instead"
                    )
                node[part] = _coerce(t, value, key)
            else:
                if not dataclasses.is_dataclass(t):
                    raise ConfigError(f"bytelm: '{'.'.join(parts[: i + 1])}' is not a section")
                node, cls = node[part], t
    return from_dict(type(cfg), d)


def flat_fields(cls=RunConfig, prefix: str = "", default=None) -> list[tuple[str, str, Any]]:
    """Every leaf field a user can set as (dotted key, type name, default value): drives
    `--help`. A ByteLM stack's `ngram_*` fields are left out (its n-grams are model.ngram)."""
    default = cls() if default is None else default
    out = []
    for f in dataclasses.fields(cls):
        t = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if prefix.startswith("model.") and f.name.startswith("ngram_"):
            continue
        val = getattr(default, f.name)
        if dataclasses.is_dataclass(t):
            out += flat_fields(t, key + ".", val)
        else:
            out.append((key, getattr(t, "__name__", str(t)), val))
    return out


def entropy_model_path(patcher: PatcherConfig, out_dir: str | Path) -> Path:
    """Where a run's entropy model is: `patcher.entropy_model` when set, else the checkpoint of
    the sibling run `entropy` next to `out_dir` (`runs/demo` -> `runs/entropy/checkpoint`, where
    `bytelm train-entropy` writes with its preset). Never looked up in the current directory."""
    if patcher.entropy_model:
        return Path(patcher.entropy_model)
    return Path(out_dir).parent / ENTROPY_RUN / CHECKPOINT_DIR


PRESETS = "bytelm.configs"  # the package that holds the presets, read with importlib.resources


def preset_names() -> list[str]:
    return sorted(
        r.name[: -len(".toml")]
        for r in resources.files(PRESETS).iterdir()
        if r.name.endswith(".toml")
    )


def load_preset(name_or_path: str) -> RunConfig:
    """A preset by exact name (a TOML file shipped in `bytelm/configs/`) or a path to a TOML/JSON file."""
    p = Path(name_or_path)
    if p.suffix in (".toml", ".json"):
        return load(p)
    res = resources.files(PRESETS) / f"{name_or_path}.toml"
    if res.is_file():
        return from_dict(RunConfig, tomllib.loads(res.read_text()))
    raise ConfigError(
        f"bytelm: unknown preset '{name_or_path}'; known presets: {', '.join(preset_names()) or 'none'}"
    )
