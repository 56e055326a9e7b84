import pytest
import torch

from bytelm.config import (
    ByteLMConfig,
    HeadsConfig,
    NGramConfig,
    PatcherConfig,
    TransformerConfig,
)


def tiny_bytelm_config(patcher="fixed", pooling="mean", heads=3, k=3, window=8) -> ByteLMConfig:
    local = TransformerConfig(dim=32, n_layers=1, n_heads=2, window=window)
    return ByteLMConfig(
        ngram=NGramConfig(ns=(3, 4, 5), buckets=64),
        encoder=local,
        latent=TransformerConfig(dim=48, n_layers=2, n_heads=2),
        decoder=local,
        heads=HeadsConfig(n=heads),
        patcher=PatcherConfig(name=patcher, k=k, max_patch_len=6),
        pooling=pooling,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
