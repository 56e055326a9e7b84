"""The capturable decode step: fixed shapes, no host sync, compiled.

- the fixed-shape step (every row steps n latent slots, padding to the dump slot) equals
  the forward pass for every head kind and pooling, with patches closing inside calls and
  rows that close patches while others do not;
- neither it nor the rule patchers' step reads anything back from the device;
- the generation loop tracks finished rows on the device: a run that ends early reads back
  at most once per SYNC_EVERY passes, and runs at most SYNC_EVERY - 1 passes too many;
- compiled decoding (slow: compilation) gives the eager logits, and greedy speculative
  output stays byte-identical to plain, compiled or not.
"""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bytelm.generate import SYNC_EVERY, generate
from bytelm.model import ByteLM
from bytelm.vocab import PAD
from tests.conftest import tiny_bytelm_config
from tests.model.test_cache import TOL, chunks, text


def model_for(patcher="fixed", pooling="mean", kind="block", heads=3, seed=0) -> ByteLM:
    torch.manual_seed(seed)
    cfg = tiny_bytelm_config(patcher=patcher, pooling=pooling, heads=heads)
    cfg = dataclasses.replace(cfg, out_heads=dataclasses.replace(cfg.out_heads, kind=kind))
    return ByteLM(cfg).eval()


class Syncs(TorchDispatchMode):
    """Counts reads of device values on the host: `.item()`, `bool(t)`, `int(t)` (one aten
    op each) and `.tolist()` (no aten op: counted through the `tolist` patch)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.n, self.on = 0, True
        tolist = torch.Tensor.tolist

        def counted(t):
            self.n += self.on
            return tolist(t)

        monkeypatch.setattr(torch.Tensor, "tolist", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += self.on and func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "patcher,pooling,kind",
    [("fixed", "mean", "block"), ("space", "attn", "mlp"), ("learned", "max", "linear"),
     ("space", "mean", "linear"), ("learned", "attn", "block")],
)  # fmt: skip
def test_fixed_shape_decode_equals_forward(patcher, pooling, kind):
    model = model_for(patcher, pooling, kind)
    ids = text()
    full = model(ids)
    cache = model.new_cache(2, max_len=80, max_step=12, fixed_shapes=True)
    outs = [model.decode(ids[:, t : t + n], cache) for t, n in chunks(ids.shape[1])]
    assert (torch.cat(outs, 1) - full).abs().max() < TOL
    assert torch.equal(cache.n_patches, model.patcher.ends(ids).sum(1)) if patcher != "learned" \
        else int(cache.n_patches.min()) > 2  # fmt: skip


def test_fixed_shape_decode_has_no_host_sync_and_steps_every_row(monkeypatch):
    """The default step reads back how many patches close (one sync per call); the fixed
    one reads nothing and steps (B, n) latent slots whatever closes."""
    model = model_for("space")
    stepped = []
    step = model.latent.step
    model.latent.step = lambda x, *a, **k: stepped.append(tuple(x.shape[:2])) or step(x, *a, **k)
    ids = text(T=40)
    counts = {}
    for fixed in (False, True):
        cache = model.new_cache(2, max_len=48, max_step=8, fixed_shapes=fixed)
        model.prefill(ids[:, :8], cache)
        stepped.clear()
        with Syncs(monkeypatch) as s:
            for t in range(8, 20):
                model.decode(ids[:, t : t + 1], cache)
            model.decode(ids[:, 20:27], cache)
        counts[fixed] = (s.n, list(stepped))
    assert counts[True] == (0, [(2, 1)] * 12 + [(2, 7)])
    assert counts[False][0] > 0 and len(counts[False][1]) < 13


def test_rollback_of_fixed_shape_calls_equals_the_kept_bytes():
    model = model_for("space", heads=3)
    ids = text(T=48)
    keep = torch.tensor([2, 5])
    a = model.new_cache(2, max_len=64, max_step=8, fixed_shapes=True)
    b = model.new_cache(2, max_len=64, max_step=8)
    model.prefill(ids[:, :30], a)
    model.prefill(ids[:, :30], b)
    model.decode(ids[:, 30:36], a)
    a.rollback(keep)
    model.decode(torch.where(torch.arange(6) < keep[:, None], ids[:, 30:36], PAD), b, keep)
    for t in range(3):  # both continue from their kept bytes alike
        nxt = ids[:, 40 + t : 41 + t]
        assert (model.decode(nxt, a) - model.decode(nxt, b)).abs().max() < TOL
    assert torch.equal(a.length, b.length) and torch.equal(a.n_patches, b.n_patches)


def test_generation_reads_back_finished_rows_every_sync_every_passes(monkeypatch):
    model = model_for("space", heads=3)
    calls, decode, s = [], model.decode, Syncs(monkeypatch)

    def counted(*a, **k):  # the loop's own reads: not those of the (eager) decode step
        calls.append(1)
        s.on = False
        out = decode(*a, **k)
        s.on = True
        return out

    model.decode = counted
    with s:
        r = generate(model, [b"ab", b"the cat "], 60, temperature=0.0)
    assert r.finish == ["length"] * 2 and [len(b) for b in r.bytes] == [60, 60]
    assert len(calls) == r.stats.forward_passes == 60  # 1 prefill call, 59 decode calls
    # 3 reads per sync point (counts, done, bytes), 1 + 59 // SYNC_EVERY of them and one at
    # the end, then 5 for the result and statistics: none per pass
    assert s.n <= 3 * (59 // SYNC_EVERY + 2) + 5, f"{s.n} host reads in 59 passes"
    # a row that stops early: at most SYNC_EVERY - 1 passes after the last row is done
    stop = r.bytes[0][5:7]
    calls.clear()
    r2 = generate(model, b"ab", 60, temperature=0.0, stop=stop)
    assert r2.finish == ["stop"] and r2.bytes == r.bytes[0][: r.bytes[0].index(stop) + 2]
    assert len(calls) - 1 <= len(r2.bytes) + SYNC_EVERY - 1


@pytest.fixture(scope="module")
def compiled_model():
    return model_for("space", heads=3, seed=3)


@pytest.mark.slow
def test_compiled_decode_equals_eager(compiled_model):
    model = compiled_model
    ids = text(T=40)
    # generate's cache for 2 rows, 2 drafts: its speculative calls reuse this test's graph
    eager = model.new_cache(2, max_len=256, max_step=64)
    comp = model.new_cache(2, max_len=256, max_step=64, compile=True)
    model.prefill(ids[:, :10], eager)
    model.prefill(ids[:, :10], comp)
    for t in range(10, 22):  # byte by byte: patches close in some calls, in one row or both
        e, c = model.decode(ids[:, t : t + 1], eager), model.decode(ids[:, t : t + 1], comp)
        assert (e - c).abs().max() < TOL, f"byte {t}"
    for t in range(22, 34, 3):  # 3 bytes a call, rolled back to 1 and 2
        e, c = model.decode(ids[:, t : t + 3], eager), model.decode(ids[:, t : t + 3], comp)
        assert (e - c).abs().max() < TOL, f"bytes {t}..{t + 3}"
        eager.rollback(torch.tensor([1, 2]))
        comp.rollback(torch.tensor([1, 2]))
    assert torch.equal(eager.length, comp.length)
    assert torch.equal(eager.n_patches, comp.n_patches)


@pytest.mark.slow
def test_compiled_decode_of_a_learned_router_equals_eager():
    """On CPU the router runs in the compiled encoder half and its probabilities smooth the
    eager latent's outputs between the two compiled halves."""
    model = model_for("learned", "attn", "mlp", heads=2, seed=1)
    ids = text(T=30)
    eager = model.new_cache(2, max_len=64, max_step=8)
    comp = model.new_cache(2, max_len=64, max_step=8, compile=True)
    model.prefill(ids[:, :10], eager)
    model.prefill(ids[:, :10], comp)
    for t in range(10, 26):
        e, c = model.decode(ids[:, t : t + 1], eager), model.decode(ids[:, t : t + 1], comp)
        assert (e - c).abs().max() < TOL, f"byte {t}"
    assert torch.equal(eager.n_patches, comp.n_patches) and int(eager.n_patches.min()) > 2


@pytest.mark.slow
def test_compiled_speculative_greedy_equals_plain(compiled_model):
    model = compiled_model
    prompts = [b"the cat ", b"hello world, "]
    plain = generate(model, prompts, 40, temperature=0.0)
    for compile in (False, True):
        p = generate(model, prompts, 40, temperature=0.0, compile=compile)
        s = generate(model, prompts, 40, 0.0, speculative=True, draft_heads=2, compile=compile)
        assert p.bytes == plain.bytes and s.bytes == plain.bytes, f"compile={compile}"
        assert s.stats.forward_passes < p.stats.forward_passes


def test_compile_needs_a_patcher_state_of_tensors(request):
    from tests.model.test_cache import make_model

    model = make_model("entropy", request=request)  # its state holds the entropy model's cache
    with pytest.raises(ValueError, match="^bytelm: a compiled decode needs a patcher"):
        model.new_cache(1, 32, compile=True)
    model.new_cache(1, 32, fixed_shapes=True)  # the fixed-shape step itself takes any patcher
