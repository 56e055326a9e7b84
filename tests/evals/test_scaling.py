"""Scaling-law fits, design conditioning, IsoFLOP, planning and resumable sweeps.

Synthetic runs are drawn from known laws with fixed seeds, so every number
checked here is deterministic.
"""

import csv
import math
import os
from dataclasses import replace

import numpy as np
import pytest

from bytelm.cli import sweep
from bytelm.evals import scaling as S

# L-BFGS-B makes many tiny LAPACK calls; a multi-threaded OpenBLAS makes them
# ~10x slower on a busy 2-core machine. scipy (and its OpenBLAS) is imported
# lazily by the fits below, so this takes effect unless an earlier test loaded it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
pytest.importorskip("scipy")

TRUE = S.LawParams(E=0.7, A=60.0, alpha=0.34, B=150.0, beta=0.28)
TRUE_C = replace(TRUE, C=3.0, gamma=1.0, delta=0.3)


def synth(N, D, r, law, noise=0.003, seed=0) -> S.Runs:
    N, D, r = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (N, D, r)))
    rng = np.random.default_rng(seed)
    loss = law.predict(N, D, r) * np.exp(rng.normal(0.0, noise, N.shape))
    return S.Runs.from_arrays(N, D, r, 6 * N * D / r, loss)


def spread_design(rates=(1.0,)):
    """Each size at 5, 20 and 80 patches per param, at each rate."""
    rows = [
        (n, p * r * n, r) for r in rates for n in np.geomspace(1e6, 1e9, 8) for p in (5, 20, 80)
    ]
    return tuple(np.array(c) for c in zip(*rows))


def truth_fit(law, rates=(1.0,)) -> S.ScalingFit:
    """A ScalingFit holding known parameters, to query the true optimum."""
    return S.ScalingFit(law, {}, np.empty((0, 8)), law.C > 0, 0, 0.0, tuple(rates))


# ---------------------------------------------------------------------- fit


def test_fit_recovers_chinchilla_parameters():
    N, D, r = spread_design()
    law = S.fit(synth(N, D, r, TRUE), n_boot=0)
    p = law.params
    assert not law.with_compression  # one rate: the compression term is off
    assert abs(p.E - TRUE.E) < 0.02
    assert abs(p.alpha - TRUE.alpha) < 0.03
    assert abs(p.beta - TRUE.beta) < 0.02
    assert abs(math.log(p.A / TRUE.A)) < 0.3
    assert abs(math.log(p.B / TRUE.B)) < 0.2
    # and it extrapolates: 10x past the largest run in N and D
    far = law.predict(1e10, 1e12), TRUE.predict(1e10, 1e12)
    assert abs(far[0] / far[1] - 1) < 0.01
    assert law.rmse_log < 0.005


def test_fit_recovers_compression_term():
    N, D, r = spread_design(rates=(1.0, 2.0, 4.0, 8.0))
    law = S.fit(synth(N, D, r, TRUE_C), n_boot=0)
    p = law.params
    assert law.with_compression  # auto-on with 2+ rates
    assert abs(p.gamma - TRUE_C.gamma) < 0.15
    assert abs(p.delta - TRUE_C.delta) < 0.05
    assert abs(math.log(p.C / TRUE_C.C)) < 0.4
    assert abs(p.E - TRUE_C.E) < 0.02
    assert abs(p.alpha - TRUE_C.alpha) < 0.03
    assert abs(p.beta - TRUE_C.beta) < 0.02
    # the Chinchilla law alone cannot explain the rate effect
    plain = S.fit(synth(N, D, r, TRUE_C), with_compression=False, n_boot=0)
    assert plain.rmse_log > 5 * law.rmse_log


def test_compression_term_needs_two_rates():
    N, D, r = spread_design()
    with pytest.raises(S.ScalingError, match="two or more"):
        S.fit(synth(N, D, r, TRUE), with_compression=True, n_boot=0)


def test_optimal_matches_closed_form():
    # with C = 6 N D: N* = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))
    p = TRUE
    G = (p.alpha * p.A / (p.beta * p.B)) ** (1 / (p.alpha + p.beta))
    for C in (1e18, 1e22):
        N, D, r = truth_fit(p).optimal(C)
        assert r == 1.0
        assert N == pytest.approx(G * (C / 6) ** (p.beta / (p.alpha + p.beta)), rel=1e-3)
        assert 6 * N * D == pytest.approx(C, rel=1e-9)


