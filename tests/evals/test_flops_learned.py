"""The learned router in the analytic FLOPs and parameter counts, against the built model."""

from dataclasses import replace

import pytest
import torch

from bytelm.config import PatcherConfig, RunConfig
from bytelm.evals.flops import flops_per_byte, param_counts, run_size
from bytelm.model import ByteLM
from bytelm.patchers import FixedPatcher
from tests.evals.test_flops import T, lm_cfg, measure


@pytest.mark.parametrize("k", [2, 4])
def test_learned_bytelm_flops_match_counter(k):
    """With the ends given (exactly T / k patches), every FLOP of the learned model is the
    fixed model's plus the router's: W_q, W_k and the smoothing matmul."""

    cfg = replace(lm_cfg(k), patcher=PatcherConfig("learned"))
    model = ByteLM(cfg)
    ends = FixedPatcher(k).ends
    ids = torch.randint(0, 256, (1, T))
    fwd, train = measure(lambda x: model(x, ends=ends(x)), ids)
    for training, got in ((False, fwd), (True, train)):
        want = flops_per_byte(cfg, k, T, training=training)
        assert want["total"] == pytest.approx(got["Global"], rel=1e-9), training
        fixed = flops_per_byte(lm_cfg(k), k, T, training=training)["total"]
        assert want["router"] == pytest.approx(got["Global"] - fixed, rel=1e-9), training
    P = T // k  # W_q h, W_k h per byte; one (P x P) . (P x D) smoothing matmul per window
    assert flops_per_byte(cfg, k, T, training=False)["router"] == 4 * 32 * 32 + 2 * P * P * 32 / T
    n_params = sum(p.numel() for p in model.parameters())
    assert param_counts(cfg)["total"] == n_params
    assert param_counts(cfg)["router"] == 2 * 32 * 32


def test_run_size_counts_a_learned_run_at_its_rate():
    cfg = RunConfig(model=replace(lm_cfg(4), patcher=PatcherConfig("learned")))
    assert run_size(cfg)["flops_per_byte"] == pytest.approx(
        flops_per_byte(cfg.model, 4.0, cfg.data.seq_len)["total"]
    )
