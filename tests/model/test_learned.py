"""Learned chunking: a router inside ByteLM decides where patches end (H-Net, made causal).

- the router's step agrees with its batched rule (forced ends included), in ragged blocks;
- no logit sees a future byte, for every pooling, with boundaries that vary;
- a mapping that reads p_{t+1} (H-Net's "a chunk starts at t+1" taken as ends[t]) leaks,
  and the causality check catches it;
- cached decode equals the forward (logits and ends), rollback included, and greedy
  speculative output equals plain;
- the loss reaches W_q and W_k, and the ratio loss moves the boundary rate to its target;
- the failure modes are detected: collapse, boundaries inside runs of one byte, a stuck rate;
- calibration hits its target, and the router is checkpointed with the model.
"""

import dataclasses

import pytest
import torch

from bytelm.config import ConfigError, PatcherConfig, RunConfig
from bytelm.generate import generate
from bytelm.model import ByteLM
from bytelm.model.chunking import (
    STATS,
    calibrate,
    confidence,
    ratio_loss,
    routing_stats,
    routing_warnings,
    smooth,
)
from bytelm.model.layers import doc_ids
from bytelm.model.loss import multi_head_loss
from bytelm.patchers import LearnedBoundaries, make_patcher
from bytelm.vocab import BOS, EOS, PAD
from tests.conftest import tiny_bytelm_config
from tests.model.test_cache import chunks, text
from tests.model.test_causality import assert_causal, packed_text

TOL = 1e-4


def learned_model(pooling="mean", heads=3, seed=0, sample=None) -> ByteLM:
    """A random tiny learned ByteLM whose threshold sits near the median p of `sample`, so
    that boundaries vary (`_threshold_in_gap`)."""
    torch.manual_seed(seed)
    model = ByteLM(tiny_bytelm_config(patcher="learned", pooling=pooling, heads=heads)).eval()
    with torch.no_grad():
        p, _ = model.route(text() if sample is None else sample)
    model.patcher.threshold = _threshold_in_gap(p)
    return model


