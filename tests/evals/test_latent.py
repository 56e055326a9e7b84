"""Latent ablations: each replaces exactly the latent output, and nothing stays hooked."""

import copy

import pytest
import torch

from bytelm import config as C
from bytelm.data import DataConfig, load_corpus
from bytelm.evals.bpb import evaluate_bpb
from bytelm.evals.latent import ABLATIONS, ablated_latent, latent_ablation
from bytelm.model import ByteLM, ByteTransformer
from bytelm.vocab import BOS
from tests.conftest import tiny_bytelm_config

SEQ_LEN = 32


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    for i in range(4):
        (d / f"d{i}.txt").write_text(f"doc {i}: " + "the cat sat on the mat; a dog ran. " * 12)
    cfg = DataConfig(sources=(str(d),), split="tail", heldout_fraction=0.5,
                     cache_dir=str(tmp_path_factory.mktemp("cache")))  # fmt: skip
    return load_corpus(cfg, progress=False)["heldout"]


def model_with_a_loud_latent() -> ByteLM:
    """A random tiny ByteLM whose latent output is large enough to move every logit."""
    model = ByteLM(tiny_bytelm_config(heads=1)).eval()
    with torch.no_grad():
        model.from_latent.weight.mul_(50)
    return model


def rows(*texts: bytes) -> torch.Tensor:
    return torch.tensor([[BOS, *t] for t in texts])


def test_zeroed_is_a_model_without_latent_output_and_the_hook_goes(heldout):
    model = model_with_a_loud_latent()
    ids = rows(b"the cat sat on the mat", b"a dog ran by a red car")
    before = model(ids)
    r = latent_ablation(model, heldout, SEQ_LEN, batch_size=4)
    assert set(r) == {"bpb", *ABLATIONS}
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)  # no hook left behind

    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.from_latent.weight.zero_()
    assert r["zeroed"] == evaluate_bpb(silent, heldout, SEQ_LEN, 4)["bpb"]
    assert r["bpb"] != r["zeroed"]  # the loud latent matters
    assert r["bpb"] != r["mean"] and r["bpb"] != r["shuffled"]


def test_shuffled_swaps_latents_between_windows():
    model = model_with_a_loud_latent()
    a, b = b"the cat sat on the mat", b"a dog ran by a red car"
    with torch.no_grad(), ablated_latent(model, "shuffled"):
        same = model(rows(a, a))  # identical windows: the swap changes nothing
        mixed = model(rows(a, b))
    torch.testing.assert_close(same, model(rows(a, a)))
    plain = model(rows(a, b))
    k = model.cfg.patcher.k  # the first patch ends at byte k; from there row 0 reads b's latent
    torch.testing.assert_close(mixed[0, : k - 1], plain[0, : k - 1])
    assert not torch.allclose(mixed[0, k:], plain[0, k:])


def test_mean_is_one_vector_for_every_patch():
    model = model_with_a_loud_latent()
    seen = []
    with torch.no_grad(), ablated_latent(model, "mean"):
        # registered after the ablation's hook, so it sees the replaced output
        hook = model.from_latent.register_forward_hook(lambda m, i, out: seen.append(out))
        model(rows(b"the cat sat on the mat", b"a dog ran by a red car"))
        hook.remove()
    z = seen[0].flatten(0, 1)  # (B * P, D)
    torch.testing.assert_close(z, z[:1].expand_as(z), rtol=0, atol=0)
    assert z.abs().max() > 0


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda m, s: latent_ablation(m, s, SEQ_LEN, batch_size=1), "at least 2"),
        (lambda m, s: ablated_latent(m, "reversed").__enter__(), "unknown latent ablation"),
        (
            lambda m, s: latent_ablation(
                ByteTransformer(C.TransformerConfig(dim=32, n_layers=1, attn_heads=2)), s, SEQ_LEN
            ),  # fmt: skip
            "needs a ByteLM",
        ),
    ],
)
def test_bad_requests_are_one_line(heldout, call, fragment):
    with pytest.raises(ValueError, match=fragment) as e:
        call(model_with_a_loud_latent(), heldout)
    assert str(e.value).startswith("bytelm: ") and "\n" not in str(e.value)
