"""Training: gradients reach every stage, checkpoints round-trip, resume is exact, DDP works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bytelm import config as C
from bytelm.checkpoint import CheckpointError, load_model, save_checkpoint
from bytelm.model import ByteLM
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.train import Trainer
from bytelm.vocab import BOS
from tests.conftest import tiny_bytelm_config

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    import random

    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(24):
        (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)))
    return d


def tiny_run(corpus_dir, out_dir, **train) -> C.RunConfig:
    cfg = C.load_preset("tiny")
    overrides = {
        "data.sources": str(corpus_dir),
        "data.heldout_fraction": "0.2",
        "data.cache_dir": str(Path(out_dir).parent / "cache"),
        "train.out_dir": str(out_dir),
    }
    overrides.update({f"train.{k}": str(v) for k, v in train.items()})
    return C.override(cfg, overrides)


def test_tiny_bytelm_overfits_a_fixed_batch():
    """Gradients flow through every stage: a tiny model memorises one batch."""
    torch.manual_seed(0)
    model = ByteLM(tiny_bytelm_config(heads=2, pooling="attn"))
    ids = torch.randint(97, 123, (2, 32))
    ids[:, 0] = BOS
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        out = multi_head_loss(model(ids), ids, doc_ids(ids))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    # head 1 memorises the batch; the draft head (a residual MLP on detached states by
    # default) learns far less, but learns
    h1, h2 = out.per_head.tolist()
    assert h1 < 0.05, f"head 1 loss {h1:.3f} did not approach zero"
    assert h2 < 1.0, f"draft head loss {h2:.3f} barely moved from ln 259 = 5.56"
    # every parameter received a gradient (no dead stage)
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    dead = [n for n in dead if "ngram" not in n]  # unused hash buckets legitimately get no gradient
    assert not dead, f"parameters without gradient: {dead[:5]}"


# the ops behind every tensor -> Python value (.item(), int(), bool(), .tolist()) and every
# output whose size depends on the data: on CUDA each waits for the device to drain
SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten._unique2.default,
}


class RecordSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("patcher", ["fixed", "space"])
def test_training_forward_and_backward_read_nothing_back(corpus_dir, tmp_path, patcher):
    """The Trainer counts patches on the host, so its step's forward, loss and backward never
    turn a tensor into a Python value (on CPU, where every op is visible to a dispatch mode)."""
    run = C.override(tiny_run(corpus_dir, tmp_path / "t"), {"model.patcher.name": patcher})
    t = Trainer(run)
    args = t.batch(0)
    with RecordSyncs() as rec:
        loss, _ = t.forward_loss(*args)
        loss.backward()
    assert not rec.seen, f"host syncs in a training step: {rec.seen}"
    with RecordSyncs() as rec:  # the check sees them: the plain forward reads P back
        t.raw_model(args[0])
    assert rec.seen


def test_train_compile_is_validated():
    with pytest.raises(C.ConfigError, match="train.compile must be auto, on or off"):
        C.TrainConfig(compile="yes")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bytelm", "transformer"])
def test_compiled_step_matches_eager(corpus_dir, tmp_path, arch):
    """`train.compile`: one graph (no break, no recompile for a second batch), and the same
    loss and gradients as eager (which runs with the exact patch count, not the bucket)."""
    import torch._dynamo.utils as dynamo_utils

    tiny = {"data.seq_len": "32", "arch": arch}
    if arch == "transformer":
        tiny.update({"transformer.dim": "32", "transformer.n_layers": "1"})
        tiny.update({"transformer.attn_heads": "2"})
    runs = {
        mode: Trainer(C.override(tiny_run(corpus_dir, tmp_path / mode, compile=mode), tiny))
        for mode in ("off", "on")
    }
    eager, compiled = runs["off"], runs["on"]
    assert not eager.compiled and compiled.compiled
    if arch == "bytelm":  # the compiled step pads P to the bucket (capped at T), eager does not
        assert compiled.batch(0)[2] == 32 > eager.batch(0)[2]
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    for step in (0, 1):
        got, want = {}, {}
        for t, out in ((compiled, got), (eager, want)):
            t.optimizer.zero_grad(set_to_none=True)
            loss, per_head = t.forward_loss(*t.batch(step))
            loss.backward()
            out["loss"], out["per_head"] = loss.detach(), per_head
            out.update({n: p.grad for n, p in t.raw_model.named_parameters() if p.grad is not None})
        assert got.keys() == want.keys()
        for name, g in want.items():
            scale = g.abs().max().item()
            torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-4 * scale, msg=name)
    assert dynamo_utils.counters["stats"]["unique_graphs"] - graphs == 1
    # checkpoints hold the plain module, not the compiled function's
    assert type(compiled.raw_model) is type(eager.raw_model)
    path = compiled.save()
    loaded, _ = load_model(path)
    assert loaded.state_dict().keys() == eager.raw_model.state_dict().keys()


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    cfg = C.override(
        C.load_preset("tiny"), {"model.pooling": "attn", "model.patcher.name": "space"}
    )
    model = ByteLM(cfg.model).eval()
    save_checkpoint(tmp_path / "ck", model, cfg)
    loaded, cfg2 = load_model(tmp_path / "ck")
    assert cfg2 == cfg
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


def test_resumed_run_matches_uninterrupted_run(corpus_dir, tmp_path):
    full = Trainer(tiny_run(corpus_dir, tmp_path / "full", steps=8, save_every=4, eval_every=100))
    full.fit()
    part = Trainer(tiny_run(corpus_dir, tmp_path / "part", steps=8, save_every=4, eval_every=100))
    part.fit(stop_after=4)  # "killed" after the checkpoint at step 4
    resumed = Trainer(
        tiny_run(corpus_dir, tmp_path / "part", steps=8, save_every=4, eval_every=100)
    )
    resumed.fit(resume=True)
    assert resumed.step == 8
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in resumed.history]
    assert len(a) == len(b) == 8
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (
        "the resumed loss curve must match step for step"
    )


def test_interrupted_checkpoint_write_leaves_previous_intact(tmp_path, monkeypatch):
    cfg = C.load_preset("tiny")
    model = ByteLM(cfg.model)
    path = save_checkpoint(tmp_path / "ck", model, cfg)
    before = (path / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("bytelm.checkpoint.C.save_json", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", ByteLM(cfg.model), cfg)
    assert (path / "model.safetensors").read_bytes() == before
    load_model(path)  # still loads


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    cfg = C.load_preset("tiny")
    path = save_checkpoint(tmp_path / "ck", ByteLM(cfg.model), cfg)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt model.safetensors"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config.json"):
        load_model(path)


def test_accelerate_launch_two_cpu_processes(corpus_dir, tmp_path):
    """DDP over gloo with 2 CPU processes, through `accelerate launch`."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        # --multi_gpu selects the torchrun launcher; without CUDA the ranks run on CPU over gloo
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "bytelm.cli", "train", "--preset", "tiny",
        "--data.sources", str(corpus_dir), "--data.heldout_fraction", "0.2",
        "--data.cache_dir", str(tmp_path / "cache"), "--train.out_dir", str(out),
        "--train.steps", "4", "--train.eval_every", "4", "--train.save_every", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and "bpb" in lines[-1]
    assert lines[-1]["world_size"] == 2, "accelerate did not start two processes"
    assert (out / "checkpoint" / "model.safetensors").is_file()
    load_model(out / "checkpoint")


