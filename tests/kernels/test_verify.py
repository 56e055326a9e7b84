"""The verify step: Triton against the reference byte for byte, and the reference
against the maths of lossless rejection sampling (statistically)."""

import pytest
import torch

from bytelm.kernels.verify import verify
from bytelm.kernels.verify.reference import sample_inverse_cdf, verify_reference
from bytelm.vocab import VOCAB_SIZE

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
V = VOCAB_SIZE


def random_inputs(B: int, K: int, temperature: float, seed: int, dtype=torch.float32):
    """Logits near log q, so that drafts are often but not always accepted."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.softmax(2 * torch.randn(B, K, V, generator=gen), dim=-1)
    logits = 2 * torch.randn(B, K + 1, V, generator=gen)
    logits[:, :K] = (1 - 0.3) * q.log() * max(temperature, 1.0) + 0.3 * logits[:, :K]
    if K:
        drafts = torch.multinomial(q.reshape(-1, V), 1, generator=gen).reshape(B, K)
    else:
        drafts = torch.zeros(B, 0, dtype=torch.long)
    if temperature == 0:  # greedy drafts: the argmax, with some positions corrupted
        wrong = torch.rand(B, K, generator=gen) < 0.25
        drafts = torch.where(wrong, drafts, logits[:, :K].argmax(-1))
    u_accept = torch.rand(B, K, generator=gen)
    u_sample = torch.rand(B, generator=gen)
    tensors = (drafts, q, logits.to(dtype), u_accept, u_sample)
    return [t.to(DEVICE) for t in tensors]


@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.3])
@pytest.mark.parametrize("B,K", [(1, 0), (1, 1), (5, 4), (17, 7)])
def test_triton_matches_reference(B, K, temperature):
    drafts, q, logits, u_accept, u_sample = random_inputs(B, K, temperature, seed=100 * B + K)
    args = (drafts, q, logits, temperature, u_accept, u_sample)
    acc, nxt = verify(*args, backend="triton")
    acc_ref, nxt_ref = verify(*args, backend="reference")
    assert acc.dtype == nxt.dtype == torch.long
    assert torch.equal(acc, acc_ref) and torch.equal(nxt, nxt_ref)
    assert ((acc >= 0) & (acc <= K)).all()
    if B * K >= 20:  # the inputs exercise both branches: some rows stop early, some accept
        assert (acc < K).any() and (acc > 0).any()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_triton_matches_reference_bf16_logits(temperature):
    drafts, q, logits, u_accept, u_sample = random_inputs(9, 3, temperature, 5, torch.bfloat16)
    args = (drafts, q, logits, temperature, u_accept, u_sample)
    for got, want in zip(verify(*args, backend="triton"), verify(*args, backend="reference")):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_greedy_exact_match_and_ties(backend):
    """Accept while the draft is the argmax; ties go to the lowest id."""
    logits = torch.full((2, 4, V), -5.0)
    logits[:, 0, 65] = 3.0
    logits[:, 1, 66] = 3.0
    logits[:, 2, 9] = logits[:, 2, 5] = 3.0  # a tie: the argmax is 5
    logits[:, 3, 200] = 3.0
    drafts = torch.tensor([[65, 66, 9], [65, 66, 5]])
    acc, nxt = verify(drafts.to(DEVICE), None, logits.to(DEVICE), 0.0, backend=backend)
    assert acc.tolist() == [2, 3]
    assert nxt.tolist() == [5, 200]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_degenerate_residual_falls_back_to_p(backend):
    """q is p with 5e-7 of mass moved from byte 7 to the draft byte 3, whose p is tiny
    (1.3e-6): the draft is rejected (p/q = 0.72 < u = 0.9), and the residual
    max(0, p - q) is 5e-7 at byte 7, rounding-level mass rather than a distribution.
    The next byte must come from p, not be byte 7."""
    logits = torch.zeros(1, 2, V)
    logits[0, 0, 3] = -8.0
    p = torch.softmax(logits[0, 0], -1)
    q = p.clone()
    q[3] += 5e-7
    q[7] -= 5e-7
    u_sample = torch.tensor([0.5])
    args = [t.to(DEVICE) for t in (torch.tensor([[3]]), q[None, None], logits)]
    extra = [t.to(DEVICE) for t in (torch.tensor([[0.9]]), u_sample)]
    acc, nxt = verify(*args, 1.0, *extra, backend=backend)
    assert acc.item() == 0, "the draft must be rejected"
    assert nxt.item() == sample_inverse_cdf(p[None], u_sample).item() != 7


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_draft_with_zero_draft_probability(backend):
    """q(d) = 0 < p(d) is an infinite ratio: accepted. p(d) = q(d) = 0 is 0/0: rejected."""
    logits = torch.zeros(1, 3, V)
    logits[0, 1, 8] = float("-inf")
    q = torch.full((1, 2, V), 1.0 / (V - 1))
    q[0, 0, 4] = 0.0
    q[0, 1, 8] = 0.0
    drafts = torch.tensor([[4, 8]])
    args = [t.to(DEVICE) for t in (drafts, q, logits)]
    u = torch.tensor([[0.99, 0.0]], device=DEVICE)
    acc, nxt = verify(*args, 1.0, u, torch.tensor([0.25], device=DEVICE), backend=backend)
    assert acc.item() == 1
    assert nxt.item() != 8, "a byte with p = 0 is never emitted"


def test_backend_and_shape_errors():
    drafts, q, logits, ua, us = random_inputs(2, 3, 1.0, 0)
    with pytest.raises(ValueError, match="logits must be"):
        verify(drafts, q, logits[:, :3], 1.0, ua, us)
    with pytest.raises(ValueError, match="needs q"):
        verify(drafts, None, logits, 1.0, ua, us)
    with pytest.raises(ValueError, match="temperature"):
        verify(drafts, q, logits, -1.0, ua, us)
    with pytest.raises(ValueError, match="backend must be"):
        verify(drafts, q, logits, 1.0, ua, us, backend="fast")


# A synthetic draft/target pair on 5 byte ids. Position 0: q gives 0 mass to byte 0
# (reachable only through the residual) and 0.2 to EOS, where p is 0 (always
# rejected). Position 2 is the bonus position, sampled when both drafts pass.
IDS = torch.tensor([0, 65, 97, 200, 257])
P = torch.tensor(
    [[0.4, 0.3, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0]]
)
Q = torch.tensor([[0.0, 0.3, 0.3, 0.2, 0.2], [0.7, 0.1, 0.1, 0.1, 0.0]])


def chi2_stat(samples: torch.Tensor, p: torch.Tensor) -> tuple[float, int]:
    """Pearson's chi-square of byte samples against p over IDS (df = support - 1).
    A byte outside p's support gives an infinite statistic."""
    counts = (samples[:, None] == IDS[None, :]).sum(0).double()
    assert counts.sum() == samples.numel(), "a byte outside the synthetic vocabulary"
    n, support = counts.sum(), p > 0
    if (counts[~support] > 0).any():
        return float("inf"), int(support.sum()) - 1
    expected = n * p[support].double()
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


