"""Analytic FLOPs and parameter counts against the built models.

FlopCounterMode counts matmuls exactly, but it has no formula for the CPU SDPA
op (`_scaled_dot_product_flash_attention_for_cpu`), so on CPU it silently
leaves attention out. We register one, in two flavours: "dense" charges every
(query, key) pair of the call, as FlopCounterMode's own SDPA formulas do on
GPU; "masked" charges only the pairs the boolean mask allows, i.e. the keys a
query may read (causal, window, document, own patch). The analytic count's
`attention="dense"` must equal the first and its default `"causal"` the
second. The backward is charged 2x the forward for every matmul, attention
included (no recompute), which is the 3x-forward training convention.
"""

import re
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bytelm.config import (
    ByteLMConfig,
    NGramConfig,
    OutputHeadsConfig,
    PatcherConfig,
    RunConfig,
    TransformerConfig,
)
from bytelm.evals.flops import flops_per_byte, mean_context, param_counts, run_size
from bytelm.model import ByteLM, ByteTransformer
from bytelm.vocab import BOS, EOS

aten = torch.ops.aten
SDPA_FWD = aten._scaled_dot_product_flash_attention_for_cpu
SDPA_BWD = aten._scaled_dot_product_flash_attention_for_cpu_backward


def _pairs(q, k, attn_mask) -> tuple[int, int]:
    """(query, key) pairs summed over batch and heads: (all of the call, those the mask allows)."""
    B, H, Tq, _ = q.shape
    dense = B * H * Tq * k.shape[2]
    if attn_mask is None:
        return dense, dense
    # SDPA may receive the boolean mask already turned into an additive one (0 / -inf)
    allowed = attn_mask if attn_mask.dtype == torch.bool else torch.isfinite(attn_mask)
    return dense, int(allowed.expand(B, H, Tq, k.shape[2]).sum())


class Counter:
    """FlopCounterMode that charges attention its masked pairs, by module, and
    tallies what dense charging would add (a global number) on the side."""

    def __init__(self):
        self.dense_extra = 0

        def fwd(q, k, v, *args, attn_mask=None, out_val=None, mult=1, **kwargs):
            dense, masked = _pairs(q, k, attn_mask)
            self.dense_extra += mult * 4 * q.shape[-1] * (dense - masked)
            return mult * 4 * q.shape[-1] * masked  # QK^T and PV, 2 FLOPs per multiply-add

        def bwd(grad, q, k, v, *args, attn_mask=None, out_val=None, **kwargs):
            return fwd(q, k, v, attn_mask=attn_mask, mult=2)  # dQ, dK, dP, dV: 2x the forward

        fwd._get_raw = bwd._get_raw = True
        self.mode = FlopCounterMode(display=False, custom_mapping={SDPA_FWD: fwd, SDPA_BWD: bwd})

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)

    def per_byte(self, n: int) -> dict[str, float]:
        """Per byte: every module's count, "Global", and "Dense" (Global, attention charged dense)."""
        out = {k: sum(v.values()) / n for k, v in self.mode.get_flop_counts().items()}
        out["Dense"] = out["Global"] + self.dense_extra / n
        return out


def measure(model, ids) -> tuple[dict, dict]:
    """Per-byte counts of one forward, and of forward + backward.

    Two passes: FlopCounterMode attributes backward FLOPs to modules only when
    their forward ran under it too."""
    with Counter() as fwd:
        model(ids)
    with Counter() as train:
        model(ids).float().pow(2).mean().backward()
    return fwd.per_byte(ids.numel()), train.per_byte(ids.numel())


def by_stage(counts: dict[str, float]) -> dict[str, float]:
    """ByteLM module counts grouped into flops_per_byte's stages."""
    c = lambda *names: sum(counts.get(f"ByteLM.{n}", 0.0) for n in names)
    heads = sum(v for k, v in counts.items() if re.fullmatch(r"ByteLM\.heads\.\d+", k))
    return {
        "encoder": c("encoder"),
        "pool": c("pool_attn"),
        "latent": c("to_latent", "latent", "from_latent"),
        "decoder": c("decoder"),
        "heads": heads + c("unembed"),
    }