def test_optimal_rate_falls_with_compute():
    # for TRUE_C, cheaper latent steps (bigger r) pay off less as compute grows
    law = truth_fit(TRUE_C, rates=(1.0, 8.0))
    r_star = [law.optimal(C)[2] for C in (1e17, 1e20, 1e23)]
    assert r_star[0] > r_star[1] > r_star[2] > 1.0


# ---------------------------------------------------------- conditioning


def test_fixed_ratio_design_is_worse_than_spread():
    budgets = np.geomspace(1e15, 1e18, 7)
    grid = S.plan(budgets, np.geomspace(1e6, 1e9, 10))
    assert grid.condition.full * 100 < grid.fixed_condition.full
    assert grid.condition.ab < grid.fixed_condition.ab

    def ci_widths(rows):
        N, D = (np.array([getattr(x, c) for x in rows]) for c in ("N", "D"))
        law = S.fit(synth(N, D, 1.0, TRUE, seed=1), n_boot=30, seed=0)
        return np.array([law.ci[k][1] - law.ci[k][0] for k in ("alpha", "beta")])

    spread, fixed = ci_widths(grid.rows), ci_widths(grid.fixed_rows)
    assert np.all(fixed > spread) and np.max(fixed / spread) > 3, (fixed, spread)


def test_ab_condition_grows_like_inverse_square_gap():
    N = np.geomspace(1e6, 1e9, 12)
    gaps = np.geomspace(0.005, 0.08, 6)
    conds = [S.design_condition(N, 20 * N, replace(TRUE, beta=TRUE.alpha - g)).ab for g in gaps]
    slope = np.polyfit(np.log(gaps), np.log(conds), 1)[0]
    assert -2.3 <= slope <= -1.7, slope
    # spreading D/N at the same sizes removes the blow-up
    D_spread = N * np.tile([5.0, 20.0, 80.0], 4)
    worst = replace(TRUE, beta=TRUE.alpha - gaps[0])
    assert S.design_condition(N, D_spread, worst).ab * 100 < conds[0]


def test_diagnose_flags_fixed_ratio_and_names_needed_spread():
    N = np.geomspace(1e6, 1e9, 12)
    fixed = S.diagnose(synth(N, 20 * N, 1.0, TRUE))
    assert fixed.condition.full > 1e4
    assert any("collinear" in w for w in fixed.warnings)
    assert any("log(D/N) spans only" in w for w in fixed.warnings)
    assert math.log(4) <= fixed.needed_log_spread < math.inf
    assert "spread >=" in str(fixed)
    ok = S.diagnose(synth(*spread_design(), TRUE))
    assert ok.warnings == []
    assert ok.log_ratio_spread == pytest.approx(math.log(16))


# ---------------------------------------------------------------- IsoFLOP


def isoflop_runs(law, rates, budgets, seed=0):
    """At each budget and rate, 7 sizes spaced 2x around the true optimum."""
    truth = truth_fit(law, rates)
    rows = []
    for C in budgets:
        for r in rates:
            n_opt, _, _ = truth.optimal(C, r_grid=[r])
            for n in n_opt * 2.0 ** np.arange(-3, 4):
                rows.append((n, float(S.bytes_for_budget(C, n, r)), r))
    N, D, r = (np.array(c) for c in zip(*rows))
    return synth(N, D, r, law, noise=0.001, seed=seed)


def test_isoflop_recovers_optimal_size_exponent():
    runs = isoflop_runs(TRUE, [1.0], np.geomspace(1e16, 1e20, 5))
    iso = S.isoflop(runs)
    a_true = TRUE.beta / (TRUE.alpha + TRUE.beta)
    assert len(iso.groups) == 5 and all(g.bracketed for g in iso.groups)
    assert iso.n_opt[1.0].exponent == pytest.approx(a_true, abs=0.02)
    assert iso.d_opt[1.0].exponent == pytest.approx(1 - a_true, abs=0.02)
    assert iso.r_law is None  # one rate


