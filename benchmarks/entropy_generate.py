"""Entropy-patched generation: the batched `EntropyPatcher.step` vs the old per-row one.

    python -m benchmarks.entropy_generate                  # ~2 min on one CPU core
    python -m benchmarks.entropy_generate --new-bytes 64 --reps 1   # a quick look

Both patchers share one random-init entropy model (a sharpened 1-layer
`ByteTransformer` like the tests', context 64, saved as a real checkpoint and
loaded with `bytelm.checkpoint.build_patcher`), one threshold (calibrated to 4
bytes per patch on stdlib text) and one small random ByteLM (4 heads, logits
sharpened so that speculative drafts are both accepted and rejected). "before" is
the old implementation, kept here only (`_OldEntropyPatcher`): one batch-1
entropy-model forward per byte and row, a P-byte prompt prefilled in P steps, and
every speculative rollback replayed byte by byte and row by row.

Measured, interleaved old/new in one process, CPU time (`time.process_time`, one
torch thread):

1. greedy `bytelm.generate` bytes/s (prefill included), batch 1 and 4 (ragged
   prompts), plain and speculative (3 draft heads); the outputs of both patchers
   are checked to be identical;
2. `step` alone over a 512-byte prompt, batch 4, in one call (the old one loops)
   and one byte per call (decoding without a model);
3. the two changes apart: the batched patcher with the old rollback replay (one
   `step` per byte column, `_column_replay`, patched in here only), against the
   library's one-call replay (`step(..., n_valid=keep)`).

Results: benchmarks/results/entropy_generate.{csv,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

import bytelm
import bytelm.model.cache as cache_mod
from benchmarks.common import write_results
from bytelm.checkpoint import build_patcher, save_checkpoint
from bytelm.config import (
    ByteLMConfig,
    NGramConfig,
    OutputHeadsConfig,
    PatcherConfig,
    RunConfig,
    TransformerConfig,
)
from bytelm.data import DataConfig
from bytelm.model import ByteLM, ByteTransformer
from bytelm.model.cache import snapshot_state
from bytelm.patchers.base import PatcherState
from bytelm.patchers.entropy import EntropyPatcher, _entropy_bits, chunk_start
from bytelm.vocab import BOS, EOS, PAD

CONTEXT = 64


# ----------------------------------------------------------------------------- before


class _RowCaches:
    """The old state: one entropy-model KV cache per row."""

    def __init__(self, caches: list):
        self.caches = caches

    def clone(self) -> _RowCaches:
        return _RowCaches([None if c is None else c.clone() for c in self.caches])

    def select(self, mask: torch.Tensor, other: _RowCaches) -> _RowCaches:
        return _RowCaches(
            [a if m else b for a, b, m in zip(self.caches, other.caches, mask.tolist())]
        )


class _OldEntropyPatcher(EntropyPatcher):
    """The per-row, per-byte `start`/`step` the library had before (verbatim), for comparison."""

    def start(self, batch: int, device=None) -> PatcherState:
        return PatcherState(
            patch_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
            extra={
                "r": torch.full((batch,), -1, dtype=torch.long),
                "prev_H": torch.zeros(batch),
                "history": torch.full((batch, self.context), PAD, dtype=torch.long),
                "kv": _RowCaches([None] * batch),
            },
        )

    @torch.no_grad()
    def _step_entropy(self, state: PatcherState, b: int, device) -> float:
        ex = state.extra
        r = int(ex["r"][b])
        model = self._model_on(device)
        L, O = self.context, self.overlap
        fresh = r == 0 or ex["kv"].caches[b] is None or (r >= L and (r - O) % (L - O) == 0)
        caches = list(ex["kv"].caches)
        with torch.autocast(device.type, enabled=False):
            if fresh:
                ctx = ex["history"][b, L - (r - chunk_start(r, L, O) + 1) :].to(device)
                caches[b] = model.new_cache(1, L, max_step=min(64, L))
                logits = model.prefill(ctx[None], caches[b])[:, -1]
            else:
                caches[b] = caches[b].clone()
                c = ex["history"][b, -1:].to(device)
                logits = model.step(c[None], caches[b])[:, -1]
        ex["kv"] = _RowCaches(caches)
        return float(_entropy_bits(logits[:, 0]).half().float())

    def step(self, state: PatcherState, new_ids: torch.Tensor) -> torch.Tensor:
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
                if c == BOS or int(ex["r"][b]) < 0:
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


# ----------------------------------------------------------------------------- set-up


def stdlib_text() -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"".join((root / f).read_bytes() for f in ("textwrap.py", "shlex.py", "bisect.py"))


def entropy_checkpoint(path: Path) -> Path:
    """A random 1-layer entropy model with sharply varying entropies (as in the tests)."""
    torch.manual_seed(0)
    tcfg = TransformerConfig(dim=32, n_layers=1, attn_heads=2)
    model = ByteTransformer(tcfg)
    with torch.no_grad():
        model.unembed.weight.mul_(60.0)
        model.embed.weight.mul_(20.0)
        for p in model.stack.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    cfg = RunConfig(arch="transformer", transformer=tcfg, data=DataConfig(seq_len=CONTEXT))
    return save_checkpoint(path, model, cfg)


def build(ckpt: Path, text: bytes) -> tuple[ByteLM, EntropyPatcher, _OldEntropyPatcher]:
    pc = PatcherConfig(
        "entropy", max_patch_len=8, threshold=0.0, target_bytes_per_patch=0,
        entropy_model=str(ckpt),
    )  # fmt: skip
    new = build_patcher(pc)
    ids = torch.tensor([BOS, *text[:20000]])
    new.calibrate((ids, new.entropies(ids[None])[0]), 4.0)
    old = _OldEntropyPatcher(new.model, new.context, new.mode, new.threshold, new.max_patch_len)
    local = TransformerConfig(dim=64, n_layers=1, attn_heads=2, window=32)
    cfg = ByteLMConfig(
        ngram=NGramConfig(ns=(3, 4, 5), buckets=1024),
        encoder=local,
        latent=TransformerConfig(dim=128, n_layers=2, attn_heads=4),
        decoder=local,
        out_heads=OutputHeadsConfig(n=4),
        patcher=dataclasses.replace(pc, threshold=new.threshold),
    )
    torch.manual_seed(0)
    model = ByteLM(cfg, new).eval()
    with torch.no_grad():
        model.unembed.weight.mul_(3.0)
    return model, new, old


# ----------------------------------------------------------------------------- timing


def cpu_seconds(fn, *args, **kwargs):
    """(CPU seconds of fn(*args, **kwargs), its result)."""
    t = time.process_time()
    out = fn(*args, **kwargs)
    return time.process_time() - t, out


def _select(mask: torch.Tensor, a: PatcherState, b: PatcherState) -> PatcherState:
    """Row r of a where mask[r], else b's (tensors, or values with `select(mask, other)`)."""

    def pick(x, y):
        if isinstance(x, torch.Tensor):
            return torch.where(mask.to(x.device).view(-1, *[1] * (x.dim() - 1)), x, y)
        return x.select(mask, y)

    extra = {k: pick(v, b.extra[k]) for k, v in a.extra.items()}
    return PatcherState(pick(a.patch_len, b.patch_len), pick(a.prev, b.prev), extra)


