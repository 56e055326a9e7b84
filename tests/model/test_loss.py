"""The loss and bits-per-byte at document boundaries: head k is never trained or scored on
the next document's bytes; EOS is a predicted byte, BOS and PAD are not."""

import math

import pytest
import torch
import torch.nn.functional as F

from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss, target_mask
from bytelm.vocab import BOS, EOS, PAD

a, b, c, d, x, y = (ord(ch) for ch in "abcdxy")
# row 0: two whole documents, then padding; row 1: a window that starts mid-document
IDS = torch.tensor(
    [
        [BOS, a, b, EOS, BOS, c, d, EOS, PAD, PAD],
        [x, y, EOS, BOS, a, b, c, EOS, BOS, d],
    ]
)
# position t counts for head k when byte t+k is in t's document and is not BOS or PAD, by hand
VALID = {
    1: [[0, 1, 2, 4, 5, 6], [0, 1, 3, 4, 5, 6, 8]],
    2: [[0, 1, 4, 5], [0, 3, 4, 5]],
    3: [[0, 4], [3, 4]],
}


def hand_mask(k: int) -> torch.Tensor:
    mask = torch.zeros(IDS.shape[0], IDS.shape[1] - k, dtype=torch.bool)
    for row, ts in enumerate(VALID[k]):
        mask[row, ts] = True
    return mask


@pytest.mark.parametrize("k", [1, 2, 3])
def test_target_mask_stays_inside_the_document(k):
    assert torch.equal(target_mask(IDS, doc_ids(IDS), k), hand_mask(k))


def test_head_losses_count_only_their_own_documents_bytes():
    """Each head's mean is over exactly the hand-listed positions: with the same-document
    condition gone, head 2 at the first EOS would be scored on 'c' of the next document."""
    torch.manual_seed(0)
    B, T, K, V = *IDS.shape, 3, 259
    logits = torch.randn(B, T, K, V)
    out = multi_head_loss(logits, IDS, doc_ids(IDS))
    for k in range(1, K + 1):
        ce = F.cross_entropy(
            logits[:, : T - k, k - 1].reshape(-1, V), IDS[:, k:].reshape(-1), reduction="none"
        ).view(B, T - k)
        want = ce[hand_mask(k)].mean()
        torch.testing.assert_close(out.per_head[k - 1], want, msg=f"head {k}")
    assert out.loss == pytest.approx(out.per_head.mean().item(), rel=1e-6)


def test_bits_per_byte_counts_eos_but_not_bos_or_pad():
    """Head 1 predicts every byte and every EOS once, never a BOS or a PAD."""
    V = 259
    logits = torch.zeros(*IDS.shape, 1, V)  # uniform: every predicted byte costs ln V nats
    out = multi_head_loss(logits, IDS, doc_ids(IDS))
    real = ((IDS != BOS) & (IDS != PAD)).sum().item()
    first = sum(1 for row in IDS if row[0] not in (BOS, PAD))  # nothing predicts position 0
    assert int(out.count) == real - first == 6 + 7
    eos_targets = IDS[:, 1:] == EOS
    assert eos_targets.sum() == 4 and target_mask(IDS, doc_ids(IDS), 1)[eos_targets].all()
    assert out.nats.item() == pytest.approx(int(out.count) * math.log(V), rel=1e-5)
    assert out.bpb == pytest.approx(math.log2(V), rel=1e-5)


def test_next_document_does_not_change_a_documents_loss_terms():
    """Changing the bytes of the second document changes no loss term of the first: the
    per-position nats of positions in document 1 are the same for every head."""
    torch.manual_seed(1)
    B, T, K, V = 1, 10, 3, 259
    logits = torch.randn(B, T, K, V)
    first = torch.tensor([[BOS, a, b, EOS]])
    other = [torch.tensor([[BOS, c, d, EOS, PAD, PAD]]), torch.tensor([[BOS, x, y, x, y, EOS]])]
    totals = []
    for second in other:
        ids = torch.cat([first, second], 1)
        per_pos = []
        for k in range(1, K + 1):
            ce = F.cross_entropy(
                logits[:, : T - k, k - 1].reshape(-1, V), ids[:, k:].reshape(-1), reduction="none"
            ).view(B, T - k)
            mask = target_mask(ids, doc_ids(ids), k)
            per_pos.append((ce * mask)[:, :4])  # positions of document 1
        totals.append(torch.cat(per_pos, 1))
    torch.testing.assert_close(totals[0], totals[1])
