"""Checkpoints: directories of safetensors and JSON, loadable after a crash at any instant.

A checkpoint directory holds `model.safetensors` (the weights from before torch.compile),
`config.json` (the fully resolved RunConfig), `trainer_state.json` + `trainer_state.safetensors`
(step, optimizer, scheduler, RNG states, how many lines of the run's metrics.jsonl are its
history; `encode_state`) and `entropy_model/` when the run uses one. Loading never unpickles:
`torch.load` serves only `convert_legacy`, on request, for the old `trainer_state.pt`.

A run directory (`train.out_dir`):

    checkpoint-000500/ checkpoint-001000/   the last `train.keep_checkpoints` step directories
    latest                                  the pointer: their names, newest first, one a line
    checkpoint -> checkpoint-001000         a relative symlink to the newest: the path users
                                            and the entropy-model default read keeps working
    metrics.jsonl                           every step's metrics, appended (the history)

`save_run_checkpoint` fsyncs every file and directory before a rename makes it reachable, and
the directory holding a rename after it, in this order:

    1. write the step directory under a temporary name
    2. rename it to `checkpoint-NNNNNN` (still unreachable: the pointer does not name it)
    3. write `latest` to a temporary file and rename it over `latest`: the commit
    4. point the `checkpoint` symlink at it (a temporary symlink renamed over the old one)
    5. rename the step directories the pointer no longer names to `.trash-*`; delete them

A crash before 3 leaves the old pointer, whose directories are untouched; after 3, the new
one. Nothing a pointer names is modified, and a directory is deleted only after a durable
pointer stopped naming it; the next save clears leftovers. Readers (`latest_checkpoint`)
trust the pointer; only without one (the first save died before 3) do they take the newest
complete step directory.

This module is also where models are *built*: it sits above `model` and `patchers`, so it is
the one place that loads an entropy model and hands it to the entropy patcher, and the patcher
to `ByteLM`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from bytelm import config as C
from bytelm.model import ByteLM, ByteTransformer
from bytelm.patchers import BoundarySource, make_patcher


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint."""


MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"  # the old pickle: read by `convert_legacy` only
POINTER, ALIAS, METRICS_FILE = "latest", C.CHECKPOINT_DIR, "metrics.jsonl"
STATE_FORMAT = 2
STEP_DIR = re.compile(r"checkpoint-(\d{6,})(?:\.(\d+))?")  # checkpoint-000500, a re-save .1


# ----------------------------------------------------------------------------- file system
# Every change the save path makes to the file system goes through these few functions, so
# that a test can crash it after any one of them (tests/test_checkpoint.py).


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _save_tensors(tensors: dict, path: Path) -> None:
    save_file(tensors, str(path))


