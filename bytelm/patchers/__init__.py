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
    "MODES",
    "EntropyPatcher",
    "BPEPatcher",
]

PATCHERS = ("fixed", "space", "entropy", "bpe")
MODES = ("global", "monotonic", "both")  # entropy patcher threshold modes


def __getattr__(name):
    # imported lazily: the entropy patcher needs bytelm.model, which imports this package
    if name == "EntropyPatcher":
        from bytelm.patchers.entropy import EntropyPatcher

        return EntropyPatcher
    if name == "BPEPatcher":
        from bytelm.patchers.bpe import BPEPatcher

        return BPEPatcher
    raise AttributeError(f"module 'bytelm.patchers' has no attribute {name!r}")


def make_patcher(cfg) -> Patcher:
    """Build a patcher from a `PatcherConfig`."""
    if cfg.name == "fixed":
        return FixedPatcher(cfg.k, cfg.max_patch_len)
    if cfg.name == "space":
        return SpacePatcher(cfg.max_patch_len)
    if cfg.name == "entropy":
        from bytelm.patchers.entropy import EntropyPatcher

        return EntropyPatcher.from_config(cfg)
    if cfg.name == "bpe":
        from bytelm.patchers.bpe import BPEPatcher

        return BPEPatcher.from_config(cfg)
    raise ValueError(f"bytelm: unknown patcher {cfg.name!r}; choose one of {', '.join(PATCHERS)}")
