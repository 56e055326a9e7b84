"""Bits-per-byte: the headline metric.

    bpb = total nats of head 1 / (ln 2 * number of predicted bytes)

EOS counts as a predicted byte; BOS and PAD do not. Held-out text is cut into
windows that overlap by one byte, so every byte after the first BOS is
predicted exactly once, with the context of its own window.
"""

from __future__ import annotations

import math

import torch

from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss


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
    world_size-th batch and the caller sums nats and bytes across ranks.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    nats, count = 0.0, 0
    for i, ids in enumerate(corpus.eval_batches(seq_len, batch_size, max_bytes=max_bytes or None)):
        if i % world_size != rank:
            continue
        ids = ids.to(device)
        out = multi_head_loss(model(ids)[:, :, :1].float(), ids, doc_ids(ids))
        nats += float(out.nats)
        count += int(out.count)
    model.train(was_training)
    return {"bpb": nats / (math.log(2) * max(count, 1)), "nats": nats, "bytes": count}


def bpb_of_checkpoint(
    path, sources=None, max_bytes: int | None = None, batch_size: int = 8
) -> dict:
    """Bits-per-byte of a checkpoint on the held-out split of a corpus (default: its own)."""
    import dataclasses

    from bytelm.checkpoint import load_model
    from bytelm.data import load_corpus

    model, cfg = load_model(path)
    data_cfg = (
        cfg.data if sources is None else dataclasses.replace(cfg.data, sources=tuple(sources))
    )
    heldout = load_corpus(data_cfg)["heldout"]
    r = evaluate_bpb(model, heldout, data_cfg.seq_len, batch_size, max_bytes)
    return {**r, "heldout_rule": data_cfg.heldout_rule()}
