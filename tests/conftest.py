"""Shared test set-up.

Triton kernels run under the Triton interpreter on CPU, which must be switched
on before triton is first imported; some torch modules (e.g. the flop counter)
import triton, so this happens here, before any test module is collected.
`import torch` itself does not import triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The test models are tiny: a second thread only adds synchronisation, and on a
# shared 2-core machine it makes every small op wait. One thread for the suite.
torch.set_num_threads(1)

import pytest  # noqa: E402

from bytelm.config import (  # noqa: E402
    ByteLMConfig,
    NGramConfig,
    OutputHeadsConfig,
    PatcherConfig,
    TransformerConfig,
)


def tiny_bytelm_config(patcher="fixed", pooling="mean", heads=3, k=3, window=8) -> ByteLMConfig:
    local = TransformerConfig(dim=32, n_layers=1, attn_heads=2, window=window)
    return ByteLMConfig(
        ngram=NGramConfig(ns=(3, 4, 5), buckets=64),
        encoder=local,
        latent=TransformerConfig(dim=48, n_layers=2, attn_heads=2),
        decoder=local,
        # block heads: random ones differ from head 1 from the start, which the speculative
        # tests need; tests/model/test_heads.py covers every kind
        out_heads=OutputHeadsConfig(n=heads, kind="block", draft_grad=True),
        patcher=PatcherConfig(name=patcher, k=k, max_patch_len=6),
        pooling=pooling,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def entropy_model(tmp_path_factory):
    """A tiny entropy-model checkpoint (context 16) shared by the cache and generation tests."""
    from tests.patchers.tiny_entropy import save_tiny_entropy_model

    return save_tiny_entropy_model(tmp_path_factory.mktemp("entropy") / "ckpt", context=16)
