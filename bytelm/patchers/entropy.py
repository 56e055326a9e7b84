"""Entropy patching (BLT): a small byte LM decides where patches start.

The entropy model is a frozen `ByteTransformer` trained as a byte LM. At every
position t it gives H_t, the entropy in bits of p(x_{t+1} | x_<=t). Byte t ends
its patch (so byte t+1 starts one) when

    global      H_t > threshold
    monotonic   H_t - H_{t-1} > threshold
    both        H_t > threshold and H_t - H_{t-1} > delta

or when the open patch reaches `max_patch_len`, or when byte t is EOS. H_t reads
bytes <= t only, so the patcher is causal. At a BOS H_{t-1} is taken to be H_t.
A row cut from inside a document (a training or evaluation window) is patched as
its document is, given its `RowStart` and the cached entropies
(`bytelm.patchers.windows`); without them a row is taken to start a document.

Context. Entropies are computed per document: the context resets at BOS. A
document longer than the entropy model's context L is cut into chunks
[kS, kS + L) with stride S = L - O; chunk 0 keeps all its positions and chunk k
keeps its last S, so every position sees at least O = L // 4 bytes of context
(or its whole prefix) and no position is ever computed with a hard reset. The
same chunking is used by `ends` (on each row), by the on-disk cache
(`bytelm.patchers.entropy_cache`, on whole documents) and by `step`.

Incremental. `step` is batched over rows and bytes. It carries one batched KV
cache of the entropy model (`EntropyKV`) in which every row holds its current
chunk at positions 0.. . A call's bytes continuing their rows' chunks go through
one cached step for all rows; a row that starts a chunk (a BOS, or every S bytes
past the first L) is rebuilt from its O overlap bytes, and all such rows are
prefilled together into a copy of the storage (so an older snapshot's storage
stays intact); chunks that begin and end inside one long call (a prompt) need
only their entropies, one batched forward without a cache. Generation pays one
cached entropy-model step per call (not per byte and row), a prompt one forward
per call, and `step(..., n_valid=keep)` replays a speculative rollback in one call.

Precision. Entropies are rounded to float16 everywhere (the cache stores
float16), and calibration puts θ between two representable values, so the
batched, cached and incremental paths agree unless float32 rounding noise moves
an entropy across a float16 rounding boundary right next to θ. Measured: the
cached and batched forwards disagree on about 1 position in 400 by one float16
ulp, so a patch decision differs on the order of once per 10^5 bytes.
"""

from __future__ import annotations

import dataclasses

import torch

from bytelm.config import CALIBRATION_BYTES, MAX_PATCH_LEN
from bytelm.config import PATCHER_MODES as MODES
from bytelm.patchers.base import PatcherState, RowStart, ends_to_lengths
from bytelm.patchers.entropy_cache import EntropyCache
from bytelm.patchers.entropy_rule import (  # noqa: F401 - re-exported: the entropy patcher's API
    CALIBRATION_TOL,
    Calibration,
    CalibrationError,
    calibrate_threshold,
    ends_from_fire,
    fire_rule,
    mean_bytes_per_patch,
)
from bytelm.patchers.entropy_scores import (  # noqa: F401 - re-exported
    _entropy_bits,
    _forward_padded,
    _forward_pieces,
    chunk_plan,
    chunk_start,
    row_segments,
    segment_entropies,
)
from bytelm.vocab import BOS, EOS, PAD


