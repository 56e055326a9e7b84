"""Generation: cached decoding equals full recomputation, speculative decoding is lossless.

- plain cached decoding gives exactly the bytes of re-running the full model;
- greedy speculative output is byte-identical to plain greedy output for every
  number of draft heads, while drafts are both accepted and rejected;
- sampled speculative output has the distribution of plain sampling (a
  chi-square test against the exact distribution, which a subtly wrong
  verifier fails);
- streaming, stop strings, EOS, batches, bad input, and the CLI.
"""

import dataclasses
import functools
import io
import sys

import pytest
import torch
from scipy.stats import chi2

import bytelm
import bytelm.kernels.verify as verify_mod
from bytelm.checkpoint import build_patcher, save_checkpoint
from bytelm.cli import main
from bytelm.config import PatcherConfig, RunConfig, TransformerConfig
from bytelm.generate import filter_logits, generate, generate_naive
from bytelm.kernels.verify.reference import sample_inverse_cdf
from bytelm.model import ByteLM, ByteTransformer
from bytelm.vocab import BOS, EOS, PAD
from tests.conftest import tiny_bytelm_config

PATCHERS = ["fixed", "space", "entropy", "learned"]
PROMPTS = [b"the cat ", b"", b"hello world, ", b"abcdefgh "]


def tiny_model(
    patcher="space", heads=4, sharpen=3.0, k=3, seed=0, entropy_ckpt=None, kind=None
) -> ByteLM:
    """A random tiny ByteLM with sharpened logits: its greedy text varies, and its heads
    agree often enough that drafts are sometimes accepted and sometimes not."""
    torch.manual_seed(seed)
    cfg = tiny_bytelm_config(patcher=patcher, heads=heads, k=k)
    if kind is not None:
        cfg = dataclasses.replace(cfg, out_heads=dataclasses.replace(cfg.out_heads, kind=kind))
    if patcher == "entropy":  # a sharp random entropy model with context 16
        pc = PatcherConfig(
            "entropy", max_patch_len=6, threshold=1.5, target_bytes_per_patch=0,
            entropy_model=str(entropy_ckpt),
        )  # fmt: skip
        cfg = dataclasses.replace(cfg, patcher=pc)
    model = ByteLM(cfg, build_patcher(cfg.patcher)).eval()
    with torch.no_grad():
        model.unembed.weight.mul_(sharpen)
    return model


@pytest.mark.parametrize("patcher", PATCHERS)
def test_cached_decoding_equals_full_recomputation(patcher, request):
    ent = request.getfixturevalue("entropy_model") if patcher == "entropy" else None
    model = tiny_model(patcher, entropy_ckpt=ent)
    n = 40 if patcher == "entropy" else 60  # the entropy patcher's step is slow on CPU
    for prompt, temperature in [(b"the cat sat. ", 0.0), (b"ab cd", 1.0)]:
        ref = generate_naive(model, prompt, n, temperature, seed=5, max_context=10_000)
        got = generate(model, prompt, n, temperature, seed=5)
        assert got.bytes == ref, (prompt, temperature)
        assert len(got.bytes) == n and got.finish == ["length"]
    spec = generate(model, [b"the cat sat. ", b"x"], n, 0.0, speculative=True, draft_heads=2)
    assert spec.bytes == generate(model, [b"the cat sat. ", b"x"], n, 0.0).bytes


@pytest.mark.parametrize("cross", [False, True])
def test_speculative_greedy_is_identical_to_plain_greedy(cross):
    model = tiny_model("space", heads=4)
    plain = generate(model, PROMPTS, 210, temperature=0.0)
    assert plain.stats.bytes_per_forward == 1.0
    assert plain.stats.forward_passes == 210
    for d in (1, 2, 3):
        spec = generate(
            model, PROMPTS, 210, temperature=0.0, speculative=True, draft_heads=d,
            cross_patches=cross,
        )  # fmt: skip
        assert spec.bytes == plain.bytes, f"{d} draft heads changed the greedy output"
        rates = spec.stats.accept_rate
        assert len(rates) == d and 0.05 < rates[0] < 0.95, "drafts must be accepted and rejected"
        assert spec.stats.bytes_per_forward > 1.2
        assert spec.stats.forward_passes < plain.stats.forward_passes


