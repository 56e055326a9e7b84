"""Scoring bytes with the entropy model: H_t in bits, computed per document.

The context resets at BOS. A document longer than the entropy model's context L
is cut into chunks [kS, kS + L) with stride S = L - O; chunk 0 keeps all its
positions and chunk k keeps its last S, so every position sees at least
O = L // 4 bytes of context (or its whole prefix) and no position is ever
computed with a hard reset. The same chunking serves `EntropyPatcher.ends` (on
each row), the on-disk cache (`bytelm.patchers.entropy_cache`, on whole
documents) and `EntropyPatcher.step`.

The scorer is any module with the `ByteTransformer` interface (embed, stack,
norm, unembed, attn_backend); it is handed in, never loaded here.
"""

from __future__ import annotations

import math

import torch

from bytelm.vocab import BOS, EOS, PAD

_NEXT = torch.tensor([*range(256), EOS])  # ids that can follow a byte: BOS and PAD never do


def chunk_plan(n: int, context: int, overlap: int) -> list[tuple[int, int, int]]:
    """The chunks that cover n positions of one segment: (start, end, keep_from), relative.

    Chunk k spans [kS, kS + L) and keeps [kS + O, kS + L) (chunk 0 keeps from 0).
    Position r is kept by chunk max(0, (r - O) // S).
    """
    stride = context - overlap
    plan, s = [(0, min(n, context), 0)], stride
    while s + overlap < n:
        plan.append((s, min(s + context, n), s + overlap))
        s += stride
    return plan


def chunk_start(r: int, context: int, overlap: int) -> int:
    """Where the context of relative position r starts (see `chunk_plan`)."""
    stride = context - overlap
    return max(0, (r - overlap) // stride) * stride


def _entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """logits (..., V) -> entropy in bits (...) over the ids that can follow a byte, fp32."""
    logits = logits.float().index_select(-1, _NEXT.to(logits.device))
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)


@torch.no_grad()
def _forward_padded(model, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Entropies in bits (fp32, not rounded) of right-padded pieces x (n, T), each its own
    context at positions 0..T-1; seg (n, T) is 0 on a piece and 1 on its padding."""
    n, T = x.shape
    pos = torch.arange(T, device=x.device).expand(n, T)
    h = model.stack(model.embed_bytes(x, seg), seg, pos, model.attn_backend)  # (n, T, D)
    return _entropy_bits(model.unembed(model.norm(h)))  # (n, T)


@torch.no_grad()
def _forward_pieces(model, pieces: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Entropies (fp16-rounded, fp32) at every position of each 1-D id sequence, each its own context.

    Pieces are batched `rows` at a time, right-padded with PAD in a separate segment;
    positions restart at 0 in every piece, so a piece's result does not depend on
    what it is batched with.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(pieces)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))  # similar lengths together
    with torch.autocast(device.type, enabled=False):
        for i in range(0, len(order), rows):
            idx = order[i : i + rows]
            T = len(pieces[idx[0]])
            x = torch.full((len(idx), T), PAD, dtype=torch.long)
            seg = torch.ones(len(idx), T, dtype=torch.long)
            for row, j in enumerate(idx):
                x[row, : len(pieces[j])] = pieces[j]
                seg[row, : len(pieces[j])] = 0
            H = _forward_padded(model, x.to(device), seg.to(device)).half().float().cpu()
            for row, j in enumerate(idx):
                out[j] = H[row, : len(pieces[j])]
    return out  # type: ignore[return-value]


def segment_entropies(
    model, segments: list[torch.Tensor], context: int, overlap: int, max_tokens: int = 16384
) -> list[torch.Tensor]:
    """H (bits, fp16-rounded) at every position of each segment; each segment is its own document.

    Long segments are chunked with overlap (see `chunk_plan`).
    """
    pieces, where = [], []
    for i, s in enumerate(segments):
        for a, b, keep in chunk_plan(len(s), context, overlap):
            pieces.append(s[a:b])
            where.append((i, a, b, keep))
    H = _forward_pieces(model, pieces, rows=max(1, max_tokens // context))
    out = [torch.empty(len(s), dtype=torch.float32) for s in segments]
    for (i, a, b, keep), h in zip(where, H):
        out[i][keep:b] = h[keep - a :]
    return out


def row_segments(ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every context segment of a (B, T) batch: a row start or a BOS
    opens one; trailing PAD is left out."""
    out = []
    n_real = (ids != PAD).sum(-1).tolist()
    for b, n in enumerate(n_real):
        starts = [0] + [t for t in (ids[b, :n] == BOS).nonzero().flatten().tolist() if t > 0]
        out += [(b, s, e) for s, e in zip(starts, starts[1:] + [n])]
    return out
