"""Reference speculative-decoding verify step in plain PyTorch: the specification.

Row b has K draft bytes `drafts[b, :K]`, drawn from the draft distributions
`q[b, i]` (V,), and the model's logits `logits[b, i]` (V,) at the K+1 positions
that follow the context (position i predicts the byte in the place of draft i;
position K the byte after the last draft). All randomness is passed in.

greedy (temperature == 0):
    accepted = the longest prefix with drafts[b, i] == argmax(logits[b, i])
    next_byte = argmax(logits[b, accepted])  (ties: the lowest id, like torch.argmax)

sampling (temperature > 0), lossless rejection sampling (Leviathan et al. 2023,
Chen et al. 2023):
    p_i = softmax(logits[b, i] / temperature)
    draft i is accepted iff u_accept[b, i] < min(1, p_i(d_i) / q_i(d_i)); stop at the
    first rejection, so accepted = number of leading acceptances
    if accepted = j < K: next_byte ~ normalize(max(0, p_j - q_j))   (the residual)
    else:                next_byte ~ p_K
    sampled by inverse CDF with u_sample[b]. Each emitted byte is then distributed
    exactly as sampling from p would be.

Degenerate residual: a rejection only happens where p_j(d) < q_j(d), so the
residual has mass sum(max(0, p_j - q_j)) = P(reject) > 0 in exact arithmetic.
When p_j equals q_j up to rounding it is fp32 noise, not a distribution; below
RESIDUAL_EPS of mass we sample from p_j instead. The change of distribution is
bounded by the rejection probability, itself below RESIDUAL_EPS.

Inverse CDF: with weights w >= 0 (unnormalised) and c = cumsum(w), the sample is
the number of entries with c <= u * c[-1], clamped to the last id with w > 0 (u
close to 1 can round u * c[-1] up to c[-1]).
"""

from __future__ import annotations

import torch

RESIDUAL_EPS = 1e-6


def sample_inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """w (B, V) >= 0 unnormalised weights, u (B,) in [0, 1) -> (B,) long samples."""
    c = w.cumsum(-1)  # (B, V)
    idx = (c <= (u * c[:, -1])[:, None]).sum(-1)
    ids = torch.arange(w.shape[-1], device=w.device)
    last = torch.where(w > 0, ids, 0).amax(-1)  # the last id with positive weight
    return torch.minimum(idx, last)


def verify_reference(
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    logits: torch.Tensor,
    temperature: float,
    u_accept: torch.Tensor | None,
    u_sample: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts (B, K), q (B, K, V), logits (B, K+1, V), u_accept (B, K), u_sample (B,)
    -> accepted (B,) in [0, K], next_byte (B,). q and the u's may be None when greedy."""
    B, K = drafts.shape
    rows = torch.arange(B, device=drafts.device)
    if temperature == 0:
        target = logits.argmax(-1)  # (B, K+1)
        accepted = (drafts == target[:, :K]).long().cumprod(-1).sum(-1)  # leading matches
        return accepted, target[rows, accepted]

    p = torch.softmax(logits.float() / temperature, dim=-1)  # (B, K+1, V)
    q = q.float()
    p_d = p[:, :K].gather(-1, drafts[..., None])[..., 0]  # (B, K)
    q_d = q.gather(-1, drafts[..., None])[..., 0]
    accept = u_accept < (p_d / q_d).clamp(max=1.0)
    accepted = accept.long().cumprod(-1).sum(-1)  # (B,) stop at the first rejection

    p_j = p[rows, accepted]  # (B, V)
    # no draft after the last position: the residual against q = 0 is p_K itself
    q_j = torch.cat([q, q.new_zeros(B, 1, q.shape[-1])], dim=1)[rows, accepted]
    residual = (p_j - q_j).clamp(min=0.0)
    degenerate = residual.sum(-1, keepdim=True) <= RESIDUAL_EPS
    w = torch.where(degenerate, p_j, residual)
    return accepted, sample_inverse_cdf(w, u_sample.float())