def test_isoflop_finds_optimal_rate_and_skips_thin_groups():
    rates = (1.0, 2.0, 4.0, 8.0)
    budgets = np.geomspace(1e16, 1e22, 4)
    runs = isoflop_runs(TRUE_C, rates, budgets)
    thin = S.Runs.from_arrays([1e7, 2e7], [1e9, 5e8], 1.0, [6e16 / 1.0] * 2, [1.0, 1.0])
    both = S.Runs.from_arrays(
        *(np.concatenate([getattr(runs, c), getattr(thin, c)]) for c in S.COLUMNS)
    )
    with pytest.warns(UserWarning, match="1 size|2 size"):
        iso = S.isoflop(both)
    assert len(iso.skipped) == 1
    true_r = [truth_fit(TRUE_C, rates).optimal(C)[2] for C in iso.budgets]
    assert np.all(np.abs(np.log(iso.r_opt / true_r)) < math.log(1.5)), (iso.r_opt, true_r)
    assert iso.r_law is not None and iso.r_law.exponent < 0


# -------------------------------------------------------------------- plan


def test_plan_meets_its_constraints():
    budgets = np.geomspace(1e15, 1e18, 7)
    sizes = np.geomspace(1e6, 1e9, 10)
    rates = (1.0, 2.0, 4.0, 8.0)
    grid = S.plan(budgets, sizes, compression_rates=rates)
    # the prior's compression term counts: 20 patches per param at each rate is
    # not a spread of D/N, because the rate itself moves the loss
    assert grid.condition.full * 10 < grid.fixed_condition.full
    assert grid.condition.ab * 2 < grid.fixed_condition.ab
    keys = {(row.N, row.bpp) for row in grid.rows}
    assert {r for _, r in keys} == set(rates)
    for n, r in keys:
        ratios = [x.bytes_per_param for x in grid.rows if (x.N, x.bpp) == (n, r)]
        assert len(ratios) >= 3 and max(ratios) / min(ratios) >= 4.0
    for row in grid.rows:
        assert row.budget in budgets
        assert 6 * row.N * row.D / row.bpp == pytest.approx(row.budget, rel=1e-9)
        assert 2 * row.bpp <= row.bytes_per_param <= 500 * row.bpp
    assert len(grid.fixed_rows) == len(grid.rows)
    assert np.allclose([x.bytes_per_param / x.bpp for x in grid.fixed_rows], 20.0)


def test_plan_respects_a_custom_flops_model():
    # local models add 2e3 FLOPs per byte on top of the latent 6 N D / r
    flops = lambda N, D, r: 6 * N * D / r + 2e3 * D
    grid = S.plan(np.geomspace(1e15, 1e18, 7), np.geomspace(1e6, 1e9, 10), flops=flops)
    for row in grid.rows:
        assert flops(row.N, row.D, row.bpp) == pytest.approx(row.budget, rel=1e-9)
    for row in grid.fixed_rows:
        assert flops(row.N, row.D, row.bpp) == pytest.approx(row.budget, rel=1e-9)


def test_plan_refuses_budgets_too_close_to_spread_ratios():
    with pytest.raises(S.ScalingError, match="add budgets"):
        S.plan([1e17, 1.5e17, 2e17], np.geomspace(1e6, 1e9, 10))


# ------------------------------------------------------------------- sweep


def test_run_main_resumes_without_retraining(tmp_path, capsys):
    grid_csv, runs_csv = tmp_path / "grid.csv", tmp_path / "runs.csv"
    argv = "--budgets 1e14 3e14 1e15 3e15 1e16 --sizes 1e6 2e6 4e6 --out".split()
    assert sweep.plan_main([*argv, str(grid_csv)]) == 0
    assert "| budget | N |" in capsys.readouterr().out
    grid = sweep.read_grid(grid_csv)
    assert len(grid) >= 5
    calls = []

    def train(row, fail_after=None):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("node lost")
        calls.append(row["run_id"])
        return {"loss": float(TRUE.predict(row["N"], row["D"])), "steps": 10}

    assert sweep.run_main([str(grid_csv), "--runs", str(runs_csv)], lambda r: train(r, 2)) == 1
    assert "node lost" in capsys.readouterr().err
    first = list(calls)
    assert len(first) == 2
    # a kill in the middle of a write leaves a torn last line: it is dropped and retrained
    with runs_csv.open("a") as f:
        f.write(grid[2]["run_id"] + ",1e6,")
    calls.clear()
    assert sweep.run_main([str(grid_csv), "--runs", str(runs_csv)], train) == 0
    assert not set(calls) & set(first)
    assert sorted(first + calls) == sorted(r["run_id"] for r in grid)
    with runs_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in grid)
    assert all('"steps": 10' in r["config"] for r in rows)
    runs = S.load_runs(runs_csv)
    assert np.allclose(runs.flops, 6 * runs.N * runs.D / runs.bpp)
    calls.clear()  # a finished sweep trains nothing
    assert sweep.run_main([str(grid_csv), "--runs", str(runs_csv)], train) == 0
    assert calls == []


