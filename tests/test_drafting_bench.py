"""The drafting benchmark's teacher-forced count against a brute-force one."""

import torch

from benchmarks.equal_compute import teacher_forced
from bytelm.vocab import BOS


class Split:
    def __init__(self, ids):
        self.ids = ids

    def eval_batches(self, seq_len, batch, max_bytes=None):
        yield self.ids


class Oracle(torch.nn.Module):
    """Head k at t predicts byte t + k, except where (t + k) % 3 == 0 or (t * k) % 5 == 1."""

    K = 4

    def forward(self, ids):
        B, T = ids.shape
        logits = torch.zeros(B, T, self.K, 256)
        for t in range(T):
            for k in range(1, self.K + 1):
                right = t + k < T and (t + k) % 3 != 0 and (t * k) % 5 != 1
                byte = int(ids[0, t + k]) if t + k < T else 0
                logits[:, t, k - 1, byte if right else (byte + 1) % 256] = 1.0
        return logits


class ChainOracle(torch.nn.Module):
    """The same predictions laid out as chain heads lay theirs: head k's logit at s predicts
    byte s + 1 (`heads.offsets` all 1), so its guess for byte t + k sits at s = t + k - 1."""

    K = 4
    heads = type("Heads", (), {"offsets": (1,) * 4})()

    def forward(self, ids):
        B, T = ids.shape
        logits = Oracle()(ids)
        out = torch.zeros_like(logits)
        for k in range(1, self.K + 1):
            out[:, k - 1 :, k - 1] = logits[:, : T - k + 1, k - 1]
        return out


def test_chain_heads_are_counted_where_their_guesses_are():
    ids = torch.randint(0, 256, (1, 40))
    ids[0, 0] = BOS
    assert teacher_forced(ChainOracle(), Split(ids), 40, 40) == teacher_forced(
        Oracle(), Split(ids), 40, 40
    )


def test_teacher_forced_bytes_per_forward_match_a_brute_force_count():
    T, K = 40, Oracle.K
    ids = torch.randint(0, 256, (1, T))
    ids[0, 0] = BOS
    ids[0, 1:] = ids[0, 1:].clamp(max=255)
    out = teacher_forced(Oracle(), Split(ids), T, T)
    expect = []
    for D in range(K):
        total = n = 0
        for t in range(T - K):  # positions every head has a target for
            lead = 0
            for k in range(2, D + 2):
                if (t + k) % 3 != 0 and (t * k) % 5 != 1:
                    lead += 1
                else:
                    break
            total, n = total + 1 + lead, n + 1
        expect.append(total / n)
    assert out["tf_by_drafts"] == expect
    assert out["tf_bytes_per_forward"] == expect[-1] and expect[0] == 1.0
    assert expect[-1] > expect[1] > 1.0  # the oracle's drafts do get accepted