class EntropyKV:
    """The entropy model's KV cache for every row of a batch: one `TransformerCache`.

    Each row holds its current chunk at model positions 0.. (positions restart at every
    chunk, as in `entropies`), so a row's pointer rewinds when it starts a chunk. Follows
    the patcher-state protocol of `bytelm.model.cache`, with the semantics of
    `TransformerCache`: `clone()` copies the pointers and shares the position-addressed
    storage, so a clone can be stepped again over the same bytes (or others) and stays
    correct, because it writes only positions at or past its own pointers. A restart
    rewinds a row and would overwrite slots a clone still reads, so a call with a restart
    writes into a copy of the storage (copy on restart): a snapshot never sees its storage
    overwritten by a restart that happened after it. `select(mask, other)` merges row-wise
    (the pointers only when both share storage, else the rows of both storages).
    """

    def __init__(self, cache=None):
        self.cache = cache  # None until the first step (it is made on the bytes' device)

    def clone(self) -> EntropyKV:
        return EntropyKV(None if self.cache is None else self.cache.clone())

    def select(self, mask: torch.Tensor, other: EntropyKV) -> EntropyKV:
        a, b = self.cache, other.cache
        if a is None or b is None:  # rows of a never-stepped state restart at their next byte
            return (self if b is None else other).clone()
        if a.kv is b.kv:
            return EntropyKV(a.select(mask, b))
        m = mask.to(a.length.device)
        out = a.clone()
        out.kv = dataclasses.replace(
            a.kv,
            k=[torch.where(m.view(-1, 1, 1, 1), x, y) for x, y in zip(a.kv.k, b.kv.k)],
            v=[torch.where(m.view(-1, 1, 1, 1), x, y) for x, y in zip(a.kv.v, b.kv.v)],
            pos=torch.where(m[:, None], a.kv.pos, b.kv.pos),
            doc=torch.where(m[:, None], a.kv.doc, b.kv.doc),
        )
        if a.seen is not None:  # an n-gram model's bytes by position, merged like the KV
            out.seen = torch.where(m[None, :, None], a.seen, b.seen)
        out.length = torch.where(m, a.length, b.length)
        out.doc = torch.where(m, a.doc, b.doc)
        out.hi = max(a.hi, b.hi)
        return EntropyKV(out)