@pytest.mark.parametrize(
    "backend,N",
    [
        ("reference", 40_000),
        pytest.param(
            "triton",
            40_000,
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(
                    DEVICE == "cpu",
                    reason="the interpreter runs ~100 rows/s; equality tests cover it",
                ),
            ],
        ),
    ],
)
def test_rejection_sampling_is_lossless(backend, N):
    """Many independent rows of one (p, q) pair, fixed seed: the first draft is accepted
    with probability sum_x min(p(x), q(x)), and every emitted byte is distributed as p."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    gen = torch.Generator().manual_seed(0)
    K, temperature = 2, 0.5
    logits = torch.full((N, K + 1, V), float("-inf"))
    logits[:, :, IDS] = temperature * P.log()  # softmax(logits / temperature) = P
    q = torch.zeros(N, K, V)
    q[:, :, IDS] = Q
    drafts = IDS[torch.multinomial(Q, N, replacement=True, generator=gen)].T.contiguous()  # (N, K)
    u_accept, u_sample = torch.rand(N, K, generator=gen), torch.rand(N, generator=gen)
    args = [t.to(DEVICE) for t in (drafts, q, logits)] + [temperature]
    acc, nxt = verify(*args, u_accept.to(DEVICE), u_sample.to(DEVICE), backend=backend)
    acc, nxt = acc.cpu(), nxt.cpu()

    rate = torch.minimum(P[0], Q[0]).sum().item()  # 0.6
    se = (rate * (1 - rate) / N) ** 0.5
    assert abs((acc >= 1).double().mean().item() - rate) < 4 * se
    first = torch.where(acc >= 1, drafts[:, 0], nxt)
    second = torch.where(acc >= 2, drafts[:, 1], nxt)[acc >= 1]
    bonus = nxt[acc == 2]
    for samples, p in [(first, P[0]), (second, P[1]), (bonus, P[2])]:
        stat, df = chi2_stat(samples, p)
        assert stat < chi2.ppf(0.999, df), f"emitted bytes are not distributed as p={p.tolist()}"


def test_reference_matches_a_row_by_row_loop():
    """The vectorised reference against the algorithm written out as a loop."""
    drafts, q, logits, u_accept, u_sample = (t.cpu() for t in random_inputs(6, 5, 0.9, seed=11))
    acc, nxt = verify_reference(drafts, q, logits, 0.9, u_accept, u_sample)
    for b in range(6):
        p = torch.softmax(logits[b] / 0.9, -1)
        j = 0
        while j < 5 and u_accept[b, j] < min(
            1.0, (p[j, drafts[b, j]] / q[b, j, drafts[b, j]]).item()
        ):
            j += 1
        w = (p[j] - q[b, j]).clamp(min=0) if j < 5 else p[j]
        assert acc[b].item() == j
        assert nxt[b].item() == sample_inverse_cdf(w[None], u_sample[b : b + 1]).item()
