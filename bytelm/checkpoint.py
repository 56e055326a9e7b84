"""Checkpoints are directories, written atomically.

    model.safetensors   weights of the model from before torch.compile
    config.json         the fully resolved RunConfig
    trainer_state.pt    optimizer, scheduler, step, RNG states, metric history
    entropy_model/      the entropy patcher's model, when the run uses one (a checkpoint itself)

A checkpoint is written to a temporary sibling directory and renamed into
place, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bytelm import config as C
from bytelm.patchers.entropy import bundle_entropy_model, resolve_bundled


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
    return resolve_bundled(C.from_dict(C.RunConfig, d), path)


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
    from bytelm.model import build_model

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
