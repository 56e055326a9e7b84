"""Scaling sweeps end to end: plan a grid, train it for real on a tiny corpus,
survive an interruption, fit the runs, and give users one-line errors.

The models are tiny (local dim 16, a few steps each), so the whole file runs in
seconds; the real sweep lives in benchmarks/results/sweep_*.
"""

import csv
import json
import os
import random

import pytest

from bytelm import cli
from bytelm import config as C
from bytelm.cli import sweep
from bytelm.evals import scaling as S
from bytelm.evals.flops import flops_per_byte, param_counts

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see test_scaling.py
pytest.importorskip("scipy")

PRESET = """
arch = "bytelm"
[model.ngram]
ns = [3, 4]
buckets = 64
[model.encoder]
dim = 16
n_layers = 1
attn_heads = 2
window = 16
[model.decoder]
dim = 16
n_layers = 0
attn_heads = 2
window = 16
[model.out_heads]
n = 1
[data]
sources = ["stdlib"]  # replaced on the command line, as users do
split = "tail"  # a hash split of 12 documents is empty for ~7% of tmp paths (names are paths)
heldout_fraction = 0.2
seq_len = 32
batch_size = 4
cache_dir = "{cache}"
[train]
lr = 3e-3
warmup_steps = 2
eval_bytes = 512
progress = false
"""
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]


