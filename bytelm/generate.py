"""Text generation: cached incremental decoding and self-speculative decoding.

    result = bytelm.generate(model, b"def ", max_new_bytes=200, temperature=0.0,
                             speculative=True)
    result.bytes, result.stats.bytes_per_forward, result.stats.accept_rate

Plain decoding feeds one byte per forward pass through `model.decode`, with
static caches, so the cost of a byte does not grow with the text (the local
stacks are windowed; the latent transformer steps once per patch).

Self-speculative decoding (Medusa-style drafting, Leviathan et al. 2023
verification): at the last position, head k (k >= 2) predicts byte t+k, so
heads 2..D+1 draft D bytes. One `decode` call over [next byte, drafts]
scores them all; `bytelm.kernels.verify` keeps the longest accepted prefix and
picks the byte after it, and `cache.rollback` forgets the rest, so each forward
pass emits between 1 and D+1 bytes. Greedy output is identical to plain greedy
decoding; sampled output has the same distribution as plain sampling (lossless
rejection sampling against the drafts' own distributions q).

A verify block stays inside one patch (`decode(..., until_close=True)`): the forward pass
decodes the block only up to the first draft that closes a patch. That draft is still
verified (the logits before it are there); if it is accepted, it starts the next block,
and no byte is drawn after it in this pass. The latent transformer then steps only for a
block's first byte, which is already accepted: once per patch, as in plain decoding.
Whether a draft is verified depends only on the drafts before it, so the output stays
lossless. `cross_patches=True` verifies every draft across patch ends: more bytes per
forward pass, but the latent steps for patches whose closing draft may be rejected (on
the CPU that costs more than it gains: `benchmarks/results/drafting_*.md`).

Sampling: temperature 0 is greedy. Top-k and top-p act on the tempered
distribution. BOS and PAD are never generated; EOS ends a row and is not part
of its bytes. A stop string ends a row and is kept in its bytes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from bytelm.patchers.base import longest_patch
from bytelm.vocab import BOS, EOS, PAD


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. The defaults of `generate` and of `bytelm generate` come from here."""

    max_new_bytes: int = 256
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # keep the k most likely bytes; 0 = all
    top_p: float = 1.0  # keep the smallest set with this much probability; 1 = all
    speculative: bool = False
    # bytes drafted per forward pass; 0 = every extra head (K - 1). Blocks that stop at patch
    # ends draft at most the longest patch's length - 1 (fixed:4: 3): no more fit in a block
    draft_heads: int = 0
    cross_patches: bool = False  # a verify block may run past the open patch (see `generate`)
    seed: int = 0
    stop: tuple[bytes, ...] = ()  # a row stops after any of these byte strings

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, (bytes, str)) else tuple(self.stop or ())
        stop = tuple(s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop)
        object.__setattr__(self, "stop", stop)
        checks = [
            (self.max_new_bytes >= 0, f"max_new_bytes must be >= 0, got {self.max_new_bytes}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}"),
            (self.draft_heads >= 0, f"draft_heads must be >= 0, got {self.draft_heads}"),
            (all(self.stop), "stop strings must not be empty"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"bytelm: {msg}")


@dataclass
class GenerationStats:
    """What a generate call measured. Rates are per row-forward: a forward pass counts once
    for every row still generating in it."""

    new_bytes: int = 0  # over all rows
    forward_passes: int = 0  # prefill + decode calls
    row_forwards: int = 0  # forward passes summed over the rows still generating
    draft_heads: int = 0
    drafted: list[int] = field(default_factory=list)  # per draft head: drafts verified
    accepted: list[int] = field(default_factory=list)  # per draft head: drafts accepted
    prefill_seconds: float = 0.0
    seconds: float = 0.0  # the whole call, prefill included

    @property
    def bytes_per_forward(self) -> float:
        return self.new_bytes / max(self.row_forwards, 1)

    @property
    def accept_rate(self) -> list[float]:
        """Per draft head i (drafting byte t+i+1): P(accepted | the drafts before it were)."""
        return [a / max(d, 1) for a, d in zip(self.accepted, self.drafted)]

    @property
    def bytes_per_s(self) -> float:
        return self.new_bytes / max(self.seconds, 1e-9)

    def summary(self) -> str:
        s = (
            f"{self.new_bytes} bytes in {self.seconds:.2f} s ({self.bytes_per_s:.1f} bytes/s, "
            f"prefill {self.prefill_seconds:.2f} s), {self.forward_passes} forward passes, "
            f"{self.bytes_per_forward:.2f} bytes per forward pass"
        )
        if self.draft_heads:
            rates = " ".join(f"{r:.2f}" for r in self.accept_rate)
            s += f", acceptance per draft head: {rates}"
        return s


@dataclass
class GenerationResult:
    """`bytes`: the new bytes (a list when the prompt was a list). `finish`: per row,
    "eos", "stop" or "length"."""

    bytes: bytes | list[bytes]
    stats: GenerationStats
    finish: list[str]


# ----------------------------------------------------------------- sampling


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """logits (..., V) -> fp32 logits with -inf where a byte may not be generated.

    BOS and PAD never may; with temperature > 0, neither may bytes outside the
    top-k or top-p set of the tempered distribution. softmax(result / temperature)
    is the distribution sampling draws from.
    """
    x = logits.float().index_fill(-1, _never(logits.device), float("-inf"))  # a copy
    if temperature == 0:
        return x
    if top_k and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_x / temperature, dim=-1)
        # drop a byte when the bytes more likely than it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x


