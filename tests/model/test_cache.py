"""Incremental decoding with static caches equals the full forward pass.

`model.decode` over any split of a text into calls must give the logits of
`model(ids)` at every position, for every patcher and pooling, with windows
smaller than the text (the caches are rings) and patches that close inside a
call. After `rollback`, the caches must be those of a run that only ever saw
the kept bytes.
"""

import dataclasses

import pytest
import torch

from bytelm.checkpoint import build_patcher
from bytelm.config import PatcherConfig, TransformerConfig
from bytelm.model import ByteLM, ByteTransformer
from bytelm.model.bytelm import COMPACT_ROWS
from bytelm.vocab import BOS, EOS, PAD
from tests.conftest import tiny_bytelm_config

# Adding a patcher to the cached-decoding tests is one entry here.
PATCHERS = ["fixed", "space", "entropy", "learned"]
TOL = 1e-4  # fp32; observed differences are ~2e-7 (summation order only)


def make_model(patcher: str, pooling: str = "mean", heads: int = 3, request=None) -> ByteLM:
    """A tiny random ByteLM; the entropy patcher gets a sharp random entropy model
    with context 16, so its documents are chunked too."""
    cfg = tiny_bytelm_config(patcher=patcher, pooling=pooling, heads=heads)
    if patcher == "entropy":
        pc = PatcherConfig(
            "entropy", max_patch_len=6, threshold=1.5, target_bytes_per_patch=0,
            entropy_model=str(request.getfixturevalue("entropy_model")),
        )  # fmt: skip
        cfg = dataclasses.replace(cfg, patcher=pc)
    return ByteLM(cfg, build_patcher(cfg.patcher)).eval()


