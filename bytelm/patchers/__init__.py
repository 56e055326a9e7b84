"""Patchers group bytes into variable-length patches. See `bytelm.patchers.base` for the contract."""

from __future__ import annotations

from bytelm.patchers.base import (
    Patcher,
    PatcherState,
    RulePatcher,
    ends_to_lengths,
    lengths_to_ids,
    lengths_to_offsets,
)
from bytelm.patchers.static import FixedPatcher, SpacePatcher

__all__ = [
    "Patcher",
    "PatcherState",
    "RulePatcher",
    "FixedPatcher",
    "SpacePatcher",
    "ends_to_lengths",
    "lengths_to_ids",
    "lengths_to_offsets",
    "make_patcher",
    "PATCHERS",
]

PATCHERS = ("fixed", "space")


def make_patcher(cfg) -> Patcher:
    """Build a patcher from a `PatcherConfig`."""
    if cfg.name == "fixed":
        return FixedPatcher(cfg.k, cfg.max_patch_len)
    if cfg.name == "space":
        return SpacePatcher(cfg.max_patch_len)
    raise ValueError(f"bytelm: unknown patcher {cfg.name!r}; choose one of {', '.join(PATCHERS)}")