def _column_replay(patcher, start, ids, keep):
    """The old `bytelm.model.cache.replay_patcher`: one `step` per byte column, rows merged."""
    state = snapshot_state(start)
    for i in range(int(keep.max()) if keep.numel() else 0):
        nxt = snapshot_state(state)
        patcher.step(nxt, ids[:, i : i + 1])
        state = _select(keep > i, nxt, state)
    return state


@contextlib.contextmanager
def replay_with(fn):
    saved = cache_mod.replay_patcher
    cache_mod.replay_patcher = fn or saved
    try:
        yield
    finally:
        cache_mod.replay_patcher = saved


def bench_generate(model, variants: dict, text: bytes, new_bytes: int, reps: int) -> list[dict]:
    prompts = [text[1000 + 700 * i : 1000 + 700 * i + 100 + 37 * i] for i in range(4)]
    rows = []
    for batch in (1, 4):
        for spec in (False, True):
            ps = prompts[:batch]
            kw = dict(temperature=0.0, speculative=spec, draft_heads=3 if spec else 0)
            secs, outs, stats = dict.fromkeys(variants, 0.0), {}, {}
            for _ in range(reps):
                for name, (p, replay) in variants.items():  # interleaved
                    model.patcher = p
                    with replay_with(replay):
                        dt, res = cpu_seconds(bytelm.generate, model, ps, new_bytes, **kw)
                    secs[name] += dt
                    outs[name], stats[name] = res.bytes, res.stats
            assert all(o == outs["before"] for o in outs.values()), "different bytes generated"
            n = stats["after"].new_bytes * reps
            row = {
                "case": f"generate, batch {batch}, {'speculative (3 drafts)' if spec else 'plain'}",
                "bytes_per_s_before": n / secs["before"],
                "bytes_per_s_after": n / secs["after"],
                "speedup": secs["before"] / secs["after"],
                "bytes_per_s_patcher_only": n / secs["patcher_only"],
                "speedup_patcher_only": secs["before"] / secs["patcher_only"],
                "bytes_per_forward": stats["after"].bytes_per_forward,
            }
            rows.append(row)
            print(row, flush=True)
    return rows


