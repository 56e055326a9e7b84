"""Output head kinds (block, mlp, linear, chain): causal, cached decode equal to the forward,
exact parameter and FLOP counts, residual heads that start as copies of head 1, and chain
drafts in generation equal to the forward's chain heads."""

import dataclasses

import pytest
import torch

from bytelm.config import OutputHeadsConfig
from bytelm.evals.flops import flops_per_byte, param_counts
from bytelm.model import ByteLM
from bytelm.vocab import PAD
from tests.conftest import tiny_bytelm_config
from tests.evals.test_flops import T, by_stage, lm_cfg, measure
from tests.model.test_cache import TOL, chunks, text
from tests.model.test_causality import assert_causal, packed_text

KINDS = ["block", "mlp", "linear", "chain"]
RESIDUAL = ["mlp", "linear", "chain"]


def model_of(kind: str, n: int = 3, seed: int = 0) -> ByteLM:
    torch.manual_seed(seed)
    cfg = tiny_bytelm_config(heads=n)
    cfg = dataclasses.replace(cfg, out_heads=OutputHeadsConfig(n=n, kind=kind))
    model = ByteLM(cfg).eval()
    with torch.no_grad():  # random residual branches and norms, so that the heads differ
        for p in model.heads.parameters():
            p.normal_(0, 0.05) if p.dim() == 2 else p.normal_(1, 0.2)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_heads_are_causal(kind):
    assert_causal(model_of(kind), packed_text(), positions=[0, 5, 11, 20, 21, 30, 46])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_equals_forward(kind):
    model, ids = model_of(kind), text()
    full = model(ids)
    for heads in (1,) if kind == "chain" else (1, 3):  # chain drafts: `chain_logits`
        cache = model.new_cache(2, max_len=80, max_step=12, heads=heads)
        out = torch.cat(
            [model.decode(ids[:, t : t + n], cache) for t, n in chunks(ids.shape[1])], 1
        )
        assert out.shape == full[:, :, :heads].shape
        assert (out - full[:, :, :heads]).abs().max() < TOL


def test_residual_heads_keep_no_kv_cache():
    dec = lambda kind: len(model_of(kind).new_cache(1, max_len=32).dec.k)
    assert dec("block") == 1 + 3  # the decoder layer, then one per head
    assert dec("mlp") == dec("linear") == dec("chain") == 1
    with pytest.raises(ValueError, match="^bytelm: a model with chain draft heads decodes head 1"):
        model_of("chain").new_cache(1, max_len=32, heads=2)


def test_chain_drafts_in_generation_are_the_forward_chain_heads():
    """After decoding bytes 0..t, `chain_logits` with the next j true bytes gives what the
    forward's head j + 1 gives at t + j (the decoder state of t plus byte t + j's n-grams),
    in both rows of a batch, just after a document start (row 0's at 21) included; the heads
    differ from head 1. (Generation drafts no BOS, so no chain crosses a document start.)"""
    model, ids = model_of("chain", n=4), packed_text()
    full = model(ids)  # (B, T, 4, V)
    for t in (3, 16, 22, 30):
        cache = model.new_cache(2, max_len=80, max_step=40)
        model.decode(ids[:, : t + 1], cache)
        d, win = model.chain_start(cache)
        S = win.shape[1] + 1
        for j in (1, 2, 3):
            win = torch.cat([win, ids[:, t + j, None]], 1)[:, -S:]
            got = model.chain_logits(d, win, j + 1)
            assert (got - full[:, t + j, j]).abs().max() < TOL, (t, j)
    assert (full[:, :, 1] - full[:, :, 0]).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_residual_heads_start_as_copies_of_head_one(kind):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_bytelm_config(), out_heads=OutputHeadsConfig(n=4, kind=kind))
    model = ByteLM(cfg)
    ids = text()
    logits = model(ids)
    for k in range(1, 4):
        assert torch.equal(logits[:, :, k], logits[:, :, 0])
    # and they learn away from head 1: the language-model loss reaches their weights
    model.loss(ids).loss.backward()
    for layer in model.heads:
        assert layer.down.weight.grad.abs().sum() > 0
    one = dataclasses.replace(cfg, out_heads=OutputHeadsConfig(n=1, kind=kind))
    assert len(ByteLM(one).heads) == 0, "a one-head residual model has no head layer at all"