def lm_cfg(k: int, pooling: str = "mean", latent_window: int = 0) -> ByteLMConfig:
    local = TransformerConfig(dim=32, n_layers=1, attn_heads=2, window=16)
    return ByteLMConfig(
        ngram=NGramConfig(buckets=64),
        encoder=local,
        latent=TransformerConfig(dim=48, n_layers=2, attn_heads=2, window=latent_window),
        decoder=replace(local, window=24),
        # draft heads trained on every loss, at every position (as `measure` runs them): the
        # analytic count is exact then (with draft_grad false it is a close upper bound, and
        # sampled drafts are charged their share: tests/model/test_heads.py)
        out_heads=OutputHeadsConfig(n=2, draft_grad=True, draft_sample=1.0),
        patcher=PatcherConfig(name="fixed", k=k),
        pooling=pooling,
    )


T = 64  # divisible by every k below, so every window holds exactly T / k patches


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -------------------------------------------------------------- ByteTransformer


@pytest.mark.parametrize("window", [0, 16, 64, 200])
def test_transformer_flops_match_counter(window):
    cfg = TransformerConfig(dim=32, n_layers=2, attn_heads=4, window=window)
    ids = torch.randint(0, 256, (1, T))  # one document per window
    counts = dict(zip((False, True), measure(ByteTransformer(cfg), ids)))
    for training, got in counts.items():
        for mode, key in (("causal", "Global"), ("dense", "Dense")):
            want = flops_per_byte(cfg, seq_len=T, training=training, attention=mode)["total"]
            assert want == pytest.approx(got[key], rel=1e-9), (training, mode)
    # with a window at least as long as the sequence, attention is full causal:
    # the useful attention FLOPs are (T + 1) / (2T) of the dense ones
    if window == 0 or window >= T:
        f = lambda mode: flops_per_byte(cfg, seq_len=T, attention=mode)["total"]
        matmul = 3 * (cfg.n_layers * (8 * 32 * 32 + 6 * 32 * 96) + 2 * 32 * 259)
        assert (f("causal") - matmul) / (f("dense") - matmul) == pytest.approx((T + 1) / (2 * T))