def _threshold_in_gap(p: torch.Tensor, margin: float = 2e-3) -> float:
    """A threshold near the median of p (forced ones aside), in the middle of a gap at least
    `margin` wide between two values (or the widest gap of the middle third), so that no p is
    a rounding error away from it: the cached decode's p differ from the forward's by ~1e-7."""
    v = p[p < 1].flatten().sort().values
    gaps = [(float(v[i + 1] - v[i]), i) for i in range(len(v) // 3, 2 * len(v) // 3)]
    wide = [g for g in gaps if g[0] >= margin]
    _, i = min(wide, key=lambda g: abs(g[1] - len(v) // 2)) if wide else max(gaps)
    return float(v[i] + v[i + 1]) / 2


# ----------------------------------------------------------------------------- the router


def test_router_step_agrees_with_route_in_ragged_blocks():
    """Forced ends (row start, BOS, EOS, max_patch_len) and p > θ, fed in uneven blocks."""
    torch.manual_seed(3)
    router = LearnedBoundaries(16, threshold=0.75, max_patch_len=4)
    B, T = 3, 70
    ids = torch.randint(97, 100, (B, T))
    ids[:, 0] = BOS
    ids[0, 30], ids[0, 31], ids[2, 50] = EOS, BOS, EOS
    h = torch.randn(B, T, 16)
    h[1, 10:40] = h[1, 9]  # identical states: p = 0, only max_patch_len cuts
    p, ends = router.route(ids, h)
    assert (p[1, 11:40] < 1e-6).all(), "identical states must give p = 0"
    assert ends[1, 11:40].sum() == 29 // 4 + (ends[1, 11:40].sum() > 29 // 4), "cut every 4"
    assert ends.float().mean() > 0.2 and not ends.all()
    # incremental: blocks of uneven size, each row taking a ragged prefix of its block
    state, t, got = router.start(B), torch.zeros(B, dtype=torch.long), torch.zeros_like(ends)
    g = torch.Generator().manual_seed(0)
    while int(t.min()) < T:
        n = int(torch.randint(1, 9, (1,), generator=g))
        keep = torch.minimum(torch.randint(0, n + 1, (B,), generator=g), T - t)
        at = (t[:, None] - 1 + torch.arange(n + 1)).clamp(0, T - 1)
        blk_ids = torch.gather(ids, 1, at[:, 1:])
        blk_h = h[torch.arange(B)[:, None], at]
        _, e = router.route_step(state, blk_ids, blk_h, n_valid=keep)
        for r in range(B):
            got[r, t[r] : t[r] + keep[r]] = e[r, : keep[r]]
            assert not e[r, keep[r] :].any()
        t = t + keep
    assert torch.equal(got, ends)


def test_learned_source_refuses_without_the_model():
    src = make_patcher(PatcherConfig("learned"))
    ids = torch.tensor([[BOS, 97, 98]])
    with pytest.raises(ValueError, match="no weights"):
        src.ends(ids, states=torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="encoder states"):
        LearnedBoundaries(8).ends(ids)
    model = ByteLM(tiny_bytelm_config(patcher="learned"))
    assert isinstance(model.patcher, LearnedBoundaries)
    assert torch.equal(model.patcher.w_q.weight, torch.eye(32)), "W_q starts as the identity"
    assert {"patcher.w_q.weight", "patcher.w_k.weight"} <= set(model.state_dict())


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="patcher.threshold"):
        PatcherConfig("learned", threshold=1.0)
    with pytest.raises(ConfigError, match="patcher.target_bytes_per_patch"):
        PatcherConfig("learned", target_bytes_per_patch=1.0)
    with pytest.raises(ConfigError, match="patcher.ratio_loss_weight"):
        PatcherConfig("learned", ratio_loss_weight=-1)
    PatcherConfig("learned", target_bytes_per_patch=1.0, ratio_loss_weight=0)  # no ratio loss


def test_smoothing_is_the_ema_and_restarts():
    torch.manual_seed(0)
    z, g = torch.randn(2, 9, 5), torch.rand(2, 9) * 0.9 + 0.05
    g[:, 0], g[1, 4] = 1.0, 1.0  # a restart: a new document
    ref, prev = torch.zeros_like(z), torch.zeros(2, 5)
    for j in range(9):
        prev = g[:, j, None] * z[:, j] + (1 - g[:, j, None]) * prev
        ref[:, j] = prev
    assert (smooth(z, g) - ref).abs().max() < 1e-5
    z2 = z.clone()
    z2[1, :4] = 100.0  # before the restart
    assert torch.equal(smooth(z2, g)[1, 4:], smooth(z, g)[1, 4:])
    p, e = torch.rand(2, 7, requires_grad=True), torch.rand(2, 7) > 0.5
    c = confidence(p, e)
    assert torch.equal(c, torch.ones(2, 7, 1)), "straight-through: exactly 1 forward"
    c.sum().backward()
    assert torch.equal(p.grad, torch.where(e, 1.0, -1.0))


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("pooling", ["mean", "max", "sum", "attn"])
def test_learned_bytelm_is_causal(pooling):
    ids = packed_text()
    model = learned_model(pooling, sample=ids)
    with torch.no_grad():
        p, ends = model.route(ids)
    assert 0.2 < ends[:, 1:].float().mean() < 0.8, "boundaries must vary"
    pos = {0, 1, ids.shape[1] - 2}
    for e in ends[0].nonzero().flatten().tolist()[1:7]:
        pos |= {max(e - 1, 0), e, min(e + 1, ids.shape[1] - 2)}
    assert_causal(model, ids, sorted(pos))


def test_reading_p_of_the_next_byte_leaks():
    """H-Net's b_{t+1} ("a chunk starts at t+1") taken as ends[t] reads byte t+1's state:
    the causality check must catch it."""

    class Lookahead(LearnedBoundaries):
        def route(self, ids, states):
            p, ends = super().route(ids, states)
            return p, torch.roll(ends, -1, dims=1)

    ids = packed_text()
    model = learned_model(sample=ids)
    leaky = Lookahead(32, model.patcher.threshold, model.patcher.max_patch_len)
    leaky.load_state_dict(model.patcher.state_dict())
    model.patcher = leaky
    with pytest.raises(AssertionError, match="changed"):
        assert_causal(model, ids, [3, 8, 13])


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("pooling", ["mean", "max", "attn"])
def test_decode_in_uneven_chunks_equals_forward(pooling):
    ids = text()
    model = learned_model(pooling, sample=ids)
    with torch.no_grad():
        full, r = model(ids, routing=True)
    cache = model.new_cache(2, max_len=80, max_step=12)
    outs, ends, most_closed = [], [], 0
    for t, n in chunks(ids.shape[1]):
        before = cache.n_patches.clone()
        outs.append(model.decode(ids[:, t : t + n], cache))
        ends.append(cache.last.ends)
        most_closed = max(most_closed, int((cache.n_patches - before).max()))
    assert torch.equal(torch.cat(ends, 1), r.ends), "decode must take the forward's ends"
    assert (torch.cat(outs, 1) - full).abs().max() < TOL
    assert most_closed >= 2, "some call must close several patches"


def test_rollback_equals_a_run_that_saw_only_the_kept_bytes():
    ids = text(B=3, T=80, seed=3)
    model = learned_model(sample=ids)
    g = torch.Generator().manual_seed(7)
    cache = model.new_cache(3, max_len=80, max_step=9)
    kept, t = [[] for _ in range(3)], torch.zeros(3, dtype=torch.long)
    while int(t.min()) < 40:
        feed = torch.stack([ids[r, t[r] : t[r] + 9] for r in range(3)])
        feed[:, 5:] = torch.randint(0, 258, (3, 4), generator=g)  # drafts that get rejected
        keep = torch.randint(0, 6, (3,), generator=g)
        model.decode(feed, cache)
        cache.rollback(keep)
        for r in range(3):
            kept[r] += feed[r, : keep[r]].tolist()
        t += keep
    nxt = torch.tensor([[ord("x"), ord(" "), ord("y")]] * 3)
    after = model.decode(nxt, cache)
    for r in range(3):
        seen = torch.tensor([kept[r] + nxt[r].tolist()])
        full, routed = model(seen, routing=True)
        assert (after[r] - full[0, -3:]).abs().max() < TOL
        assert int(cache.n_patches[r]) == int(routed.ends[0].sum())


def test_speculative_greedy_is_identical_to_plain():
    prompts = [b"the cat ", b"", b"hello world, "]
    model = learned_model(heads=4, seed=1)
    with torch.no_grad():  # livelier greedy text than a random tiny model's usual byte runs
        for w in [*model.embed.parameters(), model.from_latent.weight]:
            w.mul_(10.0)
        sample = torch.randint(0, 256, (3, 80), generator=torch.Generator().manual_seed(0))
        sample[:, 0] = BOS
        model.patcher.threshold = _threshold_in_gap(model.route(sample)[0])
    plain = generate(model, prompts, 120, temperature=0.0)
    seqs = [[BOS, *pr, *b] for pr, b in zip(prompts, plain.bytes)]
    with torch.no_grad():
        p, _ = model.route(torch.tensor([s[: min(map(len, seqs))] for s in seqs]))
    assert (p[:, 1:] > model.patcher.threshold).float().mean() > 0.1, "the router must fire"
    for d in (1, 3):
        spec = generate(model, prompts, 120, temperature=0.0, speculative=True, draft_heads=d)
        assert spec.bytes == plain.bytes, f"{d} draft heads changed the greedy output"
        assert 0.05 < spec.stats.accept_rate[0] < 0.95, "drafts must be accepted and rejected"


# ----------------------------------------------------------------------------- training


def _train_batch(B=4, T=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(97, 105, (B, T), generator=g)
    ids[:, ::7] = 32
    ids[:, 0] = BOS
    return ids


def test_the_loss_reaches_w_q_and_w_k():
    """Through the smoothing and the straight-through confidence (cross-entropy alone), and
    through the ratio loss alone."""
    model = learned_model(sample=_train_batch()).train()
    ids = _train_batch()
    logits, r = model(ids, routing=True)
    multi_head_loss(logits, ids, doc_ids(ids)).loss.backward()
    for w in (model.patcher.w_q.weight, model.patcher.w_k.weight):
        assert w.grad is not None and w.grad.abs().sum() > 0
    model.zero_grad()
    _, r = model(ids, routing=True)
    ratio_loss(r.p, r.ends, ids != PAD, 4.0).backward()
    for w in (model.patcher.w_q.weight, model.patcher.w_k.weight):
        assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("target", [6.0, 1.5])
def test_the_ratio_loss_moves_the_rate_to_its_target(target):
    """From ~2 bytes per patch (threshold 0.5 at init), a few AdamW steps of cross-entropy plus
    the ratio loss move the rate most of the way toward the target, in either direction."""
    torch.manual_seed(0)
    cfg = tiny_bytelm_config(patcher="learned")
    cfg = dataclasses.replace(cfg, patcher=dataclasses.replace(cfg.patcher, max_patch_len=12))
    model = ByteLM(cfg).train()
    ids = _train_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def bpp():
        with torch.no_grad():
            _, e = model.route(ids)
        return ids.numel() / int(e.sum())

    start = bpp()
    for _ in range(25):
        logits, r = model(ids, routing=True)
        loss = multi_head_loss(logits, ids, doc_ids(ids)).loss
        loss = loss + 1.0 * routing_stats(r, target, model.patcher.threshold)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = bpp()
    assert abs(end - target) < 0.5 * abs(start - target), (start, end, target)


# ----------------------------------------------------------------------------- guards


def test_identical_states_give_no_boundary_and_a_flipped_router_is_caught():
    """A long run of one byte: once the n-grams and the encoder window see only the run, the
    states are identical, cos = 1, p = 0, and only max_patch_len cuts. A router with W_k = -W_q
    puts a boundary at every byte of the run, and the run metric and warning report it."""
    model = ByteLM(tiny_bytelm_config(patcher="learned")).eval()  # window 8, n-grams <= 5
    ids = torch.tensor([[BOS, *b"the cat ", *([ord("a")] * 40), *b" sat", EOS]])
    with torch.no_grad():
        p, ends = model.route(ids)
        # bytes t-1 and t see only the run: 5-grams from 9 + 4, the window of 8 from 13 + 7
        run = slice(1 + 8 + 12, 1 + 8 + 40)
        assert (p[0, run] < 1e-6).all()
        gaps = ends[0, run].nonzero().flatten().diff()
        assert (gaps == model.patcher.max_patch_len).all(), "only max_patch_len cuts in the run"
        _, r = model(ids, routing=True)
        ok = dict(zip(STATS, routing_stats(r, 4.0, model.patcher.threshold).tolist()))
        assert ok["run_boundary_rate"] < 0.3
        assert "runs" not in routing_warnings(ok, 4.0, 6, past_warmup=True)
        model.patcher.w_k.weight.copy_(-model.patcher.w_q.weight)
        _, r = model(ids, routing=True)
    bad = dict(zip(STATS, routing_stats(r, 4.0, model.patcher.threshold).tolist()))
    assert bad["run_boundary_rate"] == 1.0
    assert "identical states" in routing_warnings(bad, 4.0, 6, past_warmup=True)["runs"]


def test_warnings_for_collapse_and_a_stuck_rate():
    base = dict(ratio_loss=1.0, boundary_rate=0.25, boundary_p=0.3, router_rate=0.2)
    base["run_boundary_rate"] = 0.0
    assert routing_warnings(base, 4.0, 16, past_warmup=True) == {}
    never = {**base, "router_rate": 0.0, "boundary_rate": 1 / 15}
    assert "collapsed" in routing_warnings(never, 4.0, 16, True)["collapse"]
    always = {**base, "router_rate": 0.97, "boundary_rate": 0.97}
    assert "collapsed" in routing_warnings(always, 4.0, 16, True)["collapse"]
    stuck = {**base, "boundary_rate": 0.5}  # 2 bytes per patch against 4
    assert "stuck" not in routing_warnings(stuck, 4.0, 16, past_warmup=False)
    assert "stuck" in routing_warnings(stuck, 4.0, 16, past_warmup=True)["stuck"]


# ----------------------------------------------------------------------------- knob, checkpoint


class _Split:
    """A training split: its calibration sample is fixed windows."""

    def __init__(self, ids):
        self.ids = ids

    def sample_batches(self, seq_len, batch_size, max_bytes=None, sample=0):
        yield from self.ids.split(batch_size)


@pytest.mark.parametrize("target", [3.0, 5.0])
def test_calibration_hits_the_target_and_forward_uses_it(target):
    model = learned_model()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(97, 123, (12, 128), generator=g)
    ids[:, ::9] = 32
    ids[:, 0] = BOS
    pc, cal = calibrate(model, _Split(ids), target, seq_len=128)
    assert abs(cal.measured_bytes_per_patch / target - 1) <= 0.02
    assert model.patcher.threshold == pc.threshold == cal.threshold
    assert model.cfg.patcher.measured_bytes_per_patch == cal.measured_bytes_per_patch
    with torch.no_grad():
        _, r = model(ids, routing=True)
    assert abs(ids.numel() / int(r.ends.sum()) / target - 1) < 0.03


def test_the_router_is_checkpointed_with_the_model(tmp_path):
    from bytelm.checkpoint import load_model, save_checkpoint

    model = learned_model()
    with torch.no_grad():
        model.patcher.w_q.weight.add_(0.1 * torch.randn(32, 32))
    cfg = dataclasses.replace(
        model.cfg, patcher=PatcherConfig("learned", threshold=0.55, max_patch_len=6)
    )
    model.patcher.threshold = 0.55
    save_checkpoint(tmp_path / "ckpt", model, RunConfig(model=cfg))
    loaded, _ = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded.patcher.w_q.weight, model.patcher.w_q.weight)
    assert loaded.patcher.threshold == 0.55
    ids = text()
    with torch.no_grad():
        assert (loaded(ids) - model(ids)).abs().max() < 1e-6