def text(B: int = 2, T: int = 64, seed: int = 1) -> torch.Tensor:
    """Rows of words with spaces and punctuation; row 0 crosses a document boundary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(97, 123, (B, T), generator=g)
    ids[:, 3::6] = 32
    ids[:, 10::13] = ord(".")
    ids[:, 0] = BOS
    if T > 30:
        ids[0, 25], ids[0, 26] = EOS, BOS
    return ids


def chunks(T: int, sizes=(1, 3, 7, 1, 12, 2, 5, 11, 1, 1, 12, 4)):
    t, i = 0, 0
    while t < T:
        n = min(sizes[i % len(sizes)], T - t)
        yield t, n
        t, i = t + n, i + 1


@pytest.mark.parametrize("patcher", PATCHERS)
@pytest.mark.parametrize("pooling", ["mean", "max", "attn"])
def test_decode_equals_forward(patcher, pooling, request):
    model = make_model(patcher, pooling, request=request)
    ids = text()
    full = model(ids)  # (B, T, K, V)
    cache = model.new_cache(2, max_len=80, max_step=12)
    assert cache.enc.size == 8 + 12 < 80, "windowed stacks keep a ring, not the whole text"
    outs, most_closed = [], 0
    for t, n in chunks(ids.shape[1]):
        before = cache.n_patches.clone()
        outs.append(model.decode(ids[:, t : t + n], cache))
        most_closed = max(most_closed, int((cache.n_patches - before).max()))
    out = torch.cat(outs, dim=1)
    assert out.shape == full.shape
    assert (out - full).abs().max() < TOL
    assert most_closed >= 2, "some call must close several patches"
    assert torch.equal(cache.length, torch.full((2,), ids.shape[1]))


def test_prefill_ragged_rows_then_decode():
    """Prompts of different lengths in one batch (right-padded) decode like separate rows."""
    model = make_model("space")
    ids = text(B=3, T=50)
    lengths = torch.tensor([50, 17, 1])
    padded = ids.clone()
    for r, n in enumerate(lengths.tolist()):
        padded[r, n:] = PAD
    cache = model.new_cache(3, max_len=64, max_step=16)
    logits = model.prefill(padded, cache, lengths)
    assert torch.equal(cache.length, lengths)
    nxt = torch.tensor([[ord("a"), ord(" ")]] * 3)
    more = model.decode(nxt, cache)
    for r, n in enumerate(lengths.tolist()):
        row = torch.cat([ids[r : r + 1, :n], nxt[r : r + 1]], 1)
        ref = model(row)[0]
        assert (logits[r, :n] - ref[:n]).abs().max() < TOL
        assert (more[r] - ref[n:]).abs().max() < TOL


def live_row(live: dict, r: int) -> dict:
    return {k: (v[:, r] if k.endswith((".k", ".v")) else v[r]) for k, v in live.items()}


@pytest.mark.parametrize("patcher", PATCHERS)
def test_rollback_equals_a_run_that_saw_only_the_kept_bytes(patcher, request):
    model = make_model(patcher, request=request)
    ids = text(B=4, T=60, seed=3)
    g = torch.Generator().manual_seed(7)
    cache = model.new_cache(4, max_len=80, max_step=9)
    kept = [[] for _ in range(4)]  # each row's accepted bytes
    t = torch.zeros(4, dtype=torch.long)
    while int(t.min()) < 40:
        # feed 9 bytes: the row's true continuation, then keep a random prefix
        feed = torch.stack([ids[r, t[r] : t[r] + 9] for r in range(4)])
        feed[:, 5:] = torch.randint(0, 258, (4, 4), generator=g)  # drafts that get rejected
        keep = torch.randint(0, 6, (4,), generator=g)
        model.decode(feed, cache)
        cache.rollback(keep)
        for r in range(4):
            kept[r] += feed[r, : keep[r]].tolist()
        t += keep
    nxt = torch.tensor([[ord("x"), ord(" "), ord("y")]] * 4)
    after = model.decode(nxt, cache)
    live = cache.live(latent_span=40)
    for r in range(4):
        fresh = model.new_cache(1, max_len=80, max_step=9)
        seen = torch.tensor([kept[r]])
        model.prefill(seen, fresh)
        ref = model.decode(nxt[r : r + 1], fresh)
        assert (after[r] - ref[0]).abs().max() < TOL
        ref_live = live_row(fresh.live(latent_span=40), 0)
        for k, v in live_row(live, r).items():
            if v.dtype == torch.bool:
                assert v.all() and ref_live[k].all(), f"{k}: a needed position was overwritten"
            elif v.is_floating_point():
                assert (v - ref_live[k]).abs().max() < TOL, k
            else:
                assert torch.equal(v, ref_live[k]), k
        full = model(torch.cat([seen, nxt[r : r + 1]], 1))[0, -3:]
        assert (after[r] - full).abs().max() < TOL


@pytest.mark.parametrize("patcher", PATCHERS)
def test_until_close_decodes_up_to_the_first_later_patch_end(patcher, request, monkeypatch):
    """`decode(..., until_close=True)` (a speculative verify block) against a plain decode of
    the same bytes: n_used is the first byte after byte 0 that closes a patch, the logits
    before it agree, the latent steps at most one patch per row, and after a rollback (or
    none: the next call drops the undecoded bytes) both caches hold the same state."""
    model = make_model(patcher, request=request)
    stepped = []
    step = model.latent.step

    def counting_step(x, kv, *args, **kwargs):
        stepped.append(x.shape[1])
        return step(x, kv, *args, **kwargs)

    ids = text(B=3, T=90, seed=5)
    g = torch.Generator().manual_seed(3)
    a, b = (model.new_cache(3, max_len=100, max_step=8) for _ in range(2))
    t, short = torch.zeros(3, dtype=torch.long), 0
    for i in range(14):
        feed = torch.stack([ids[r, t[r] : t[r] + 8] for r in range(3)])
        ref = model.decode(feed, b)
        ends = b.last.ends
        monkeypatch.setattr(model.latent, "step", counting_step)
        stepped.clear()
        got, n_used = model.decode(feed, a, until_close=True)
        monkeypatch.setattr(model.latent, "step", step)
        assert all(m <= 1 for m in stepped), stepped
        for r in range(3):
            n = int(n_used[r])
            later = ends[r, 1:].nonzero().flatten()
            assert n == (int(later[0]) + 1 if len(later) else 8), (i, r)
            assert (got[r, :n] - ref[r, :n]).abs().max() < TOL
        short += int((n_used < 8).sum())
        keep = (torch.rand(3, generator=g) * (n_used + 1)).long()
        if i % 3 == 2:  # no rollback: the next call keeps all n_used bytes
            keep = n_used
        else:
            a.rollback(keep)
        b.rollback(keep)
        t += keep
    assert short > 5, "the blocks must stop at patch ends"
    nxt = torch.tensor([[ord("x"), ord(" "), ord("y")]] * 3)
    assert (model.decode(nxt, a) - model.decode(nxt, b)).abs().max() < TOL
    span = int(b.n_patches.max())
    for k, v in a.live(latent_span=span).items():
        w = b.live(latent_span=span)[k]
        assert (v.float() - w.float()).abs().max() < TOL, k


def test_rollback_to_zero_and_all():
    model = make_model("fixed")
    ids = text(B=2, T=20)
    cache = model.new_cache(2, max_len=40, max_step=8)
    model.decode(ids[:, :8], cache)
    before = {k: v.clone() for k, v in cache.live(latent_span=8).items()}
    model.decode(ids[:, 8:16], cache)
    cache.rollback(torch.tensor([0, 0]))
    for k, v in cache.live(latent_span=8).items():
        assert torch.equal(v, before[k]), k
    out = model.decode(ids[:, 8:16], cache)
    cache.rollback(torch.tensor([8, 8]))
    assert (out - model(ids[:, :16])[:, 8:]).abs().max() < TOL


def test_byte_transformer_step_and_rollback():
    model = ByteTransformer(TransformerConfig(dim=32, n_layers=2, attn_heads=2, window=8)).eval()
    ids = text(B=2, T=48)
    full = model(ids)
    cache = model.new_cache(2, max_len=64, max_step=12)
    assert cache.kv.size == 20
    outs = []
    for t, n in chunks(48):
        junk = torch.randint(0, 258, (2, 12))
        junk[:, :n] = ids[:, t : t + n]
        outs.append(model.step(junk[:, : n + 3], cache)[:, :n])
        cache.rollback(torch.tensor([n, n]))
    assert (torch.cat(outs, 1) - full).abs().max() < TOL
    # a clone shares storage: stepping it again over the same bytes stays correct
    snap = cache.clone()
    a = model.step(torch.tensor([[97], [98]]), cache)
    b = model.step(torch.tensor([[97], [98]]), snap)
    assert torch.equal(a, b)


def test_capacity_errors():
    model = make_model("fixed")
    cache = model.new_cache(1, max_len=16, max_step=8)
    with pytest.raises(ValueError, match="bytelm: .*max_len"):
        model.prefill(torch.full((1, 17), 97), cache)
    with pytest.raises(ValueError, match="bytelm: .*max_step"):
        model.decode(torch.full((1, 9), 97), cache)
    model.prefill(torch.full((1, 14), 97), cache)
    with pytest.raises(ValueError, match="bytelm: .*max_len"):
        model.decode(torch.full((1, 3), 97), cache)
    model.decode(torch.full((1, 2), 97), cache)  # exactly full is fine


def test_latent_runs_once_per_closed_patch(monkeypatch):
    """Decoding steps the latent transformer only for the patches a call closes: byte by
    byte with fixed:4 that is one latent row every 4th byte and nothing in between, reading
    only the slots of the patches closed so far; a call over several bytes steps its closed
    patches together, (B, most closed by a row); when at most 1/COMPACT_ROWS of the rows close
    a patch, only those rows are stepped. The logits still equal the forward pass."""
    model = ByteLM(tiny_bytelm_config("fixed", k=4)).eval()
    stepped, slots = [], []  # (rows, patches) of each latent step; the KV slots it reads
    step = model.latent.step

    def counting_step(x, kv, *args, **kwargs):
        stepped.append(tuple(x.shape[:2]))
        slots.append(kv.size)
        return step(x, kv, *args, **kwargs)

    monkeypatch.setattr(model.latent, "step", counting_step)

    ids = text(B=1, T=40)  # crosses a document boundary
    ends = model.patcher.ends(ids)  # (1, T)
    cache = model.new_cache(1, max_len=48, max_step=4)
    outs = []
    for t in range(ids.shape[1]):
        stepped.clear()
        outs.append(model.decode(ids[:, t : t + 1], cache))
        assert stepped == ([(1, 1)] if ends[0, t] else []), f"byte {t}"
        if ends[0, t]:  # attention reads the slots of the patches closed so far, not all
            assert slots[-1] == int(ends[0, : t + 1].sum()) < cache.lat.size, f"byte {t}"
    assert 8 <= int(ends.sum()) < 40, "fixed:4 closes a patch on some bytes, not all"
    assert (torch.cat(outs, 1) - model(ids)).abs().max() < TOL

    ids = text(B=2, T=64)
    ends = model.patcher.ends(ids)  # (2, T)
    cache = model.new_cache(2, max_len=80, max_step=12)
    outs, most = [], 0
    for t, n in chunks(ids.shape[1]):
        stepped.clear()
        outs.append(model.decode(ids[:, t : t + n], cache))
        m = int(ends[:, t : t + n].sum(1).max())
        assert stepped == ([(2, m)] if m else []), f"bytes {t}..{t + n}"
        most = max(most, m)
    assert most >= 2, "some call must close several patches in a row"
    assert (torch.cat(outs, 1) - model(ids)).abs().max() < TOL

    # 8 rows at different patch phases (ragged prompts): when few rows close a patch, only
    # those are stepped, their latent KV rows taken out and put back
    ids = text(B=8, T=40, seed=2)
    ends = model.patcher.ends(ids)  # (8, T)
    lengths = torch.arange(9, 17)
    cache = model.new_cache(8, max_len=48, max_step=16)
    model.prefill(
        torch.where(torch.arange(40) < lengths[:, None], ids, PAD)[:, :16], cache, lengths
    )
    rows, outs, few = torch.arange(8), [], 0
    for t in range(20):
        stepped.clear()
        outs.append(model.decode(ids[rows, lengths + t][:, None], cache))
        b = int(ends[rows, lengths + t].sum())  # rows closing a patch
        few += 0 < b * COMPACT_ROWS <= 8
        assert stepped == ([(b, 1)] if 0 < b * COMPACT_ROWS <= 8 else [(8, 1)] if b else [])
    assert few >= 10, "fixed:4 over 8 phases: mostly two rows close a patch per step"
    out = torch.cat(outs, 1)  # (8, 20, K, V)
    for r in range(8):
        ref = model(ids[r : r + 1, : lengths[r] + 20])[0, lengths[r] :]
        assert (out[r] - ref).abs().max() < TOL, f"row {r}"
