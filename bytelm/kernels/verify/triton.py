"""Triton speculative-decoding verify step: one fused kernel, one program per row.

`_verify_fwd_kernel` does, per row, what `reference.verify_reference` specifies:
the softmax of each of the K+1 logit rows, the acceptance test of each draft,
the residual max(0, p_j - q_j) at the first rejection and its inverse-CDF
sample, with no intermediate tensor written to memory. `verify_fwd` is the
host function. Verification samples, so there is no backward.

Layout: drafts (B, K) int64, q (B, K, V), logits (B, K+1, V), u_accept (B, K),
u_sample (B,); any float dtype for q and logits, any row strides, unit stride
along V. The vocabulary is one BLOCK_V = next_power_of_2(V) vector (512 for
the 259 byte ids), so a row of logits is read once per position.

Precision: logits are upcast to fp32 before the temperature and the softmax
(bf16 logits would give probabilities with 8 mantissa bits, and the
acceptance ratio p/q divides two such numbers); the residual, its mass and
the CDF are fp32 too. The reference computes in fp32 as well, so the two agree
except when a random number falls within rounding (~1e-7) of a decision
boundary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bytelm.kernels.verify.reference import RESIDUAL_EPS

NUM_WARPS = 4


@triton.jit
def _verify_fwd_kernel(
    drafts_ptr,  # (B, K) int64, row stride stride_db
    q_ptr,  # (B, K, V), strides (stride_qb, stride_qk, 1); unused when GREEDY
    logits_ptr,  # (B, K+1, V), strides (stride_lb, stride_lk, 1)
    u_accept_ptr,  # (B, K) fp32, row stride stride_ub; unused when GREEDY
    u_sample_ptr,  # (B,) fp32; unused when GREEDY
    accepted_ptr,  # (B,) int64 out
    next_ptr,  # (B,) int64 out
    K,
    V,
    temperature,
    stride_db,
    stride_qb,
    stride_qk,
    stride_lb,
    stride_lk,
    stride_ub,
    GREEDY: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row b: accepted = #leading accepted drafts, next = the byte emitted after them.

    greedy:   accept d_i iff d_i == argmax(logits_i); next = argmax(logits_accepted).
    sampling: p_i = softmax(logits_i / temperature); accept d_i iff
              u_i < min(1, p_i(d_i) / q_i(d_i)); at the first rejection j (or j = K)
              next ~ normalize(max(0, p_j - q_j)) (q_K = 0, so that is p_K; p_j when
              the residual's mass is below EPS), by inverse CDF with u_sample.

    Grid (B,). Positions are scanned in order and every one is tested, with
    `alive` turning 0 at the first rejection (a data-dependent early exit would
    save little: K is small and the loads are 1 KiB per position).
    """
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    vmask = cols < V
    alive = 1
    n_acc = 0
    for i in range(0, K):
        d = tl.load(drafts_ptr + b * stride_db + i)
        lg_ptrs = logits_ptr + b * stride_lb + i * stride_lk + cols
        lg = tl.load(lg_ptrs, mask=vmask, other=float("-inf")).to(tl.float32)
        if GREEDY:
            ok = tl.argmax(lg, axis=0) == d
        else:
            # p(d) = exp(z_d - max z) / sum exp(z - max z), with z_d read directly
            z = lg / temperature
            z_max = tl.max(z, axis=0)
            z_d = (
                tl.load(logits_ptr + b * stride_lb + i * stride_lk + d).to(tl.float32) / temperature
            )
            p_d = tl.exp(z_d - z_max) / tl.sum(tl.exp(z - z_max), axis=0)
            q_d = tl.load(q_ptr + b * stride_qb + i * stride_qk + d).to(tl.float32)
            u = tl.load(u_accept_ptr + b * stride_ub + i).to(tl.float32)
            # u < min(1, p/q) as two tests: a 0/0 ratio is NaN and rejects, as in the reference
            ok = (u < p_d / q_d) & (u < 1.0)
        alive = alive & ok.to(tl.int32)
        n_acc += alive

    j = n_acc
    lg_ptrs = logits_ptr + b * stride_lb + j * stride_lk + cols
    lg = tl.load(lg_ptrs, mask=vmask, other=float("-inf")).to(tl.float32)
    if GREEDY:
        nxt = tl.argmax(lg, axis=0).to(tl.int64)
    else:
        z = lg / temperature
        e = tl.exp(z - tl.max(z, axis=0))  # padded lanes hold -inf: exp gives 0
        p = e / tl.sum(e, axis=0)
        q_ptrs = q_ptr + b * stride_qb + j * stride_qk + cols
        q = tl.load(q_ptrs, mask=vmask & (j < K), other=0.0).to(tl.float32)  # q_K = 0
        r = tl.maximum(p - q, 0.0)
        w = tl.where(tl.sum(r, axis=0) <= EPS, p, r)
        c = tl.cumsum(w, axis=0)
        u = tl.load(u_sample_ptr + b).to(tl.float32)
        below = (c <= u * tl.max(c, axis=0)) & vmask  # max(c) is the total: w >= 0
        idx = tl.sum(below.to(tl.int32), axis=0)
        last = tl.max(tl.where(w > 0, cols, 0), axis=0)
        nxt = tl.minimum(idx, last).to(tl.int64)
    tl.store(accepted_ptr + b, j.to(tl.int64))
    tl.store(next_ptr + b, nxt)


def verify_fwd(
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    logits: torch.Tensor,
    temperature: float,
    u_accept: torch.Tensor | None,
    u_sample: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts (B, K), q (B, K, V), logits (B, K+1, V), u_accept (B, K), u_sample (B,)
    -> accepted (B,) int64, next_byte (B,) int64. Shapes are checked by the caller."""
    B, K = drafts.shape
    V = logits.shape[-1]
    greedy = temperature == 0
    drafts = drafts.long().contiguous()
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    accepted = torch.empty(B, dtype=torch.long, device=logits.device)
    next_byte = torch.empty(B, dtype=torch.long, device=logits.device)
    if B == 0:
        return accepted, next_byte
    if greedy:  # q and the random numbers are not read: pass any pointer
        q, u_accept, u_sample = logits, drafts, drafts
    else:
        in_vocab = ((drafts >= 0) & (drafts < V)).all()  # q is read at the draft ids
        torch._assert_async(in_vocab, "bytelm: verify drafts must be ids in [0, V)")
        q = q if q.stride(-1) == 1 else q.contiguous()
        u_accept = u_accept.float().contiguous()
        u_sample = u_sample.float().contiguous()
    _verify_fwd_kernel[(B,)](
        drafts,
        q,
        logits,
        u_accept,
        u_sample,
        accepted,
        next_byte,
        K,
        V,
        float(temperature) if not greedy else 1.0,
        drafts.stride(0),
        q.stride(0),
        q.stride(1),
        logits.stride(0),
        logits.stride(1),
        u_accept.stride(0),
        GREEDY=greedy,
        EPS=RESIDUAL_EPS,
        BLOCK_V=triton.next_power_of_2(V),
        num_warps=NUM_WARPS,
    )
    return accepted, next_byte
