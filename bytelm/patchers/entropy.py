"""Entropy patching (BLT): a small byte LM decides where patches start.

The entropy model is a frozen `ByteTransformer` trained as a byte LM. At every
position t it gives H_t, the entropy in bits of p(x_{t+1} | x_<=t). Byte t ends
its patch (so byte t+1 starts one) when

    global      H_t > threshold
    monotonic   H_t - H_{t-1} > threshold
    both        H_t > threshold and H_t - H_{t-1} > delta

or when the open patch reaches `max_patch_len`, or when byte t is EOS. H_t reads
bytes <= t only, so the patcher is causal. At a segment start (BOS, or the first
byte of a row) H_{t-1} is taken to be H_t.

Context. Entropies are computed per document: the context resets at BOS. A
document longer than the entropy model's context L is cut into chunks
[kS, kS + L) with stride S = L - O; chunk 0 keeps all its positions and chunk k
keeps its last S, so every position sees at least O = L // 4 bytes of context
(or its whole prefix) and no position is ever computed with a hard reset. The
same chunking is used by `ends` (on each row), by the on-disk cache
(`bytelm.patchers.entropy_cache`, on whole documents) and by `step`.

Incremental. `step` carries one KV cache of the entropy model per row (a fresh
one, prefilled with the O overlap bytes, at each chunk start), so generation
pays one cached forward per byte instead of a forward over the context.

Precision. Entropies are rounded to float16 everywhere (the cache stores
float16), and calibration puts θ between two representable values, so the
batched, cached and incremental paths agree unless float32 rounding noise moves
an entropy across a float16 rounding boundary right next to θ. Measured: the
cached and batched forwards disagree on about 1 position in 400 by one float16
ulp, so a patch decision differs on the order of once per 10^5 bytes.
"""

from __future__ import annotations

import torch

from bytelm.config import CALIBRATION_BYTES, MAX_PATCH_LEN
from bytelm.config import PATCHER_MODES as MODES
from bytelm.patchers.base import PatcherState, ends_to_lengths
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
    _forward_pieces,
    chunk_plan,
    chunk_start,
    row_segments,
    segment_entropies,
)
from bytelm.vocab import BOS, EOS, PAD