@functools.cache
def _never(device: torch.device) -> torch.Tensor:
    """The ids no generation may draw (BOS, PAD), as an index tensor made once per device."""
    return torch.tensor([BOS, PAD], device=device)


def _draw(x: torch.Tensor, temperature: float, g: torch.Generator | None) -> torch.Tensor:
    """Filtered logits (..., V) -> samples (...), greedy when temperature == 0."""
    if temperature == 0:
        return x.argmax(-1)
    p = torch.softmax(x / temperature, dim=-1)
    return torch.multinomial(p.reshape(-1, p.shape[-1]), 1, generator=g).view(p.shape[:-1])


def sample_logits(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). Greedy when temperature == 0. BOS/PAD are never sampled."""
    return _draw(filter_logits(logits, temperature, top_k, top_p), temperature, generator)


# --------------------------------------------------------------- generation


def generate(
    model: torch.nn.Module,
    prompt_bytes: bytes | str | Sequence[bytes | str],
    max_new_bytes: int = GenerationConfig.max_new_bytes,
    temperature: float = GenerationConfig.temperature,
    top_k: int = GenerationConfig.top_k,
    top_p: float = GenerationConfig.top_p,
    speculative: bool = GenerationConfig.speculative,
    seed: int = GenerationConfig.seed,
    draft_heads: int = GenerationConfig.draft_heads,
    stop: bytes | str | Sequence[bytes | str] = GenerationConfig.stop,
    cross_patches: bool = GenerationConfig.cross_patches,
    stream: bool = False,
    max_len: int | None = None,
    max_step: int = 64,
    compile: bool = False,
) -> GenerationResult | GenerationStream:
    """Continue each prompt by up to `max_new_bytes` bytes.

    prompt_bytes: one prompt (bytes or str) or a list of them (a batch; rows may
    differ in length). Each prompt is read as the start of a document: BOS +
    prompt; an empty prompt generates from BOS. speculative: self-speculative
    decoding with `draft_heads` drafts per forward pass (default every extra
    head). max_len: the caches' capacity in bytes (default: just enough); a
    prompt that does not fit is an error, never silently truncated. max_step:
    bytes per prefill call. stream: return a `GenerationStream`, which yields
    new bytes as soon as they are accepted (bytes, or a list of bytes per row
    for a batch) and holds the result once exhausted. compile: run a ByteLM's decode
    calls through its compiled fixed-shape step (`bytelm.model.decode_compile`: CUDA graphs
    on CUDA); the first calls pay the compilation.
    """
    cfg = GenerationConfig(
        max_new_bytes, temperature, top_k, top_p, speculative, draft_heads, cross_patches, seed,
        stop,
    )  # fmt: skip
    batched = not isinstance(prompt_bytes, (bytes, bytearray, str))
    prompts = list(prompt_bytes) if batched else [prompt_bytes]
    prompts = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in prompts]
    if not prompts:
        raise ValueError("bytelm: generate needs at least one prompt")
    sync_every = 1 if stream else SYNC_EVERY
    run = _run(model, prompts, cfg, max_len, max_step, sync_every, compile)
    s = GenerationStream(run, batched)
    if stream:
        return s
    for _ in s:
        pass
    return s.result


class GenerationStream:
    """Iterate to get new bytes as they are accepted; `.result` once exhausted."""

    def __init__(self, gen: Iterator, batched: bool):
        self._gen, self._batched = gen, batched
        self.result: GenerationResult | None = None

    def __iter__(self):
        while True:
            try:
                chunk = next(self._gen)
            except StopIteration as stop:
                res = stop.value
                break
            yield chunk if self._batched else chunk[0]
        if not self._batched:
            res.bytes = res.bytes[0]
        self.result = res


def _draft_count(model, cfg: GenerationConfig) -> int:
    if not cfg.speculative:
        return 0
    K = model.n_heads_out
    if K < 2:
        raise ValueError(
            "bytelm: speculative decoding needs extra output heads, and this model has one "
            "(train it with --model.out_heads.n 2 or more)"
        )
    if cfg.draft_heads > K - 1:
        raise ValueError(
            f"bytelm: draft_heads must lie in 1..{K - 1} for this model ({K} heads), "
            f"got {cfg.draft_heads}"
        )
    D = cfg.draft_heads or K - 1
    return D if cfg.cross_patches else min(D, patch_block_drafts(model))


def patch_block_drafts(model) -> int:
    """The most drafts a verify block that stops at patch ends can use: it holds one patch,
    so the longest patch's length - 1 (the byte after them may close it)."""
    return max(longest_patch(model.patcher) - 1, 1)


