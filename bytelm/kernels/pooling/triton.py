"""Triton patch pooling and unpooling: forward and backward, no atomics, deterministic.

Layers, bottom up: `_pool_fwd_kernel` / `_pool_bwd_kernel` (one program per
(patch, feature block)), host functions `pool_fwd` / `pool_bwd` on the packed
layout, `PoolFunction` (autograd), and `pool_packed` / `pool_batched`, which the
dispatching `bytelm.kernels.pooling.pool` calls. Unpooling mirrors it with
`_unpool_fwd_kernel` / `_unpool_bwd_kernel`, `unpool_fwd` / `unpool_bwd`,
`UnpoolFunction` and `unpool_batched`.

Packed layout. Bytes are rows of `x: (N, D)`. A segment s (a patch) is the rows
`offsets[s] : offsets[s] + lengths[s]`; segments are disjoint and need not
cover every row; a segment of length 0 is an empty patch slot. The batched
layout `(B, T, D)` with `patch_lengths (B, P)` is the packed one with
N = B*T, S = B*P and `offsets[b*P + p] = b*T + start of patch p in row b`.

Precision. Every kernel loads in the input dtype (fp32, fp16 or bf16) and
accumulates in fp32: a bf16 running sum over a long patch would lose
mantissa bits at every step (bf16 has 8), and fp16 can overflow at 65504.
Results are rounded to the input dtype once, at the store. Max is exact in
any dtype; it is computed in fp32 only to share the code path.

Determinism. Each output element is written by exactly one program, and each
sum is reduced in a fixed order (tiles of BLOCK_T rows, in order), so results
are bitwise reproducible run to run. No atomics: the backward of pooling
writes each byte's gradient from the one patch that owns it, and the backward
of unpooling sums each patch's readers as a contiguous run (see
`_unpool_bwd_kernel`), which needs the non-negative entries of each unpool
index row to be non-decreasing, as the model's always are.

Blocks are fixed, not autotuned: the interpreter cannot autotune, and these
kernels are bandwidth bound with tiny per-program work, so a tile of
BLOCK_T=8 rows by BLOCK_D<=256 features (8 KiB of fp32 per load) keeps enough
bytes in flight without spilling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MODE_IDS = {"sum": 0, "mean": 1, "max": 2}
BLOCK_T = 8  # rows per tile: mean patch lengths are 2..8 bytes, so most patches take one tile
MAX_BLOCK_D = 256
NUM_WARPS = 4


def _block_d(D: int) -> int:
    return min(MAX_BLOCK_D, triton.next_power_of_2(D))


# --------------------------------------------------------------------------- pooling


@triton.jit
def _pool_fwd_kernel(
    x_ptr,  # (N, D), row stride stride_xn, unit feature stride
    offsets_ptr,  # (S,) int64: first row of each segment
    lengths_ptr,  # (S,) int64: rows in each segment (0 = empty slot)
    out_ptr,  # (S, D), row stride stride_on
    argmax_ptr,  # (S, D) int32 row index of the max (MODE == 2 only), -1 for empty slots
    D,
    stride_xn,
    stride_on,
    MODE: tl.constexpr,  # 0 sum, 1 mean, 2 max
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[s, d] = reduce_{n in [o_s, o_s + l_s)} x[n, d]; reduce = sum | mean | max; 0 if l_s == 0.

    Grid (S, cdiv(D, BLOCK_D)): program (s, j) owns out[s, j*BLOCK_D : (j+1)*BLOCK_D]
    and walks its segment's rows in tiles of BLOCK_T x BLOCK_D, accumulating in
    fp32. For max it also records argmax[s, d], the absolute row n of the first
    maximum (ties go to the earliest byte), which the backward routes the
    gradient to.
    """
    s = tl.program_id(0).to(tl.int64)  # int64 offsets: S * D can pass 2**31
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + s).to(tl.int64)
    length = tl.load(lengths_ptr + s).to(tl.int32)  # a loop bound: one patch is < 2**31 bytes
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_T)
    if MODE == 2:
        acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
        arg = tl.full([BLOCK_D], -1, tl.int64)
    else:
        acc = tl.zeros([BLOCK_D], tl.float32)
    for t0 in range(0, length, BLOCK_T):
        r = t0 + rows
        mask = (r < length)[:, None] & cmask[None, :]
        ptrs = x_ptr + (start + r)[:, None] * stride_xn + cols[None, :]
        if MODE == 2:
            tile = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
            tmax, targ = tl.max(tile, axis=0, return_indices=True)
            # strict >: an equal value in a later tile keeps the earlier byte
            better = tmax > acc
            acc = tl.where(better, tmax, acc)
            arg = tl.where(better, start + t0 + targ, arg)
        else:
            tile = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(tile, axis=0)
    if MODE == 1:
        acc = acc / tl.maximum(length, 1).to(tl.float32)
    if MODE == 2:
        acc = tl.where(length > 0, acc, 0.0)
        tl.store(argmax_ptr + s * D + cols, arg.to(tl.int32), mask=cmask)
    tl.store(out_ptr + s * stride_on + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _pool_bwd_kernel(
    grad_out_ptr,  # (S, D), row stride stride_gn
    offsets_ptr,  # (S,) int64
    lengths_ptr,  # (S,) int64
    argmax_ptr,  # (S, D) int32 (MODE == 2 only)
    grad_x_ptr,  # (N, D), row stride stride_xn, zero-initialised
    D,
    stride_gn,
    stride_xn,
    MODE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_x[n, d] for the rows n of segment s, from grad_out[s, d]:

    sum: g;  mean: g / l_s;  max: g if n == argmax[s, d] else 0.

    Grid (S, cdiv(D, BLOCK_D)). Segments are disjoint, so every row is written
    by at most one program: no atomics, no race. Rows outside every segment
    (padding bytes) keep the zeros the host allocated.
    """
    s = tl.program_id(0).to(tl.int64)  # int64 offsets: S * D can pass 2**31
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + s).to(tl.int64)
    length = tl.load(lengths_ptr + s).to(tl.int32)  # a loop bound: one patch is < 2**31 bytes
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_T)
    g = tl.load(grad_out_ptr + s * stride_gn + cols, mask=cmask, other=0.0).to(tl.float32)
    if MODE == 1:
        g = g / tl.maximum(length, 1).to(tl.float32)
    if MODE == 2:
        arg = tl.load(argmax_ptr + s * D + cols, mask=cmask, other=-1).to(tl.int64)
    for t0 in range(0, length, BLOCK_T):
        r = start + t0 + rows
        mask = (t0 + rows < length)[:, None] & cmask[None, :]
        if MODE == 2:
            val = tl.where(r[:, None] == arg[None, :], g[None, :], 0.0)
        else:
            val = tl.zeros([BLOCK_T, BLOCK_D], tl.float32) + g[None, :]
        ptrs = grad_x_ptr + r[:, None] * stride_xn + cols[None, :]
        tl.store(ptrs, val.to(grad_x_ptr.dtype.element_ty), mask=mask)


def pool_fwd(
    x: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Packed pooling. x (N, D), offsets/lengths (S,) -> out (S, D), argmax (S, D) int32 or None."""
    assert x.dim() == 2 and x.stride(1) == 1, "pool_fwd wants x as (N, D) with unit feature stride"
    assert x.shape[0] < 2**31, "argmax is stored as int32: at most 2**31 - 1 rows"
    S, D = offsets.shape[0], x.shape[1]
    out = torch.empty(S, D, dtype=x.dtype, device=x.device)
    argmax = torch.empty(S, D, dtype=torch.int32, device=x.device) if mode == "max" else None
    if S == 0 or D == 0:
        return out, argmax
    BLOCK_D = _block_d(D)
    grid = (S, triton.cdiv(D, BLOCK_D))
    _pool_fwd_kernel[grid](
        x,
        offsets,
        lengths,
        out,
        argmax if argmax is not None else out,  # unused pointer when MODE != 2
        D,
        x.stride(0),
        out.stride(0),
        MODE=MODE_IDS[mode],
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out, argmax


def pool_bwd(
    grad_out: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    mode: str,
    argmax: torch.Tensor | None,
    n_rows: int,
) -> torch.Tensor:
    """Packed pooling backward. grad_out (S, D) -> grad_x (n_rows, D)."""
    grad_out = grad_out.contiguous()
    S, D = grad_out.shape
    # zeros, not empty: rows in no segment (padding bytes) get no gradient
    grad_x = torch.zeros(n_rows, D, dtype=grad_out.dtype, device=grad_out.device)
    if S == 0 or D == 0:
        return grad_x
    BLOCK_D = _block_d(D)
    grid = (S, triton.cdiv(D, BLOCK_D))
    _pool_bwd_kernel[grid](
        grad_out,
        offsets,
        lengths,
        argmax if argmax is not None else grad_out,
        grad_x,
        D,
        grad_out.stride(0),
        grad_x.stride(0),
        MODE=MODE_IDS[mode],
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return grad_x


class PoolFunction(torch.autograd.Function):
    """Packed pooling with autograd: (x (N, D), offsets (S,), lengths (S,), mode) -> (S, D)."""

    @staticmethod
    def forward(ctx, x, offsets, lengths, mode):
        out, argmax = pool_fwd(x, offsets, lengths, mode)
        ctx.save_for_backward(offsets, lengths, argmax)
        ctx.mode, ctx.n_rows = mode, x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        offsets, lengths, argmax = ctx.saved_tensors
        grad_x = pool_bwd(grad_out, offsets, lengths, ctx.mode, argmax, ctx.n_rows)
        return grad_x, None, None, None


def pool_packed(
    x: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, mode: str = "mean"
) -> torch.Tensor:
    """x (N, D), offsets (S,), lengths (S,) -> (S, D).

    Non-empty segments must lie inside x, in increasing order, without
    overlap (the backward writes each row from its one segment); empty
    segments may sit anywhere. Checked on device, without a host sync.
    """
    offsets, lengths = offsets.long().contiguous(), lengths.long().contiguous()
    ends = offsets + lengths
    nonempty = lengths > 0
    prev_end = torch.where(nonempty, ends, 0).cummax(0).values.roll(1)
    if prev_end.numel():
        prev_end[0] = 0
    ok = (lengths >= 0) & (~nonempty | ((offsets >= prev_end) & (ends <= x.shape[0])))
    torch._assert_async(ok.all(), "bytelm: pooled segments must be in order, disjoint, inside x")
    return _pool_packed(x, offsets, lengths, mode)


def _pool_packed(x, offsets, lengths, mode):
    x = x if x.stride(-1) == 1 else x.contiguous()
    return PoolFunction.apply(x, offsets, lengths, mode)


def pool_batched(x: torch.Tensor, patch_lengths: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """x (B, T, D), patch_lengths (B, P) -> (B, P, D), as packed pooling over B*T rows."""
    B, T, D = x.shape
    P = patch_lengths.shape[1]
    lengths = patch_lengths.long()
    ok = (lengths >= 0).all() & (lengths.sum(-1) <= T).all()
    torch._assert_async(ok, "bytelm: patch_lengths must be >= 0 and sum to at most T per row")
    row_start = torch.arange(B, device=x.device, dtype=torch.long)[:, None] * T
    offsets = lengths.cumsum(-1) - lengths + row_start  # (B, P) absolute first row
    # patches of a row are in order and rows do not overlap: the packed contract holds
    out = _pool_packed(x.reshape(B * T, D), offsets.reshape(-1), lengths.reshape(-1), mode)
    return out.reshape(B, P, D)


# --------------------------------------------------------------------------- unpooling


@triton.jit
def _unpool_fwd_kernel(
    h_ptr,  # (B, P, D), strides (stride_hb, stride_hp, 1)
    index_ptr,  # (B, T) int64, contiguous
    out_ptr,  # (B, T, D), contiguous
    T,
    D,
    stride_hb,
    stride_hp,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, t, d] = h[b, index[b, t], d], or 0 where index[b, t] < 0.

    Grid (cdiv(T, BLOCK_T), cdiv(D, BLOCK_D), B): a plain gather, one tile of
    BLOCK_T bytes x BLOCK_D features per program. Values are copied, not
    computed, so there is no precision choice to make.
    """
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    tmask = t < T
    cmask = cols < D
    idx = tl.load(index_ptr + b * T + t, mask=tmask, other=-1)
    read = (idx >= 0)[:, None] & cmask[None, :]
    src = h_ptr + b * stride_hb + idx[:, None] * stride_hp + cols[None, :]
    vals = tl.load(src, mask=read, other=0.0)
    dst = out_ptr + (b * T + t)[:, None] * D + cols[None, :]
    tl.store(dst, vals, mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _unpool_bwd_kernel(
    grad_out_ptr,  # (B, T, D), contiguous
    index_ptr,  # (B, T) int64, contiguous
    key_ptr,  # (B, T) int64, contiguous: running max of index along t
    grad_h_ptr,  # (B, P, D), contiguous
    T,
    P,
    D,
    N_SEARCH,  # ceil(log2(T + 1)): binary-search steps
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """grad_h[b, p, d] = sum_{t : index[b, t] == p} grad_out[b, t, d].

    The backward of a gather is a scatter-add; done with atomics it would be
    nondeterministic. Instead we use that the model's index is monotone: its
    non-negative entries never decrease along t (a byte reads the last patch
    complete by it), with -1 (read nothing) wherever the model masks, e.g.
    before a document's first patch and on padding. Then key = cummax(index)
    is non-decreasing, and every byte that reads p lies in the key's run
    [lo(p), lo(p+1)), where lo(v) = #{t : key[b, t] < v}; the run's other
    bytes have index -1. Program (p, j, b) finds the run with two binary
    searches over key[b] (N_SEARCH scalar loads each, cheap next to the run's
    BLOCK_D-wide loads) and sums the run's rows with index == p, like
    `_pool_fwd_kernel`: in fp32 and in a fixed order. Grid
    (P, cdiv(D, BLOCK_D), B); a patch that no byte reads gets 0.
    """
    p = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    key = key_ptr + b * T
    # lower bounds of p and p + 1, searched together: [lo, hi) shrinks to the answer
    lo0 = 0
    hi0 = T
    lo1 = 0
    hi1 = T
    for _ in range(N_SEARCH):
        mid0 = (lo0 + hi0) // 2
        mid1 = (lo1 + hi1) // 2
        v0 = tl.load(key + mid0, mask=mid0 < T, other=P)
        v1 = tl.load(key + mid1, mask=mid1 < T, other=P)
        go0 = lo0 < hi0
        go1 = lo1 < hi1
        lo0 = tl.where(go0 & (v0 < p), mid0 + 1, lo0)
        hi0 = tl.where(go0 & (v0 >= p), mid0, hi0)
        lo1 = tl.where(go1 & (v1 < p + 1), mid1 + 1, lo1)
        hi1 = tl.where(go1 & (v1 >= p + 1), mid1, hi1)
    start = lo0.to(tl.int64)
    length = lo1 - lo0
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_T)
    acc = tl.zeros([BLOCK_D], tl.float32)  # fp32: a run can be long (e.g. one patch, many bytes)
    for t0 in range(0, length, BLOCK_T):
        t = b * T + start + t0 + rows
        reads = (t0 + rows < length) & (tl.load(index_ptr + t, mask=t0 + rows < length) == p)
        ptrs = grad_out_ptr + t[:, None] * D + cols[None, :]
        tile = tl.load(ptrs, mask=reads[:, None] & cmask[None, :], other=0.0)
        acc += tl.sum(tile.to(tl.float32), axis=0)
    dst = grad_h_ptr + (b * P + p) * D + cols
    tl.store(dst, acc.to(grad_h_ptr.dtype.element_ty), mask=cmask)


def unpool_fwd(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h (B, P, D), index (B, T) int64 contiguous -> (B, T, D)."""
    assert h.stride(-1) == 1, "unpool_fwd wants h with unit feature stride"
    B, P, D = h.shape
    T = index.shape[1]
    out = torch.empty(B, T, D, dtype=h.dtype, device=h.device)
    if out.numel() == 0:
        return out
    BLOCK_D = _block_d(D)
    grid = (triton.cdiv(T, BLOCK_T), triton.cdiv(D, BLOCK_D), B)
    _unpool_fwd_kernel[grid](
        h,
        index,
        out,
        T,
        D,
        h.stride(0),
        h.stride(1),
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out


def unpool_bwd(grad_out: torch.Tensor, index: torch.Tensor, n_patches: int) -> torch.Tensor:
    """grad_out (B, T, D), index (B, T) (monotone, see the kernel) -> grad_h (B, n_patches, D)."""
    grad_out = grad_out.contiguous()
    B, T, D = grad_out.shape
    P = n_patches
    # empty is enough: every (b, p, feature) is written by exactly one program
    grad_h = torch.empty(B, P, D, dtype=grad_out.dtype, device=grad_out.device)
    if grad_h.numel() == 0:
        return grad_h
    if T == 0:
        return grad_h.zero_()
    key = index.cummax(dim=1).values.contiguous()  # (B, T) non-decreasing
    BLOCK_D = _block_d(D)
    grid = (P, triton.cdiv(D, BLOCK_D), B)
    _unpool_bwd_kernel[grid](
        grad_out,
        index,
        key,
        grad_h,
        T,
        P,
        D,
        int(T).bit_length(),  # == ceil(log2(T + 1))
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return grad_h


class UnpoolFunction(torch.autograd.Function):
    """(h (B, P, D), index (B, T)) -> (B, T, D), with the run-sum backward above."""

    @staticmethod
    def forward(ctx, h, index):
        ctx.save_for_backward(index)
        ctx.n_patches = h.shape[1]
        return unpool_fwd(h, index)

    @staticmethod
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        return unpool_bwd(grad_out, index, ctx.n_patches), None


def unpool_batched(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h (B, P, D), index (B, T) -> (B, T, D). Non-negative index entries must not decrease."""
    index = index.long().contiguous()
    # a non-negative entry below an earlier one would break the run structure of the backward
    monotone = (index < 0) | (index == index.cummax(dim=1).values)
    ok = (index >= -1).all() & (index < h.shape[1]).all() & monotone.all()
    torch._assert_async(
        ok,
        "bytelm: triton unpool needs index in [-1, P) with non-negative entries non-decreasing "
        "along each row; use backend='reference'",
    )
    h = h if h.stride(-1) == 1 else h.contiguous()
    return UnpoolFunction.apply(h, index)
