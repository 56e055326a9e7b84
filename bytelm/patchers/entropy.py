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

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bytelm.patchers.base import PatcherState, ends_to_lengths
from bytelm.vocab import BOS, EOS, PAD

DEFAULT_ENTROPY_MODEL = (
    "runs/entropy/checkpoint"  # where `make demo` / `bytelm train-entropy` put it
)
MODES = ("global", "monotonic", "both")
CALIBRATION_TOL = 0.02  # the documented promise: held-out mean within 2% of the target
_NEXT = torch.tensor([*range(256), EOS])  # ids that can follow a byte: BOS and PAD never do


class CalibrationError(ValueError):
    """A target bytes-per-patch that the patcher cannot reach on the given data."""


# ----------------------------------------------------------------------------- entropy model


def load_entropy_model(path: str | Path) -> tuple[torch.nn.Module, int]:
    """An entropy-model checkpoint -> (ByteTransformer in eval mode, its context length)."""
    from bytelm.checkpoint import load_model

    path = Path(path or DEFAULT_ENTROPY_MODEL)
    if not path.is_dir():
        raise ValueError(
            f"bytelm: no entropy model at '{path}'; train one with `bytelm train-entropy` "
            f"(`make demo` does) or set --model.patcher.entropy_model"
        )
    model, cfg = load_model(path)
    if cfg.arch != "transformer":
        raise ValueError(
            f"bytelm: '{path}' is a {cfg.arch} checkpoint; the entropy model must be a plain "
            "ByteTransformer (train it with `bytelm train-entropy`)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg.data.seq_len


def chunk_plan(n: int, context: int, overlap: int) -> list[tuple[int, int, int]]:
    """The chunks that cover n positions of one segment: (start, end, keep_from), relative.

    Chunk k spans [kS, kS + L) and keeps [kS + O, kS + L) (chunk 0 keeps from 0).
    Position r is kept by chunk max(0, (r - O) // S).
    """
    stride = context - overlap
    plan, s = [(0, min(n, context), 0)], stride
    while s + overlap < n:
        plan.append((s, min(s + context, n), s + overlap))
        s += stride
    return plan


def chunk_start(r: int, context: int, overlap: int) -> int:
    """Where the context of relative position r starts (see `chunk_plan`)."""
    stride = context - overlap
    return max(0, (r - overlap) // stride) * stride


def _entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """logits (..., V) -> entropy in bits (...) over the ids that can follow a byte, fp32."""
    logits = logits.float().index_select(-1, _NEXT.to(logits.device))
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)


@torch.no_grad()
def _forward_pieces(model, pieces: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Entropies (fp16-rounded, fp32) at every position of each 1-D id sequence, each its own context.

    Pieces are batched `rows` at a time, right-padded with PAD in a separate segment;
    positions restart at 0 in every piece, so a piece's result does not depend on
    what it is batched with.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(pieces)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))  # similar lengths together
    with torch.autocast(device.type, enabled=False):
        for i in range(0, len(order), rows):
            idx = order[i : i + rows]
            T = len(pieces[idx[0]])
            x = torch.full((len(idx), T), PAD, dtype=torch.long)
            seg = torch.ones(len(idx), T, dtype=torch.long)
            for row, j in enumerate(idx):
                x[row, : len(pieces[j])] = pieces[j]
                seg[row, : len(pieces[j])] = 0
            x, seg = x.to(device), seg.to(device)
            pos = torch.arange(T, device=device).expand(len(idx), T)
            h = model.stack(model.embed(x), seg, pos, model.attn_backend)  # (n, T, D)
            H = _entropy_bits(model.unembed(model.norm(h))).half().float().cpu()  # (n, T)
            for row, j in enumerate(idx):
                out[j] = H[row, : len(pieces[j])]
    return out  # type: ignore[return-value]


