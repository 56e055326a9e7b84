"""Triton pooling/unpooling against the PyTorch reference: every output, every gradient.

On CPU the kernels run under the Triton interpreter (see conftest.py), which is
slow per program, so sizes are odd but small.
"""

import pytest
import torch

from bytelm.kernels.pooling import MODES, pool, pool_packed, unpool
from bytelm.kernels.pooling.reference import pool_packed_reference, pool_reference
from bytelm.patchers.base import lengths_to_offsets

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (atol, rtol) against the fp32 reference, about one ulp of the dtype: fp32
# accumulation passes, accumulating a long patch in fp16/bf16 would not.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


def assert_close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def split(n: int, max_len: int, gen: torch.Generator) -> list[int]:
    """Random patch lengths in [1, max_len] summing to n."""
    out = []
    while n > 0:
        k = min(n, int(torch.randint(1, max_len + 1, (1,), generator=gen)))
        out.append(k)
        n -= k
    return out


def make_lengths(T: int, rows: list[str], max_len: int, gen: torch.Generator) -> torch.Tensor:
    """patch_lengths (B, P), one row per style, right-padded with 0:

    full: random lengths covering T; ones: T single-byte patches; single: one
    patch of T bytes; partial: random lengths covering fewer than T bytes
    (padding bytes at the end); empty: a row with no bytes.
    """
    out = []
    for style in rows:
        if style == "full":
            out.append(split(T, max_len, gen))
        elif style == "ones":
            out.append([1] * T)
        elif style == "single":
            out.append([T])
        elif style == "partial":
            out.append(split(int(torch.randint(0, T, (1,), generator=gen)), max_len, gen))
        else:
            assert style == "empty"
            out.append([])
    P = max(1, max(len(r) for r in out))
    return torch.tensor([r + [0] * (P - len(r)) for r in out], dtype=torch.long)