@pytest.mark.parametrize("kind", KINDS)
def test_counts_are_exact(kind):
    heads = OutputHeadsConfig(n=3, kind=kind, draft_grad=True, draft_sample=1.0)
    cfg = dataclasses.replace(lm_cfg(4), out_heads=heads)
    model = ByteLM(cfg)
    table = lambda m: sum(p.numel() for p in m.parameters())
    got = param_counts(cfg)
    assert got["total"] == table(model)
    assert got["heads"] == table(model.heads) + table(model.norm) + table(model.unembed)
    fwd, train = measure(model, torch.randint(0, 256, (1, T)))
    assert by_stage(fwd)["heads"] == pytest.approx(
        flops_per_byte(cfg, 4, T, training=False)["heads"]
    )
    want = flops_per_byte(cfg, 4, T, training=True, attention="dense")["total"]
    assert want == pytest.approx(train["Dense"], rel=1e-9)


def test_cheap_heads_cost_less():
    cost = {
        kind: flops_per_byte(
            dataclasses.replace(lm_cfg(4), out_heads=OutputHeadsConfig(n=4, kind=kind)), 4, T
        )["heads"]
        for kind in KINDS
    }
    assert cost["linear"] < cost["mlp"] < cost["block"]


def test_unknown_kind_is_a_user_error():
    with pytest.raises(ValueError, match="^bytelm: out_heads.kind"):
        OutputHeadsConfig(kind="tree")


def test_pad_is_not_a_target_for_any_kind():
    model = model_of("mlp")
    ids = text()
    ids[1, 50:] = PAD
    assert torch.isfinite(model.loss(ids).loss)


