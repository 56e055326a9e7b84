"""Boundary sources: where patches end. See `bytelm.patchers.base` for the contract.

Every source speaks one protocol (`BoundarySource`): `ends` for a batch, `start`
and `step` for generation. The rule patchers (`fixed`, `space`) and the BPE
baseline need nothing but their config; the entropy patcher is handed its
scorer, a frozen `ByteTransformer`, by whoever loaded it (`bytelm.checkpoint`),
so nothing in this package ever reads a checkpoint. The learned source is a
router inside the ByteLM that binds it: it decides from the model's encoder
states (`bytelm.patchers.learned`).
"""

from __future__ import annotations

from bytelm.config import PATCHER_MODES as MODES
from bytelm.config import PATCHERS
from bytelm.patchers.base import (
    BoundarySource,
    Patcher,
    PatcherState,
    RulePatcher,
    ends_to_lengths,
    first_close,
    lengths_to_ids,
    lengths_to_offsets,
    only_first,
)
from bytelm.patchers.bpe import BPEPatcher
from bytelm.patchers.entropy import EntropyPatcher
from bytelm.patchers.learned import LearnedBoundaries
from bytelm.patchers.static import FixedPatcher, SpacePatcher

__all__ = [
    "BoundarySource",
    "Patcher",
    "PatcherState",
    "RulePatcher",
    "FixedPatcher",
    "SpacePatcher",
    "EntropyPatcher",
    "BPEPatcher",
    "LearnedBoundaries",
    "ends_to_lengths",
    "first_close",
    "lengths_to_ids",
    "lengths_to_offsets",
    "only_first",
    "make_patcher",
    "PATCHERS",
    "MODES",
]


def make_patcher(cfg, scorer: tuple | None = None, dim: int | None = None) -> BoundarySource:
    """Build a boundary source from a `PatcherConfig`.

    The entropy patcher needs `scorer = (entropy model, its context length)`;
    `bytelm.checkpoint.build_patcher` loads it from the config's checkpoint path.
    The learned router gets its weights for encoder width `dim`, or, without it, from
    the ByteLM that adopts it; until then it refuses to label bytes.
    """
    if cfg.name == "fixed":
        return FixedPatcher(cfg.k, cfg.max_patch_len)
    if cfg.name == "space":
        return SpacePatcher(cfg.max_patch_len)
    if cfg.name == "entropy":
        if scorer is None:
            raise ValueError(
                "bytelm: the entropy patcher needs its entropy model; build it with "
                "bytelm.build_patcher(patcher_cfg) (or bytelm.build_model(run_cfg)), or pass scorer="
            )
        return EntropyPatcher.from_config(cfg, *scorer)
    if cfg.name == "bpe":
        return BPEPatcher.from_config(cfg)
    if cfg.name == "learned":
        return LearnedBoundaries.from_config(cfg, dim)
    raise ValueError(f"bytelm: unknown patcher {cfg.name!r}; choose one of {', '.join(PATCHERS)}")
