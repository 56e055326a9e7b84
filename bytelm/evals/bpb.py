"""Bits-per-byte: the headline metric.

    bpb = total nats of head 1 / (ln 2 * number of predicted bytes)

EOS counts as a predicted byte; BOS and PAD do not. Held-out text is cut into
windows that overlap by one byte, so every byte after the first BOS is
predicted exactly once, with the context of its own window.

A ByteLM's patches in those windows are its documents' patches, as in training and
generation (`bytelm.patchers.windows`): a window that starts inside a document continues
the document's patching, and entropies come from the held-out split's entropy cache. Only
a learned router decides inside the window (from the model's own states).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.patchers.windows import window_ends


def split_patching(patcher, split) -> Callable:
    """A boundary source and a corpus split -> ends(ids (B, T), starts (B,)) for windows of
    the split starting at those stream positions, each patched as its documents are (the
    entropy patcher reads the split's entropy cache, filled as windows touch it)."""
    cache = EntropyCache(split, patcher) if patcher.name == "entropy" else None
    return lambda ids, starts: window_ends(patcher, split, starts, ids, cache)


def model_patching(model, split) -> Callable | None:
    """`split_patching` for a ByteLM with a rule or entropy source; None for a plain
    ByteTransformer and for a learned router (which decides inside the forward)."""
    patcher = getattr(model, "patcher", None)
    if patcher is None or getattr(model, "learned", False):
        return None
    return split_patching(patcher, split)


def eval_batches_with_ends(
    model, corpus, seq_len: int, batch_size: int, max_bytes=None, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """`corpus.eval_batches`, every world_size-th batch from `rank`, with the patch ends a
    ByteLM reads in them (host tensors) -> (ids (B, T), ends (B, T) or None for a model
    without a rule or entropy source)."""
    patching = model_patching(model, corpus)
    starts = None if patching is None else corpus.eval_starts(seq_len, max_bytes or None)
    for i, ids in enumerate(corpus.eval_batches(seq_len, batch_size, max_bytes=max_bytes or None)):
        if i % world_size != rank:
            continue
        if patching is None:
            yield ids, None
        else:
            yield ids, patching(ids, starts[i * batch_size : i * batch_size + len(ids)])


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    corpus,
    seq_len: int,
    batch_size: int = 8,
    max_bytes: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
) -> dict:
    """Head-1 bits-per-byte of `model` on a ByteCorpus split.

    Returns {"bpb", "nats", "bytes"}; with several ranks each evaluates every
    world_size-th batch and the caller sums nats and bytes across ranks. A ByteLM's
    windows are patched as their documents are (see the module docstring).
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    nats, count = 0.0, 0
    batches = eval_batches_with_ends(
        model, corpus, seq_len, batch_size, max_bytes, rank, world_size
    )
    for ids, ends in batches:  # ends found on the host, where the window is made, as in training
        ids = ids.to(device)
        logits = model(ids) if ends is None else model(ids, ends.to(device))
        out = multi_head_loss(logits[:, :, :1].float(), ids, doc_ids(ids))
        nats += float(out.nats)
        count += int(out.count)
    model.train(was_training)
    return {"bpb": nats / (math.log(2) * max(count, 1)), "nats": nats, "bytes": count}


def load_with_heldout(path, sources=None):
    """A checkpoint's model, its data config (with `sources` instead of its own, if given)
    and the held-out split of that corpus."""
    import dataclasses

    from bytelm.checkpoint import load_model
    from bytelm.data import load_corpus

    model, cfg = load_model(path)
    data_cfg = (
        cfg.data if sources is None else dataclasses.replace(cfg.data, sources=tuple(sources))
    )
    return model, data_cfg, load_corpus(data_cfg)["heldout"]


def bpb_of_checkpoint(
    path, sources=None, max_bytes: int | None = None, batch_size: int = 8
) -> dict:
    """Bits-per-byte of a checkpoint on the held-out split of a corpus (default: its own)."""
    model, data_cfg, heldout = load_with_heldout(path, sources)
    r = evaluate_bpb(model, heldout, data_cfg.seq_len, batch_size, max_bytes)
    return {**r, "heldout_rule": data_cfg.heldout_rule()}