def _load_tensors(path: Path) -> dict:  # safetensors opens UTF-8 paths only: read others here
    utf8 = os.fsencode(path).decode("utf-8", "replace") == str(path)
    return load_file(str(path)) if utf8 else load(path.read_bytes())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _copyfile(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def _fsync(path: Path) -> None:
    """Make a file's contents, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # atomic; replaces a file or a symlink at dst


def _symlink(target: str, link: Path) -> None:
    os.symlink(target, link)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _durable_text(path: Path, text: str) -> None:
    """Replace the file `path` with `text` atomically and durably."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _write_text(tmp, text)
    _fsync(tmp)
    _rename(tmp, path)
    _fsync(path.parent)


def _discard(path: Path) -> None:
    """Delete a directory that nothing names any more: renamed to `.trash-*` first, so a crash
    mid-delete never leaves a half-deleted directory under a checkpoint's name."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    _rename(path, trash)
    _fsync(path.parent)
    _rmtree(trash)


# ----------------------------------------------------------------------------- trainer state


def encode_state(obj, tensors: dict, key: str = "state"):
    """A state dict (nested dicts, lists, tuples, tensors, numpy arrays, numbers) -> JSON, its
    tensors moved into `tensors` under their path: optimizer state keys stay ints and the
    Python RNG state stays a tuple, which plain JSON would lose."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        kind = obj.dtype.kind
        if kind not in "biuf":
            raise TypeError(f"cannot store a {obj.dtype} array at {key} in a checkpoint")
        wide = np.int64 if kind in "biu" else np.float64  # exact for numpy's uint32 RNG key
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj, dtype=wide))
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        assert len({str(k) for k in obj}) == len(obj), f"keys of {key} clash as strings"
        items = [[k, encode_state(v, tensors, f"{key}/{k}")] for k, v in obj.items()]
        return {"__items__": [[encode_state(k, tensors, key), v] for k, v in items]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {key} in a checkpoint")


def decode_state(obj, tensors: dict):
    """The inverse of `encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _write_trainer_state(ckpt: Path, state: dict) -> None:
    """trainer_state.safetensors, then trainer_state.json (which completes it), each renamed in."""
    tensors: dict = {}
    doc = {"format": STATE_FORMAT, "state": encode_state(state, tensors)}
    tmp = ckpt / f".{STATE_TENSORS}.tmp-{os.getpid()}"
    _save_tensors(tensors, tmp)
    _fsync(tmp)
    _rename(tmp, ckpt / STATE_TENSORS)
    _durable_text(ckpt / STATE_FILE, json.dumps(doc) + "\n")


def _legacy_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"bytelm: checkpoint '{path}' is in the old format ({LEGACY_STATE_FILE}, a pickle, which "
        f"bytelm no longer loads); convert it with `bytelm convert {path}` (it unpickles the file "
        "once: only for checkpoints you trust)"
    )


def load_trainer_state(path: str | Path) -> dict:
    """A checkpoint (or run) directory -> its trainer state: step, optimizer, scheduler, rng,
    metrics_records. Reads JSON and safetensors only."""
    path = resolve_checkpoint(path)
    if not (path / STATE_FILE).is_file():
        if (path / LEGACY_STATE_FILE).is_file():
            raise _legacy_error(path)
        raise CheckpointError(f"bytelm: checkpoint '{path}' has no {STATE_FILE}; cannot resume")
    try:
        doc = json.loads((path / STATE_FILE).read_text())
        tensors = _load_tensors(path / STATE_TENSORS)
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        return decode_state(doc["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt trainer state: {e}"
        ) from None


# ----------------------------------------------------------------------------- saving


def _write_checkpoint(tmp: Path, model: torch.nn.Module, cfg, trainer_state: dict | None) -> None:
    """Every file of a checkpoint into the new directory `tmp`, each fsynced, then `tmp`."""
    _rmtree(tmp)
    _mkdir(tmp)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save_tensors(state, tmp / MODEL_FILE)
    _fsync(tmp / MODEL_FILE)
    C.save_json(cfg, tmp / CONFIG_FILE)
    _fsync(tmp / CONFIG_FILE)
    bundle_entropy_model(cfg, tmp)  # a ByteLM with the entropy patcher carries its entropy model
    if trainer_state is not None:
        _write_trainer_state(tmp, trainer_state)
    _fsync(tmp)


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, cfg, trainer_state: dict | None = None
) -> Path:
    """One checkpoint directory at `path`, written under a temporary name, fsynced, renamed in.
    Replacing one takes two renames: a crash between them leaves the old one at `.NAME.old-PID`
    (which the error for a missing checkpoint names); `save_run_checkpoint` never replaces."""
    path = Path(path)
    _mkdir(path.parent)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _write_checkpoint(tmp, model, cfg, trainer_state)
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists() or path.is_symlink():
        _rename(path, old)
    _rename(tmp, path)
    _fsync(path.parent)
    _rmtree(old)
    return path


def read_pointer(run_dir: str | Path) -> list[str]:
    """The step directories the pointer of `run_dir` names, newest first ([] without one)."""
    try:
        lines = (Path(run_dir) / POINTER).read_text().split()
    except (OSError, UnicodeDecodeError):
        return []
    return [n for n in lines if STEP_DIR.fullmatch(n)]  # never a path out of the run directory


def step_dirs(run_dir: str | Path) -> list[str]:
    """The step directories in `run_dir`, newest first (by step, then re-save number)."""
    found = []
    for p in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        m = STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append(((int(m[1]), int(m[2] or 0)), p.name))
    return [name for _, name in sorted(found, reverse=True)]


def _alias_target(run_dir: Path) -> str | None:
    alias = run_dir / ALIAS
    return os.readlink(alias) if alias.is_symlink() else None


def save_run_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    cfg,
    trainer_state: dict | None,
    kept: list[str],
    keep: int,
) -> tuple[Path, list[str]]:
    """Checkpoint step `step` of the run in `run_dir`, crash-safely (the module docstring).

    kept: the step directories of this run, newest first (a fresh run: []; a resumed one: what
    `latest_checkpoint` returned); the `keep` newest, this one included, stay, and every other
    step directory goes once the pointer names the new one. Returns (the new step directory,
    the new `kept`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        _mkdir(run_dir)
        _fsync(run_dir.parent)
    for p in run_dir.iterdir():  # what earlier saves left behind when they died
        if p.name.startswith((".checkpoint-", ".trash-", f".{POINTER}.tmp-", f".{ALIAS}.tmp-")):
            (_rmtree if p.is_dir() and not p.is_symlink() else _unlink)(p)
    named = set(read_pointer(run_dir)) | {_alias_target(run_dir)}
    name, i = f"checkpoint-{step:06d}", 0
    while (run_dir / name).exists() and name in named:  # a step saved twice gets `.1`, ...
        i += 1
        name = f"checkpoint-{step:06d}.{i}"
    if (run_dir / name).exists():  # an orphan: renamed in, but no pointer ever named it
        _discard(run_dir / name)

    # 1-2. the step directory, complete and durable before it gets its name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    _write_checkpoint(tmp, model, cfg, trainer_state)
    _rename(tmp, run_dir / name)
    _fsync(run_dir)
    # 3. the commit
    kept = [name] + [n for n in kept if n != name][: max(keep, 1) - 1]
    _durable_text(run_dir / POINTER, "".join(n + "\n" for n in kept))
    # 4. the symlink for `load_model("runs/x/checkpoint")`; an old-format `checkpoint/`
    # directory is moved away first (while it is missing, `resolve_checkpoint` reads the pointer)
    alias = run_dir / ALIAS
    if alias.is_dir() and not alias.is_symlink():
        _discard(alias)
    link = run_dir / f".{ALIAS}.tmp-{os.getpid()}"
    _symlink(name, link)
    _rename(link, alias)
    _fsync(run_dir)
    # 5. what the pointer no longer names
    for old in step_dirs(run_dir):
        if old not in kept:
            _discard(run_dir / old)
    return run_dir / name, kept


# ----------------------------------------------------------------------------- finding


def is_complete(ckpt: Path, resumable: bool = False) -> bool:
    """Whether `ckpt` holds a loadable model (and, with `resumable`, a readable trainer state)."""
    files = (MODEL_FILE, CONFIG_FILE) + ((STATE_FILE, STATE_TENSORS) if resumable else ())
    if not all((ckpt / f).is_file() for f in files):
        return False
    if resumable:
        try:
            return json.loads((ckpt / STATE_FILE).read_text()).get("format") == STATE_FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    return True


def latest_checkpoint(
    run_dir: str | Path, resumable: bool = False
) -> tuple[Path, list[str]] | None:
    """The newest complete checkpoint of a run directory and the run's step directories from
    it on (newest first), or None. The pointer decides; without a usable one, the newest
    complete step directory, else an old-layout `checkpoint/` directory."""
    run_dir = Path(run_dir)
    names = read_pointer(run_dir)
    for i, name in enumerate(names):
        if is_complete(run_dir / name, resumable):
            return run_dir / name, names[i:]
    for name in step_dirs(run_dir):
        if is_complete(run_dir / name, resumable):
            return run_dir / name, [name]
    alias = run_dir / ALIAS
    if alias.is_dir() and not alias.is_symlink() and is_complete(alias, resumable):
        return alias, []
    return None


def has_run_state(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds what a run writes: a pointer, checkpoints (even partial), metrics."""
    names = [p.name for p in Path(run_dir).iterdir()] if Path(run_dir).is_dir() else []
    run = (POINTER, ALIAS, METRICS_FILE)
    return any(n in run or STEP_DIR.fullmatch(n) or n.startswith(".checkpoint-") for n in names)


def find_resumable(path: str | Path) -> tuple[Path, list[str]] | None:
    """What `Trainer.resume` continues from: (checkpoint, the run's step directories from it
    on), or None when `path` holds no run at all (a fresh start).

    path: a run directory (its newest complete checkpoint) or a checkpoint directory. A run
    directory with run state but no complete checkpoint, or only an old-format one, is a
    CheckpointError: never a silent restart.
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():  # the `checkpoint` alias: its step directory
        path = path.parent / os.readlink(path)
    if not path.exists():
        return None
    if not path.is_dir():
        raise CheckpointError(f"bytelm: '{path}' is a file, not a run or checkpoint directory")
    if (path / MODEL_FILE).is_file() and not (path / POINTER).is_file():  # a checkpoint itself
        if not is_complete(path, resumable=True):
            load_trainer_state(path)  # raises what is wrong: old format, none, corrupt
        names = read_pointer(path.parent)
        lineage = names[names.index(path.name) :] if path.name in names else [path.name]
        return path, lineage if STEP_DIR.fullmatch(path.name) else []
    found = latest_checkpoint(path, resumable=True)
    if found is not None:
        return found
    if (path / ALIAS / LEGACY_STATE_FILE).is_file():
        raise _legacy_error(path / ALIAS)
    if has_run_state(path):
        raise CheckpointError(
            f"bytelm: cannot resume '{path}': it holds a run but no complete checkpoint (the "
            "run stopped before its first save finished); train without --resume to start "
            "afresh there, or choose another --train.out_dir"
        )
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, a run directory (-> its newest complete checkpoint), or a run's
    `checkpoint` alias whose symlink is missing or broken (-> the same) -> a checkpoint dir."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None and path.name == ALIAS and path.parent.is_dir():
        found = latest_checkpoint(path.parent)
    return path if found is None else found[0]


# ----------------------------------------------------------------------------- loading


def _require(path: Path) -> None:
    if not path.is_dir():
        old = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f"; an interrupted save left the previous one at '{old[-1]}'" if old else ""
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' does not exist (expected a directory){hint}"
        )
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"bytelm: checkpoint '{path}' is incomplete: '{name}' is missing")


def load_config(path: str | Path) -> C.RunConfig:
    path = resolve_checkpoint(path)
    _require(path)
    try:
        d = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt {CONFIG_FILE}: {e}"
        ) from None
    return resolve_bundled(C.from_dict(C.RunConfig, C.upgrade(C.RunConfig, d)), path)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    path = resolve_checkpoint(path)
    try:
        state = _load_tensors(path / MODEL_FILE)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' has a corrupt {MODEL_FILE}: {e}"
        ) from None
    own = model.state_dict()
    wrong = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' does not match its {CONFIG_FILE}: '{k}' is "
            f"{list(state[k].shape)} in {MODEL_FILE} but {list(own[k].shape)} in the model "
            f"{CONFIG_FILE} describes ({len(wrong)} tensor(s) differ); restore the "
            f"{CONFIG_FILE} it was saved with"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"bytelm: checkpoint '{path}' does not match its config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """A checkpoint or run directory -> (model in eval mode, RunConfig)."""
    path = resolve_checkpoint(path)
    cfg = load_config(path)
    model = build_model(cfg)
    load_weights(path, model)
    return model.to(device).eval(), cfg


def convert_legacy(path: str | Path, allow_pickle: bool = False) -> Path:
    """An old-format checkpoint (trainer state in `trainer_state.pt`, a pickle) -> the same
    checkpoint, converted in place to `trainer_state.json` + `.safetensors`. When it is a run's
    `checkpoint/` directory, its metric history becomes the run's metrics.jsonl (the records
    after the checkpoint, from a run killed later, are dropped, as a resume drops them).

    This unpickles `trainer_state.pt`, which can run code: `allow_pickle=True` says the caller
    trusts the file. `path`: the checkpoint or its run directory.
    """
    path = Path(path)
    if not (path / LEGACY_STATE_FILE).is_file() and (path / ALIAS).is_dir():  # a run directory
        path = path / ALIAS
    legacy = path / LEGACY_STATE_FILE
    if not legacy.is_file():
        why = "is already in the new format" if (path / STATE_FILE).is_file() else "is not one"
        raise CheckpointError(f"bytelm: '{path}' has no {LEGACY_STATE_FILE} to convert; it {why}")
    if not allow_pickle:
        raise CheckpointError(f"bytelm: converting '{legacy}' unpickles it; pass allow_pickle")
    try:
        state = torch.load(legacy, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"bytelm: '{legacy}' is corrupt: {e}") from None
    history = state.pop("history", [])
    state["metrics_records"] = 0
    if path.name == ALIAS and not path.is_symlink():  # a run's: its history is the run's metrics
        lines = "".join(json.dumps(r) + "\n" for r in history)
        _durable_text(path.parent / METRICS_FILE, lines)
        state["metrics_records"] = len(history)
    _write_trainer_state(path, state)
    _unlink(legacy)
    _fsync(path)
    return path


# ----------------------------------------------------------------------------- building models


def load_entropy_model(path: str | Path) -> tuple[torch.nn.Module, int]:
    """An entropy-model checkpoint -> (frozen ByteTransformer in eval mode, its context length)."""
    path = resolve_checkpoint(path)
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
    src = resolve_checkpoint(C.entropy_model_path(cfg.model.patcher, cfg.train.out_dir))
    if not (src / MODEL_FILE).is_file():
        raise CheckpointError(f"bytelm: the entropy model '{src}' is gone; cannot bundle it")
    dst = Path(ckpt_dir) / ENTROPY_DIR
    _mkdir(dst)
    for name in (MODEL_FILE, CONFIG_FILE):
        _copyfile(src / name, dst / name)
        _fsync(dst / name)
    _fsync(dst)


def resolve_bundled(cfg: C.RunConfig, ckpt_dir: str | Path) -> C.RunConfig:
    """A ByteLM config loaded from a checkpoint -> the same config reading its bundled entropy model."""
    bundled = Path(ckpt_dir) / ENTROPY_DIR
    if not _uses_entropy(cfg) or not bundled.is_dir():
        return cfg
    pc = dataclasses.replace(cfg.model.patcher, entropy_model=str(bundled))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, patcher=pc))