# Without streaming, the host reads back which rows are done once per SYNC_EVERY forward
# passes: the passes in between run without waiting for the device, and at most
# SYNC_EVERY - 1 passes run after the last row finished.
SYNC_EVERY = 16
FINISH = ("length", "eos", "stop")
COMPILE_BUCKET = 256  # with compile, the caches' default max_len rounds up to a multiple  # a row's finish reason, as its index on the device


class _Rows:
    """The rows' output, kept on the device: bytes (B, N + D + 1), counts (B,), which rows
    are done and why. `emit` appends a forward pass's accepted bytes and applies EOS, stop
    strings and the length limit with a fixed number of tensor ops: no host sync."""

    def __init__(self, B: int, cfg: GenerationConfig, D: int, dev):
        self.N = cfg.max_new_bytes
        self.buf = torch.zeros(B, self.N + D + 1, dtype=torch.long, device=dev)
        self.count = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.reason = torch.zeros(B, dtype=torch.long, device=dev)
        self.stops = [torch.tensor(list(s), dtype=torch.long, device=dev) for s in cfg.stop]

    def emit(self, new: torch.Tensor, n_new: torch.Tensor) -> None:
        """Append the first n_new[r] (B,) of new (B, J) to each row that is not done."""
        B, J = new.shape
        j = torch.arange(J, device=new.device)
        valid = (j < n_new[:, None]) & ~self.done[:, None]  # (B, J)
        at = self.count[:, None] + j  # (B, J) where each new byte goes (< N + D + 1)
        self.buf.scatter_(1, at, new)  # bytes past the kept ones are overwritten later
        eos = new == EOS
        stop = torch.zeros_like(eos)
        for s in self.stops:  # does the row end with s after byte j?
            L = len(s)
            win = self.buf.gather(1, (at[..., None] - L + 1 + torch.arange(L, device=new.device))
                                  .clamp(min=0).flatten(1)).view(B, J, L)  # fmt: skip
            stop |= (win == s).all(-1) & (at >= L - 1)
        cut = valid & (eos | stop | (at + 1 >= self.N))  # (B, J) the row ends at byte j
        first = torch.where(cut, j, J).amin(1)  # (B,) the first such byte, J if none
        ended = first < J
        at_first = first.clamp(max=J - 1)[:, None]
        eos_first = eos.gather(1, at_first)[:, 0]
        kept = torch.where(ended, first + (~eos_first).long(), valid.sum(1))
        why = torch.where(eos_first, 1, torch.where(stop.gather(1, at_first)[:, 0], 2, 0))
        self.reason = torch.where(ended & ~self.done, why, self.reason)
        self.count = self.count + kept
        self.done = self.done | ended


def _chain_drafts(model, cache, nxt: torch.Tensor, D: int, cfg: GenerationConfig, g):
    """Chain heads 2..D+1 -> their filtered logits (B, D, V) and drafts (B, D): head k
    reads `nxt` (B,) and the k - 2 drafts before its own (`ByteLM.chain_logits`)."""
    d, win = model.chain_start(cache)
    S, byte, q, drafts = win.shape[1] + 1, nxt, [], []
    for k in range(2, D + 2):
        win = torch.cat([win, byte[:, None]], 1)[:, -S:]
        lg = filter_logits(model.chain_logits(d, win, k), cfg.temperature, cfg.top_k, cfg.top_p)
        byte = _draw(lg, cfg.temperature, g)
        q.append(lg)
        drafts.append(byte)
    return torch.stack(q, 1), torch.stack(drafts, 1)