def make_x(shape, mode: str, dtype, gen: torch.Generator) -> torch.Tensor:
    """Inputs. For max, every column of a row holds distinct values exactly
    representable in fp16 and bf16 (k/8 with |k| <= 150), so there are no ties
    and the gradient routing is unique (the reference splits ties, the kernel
    gives them to the first byte)."""
    if mode != "max":
        return torch.randn(shape, generator=gen).to(dtype)
    perm = torch.rand(shape, generator=gen).argsort(dim=-2)  # a permutation down each column
    return ((perm - shape[-2] // 2).float() / 8).to(dtype)


# (T, D, max_patch_len, row styles): T in {1, 15, 63, 300}; D not a power of two, and
# one D above the 256-wide feature block so a masked tail block runs.
CASES = [
    (1, 7, 1, ["full", "empty"]),
    (15, 33, 4, ["ones", "partial", "empty"]),
    (63, 200, 63, ["single", "full"]),
    (300, 260, 16, ["full"]),
]


def cross(cases, modes):
    """Every case x mode x dtype, but the longest case in fp32 only (the interpreter is
    slow; the 63-byte single patch already checks fp16/bf16 accumulation)."""
    return [
        pytest.param(c, m, dt, id=f"T{c[0]}-D{c[1]}-{m}-{str(dt)[6:]}")
        for c in cases
        for m in modes
        for dt in DTYPES
        if c[0] < 300 or dt == torch.float32
    ]


@pytest.mark.parametrize("case,mode,dtype", cross(CASES, MODES))
def test_pool_matches_reference(case, mode, dtype):
    T, D, max_len, rows = case
    gen = torch.Generator().manual_seed(T * 1000 + D)
    lengths = make_lengths(T, rows, max_len, gen)
    B, P = lengths.shape
    x = make_x((B, T, D), mode, dtype, gen).to(DEVICE).requires_grad_()
    lengths = lengths.to(DEVICE)
    g = torch.randn(B, P, D, generator=gen).to(dtype).to(DEVICE)

    out = pool(x, lengths, mode, backend="triton")
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().float().requires_grad_()
    ref = pool_reference(xr, lengths, mode)
    (gxr,) = torch.autograd.grad(ref, xr, g.float())

    assert out.shape == (B, P, D) and out.dtype == dtype and gx.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(gx, gxr, dtype)
    assert (out[lengths == 0] == 0).all(), "empty patch slots must pool to zero"
    n = lengths.sum(-1)
    pad = torch.arange(T, device=DEVICE)[None, :] >= n[:, None]
    assert (gx[pad] == 0).all(), "padding bytes must get no gradient"


def test_pool_max_routes_gradient_to_argmax():
    """The backward of max reaches exactly one byte per (patch, feature): the max."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([[3, 1, 4], [2, 0, 0]]).to(DEVICE)
    x = make_x((2, 8, 5), "max", torch.float32, gen).to(DEVICE).requires_grad_()
    out = pool(x, lengths, "max", backend="triton")
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.sum().item() == 4 * 5, "one unit of gradient per real (patch, feature)"
    assert ((gx == 0) | (gx == 1)).all()
    starts = lengths_to_offsets(lengths)
    for b, p in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        s, n = starts[b, p].item(), lengths[b, p].item()
        seg = x.detach()[b, s : s + n]
        torch.testing.assert_close(gx[b, s : s + n], (seg == seg.max(0).values).float())


def test_reference_max_gradient_when_max_is_zero():
    """A patch whose max is exactly 0.0 still sends its whole gradient to that byte
    (scatter_reduce from a zero start would split it with the start value)."""
    x = torch.tensor([[[0.0], [-1.0], [3.0]]], requires_grad=True)
    out = pool_reference(x, torch.tensor([[2, 1, 0]]), "max")
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert out.flatten().tolist() == [0.0, 3.0, 0.0]
    assert gx.flatten().tolist() == [1.0, 0.0, 1.0]
    packed = pool_packed_reference(x[0], torch.tensor([0, 2]), torch.tensor([2, 1]), "max")
    (gp,) = torch.autograd.grad(packed.sum(), x)
    assert gp.flatten().tolist() == [1.0, 0.0, 1.0]


def packed_segments(N: int, S: int, max_len: int, gen: torch.Generator):
    """Ordered, disjoint segments with random gaps, and empty slots (some at offset 0)."""
    offsets, lengths, pos = [], [], 0
    for _ in range(S):
        if torch.rand((), generator=gen) < 0.2:
            offsets.append(0 if torch.rand((), generator=gen) < 0.5 else pos)
            lengths.append(0)
            continue
        pos += int(torch.randint(0, 3, (), generator=gen))  # a gap of bytes in no segment
        n = min(int(torch.randint(1, max_len + 1, (), generator=gen)), N - pos)
        offsets.append(pos)
        lengths.append(max(n, 0))
        pos += max(n, 0)
    return torch.tensor(offsets), torch.tensor(lengths)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_pool_packed_matches_reference(mode, dtype):
    gen = torch.Generator().manual_seed(7)
    N, D = 101, 70
    offsets, lengths = packed_segments(N, 25, 6, gen)
    x = make_x((N, D), mode, dtype, gen).to(DEVICE).requires_grad_()
    offsets, lengths = offsets.to(DEVICE), lengths.to(DEVICE)
    out = pool_packed(x, offsets, lengths, mode, backend="triton")
    g = torch.randn(out.shape, generator=gen).to(dtype).to(DEVICE)
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().float().requires_grad_()
    ref = pool_packed_reference(xr, offsets, lengths, mode)
    (gxr,) = torch.autograd.grad(ref, xr, g.float())
    assert_close(out, ref, dtype)
    assert_close(gx, gxr, dtype)


def test_packed_reference_agrees_with_batched_reference():
    """The two specs describe one op: batched pooling is packed pooling over B*T rows."""
    gen = torch.Generator().manual_seed(3)
    lengths = make_lengths(20, ["full", "partial", "empty"], 5, gen)
    B, P = lengths.shape
    x = torch.randn(B, 20, 9, generator=gen)
    offsets = lengths_to_offsets(lengths) + torch.arange(B)[:, None] * 20
    for mode in MODES:
        packed = pool_packed_reference(
            x.reshape(-1, 9), offsets.reshape(-1), lengths.reshape(-1), mode
        )
        torch.testing.assert_close(packed.reshape(B, P, 9), pool_reference(x, lengths, mode))


# On CUDA the contract checks are device-side asserts, which would poison the context.
cpu_only = pytest.mark.skipif(DEVICE == "cuda", reason="a failed device assert ends the process")


@cpu_only
def test_pool_packed_rejects_overlapping_segments():
    x = torch.randn(10, 4, device=DEVICE)
    offsets, lengths = torch.tensor([0, 2]), torch.tensor([3, 3])
    with pytest.raises(RuntimeError, match="disjoint"):
        pool_packed(x, offsets.to(DEVICE), lengths.to(DEVICE), "sum", backend="triton")


def model_like_index(T: int, P: int, gen: torch.Generator, B: int = 2) -> torch.Tensor:
    """Non-negative entries non-decreasing along t, with repeats, skipped patches, and
    -1 anywhere (before the first patch, at document starts, on padding)."""
    idx = torch.randint(-1, P, (B, T), generator=gen).sort(dim=1).values
    masked = torch.rand(B, T, generator=gen) < 0.2
    return torch.where(masked, torch.full_like(idx, -1), idx)


@pytest.mark.parametrize(
    "T,D,B,dtype",
    [
        pytest.param(T, D, B, dt, id=f"T{T}-D{D}-{str(dt)[6:]}")
        for T, D, B in [(1, 7, 2), (15, 33, 2), (63, 200, 2), (300, 260, 1)]
        for dt in DTYPES
        if T < 300 or dt == torch.float32
    ],
)
def test_unpool_matches_reference(T, D, B, dtype):
    gen = torch.Generator().manual_seed(T + D)
    P = max(1, T // 8)  # runs of ~8 bytes per patch, before masking
    index = model_like_index(T, P, gen, B).to(DEVICE)
    h = torch.randn(B, P, D, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    g = torch.randn(B, T, D, generator=gen).to(dtype).to(DEVICE)
    out = unpool(h, index, backend="triton")
    (gh,) = torch.autograd.grad(out, h, g)
    hr = h.detach().float().requires_grad_()
    ref = unpool(hr, index, backend="reference")
    (ghr,) = torch.autograd.grad(ref, hr, g.float())
    assert out.dtype == dtype and gh.dtype == dtype
    assert torch.equal(out.float(), ref), "a gather is exact"
    assert_close(gh, ghr, dtype)


def test_unpool_one_patch_read_by_every_byte():
    """The longest run: every byte reads patch 0, so its gradient sums all T rows."""
    T, D = 300, 5
    h = torch.randn(1, 2, D, device=DEVICE, requires_grad=True)
    index = torch.zeros(1, T, dtype=torch.long, device=DEVICE)
    g = torch.randn(1, T, D, device=DEVICE)
    (gh,) = torch.autograd.grad(unpool(h, index, backend="triton"), h, g)
    torch.testing.assert_close(gh[0, 0], g[0].sum(0), atol=1e-4, rtol=1e-5)
    assert (gh[0, 1] == 0).all()


@cpu_only
def test_unpool_rejects_decreasing_index():
    h = torch.randn(1, 3, 4, device=DEVICE)
    index = torch.tensor([[0, 2, -1, 1]], device=DEVICE)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        unpool(h, index, backend="triton")
