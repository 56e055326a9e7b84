"""Multi-head byte losses and the bits-per-byte bookkeeping shared by training and eval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bytelm.vocab import BOS, PAD


@dataclass
class HeadLosses:
    loss: torch.Tensor  # scalar: weighted mean of the per-head mean cross-entropies
    per_head: torch.Tensor  # (K,) mean nats per predicted byte, per head
    nats: torch.Tensor  # scalar: head-1 total nats (for bits-per-byte)
    count: torch.Tensor  # scalar: head-1 number of predicted bytes

    @property
    def bpb(self) -> float:
        return float(self.nats) / (math.log(2) * max(int(self.count), 1))


def target_mask(ids: torch.Tensor, docs: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T-k) bool: position t predicts byte t+k of its own document.

    BOS and PAD are never predicted; EOS is. A target in the next document is
    not predicted either: documents are independent.
    """
    return _predictable(ids[:, k:], docs[:, k:], docs[:, :-k])


def _predictable(tgt, tgt_docs, src_docs) -> torch.Tensor:
    """The rule of `target_mask` for targets gathered any way: no BOS or PAD, same document."""
    return (tgt != BOS) & (tgt != PAD) & (tgt_docs == src_docs)


def multi_head_loss(
    logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor],  # (B, T, K, V)
    ids: torch.Tensor,  # (B, T)
    docs: torch.Tensor,  # (B, T)
    weights: tuple[float, ...] = (),
    draft_at: torch.Tensor | None = None,  # (T',)
    offsets: tuple[int, ...] | None = None,
) -> HeadLosses:
    """Mean cross-entropy over heads; head k at position t predicts ids[t + k], or
    ids[t + offsets[k - 1]] (chain heads: every head predicts t + 1; `OutputHeads.offsets`).

    With `draft_at`, logits is (head 1's (B, T, 1, V), heads 2..K's (B, T', K - 1, V) at the
    positions draft_at): each draft head's mean is then over its valid targets there.
    """
    drafts = None
    if draft_at is not None:
        logits, drafts = logits
    B, T, K, V = logits.shape
    K += 0 if drafts is None else drafts.shape[2]
    w = torch.tensor(weights or [1.0] * K, dtype=torch.float32, device=logits.device)
    per_head, nats1, count1 = [], None, None
    for k in range(1, K + 1):
        o = offsets[k - 1] if offsets else k  # the head's target is o bytes ahead
        if drafts is not None and k > 1:
            per_head.append(_sampled_head_loss(drafts[:, :, k - 2], ids, docs, draft_at, o))
            continue
        if T <= o:
            per_head.append(logits.new_zeros((), dtype=torch.float32))
            continue
        valid = target_mask(ids, docs, o)  # (B, T-o)
        ce = F.cross_entropy(
            logits[:, : T - o, k - 1].reshape(-1, V).float(),
            ids[:, o:].reshape(-1),
            reduction="none",
        ).view(B, T - o)
        ce = ce * valid
        n = valid.sum()
        per_head.append(ce.sum() / n.clamp(min=1))
        if k == 1:
            nats1, count1 = ce.sum(), n
    per_head = torch.stack(per_head)
    loss = (per_head * w).sum() / w.sum()
    if nats1 is None:
        nats1, count1 = loss.new_zeros(()), torch.zeros((), dtype=torch.long)
    return HeadLosses(loss, per_head.detach(), nats1.detach(), count1.detach())


def _sampled_head_loss(logits, ids, docs, at, k: int) -> torch.Tensor:
    """Mean nats of head k's logits (B, T', V) at positions `at` (T',), under the rule of
    `target_mask`: the target ids[t + k] exists, is no BOS or PAD, and is in t's document."""
    T = ids.shape[1]
    tgt_at = (at + k).clamp(max=T - 1)
    tgt = ids[:, tgt_at]  # (B, T')
    valid = (at + k < T) & _predictable(tgt, docs[:, tgt_at], docs[:, at])
    ce = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), reduction="none")
    return (ce.view_as(valid) * valid).sum() / valid.sum().clamp(min=1)