def test_fit_main_prints_law_and_writes_plots(tmp_path, capsys):
    runs = isoflop_runs(TRUE_C, (1.0, 4.0), np.geomspace(1e16, 1e20, 3))
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(S.COLUMNS)
        w.writerows(zip(*(getattr(runs, c) for c in S.COLUMNS)))
    assert sweep.fit_main([str(path), "--n-boot", "4", "--plots", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "C*r^gamma/N^delta" in out and "| gamma |" in out
    assert "bytes/param" in out and "r* ~ C^" in out
    for name in ("isoflop.png", "frontier.png", "compression.png"):
        assert (tmp_path / "p" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- bad CSVs


GOOD = ["N,D,bpp,flops,loss"] + [
    f"{n},{20 * n},1,{120 * n * n},1.{i}" for i, n in enumerate([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7])
]


@pytest.mark.parametrize(
    "lines, match",
    [
        (None, "no runs file"),
        (["N,D,bpp,flops"] + [r.rsplit(",", 1)[0] for r in GOOD[1:]], "lacks column.*loss"),
        (GOOD[:3] + [GOOD[3].replace(",1.2", ",-1.2")] + GOOD[4:], "line 4.*'loss'"),
        (GOOD[:2] + [GOOD[2].replace("2000000.0,", "zero,", 1)] + GOOD[3:], "line 3.*'N'"),
        (GOOD[:2] + [GOOD[2].replace(",1,", ",0.5,")] + GOOD[3:], "'bpp'.*>= 1"),
        (GOOD[:4], "3 run.*at least 6"),
    ],
)
def test_bad_csv_gives_one_line_error(tmp_path, capsys, lines, match):
    path = tmp_path / "runs.csv"
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(S.ScalingError, match=match) as e:
        S.load_runs(path)
    msg = str(e.value)
    assert msg.startswith("bytelm: ") and "\n" not in msg
    assert sweep.fit_main([str(path)]) == 2  # a user error, as `bytelm` exits on every one
    err = capsys.readouterr().err.strip()
    assert err == msg


def test_too_few_runs_for_the_compression_law():
    N, D, r = spread_design(rates=(1.0, 2.0))
    runs = synth(N, D, r, TRUE_C).take(np.arange(0, 48, 6))  # 8 runs, 8 parameters
    with pytest.raises(S.ScalingError, match="too few to fit 8"):
        S.fit(runs, n_boot=0)


def test_isoflop_shares_one_budget_across_rates():
    # measured FLOPs differ a little between rates at one planned budget (the
    # measured bytes per patch is not exactly k); r* must still compare them
    runs = isoflop_runs(TRUE_C, (1.0, 4.0), [1e18, 1e20])
    flops = runs.flops * np.where(runs.bpp == 4.0, 1.003, 1.0)
    iso = S.isoflop(S.Runs.from_arrays(runs.N, runs.D, runs.bpp, flops, runs.loss))
    assert len(iso.budgets) == 2
    assert len({g.C for g in iso.groups}) == 2


def test_fit_flags_exponents_on_their_bounds():
    # loss that rises with N (undertrained large models) pins alpha at 0
    N, D, r = spread_design()
    rising = S.Runs.from_arrays(N, D, r, 6 * N * D, TRUE.predict(1e6, D) * (N / 1e6) ** 0.01)
    law = S.fit(rising, n_boot=0)
    assert law.at_bounds() == ["alpha"]
    assert "alpha = 0 sits on its bound" in law.summary()
    assert truth_fit(replace(TRUE_C, gamma=4.0)).at_bounds() == ["gamma"]
