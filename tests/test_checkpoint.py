"""Checkpoints: a crash at any instant of a save leaves one that loads and that resume picks;
every file is durable before it is reachable; loading never unpickles."""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import bytelm.checkpoint as ck
from bytelm import config as C
from bytelm.model import ByteTransformer

CFG = C.RunConfig(
    arch="transformer", transformer=C.TransformerConfig(dim=16, n_layers=1, attn_heads=2)
)
PRIMITIVES = (
    "_mkdir", "_save_tensors", "_write_text", "_copyfile", "_fsync", "_rename", "_symlink",
    "_rmtree", "_unlink",
)  # fmt: skip
WRITES = ("_save_tensors", "_write_text", "_copyfile", "save_json")


def dest(name: str, args: tuple) -> Path:
    """The path a recorded file-system call changes."""
    return Path(args[0] if name == "_write_text" else args[-1])


class Crash(BaseException):
    """A kill: no `except Exception` and no cleanup code of the save path catches it."""


def model_and_state(step: int) -> tuple[torch.nn.Module, dict]:
    """A model whose weights tell the step, and a trainer state with real AdamW moments."""
    torch.manual_seed(step)
    model = ByteTransformer(CFG.transformer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, 256, (1, 8))).sum().backward()
    opt.step()
    return model, {"step": step, "optimizer": opt.state_dict(), "metrics_records": step}


def step_of(path) -> int:
    """Which step's model a checkpoint (or run directory) loads, read from its weights."""
    loaded, _ = ck.load_model(path)
    for step in range(1, 6):
        if torch.equal(loaded.state_dict()["embed.weight"], model_and_state(step)[0].embed.weight):
            return step
    raise AssertionError(f"{path} loads no step's model")


def save(run: Path, step: int, kept: list[str], keep: int) -> list[str]:
    model, state = model_and_state(step)
    return ck.save_run_checkpoint(run, step, model, CFG, state, kept, keep)[1]