def _unverified(drafts, q, u_accept, n: torch.Tensor):
    """Make the verify step stop after the first n[r] (B,) drafts of row r, as if the row had
    drafted only those: a later draft becomes BOS, which no target distribution allows, with
    draft probability 0 and u_accept 1, so it is rejected. (Whether a draft is verified
    depends only on the drafts before it, so the output stays lossless.)"""
    cut = torch.arange(drafts.shape[1], device=drafts.device) >= n[:, None]  # (B, D)
    drafts = torch.where(cut, BOS, drafts)
    if q is not None:
        q = q.masked_fill(cut[..., None], 0.0)
        u_accept = u_accept.masked_fill(cut, 1.0)
    return drafts, q, u_accept


@torch.no_grad()
def _run(model, prompts, cfg: GenerationConfig, max_len, max_step, sync_every, compile=False):
    """Yields, at each host sync, the new bytes of every row since the last; returns a
    GenerationResult. Which rows are done is tracked on the device (`_Rows`); the host reads
    it back every `sync_every` forward passes (1 when streaming), so a loop of decode calls
    runs ahead of the device. A row that finished still takes part in the calls until then
    (plain: its bytes are ignored; speculative: rolled back), and the loop never runs more
    than max_new_bytes passes, which every row finishes within."""
    from bytelm.kernels.verify import verify

    t0 = time.perf_counter()
    B, D, T = len(prompts), _draft_count(model, cfg), cfg.temperature
    stats = GenerationStats(draft_heads=D, drafted=[0] * D, accepted=[0] * D)
    if cfg.max_new_bytes == 0:
        return GenerationResult([b""] * B, stats, ["length"] * B)
    model.eval()
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    lengths = [len(p) + 1 for p in prompts]  # BOS + prompt
    # a finished row still takes part (its bytes rolled back) while others run: 2D of slack
    need = max(lengths) + cfg.max_new_bytes + 2 * D + 1
    if max_len is not None and max(lengths) > max_len:
        raise ValueError(
            f"bytelm: the prompt is {max(lengths) - 1} bytes but the cache holds {max_len} "
            f"(with BOS); raise max_len or shorten the prompt"
        )
    kw = {}
    if compile:  # a ByteTransformer's cache has no such option
        # the compiled step's shapes include the cache size: a bucket lets calls share graphs
        kw, need = {"compile": True}, -(-need // COMPILE_BUCKET) * COMPILE_BUCKET
    chain = getattr(model, "chained", False)  # its drafts: `_chain_drafts`, not decode's heads
    heads = 1 if chain else 1 + D
    cache = model.new_cache(B, max_len or need, max(max_step, D + 1), heads=heads, **kw)
    ids = torch.full((B, max(lengths)), PAD, dtype=torch.long, device=dev)
    for r, p in enumerate(prompts):
        ids[r, : lengths[r]] = torch.tensor([BOS, *p], dtype=torch.long)
    lengths_t = torch.tensor(lengths, device=dev)
    rows = torch.arange(B, device=dev)

    # prefill: logits of every head at each row's last prompt byte
    last = model.prefill(ids, cache, lengths_t)[rows, lengths_t - 1]  # (B, 1 + D, V)
    stats.prefill_seconds = time.perf_counter() - t0
    passes = 1
    out = _Rows(B, cfg, D, dev)
    row_forwards = torch.tensor(B, device=dev)
    drafted = torch.zeros(D, dtype=torch.long, device=dev)
    accepted = torch.zeros(D, dtype=torch.long, device=dev)
    heads = torch.arange(D, device=dev)
    ones = torch.ones(B, dtype=torch.long, device=dev)
    sent = [0] * B  # bytes of each row already yielded

    def flush() -> tuple[list[bytes], bool]:
        """The one host sync: each row's bytes since the last flush, and whether all are done."""
        count, done = out.count.tolist(), bool(out.done.all())
        lo = min(sent)
        buf = out.buf[:, lo : max(count)].tolist()
        chunks = [bytes(buf[r][sent[r] - lo : count[r] - lo]) for r in range(B)]
        sent[:] = count
        return chunks, done

    nxt = _draw(filter_logits(last[:, 0], T, cfg.top_k, cfg.top_p), T, g)  # (B,)
    out.emit(nxt[:, None], ones)
    for step in range(1, cfg.max_new_bytes):
        if step % sync_every == 1 or sync_every == 1:
            chunks, finished = flush()
            yield chunks
            if finished:
                break
        active = ~out.done
        passes += 1
        row_forwards += active.sum()
        if D == 0:
            logits = model.decode(nxt[:, None], cache)[:, 0, 0]  # (B, V)
            nxt = _draw(filter_logits(logits, T, cfg.top_k, cfg.top_p), T, g)
            out.emit(nxt[:, None], ones)
            continue

        # draft: heads 2..D+1 at the last position predict the D bytes after `nxt`
        if chain:
            q_logits, drafts = _chain_drafts(model, cache, nxt, D, cfg, g)
        else:
            q_logits = filter_logits(last[:, 1:], T, cfg.top_k, cfg.top_p)  # (B, D, V)
            drafts = _draw(q_logits, T, g)  # (B, D)
        q = torch.softmax(q_logits / T, dim=-1) if T > 0 else None
        u_accept = torch.rand(B, D, generator=g, device=dev) if T > 0 else None
        u_sample = torch.rand(B, generator=g, device=dev) if T > 0 else None

        # verify: one forward pass over [nxt, drafts], then keep the accepted prefix
        block = torch.cat([nxt[:, None], drafts], 1)
        if cfg.cross_patches:
            logits, lim = model.decode(block, cache), None  # (B, 1+D, 1+D, V)
        else:  # decoded up to the first draft that closes a patch: verify up to it
            logits, n_used = model.decode(block, cache, until_close=True)
            lim = n_used.clamp(max=D)
            drafts, q, u_accept = _unverified(drafts, q, u_accept, lim)
        target = filter_logits(logits[:, :, 0], T, cfg.top_k, cfg.top_p)  # (B, 1+D, V)
        acc, nxt = verify(drafts, q, target, T, u_accept, u_sample)
        on = active[:, None]
        tried = (acc + 1).clamp(max=D if lim is None else lim)
        drafted += (on & (heads < tried[:, None])).sum(0)
        accepted += (on & (heads < acc[:, None])).sum(0)
        if lim is not None:  # a row that accepted a closing draft has no byte after it
            # decoded: that draft is its next block's first byte, as if drawn after the one
            # before it (its last decoded byte, whose heads draft the next block)
            whole = acc == n_used
            acc = torch.where(whole, acc - 1, acc)
            nxt = torch.where(whole, drafts.gather(1, acc.clamp(max=D - 1)[:, None])[:, 0], nxt)
        cache.rollback(torch.where(active, acc + 1, 0))
        last = logits[rows, acc]  # (B, 1+D, V) every head at the last kept byte
        new = torch.cat([drafts, nxt[:, None]], 1).scatter(1, acc[:, None], nxt[:, None])
        out.emit(new, acc + 1)
    chunks, _ = flush()
    if any(chunks):
        yield chunks

    stats.forward_passes, stats.row_forwards = passes, int(row_forwards)
    stats.drafted, stats.accepted = drafted.tolist(), accepted.tolist()
    stats.new_bytes = sum(sent)
    stats.seconds = time.perf_counter() - t0
    buf = out.buf.tolist()
    finish = [FINISH[i] for i in out.reason.tolist()]
    return GenerationResult([bytes(buf[r][: sent[r]]) for r in range(B)], stats, finish)


@torch.no_grad()
def generate_naive(
    model: torch.nn.Module,
    prompt: bytes,
    max_new_bytes: int,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    max_context: int = 512,
) -> bytes:
    """Sample `max_new_bytes` after `prompt` by re-running the whole model each byte.

    The reference that cached decoding is tested and benchmarked against. The
    context is the last `max_context` ids. Stops early at EOS.
    """
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([[BOS, *prompt]], dtype=torch.long, device=device)
    out = bytearray()
    for _ in range(max_new_bytes):
        logits = model(ids[:, -max_context:])[:, -1, 0]  # head 1 at the last position
        nxt = sample_logits(logits, temperature, top_k, g)
        if int(nxt) == EOS:
            break
        out.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return bytes(out)


__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "filter_logits",
    "generate",
    "generate_naive",
    "sample_logits",
]