@pytest.mark.parametrize("kind", KINDS)
def test_draft_losses_can_leave_the_trunk_alone(kind):
    """draft_grad=False: the same logits, and every parameter outside the draft heads' own
    layers gets exactly the gradient of head 1's share of the loss."""
    torch.manual_seed(0)
    heads = OutputHeadsConfig(n=3, kind=kind, weights=(1.0, 0.5, 0.5), draft_grad=False)
    model = ByteLM(dataclasses.replace(tiny_bytelm_config(), out_heads=heads))
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_(0, 0.05)
    ids = text()
    out = model.loss(ids)
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    drafts = [
        n
        for n in got
        if n.startswith("heads.") and not (kind == "block" and n.startswith("heads.0."))
    ]
    assert drafts and all(got[n].abs().sum() > 0 for n in drafts)

    model.zero_grad()
    full = model(ids)
    from bytelm.model.layers import doc_ids
    from bytelm.model.loss import multi_head_loss

    (multi_head_loss(full[:, :, :1], ids, doc_ids(ids)).loss * 0.5).backward()  # 1 / (1 + .5 + .5)
    for n, p in model.named_parameters():
        if n in drafts:
            continue
        want = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(got.get(n, torch.zeros_like(p)), want, atol=1e-6), n
    on = dataclasses.replace(model.cfg, out_heads=dataclasses.replace(heads, draft_grad=True))
    twin = ByteLM(on)
    twin.load_state_dict(model.state_dict())
    assert torch.allclose(twin(ids), full, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_training_flops_of_detached_drafts_are_a_close_upper_bound(kind):
    """draft_grad=False skips the drafts' input and unembedding-weight gradients, which the
    analytic count (3x the forward) still charges: an upper bound, a few percent high."""
    heads = OutputHeadsConfig(n=3, kind=kind, draft_sample=1.0)  # `measure`: every position
    cfg = dataclasses.replace(lm_cfg(4), out_heads=heads)
    assert not cfg.out_heads.draft_grad
    _, train = measure(ByteLM(cfg), torch.randint(0, 256, (1, T)))
    want = flops_per_byte(cfg, 4, T, training=True, attention="dense")["total"]
    assert train["Dense"] <= want <= 1.1 * train["Dense"]


@pytest.mark.parametrize("kind", RESIDUAL)
def test_residual_drafts_decode_speculatively_as_plain(kind):
    from bytelm.generate import generate

    model = model_of(kind, n=4, seed=1)
    with torch.no_grad():  # livelier greedy text than a random tiny model's byte runs
        model.embed.byte.weight.mul_(10.0)
    prompts = [b"the cat ", b"", b"hello world, "]
    plain = generate(model, prompts, 60, temperature=0.0)
    for d in (1, 3):
        spec = generate(model, prompts, 60, temperature=0.0, speculative=True, draft_heads=d)
        assert spec.bytes == plain.bytes, f"{d} draft heads changed the greedy output"


@pytest.mark.parametrize("kind", RESIDUAL)
@pytest.mark.parametrize("draft_grad", [False, True])
def test_sampled_drafts_are_the_full_heads_at_those_positions(kind, draft_grad):
    """draft_at: head 1's logits everywhere and heads 2..K's at the sampled positions equal
    the full forward's; each draft head's loss is the mean of the full forward's per-position
    losses over its valid targets there (packed documents and PAD included), and head 1's
    loss and gradients are untouched."""
    import torch.nn.functional as F

    from bytelm.model.layers import doc_ids
    from bytelm.model.loss import multi_head_loss, target_mask

    heads = OutputHeadsConfig(n=4, kind=kind, weights=(1.0, 0.5, 0.25, 0.25), draft_grad=draft_grad)
    torch.manual_seed(0)
    model = ByteLM(dataclasses.replace(tiny_bytelm_config(), out_heads=heads))
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_(0, 0.05)
    ids = packed_text()
    ids[1, 40:] = PAD
    docs, T = doc_ids(ids), ids.shape[1]
    at = torch.tensor([0, 3, 19, 20, 30, 44, 45, 46, 47])  # document edges, the window's end
    full = model(ids)
    first, drafts = model(ids, draft_at=at)
    assert torch.equal(first, full[:, :, :1])
    assert torch.allclose(drafts, full[:, at, 1:], atol=1e-6)

    offs = model.heads.offsets  # chain heads: every head's target is the next byte
    out = multi_head_loss((first, drafts), ids, docs, heads.weights, draft_at=at, offsets=offs)
    ref = multi_head_loss(full, ids, docs, heads.weights, offsets=offs)
    assert torch.allclose(out.per_head[0], ref.per_head[0]) and out.nats == ref.nats
    for k in range(2, 5):
        o = offs[k - 1]
        ce = F.cross_entropy(
            full[:, : T - o, k - 1].flatten(0, 1), ids[:, o:].flatten(), reduction="none"
        )
        valid = target_mask(ids, docs, o).flatten()
        pos = torch.arange(T - o).repeat(2)
        pick = valid & torch.isin(pos, at)
        assert pick.sum() > 0
        assert torch.allclose(out.per_head[k - 1], ce[pick].mean(), atol=1e-5), k

    every = multi_head_loss(
        model(ids, draft_at=torch.arange(T)), ids, docs, heads.weights, draft_at=torch.arange(T),
        offsets=offs,
    )  # fmt: skip
    assert torch.allclose(every.loss, ref.loss, atol=1e-6)


def test_draft_sample_needs_residual_heads_and_a_share():
    assert OutputHeadsConfig().draft_sample == 0.1  # unset: a tenth for residual heads
    assert OutputHeadsConfig(kind="block").draft_sample == 1.0  # and every position for blocks
    with pytest.raises(ValueError, match="^bytelm: out_heads.draft_sample must lie in"):
        OutputHeadsConfig(draft_sample=0.0)
    with pytest.raises(ValueError, match="needs out_heads.kind mlp, linear or chain"):
        OutputHeadsConfig(kind="block", draft_sample=0.5)


@pytest.mark.parametrize("kind", RESIDUAL)
def test_training_flops_charge_sampled_drafts_their_share(kind):
    """Heads 2..K at a quarter of the positions: the heads' measured forward FLOPs with that
    sample, x 3, are the analytic training count of the heads at draft_sample 0.25."""
    from tests.evals.test_flops import Counter

    # draft_grad: the drafts' unembedding runs through the module (detached, it is a bare
    # F.linear that the counter attributes to no module)
    heads = OutputHeadsConfig(n=4, kind=kind, draft_sample=0.25, draft_grad=True)
    cfg = dataclasses.replace(lm_cfg(4), out_heads=heads)
    model = ByteLM(cfg)
    at = torch.randperm(T)[: T // 4].sort().values
    with Counter() as c:
        model(torch.randint(0, 256, (1, T)), draft_at=at)
    got = 3 * by_stage(c.per_byte(T))["heads"]
    want = flops_per_byte(cfg, 4, T, training=True, attention="dense")["heads"]
    assert got == pytest.approx(want, rel=1e-6)
    full = flops_per_byte(
        dataclasses.replace(cfg, out_heads=OutputHeadsConfig(n=4, kind=kind, draft_sample=1.0)),
        4,
        T,
        training=True,
    )
    assert want < 0.5 * full["heads"]
