"""Attention backends against the reference (SDPA with a dense boolean mask).

CPU, always: flex forward (eager flex_attention) on the specs the model uses
(document-causal, sliding-window, cross-attention pooling with empty patch
slots) and on random specs; the xformers planner, mask by mask, without
xformers; the xformers packing with a dense stand-in for its kernel; backend
choice, logging and errors. CUDA (`gpu` mark): compiled flex and xformers,
forward and backward, against the reference.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F

import bytelm.kernels.attention as attn
from bytelm.config import ByteLMConfig, ConfigError
from bytelm.kernels.attention import MaskSpec, _memo, attention, resolve_backend
from bytelm.kernels.attention import xformers as xf
from bytelm.kernels.attention.reference import attention_reference
from bytelm.model import ByteLM
from bytelm.patchers import lengths_to_ids
from bytelm.vocab import BOS, PAD
from tests.conftest import tiny_bytelm_config

HAS_CUDA = torch.cuda.is_available()
# eager flex on CPU warns that it is unfused; that is the point of these tests
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

B, H, DH = 2, 2, 16
T, P = 45, 13  # odd sizes; flex recompiles its eager trace per shape, so few shapes


@pytest.fixture(autouse=True)
def _fresh_memo():
    _memo.clear()
    yield
    _memo.clear()


# ------------------------------------------------------------------ specs


def doc_spec(gen, B=B, T=T, window=None) -> MaskSpec:
    """Causal self-attention inside documents of random lengths, like `Stack.mask`."""
    starts = torch.rand(B, T, generator=gen) < 0.15
    starts[:, 0] = True
    docs = starts.long().cumsum(-1)
    pos = torch.arange(T).expand(B, T)
    return MaskSpec(docs, docs, pos, pos, causal=True, window=window)


def pool_spec(gen, B=B, T=T, P=P) -> MaskSpec:
    """Patch queries read their own bytes, like ByteLM's cross-attention pooling.

    Row 0 fills all P slots; the other rows have fewer patches (empty slots are
    key-less queries) and PAD bytes at the end (patch id -1, read by nobody)."""
    lengths = torch.zeros(B, P, dtype=torch.long)
    for b in range(B):
        n = P if b == 0 else P - 3 - b
        lengths[b, :n] = torch.randint(1, 4, (n,), generator=gen)  # 1..3 bytes, sum <= 39 < T
    patch_ids = lengths_to_ids(lengths, T)  # (B, T), -1 on PAD
    patch_pos = torch.arange(P).expand(B, P)
    q_seg = torch.where(lengths > 0, patch_pos, torch.full_like(patch_pos, -2))
    return MaskSpec(q_seg, patch_ids, patch_pos, torch.arange(T).expand(B, T), causal=False)


def random_spec(gen, causal: bool, window: int | None, Tq=P, Tk=T) -> MaskSpec:
    """Anything at all: few segment ids (some only on one side), shuffled positions."""
    q_seg = torch.randint(-1, 3, (B, Tq), generator=gen)
    k_seg = torch.randint(0, 4, (B, Tk), generator=gen)
    q_pos = torch.randint(0, Tk, (B, Tq), generator=gen)
    k_pos = torch.stack([torch.randperm(Tk, generator=gen) for _ in range(B)])
    return MaskSpec(q_seg, k_seg, q_pos, k_pos, causal=causal, window=window)


def qkv(gen, Tq, Tk, dtype=torch.float32, device="cpu", requires_grad=False):
    q = torch.randn(B, H, Tq, DH, generator=gen).to(device, dtype)
    k = torch.randn(B, H, Tk, DH, generator=gen).to(device, dtype)
    v = torch.randn(B, H, Tk, DH, generator=gen).to(device, dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def spec_to(spec: MaskSpec, device) -> MaskSpec:
    return MaskSpec(
        spec.q_seg.to(device), spec.k_seg.to(device), spec.q_pos.to(device),
        spec.k_pos.to(device), spec.causal, spec.window,
    )  # fmt: skip


SPECS = {
    "documents": lambda g: doc_spec(g),
    "window": lambda g: doc_spec(g, window=5),
    "window_1": lambda g: doc_spec(g, window=1),
    "pooling": lambda g: pool_spec(g),
}
# fp32: both sides do the same maths in a different order; bf16: a few ulps of a bf16 output
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def keyless(spec: MaskSpec) -> torch.Tensor:
    return ~spec.allowed().any(-1)  # (B, Tq)


# ------------------------------------------------------------------ flex, CPU forward


@pytest.mark.parametrize("name", list(SPECS))
def test_flex_forward_matches_reference(name):
    gen = torch.Generator().manual_seed(1)
    spec = SPECS[name](gen)
    q, k, v = qkv(gen, spec.q_seg.shape[1], spec.k_seg.shape[1])
    out = attention(q, k, v, spec, backend="flex")
    ref = attention_reference(q, k, v, spec)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    if name == "pooling":  # empty patch slots: zeros, not NaN
        empty = keyless(spec)
        assert empty.any() and out.isfinite().all()
        assert out.permute(0, 2, 1, 3)[empty].eq(0).all()


@pytest.mark.parametrize("causal,window", [(True, None), (True, 4), (False, None)])
def test_flex_forward_random_specs(causal, window):
    """flex takes any spec, including ones no block-diagonal mask expresses."""
    gen = torch.Generator().manual_seed(2)
    spec = random_spec(gen, causal, window)
    assert keyless(spec).any(), "the random spec should have key-less queries"
    q, k, v = qkv(gen, P, T)
    out = attention(q, k, v, spec, backend="flex", scale=0.3)
    torch.testing.assert_close(out, attention_reference(q, k, v, spec, 0.3), **TOL[torch.float32])


def test_flex_detects_a_wrong_mask():
    """The tolerance above is tight enough to catch an off-by-one window."""
    gen = torch.Generator().manual_seed(3)
    spec = doc_spec(gen, window=5)
    q, k, v = qkv(gen, T, T)
    out = attention(q, k, v, spec, backend="flex")
    wrong = attention_reference(q, k, v, doc_spec(torch.Generator().manual_seed(3), window=6))
    assert (out - wrong).abs().max() > 100 * TOL[torch.float32]["atol"]


def test_flex_bf16_forward():
    gen = torch.Generator().manual_seed(4)
    spec = doc_spec(gen, window=5)
    q, k, v = qkv(gen, T, T, dtype=torch.bfloat16)
    out = attention(q, k, v, spec, backend="flex")
    ref = attention_reference(q.float(), k.float(), v.float(), spec)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, **TOL[torch.bfloat16])


def test_flex_cpu_backward_is_a_clear_error():
    gen = torch.Generator().manual_seed(5)
    spec = doc_spec(gen)
    q, k, v = qkv(gen, T, T, requires_grad=True)
    with pytest.raises(RuntimeError, match="^bytelm: attention backend 'flex' has no CPU backward"):
        attention(q, k, v, spec, backend="flex")


def test_flex_block_mask_is_memoised_per_spec():
    from bytelm.kernels.attention.flex import block_mask

    gen = torch.Generator().manual_seed(6)
    spec = doc_spec(gen, window=5)
    first = block_mask(spec, torch.device("cpu"))
    assert block_mask(MaskSpec(**vars(spec)), torch.device("cpu")) is first  # same tensors
    spec.k_seg[:, 0] = 99  # an in-place edit (a KV cache write) must rebuild it
    assert block_mask(spec, torch.device("cpu")) is not first


# ------------------------------------------------------------------ xformers plan, CPU


def plan_mask(p: xf.Plan, Tq: int, Tk: int) -> torch.Tensor:
    """A plan's block-diagonal mask, scattered back to (B * Tq, B * Tk), with xformers'
    in-block rules: causal is j <= i + shift (shift = Lk - Lq from the bottom right,
    0 from the top left), and a window w also needs j > i + shift - w."""
    qi = p.q_index if p.q_index is not None else torch.arange(B * Tq)
    ki = p.k_index if p.k_index is not None else torch.arange(B * Tk)
    m = torch.zeros(B * Tq, B * Tk, dtype=torch.bool)
    for i0, j0, lq, lk in packed_blocks(p):
        m[qi[i0 : i0 + lq, None], ki[None, j0 : j0 + lk]] = block_rule(p, lq, lk)
    return m


def packed_blocks(p: xf.Plan):
    i0 = j0 = 0
    for lq, lk in zip(p.q_seqlen, p.k_seqlen):
        yield i0, j0, lq, lk
        i0, j0 = i0 + lq, j0 + lk


def block_rule(p: xf.Plan, lq: int, lk: int) -> torch.Tensor:
    i, j = torch.arange(lq)[:, None], torch.arange(lk)[None]
    if not p.causal:
        return torch.ones(lq, lk, dtype=torch.bool)
    shift = lk - lq if p.bottom_right else 0
    m = j <= i + shift
    return m & (j > i + shift - p.window) if p.window is not None else m


def packed_mask(p: xf.Plan) -> torch.Tensor:
    """The same mask in packed coordinates (sum Lq, sum Lk): what xformers sees."""
    m = torch.zeros(sum(p.q_seqlen), sum(p.k_seqlen), dtype=torch.bool)
    for i0, j0, lq, lk in packed_blocks(p):
        m[i0 : i0 + lq, j0 : j0 + lk] = block_rule(p, lq, lk)
    return m


def block_diag_allowed(spec: MaskSpec) -> torch.Tensor:
    return torch.block_diag(*spec.allowed())  # (B * Tq, B * Tk): rows never read other rows


def chunk_spec(gen) -> MaskSpec:
    """The queries are the last 7 positions of each key sequence (a chunked prefill)."""
    full = doc_spec(gen, window=4)
    return MaskSpec(full.q_seg[:, -7:], full.k_seg, full.q_pos[:, -7:], full.k_pos, True, 4)


PLANNED = {**SPECS, "chunk": chunk_spec}


@pytest.mark.parametrize("name", list(PLANNED))
def test_xformers_plan_is_the_spec(name):
    spec = PLANNED[name](torch.Generator().manual_seed(7))
    Tq, Tk = spec.q_seg.shape[1], spec.k_seg.shape[1]
    p = xf.plan(spec)
    assert p.bottom_right == (name == "chunk")
    assert (p.q_index is None) == (name != "pooling"), "only pooling drops query runs"
    assert torch.equal(plan_mask(p, Tq, Tk), block_diag_allowed(spec))


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda g: random_spec(g, True, None), "not one contiguous run"),
        (lambda g: MaskSpec(**{**vars(doc_spec(g)), "causal": False, "window": 3}), "window"),
        (lambda g: shuffled_cache_spec(g), "rise by one"),
        (lambda g: misaligned_spec(g), "aligned"),
    ],
)
def test_xformers_plan_refuses_what_it_cannot_express(make, reason):
    spec = make(torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match=f"^bytelm: the xformers attention backend .*{reason}"):
        xf.plan(spec)


def misaligned_spec(gen) -> MaskSpec:
    """Chunked-prefill queries one position early: causal blocks that are neither
    top-left nor bottom-right aligned."""
    s = chunk_spec(gen)
    return MaskSpec(s.q_seg, s.k_seg, s.q_pos - 1, s.k_pos, causal=True, window=s.window)


def shuffled_cache_spec(gen) -> MaskSpec:
    """A ring-buffer KV cache: one document, but slots are not in position order."""
    k_pos = torch.stack([torch.randperm(T, generator=gen) for _ in range(B)])
    seg = torch.zeros(B, T, dtype=torch.long)
    return MaskSpec(seg[:, :1], seg, torch.full((B, 1), T - 1), k_pos, causal=True, window=8)


@pytest.mark.parametrize("name", list(PLANNED))
def test_xformers_packing_with_a_dense_kernel(monkeypatch, name):
    """Pack, attend block-diagonally, unpack: forward and gradients match the reference.

    The kernel is a dense SDPA over the packed sequence with the plan's mask, so
    this checks bytelm's side (plan, gather, scatter, zeros) without xformers."""

    def dense_kernel(q, k, v, p, scale):  # (1, N, H, Dh) each
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), packed_mask(p), scale=scale
        )
        return o.transpose(1, 2)

    monkeypatch.setattr(xf, "_bias", lambda p, device: p)
    monkeypatch.setattr(xf, "_kernel", dense_kernel)
    gen = torch.Generator().manual_seed(9)
    spec = PLANNED[name](gen)
    q, k, v = qkv(gen, spec.q_seg.shape[1], spec.k_seg.shape[1], requires_grad=True)
    out = xf.attention_xformers(q, k, v, spec, scale=0.4)
    ref = attention_reference(q, k, v, spec, 0.4)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("name", list(PLANNED))
