"""The most important test in the project: no logit may see a future byte.

For every model, patcher and pooling, changing any byte after position t must
leave every logit of every head at positions <= t unchanged.
"""

import dataclasses

import pytest
import torch

from bytelm.checkpoint import build_patcher
from bytelm.config import PatcherConfig, TransformerConfig
from bytelm.model import ByteLM, ByteTransformer
from bytelm.patchers import FixedPatcher, SpacePatcher
from bytelm.vocab import BOS, EOS
from tests.conftest import tiny_bytelm_config


def packed_text(T: int = 48) -> torch.Tensor:
    """Two rows of packed documents with spaces, so space patches vary in length."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(97, 123, (2, T), generator=g)
    ids[:, ::5] = 32
    ids[:, 0] = BOS
    ids[0, 20], ids[0, 21] = EOS, BOS  # a document boundary inside row 0
    return ids


def assert_causal(model, ids: torch.Tensor, positions) -> None:
    model.eval()
    with torch.no_grad():
        base = model(ids)
        for t in positions:
            for trial in range(2):
                x = ids.clone()
                g = torch.Generator().manual_seed(100 * t + trial)
                x[:, t + 1 :] = torch.randint(0, 258, x[:, t + 1 :].shape, generator=g)
                out = model(x)
                diff = (out[:, : t + 1] - base[:, : t + 1]).abs().max().item()
                assert diff < 1e-5, (
                    f"logits at positions <= {t} changed by {diff} after perturbing bytes > {t}"
                )


def boundary_positions(patcher, ids):
    """Positions right at, before and after patch ends, plus a spread of others."""
    ends = patcher.ends(ids)[0].nonzero().flatten().tolist()
    pos = {0, 1, ids.shape[1] - 2}
    for e in ends[:6]:
        pos |= {max(e - 1, 0), e, min(e + 1, ids.shape[1] - 2)}
    return sorted(pos)


def test_byte_transformer_is_causal():
    model = ByteTransformer(TransformerConfig(dim=32, n_layers=2, attn_heads=2, window=8))
    ids = packed_text()
    assert_causal(model, ids, [0, 3, 17, 20, 21, 30, 46])


@pytest.fixture(scope="module")
def entropy_model(tmp_path_factory):
    from tests.patchers.tiny_entropy import save_tiny_entropy_model

    return save_tiny_entropy_model(tmp_path_factory.mktemp("entropy") / "ckpt", context=16)


@pytest.mark.parametrize("patcher", ["fixed", "space", "entropy"])
@pytest.mark.parametrize("pooling", ["mean", "max", "sum", "attn"])
def test_bytelm_is_causal(patcher, pooling, request):
    cfg = tiny_bytelm_config(patcher=patcher, pooling=pooling)
    if patcher == "entropy":  # a random sharp entropy model, context 16 so rows are chunked
        pc = PatcherConfig(
            "entropy", max_patch_len=6, threshold=1.5, target_bytes_per_patch=0,
            entropy_model=str(request.getfixturevalue("entropy_model")),
        )  # fmt: skip
        cfg = dataclasses.replace(cfg, patcher=pc)
    model = ByteLM(cfg, build_patcher(cfg.patcher))
    ids = packed_text()
    p = (
        FixedPatcher(cfg.patcher.k, cfg.patcher.max_patch_len)
        if patcher == "fixed"
        else SpacePatcher(6)
        if patcher == "space"
        else model.patcher
    )
    assert_causal(model, ids, boundary_positions(p, ids))


def test_causality_check_detects_a_leak():
    """The checker itself must be able to fail: a patching that peeks one byte ahead leaks."""

    class Leaky(ByteLM):
        def forward(self, ids, ends=None):
            # close a patch at t when the space rule fires at t + 1: depends on a future byte
            return super().forward(ids, ends=torch.roll(self.patcher.ends(ids), -1, dims=1))

    model = Leaky(tiny_bytelm_config(patcher="space"))
    with pytest.raises(AssertionError, match="changed"):
        assert_causal(model, packed_text(), [2, 5])


def test_documents_are_independent():
    """A document's logits do not depend on the documents packed before it."""
    model = ByteLM(tiny_bytelm_config(patcher="space")).eval()
    doc = [BOS, *b"the cat sat on the mat", EOS]
    a = torch.tensor([[BOS, *b"some other text here", EOS, *doc]])
    b = torch.tensor([[BOS, *b"xyz", EOS, *doc]])
    with torch.no_grad():
        la, lb = model(a)[:, -len(doc) :], model(b)[:, -len(doc) :]
    assert (la - lb).abs().max() < 1e-5
