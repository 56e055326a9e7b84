"""How much a ByteLM's latent transformer is worth, by ablation of its output.

The latent reaches the bytes only through `from_latent` (B, P, D), added to the encoder
states before the decoder. Replacing that output and re-measuring held-out bpb says what
it carries:

- `zeroed`: no latent at all. Its cost mixes two things: a constant the decoder learned
  to expect (a bias) and the content of the patches.
- `mean`: every patch of a batch reads the batch's mean output, a constant: the bias
  survives, the content goes.
- `shuffled`: each window reads the latent outputs of another window of its batch: a
  real latent state, from the wrong text.

`shuffled - bpb` (the content gain) is the number to read: what the model gains from
the latent knowing *its own* text. A latent that has collapsed to a constant vector
(its residual stream dominated by one shared direction, the content crushed by the final
norm) shows a large zeroed gain and a content gain near zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bytelm.evals.bpb import evaluate_bpb, load_with_heldout

ABLATIONS = ("zeroed", "mean", "shuffled")


def _replace(kind: str, out: torch.Tensor) -> torch.Tensor:
    if kind == "zeroed":
        return torch.zeros_like(out)
    if kind == "mean":
        return out.mean((0, 1), keepdim=True).expand_as(out)
    return out.roll(1, 0)  # shuffled: window i reads window i - 1's latent outputs


def _check_bytelm(model) -> None:
    if not hasattr(model, "from_latent"):
        raise ValueError(f"bytelm: a latent ablation needs a ByteLM, not a {type(model).__name__}")


@contextmanager
def ablated_latent(model, kind: str) -> Iterator[None]:
    """Inside the block, `model`'s latent output is replaced as `kind` (see `ABLATIONS`)."""
    if kind not in ABLATIONS:
        raise ValueError(f"bytelm: unknown latent ablation {kind!r}; choose from {ABLATIONS}")
    _check_bytelm(model)
    hook = model.from_latent.register_forward_hook(lambda m, i, out: _replace(kind, out))
    try:
        yield
    finally:
        hook.remove()


def latent_ablation(model, split, seq_len: int, batch_size: int = 16, max_bytes=None) -> dict:
    """Held-out bpb of `model` as it is ("bpb") and with each ablation of its latent output
    (one key per `ABLATIONS` name), on the same windows."""
    _check_bytelm(model)
    if batch_size < 2:
        raise ValueError(
            "bytelm: the shuffled latent ablation swaps latents between the windows of a "
            f"batch: batch_size must be at least 2, got {batch_size}"
        )
    out = {"bpb": evaluate_bpb(model, split, seq_len, batch_size, max_bytes)["bpb"]}
    for kind in ABLATIONS:
        with ablated_latent(model, kind):
            out[kind] = evaluate_bpb(model, split, seq_len, batch_size, max_bytes)["bpb"]
    return out


def ablation_of_checkpoint(path, sources=None, max_bytes=None, batch_size: int = 8) -> dict:
    """`latent_ablation` of a checkpoint on the held-out split of a corpus (default: its own)."""
    model, data_cfg, heldout = load_with_heldout(path, sources)
    r = latent_ablation(model, heldout, data_cfg.seq_len, batch_size, max_bytes)
    return {**r, "heldout_rule": data_cfg.heldout_rule()}