def test_xformers_bias_materialises_to_the_plan(name):
    """bytelm's reading of xformers' mask classes, checked against xformers itself."""
    pytest.importorskip("xformers.ops.fmha.attn_bias")
    p = xf.plan(PLANNED[name](torch.Generator().manual_seed(7)))
    shape = (sum(p.q_seqlen), sum(p.k_seqlen))
    bias = xf._bias(p, torch.device("cpu")).materialize(shape)
    assert torch.equal(bias.isfinite(), packed_mask(p))


# ------------------------------------------------------------------ choice and errors


def test_auto_is_sdpa_on_cpu_and_logged_once(caplog):
    attn._logged.clear()
    gen = torch.Generator().manual_seed(10)
    spec = doc_spec(gen)
    q, k, v = qkv(gen, T, T)
    with caplog.at_level(logging.INFO, logger="bytelm"):
        out = attention(q, k, v, spec)
        attention(q, k, v, spec, backend="auto")
    assert torch.equal(out, attention_reference(q, k, v, spec))
    logs = [r.getMessage() for r in caplog.records if "attention uses" in r.getMessage()]
    assert logs == ["bytelm: attention uses the sdpa backend (asked 'auto', device cpu)"]


def test_auto_is_flex_on_cuda(monkeypatch):
    monkeypatch.setattr(attn, "_logged", set())
    monkeypatch.setattr(attn, "triton_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda")) == "flex"
    monkeypatch.setattr(attn, "triton_available", lambda: False)
    assert resolve_backend("auto", torch.device("cuda")) == "sdpa"


