"""Static, preallocated caches for incremental generation (gpt-fast style).

Every cache is addressed by absolute position, never by "append": a key stored
for position p lives in slot p % size, next to its position and document. The
attention mask (`MaskSpec`) is built from those slot positions, so

- a sliding-window stack needs only `window + max_step` slots (a ring);
- a length pointer is the only state that moves: keys past it are either
  hidden by the causal mask (their position is after every query) or
  overwritten by the next call before anything reads them;
- rolling back to an earlier length is O(1): set the pointer.

Rollback is limited to the bytes of the last call (`rollback(keep)`): a ring
keeps `max_step` slots beyond its window exactly so that those bytes can be
forgotten without losing the window before them.

`ByteLMCache` carries, besides the KV caches of the encoder, the latent
transformer and the decoder (whose slots also hold one layer per output head),
a position ring of recent bytes (ids, documents and encoder states: the
n-gram history and the bytes of the open patch, pooled when it closes) and
the patcher state. `TransformerCache` is the plain ByteTransformer's (the
entropy model's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bytelm.kernels.attention import MaskSpec
from bytelm.patchers.base import PatcherState
from bytelm.vocab import BOS, PAD


class _StepMask(MaskSpec):
    """The mask of one cached step, shared by every layer of a stack: its dense form (what
    the reference attention asks each layer for) and what a fast backend derives from it (a
    flex block mask, kept in `derived`, see `attention._memo`) are built once per call."""

    @property
    def derived(self) -> dict:
        if "_derived" not in self.__dict__:
            self._derived = {}
        return self._derived

    def allowed(self) -> torch.Tensor:
        if "allowed" not in self.derived:
            self.derived["allowed"] = super().allowed()
        return self.derived["allowed"]


@dataclass
class KVCache:
    """Keys and values of one stack, all layers, with one extra dump slot.

    k, v: one (B, H, S + 1, Dh) tensor per layer; slot S is a dump for masked writes (the
    padding of a latent step). pos, doc: (B, S + 1) the position and document of each
    slot; doc -1 marks an empty slot, which no query reads. A tensor per layer, not one
    stacked tensor: a compiled step writes each in place, where writing a view of a stack
    makes inductor copy the whole stack every step (measured on CPU: 3.4 ms against 0.09 ms
    for 4 layers of 4096 slots).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    pos: torch.Tensor
    doc: torch.Tensor
    window: int | None

    @classmethod
    def empty(cls, n_layers, batch, n_heads, head_dim, size, window, dtype, device) -> KVCache:
        shape = (batch, n_heads, size + 1, head_dim)
        return cls(
            k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
            v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
            pos=torch.full((batch, size + 1), -1, dtype=torch.long, device=device),
            doc=torch.full((batch, size + 1), -1, dtype=torch.long, device=device),
            window=window or None,
        )

    @classmethod
    def for_stack(cls, cfg, batch, max_len, max_step, dtype, device) -> KVCache:
        """A ring of `window + max_step` slots for windowed stacks, else `max_len` slots."""
        size = min(max_len, cfg.window + max_step) if cfg.window else max_len
        return cls.empty(
            cfg.n_layers, batch, cfg.attn_heads, cfg.dim // cfg.attn_heads, size, cfg.window,
            dtype, device,
        )  # fmt: skip

    @property
    def size(self) -> int:
        return self.pos.shape[1] - 1

    def slot(self, pos: torch.Tensor) -> torch.Tensor:
        return pos % self.size

    def write(self, pos: torch.Tensor, doc: torch.Tensor, valid: torch.Tensor | None = None):
        """Register new positions pos, doc (B, n) -> (slots (B, n), MaskSpec for their queries).

        Invalid entries (valid False) go to the dump slot and their queries read nothing.
        """
        slots, q_doc = self.slot(pos), doc
        if valid is not None:
            slots = torch.where(valid, slots, self.size)
            doc = torch.where(valid, doc, -1)
            q_doc = torch.where(valid, q_doc, -2)
        self.pos.scatter_(1, slots, pos)
        self.doc.scatter_(1, slots, doc)
        return slots, _StepMask(q_doc, self.doc, pos, self.pos, causal=True, window=self.window)

    def prefix(self, n: int) -> KVCache:
        """The first n slots as a cache of size n whose dump slot is slot n (views, written in
        place), so attention reads n + 1 slots, not all. For a cache without a window (slot =
        position) while every position stored or about to be written lies below n: position
        n is then written before any query reads it, so slot n may serve as the dump.
        Otherwise the cache itself."""
        if self.window or n >= self.size:
            return self
        k, v = [x[..., : n + 1, :] for x in self.k], [x[..., : n + 1, :] for x in self.v]
        return KVCache(k, v, self.pos[:, : n + 1], self.doc[:, : n + 1], self.window)

    def take(self, rows: torch.Tensor) -> KVCache:
        """A copy of rows (B',) of this cache, to step a few rows alone; `put` writes back."""
        k, v = [x[rows] for x in self.k], [x[rows] for x in self.v]
        return KVCache(k, v, self.pos[rows], self.doc[rows], self.window)

    def put(self, rows: torch.Tensor, part: KVCache, slots: torch.Tensor) -> None:
        """Write slots (B', n) of part = self.take(rows), stepped since, back into rows (B',)."""
        r, R = torch.arange(len(rows), device=rows.device)[:, None], rows[:, None]
        for mine, theirs in zip(self.k + self.v, part.k + part.v):
            mine[R, :, slots] = theirs[r, :, slots]  # (B', n, H, Dh)
        self.pos[R, slots] = part.pos[r, slots]
        self.doc[R, slots] = part.doc[r, slots]

    def live(self, length: torch.Tensor, span: int) -> dict[str, torch.Tensor]:
        """What a query at position `length` (B,) could read: the slots of positions
        [length - span, length), as (L, B, H, span, Dh) tensors with zeros where a
        row has no such position. For tests: caches that agree here decode alike."""
        pos = length[:, None] - span + torch.arange(span, device=length.device)  # (B, span)
        slots = self.slot(pos.clamp(min=0))
        ok = (pos >= 0) & (self.pos.gather(1, slots) == pos)
        rows = torch.arange(pos.shape[0], device=pos.device)[:, None]
        m = ok[None, :, None, :, None]
        # advanced indices split by a slice come first: (B, span, H, Dh) per layer
        k = torch.stack([x[rows, :, slots] for x in self.k]).permute(0, 1, 3, 2, 4)
        v = torch.stack([x[rows, :, slots] for x in self.v]).permute(0, 1, 3, 2, 4)
        return {
            "k": torch.where(m, k, 0.0),
            "v": torch.where(m, v, 0.0),
            "doc": torch.where(ok, self.doc.gather(1, slots), -1),
            "present": ok | (pos < 0),  # every position the window needs is still stored
        }


