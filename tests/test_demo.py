"""The demo's pieces that are not training: the flat baseline's config and the one-byte-run
share that keeps speculative decoding's numbers honest."""

from bytelm import config as C
from bytelm.demo import FLAT, flat_config, run_share


def test_run_share_counts_only_long_runs_of_one_byte():
    assert run_share(b"") == 0.0
    assert run_share(b"abcabc") == 0.0
    assert run_share(b"x" + b" " * 8 + b"y") == 0.8  # 8 of 10 bytes are in the run of spaces
    assert run_share(b"aaab") == 0.0  # 3 < min_run
    assert run_share(b"aaaab", min_run=4) == 0.8


def test_flat_baseline_trains_on_the_demos_data_beside_its_run(tmp_path):
    cfg = C.override(C.load_preset("demo"), {"train.out_dir": str(tmp_path / "demo")})
    flat = flat_config(cfg, 123)
    assert flat.arch == "transformer"
    assert (flat.transformer.dim, flat.transformer.n_layers) == (FLAT["dim"], FLAT["n_layers"])
    # the honest baseline: windowed, with the hashed n-gram embeddings the ByteLM has too
    assert flat.transformer.window == 16
    assert flat.transformer.ngram_ns == cfg.model.ngram.ns == (3, 4, 5, 6, 7, 8)
    assert flat.data == cfg.data and flat.train.lr == cfg.train.lr
    assert flat.train.steps == 123 and flat.train.out_dir == str(tmp_path / "demo-flat")