def test_backend_errors(monkeypatch):
    q = torch.zeros(1, 1, 2, 4)
    spec = MaskSpec(*(torch.zeros(1, 2, dtype=torch.long),) * 4)
    with pytest.raises(ValueError, match=r"^bytelm: attention backend must be one of auto, sdpa"):
        attention(q, q, q, spec, backend="fast")
    monkeypatch.setattr(attn, "xformers_available", lambda: True)
    with pytest.raises(RuntimeError, match="^bytelm: attention backend 'xformers' needs CUDA"):
        attention(q, q, q, spec, backend="xformers")
    monkeypatch.setattr(attn, "xformers_available", lambda: False)
    with pytest.raises(
        RuntimeError, match="^bytelm: attention backend 'xformers' needs the xformers"
    ):
        attention(q, q, q, spec, backend="xformers")


def test_config_default_and_validation():
    assert ByteLMConfig().attn_backend == "auto"
    assert ByteLMConfig(attn_backend="flex").attn_backend == "flex"
    with pytest.raises(ConfigError, match="^bytelm: model.attn_backend must be one of"):
        ByteLMConfig(attn_backend="flash")


# ------------------------------------------------------------------ the model


def model_inputs(gen):
    ids = torch.randint(0, 256, (B, T), generator=gen)
    ids[:, 0] = BOS
    ids[0, 20] = BOS  # a second document in row 0
    ids[1, -6:] = PAD  # padding at the end of row 1
    return ids


