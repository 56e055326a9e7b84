"""Byte ids: every byte value 0..255 is its own id, plus three specials.

`bytes(ids)` works directly on the raw-byte part of a sequence. The model never
decodes to `str`: invalid UTF-8 is ordinary input.
"""

from __future__ import annotations

import torch

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 259  # logical vocabulary: 256 bytes + BOS, EOS, PAD
SPECIALS = (BOS, EOS, PAD)


def encode(data: bytes | str, bos: bool = True, eos: bool = False) -> torch.Tensor:
    """Bytes (or a str, encoded as UTF-8) -> LongTensor[T] of byte ids."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    ids = list(data)
    if bos:
        ids = [BOS] + ids
    if eos:
        ids = ids + [EOS]
    return torch.tensor(ids, dtype=torch.long)


def decode(ids) -> bytes:
    """Byte ids -> raw bytes. Specials are dropped."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(i for i in ids if 0 <= i < 256)