def feed(patcher, ids: torch.Tensor, per_call: int) -> torch.Tensor:
    """ends of a fresh state fed ids (B, n), per_call bytes per `step`."""
    state = patcher.start(ids.shape[0])
    n = ids.shape[1]
    return torch.cat(
        [patcher.step(state, ids[:, t : t + per_call]) for t in range(0, n, per_call)], 1
    )


def bench_step(patchers, text: bytes, reps: int, n: int = 512, batch: int = 4) -> list[dict]:
    """`step` alone over an n-byte prompt: in one call, and one byte per call (decoding)."""
    ids = torch.tensor(
        [[BOS, *text[3000 + 900 * i : 3000 + 900 * i + n - 1]] for i in range(batch)]
    )
    rows = []
    for per_call in (n, 1):
        secs, out = dict.fromkeys(patchers, 0.0), {}

        for _ in range(reps):
            for name, p in patchers.items():
                dt, out[name] = cpu_seconds(feed, p, ids, per_call)
                secs[name] += dt
        assert torch.equal(out["before"], out["after"])
        how = "in one call" if per_call == n else "one byte per call"
        row = {
            "case": f"step alone, a {n}-byte prompt, batch {batch}, {how}",
            "bytes_per_s_before": batch * n * reps / secs["before"],
            "bytes_per_s_after": batch * n * reps / secs["after"],
            "speedup": secs["before"] / secs["after"],
            "bytes_per_s_patcher_only": float("nan"),
            "speedup_patcher_only": float("nan"),
            "bytes_per_forward": float("nan"),
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-bytes", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    text = stdlib_text()
    with tempfile.TemporaryDirectory() as tmp:
        model, new, old = build(entropy_checkpoint(Path(tmp) / "entropy"), text)
        variants = {
            "before": (old, _column_replay),
            "patcher_only": (new, _column_replay),
            "after": (new, None),
        }
        bench_generate(model, variants, text, 8, 1)  # warm-up
        rows = bench_generate(model, variants, text, args.new_bytes, args.reps)
        rows += bench_step({"before": old, "after": new}, text, args.reps)
    notes = (
        f"`python -m benchmarks.entropy_generate --new-bytes {args.new_bytes} --reps "
        f"{args.reps}`. Entropy model: random-init 1-layer ByteTransformer (dim 32), context "
        f"{CONTEXT} (overlap {CONTEXT // 4}), threshold calibrated to 4 bytes/patch on stdlib "
        "text; ByteLM: random-init, encoder/decoder dim 64, latent dim 128 x 2 layers, 4 heads. "
        "Greedy; prompts of 100-211 bytes (ragged at batch 4), prefill included; "
        f"{args.new_bytes} new bytes per row. bytes/s is CPU time (`time.process_time`, one "
        "torch thread), old and new interleaved in one process; both generate identical bytes. "
        "before: one batch-1 entropy-model forward per byte and row, and a speculative "
        "rollback (or a ragged prompt's last prefill call) replayed one byte column per "
        "`step`; patcher_only: the batched patcher with that old column-by-column replay; "
        "after: the library as it is, the batched patcher and the rollback replayed by one "
        "`step(state, ids, n_valid=keep)` call. bytes_per_forward: new bytes per "
        "row-forward of the ByteLM."
    )
    path = write_results(
        "entropy_generate", rows, "Entropy-patched generation: before/after", notes
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
