"""Memoise what a fast backend derives from a `MaskSpec` (a block mask, a packing plan).

A stack calls attention once per layer with the same spec, so the derived
object is built once per forward pass and reused by every layer. Entries are
keyed by the identity and the in-place version counter of the four spec
tensors (a KV cache edits its `doc` and `pos` tensors in place), plus
`causal`, `window` and a tag. Tensors are held by weak reference, so a
memoised entry never keeps a dead spec's id alive for a different tensor.
Inside `torch.compile` tracing, and for inference-mode tensors (which have no
version counter), nothing is memoised: the object is rebuilt each call.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from bytelm.kernels.attention.reference import MaskSpec

_MAX_ENTRIES = 8  # a ByteLM forward has 4 distinct specs (encoder, pool, latent, decoder)
_entries: OrderedDict[tuple, tuple[tuple[weakref.ref, ...], Any]] = OrderedDict()


def memo(tag: str, spec: MaskSpec, build: Callable[[], Any]) -> Any:
    """`build()`, or the object built earlier for the same tag and the same spec tensors.

    A spec that carries its own store (`derived`, a dict: the mask of one cached decode step,
    shared by every layer of a stack) keeps what is built from it there, also inside a
    `torch.compile` trace: built once per spec, whatever the number of layers."""
    own = getattr(spec, "derived", None)
    if own is not None:
        if tag not in own:
            own[tag] = build()
        return own[tag]
    tensors = (spec.q_seg, spec.k_seg, spec.q_pos, spec.k_pos)
    if torch.compiler.is_compiling() or any(t.is_inference() for t in tensors):
        return build()
    key = (
        tag,
        spec.causal,
        spec.window,
        *(id(t) for t in tensors),
        *(t._version for t in tensors),
    )
    hit = _entries.get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors)):
        _entries.move_to_end(key)
        return hit[1]
    value = build()
    _entries[key] = (tuple(weakref.ref(t) for t in tensors), value)
    while len(_entries) > _MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear() -> None:
    _entries.clear()
