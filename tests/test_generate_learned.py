"""Sampled speculative decoding is lossless with learned patching.

With a learned router, the patch ends of the sampled bytes are decided by the model
itself, inside each decode call, and a rejected draft's boundaries must be rolled back
with it (the router is replayed from the cache ring). The test of `tests/test_generate.py`
is repeated with a learned ByteLM whose threshold sits where the router's decisions vary:
the exact distribution of the next 3 bytes (enumerated with full forward passes, which
route on their own) against plain and speculative sampling, by chi-square; a verifier
that resamples from p instead of the residual must fail it.
"""

import functools

import torch
from scipy.stats import chi2

import bytelm.kernels.verify as verify_mod
from bytelm.vocab import BOS
from tests.model.test_learned import _threshold_in_gap
from tests.test_generate import (
    exact_distribution,
    sampled_chi2,
    tiny_model,
    verify_resampling_from_p,
)


def learned_model():
    """A random tiny learned ByteLM (3 heads, sharp logits) with θ in a wide gap of p near
    its median over random bytes: boundaries vary, and none is a rounding error from θ."""
    model = tiny_model("learned", heads=3, sharpen=8.0, k=2, seed=2)
    sample = torch.randint(0, 256, (3, 80), generator=torch.Generator().manual_seed(0))
    sample[:, 0] = BOS
    with torch.no_grad():
        model.patcher.threshold = _threshold_in_gap(model.route(sample)[0])
    return model


def test_speculative_sampling_with_learned_patching_is_lossless(monkeypatch):
    """3 bytes, top-3 at temperature 1: 27 outcomes, N samples each run; the chi-square
    statistic must stay under its 0.999 quantile for plain and speculative sampling and
    exceed it for a verifier that resamples from p."""
    model = learned_model()
    prompt, n, N, T, K = b"ab cd", 3, 2000, 1.0, 3
    probs = exact_distribution(model, prompt, n, T, K)
    assert len(probs) == 27 and min(probs.values()) * N > 20, "every cell needs a real count"

    # the router's decisions over the sampled bytes differ between outcomes, and no p is
    # within rounding distance (~1e-7 between decode and forward) of θ
    seqs = torch.tensor([[BOS, *prompt, *k] for k in probs])
    with torch.no_grad():
        p, ends = model.route(seqs)
    theta = model.patcher.threshold
    assert (p[:, 1:] - theta).abs().min() > 1e-3
    gen_ends = ends[:, -n:]
    assert len({tuple(e.tolist()) for e in gen_ends}) >= 4, "boundaries must vary by outcome"
    assert 0.2 < gen_ends.float().mean() < 0.8

    threshold = chi2.ppf(0.999, len(probs) - 1)

    run = functools.partial(sampled_chi2, model, prompt, probs, N, n, T, K)

    plain, _ = run()
    spec, stats = run(speculative=True)
    assert plain < threshold, f"plain sampling: chi2 {plain:.1f} >= {threshold:.1f}"
    assert spec < threshold, f"speculative sampling: chi2 {spec:.1f} >= {threshold:.1f}"
    assert all(0.1 < a < 0.9 for a in stats.accept_rate), "drafts accepted and rejected"

    monkeypatch.setattr(verify_mod, "verify", verify_resampling_from_p)
    biased, _ = run(speculative=True)
    assert biased > threshold, f"a biased verifier went undetected (chi2 {biased:.1f})"