class Killed(BaseException):
    """A kill inside a save: nothing in the save path catches it."""


def test_a_run_killed_inside_a_save_resumes_from_the_newest_complete_checkpoint(
    corpus_dir, tmp_path, monkeypatch, capsys
):
    """Killed in its step-4 save, after the step directory was renamed in but before the
    pointer named it: the resumed run continues from step 2 and says so, drops the metrics
    logged after step 2, and then matches an uninterrupted run step for step."""
    import bytelm.checkpoint as ck

    kw = dict(steps=6, save_every=2, eval_every=100)
    full = Trainer(tiny_run(corpus_dir, tmp_path / "full", **kw))
    full.fit()
    part = Trainer(tiny_run(corpus_dir, tmp_path / "part", **kw))
    rename = ck._rename

    def kill_at_the_commit(src, dst):
        if Path(dst).name == "latest" and part.step == 4:
            raise Killed
        rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(ck, "_rename", kill_at_the_commit)
        with pytest.raises(Killed):
            part.fit()
    out = tmp_path / "part"
    assert (out / "checkpoint-000004").is_dir() and ck.read_pointer(out)[0] == "checkpoint-000002"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    resumed = Trainer(tiny_run(corpus_dir, out, **kw))
    resumed.fit(resume=True)
    said = [x for x in capsys.readouterr().out.splitlines() if x.startswith("resume:")]
    assert said == [f"resume: continuing from {out / 'checkpoint-000002'} (step 2)"]
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    a = [r["loss"] for r in full.history]
    assert a == pytest.approx([r["loss"] for r in resumed.history], rel=1e-6, abs=1e-7)
    assert a == pytest.approx([r["loss"] for r in logged], rel=1e-6, abs=1e-7)
    assert ck.read_pointer(out) == ck.step_dirs(out) == ["checkpoint-000006", "checkpoint-000004"]
    assert load_model(out / "checkpoint")[1] == resumed.cfg