def arm(monkeypatch, crash_at: int | None, torn: bool = False) -> list[tuple]:
    """Record every file-system call of the save path; the `crash_at`-th raises Crash instead
    (`torn`: a write leaves half its bytes first, an rmtree deletes one file first)."""
    calls = []

    def wrap(name, real):
        def call(*args):
            calls.append((name, *args))
            if len(calls) - 1 != crash_at:
                return real(*args)
            if torn and name in WRITES:
                data = args[0].read_bytes() if name == "_copyfile" else b'{"half": '
                dest(name, args).write_bytes(data[: len(data) // 2])
            if torn and name == "_rmtree":
                files = [p for p in Path(args[0]).rglob("*") if p.is_file()]
                files[0].unlink() if files else None
            raise Crash(name)

        return call

    for name in PRIMITIVES:
        monkeypatch.setattr(ck, name, wrap(name, getattr(ck, name)))
    monkeypatch.setattr(C, "save_json", wrap("save_json", C.save_json))
    return calls


def count_calls(tmp_path, monkeypatch, setup) -> list[tuple]:
    run = tmp_path / "count"
    kept, keep = setup(run)
    with monkeypatch.context() as m:
        calls = arm(m, None)
        save(run, 3, kept, keep)
    return calls


def with_previous(keep):
    def setup(run):
        kept = save(run, 1, [], keep)
        return save(run, 2, kept, keep), keep

    return setup


def old_layout(run):
    """A run directory as bytelm wrote it before step directories: `checkpoint/` itself."""
    model, _ = model_and_state(2)
    ck.save_checkpoint(run / "checkpoint", model, CFG)
    (run / "checkpoint" / "trainer_state.pt").write_bytes(b"an old pickle")
    return [], 2


def first_save(run):
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # a run writes metrics before it saves
    return [], 2


SCENARIOS = {"keep2": with_previous(2), "keep1": with_previous(1), "old_layout": old_layout}


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_crash_at_every_call_of_a_save_leaves_a_checkpoint_resume_picks(
    tmp_path, monkeypatch, scenario, torn
):
    setup = SCENARIOS[scenario]
    calls = count_calls(tmp_path, monkeypatch, setup)
    kinds = {c[0] for c in calls}
    assert {"_save_tensors", "save_json", "_write_text", "_fsync", "_rename", "_symlink"} <= kinds
    if scenario != "old_layout":
        assert "_rmtree" in kinds  # the pruned directory
    previous = 2
    for i, call in enumerate(calls):
        if torn and call[0] not in WRITES + ("_rmtree",):
            continue  # the same state as the clean crash
        run = tmp_path / f"run-{i}"
        kept, keep = setup(run)
        with monkeypatch.context() as m:
            arm(m, i, torn)
            with pytest.raises(Crash):
                save(run, 3, kept, keep)
        where = f"crash at call {i}: {call[0]}({dest(call[0], call[1:]).name})"
        if scenario == "old_layout":  # the old directory holds no new trainer state to resume
            assert step_of(run / "checkpoint") in (previous, 3), where
            found = ck.latest_checkpoint(run, resumable=True)
            assert found is None or step_of(found[0]) == 3, where
        else:
            ckpt, lineage = ck.find_resumable(run)  # never None: never a silent restart
            step = ck.load_trainer_state(ckpt)["step"]
            assert step in (previous, 3) and step_of(ckpt) == step, where
            assert step_of(run) == step, where  # load_model on the run directory
            assert step_of(run / "checkpoint") in (previous, 3), where
            assert lineage[0] == ckpt.name and len(lineage) <= keep
        # the next save goes through and clears what the crash left
        found = ck.latest_checkpoint(run, resumable=True)
        kept = save(run, 4, found[1] if found else [], keep)
        assert step_of(run) == step_of(run / "checkpoint") == 4
        names = sorted(p.name for p in run.iterdir())
        assert names == sorted(["checkpoint", "latest", *kept]), (where, names)
        assert kept[0] == "checkpoint-000004" and len(kept) == (keep if found else 1), where


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_a_crash_in_the_first_save_is_never_a_silent_restart(tmp_path, monkeypatch, torn):
    calls = count_calls(tmp_path, monkeypatch, first_save)
    for i in range(len(calls)):
        run = tmp_path / f"run-{i}"
        first_save(run)
        with monkeypatch.context() as m:
            arm(m, i, torn)
            with pytest.raises(Crash):
                save(run, 3, [], 2)
        try:
            ckpt, _ = ck.find_resumable(run)
        except ck.CheckpointError as e:
            assert "no complete checkpoint" in str(e)
        else:
            assert step_of(ckpt) == ck.load_trainer_state(ckpt)["step"] == 3


def test_every_file_and_directory_is_durable_before_it_is_reachable(tmp_path, monkeypatch):
    """A power cut keeps only what was fsynced. Replaying a save's calls: each rename moves
    something whose contents (a file's bytes, a directory's entries) were fsynced after their
    last change; the pointer names a step directory only once its name is durable (its
    directory fsynced after the rename); nothing is deleted before the new pointer is durable."""
    run = tmp_path / "run"
    kept = save(run, 1, save(run, 0, [], 2), 2)
    calls = arm(monkeypatch, None)
    save(run, 2, kept, 2)
    content, entry, pending = set(), set(), {}  # durable contents, durable names, names to sync

    def changed(p: Path):  # p was created, written or renamed in: neither it nor its dir is durable
        content.discard(p)
        content.discard(p.parent)
        entry.discard(p)
        pending.setdefault(p.parent, set()).add(p)

    seen = set()
    for name, *args in calls:
        seen.add(name)
        if name in WRITES or name in ("_mkdir", "_symlink"):
            changed(dest(name, args))
        elif name == "_fsync":
            content.add(Path(args[0]))
            entry.update(pending.pop(Path(args[0]), ()))
        elif name == "_rename":
            src, dst = map(Path, args)
            if dst == run / "latest":
                assert run / "checkpoint-000002" in entry, "the pointer names a non-durable name"
                seen.add("commit")
            if dst.name.startswith(".trash"):
                assert "commit" in seen and run / "latest" in entry, "deleted before the commit"
            elif dst.name != "checkpoint":  # the symlink has no contents to sync
                assert src in content, f"{src.name} renamed to {dst.name} before an fsync"
            durable = src in content
            changed(src)
            changed(dst)
            if durable:
                content.add(dst)
    assert {"commit", "_rename", "_fsync"} <= seen and ".trash" in str(calls)


def test_keep_checkpoints_is_validated():
    with pytest.raises(C.ConfigError, match="train.keep_checkpoints must be >= 1"):
        C.TrainConfig(keep_checkpoints=0)


def test_trainer_state_round_trips_without_pickle(tmp_path, monkeypatch):
    """Optimizer moments, int state keys, the RNG tuples and arrays come back as they were,
    and loading touches neither torch.load nor pickle."""
    model, state = model_and_state(1)
    state["rng"] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    state["scheduler"] = {"last_epoch": 3, "_last_lr": [0.001, 0.001], "lr_lambdas": [None]}
    path = ck.save_checkpoint(tmp_path / "ck", model, CFG, state)
    assert not list(path.rglob("*.pt"))

    def refuse(*a, **k):
        raise AssertionError("a checkpoint load unpickled")

    for target, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, attr, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    got = ck.load_trainer_state(path)
    ck.load_model(path)
    assert got["rng"]["python"] == state["rng"]["python"]
    numpy_state = got["rng"]["numpy"]
    assert numpy_state[0] == "MT19937" and numpy_state[1].dtype == np.uint32
    assert all(np.array_equal(a, b) for a, b in zip(numpy_state, state["rng"]["numpy"]))
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    assert got["scheduler"] == state["scheduler"]
    opt_got, opt_want = got["optimizer"], state["optimizer"]
    assert opt_got["param_groups"] == opt_want["param_groups"]
    assert opt_got["state"].keys() == opt_want["state"].keys()  # ints, as the optimizer wants
    for k, s in opt_want["state"].items():
        for name, v in s.items():
            assert torch.equal(opt_got["state"][k][name], v), (k, name)
    # an optimizer takes it back and steps exactly as the original would
    random.setstate(got["rng"]["python"])  # the state is usable as it is
    np.random.set_state(numpy_state)
    twin = ByteTransformer(CFG.transformer)
    twin.load_state_dict(model.state_dict())
    model.zero_grad(set_to_none=True)
    opts = []
    for m, sd in ((model, opt_want), (twin, opt_got)):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95))
        opt.load_state_dict(sd)
        m(torch.arange(8)[None]).sum().backward()
        opt.step()
        opts.append(m)
    assert all(torch.equal(p, q) for p, q in zip(opts[0].parameters(), opts[1].parameters()))


