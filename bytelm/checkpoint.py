"""Checkpoints are directories, written atomically.

    model.safetensors   weights of the model from before torch.compile
    config.json         the fully resolved RunConfig
    trainer_state.pt    optimizer, scheduler, step, RNG states, metric history
    entropy_model/      the entropy patcher's model, when the run uses one (a checkpoint itself)

A checkpoint is written to a temporary sibling directory and renamed into
place, so a run killed mid-write leaves the previous checkpoint intact.

This module is also where models are *built*: it sits above `model` and
`patchers`, so it is the one place that loads an entropy model and hands it to
the entropy patcher, and the patcher to `ByteLM`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bytelm import config as C
from bytelm.model import ByteLM, ByteTransformer
from bytelm.patchers import BoundarySource, make_patcher


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint."""


MODEL_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "config.json", "trainer_state.pt"


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, cfg, trainer_state: dict | None = None
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE))
    C.save_json(cfg, tmp / CONFIG_FILE)
    bundle_entropy_model(cfg, tmp)  # a ByteLM with the entropy patcher carries its entropy model
    if trainer_state is not None:
        torch.save(trainer_state, tmp / STATE_FILE)
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _require(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"bytelm: checkpoint '{path}' does not exist (expected a directory)")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"bytelm: checkpoint '{path}' is incomplete: '{name}' is missing")


def load_config(path: str | Path) -> C.RunConfig:
    path = Path(path)
    _require(path)
    try:
        d = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt {CONFIG_FILE}: {e}"
        ) from None
    return resolve_bundled(C.from_dict(C.RunConfig, C.upgrade(C.RunConfig, d)), path)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    path = Path(path)
    try:
        state = load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt {MODEL_FILE}: {e}"
        ) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' does not match its config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """A checkpoint directory -> (model in eval mode, RunConfig)."""
    cfg = load_config(path)
    model = build_model(cfg)
    load_weights(path, model)
    return model.to(device).eval(), cfg


def load_trainer_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has no {STATE_FILE}; cannot resume"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt {STATE_FILE}: {e}"
        ) from None


# ----------------------------------------------------------------------------- building models


def load_entropy_model(path: str | Path) -> tuple[torch.nn.Module, int]:
    """An entropy-model checkpoint -> (frozen ByteTransformer in eval mode, its context length)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"bytelm: no entropy model at '{path}'; train one with `bytelm train-entropy` "
            f"(`make demo` does) or set --model.patcher.entropy_model"
        )
    model, cfg = load_model(path)
    if cfg.arch != "transformer":
        raise CheckpointError(
            f"bytelm: '{path}' is a {cfg.arch} checkpoint; the entropy model must be a plain "
            "ByteTransformer (train it with `bytelm train-entropy`)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg.data.seq_len


def build_patcher(pcfg: C.PatcherConfig, out_dir: str | Path = "") -> BoundarySource:
    """A `PatcherConfig` -> its boundary source; the entropy patcher gets its entropy model from
    `C.entropy_model_path(pcfg, out_dir)` (default `out_dir`: `TrainConfig().out_dir`)."""
    if pcfg.name != "entropy":
        return make_patcher(pcfg)
    path = C.entropy_model_path(pcfg, out_dir or C.TrainConfig().out_dir)
    return make_patcher(pcfg, scorer=(*load_entropy_model(path), str(path)))


def build_model(cfg: C.RunConfig, patcher: BoundarySource | None = None) -> torch.nn.Module:
    """A RunConfig -> the model its `arch` names. A ByteLM gets `patcher`, or the one its
    config describes (with the entropy model resolved against `train.out_dir`)."""
    if cfg.arch == "transformer":
        return ByteTransformer(cfg.transformer, cfg.model.attn_backend)
    if patcher is None:
        patcher = build_patcher(cfg.model.patcher, cfg.train.out_dir)
    return ByteLM(cfg.model, patcher)


ENTROPY_DIR = "entropy_model"  # where a ByteLM checkpoint keeps its entropy model


def _uses_entropy(cfg) -> bool:
    return getattr(cfg, "arch", None) == "bytelm" and cfg.model.patcher.name == "entropy"


def bundle_entropy_model(cfg: C.RunConfig, ckpt_dir: str | Path) -> None:
    """Copy the entropy model a ByteLM run uses into its checkpoint dir (no-op for other runs)."""
    if not _uses_entropy(cfg):
        return
    src = C.entropy_model_path(cfg.model.patcher, cfg.train.out_dir)
    if not (src / MODEL_FILE).is_file():
        raise CheckpointError(f"bytelm: the entropy model '{src}' is gone; cannot bundle it")
    dst = Path(ckpt_dir) / ENTROPY_DIR
    dst.mkdir(exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copyfile(src / name, dst / name)


def resolve_bundled(cfg: C.RunConfig, ckpt_dir: str | Path) -> C.RunConfig:
    """A ByteLM config loaded from a checkpoint -> the same config reading its bundled entropy model."""
    bundled = Path(ckpt_dir) / ENTROPY_DIR
    if not _uses_entropy(cfg) or not bundled.is_dir():
        return cfg
    pc = dataclasses.replace(cfg.model.patcher, entropy_model=str(bundled))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, patcher=pc))
