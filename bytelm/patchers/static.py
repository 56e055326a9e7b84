"""Static patchers: `fixed` (MegaByte) and `space` (SpaceByte)."""

from __future__ import annotations

import torch

from bytelm.config import MAX_PATCH_LEN
from bytelm.patchers.base import RulePatcher
from bytelm.vocab import BOS


class FixedPatcher(RulePatcher):
    """A new patch every `k` bytes (and after EOS, so patches never straddle documents)."""

    name = "fixed"

    def __init__(self, k: int = 4, max_patch_len: int | None = None):
        if k < 1:
            raise ValueError(f"fixed patch size k must be >= 1, got {k}")
        super().__init__(k if max_patch_len is None else max_patch_len)
        self.k = k

    @property
    def period(self) -> int:
        return min(self.k, self.max_patch_len)

    def _fires(self, prev, cur):
        return torch.zeros_like(cur, dtype=torch.bool)  # only the period cuts


def is_spacelike(ids: torch.Tensor) -> torch.Tensor:
    """SpaceByte's spacelike bytes: not an ASCII letter or digit, and not part of a
    multi-byte UTF-8 character. Bytes >= 0x80 count as letters, so that words in
    non-Latin scripts stay whole instead of being cut before every character."""
    alnum = (
        ((ids >= ord("0")) & (ids <= ord("9")))
        | ((ids >= ord("A")) & (ids <= ord("Z")))
        | ((ids >= ord("a")) & (ids <= ord("z")))
    )
    return ~alnum & ((ids < 0x80) | (ids == BOS) | (ids > 0xFF))


class SpacePatcher(RulePatcher):
    """A new patch after each spacelike byte that does not follow another one.

    "hello, world" -> "hello," " world": the patch boundary falls after the
    first of a run of spacelike bytes, so a word and its trailing punctuation or
    space share a patch. `max_patch_len` caps very long words.
    """

    name = "space"

    def __init__(self, max_patch_len: int = MAX_PATCH_LEN):
        super().__init__(max_patch_len)

    def _fires(self, prev, cur):
        return is_spacelike(cur) & ~is_spacelike(prev)