@pytest.fixture
def setup(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(100)))
    preset = tmp_path / "tiny_sweep.toml"
    preset.write_text(PRESET.format(cache=tmp_path / "cache"))
    return tmp_path, corpus, preset


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_plans_trains_resumes_and_fits(setup, capsys):
    tmp, corpus, preset = setup
    grid_csv, runs_csv, out = tmp / "grid.csv", tmp / "runs.csv", tmp / "ckpt"
    sizes = [n for n, _ in sweep.family(C.load_preset(str(preset)))[:2]]
    argv = ["sweep", "plan", "--preset", str(preset), "--budgets", "5e7", "1e8", "2e8"]
    argv += ["--sizes", *map(str, sizes), "--rates", "2", "--ratio-range", "0.01", "1e3"]
    assert cli.main([*argv, "--out", str(grid_csv)]) == 0
    grid = sweep.read_grid(grid_csv)
    assert len(grid) == 6 and {r["N"] for r in grid} == set(sizes)

    # an interruption after two runs keeps them; the rerun trains only the rest
    base = C.override(C.load_preset(str(preset)), {"data.sources": str(corpus)})
    real = sweep.make_train_fn(base, out, log=lambda msg: None)
    trained = []

    def interrupted(row):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(row["run_id"])
        return real(row)

    run = ["sweep", "run", str(grid_csv), "--runs", str(runs_csv)]
    assert sweep.run_main(run[2:], interrupted) == 130
    assert [r["run_id"] for r in read_rows(runs_csv)] == trained
    more = ["--preset", str(preset), "--out-dir", str(out), "--data.sources", str(corpus)]
    assert cli.main([*run, *more]) == 0
    assert "trained 4 run(s); 2 were already in" in capsys.readouterr().out
    rows = read_rows(runs_csv)
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in grid)

    # each row records what was measured, not what was planned
    planned = {r["run_id"]: r for r in grid}
    for row in rows:
        cfg = json.loads(row["config"])
        N, D, bpp, flops, loss = (float(row[c]) for c in S.COLUMNS)
        member = sweep.nearest_member(base, planned[row["run_id"]]["N"])[1]
        assert N == param_counts(member.model)["latent"] == planned[row["run_id"]]["N"]
        assert D == cfg["steps"] * 4 * 32  # whole steps, the nearest to the planned bytes
        assert abs(D - planned[row["run_id"]]["D"]) <= 4 * 32 / 2
        assert cfg["patcher"] == "fixed:2" and 1.8 < bpp <= 2.0  # patches also end at EOS
        assert flops == pytest.approx(flops_per_byte(member.model, bpp, 32)["total"] * D)
        assert 0 < loss < 9  # bits per byte, held out
        assert (out / row["run_id"] / "checkpoint").is_dir()
        # the Trainer logs its size and cumulative FLOPs (at the nominal k = 2)
        logged = json.loads((out / row["run_id"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert logged["params_non_embedding"] == param_counts(member.model)["non_embedding"]
        assert logged["flops"] == pytest.approx(flops_per_byte(member.model, 2, 32)["total"] * D)

    # a finished sweep trains nothing
    assert cli.main([*run, *more]) == 0
    assert "trained 0 run(s); 6 were already in" in capsys.readouterr().out

    # the fit reads real runs (plots are tested in test_scaling.py; matplotlib is slow to load)
    assert cli.main(["fit", str(runs_csv), "--n-boot", "2"]) == 0
    report = capsys.readouterr().out
    assert "| alpha |" in report and "condition number" in report
    assert "flops = D (a + b/r + c N/r)" in report  # the compute model read off the runs


def test_plan_shifts_sizes_with_the_rate(tmp_path, capsys):
    # the same 3 sizes at both rates leave the full law singular; shifted sizes do not
    argv = ["sweep", "plan", "--preset", "sweep", "--budgets", "2e11", "4e11", "8e11"]
    argv += ["--rates", "2", "4", "--ratio-range", "2", "1000"]
    same = ["--sizes", "15e3", "31e3", "54e3"]
    assert cli.main([*argv, *same]) == 0
    assert "Condition number (full / A-B block): inf" in capsys.readouterr().out
    out = tmp_path / "grid.csv"
    assert cli.main([*argv, *same, "--sizes", "31e3", "54e3", "105e3", "--out", str(out)]) == 0
    assert "Condition number (full / A-B block): inf" not in capsys.readouterr().out
    grid = sweep.read_grid(out)
    sizes = {r: sorted({row["N"] for row in grid if row["bpp"] == r}) for r in (2.0, 4.0)}
    assert sizes == {2.0: [15456, 30864, 54464], 4.0: [30864, 54464, 104768]}
    budgets = [float(row["budget"]) for row in grid]
    assert budgets == sorted(budgets)  # cheapest first


def test_compute_model_recovers_local_and_latent_costs():
    # a family with fixed local models: 2e5 FLOPs per byte, plus 6.3 N per patch
    N = [1e4, 3e4, 1e5, 1e4, 3e4, 1e5]
    r = [2.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    D = [1e6] * 6
    flops = [d * (2e5 + 6.3 * n / rr) for n, d, rr in zip(N, D, r)]
    runs = S.Runs.from_arrays(N, D, r, flops, [1.0] * 6)
    m = S.ComputeModel.fit(runs)
    assert m.a == pytest.approx(2e5) and m.c == pytest.approx(6.3) and abs(m.b) < 1e-3
    assert m.max_rel_err < 1e-9
    # and for the latent-only model, exactly 6 N D / r
    runs = S.Runs.from_arrays(N, D, r, [6 * n * d / rr for n, d, rr in zip(N, D, r)], [1.0] * 6)
    m = S.ComputeModel.fit(runs)
    assert (m.a, m.b) == (0.0, 0.0) and m.c == pytest.approx(6.0)


def test_family_flops_is_exact_at_the_family_sizes():
    base = C.load_preset("sweep")
    ff = sweep.FamilyFlops(base)
    members = sweep.family(base)
    assert [n for n, _ in members] == sorted(n for n, _ in members)
    for n, cfg in members[:4]:
        want = flops_per_byte(cfg.model, 4.0, base.data.seq_len)["total"] * 1e6
        assert float(ff(n, 1e6, 4.0)) == pytest.approx(want, rel=1e-12)
    mid = (members[0][0] + members[1][0]) / 2  # between sizes: between their costs
    lo, hi = (float(ff(n, 1.0, 2.0)) for n in (members[0][0], members[1][0]))
    assert lo < float(ff(mid, 1.0, 2.0)) < hi


@pytest.mark.parametrize(
    "argv, match",
    [
        (["fit", "missing.csv"], "no runs file"),
        (["sweep", "run", "missing.csv", "--runs", "r.csv"], "no grid file"),
        (["sweep", "run", "g.csv", "--runs", "r.csv", "--preset", "nope"], "unknown preset"),
        (["sweep", "run", "g.csv", "--runs", "r.csv", "--model.latent.dimm", "3"], "unknown"),
        (["sweep", "plan", "--budgets", "1e12", "--rates", "2"], "give --sizes"),
        (["sweep", "plan", "--budgets", "1", "--sizes", "1", "--sizes", "2"], "once per rate"),
        (["sweep", "frobnicate"], "unknown sweep action"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.csv").write_text("run_id,N,D,bpp\nx,1e4,1e5,2.5\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bytelm: ") and err.count("\n") == 1 and match in err, err


def test_non_integer_rate_is_a_user_error(setup, capsys):
    tmp, corpus, preset = setup
    (tmp / "g.csv").write_text("run_id,N,D,bpp\nx,1.5e4,1e4,2.5\n")
    argv = ["sweep", "run", str(tmp / "g.csv"), "--runs", str(tmp / "r.csv")]
    assert cli.main([*argv, "--preset", str(preset), "--data.sources", str(corpus)]) == 2
    assert "not an integer" in capsys.readouterr().err
    assert not (tmp / "r.csv").exists()


def test_a_sweep_trains_learned_chunking(setup, capsys):
    """`--model.patcher.name learned`: each row's rate becomes the router's target (any rate,
    integer or not), the end of training calibrates θ to it, and the row records the rate the
    router gives on the held-out windows its loss is measured on, and FLOPs that count the
    router."""
    import dataclasses

    from bytelm.checkpoint import load_config

    tmp, corpus, preset = setup
    N = sweep.family(C.load_preset(str(preset)))[0][0]
    (tmp / "g.csv").write_text(f"run_id,N,D,bpp\nl3,{N},6400,3\nl25,{N},6400,2.5\n")
    argv = ["sweep", "run", str(tmp / "g.csv"), "--runs", str(tmp / "r.csv"), "--preset"]
    argv += [str(preset), "--out-dir", str(tmp / "out"), "--data.sources", str(corpus)]
    assert cli.main([*argv, "--model.patcher.name", "learned"]) == 0
    assert "trained 2 run(s)" in capsys.readouterr().out
    rows = {r["run_id"]: r for r in read_rows(tmp / "r.csv")}
    for run_id, target in (("l3", 3.0), ("l25", 2.5)):
        row, cfg = rows[run_id], json.loads(rows[run_id]["config"])
        bpp, D, flops = float(row["bpp"]), float(row["D"]), float(row["flops"])
        assert cfg["patcher"] == f"learned:{target:g}" and 0 < cfg["threshold"] < 1
        assert abs(cfg["calibrated_bytes_per_patch"] / target - 1) <= 0.02
        assert abs(bpp / target - 1) < 0.2, "the held-out rate at the calibrated θ"
        saved = load_config(tmp / "out" / run_id / "checkpoint").model
        assert saved.patcher.name == "learned" and saved.patcher.threshold == cfg["threshold"]
        assert flops == pytest.approx(flops_per_byte(saved, bpp, 32)["total"] * D)
        fixed = dataclasses.replace(saved, patcher=C.PatcherConfig("fixed", k=3))
        assert flops > flops_per_byte(fixed, bpp, 32)["total"] * D, "the router is counted"
        assert 0 < float(row["loss"]) < 9