def test_bytelm_forward_flex_matches_sdpa():
    """Every attention of a ByteLM forward (encoder, pooling, latent, decoder,
    heads) through flex gives the logits the reference gives."""
    cfg = tiny_bytelm_config(pooling="attn", window=8)
    model = ByteLM(cfg).eval()
    ids = model_inputs(torch.Generator().manual_seed(14))
    with torch.no_grad():
        ref = model(ids)
        model.cfg = dataclasses.replace(cfg, attn_backend="flex")
        out = model(ids)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ CUDA

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _run(backend, q, k, v, spec, g):
    out = attention(q, k, v, spec, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), g))


def _check_forward_backward(backend, spec, dtype):
    """Output and gradients against the reference. fp32: a tight tolerance. bf16: the
    backend's error against the fp32 reference may be at most twice that of the bf16
    reference (the FlashAttention tests' rule), so rounding is allowed and a wrong
    mask is not."""
    gen = torch.Generator().manual_seed(11)
    spec = spec_to(spec, "cuda")
    Tq, Tk = spec.q_seg.shape[1], spec.k_seg.shape[1]
    q, k, v = qkv(gen, Tq, Tk, dtype=dtype, device="cuda", requires_grad=True)
    g = torch.randn(B, H, Tq, DH, generator=gen).to("cuda", dtype)
    got = _run(backend, q, k, v, spec, g)
    up = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref32 = _run("sdpa", *up, spec, g.float())
    assert got[0].dtype == dtype
    if dtype == torch.float32:
        for a, b in zip(got, ref32):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    else:
        ref_lp = _run("sdpa", q, k, v, spec, g)
        for what, a, r, b in zip(("out", "dq", "dk", "dv"), got, ref_lp, ref32):
            err, ref_err = (a.float() - b).abs().max(), (r.float() - b).abs().max()
            assert a.isfinite().all() and err <= 2 * ref_err + 1e-3, (what, err, ref_err)
    empty = keyless(spec)
    if empty.any():  # key-less queries: zero output, zero gradient
        assert got[0].transpose(1, 2)[empty].eq(0).all()
        assert got[1].transpose(1, 2)[empty].eq(0).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(PLANNED))
@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_cuda_backend_matches_reference(backend, name, dtype):
    if backend == "xformers":
        pytest.importorskip("xformers.ops")
    _check_forward_backward(backend, PLANNED[name](torch.Generator().manual_seed(12)), dtype)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("causal,window", [(True, None), (True, 4), (False, None)])
def test_cuda_flex_random_specs(causal, window):
    spec = random_spec(torch.Generator().manual_seed(13), causal, window)
    _check_forward_backward("flex", spec, torch.float32)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["flex", "xformers"])
def test_cuda_bytelm_training_step_matches_sdpa(backend):
    """A ByteLM forward and backward through the fast backend, against sdpa."""
    if backend == "xformers":
        pytest.importorskip("xformers.ops")
    cfg = tiny_bytelm_config(pooling="attn", window=8)
    model = ByteLM(cfg).cuda()
    ids = model_inputs(torch.Generator().manual_seed(15)).cuda()
    results = []
    for name in ("sdpa", backend):
        model.cfg = dataclasses.replace(cfg, attn_backend=name)
        model.zero_grad()
        loss = model.loss(ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, atol=1e-4, rtol=1e-4)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
