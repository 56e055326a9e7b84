"""ByteLM: the hierarchical byte model.

    bytes ─ embed ─ encode ─ pool ─ latent ─ unpool ─ decode ─ heads ─ logits
            (byte + hashed   (patches)  (one step      (K heads, head k
             n-grams)                    per patch)     predicts byte t+k)

Causality rule: the prediction at byte t may read the latent output of every
patch that is complete by byte t, and of no other patch. Patchers are causal,
so whether byte t closes its patch (`ends[t]`) is known at t; when it does,
byte t already reads that patch's latent state, and the first byte of the next
patch (usually the hardest) is predicted with fresh latent context.

Boundaries are found after the encoder, so that a learned source (a router
over encoder states, `bytelm.patchers.learned`) can read them; its ends[t]
reads the states of bytes t and t-1, and its probabilities reach the loss
through the smoothing of latent outputs and the straight-through confidence
of `bytelm.model.chunking`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bytelm.config import ByteLMConfig
from bytelm.kernels.attention import MaskSpec
from bytelm.kernels.dispatch import compiling
from bytelm.kernels.pooling import pool, unpool
from bytelm.model.cache import ByteLMCache, prefill
from bytelm.model.chunking import Routing, confidence, gate, patch_gates, smooth
from bytelm.model.embed import ByteEmbedding
from bytelm.model.heads import OutputHeads, draft_logits
from bytelm.model.heads import logits as head_logits
from bytelm.model.layers import Attention, RMSNorm, Stack, doc_ids, init_weights
from bytelm.model.loss import HeadLosses, multi_head_loss
from bytelm.patchers import (
    BoundarySource,
    ends_to_lengths,
    first_close,
    lengths_to_ids,
    lengths_to_offsets,
    make_patcher,
    only_first,
)
from bytelm.vocab import PAD, VOCAB_SIZE

# A decode call steps the latent only for the rows that close a patch when they are at most
# 1/COMPACT_ROWS of the batch, and for every row (the rest padding) otherwise. Stepping a subset
# copies those rows' live latent KV out and back; skipping a row saves its matmuls. Measured on
# CPU, one thread, latent 512x8, batch 8, 32 (128) patches closed so far, time of a latent
# step, rows only vs all rows: 1 closing row 0.56x (0.55x), 2 rows 0.61x (0.61x), 4 rows 0.91x
# (1.23x), 8 rows 1.22x (1.83x). On a GPU, where a small batch's matmuls cost about what one
# row's do, the balance may tip to all rows; not measured there yet.
COMPACT_ROWS = 4


def _count(ends: torch.Tensor, n_bytes: torch.Tensor, bucket: int) -> int:
    n = ends_to_lengths(ends, n_bytes).shape[1]
    return min(-(-n // bucket) * bucket, ends.shape[1])


_count_outside_graph = None  # torch.compiler.disable(_count), made when first needed


def _bucketed_count(ends: torch.Tensor, n_bytes: torch.Tensor, bucket: int) -> int:
    """The patch count of ends (B, T), rounded up to `bucket` and capped at T. Outside the
    compiled graph, so that only the rounded count, not the exact one, is a guard. The
    disabled wrapper is built lazily: `torch.compiler.disable` imports dynamo (and with it
    triton), which eager users of bytelm never need."""
    global _count_outside_graph
    if not compiling():
        return _count(ends, n_bytes, bucket)
    if _count_outside_graph is None:
        _count_outside_graph = torch.compiler.disable(_count)
    return _count_outside_graph(ends, n_bytes, bucket)


class ByteLM(nn.Module):
    def __init__(self, cfg: ByteLMConfig, patcher: BoundarySource | None = None):
        """`patcher`: the boundary source; by default the one `cfg.patcher` describes, which
        works for every source that needs no outside model (an entropy patcher is handed in:
        `bytelm.build_model` loads it). A learned source (`needs_states`) becomes a submodule,
        bound to the encoder width: the model trains and checkpoints its router."""
        super().__init__()
        self.cfg = cfg
        D, G = cfg.encoder.dim, cfg.latent.dim
        self.patcher = make_patcher(cfg.patcher, dim=D) if patcher is None else patcher
        self.learned = getattr(self.patcher, "needs_states", False)
        if self.learned:
            self.patcher.bind(D)
        if not getattr(self.patcher, "causal", True):
            raise ValueError(
                f"bytelm: the {self.patcher.name!r} patcher is not causal (its boundaries depend on "
                "future bytes), so ByteLM cannot train or generate with it"
            )
        self.embed = ByteEmbedding(D, cfg.ngram.ns, cfg.ngram.buckets, cfg.ngram.dropout)
        self.encoder = Stack(cfg.encoder)
        if cfg.pooling == "attn":
            self.pool_norm = RMSNorm(D)
            self.pool_attn = Attention(D, cfg.encoder.attn_heads, rope_theta=None)
        self.to_latent = nn.Linear(D, G, bias=False)
        self.latent = Stack(cfg.latent)
        self.latent_norm = RMSNorm(G)
        self.from_latent = nn.Linear(G, D, bias=False)
        self.decoder = Stack(cfg.decoder)
        self.heads = OutputHeads(cfg.out_heads, cfg.decoder)
        self.norm = RMSNorm(D)
        self.unembed = nn.Linear(D, VOCAB_SIZE, bias=False)  # shared by every head
        init_weights(self, cfg.encoder.n_layers + cfg.latent.n_layers + cfg.decoder.n_layers + 1)
        self.heads.reset_parameters()
        if self.learned:
            self.patcher.reset_parameters()  # the router starts at W_q = W_k = I, not random

    @property
    def n_heads_out(self) -> int:
        return self.cfg.out_heads.n

    def forward(
        self,
        ids: torch.Tensor,
        ends: torch.Tensor | None = None,
        n_patches: int | None = None,
        routing: bool = False,
        draft_at: torch.Tensor | None = None,
    ):
        """ids (B, T) -> logits (B, T, K, V). `ends` (B, T) bool overrides the patcher.

        `n_patches` sets the patch axis P: at least every row's patch count, the rest empty
        slots, which change no logit. The Trainer counts on the host, where it builds the
        batch, so nothing is read back from the device, and a compiled step rounds up to
        `model.patch_bucket` so that P repeats (one graph per bucket). Without it, P is the
        exact count, read back from the device: this forward's one host sync (a learned
        source always has it: its ends are known only after the encoder).
        `routing`: return (logits, Routing) for a learned source, for the ratio loss.
        `draft_at` (T',) positions, training only (`out_heads.draft_sample`): logits become
        (head 1's (B, T, 1, V), heads 2..K's at those positions (B, T', K - 1, V)), as
        `multi_head_loss` takes them.
        """
        B, T = ids.shape
        backend = self.cfg.attn_backend
        docs = doc_ids(ids)  # (B, T)
        pos = torch.arange(T, device=ids.device).expand(B, T)

        # embed
        emb = self.embed(ids, docs)  # (B, T, D)

        # encode
        h = self.encoder(emb, docs, pos, backend)  # (B, T, D)

        # route: ends[t] reads bytes <= t only (a learned router: the states of t and t - 1)
        prob = None
        if self.learned:
            prob, routed = self.patcher.route(ids, h)  # (B, T), (B, T)
            ends = routed if ends is None else ends
        elif ends is None:
            ends = self.patcher.ends(ids)
        n_bytes = (ids != PAD).sum(-1)
        if prob is not None and n_patches is None and torch.compiler.is_compiling():
            # a compiled step of a learned source: its count is read back (a graph break) and
            # rounded up to model.patch_bucket, so that P takes a few values, one graph each
            n_patches = _bucketed_count(ends, n_bytes, self.cfg.patch_bucket)
        lengths = ends_to_lengths(ends, n_bytes, n_patches)  # (B, P)
        # checked on the device, not read back (a second sync): a caller's n_patches one short
        # of a row's count would otherwise drop that row's last patch silently
        torch._assert_async(
            lengths.sum(-1).eq(n_bytes).all(), "patch lengths must cover every byte"
        )
        patch_ids = lengths_to_ids(lengths, T)  # (B, T), -1 on PAD
        P = lengths.shape[1]

        # pool
        p = pool(
            h, lengths, "mean" if self.cfg.pooling == "attn" else self.cfg.pooling
        )  # (B, P, D)
        real = lengths > 0  # (B, P) empty slots pad rows with fewer patches
        patch_pos = torch.arange(P, device=ids.device).expand(B, P)
        if self.cfg.pooling == "attn":
            # each patch query reads only its own bytes; the query starts as the mean
            q_seg = torch.where(real, patch_pos, torch.full_like(patch_pos, -2))
            spec = MaskSpec(q_seg, patch_ids, patch_pos, pos, causal=False)
            p = p + self.pool_attn(self.pool_norm(p), spec, kv=h, backend=backend)

        # latent
        starts = lengths_to_offsets(lengths).clamp(max=T - 1)  # (B, P)
        patch_docs = torch.where(real, docs.gather(1, starts), torch.full_like(starts, -1))
        z = self.latent(self.to_latent(p), patch_docs, patch_pos, backend)  # (B, P, G)
        z = self.from_latent(self.latent_norm(z))  # (B, P, D)
        if prob is not None:  # mix each patch with the last by how sure its end is (H-Net)
            z = smooth(z, patch_gates(prob, lengths))  # (B, P, D)

        # unpool: byte t reads the last patch complete by t (its own patch if t ends it)
        ctx = patch_ids - (~ends).long()  # (B, T)
        ctx_doc = patch_docs.gather(1, ctx.clamp(min=0))
        ctx = torch.where(
            (ctx >= 0) & (patch_ids >= 0) & (ctx_doc == docs), ctx, torch.full_like(ctx, -1)
        )
        u = unpool(z, ctx)  # (B, T, D)
        if prob is not None:  # x 1 forward; backward, the gradient of the decision's probability
            u = u * confidence(prob, ends).to(u.dtype)

        # decode
        d = self.decoder(h + u, docs, pos, backend)  # (B, T, D)

        # heads
        grad = self.cfg.out_heads.draft_grad
        if draft_at is not None and self.heads.n > 1:  # head 1 everywhere, drafts at draft_at
            first = head_logits(d[:, :, None], self.norm, self.unembed)  # (B, T, 1, V)
            y = self.heads.drafts(d, draft_at, grad, emb, docs)  # (B, T', K - 1, D)
            logits = first, draft_logits(y, self.norm, self.unembed, grad)
        else:
            mask = self.decoder.mask(docs, pos)
            y = self.heads(d, mask, backend, grad, emb, docs)  # (B, T, K, D)
            logits = head_logits(y, self.norm, self.unembed, grad)  # (B, T, K, V)
        return (logits, Routing(prob, ends, ids)) if routing else logits

    def route(self, ids: torch.Tensor):
        """A learned source's decisions: ids (B, T) -> (p (B, T), ends (B, T)), as `forward`
        takes them (for calibration and pictures)."""
        assert self.learned, "route needs a learned boundary source"
        docs = doc_ids(ids)
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        h = self.encoder(self.embed(ids, docs), docs, pos, self.cfg.attn_backend)
        return self.patcher.route(ids, h)

    def loss(self, ids: torch.Tensor, ends: torch.Tensor | None = None) -> HeadLosses:
        w = self.cfg.out_heads.weights
        return multi_head_loss(self(ids, ends), ids, doc_ids(ids), w, offsets=self.heads.offsets)

    @property
    def chained(self) -> bool:
        """Chain draft heads (`out_heads.kind = chain`): decoding computes head 1 only, and
        the drafts come from `chain_logits`, one after another."""
        return self.heads.kind == "chain"

    @torch.no_grad()
    def chain_start(self, cache: ByteLMCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Where chain drafts start: the decoder state of the cache's last byte (B, D), and
        the window `chain_logits` takes without its newest byte: the last S - 1 bytes (B,
        S - 1; S = the largest n-gram order, or 1), PAD before their document."""
        rows = torch.arange(cache.length.shape[0], device=cache.length.device)
        d = cache.ring_d[rows, (cache.length - 1) % cache.ring_size]  # (B, D)
        ids, docs = cache.recent()
        return d, torch.where(docs == cache.doc[:, None], ids, PAD)

    @torch.no_grad()
    def chain_logits(self, d: torch.Tensor, win: torch.Tensor, k: int) -> torch.Tensor:
        """Chain head k's logits (B, V) for the byte after win's last: d (B, D) from
        `chain_start`, win (B, S) the last S of its window and the k - 1 bytes after the
        cache's last byte (the first drawn from head 1, the rest drafted). What `forward`
        gives head k at that byte."""
        y = self.heads.chain_step(k, d, self.embed.last(win))  # (B, D)
        return self.unembed(F.rms_norm(y, y.shape[-1:], self.norm.weight, self.norm.eps))

    # ------------------------------------------------------------ incremental

    def new_cache(
        self,
        batch: int,
        max_len: int,
        max_step: int = 64,
        heads: int | None = None,
        fixed_shapes: bool = False,
        compile: bool = False,
    ) -> ByteLMCache:
        """Static caches for `batch` rows of up to `max_len` bytes, fed at most `max_step`
        bytes per call. Only the first `heads` output heads are computed (default all).
        `fixed_shapes`: decode calls take the fixed-shape step; `compile`: that step compiled
        (`bytelm.model.decode_compile`; prefill calls stay eager). See `decode`."""
        if heads is None:
            heads = 1 if self.chained else self.cfg.out_heads.n
        assert 1 <= heads <= self.cfg.out_heads.n, f"heads must lie in 1..{self.cfg.out_heads.n}"
        if self.chained and heads != 1:
            raise ValueError(
                "bytelm: a model with chain draft heads decodes head 1 only (its drafts come "
                "from chain_logits, one after another); make the cache with heads=1"
            )
        return ByteLMCache(self, batch, max_len, max_step, heads, fixed_shapes, compile)

    @torch.no_grad()
    def prefill(
        self, ids: torch.Tensor, cache: ByteLMCache, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prompts ids (B, T), right-padded to lengths (B,) -> logits (B, T, heads, V)."""
        return prefill(self.decode, ids, cache, lengths)

    @torch.no_grad()
    def decode(
        self,
        ids: torch.Tensor,
        cache: ByteLMCache,
        n_valid: torch.Tensor | None = None,
        until_close: bool = False,
    ):
        """Feed n new bytes per row, ids (B, n) -> logits (B, n, heads, V) at those positions.

        Equal to `forward` on the whole text so far. The bytes are encoded, the
        patches they close (and only those: the latent runs once per patch,
        not per byte) are pooled and stepped through the latent transformer
        together, and only then does the decoder read, for each new byte, the
        last patch complete by it: a patch closing at byte t (even inside this
        call) is ready before byte t is decoded. `n_valid` (B,) keeps only each
        row's first n_valid bytes (right-padded prompts).

        A cache made with `fixed_shapes` (or `compile`) takes the fixed-shape step: every
        row steps n latent slots, those past the patches it closes padding, so nothing is
        read back from the device and every call of n bytes has the same shapes (what
        `torch.compile` and CUDA graphs need). The default step reads back how many
        patches close (one host sync) and steps only those, which is faster in eager mode.

        `until_close` (a speculative verify block): decode each row's bytes only up to, not
        including, the first byte after byte 0 that closes a patch, and return (logits,
        n_used (B,)), the number of bytes decoded per row; logits at positions >= n_used are
        garbage. The latent then steps at most once per row, for the patch byte 0 closes (a
        byte already accepted), never for a patch closed by a draft that may be rejected.
        The cache keeps at most n_used bytes: the next call (or `rollback`) drops the rest.
        """
        pos, docs = cache.begin(ids)  # (B, n) absolute positions and documents
        step = cache.step_fn(self, prefill=n_valid is not None)
        logits, ends = step(ids, cache, pos, docs, until_close)
        n_used = None
        if until_close:  # the bytes after the first later close were decoded without it
            n_used, ends = first_close(ends), only_first(ends)
        cache.advance(docs, ends, n_used)
        if n_valid is not None:
            cache.rollback(n_valid)
        return logits if n_used is None else (logits, n_used)

    def _decode_fixed(self, ids, cache, pos, docs, until_close: bool = False):
        """The fixed-shape step (what `compile` compiles): see `decode`."""
        return self._decode_step(ids, cache, pos, docs, until_close, fixed=True)

    def _decode_step(self, ids, cache, pos, docs, until_close: bool = False, fixed: bool = False):
        """One decode call's work on the device -> (logits (B, n, heads, V), ends (B, n)).
        `until_close`: pool, latent and decoder see only byte 0's patch end (see `decode`)."""
        h, ends, prob = self._encode_step(ids, cache, pos, docs)
        used = only_first(ends) if until_close else ends
        self._latent_part(cache, pos, used, prob, fixed)
        return self._decode_tail(h, used, cache, pos, docs), ends

    def _encode_step(self, ids, cache, pos, docs):
        """Patcher, embedding, encoder and router of a decode call -> encoder states h
        (B, n, D), ends (B, n) and the router's boundary probabilities (learned) or None; the
        new bytes go into the position ring."""
        B, n = ids.shape
        rows = torch.arange(B, device=ids.device)[:, None]
        prob = None
        if not self.learned:
            ends = self.patcher.step(cache.patcher_state, ids)  # (B, n) byte t ends its patch

        # embed: the n-gram hashes also read the last `history` bytes from the ring
        h_ids, h_docs = cache.recent()
        h = self.embed(torch.cat([h_ids, ids], 1), torch.cat([h_docs, docs], 1))[:, -n:]

        # encode
        slots, spec = cache.enc.write(pos, docs)
        h = self.encoder.step(h, cache.enc, slots, spec, self.cfg.attn_backend)  # (B, n, D)
        if self.learned:  # the router also reads the state of the byte before, from the ring
            before = cache.ring_h[rows[:, 0], (pos[:, 0] - 1) % cache.ring_size]  # (B, D)
            states = torch.cat([before[:, None], h], 1)  # (B, 1 + n, D)
            prob, ends = self.patcher.route_step(cache.patcher_state, ids, states)  # (B, n)
        ring = pos % cache.ring_size
        cache.ring_ids[rows, ring] = ids
        cache.ring_doc[rows, ring] = docs
        cache.ring_h[rows, ring] = h
        return h, ends, prob

    def _latent_part(self, cache, pos, ends, prob, fixed: bool) -> None:
        """Pool and latent: only the patches this call closes (at most n per row)."""
        B, n = ends.shape
        rows = torch.arange(B, device=ends.device)
        closes = ends.sum(1)  # (B,)
        if fixed:  # every row steps n slots, those past the patches it closes padding
            self._step_latent(cache, rows, n, cache.lat, ends, pos, closes, prob)
            return
        # only the rows that close a patch when few do; the call's one host sync
        m, b, P = torch.stack([closes.max(), closes.gt(0).sum(), cache.n_patches.max()]).tolist()
        if m:  # a call that closes no patch skips pool and latent
            sel = rows  # (B',) the rows stepped: all, or the b that close a patch
            if b * COMPACT_ROWS <= B:
                sel = closes.gt(0).byte().argsort(descending=True, stable=True)[:b]
            self._step_latent(cache, sel, m, cache.lat.prefix(P + m), ends, pos, closes, prob)

    def _decode_tail(self, h, ends, cache, pos, docs):
        """Unpool, decoder and heads of a decode call -> logits (B, n, heads, V)."""
        backend = self.cfg.attn_backend
        # unpool: byte t reads the last patch complete by t (its own patch if t ends it)
        ctx = cache.n_patches[:, None] + ends.long().cumsum(1) - 1  # (B, n) last closed patch
        cslot = cache.lat.slot(ctx.clamp(min=0))
        ok = (ctx >= 0) & (cache.lat.doc.gather(1, cslot) == docs)
        u = unpool(cache.lat_out, torch.where(ok, cslot, -1))  # (B, n, D)

        # decode
        slots, spec = cache.dec.write(pos, docs)
        rot = self.decoder.rope_angles(pos)  # shared by the decoder layers and the heads
        d = self.decoder.step(h + u, cache.dec, slots, spec, backend, rot)  # (B, n, D)

        # heads: a block head j's layer is cache layer n_layers + j
        L = self.cfg.decoder.n_layers
        y = self.heads.step(d, spec, cache.dec, L, slots, backend, rot, cache.heads)
        if cache.ring_d is not None:  # chain heads draft from the last byte's state
            cache.ring_d[
                torch.arange(d.shape[0], device=d.device)[:, None], pos % cache.ring_size
            ] = d
        return self.unembed(self.norm(y))  # (B, n, heads, V)

    def _step_latent(self, cache, sel, m, lat, ends, pos, closes, prob):
        """Pool the patches that rows sel (B',) close in this call and step them through the
        latent, m slots per row: a row closing fewer than m pads, and padding writes to the
        dump slot and reads nothing. `lat`: the latent cache, or a prefix of it that holds
        every patch closed so far. (Stepping every new byte, those closing none masked,
        measured 1.2-1.8x slower per step on CPU at n = 4..16.)"""
        B = ends.shape[0]
        every = sel.shape[0] == B  # all rows, in order: no row is gathered
        ar = torch.arange(m, device=ends.device)
        real = ar < (closes if every else closes[sel])[:, None]  # (B', m)
        e, ps = (ends, pos) if every else (ends[sel], pos[sel])
        p, start, last = self._pool_closed(cache, sel, e, ps, real)  # (B', m, D)
        part = lat if every else lat.take(sel)
        n_patches = cache.n_patches if every else cache.n_patches[sel]
        patch = n_patches[:, None] + ar  # (B', m)
        ring_doc = cache.ring_doc if every else cache.ring_doc[sel]
        patch_doc = ring_doc.gather(1, start % cache.ring_size)
        lslots, spec = part.write(patch, patch_doc, valid=real)
        z = self.latent.step(self.to_latent(p), part, lslots, spec, self.cfg.attn_backend)
        if part is not lat:
            lat.put(sel, part, lslots)
        z = self.from_latent(self.latent_norm(z))  # (B', m, D)
        if prob is not None:  # the forward's smoothing, continued from the last closed patch
            prev = cache.lat_out[sel, cache.lat.slot((n_patches - 1).clamp(min=0))]
            g = gate((prob if every else prob[sel]).gather(1, last), real)  # (B', m)
            z = smooth(
                torch.cat([prev[:, None], z], 1), torch.cat([torch.ones_like(g[:, :1]), g], 1)
            )[:, 1:]
        cache.lat_out[sel[:, None], lslots] = z

    def _pool_closed(self, cache, rows, ends, pos, real):
        """The patches closed in cache rows `rows` (B',) by bytes with ends/pos (B', n), gathered
        to (B', m): row r's first real[r].sum() entries, in order -> pooled patches (B', m, D),
        their first bytes (B', m) and the call's index of their last bytes (B', m). Every
        patch's bytes are still in the position ring."""
        B, m = real.shape
        M, R = cache.max_patch, cache.ring_size
        last = ends.byte().sort(dim=1, descending=True, stable=True).indices[:, :m]  # (B, m)
        end = pos.gather(1, last)  # (B, m) the last byte of each closed patch
        start = torch.cat([cache.patch_start[rows, None], end[:, :-1] + 1], 1)  # (B, m)
        span = (start[..., None] + torch.arange(M, device=pos.device)) % R  # (B, m, M)
        x = cache.ring_h[rows[:, None, None], span].flatten(0, 1)  # (B*m, M, D)
        lens = torch.where(real, end - start + 1, 0).reshape(B * m, 1)
        p = pool(x, lens, "mean" if self.cfg.pooling == "attn" else self.cfg.pooling)
        if self.cfg.pooling == "attn":  # cross-attention from the mean to the patch's bytes
            q_seg = torch.where(lens > 0, 0, -2)  # (B*m, 1)
            k_seg = torch.where(torch.arange(M, device=pos.device) < lens, 0, -1)  # (B*m, M)
            spec = MaskSpec(q_seg, k_seg, torch.zeros_like(q_seg), torch.zeros_like(k_seg), False)
            p = p + self.pool_attn(self.pool_norm(p), spec, kv=x, backend=self.cfg.attn_backend)
        return p.view(B, m, -1), start, last  # (B, m, D), (B, m), (B, m)