# ----------------------------------------------------------------- patcher state


def snapshot_state(state, functional: bool = False):
    """A copy of a patcher state that later steps of the original cannot change. For a
    patcher with `functional_state` (its steps replace the state's tensors, never edit them),
    a shallow copy: no tensor is copied."""
    return dataclasses.replace(state, extra=dict(state.extra)) if functional else state.clone()


def replay_patcher(
    patcher, start: PatcherState, ids: torch.Tensor, keep: torch.Tensor, states=None
):
    """The patcher state after feeding row r only its first keep[r] bytes of ids (B, n).
    `states` (B, 1 + n, D): the encoder states a learned source reads (see its `step`)."""
    state = snapshot_state(start, getattr(patcher, "functional_state", False))
    kw = {} if states is None else {"states": states}
    patcher.step(state, ids, n_valid=keep, **kw)  # every boundary source takes a ragged block
    return state


# ---------------------------------------------------------------- model caches


@dataclass
class _CallRecord:
    """What `rollback` needs about the last call: the state before it and what it fed."""

    length: torch.Tensor  # (B,)
    doc: torch.Tensor  # (B,)
    hi: int
    ids: torch.Tensor  # (B, n)
    docs: torch.Tensor  # (B, n)
    ends: torch.Tensor | None = None  # (B, n) ByteLM only
    n_patches: torch.Tensor | None = None
    patch_start: torch.Tensor | None = None
    patcher_state: PatcherState | None = None
    limit: torch.Tensor | None = None  # (B,) bytes decoded (`until_close`); the rest must go