def test_old_format_checkpoint_needs_an_explicit_conversion(tmp_path):
    model, state = model_and_state(2)
    run = tmp_path / "run"
    ckpt = ck.save_checkpoint(run / "checkpoint", model, CFG)
    state["history"] = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.5}]
    torch.save(state, ckpt / "trainer_state.pt")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 3, "loss": 4.0}\n')
    for path in (run, ckpt):
        with pytest.raises(ck.CheckpointError, match=r"old format .* `bytelm convert "):
            ck.find_resumable(path)
    assert step_of(run / "checkpoint") == 2  # its model loads as it always did
    with pytest.raises(ck.CheckpointError, match="unpickles"):
        ck.convert_legacy(run)
    assert ck.convert_legacy(run, allow_pickle=True) == ckpt
    assert not (ckpt / "trainer_state.pt").exists()
    found, kept = ck.find_resumable(run)
    assert found == ckpt and kept == []
    got = ck.load_trainer_state(found)
    assert got["step"] == 2 and got["metrics_records"] == 2
    assert (run / "metrics.jsonl").read_text().splitlines()[1] == '{"step": 2, "loss": 4.5}'
    with pytest.raises(ck.CheckpointError, match="already in the new format"):
        ck.convert_legacy(run, allow_pickle=True)
    # the first save of the resumed run turns `checkpoint/` into the symlink
    kept = save(run, 3, kept, 2)
    assert os.readlink(run / "checkpoint") == "checkpoint-000003" and kept == ["checkpoint-000003"]


def test_resume_finds_nothing_in_an_empty_or_missing_directory(tmp_path):
    assert ck.find_resumable(tmp_path / "nope") is None
    (tmp_path / "empty").mkdir()
    assert ck.find_resumable(tmp_path / "empty") is None
    (tmp_path / "empty" / "notes.txt").write_text("not a run's")
    assert ck.find_resumable(tmp_path / "empty") is None


def test_a_missing_pointer_falls_back_to_the_newest_complete_step_directory(tmp_path):
    run = tmp_path / "run"
    save(run, 2, save(run, 1, [], 3), 3)
    (run / "latest").unlink()
    (run / "checkpoint-000002" / "trainer_state.json").unlink()  # damaged by hand
    ckpt, kept = ck.find_resumable(run)
    assert ckpt.name == "checkpoint-000001" and kept == ["checkpoint-000001"]
    assert step_of(run) == 2  # a model alone needs no trainer state


def test_saving_a_step_twice_keeps_the_first_until_the_second_commits(tmp_path):
    run = tmp_path / "run"
    kept = save(run, 2, [], 2)
    kept = save(run, 2, kept, 2)
    assert kept == ["checkpoint-000002.1", "checkpoint-000002"]
    assert ck.step_dirs(run) == kept and os.readlink(run / "checkpoint") == kept[0]


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints_at_its_first_save(tmp_path):
    run = tmp_path / "run"
    save(run, 4, save(run, 3, [], 2), 2)
    kept = save(run, 1, [], 2)  # a new run: nothing of its own yet
    assert ck.step_dirs(run) == kept == ["checkpoint-000001"]
    assert ck.find_resumable(run)[0].name == "checkpoint-000001"