def test_blocks_that_stop_at_patch_ends_draft_at_most_a_patch():
    """fixed:3: a block holds one patch, so at most 2 drafts; crossing blocks take all 3."""
    model = tiny_model("fixed", heads=4, k=3)
    plain = generate(model, PROMPTS[:2], 30, temperature=0.0)
    for cross, D in ((False, 2), (True, 3)):
        r = generate(model, PROMPTS[:2], 30, 0.0, speculative=True, cross_patches=cross)
        assert r.stats.draft_heads == D and r.bytes == plain.bytes


def test_batches_of_different_lengths_equal_single_rows():
    model = tiny_model("fixed")
    batch = generate(model, PROMPTS[:4], 40, temperature=0.0, speculative=True)
    for prompt, got in zip(PROMPTS[:4], batch.bytes):
        assert got == generate(model, prompt, 40, temperature=0.0).bytes


# -------------------------------------------------------- sampling distribution


def exact_distribution(model, prompt: bytes, n: int, temperature: float, top_k: int) -> dict:
    """P(first n new bytes) under plain sampling, by enumeration with full forward passes.
    A sequence that reaches EOS ends there (its key ends with EOS)."""
    probs = {}

    def walk(prefix: list[int], pr: float):
        if len(prefix) == n or (prefix and prefix[-1] == EOS):
            probs[tuple(prefix)] = pr
            return
        ids = torch.tensor([[BOS, *prompt, *prefix]])
        p = torch.softmax(filter_logits(model(ids)[0, -1, 0], temperature, top_k) / temperature, -1)
        for b in (p > 0).nonzero().flatten().tolist():
            walk(prefix + [b], pr * float(p[b]))

    with torch.no_grad():
        walk([], 1.0)
    return probs


def chi_square(samples: list[bytes], probs: dict, n: int) -> float:
    counts = dict.fromkeys(probs, 0)
    for s in samples:
        key = tuple(s) if len(s) == n else (*s, EOS)
        if key not in counts:
            return float("inf")  # an outcome plain sampling can never produce
        counts[key] += 1
    N = len(samples)
    return sum((counts[k] - N * p) ** 2 / (N * p) for k, p in probs.items())


def verify_resampling_from_p(drafts, q, logits, temperature, u_accept, u_sample, backend="auto"):
    """A classic bug: accept with min(1, p/q) but, on rejection, sample from p instead of
    the residual max(0, p - q). Its output is biased toward the drafts."""
    B, K = drafts.shape
    p = torch.softmax(logits.float() / temperature, dim=-1)
    p_d = p[:, :K].gather(-1, drafts[..., None])[..., 0]
    q_d = q.float().gather(-1, drafts[..., None])[..., 0]
    accepted = (u_accept < (p_d / q_d).clamp(max=1.0)).long().cumprod(-1).sum(-1)
    return accepted, sample_inverse_cdf(p[torch.arange(B), accepted], u_sample)


def sampled_chi2(model, prompt, probs, N, n, T, K, **kw):
    """N rows of n bytes sampled from `prompt` (temperature T, top-k K) -> (the chi-square
    statistic against the exact distribution `probs`, the generation stats)."""
    r = generate(model, [prompt] * N, n, T, top_k=K, seed=1, max_step=8, **kw)
    return chi_square(r.bytes, probs, n), r.stats


def test_speculative_sampling_has_the_distribution_of_plain_sampling(monkeypatch):
    """3 bytes, top-3 at temperature 1: 27 outcomes. N samples in one batch; the
    chi-square statistic against the exact distribution must stay under its
    0.999 quantile (26 degrees of freedom), for plain and speculative sampling,
    and exceed it for a verifier that resamples from p."""
    model = tiny_model("fixed", heads=3, sharpen=8.0, k=2)
    prompt, n, N, T, K = b"ab cd", 3, 2000, 1.0, 3
    probs = exact_distribution(model, prompt, n, T, K)
    assert len(probs) == 27 and min(probs.values()) * N > 20, "every cell needs a real count"
    threshold = chi2.ppf(0.999, len(probs) - 1)

    run = functools.partial(sampled_chi2, model, prompt, probs, N, n, T, K)

    plain, _ = run()
    assert plain < threshold, f"plain sampling: chi2 {plain:.1f} >= {threshold:.1f}"
    for cross in (False, True):  # verify blocks that stop at patch ends, and that cross them
        spec, stats = run(speculative=True, cross_patches=cross)
        assert spec < threshold, f"speculative ({cross=}): chi2 {spec:.1f} >= {threshold:.1f}"
        assert 0.1 < stats.accept_rate[0] < 0.9, "the test needs acceptances and rejections"

    monkeypatch.setattr(verify_mod, "verify", verify_resampling_from_p)
    biased, _ = run(speculative=True)
    assert biased > threshold, f"a biased verifier went undetected (chi2 {biased:.1f})"


