"""FlexAttention backend: the `MaskSpec` rule as a `mask_mod`, block-sparse on CUDA.

    allowed(b, i, j) = q_seg[b, i] == k_seg[b, j]
                       and (not causal or k_pos[b, j] <= q_pos[b, i])
                       and (window is None or q_pos[b, i] - k_pos[b, j] < window)

`mask_mod` is a closure over the four (B, T) spec tensors, evaluated lazily:
`create_block_mask` runs it per (128 x 128) tile to sort tiles into empty,
full and partial (compiled on CUDA, so no (B, Tq, Tk) tensor is materialised),
and the fused kernel re-evaluates it inside partial tiles only. The block
mask depends on the spec alone, so it is built once per spec and shared by
every layer of a stack (see `_memo`).

On CUDA `flex_attention` runs compiled (Triton, forward and backward). On CPU
it runs eagerly: an unfused path that materialises the scores, forward only
(torch raises for a CPU backward), which is what the tests use to check the
mask against the reference.

Key-less queries (an empty patch slot, a masked cache write) must give zeros,
as in the reference. Flex reports such a row with logsumexp = -inf; the eager
path returns 0 there, and the output is zeroed wherever lse is -inf so that
this holds whatever kernel ran (and a NaN could never leak from such a row).
"""

from __future__ import annotations

from functools import cache

import torch
from torch.nn.attention import flex_attention as _flex

from bytelm.kernels.attention._memo import memo
from bytelm.kernels.attention.reference import MaskSpec


def mask_mod_for(spec: MaskSpec):
    """The `MaskSpec` rule as a flex `mask_mod(b, h, q_idx, kv_idx) -> bool`."""
    q_seg, k_seg, q_pos, k_pos = spec.q_seg, spec.k_seg, spec.q_pos, spec.k_pos
    causal, window = spec.causal, spec.window

    def mask_mod(b, h, q_idx, kv_idx):
        m = q_seg[b, q_idx] == k_seg[b, kv_idx]
        if causal:
            m = m & (k_pos[b, kv_idx] <= q_pos[b, q_idx])
        if window is not None:
            m = m & (q_pos[b, q_idx] - k_pos[b, kv_idx] < window)
        return m

    return mask_mod


def block_mask(spec: MaskSpec, device: torch.device) -> _flex.BlockMask:
    """The spec's `BlockMask` (B, 1 head broadcast, Tq, Tk), memoised per spec."""
    B, Tq = spec.q_seg.shape
    Tk = spec.k_seg.shape[1]
    # compiling the mask construction is what keeps it tile-wise on CUDA; inside an
    # outer torch.compile it is traced anyway, and on CPU (tests) eager is quicker
    compile_it = device.type == "cuda" and not torch.compiler.is_compiling()
    return memo(
        "flex",
        spec,
        lambda: _flex.create_block_mask(
            mask_mod_for(spec), B, None, Tq, Tk, device=device, _compile=compile_it
        ),
    )


@cache
def _compiled_flex_attention():
    return torch.compile(_flex.flex_attention)


def _flex_with_lse(fn, q, k, v, bm, scale):
    if hasattr(_flex, "AuxRequest"):  # torch >= 2.9: return_lse is deprecated
        out, aux = fn(q, k, v, block_mask=bm, scale=scale, return_aux=_flex.AuxRequest(lse=True))
        return out, aux.lse
    return fn(q, k, v, block_mask=bm, scale=scale, return_lse=True)


def attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, scale: float | None = None
) -> torch.Tensor:
    """q (B, H, Tq, Dh), k/v (B, H, Tk, Dh) -> (B, H, Tq, Dh); zeros for key-less queries."""
    B, _, Tq, _ = q.shape
    assert spec.q_seg.shape == (B, Tq) and spec.k_seg.shape == (B, k.shape[2]), (
        "MaskSpec q_seg/k_seg must be (B, Tq) and (B, Tk) like q and k"
    )
    if (
        q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    ):
        raise RuntimeError(
            "bytelm: attention backend 'flex' has no CPU backward (a flex_attention limit); "
            "use backend='sdpa' or 'auto' to train on CPU"
        )
    bm = block_mask(spec, q.device)
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        fn = _compiled_flex_attention()
    else:  # CPU, or already inside an outer torch.compile that will fuse it
        fn = _flex.flex_attention
    out, lse = _flex_with_lse(fn, q, k, v, bm, scale)  # lse (B, H, Tq), fp32
    return torch.where((lse > float("-inf"))[..., None], out, 0.0)