def test_transformer_documents_restart_attention():
    cfg = TransformerConfig(dim=32, n_layers=1, attn_heads=2, window=12)
    doc = 16  # BOS + 14 bytes + EOS
    row = torch.cat([torch.tensor([BOS]), torch.randint(0, 256, (doc - 2,)), torch.tensor([EOS])])
    ids = row.repeat(1, T // doc)
    got = measure(ByteTransformer(cfg), ids)[0]["Global"]
    want = flops_per_byte(cfg, seq_len=T, training=False, doc_len=doc)["total"]
    assert want == pytest.approx(got, rel=1e-9)
    # ignoring the documents would overcount: the window is never full inside one
    assert flops_per_byte(cfg, seq_len=T, training=False)["total"] > want


# ----------------------------------------------------------------------- ByteLM


@pytest.mark.parametrize("k, pooling", [(2, "mean"), (4, "mean"), (8, "mean"), (4, "attn")])
def test_bytelm_flops_match_counter(k, pooling):
    cfg = lm_cfg(k, pooling, latent_window=5)
    ids = torch.randint(0, 256, (1, T))
    fwd, train = measure(ByteLM(cfg), ids)
    # by stage on the forward pass (FlopCounterMode misattributes the backward
    # of sibling modules, e.g. head 0's to head 1, though its total is right)
    want = flops_per_byte(cfg, bytes_per_patch=k, seq_len=T, training=False)
    for stage, value in by_stage(fwd).items():
        assert want[stage] == pytest.approx(value, rel=1e-9), stage
    for training, got in ((False, fwd), (True, train)):
        for mode, key in (("causal", "Global"), ("dense", "Dense")):
            want = flops_per_byte(cfg, k, T, training=training, attention=mode)["total"]
            assert want == pytest.approx(got[key], rel=1e-9), (training, mode)


def test_bytelm_latent_cost_falls_with_patch_size():
    cfg = lm_cfg(4)
    f = {r: flops_per_byte(cfg, bytes_per_patch=r, seq_len=512) for r in (1, 2, 4, 8)}
    # the latent stack is per patch: its per-byte matmul cost halves as r doubles
    # (attention falls faster still, since there are fewer patches to attend to)
    assert f[1]["latent"] > 2 * f[2]["latent"] > 4 * f[4]["latent"] > 8 * f[8]["latent"]
    for key in ("encoder", "decoder", "heads"):
        assert len({f[r][key] for r in f}) == 1, key


def test_entropy_model_is_forward_only():
    cfg, ent = lm_cfg(4), TransformerConfig(dim=32, n_layers=2, attn_heads=2)
    with_ent = flops_per_byte(cfg, 4, 128, training=True, entropy_model=ent)
    fwd = flops_per_byte(ent, seq_len=128, training=False)["total"]
    assert with_ent["entropy_model"] == pytest.approx(fwd)
    assert with_ent["total"] == pytest.approx(flops_per_byte(cfg, 4, 128)["total"] + fwd)


def test_mean_context():
    assert mean_context(4) == 2.5  # (1 + 2 + 3 + 4) / 4
    assert mean_context(4, window=2) == 1.75  # (1 + 2 + 2 + 2) / 4
    assert mean_context(4, window=9) == mean_context(4)
    n, w = 1000, 10
    assert mean_context(n, w) == pytest.approx(sum(min(t, w) for t in range(1, n + 1)) / n)


def test_bad_arguments_are_user_errors():
    with pytest.raises(ValueError, match="^bytelm: bytes_per_patch"):
        flops_per_byte(lm_cfg(4), bytes_per_patch=0.5)
    with pytest.raises(ValueError, match="^bytelm: attention"):
        flops_per_byte(lm_cfg(4), attention="sparse")


# ------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "cfg",
    [
        TransformerConfig(dim=32, n_layers=2, attn_heads=2),
        TransformerConfig(dim=40, n_layers=3, attn_heads=4, mlp_ratio=3.0),
        lm_cfg(4),
        lm_cfg(2, pooling="attn"),
        replace(lm_cfg(8), ngram=NGramConfig(ns=(), buckets=0), out_heads=OutputHeadsConfig(n=1)),
        ByteLMConfig(),  # auto-sized n-gram buckets
    ],
    ids=["transformer", "transformer-mlp3", "bytelm", "bytelm-attn", "bytelm-no-ngram", "default"],
)
def test_param_counts_are_exact(cfg):
    model = ByteTransformer(cfg) if isinstance(cfg, TransformerConfig) else ByteLM(cfg)
    got = param_counts(cfg)
    assert got["total"] == sum(p.numel() for p in model.parameters())
    assert got["non_embedding"] + got["embedding"] == got["total"]
    stages = {k: v for k, v in got.items() if k not in ("embedding", "non_embedding", "total")}
    assert sum(stages.values()) == got["non_embedding"]
    if isinstance(cfg, ByteLMConfig):
        table = lambda m: sum(p.numel() for p in m.parameters())
        assert got["embedding"] == table(model.embed)
        assert got["encoder"] == table(model.encoder)
        assert got["decoder"] == table(model.decoder)
        assert got["latent"] == table(model.latent) + sum(
            table(m) for m in (model.to_latent, model.latent_norm, model.from_latent)
        )


def test_run_size_uses_the_configured_rate():
    run = RunConfig(model=lm_cfg(4))
    size = run_size(run)
    assert size["params_non_embedding"] == param_counts(run.model)["non_embedding"]
    assert size["flops_per_byte"] == flops_per_byte(run.model, 4, run.data.seq_len)["total"]
    space = replace(run, model=replace(run.model, patcher=PatcherConfig(name="space")))
    assert "flops_per_byte" not in run_size(space)  # its rate depends on the data
    plain = RunConfig(arch="transformer")
    assert (
        run_size(plain)["flops_per_byte"] == flops_per_byte(plain.transformer, seq_len=512)["total"]
    )