def test_chain_drafts_sample_losslessly():
    """Chain heads draw each draft after the ones before it: sampled speculative output
    still has the exact distribution (the chi-square test above), with drafts both accepted
    and rejected, and greedy speculative output is plain greedy output."""
    model = tiny_model("fixed", heads=3, sharpen=8.0, k=2, kind="chain")
    prompt, n, N, T, K = b"ab cd", 3, 2000, 1.0, 3
    probs = exact_distribution(model, prompt, n, T, K)
    threshold = chi2.ppf(0.999, len(probs) - 1)
    spec, stats = sampled_chi2(model, prompt, probs, N, n, T, K, speculative=True)
    assert spec < threshold, f"chain speculative: chi2 {spec:.1f} >= {threshold:.1f}"
    assert 0.1 < stats.accept_rate[0] < 0.9, "the test needs acceptances and rejections"
    plain = generate(model, PROMPTS, 80, temperature=0.0)
    for cross in (False, True):
        r = generate(model, PROMPTS, 80, 0.0, speculative=True, cross_patches=cross)
        assert r.bytes == plain.bytes


# ------------------------------------------------- streaming, stops, specials


def test_stream_yields_the_bytes_as_they_are_accepted():
    model = tiny_model()
    s = generate(model, b"the ", 60, temperature=0.0, speculative=True, stream=True)
    chunks = list(s)
    assert len(chunks) > 5 and all(isinstance(c, bytes) for c in chunks)
    assert b"".join(chunks) == s.result.bytes == generate(model, b"the ", 60, 0.0).bytes
    assert len(chunks) == s.result.stats.forward_passes


def test_stop_strings_and_eos():
    model = tiny_model()
    full = generate(model, b"xyz qq", 80, temperature=0.0).bytes
    stop = full[30:33]
    cut = full.index(stop) + len(stop)
    for spec in (False, True):
        r = generate(model, b"xyz qq", 80, 0.0, speculative=spec, stop=[b"\x00\x01", stop])
        assert r.bytes == full[:cut] and r.finish == ["stop"]


class EndsAt(ByteLM):
    """Head 1 predicts EOS from position `end_at[row]` on; nothing else changes."""

    end_at: torch.Tensor

    def decode(self, ids, cache, n_valid=None, until_close=False):
        pos = cache.length[:, None] + torch.arange(ids.shape[1])
        out = super().decode(ids, cache, n_valid, until_close)
        logits = out[0] if until_close else out
        logits[..., 0, EOS] += 1e4 * (pos >= self.end_at[:, None])
        return out


def test_eos_ends_a_row():
    model = tiny_model()
    prompts, m = [b"ab", b"cd", b"efg"], [0, 7, 19]  # bytes before EOS, per row
    plain = generate(model, prompts, 40, temperature=0.0).bytes
    eos = EndsAt(model.cfg).eval()
    eos.load_state_dict(model.state_dict())
    eos.end_at = torch.tensor([len(p) + k for p, k in zip(prompts, m)])  # BOS is at 0
    for spec in (False, True):
        r = generate(eos, prompts, 40, temperature=0.0, speculative=spec)
        assert r.bytes == [b[:k] for b, k in zip(plain, m)] and r.finish == ["eos"] * 3