class _Pointers:
    """Length bookkeeping shared by both caches."""

    length: torch.Tensor  # (B,) bytes seen per row: the position of the next byte
    doc: torch.Tensor  # (B,) document of the last byte (the number of BOS seen)
    max_len: int
    max_step: int
    hi: int  # host-side upper bound of length, so capacity checks need no device sync
    last: _CallRecord | None

    def _begin(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check capacity, record the rollback point -> positions and documents (B, n)."""
        B, n = ids.shape
        if n > self.max_step:
            raise ValueError(
                f"bytelm: {n} new bytes in one call exceed the cache's max_step ({self.max_step})"
            )
        if not self._fits(n):
            raise ValueError(
                f"bytelm: {self.hi + n} bytes exceed the cache's max_len ({self.max_len}); "
                "make a cache with a larger max_len or shorten the prompt"
            )
        pos = self.length[:, None] + torch.arange(n, device=ids.device)  # (B, n)
        docs = self.doc[:, None] + (ids == BOS).long().cumsum(1)  # (B, n)
        self.last = _CallRecord(self.length, self.doc, self.hi, ids, docs)
        return pos, docs

    def _fits(self, n: int) -> bool:
        """Do n more bytes fit? `hi` bounds the longest row from above without reading the
        device; only when the bound says no is the exact length read back (one sync)."""
        if self.hi + n > self.max_len and self.length.numel():
            self.hi = int(self.length.max())
        return self.hi + n <= self.max_len

    def _advance(self, docs: torch.Tensor) -> None:
        self.length = self.length + docs.shape[1]
        self.doc = docs[:, -1]
        self.hi += docs.shape[1]

    def _rollback_pointers(self, keep: torch.Tensor) -> _CallRecord:
        r = self.last
        assert r is not None, "rollback needs a decode call to roll back"
        n = r.ids.shape[1]
        keep = keep.to(r.length.device).long().clamp(0, n)
        self.length = r.length + keep
        at = r.docs.gather(1, (keep - 1).clamp(min=0)[:, None])[:, 0]
        self.doc = torch.where(keep > 0, at, r.doc)
        self.hi = r.hi + n  # an upper bound, kept without a device sync (`_fits` tightens it)
        return r


class TransformerCache(_Pointers):
    """The KV cache of a `ByteTransformer` (the baseline, and the entropy model).

    `seen` (2, B, max_len): every position's byte id and document, kept when the model
    reads n-grams (None otherwise); storage like the KV, addressed by position.

    `clone()` shares the KV storage and copies the pointers; because storage is
    addressed by position, a clone taken before a call can be stepped again
    over the same bytes (or a prefix of them) and stays correct. `select(mask,
    other)` merges pointers row-wise. Together they let a `PatcherState` carry
    this cache through `replay_patcher`.
    """

    def __init__(
        self, kv: KVCache, length, doc, max_len: int, max_step: int, hi: int = 0, seen=None
    ):
        self.kv, self.length, self.doc, self.seen = kv, length, doc, seen
        self.max_len, self.max_step, self.hi, self.last = max_len, max_step, hi, None

    def clone(self) -> TransformerCache:
        return TransformerCache(
            self.kv, self.length.clone(), self.doc.clone(), self.max_len, self.max_step, self.hi,
            self.seen,
        )  # fmt: skip

    def select(self, mask: torch.Tensor, other: TransformerCache) -> TransformerCache:
        assert other.kv is self.kv, "only clones of one cache can be merged"
        return TransformerCache(
            self.kv,
            torch.where(mask, self.length, other.length),
            torch.where(mask, self.doc, other.doc),
            self.max_len,
            self.max_step,
            max(self.hi, other.hi),
            self.seen,
        )

    def rollback(self, keep: torch.Tensor) -> None:
        """Keep only the first keep[r] (B,) bytes of row r from the last call."""
        self._rollback_pointers(keep)


class ByteLMCache(_Pointers):
    """Everything `ByteLM.decode` reads and writes. Build it with `ByteLM.new_cache`.

    enc, lat, dec: KV caches of the encoder, the latent transformer (one slot
    per patch) and the decoder, whose layers are followed by one layer per
    output head. lat_out (B, P + 1, D): each patch's latent output, already
    projected to the byte width. ring_ids, ring_doc (B, R), ring_h (B, R, D):
    the last R bytes' ids, documents and encoder states, for the n-gram hashes
    and for pooling the open patch when it closes; ring_d (B, R, D) their decoder
    states, for chain draft heads only (else None).
    """

    def __init__(
        self,
        model,
        batch: int,
        max_len: int,
        max_step: int,
        heads: int,
        fixed_shapes: bool = False,
        compile: bool = False,
    ):
        cfg, dev = model.cfg, model.unembed.weight.device
        dtype = model.unembed.weight.dtype
        D = cfg.encoder.dim
        self.patcher, self.heads = model.patcher, heads
        self.max_len, self.max_step, self.hi, self.last = max_len, max_step, 0, None
        self.history = max(cfg.ngram.ns, default=1) - 1  # bytes before t in t's n-grams
        self.max_patch = model.patcher.max_patch_len
        R = max(self.max_patch, self.history, 1) + max_step

        def zeros(*shape, fill=0, dt=torch.long):
            return torch.full(shape, fill, dtype=dt, device=dev)

        self.length, self.doc = zeros(batch), zeros(batch)
        self.n_patches = zeros(batch)  # closed patches: the latent length
        self.patch_start = zeros(batch)  # position of the open patch's first byte
        self.ring_ids, self.ring_doc = zeros(batch, R), zeros(batch, R, fill=-1)
        self.ring_h = zeros(batch, R, D, dt=dtype)
        # the decoder's states, for chain draft heads (`ByteLM.chain_logits`)
        self.ring_d = zeros(batch, R, D, dt=dtype) if model.chained else None
        self.enc = KVCache.for_stack(cfg.encoder, batch, max_len, max_step, dtype, dev)
        self.lat = KVCache.for_stack(cfg.latent, batch, max_len, max_step, dtype, dev)
        self.lat_out = zeros(batch, self.lat.size + 1, D, dt=dtype)
        dec = cfg.decoder
        # block heads are decoder-shaped blocks on the same positions: layers n_layers..
        self.dec = KVCache.for_stack(
            dataclasses.replace(dec, n_layers=dec.n_layers + heads * model.heads.cache_layers),
            batch, max_len, max_step, dtype, dev,
        )  # fmt: skip
        self.patcher_state = self.patcher.start(batch, dev)
        self.functional_state = getattr(self.patcher, "functional_state", False)
        if compile and not self.functional_state:
            raise ValueError(
                f"bytelm: a compiled decode needs a patcher whose state is tensors only; the "
                f"{self.patcher.name!r} patcher's is not (decode it without compile)"
            )
        self.fixed_shapes, self.compile = fixed_shapes or compile, compile
        if compile:
            from bytelm.model.decode_compile import prepare_cache

            prepare_cache(self)

    def step_fn(self, model, prefill: bool = False):
        """The decode step this cache's calls take: compiled (not for prefill calls, whose
        width varies), fixed-shape, or the default data-dependent one (`ByteLM.decode`)."""
        if self.compile and not prefill:
            from bytelm.model.decode_compile import run_compiled

            return lambda *a: run_compiled(model, *a)
        return model._decode_fixed if self.fixed_shapes else model._decode_step

    @property
    def ring_size(self) -> int:
        return self.ring_ids.shape[1]

    def recent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last `history` bytes of each row and their documents (B, history), from the
        ring: PAD and -1 before the text (what the n-gram hashes of new bytes read)."""
        at = (
            self.length[:, None]
            - self.history
            + torch.arange(self.history, device=self.length.device)
        )
        slot, ok = at.clamp(min=0) % self.ring_size, at >= 0
        return (torch.where(ok, self.ring_ids.gather(1, slot), PAD),
                torch.where(ok, self.ring_doc.gather(1, slot), -1))  # fmt: skip

    def begin(self, ids: torch.Tensor):
        if self.last is not None and self.last.limit is not None:
            self.rollback(self.last.limit)  # an `until_close` call's undecoded bytes
        pos, docs = self._begin(ids)
        self.last.n_patches, self.last.patch_start = self.n_patches, self.patch_start
        self.last.patcher_state = snapshot_state(self.patcher_state, self.functional_state)
        return pos, docs

    def advance(self, docs: torch.Tensor, ends: torch.Tensor, limit=None) -> None:
        """After a call over new bytes with patch ends `ends` (B, n); `limit` (B,): only
        each row's first limit[r] bytes were decoded, the rest are dropped by the next
        `rollback` or call."""
        self.last.ends, self.last.limit = ends, limit
        self.n_patches, self.patch_start = _after(
            self.last.length, self.n_patches, self.patch_start, ends
        )
        self._advance(docs)

    def rollback(self, keep: torch.Tensor) -> None:
        """Forget all but the first keep[r] (B,) bytes row r fed in the last decode call.

        The one rollback step of speculative decoding. Every KV cache, the
        latent outputs and the position ring are addressed by position, so
        moving the pointers (length, document, closed patches, open patch
        start) rolls them back; the patcher state is rewound from the kept
        bytes' ends (a rule patcher's `rewind`) or replayed from its snapshot
        over the kept bytes (a learned router reads their encoder states, and
        the one before them, from the ring: it keeps no vector).
        """
        if self.last is not None and self.last.limit is not None:
            keep = torch.minimum(keep.to(self.last.limit.device).long(), self.last.limit)
            self.last.limit = None
        r = self._rollback_pointers(keep)
        n = r.ids.shape[1]
        keep = self.length - r.length
        ends = r.ends & (torch.arange(n, device=keep.device)[None, :] < keep[:, None])
        self.n_patches, self.patch_start = _after(r.length, r.n_patches, r.patch_start, ends)
        if hasattr(self.patcher, "rewind"):  # a state that follows from the kept bytes' ends
            self.patcher_state = self.patcher.rewind(r.patcher_state, r.ids, ends, keep)
        # else a functional state is replayed always (a few tensor ops, no host sync); another
        # (the entropy model's) only when some row dropped bytes
        elif self.functional_state or int(keep.min()) < n:
            states = None
            if getattr(self.patcher, "needs_states", False):
                at = r.length[:, None] - 1 + torch.arange(n + 1, device=keep.device)  # (B, 1 + n)
                states = _rows(self.ring_h, at % self.ring_size)
            self.patcher_state = replay_patcher(self.patcher, r.patcher_state, r.ids, keep, states)

    def live(self, latent_span: int | None = None) -> dict[str, torch.Tensor]:
        """Everything the next call can read, masked to the live positions (for tests).

        Windowed caches are compared over their window, the latent cache over
        its last `latent_span` patches (default: the longest row's).
        """
        P = latent_span or max(int(self.n_patches.max()), 1)
        out = {
            "length": self.length,
            "doc": self.doc,
            "n_patches": self.n_patches,
            "patch_start": self.patch_start,
        }
        span = max(self.max_patch, self.history, 1)
        pos = self.length[:, None] - span + torch.arange(span, device=self.length.device)
        slots, ok = pos.clamp(min=0) % self.ring_size, pos >= 0
        out["ring_ids"] = torch.where(ok, self.ring_ids.gather(1, slots), -1)
        out["ring_doc"] = torch.where(ok, self.ring_doc.gather(1, slots), -1)
        out["ring_h"] = torch.where(ok[..., None], _rows(self.ring_h, slots), 0.0)
        for name, kv, length in (
            ("enc", self.enc, self.length),
            ("lat", self.lat, self.n_patches),
            ("dec", self.dec, self.length),
        ):
            for k, v in kv.live(length, kv.window or P).items():
                out[f"{name}.{k}"] = v
        p = self.n_patches[:, None] - P + torch.arange(P, device=self.length.device)
        ps = self.lat.slot(p.clamp(min=0))
        out["lat_out"] = torch.where((p >= 0)[..., None], _rows(self.lat_out, ps), 0.0)
        st = self.patcher_state
        for f in dataclasses.fields(st):
            if isinstance(getattr(st, f.name), torch.Tensor):
                out[f"patcher.{f.name}"] = getattr(st, f.name)
        for k, v in st.extra.items():
            if isinstance(v, torch.Tensor):
                out[f"patcher.extra.{k}"] = v
        return out


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, S, D), idx (B, n) -> x[b, idx[b, i]] (B, n, D)."""
    return x.gather(1, idx[..., None].expand(*idx.shape, x.shape[-1]))


def _after(length, n_patches, patch_start, ends):
    """Closed patches and the open patch's start after bytes at length.. with ends (B, n)."""
    n = ends.shape[1]
    pos = length[:, None] + torch.arange(n, device=ends.device)
    last_end = torch.where(ends, pos, -1).amax(1) if n else torch.full_like(length, -1)
    return n_patches + ends.sum(1), torch.where(last_end >= 0, last_end + 1, patch_start)


def prefill(decode, ids: torch.Tensor, cache, lengths: torch.Tensor | None = None):
    """Feed prompts ids (B, T), right-padded, row r of real length lengths[r], in
    chunks of cache.max_step -> logits (B, T, K, V) (garbage past each row's length)."""
    B, T = ids.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=ids.device)
    if not cache._fits(T):
        raise ValueError(
            f"bytelm: the prompt ({T} bytes with BOS) does not fit the cache "
            f"(max_len {cache.max_len}); make a cache with a larger max_len or shorten the prompt"
        )
    out = []
    for c in range(0, T, cache.max_step):
        chunk = ids[:, c : c + cache.max_step]
        n_valid = (lengths - c).clamp(0, chunk.shape[1])
        out.append(decode(chunk, cache, n_valid=n_valid))
    return torch.cat(out, dim=1)