class EntropyPatcher:
    """Patches start where a small byte LM is surprised. See the module docstring."""

    name = "entropy"
    causal = True

    def __init__(
        self,
        model: torch.nn.Module,
        context: int,
        mode: str = "global",
        threshold: float | None = None,
        max_patch_len: int = MAX_PATCH_LEN,
        delta: float = 0.0,
        overlap: int | None = None,
        source: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"bytelm: entropy patcher mode must be one of {MODES}, got {mode!r}")
        if max_patch_len < 1:
            raise ValueError(f"bytelm: max_patch_len must be >= 1, got {max_patch_len}")
        self.model = model.eval()  # frozen; not a submodule of any ByteLM (never trained)
        self.context = int(context)
        self.overlap = self.context // 4 if overlap is None else int(overlap)
        if not 0 <= self.overlap < self.context:
            raise ValueError(f"bytelm: overlap must lie in [0, {self.context}), got {overlap}")
        self.mode, self.threshold, self.delta = mode, threshold, float(delta)
        self.max_patch_len = max_patch_len
        self.source = str(source)  # the checkpoint it came from (for caches and messages)

    @classmethod
    def from_config(
        cls, cfg, model: torch.nn.Module, context: int, source: str = ""
    ) -> EntropyPatcher:
        """A `PatcherConfig` and its scorer (the entropy model and its context length) ->
        patcher. Uncalibrated (threshold None) when the config asks for a target it has not
        been calibrated to yet."""
        calibrated = cfg.target_bytes_per_patch == 0 or cfg.measured_bytes_per_patch > 0
        return cls(
            model,
            context,
            cfg.mode,
            cfg.threshold if calibrated else None,
            cfg.max_patch_len,
            cfg.delta,
            source=source or cfg.entropy_model,
        )

    def _model_on(self, device: torch.device) -> torch.nn.Module:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model

    def _theta(self) -> float:
        if self.threshold is None:
            raise ValueError(
                "bytelm: the entropy patcher is not calibrated; call calibrate(corpus, target) or "
                "set patcher.threshold with patcher.target_bytes_per_patch = 0"
            )
        return self.threshold

    # -------------------------------------------------------------- batched

    @torch.no_grad()
    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T) H_t in bits (fp16-rounded fp32), context = the row's own documents.

        PAD positions get 0.
        """
        model = self._model_on(ids.device)
        cpu = ids.cpu()  # pieces are assembled on the host, then moved to the model's device
        segs = row_segments(cpu)
        H = segment_entropies(model, [cpu[b, s:e] for b, s, e in segs], self.context, self.overlap)
        out = torch.zeros(ids.shape, dtype=torch.float32)
        for (b, s, e), h in zip(segs, H):
            out[b, s:e] = h
        return out.to(ids.device)

    def fires(
        self,
        byte_ids: torch.Tensor,
        entropies: torch.Tensor | None = None,
        start: RowStart | None = None,
    ) -> torch.Tensor:
        """(B, T) -> (B, T) bool: the rule's own ends (rule or EOS), before the max_patch_len
        cuts. `entropies` and `start` as in `ends`."""
        theta = self._theta()
        H = self.entropies(byte_ids) if entropies is None else entropies.to(byte_ids.device)
        assert H.shape == byte_ids.shape, (
            f"entropies {tuple(H.shape)} != ids {tuple(byte_ids.shape)}"
        )
        prev_H = None if start is None else start.prev_H
        fire = fire_rule(H.float(), byte_ids, self.mode, theta, self.delta, prev_H)
        return fire | (byte_ids == EOS)

    def ends(
        self,
        byte_ids: torch.Tensor,
        entropies: torch.Tensor | None = None,
        start: RowStart | None = None,
    ) -> torch.Tensor:
        """(B, T) -> (B, T) bool: byte t ends its patch. Depends only on bytes <= t.

        `entropies` (B, T), e.g. read from the training cache, skips the entropy model.
        Each row starts a document unless `start` says where in its document it starts
        (then `entropies` must be the document's: a row's own would start cold).
        """
        fire = self.fires(byte_ids, entropies, start)
        open_len = None if start is None else start.open_len
        return ends_from_fire(fire, byte_ids, self.max_patch_len, open_len)

    def patch(self, byte_ids: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> patch_lengths (B, P). PAD bytes at the end of a row are not patched."""
        n = (byte_ids != PAD).sum(-1)
        return ends_to_lengths(self.ends(byte_ids, entropies), n)

    # -------------------------------------------------------------- incremental

    def start(self, batch: int, device=None) -> PatcherState:
        """Per row: the open patch length, the last byte, the relative position in the document,
        H_{t-1}, the last `context` bytes fed and the entropy model's KV cache (`EntropyKV`)."""
        return PatcherState(
            patch_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
            extra={
                "r": torch.full((batch,), -1, dtype=torch.long, device=device),  # -1 = none yet
                "prev_H": torch.zeros(batch, device=device),
                # oldest first; a tensor, so snapshots copy it
                "history": torch.full((batch, self.context), PAD, dtype=torch.long, device=device),
                "kv": EntropyKV(),
            },
        )

    @torch.no_grad()
    def step(
        self, state: PatcherState, new_ids: torch.Tensor, n_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed one byte per row (B,) or several (B, n); mutates `state`.

        Returns, per fed byte, whether the *next* byte starts a new patch; equal to `ends`
        on the concatenation of everything fed. `n_valid` (B,): row r takes only its first
        n_valid[r] bytes (False is returned past them), so `step(state, ids, n_valid=keep)`
        is `replay_patcher(self, state, ids, keep)` (`bytelm.model.cache`) in one call.
        Batched over rows and bytes: one cached step, one prefill and, for a call longer
        than a chunk, one forward per 16K bytes of chunks, whatever B and n (see
        `_new_entropies`).
        """
        if new_ids.dim() == 1:
            return self.step(state, new_ids[:, None], n_valid)[:, 0]
        theta = self._theta()
        B, n = new_ids.shape
        dev, ex = new_ids.device, state.extra
        if n == 0:
            return torch.zeros(B, 0, dtype=torch.bool, device=dev)
        ids, L, O = new_ids, self.context, self.overlap
        col = torch.arange(n, device=dev)
        v = torch.full((B,), n, device=dev) if n_valid is None else n_valid.to(dev).clamp(0, n)
        # relative position in the document: 0 at a BOS (or at a row's first byte ever)
        last_bos = torch.where(ids == BOS, col, -1).cummax(1).values
        r = torch.where(last_bos >= 0, col - last_bos, ex["r"].to(dev)[:, None] + 1 + col)
        # a chunk starts: a new document, or the first position chunk k >= 1 keeps
        restart = (r == 0) | ((r >= L) & ((r - O) % (L - O) == 0))
        restart &= col < v[:, None]
        H = self._new_entropies(ex, ids, v, r, restart)  # (B, n), 0 past n_valid

        # the rule: fire_rule over [H_{t-1}, H] (H_{t-1} := H_t at a row's first byte ever)
        prev_H = torch.where(ex["r"].to(dev) < 0, H[:, 0], ex["prev_H"].to(dev))
        fire = fire_rule(
            torch.cat([prev_H[:, None], H], 1),
            torch.cat([state.prev.to(dev)[:, None], ids], 1),
            self.mode, theta, self.delta,
        )[:, 1:]  # fmt: skip
        # EOS and max_patch_len cuts as in `ends_from_fire`, counting from the open patch
        natural = fire | (ids == EOS)
        last = torch.where(natural, col, -1).cummax(1).values
        prev_end = torch.cat([last.new_full((B, 1), -1), last[:, :-1]], 1)
        count = col - torch.where(prev_end >= 0, prev_end, -1 - state.patch_len.to(dev)[:, None])
        end = natural | (count % self.max_patch_len == 0)  # count: bytes in the open patch

        # the state after each row's last valid byte (unchanged where a row takes none)
        moved, at = v > 0, (v - 1).clamp(min=0)[:, None]
        last_of = lambda x, old: torch.where(moved, x.gather(1, at)[:, 0], old.to(dev))
        patch_len = torch.where(end, 0, count % self.max_patch_len)
        state.patch_len = last_of(patch_len, state.patch_len)
        state.prev = last_of(ids, state.prev)
        ex["r"], ex["prev_H"] = last_of(r, ex["r"]), last_of(H, ex["prev_H"])
        window = v[:, None] + torch.arange(L, device=dev)  # the last L bytes up to n_valid
        ex["history"] = torch.cat([ex["history"].to(dev), ids], 1).gather(1, window)
        return end & (col < v[:, None])

    def _new_entropies(
        self, ex: dict, ids: torch.Tensor, v: torch.Tensor, r: torch.Tensor, restart: torch.Tensor
    ) -> torch.Tensor:
        """H (B, n), fp16-rounded, at the first v[b] new bytes of each row b, with exactly the
        context `entropies` gives them; moves ex["kv"] past those bytes.

        Each row's new bytes split at chunk starts into runs. The first run of a row that
        continues its chunk is one batched cached step for all rows (rows with a shorter
        run are rolled back). Every other run starts a chunk: its piece is the chunk's
        overlap bytes (from the row's history or this call) followed by the run. The last
        such piece of each row is prefilled into a fresh batched cache whose rows replace
        the restarting rows, in a copy of the storage; earlier pieces (a call longer than a
        chunk, e.g. a prompt) need only their entropies: one batched forward, no cache.
        """
        B, n = ids.shape
        dev, L = ids.device, self.context
        model = self._model_on(dev)
        cache = ex["kv"].cache
        if cache is None:  # 2L positions: a row's chunk plus the longest run written past it
            cache = model.new_cache(B, 2 * L, max_step=L)
        cache = cache.clone()  # pointers only: never move a cache another state may hold
        cache.hi = min(cache.hi, L)  # no row holds more than its chunk (`select` keeps a max)
        first = torch.where(restart.any(1), restart.int().argmax(1), v)  # (B,) run 0's length
        m, m_min, n_restart = torch.stack([first.max(), first.min(), restart.sum()]).tolist()
        H = torch.zeros(B, n, device=dev)
        with torch.autocast(dev.type, enabled=False):
            if m:
                cut = None if m_min == m else first  # rows with a shorter run roll back
                logits = model.step(ids[:, :m], cache, n_valid=cut)  # (B, m, 1, V)
                H[:, :m] = _entropy_bits(logits[:, :, 0])
            if n_restart:
                cache = self._restart(model, cache, ex["history"].to(dev), ids, v, r, restart, H)
        ex["kv"] = EntropyKV(cache)
        return H.half().float()

    def _restart(self, model, cache, history, ids, v, r, restart, H):
        """The runs that start a chunk (see `_new_entropies`): writes their entropies into
        H (B, n) and returns the cache with each restarting row's last chunk in it."""
        B, n = ids.shape
        dev, L, O = ids.device, self.context, self.overlap
        rb, ri = restart.nonzero(as_tuple=True)  # (P,) the runs, row-major
        last = torch.ones_like(rb, dtype=torch.bool)  # the row's last run in this call
        last[:-1] = rb[1:] != rb[:-1]
        end = torch.where(last, v[rb], ri.roll(-1))  # (P,) exclusive end column of each run
        p0 = torch.where(r[rb, ri] > 0, O, 0)  # overlap bytes before the run
        plen = p0 + end - ri  # (P,) <= L
        u = torch.arange(L, device=dev)
        src = (L + ri - p0)[:, None] + u  # (P, L) into [history, ids]
        x = torch.cat([history, ids], 1)[rb[:, None], src.clamp(max=L + n - 1)]
        x = torch.where(u < plen[:, None], x, PAD)
        Hp = torch.zeros(len(rb), L, device=dev)
        fin, mid = last.nonzero().flatten(), (~last).nonzero().flatten()
        w = int(plen.max())
        group = max(1, 16384 // L)  # pieces per forward
        for g in range(0, len(mid), group):  # chunks that end inside this call: entropies only
            j = mid[g : g + group]
            Hp[j] = _forward_padded(model, x[j], (u >= plen[j, None]).long())
        # the last chunk of each restarting row: prefilled, its KV replaces the row's
        fresh = model.new_cache(len(fin), cache.max_len, max_step=cache.max_step)
        Hp[fin, :w] = _entropy_bits(model.step(x[fin, :w], fresh, n_valid=plen[fin])[:, :, 0])
        keep = (u >= p0[:, None]) & (u < plen[:, None])  # the run's own positions
        cols = (ri - p0)[:, None] + u
        H[rb[:, None].expand(-1, L)[keep], cols[keep]] = Hp[keep]

        rows = rb[fin]
        kv, new = cache.kv, fresh.kv
        out = cache.clone()
        out.kv = dataclasses.replace(
            kv,
            k=[x.index_copy(0, rows, y) for x, y in zip(kv.k, new.k)],
            v=[x.index_copy(0, rows, y) for x, y in zip(kv.v, new.v)],
            pos=kv.pos.index_copy(0, rows, new.pos),
            doc=kv.doc.index_copy(0, rows, new.doc),
        )
        out.length = cache.length.index_copy(0, rows, fresh.length)
        out.doc = cache.doc.index_copy(0, rows, fresh.doc)
        if cache.seen is not None:  # an n-gram model's bytes by position, copied like the KV
            out.seen = cache.seen.index_copy(1, rows, fresh.seen)
        out.hi = min(max(cache.hi, w), self.context)
        return out

    # -------------------------------------------------------------- calibration

    def calibrate(
        self,
        corpus,
        target_bytes_per_patch: float,
        max_bytes: int | None = CALIBRATION_BYTES,
        tol: float = CALIBRATION_TOL,
        progress: bool = False,
        sample: int = 0,
    ) -> Calibration:
        """Set the threshold so that mean bytes-per-patch on `corpus` is within `tol` of the target.

        `corpus` is a `ByteCorpus` split, the *training* split (never the evaluation's; see
        `bytelm.patchers.entropy_rule`): its calibration sample, `max_bytes` positions in
        windows spread over the split (`EntropyCache.calibration_sample`), with entropies
        from the on-disk cache. Or a pair of 1-D tensors (ids, entropies) over a packed
        stream. Returns the `Calibration`.
        """
        if isinstance(corpus, tuple):
            ids, H = corpus
        else:
            cache = EntropyCache(corpus, self)
            ids, H = cache.calibration_sample(max_bytes, sample, progress=progress)
        result = calibrate_threshold(
            ids, H, target_bytes_per_patch, self.mode, self.max_patch_len, self.delta, tol
        )
        self.threshold = result.threshold
        return result