def test_resume_in_an_empty_out_dir_starts_fresh_and_says_so(corpus_dir, tmp_path, capsys):
    t = Trainer(tiny_run(corpus_dir, tmp_path / "new", steps=2, save_every=2, eval_every=100))
    t.fit(resume=True)
    assert f"resume: nothing to resume in {tmp_path / 'new'}; starting from step 0" in (
        capsys.readouterr().out
    )
    assert t.step == 2 and (tmp_path / "new" / "checkpoint-000002").is_dir()


def test_prefetched_batches_are_the_batches(corpus_dir, tmp_path):
    """train.prefetch builds the next micro-batch in a thread: same batches, same losses."""
    runs = {}
    for prefetch in (True, False):
        cfg = tiny_run(corpus_dir, tmp_path / f"p{prefetch}", steps=4, eval_every=100,
                       save_every=100, grad_accum=2, prefetch=prefetch)  # fmt: skip
        t = Trainer(cfg)
        assert (t._prefetcher is not None) == prefetch
        batches = [t.batch(s) for s in (0, 1, 2, 5, 6)]  # in order, then a jump
        t.fit()
        runs[prefetch] = (batches, [r["loss"] for r in t.history])
    for a, b in zip(runs[True][0], runs[False][0]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert runs[True][1] == runs[False][1]


def test_sampled_drafts_train_and_resume_exactly(corpus_dir, tmp_path):
    """out_heads.draft_sample: heads 2..K train at a fresh random share of the positions each
    micro-batch, drawn from the seed and the step, so a resumed run matches step for step."""
    sampled = {"model.out_heads.n": "3", "model.out_heads.draft_sample": "0.25"}
    run = lambda name: Trainer(
        C.override(
            tiny_run(corpus_dir, tmp_path / name, steps=6, save_every=3, eval_every=100), sampled
        )
    )
    full = run("full")
    T = full.cfg.data.seq_len
    at = [full.draft_positions(i) for i in range(3)]
    assert all(len(a) == round(0.25 * T) and a.unique().numel() == len(a) for a in at)
    assert torch.equal(at[0], run("again").draft_positions(0))
    assert not torch.equal(at[0], at[1])
    full.fit()
    part = run("part")
    part.fit(stop_after=3)
    resumed = run("part")
    resumed.fit(resume=True)
    a, b = [r["loss"] for r in full.history], [r["loss"] for r in resumed.history]
    assert len(a) == len(b) == 6 and a == pytest.approx(b, rel=1e-6, abs=1e-7)