def segment_entropies(
    model, segments: list[torch.Tensor], context: int, overlap: int, max_tokens: int = 16384
) -> list[torch.Tensor]:
    """H (bits, fp16-rounded) at every position of each segment; each segment is its own document.

    Long segments are chunked with overlap (see `chunk_plan`).
    """
    pieces, where = [], []
    for i, s in enumerate(segments):
        for a, b, keep in chunk_plan(len(s), context, overlap):
            pieces.append(s[a:b])
            where.append((i, a, b, keep))
    H = _forward_pieces(model, pieces, rows=max(1, max_tokens // context))
    out = [torch.empty(len(s), dtype=torch.float32) for s in segments]
    for (i, a, b, keep), h in zip(where, H):
        out[i][keep:b] = h[keep - a :]
    return out


def row_segments(ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every context segment of a (B, T) batch: a row start or a BOS
    opens one; trailing PAD is left out."""
    out = []
    n_real = (ids != PAD).sum(-1).tolist()
    for b, n in enumerate(n_real):
        starts = [0] + [t for t in (ids[b, :n] == BOS).nonzero().flatten().tolist() if t > 0]
        out += [(b, s, e) for s, e in zip(starts, starts[1:] + [n])]
    return out


# ----------------------------------------------------------------------------- the rule


def _diff(H: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> H_t - H_{t-1}, with 0 at a row start and at BOS (a new document has no H_{t-1})."""
    prev = torch.cat([H[:, :1], H[:, :-1]], dim=1)
    return H - torch.where(ids == BOS, H, prev)


def fire_rule(
    H: torch.Tensor, ids: torch.Tensor, mode: str, threshold: float, delta: float = 0.0
) -> torch.Tensor:
    """(B, T) entropies and ids -> (B, T) bool: the entropy rule fires at t (no max_len, no EOS)."""
    diff = _diff(H, ids)
    if mode == "global":
        return H > threshold
    if mode == "monotonic":
        return diff > threshold
    return (H > threshold) & (diff > delta)


def ends_from_fire(fire: torch.Tensor, ids: torch.Tensor, max_patch_len: int) -> torch.Tensor:
    """Rule fires (B, T) -> ends (B, T), adding EOS ends and `max_patch_len` cuts, vectorised.

    The entropy rule does not depend on the patch state, so between two natural
    ends (rule or EOS) the forced cuts fall every max_patch_len bytes: byte t is
    forced when it is the (k * max_patch_len)-th byte after the last natural end.
    """
    B, T = ids.shape
    natural = fire | (ids == EOS)
    pos = torch.arange(T, device=ids.device).expand(B, T)
    last = torch.where(natural, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    prev_end = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
    return natural | ((pos - prev_end) % max_patch_len == 0)


# ----------------------------------------------------------------------------- the patcher


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


@dataclass
class Calibration:
    threshold: float
    measured_bytes_per_patch: float  # on the calibration data, with the real patcher
    target_bytes_per_patch: float
    method: str  # "quantile" (exact) or "bisection"
    n_positions: int  # stream positions (bytes + BOS/EOS) it was measured on


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
        max_patch_len: int = 16,
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
    def from_config(cls, cfg) -> EntropyPatcher:
        """A `PatcherConfig` -> patcher. Uncalibrated (threshold None) when the config asks for a
        target it has not been calibrated to yet."""
        model, context = load_entropy_model(cfg.entropy_model or DEFAULT_ENTROPY_MODEL)
        calibrated = cfg.target_bytes_per_patch == 0 or cfg.measured_bytes_per_patch > 0
        return cls(
            model,
            context,
            cfg.mode,
            cfg.threshold if calibrated else None,
            cfg.max_patch_len,
            cfg.delta,
            source=cfg.entropy_model or DEFAULT_ENTROPY_MODEL,
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
        max_bytes: int | None = 262144,
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
            from bytelm.patchers.entropy_cache import EntropyCache

            ids, H = EntropyCache(corpus, self).sample(max_bytes, progress=progress)
        result = calibrate_threshold(
            ids, H, target_bytes_per_patch, self.mode, self.max_patch_len, self.delta, tol
        )
        self.threshold = result.threshold
        return result


# ----------------------------------------------------------------------------- calibration


def mean_bytes_per_patch(
    ids: torch.Tensor, H: torch.Tensor, mode: str, threshold: float, max_patch_len: int, delta=0.0
) -> float:
    """Mean patch length of the real patcher on a packed stream (1-D ids and entropies)."""
    ends = ends_from_fire(
        fire_rule(H[None], ids[None], mode, threshold, delta), ids[None], max_patch_len
    )
    n_patches = int(ends.sum()) + int(not bool(ends[0, -1]))  # a trailing open patch counts
    return ids.numel() / n_patches


def calibrate_threshold(
    ids: torch.Tensor,
    H: torch.Tensor,
    target: float,
    mode: str,
    max_patch_len: int,
    delta: float = 0.0,
    tol: float = CALIBRATION_TOL,
) -> Calibration:
    """The threshold whose real mean bytes-per-patch on (ids, H) is closest to `target`.

    Global mode: the exact quantile of H (k = #positions/target - #EOS positions must
    exceed it); kept when max_patch_len does not move the mean by more than tol/4.
    Otherwise (monotonic, both, or max_patch_len cutting many patches) a bisection over
    the sorted distinct candidate values with the real patcher, which is exact too:
    the patch count only falls as the threshold rises.
    Raises `CalibrationError` for a target below 1 or beyond what the mode and
    max_patch_len can reach on this data.
    """
    ids, H = ids.flatten().cpu(), H.flatten().float().cpu()
    N = ids.numel()
    if target < 1:
        raise CalibrationError(f"bytelm: target bytes per patch must be >= 1, got {target}")
    # the reachable range: threshold -> +inf (fewest patches) and -inf (most)
    hi = mean_bytes_per_patch(ids, H, mode, math.inf, max_patch_len, delta)
    lo = mean_bytes_per_patch(ids, H, mode, -math.inf, max_patch_len, delta)
    if target > hi * (1 + tol):
        why = f"max_patch_len={max_patch_len} and one patch per EOS"
        raise CalibrationError(
            f"bytelm: target {target:g} bytes per patch is above what {why} allow on this data "
            f"(at most {hi:.2f}); raise patcher.max_patch_len or lower the target"
        )
    if target < lo * (1 - tol):
        raise CalibrationError(
            f"bytelm: target {target:g} bytes per patch is below what mode {mode!r} can reach on "
            f"this data (at least {lo:.2f}); use mode 'global' or lower patcher.delta"
        )
    measure = lambda th: mean_bytes_per_patch(ids, H, mode, th, max_patch_len, delta)

    if mode == "global":
        not_eos = H[ids != EOS]
        k = int(round(N / target)) - int((ids == EOS).sum())  # how many rule fires we need
        theta = _quantile_threshold(not_eos, k)
        got = measure(theta)
        if abs(got / target - 1) <= tol / 4:
            return Calibration(theta, got, target, "quantile", N)

    values = _diff(H[None], ids[None])[0] if mode == "monotonic" else H
    cands = _candidates(
        values
    )  # ascending thresholds between distinct values, -inf first, +inf last
    # the mean is non-decreasing in the threshold: find the first candidate reaching the target
    a, b = 0, len(cands) - 1
    while a < b:
        m = (a + b) // 2
        if measure(cands[m]) >= target:
            b = m
        else:
            a = m + 1
    best = min({a, max(a - 1, 0)}, key=lambda i: abs(measure(cands[i]) - target))
    theta, got = cands[best], measure(cands[best])
    if abs(got / target - 1) > tol:
        why = "calibrate on more held-out data"
        if len(cands) < 64:
            why = f"its entropies take only {len(cands) - 2} distinct values: is the entropy model trained?"
        raise CalibrationError(
            f"bytelm: cannot calibrate to {target:g} bytes per patch within {tol:.0%} on "
            f"{N:,} positions (closest: {got:.3f}); {why}"
        )
    return Calibration(theta, got, target, "bisection", N)


def _candidates(values: torch.Tensor) -> list[float]:
    """-inf, the midpoints between consecutive distinct values, +inf (as Python floats)."""
    u = np.unique(values.numpy().astype(np.float64))
    mids = ((u[:-1] + u[1:]) / 2).tolist()
    return [-math.inf, *mids, math.inf]


def _quantile_threshold(values: torch.Tensor, k: int) -> float:
    """A threshold that k of `values` exceed, as nearly as ties allow (between distinct values)."""
    u = np.unique(values.numpy().astype(np.float64))  # ascending
    if k <= 0 or len(u) == 0:
        return math.inf
    above = len(values) - np.searchsorted(np.sort(values.numpy().astype(np.float64)), u, "right")
    # above[i] = how many values exceed u[i]; thresholds between u[i] and u[i+1] give above[i]
    i = int(np.argmin(np.abs(above - k)))
    return float((u[i] + u[i + 1]) / 2) if i + 1 < len(u) else math.inf


# ----------------------------------------------------------------------------- checkpoints

ENTROPY_DIR = "entropy_model"  # where a ByteLM checkpoint keeps its entropy model


def _uses_entropy(cfg) -> bool:
    return getattr(cfg, "arch", None) == "bytelm" and cfg.model.patcher.name == "entropy"


def bundle_entropy_model(cfg, ckpt_dir: str | Path) -> None:
    """Copy the entropy model a ByteLM run uses into its checkpoint dir (no-op for other runs)."""
    import shutil

    from bytelm.checkpoint import CONFIG_FILE, MODEL_FILE

    if not _uses_entropy(cfg):
        return
    src = Path(cfg.model.patcher.entropy_model or DEFAULT_ENTROPY_MODEL)
    if not (src / MODEL_FILE).is_file():
        raise ValueError(f"bytelm: the entropy model '{src}' is gone; cannot bundle it")
    dst = Path(ckpt_dir) / ENTROPY_DIR
    dst.mkdir(exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copyfile(src / name, dst / name)


def resolve_bundled(cfg, ckpt_dir: str | Path):
    """A ByteLM config loaded from a checkpoint -> the same config reading its bundled entropy model."""
    import dataclasses

    bundled = Path(ckpt_dir) / ENTROPY_DIR
    if not _uses_entropy(cfg) or not bundled.is_dir():
        return cfg
    pc = dataclasses.replace(cfg.model.patcher, entropy_model=str(bundled))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, patcher=pc))
