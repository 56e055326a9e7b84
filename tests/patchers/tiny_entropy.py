"""A tiny random entropy model with strongly varying entropies, saved as a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from bytelm.checkpoint import save_checkpoint
from bytelm.config import RunConfig, TransformerConfig
from bytelm.data import DataConfig
from bytelm.model import ByteTransformer


def save_tiny_entropy_model(
    path: str | Path, context: int = 48, seed: int = 0, ngram_ns: tuple[int, ...] = ()
) -> Path:
    """A random 1-layer ByteTransformer whose output entropy depends strongly on the context.

    `context` is its training seq_len, so the patcher chunks documents longer than it.
    """
    torch.manual_seed(seed)
    tcfg = TransformerConfig(dim=32, n_layers=1, attn_heads=2, ngram_ns=ngram_ns, ngram_buckets=64)
    model = ByteTransformer(tcfg)
    with torch.no_grad():  # sharpen: a random init at std 0.02 is nearly uniform everywhere
        model.unembed.weight.mul_(60.0)
        for p in model.embed.parameters():
            p.mul_(20.0)
        for p in model.stack.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    cfg = RunConfig(arch="transformer", transformer=tcfg, data=DataConfig(seq_len=context))
    return save_checkpoint(Path(path), model, cfg)
