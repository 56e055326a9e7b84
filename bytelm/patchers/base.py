"""The patch contract and the helpers every patcher and kernel share.

A patching of T bytes is `patch_lengths: LongTensor[B, P]`: each row lists its
patch lengths in order, each >= 1, right-padded with 0, summing to the row's
number of real bytes. Inside the library a patching is often carried as
`ends: BoolTensor[B, T]`, "byte t is the last byte of its patch". Because
patchers are causal, `ends[:, t]` depends only on bytes <= t, and unlike
`patch_lengths` it also says whether the last patch of a row is closed, which
the causality rule needs (see `bytelm.model.bytelm`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch

from bytelm.vocab import EOS, PAD


def ends_to_lengths(
    ends: torch.Tensor, n_bytes: torch.Tensor | None = None, n_patches: int | None = None
) -> torch.Tensor:
    """ends (B, T) bool -> patch_lengths (B, P), right-padded with 0.

    Only the first `n_bytes[b]` positions of row b are real; a trailing open
    patch (its last byte not marked as an end) still counts as a patch.
    `n_patches` fixes P (at least the largest row's count, e.g. a bucket so that
    shapes repeat step to step); without it P is that count, one host sync.
    Vectorised: no loop over rows or bytes.
    """
    B, T = ends.shape
    if n_bytes is None:
        n_bytes = torch.full((B,), T, dtype=torch.long, device=ends.device)
    pos = torch.arange(T, device=ends.device)
    real = pos[None, :] < n_bytes[:, None]
    # every real byte that ends a patch, plus the last real byte of the row
    is_end = (ends & real) | (pos[None, :] == (n_bytes[:, None] - 1))
    P = int(is_end.sum(-1).max()) if n_patches is None and B > 0 and T > 0 else n_patches or 0
    # patch i of a row ends at its i-th end; the others go to a dump column P
    which = torch.where(is_end, is_end.long().cumsum(-1) - 1, P)  # (B, T)
    last = torch.full((B, P + 1), -1, dtype=torch.long, device=ends.device)
    last.scatter_(1, which, pos.expand(B, T))  # the dump column gets an arbitrary position
    last = last[:, :P]  # (B, P) the position that ends each patch, -1 for no patch
    prev = torch.cat([last.new_full((B, 1), -1), last[:, :-1]], dim=1)
    return torch.where(last >= 0, last - prev, 0)


def only_first(ends: torch.Tensor) -> torch.Tensor:
    """ends (B, n) -> the same with every patch end after byte 0 removed."""
    return ends & (torch.arange(ends.shape[1], device=ends.device) == 0)


def first_close(ends: torch.Tensor) -> torch.Tensor:
    """ends (B, n) -> (B,) the index of the first byte after byte 0 that ends a patch, n if
    none: how many bytes `ByteLM.decode(..., until_close=True)` decodes."""
    later = ends[:, 1:]
    return torch.where(later.any(1), later.long().argmax(1) + 1, ends.shape[1])


def longest_patch(patcher) -> int:
    """The most bytes a patch of this source can hold: a rule's period (fixed:k: k), else
    its max_patch_len."""
    return getattr(patcher, "period", patcher.max_patch_len)


def lengths_to_ids(patch_lengths: torch.Tensor, T: int | None = None) -> torch.Tensor:
    """patch_lengths (B, P) -> patch_ids (B, T): which patch each byte is in.

    Bytes past a row's real length (padding) get id -1.
    """
    B, P = patch_lengths.shape
    n = patch_lengths.sum(-1)
    if T is None:
        T = int(n.max().item()) if B > 0 else 0
    ends = patch_lengths.cumsum(-1)  # (B, P) exclusive end of each patch
    pos = torch.arange(T, device=patch_lengths.device)
    ids = torch.searchsorted(ends, pos.expand(B, T).contiguous(), right=True)  # (B, T)
    return torch.where(pos[None, :] < n[:, None], ids, torch.full_like(ids, -1))


def lengths_to_offsets(patch_lengths: torch.Tensor) -> torch.Tensor:
    """patch_lengths (B, P) -> offsets (B, P): the start of each patch (0-based)."""
    return patch_lengths.cumsum(-1) - patch_lengths


@dataclass
class PatcherState:
    """Per-row incremental state, carried by `Patcher.step` during generation."""

    patch_len: torch.Tensor  # (B,) bytes in the currently open patch
    prev: torch.Tensor  # (B,) the last byte seen, or PAD before any
    extra: dict = field(default_factory=dict)  # patcher-specific tensors (entropy KV cache, ...)

    def clone(self) -> PatcherState:
        """A copy that later steps of the original cannot change (speculative rollback).

        Tensors and values with a `clone()` method (the entropy model's KV caches)
        are cloned; anything else (per-row lists, ...) is deep-copied.
        """
        return dataclasses.replace(
            self,
            **{
                f.name: _copy(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if f.name != "extra"
            },
            extra={k: _copy(v) for k, v in self.extra.items()},
        )


def _copy(v):
    return v.clone() if hasattr(v, "clone") else copy.deepcopy(v)


@dataclass
class RowStart:
    """What a row that starts inside a document takes over from the document's bytes before it.

    Training and evaluation rows are windows cut from a stream of packed documents, and most
    start inside one. Given its `RowStart`, `ends` patches such a row as the whole document is
    patched (and as `step` patches it when fed the document): the forced cut every
    `max_patch_len` bytes keeps the document's phase, and the rules that read the byte (or
    entropy) before t see the document's. `bytelm.patchers.windows` computes it from a
    corpus split. A row that starts at a document's BOS takes `RowStart.fresh`, which is what
    `ends` assumes without one. Everything here is read from bytes before the row: causal.
    """

    prev: torch.Tensor  # (B,) the document's byte before the row, PAD at a document start
    open_len: torch.Tensor  # (B,) bytes of the document's open patch before the row, < period
    prev_H: torch.Tensor | None = None  # (B,) entropy patcher: H of that byte (any at a BOS)

    @classmethod
    def fresh(cls, batch: int, device: torch.device | None = None) -> RowStart:
        return cls(
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
            open_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev_H=torch.zeros(batch, device=device),
        )

    def to(self, device) -> RowStart:
        return RowStart(
            self.prev.to(device),
            self.open_len.to(device),
            None if self.prev_H is None else self.prev_H.to(device),
        )


class BoundarySource(Protocol):
    """Where patches end: what `ByteLM` asks of a rule patcher, the entropy patcher or any
    other source of boundaries.

    `ends` labels a whole batch; `start` then `step` label bytes as they arrive during
    generation and must agree with `ends` on the concatenation of everything fed. A
    source that can use precomputed side inputs takes them as keyword arguments of
    `ends` (the entropy patcher's cached `entropies=`); the model never passes them, it
    passes the finished `ends` instead. `causal` sources only: ends[t] reads bytes <= t.

    The rule sources (fixed, space, entropy) also patch rows that start inside a document:
    `ends(ids, start=RowStart)` continues the document's patching, and `fires(ids, ...)`
    gives the rule's own ends before the `max_patch_len` cuts (what `RowStart` is found
    from, `bytelm.patchers.windows`).
    """

    name: str
    causal: bool
    max_patch_len: int

    def ends(self, byte_ids: torch.Tensor) -> torch.Tensor: ...  # (B, T) -> (B, T) bool

    def start(self, batch: int, device: torch.device | None = None) -> PatcherState: ...

    def step(
        self, state: PatcherState, new_ids: torch.Tensor, n_valid: torch.Tensor | None = None
    ) -> torch.Tensor: ...  # (B, n) -> (B, n); row r takes only its first n_valid[r] bytes


class Patcher(BoundarySource, Protocol):
    """A boundary source that also returns the DESIGN patch contract directly."""

    def patch(self, byte_ids: torch.Tensor) -> torch.Tensor: ...  # (B, T) -> (B, P)


def ends_from_fire(
    fire: torch.Tensor, ids: torch.Tensor, max_patch_len: int, open_len: torch.Tensor | None = None
) -> torch.Tensor:
    """Rule fires (B, T) -> ends (B, T), adding EOS ends and `max_patch_len` cuts, vectorised.

    For a rule that does not depend on the patch state, the forced cuts between
    two natural ends (rule or EOS) fall every max_patch_len bytes: byte t is
    forced when it is the (k * max_patch_len)-th byte after the last natural end.
    `open_len` (B,): bytes already in the patch open before each row's first byte (a row
    that starts inside a document, `RowStart.open_len`); 0 without it.
    """
    B, T = ids.shape
    natural = fire | (ids == EOS)
    pos = torch.arange(T, device=ids.device).expand(B, T)
    # the end before the row: open_len bytes before its first byte (-1 at a document start)
    before = torch.full_like(pos[:, :1], -1)
    if open_len is not None:
        before = before - open_len.to(pos)[:, None]
    last = torch.where(natural, pos, before).cummax(dim=1).values
    prev_end = torch.cat([before, last[:, :-1]], dim=1)
    return natural | ((pos - prev_end) % max_patch_len == 0)


def step_ends(natural, ids, patch_len, prev, period: int, n_valid=None):
    """One incremental patching step, vectorised over the n new bytes.

    natural (B, n): the rule's own ends (rule or EOS) of the new bytes ids (B, n); patch_len,
    prev (B,): the open patch's length and the last byte before them. Row r takes only its
    first n_valid[r] bytes. -> (ends (B, n), patch_len (B,), prev (B,)) after the taken bytes.
    A forced cut falls every `period` bytes after the last end (cf. `ends_from_fire`)."""
    B, n = ids.shape
    i = torch.arange(n, device=ids.device).expand(B, n)
    k = torch.full_like(patch_len, n) if n_valid is None else n_valid.to(patch_len).clamp(0, n)
    take = i < k[:, None]
    natural = natural & take
    before = (-1 - patch_len)[:, None]  # where the end before these bytes was
    last = torch.where(natural, i, before).cummax(1).values  # last natural end at or before i
    prev_end = torch.cat([before, last[:, :-1]], 1)  # the last natural end before i
    ends = natural | (((i - prev_end) % period == 0) & take)
    patch_len = k - 1 - torch.where(ends, i, before).amax(1)
    last_id = ids.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]
    return ends, patch_len, torch.where(k > 0, last_id, prev)


class RulePatcher:
    """A causal patcher defined by a per-byte rule `_fires(prev, cur) -> bool` (elementwise).

    After byte t the next byte starts a new patch when the rule fires on
    (byte t-1, byte t), when the open patch has reached `period` bytes, or when
    byte t is EOS (patches never straddle documents). Because the rule reads no
    patch state, `ends` (batched) is one vectorised pass (`ends_from_fire`) and
    `step` (incremental) applies the same `_fires` byte by byte; they cannot drift
    (tests check `step` == `ends`).
    """

    name = "rule"
    causal = True
    functional_state = True  # `step` replaces the state's tensors, never edits them in place

    def __init__(self, max_patch_len: int):
        if max_patch_len < 1:
            raise ValueError(f"max_patch_len must be >= 1, got {max_patch_len}")
        self.max_patch_len = max_patch_len

    @property
    def period(self) -> int:
        """A patch is cut when it reaches this many bytes."""
        return self.max_patch_len

    def _fires(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start(self, batch: int, device: torch.device | None = None) -> PatcherState:
        return PatcherState(
            patch_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
        )

    def step(
        self, state: PatcherState, new_ids: torch.Tensor, n_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed one byte per row (B,) or several (B, n); updates `state`.

        Returns, per fed byte, whether the *next* byte starts a new patch. With
        `n_valid` (B,), row r takes only its first n_valid[r] bytes (the state
        ignores the rest; their outputs are False): a rollback's replay in one call.
        Vectorised over the bytes (a fixed number of tensor ops whatever n), and
        functional: the state's tensors are replaced, never written in place, so a
        snapshot of the state is a shallow copy (`functional_state`).
        """
        if new_ids.dim() == 1:
            return self.step(state, new_ids[:, None], n_valid)[:, 0]
        prev = torch.cat([state.prev[:, None], new_ids[:, :-1]], dim=1)  # (B, n)
        natural = self._fires(prev, new_ids) | (new_ids == EOS)
        ends, state.patch_len, state.prev = step_ends(
            natural, new_ids, state.patch_len, state.prev, self.period, n_valid
        )
        return ends

    def rewind(
        self, start: PatcherState, ids: torch.Tensor, ends: torch.Tensor, keep: torch.Tensor
    ) -> PatcherState:
        """The state after row r took only the first keep[r] (B,) of the bytes ids (B, n) fed
        to `step` from the state `start`, whose ends (B, n) are what `step` gave them, cleared
        past keep[r]. What replaying `step` over the kept bytes gives, without replaying it: a
        rule's state is the open patch's length and the last byte (a speculative rollback)."""
        if ids.shape[1] == 0:
            return dataclasses.replace(start, extra=dict(start.extra))
        i = torch.arange(ids.shape[1], device=ids.device)
        last = torch.where(ends, i, -1 - start.patch_len[:, None]).amax(1)  # before: -1 - open
        prev = ids.gather(1, (keep - 1).clamp(min=0)[:, None])[:, 0]
        return PatcherState(
            patch_len=keep - 1 - last,
            prev=torch.where(keep > 0, prev, start.prev),
            extra=dict(start.extra),
        )

    def fires(self, byte_ids: torch.Tensor, start: RowStart | None = None) -> torch.Tensor:
        """(B, T) -> (B, T) bool: the rule's own ends (rule or EOS), before the period cuts."""
        first = byte_ids.new_full((byte_ids.shape[0], 1), PAD)
        if start is not None:
            first = start.prev.to(byte_ids)[:, None]
        prev = torch.cat([first, byte_ids[:, :-1]], dim=1)
        return self._fires(prev, byte_ids) | (byte_ids == EOS)

    def ends(self, byte_ids: torch.Tensor, start: RowStart | None = None) -> torch.Tensor:
        """(B, T) -> (B, T) bool: byte t ends its patch. Depends only on bytes <= t.

        Each row starts a document unless `start` says where in its document it starts.
        """
        open_len = None if start is None else start.open_len
        return ends_from_fire(self.fires(byte_ids, start), byte_ids, self.period, open_len)

    def patch(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> patch_lengths (B, P). PAD bytes at the end of a row are not patched."""
        n = (byte_ids != PAD).sum(-1)
        return ends_to_lengths(self.ends(byte_ids), n)
