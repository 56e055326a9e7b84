"""Padding the patch axis (`n_patches`, the Trainer's `model.patch_bucket`) changes nothing.

A compiled training step rounds the patch count up to a bucket so that shapes repeat. The
padded slots are empty patches: every logit and every gradient must equal the exact-P forward's.
"""

import pytest
import torch

from bytelm.config import ByteLMConfig, ConfigError
from bytelm.model import ByteLM
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers import ends_to_lengths
from bytelm.vocab import BOS, EOS, PAD
from tests.conftest import tiny_bytelm_config

T = 48


def batch() -> torch.Tensor:
    """Three rows: two documents in one, a PAD tail in another, so rows differ in patch count."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(97, 123, (3, T), generator=g)
    ids[:, ::6] = 32
    ids[:, 0] = BOS
    ids[0, 17], ids[0, 18] = EOS, BOS
    ids[2, 35:] = PAD
    return ids


def bucketed(count: int, bucket: int) -> int:
    """The Trainer's rule: round up to a multiple of the bucket, capped at T."""
    return min(-(-count // bucket) * bucket, T)


@pytest.mark.parametrize("pooling", ["mean", "attn"])
@pytest.mark.parametrize("patcher", ["fixed", "space"])
def test_bucketed_forward_equals_exact(patcher, pooling):
    model = ByteLM(tiny_bytelm_config(patcher=patcher, pooling=pooling))
    ids = batch()
    ends = model.patcher.ends(ids)
    count = ends_to_lengths(ends, (ids != PAD).sum(-1)).shape[1]

    def run(n_patches):
        model.zero_grad()
        logits = model(ids, ends, n_patches=n_patches)
        multi_head_loss(logits, ids, doc_ids(ids)).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    exact, g_exact = run(None)
    for P in (count + 1, bucketed(count, 64)):  # bucket 64 with T = 48: P = T
        assert P > count
        padded, g_padded = run(P)
        torch.testing.assert_close(padded, exact, rtol=1e-5, atol=1e-5)
        assert g_padded.keys() == g_exact.keys()
        for name, g in g_exact.items():
            torch.testing.assert_close(g_padded[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_too_few_patch_slots_is_an_error():
    model = ByteLM(tiny_bytelm_config())
    ids = batch()
    ends = model.patcher.ends(ids)
    count = ends_to_lengths(ends, (ids != PAD).sum(-1)).shape[1]
    for P in (count - 1, count - 3):  # one short drops a patch; more overflow the scatter
        with pytest.raises(RuntimeError):
            model(ids, ends, n_patches=P)


def test_patch_bucket_is_validated():
    with pytest.raises(ConfigError, match="model.patch_bucket must be >= 1"):
        ByteLMConfig(patch_bucket=0)