class RowCaches:
    """One entropy-model KV cache per row (each restarts at its own chunk boundaries).

    Follows the patcher-state protocol of `bytelm.model.cache`: `clone()` copies the
    pointers and shares the position-addressed storage, `select(mask, other)` merges
    row-wise. A chunk restart allocates a new cache, so a clone never sees its storage
    overwritten by a restart that happened after it.
    """

    def __init__(self, caches: list):
        self.caches = caches

    def clone(self) -> RowCaches:
        return RowCaches([None if c is None else c.clone() for c in self.caches])

    def select(self, mask: torch.Tensor, other: RowCaches) -> RowCaches:
        return RowCaches(
            [a if m else b for a, b, m in zip(self.caches, other.caches, mask.tolist())]
        )


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

    def ends(self, byte_ids: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, T) bool: byte t ends its patch. Depends only on bytes <= t.

        `entropies` (B, T), e.g. read from the training cache, skips the entropy model.
        """
        theta = self._theta()
        H = self.entropies(byte_ids) if entropies is None else entropies.to(byte_ids.device)
        assert H.shape == byte_ids.shape, (
            f"entropies {tuple(H.shape)} != ids {tuple(byte_ids.shape)}"
        )
        fire = fire_rule(H.float(), byte_ids, self.mode, theta, self.delta)
        return ends_from_fire(fire, byte_ids, self.max_patch_len)

    def patch(self, byte_ids: torch.Tensor, entropies: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> patch_lengths (B, P). PAD bytes at the end of a row are not patched."""
        n = (byte_ids != PAD).sum(-1)
        return ends_to_lengths(self.ends(byte_ids, entropies), n)

    # -------------------------------------------------------------- incremental

    def start(self, batch: int, device=None) -> PatcherState:
        """Per row: the open patch length, the last byte, the relative position in the document,
        H_{t-1}, the document's last `context` bytes and the entropy model's KV cache."""
        return PatcherState(
            patch_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
            extra={
                "r": torch.full((batch,), -1, dtype=torch.long),  # relative position, -1 = none
                "prev_H": torch.zeros(batch),
                # oldest first; a tensor, so snapshots copy it
                "history": torch.full((batch, self.context), PAD, dtype=torch.long),
                "kv": RowCaches([None] * batch),
            },
        )

    @torch.no_grad()
    def _step_entropy(self, state: PatcherState, b: int, device) -> float:
        """H at the newest byte of row b, with exactly the context `entropies` gives it.

        Within a chunk the row's KV cache takes one byte per call. When a chunk starts
        (a new document, or every S bytes past the first L), the row gets a fresh cache,
        prefilled with the O bytes of overlap: positions restart at 0 as in `entropies`,
        and older snapshots of the state keep their own cache storage intact.
        """
        ex = state.extra
        r = int(ex["r"][b])
        model = self._model_on(device)
        L, O = self.context, self.overlap
        fresh = r == 0 or ex["kv"].caches[b] is None or (r >= L and (r - O) % (L - O) == 0)
        # never mutate a cache another state may share (PatcherState.clone copies tensors only)
        caches = list(ex["kv"].caches)
        with torch.autocast(device.type, enabled=False):
            if fresh:
                ctx = ex["history"][b, L - (r - chunk_start(r, L, O) + 1) :].to(device)
                caches[b] = model.new_cache(1, L, max_step=min(64, L))
                logits = model.prefill(ctx[None], caches[b])[:, -1]  # (1, 1, V)
            else:
                caches[b] = caches[b].clone()  # pointers only; storage is position-addressed
                c = ex["history"][b, -1:].to(device)
                logits = model.step(c[None], caches[b])[:, -1]
        ex["kv"] = RowCaches(caches)
        return float(_entropy_bits(logits[:, 0]).half().float())

    def step(self, state: PatcherState, new_ids: torch.Tensor) -> torch.Tensor:
        """Feed one byte per row (B,) or several (B, n); mutates `state`.

        Returns, per fed byte, whether the *next* byte starts a new patch; equal to `ends`
        on the concatenation of everything fed.
        """
        if new_ids.dim() == 1:
            return self.step(state, new_ids[:, None])[:, 0]
        theta = self._theta()
        B, n = new_ids.shape
        ex = state.extra
        out = torch.zeros(B, n, dtype=torch.bool, device=new_ids.device)
        for i in range(n):
            cur = new_ids[:, i].cpu()
            for b in range(B):
                c = int(cur[b])
                if c == BOS or int(ex["r"][b]) < 0:  # a new context segment
                    ex["r"][b] = 0
                    ex["history"][b] = PAD
                else:
                    ex["r"][b] += 1
                ex["history"][b] = torch.cat([ex["history"][b, 1:], cur[b : b + 1]])
                H = self._step_entropy(state, b, new_ids.device)
                prev_H = H if int(ex["r"][b]) == 0 else float(ex["prev_H"][b])
                ex["prev_H"][b] = H
                Ht, dt = torch.tensor([H]), torch.tensor([H - prev_H])
                if self.mode == "global":
                    fire = bool(Ht > theta)
                elif self.mode == "monotonic":
                    fire = bool(dt > theta)
                else:
                    fire = bool(Ht > theta) and bool(dt > self.delta)
                state.patch_len[b] += 1
                end = fire or int(state.patch_len[b]) >= self.max_patch_len or c == EOS
                if end:
                    state.patch_len[b] = 0
                state.prev[b] = c
                out[b, i] = end
        return out

    # -------------------------------------------------------------- calibration

    def calibrate(
        self,
        corpus,
        target_bytes_per_patch: float,
        max_bytes: int | None = CALIBRATION_BYTES,
        tol: float = CALIBRATION_TOL,
        progress: bool = False,
    ) -> Calibration:
        """Set the threshold so that mean bytes-per-patch on `corpus` is within `tol` of the target.

        `corpus` is a held-out `ByteCorpus` split (whole documents from its start, up to
        `max_bytes` stream positions; entropies come from the on-disk cache) or a pair of
        1-D tensors (ids, entropies) over a packed stream. Returns the `Calibration`.
        """
        if isinstance(corpus, tuple):
            ids, H = corpus
        else:
            ids, H = EntropyCache(corpus, self).sample(max_bytes, progress=progress)
        result = calibrate_threshold(
            ids, H, target_bytes_per_patch, self.mode, self.max_patch_len, self.delta, tol
        )
        self.threshold = result.threshold
        return result