def test_specials_are_never_generated():
    model = tiny_model()
    with torch.no_grad():  # BOS and PAD would win every argmax
        model.unembed.weight[BOS] += 10
        model.unembed.weight[PAD] += 10
    for spec in (False, True):
        r = generate(model, b"ab", 50, temperature=1.0, speculative=spec, seed=2)
        assert len(r.bytes) == 50  # specials never sampled, and bytes are < 256 by type


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * 255]))
    keep = lambda x: (x > float("-inf")).nonzero()[:, 1].tolist()  # noqa: E731
    assert keep(filter_logits(logits, 1.0, top_k=2)) == [0, 1]
    assert keep(filter_logits(logits, 1.0, top_p=0.7)) == [0, 1]
    assert keep(filter_logits(logits, 1.0, top_p=0.81)) == [0, 1, 2]
    assert BOS not in keep(filter_logits(logits, 0.0)) and PAD not in keep(
        filter_logits(logits, 0.0)
    )


# ----------------------------------------------------------------- bad input


def test_bad_input():
    model = tiny_model()
    r = generate(model, b"", 30, temperature=0.0)  # empty prompt: generate from BOS
    assert r.bytes == generate_naive(model, b"", 30, 0.0)
    r = generate(model, b"abc", 0, speculative=True)
    assert r.bytes == b"" and r.stats.new_bytes == 0 and r.stats.forward_passes == 0
    with pytest.raises(ValueError, match="bytelm: the prompt is 40 bytes"):
        generate(model, b"a" * 40, 10, max_len=32)
    with pytest.raises(ValueError, match="bytelm: draft_heads must lie in 1..3"):
        generate(model, b"a", 10, speculative=True, draft_heads=4)
    with pytest.raises(ValueError, match="bytelm: temperature"):
        generate(model, b"a", 10, temperature=-1)
    with pytest.raises(ValueError, match="bytelm: top_p"):
        generate(model, b"a", 10, top_p=0)
    with pytest.raises(ValueError, match="bytelm: max_new_bytes"):
        generate(model, b"a", -1)
    baseline = ByteTransformer(TransformerConfig(dim=32, n_layers=1, attn_heads=2)).eval()
    assert len(generate(baseline, b"a", 10).bytes) == 10  # plain decoding works on the baseline
    with pytest.raises(ValueError, match="bytelm: speculative decoding needs extra output heads"):
        generate(baseline, b"a", 10, speculative=True)


def test_public_api():
    assert bytelm.generate is generate


# ----------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_model("fixed")
    cfg = RunConfig(model=model.cfg)
    return str(save_checkpoint(tmp_path_factory.mktemp("gen") / "ck", model, cfg))


def test_cli_generate_streams_raw_bytes(checkpoint, capsysbinary):
    args = ["generate", checkpoint, "--prompt", "ab", "--max-bytes", "40", "--temperature", "0"]
    model, _ = bytelm.load_model(checkpoint)
    for extra in ([], ["--cross-patches"]):
        assert main(args + ["--speculative", "--draft-heads", "2", *extra]) == 0
        out, err = capsysbinary.readouterr()
        assert out == generate(model, b"ab", 40, 0.0).bytes  # raw bytes, invalid UTF-8 too
        assert b"bytes per forward pass" in err and b"acceptance per draft head" in err


def test_cli_prompt_from_stdin(checkpoint, capsysbinary, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xffab")))
    assert main(["generate", checkpoint, "--prompt", "-", "--max-bytes", "9", "--seed", "3"]) == 0
    out, _ = capsysbinary.readouterr()
    model, _ = bytelm.load_model(checkpoint)
    assert out == generate(model, b"\xffab", 9, seed=3).bytes


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--draft-heads", "7", "--speculative"], "draft_heads must lie in"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--max-bytes", "-2"], "max_new_bytes must be >= 0"),
        (["--stop", ""], "stop strings must not be empty"),
    ],
)
def test_cli_bad_input_is_one_line(checkpoint, capsys, extra, fragment):
    code = main(["generate", checkpoint, "--prompt", "a", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("bytelm: ") and fragment in err and len(err.splitlines()) == 1


def test_cli_missing_checkpoint(capsys):
    assert main(["generate", "/no/such/ckpt", "--prompt", "a"]) == 2
    assert capsys.readouterr().err.startswith("bytelm: checkpoint '/no/such/ckpt' does not exist")
