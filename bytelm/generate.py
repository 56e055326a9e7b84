"""Text generation. For now: plain sampling by full recomputation (no caches)."""

from __future__ import annotations

import torch

from bytelm.vocab import BOS, EOS, VOCAB_SIZE


def sample_logits(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). Greedy when temperature == 0. BOS/PAD are never sampled."""
    logits = logits.float().clone()
    logits[:, BOS] = float("-inf")
    logits[:, VOCAB_SIZE - 1] = float("-inf")  # PAD
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_naive(
    model: torch.nn.Module,
    prompt: bytes,
    max_new_bytes: int,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    max_context: int = 512,
) -> bytes:
    """Sample `max_new_bytes` after `prompt` by re-running the whole model each byte.

    The context is the last `max_context` ids. Stops early at EOS.
    """
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([[BOS, *prompt]], dtype=torch.long, device=device)
    out = bytearray()
    for _ in range(max_new_bytes):
        logits = model(ids[:, -max_context:])[:, -1, 0]  # head 1 at the last position
        nxt = sample_logits(logits, temperature, top_k, g)
        if int(nxt) == EOS:
            break
        out.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return bytes(out)
