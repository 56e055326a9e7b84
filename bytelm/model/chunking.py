"""How the learned router (`bytelm.patchers.learned`) gets a gradient, and how it is watched.

Hard boundaries (p_t > θ) have no gradient, so p enters the computation twice, as in H-Net
(Hwang et al. 2025, §2.2-2.3):

- **smoothing** (`smooth`): each patch's latent output is mixed with the previous one's by
  the confidence that the patch really ends where it does,
  z̃_j = P_j z_j + (1 − P_j) z̃_{j−1}, with P_j = p at patch j's last byte (the byte whose
  p_t closed it). A patch closed with little confidence (a forced cut) contributes little.
  P = 1 at BOS and at a row's first byte, so the mix restarts there: it never crosses a
  document, and it reads only patches up to j, so the causality rule is untouched. This
  changes the forward value; the cached decode applies the same mix.
- **confidence** (`confidence`): the vector byte t reads from the latent (unpooled) is
  multiplied by c_t + (1 − c_t).detach() style straight-through, where c_t is the
  probability of what happened at t: p_t where t ends a patch, 1 − p_t where it does not.
  The forward value is exactly 1·u (c − c.detach() is exactly 0); the gradient reaches p.

A ratio loss (`ratio_loss`) pulls the boundary rate toward 1/N, N the target bytes per
patch: L = N/(N−1)·((N−1)·F·G + (1−F)(1−G)), F the fraction of bytes that end a patch (no
gradient), G the mean p (H-Net eq. 10). Its minimum, 1, is at F = G = 1/N.

`routing_stats` gives the training metrics and `routing_warnings` the known failure modes:
collapse (a boundary nearly everywhere or nowhere), a boundary at every byte of a run of
repeated bytes (identical states have cos 1, so p should be 0 there), and a rate stuck
far from the target. `calibrate` fits the threshold θ (the inference knob) to a target
bytes per patch on a sample of the training split.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from bytelm.config import CALIBRATION_BYTES
from bytelm.patchers.entropy_rule import Calibration, calibrate_threshold
from bytelm.vocab import BOS, PAD

# A patch's smoothing weight P lies in [GATE_MIN, 1 - GATE_MIN] unless it is exactly 1 (a
# restart): H-Net's clamp, which keeps log(1 - P) and its gradient finite.
GATE_MIN = 1e-4

STATS = ("ratio_loss", "boundary_rate", "boundary_p", "router_rate", "run_boundary_rate")


@dataclass
class Routing:
    """What a learned ByteLM forward decided: p (B, T) with its gradient, ends (B, T), ids."""

    p: torch.Tensor
    ends: torch.Tensor
    ids: torch.Tensor


def patch_gates(p: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """p (B, T), patch_lengths (B, P) -> the smoothing weight P_j of each patch (B, P): p at
    its last byte, clamped; exactly 1 where p is 1 (BOS, a row's first byte) and for empty
    slots."""
    last = (lengths.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    return gate(p.gather(1, last), lengths > 0)


def gate(p: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Boundary probabilities of closing bytes -> smoothing weights (see GATE_MIN)."""
    g = torch.where(p >= 1, 1.0, p.clamp(GATE_MIN, 1 - GATE_MIN))
    return g if real is None else torch.where(real, g, 1.0)


def smooth(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """z (B, P, D), weights g (B, P) in (0, 1] -> z̃ (B, P, D): z̃_j = g_j z_j + (1 − g_j) z̃_{j−1},
    restarting where g is 1 (and at j = 0).

    Closed form, one matmul instead of a scan over patches: z̃_j = Σ_i w_ji z_i with
    w_ji = g_i Π_{i<k<=j} (1 − g_k) for the i from j's last restart to j, else 0. The
    log-products are summed in fp64: over hundreds of patches a long fp32 sum would lose
    the digits that the difference of two of them keeps.
    """
    B, P, _ = z.shape
    j = torch.arange(P, device=z.device)
    restart = g >= 1
    a = torch.where(restart, 0.0, torch.log1p(-g.double().clamp(max=1 - GATE_MIN)))
    S = a.cumsum(1)  # (B, P)
    first = torch.where(restart, j, 0).cummax(1).values  # (B, P) j's last restart
    i = j[None, None, :]
    ok = (i <= j[None, :, None]) & (i >= first[..., None])  # (B, P_j, P_i)
    logw = torch.where(ok, S[:, :, None] - S[:, None, :], -math.inf)
    w = logw.exp().to(g.dtype) * g[:, None, :]
    return torch.bmm(w.to(z.dtype), z)


def confidence(p: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, 1) multipliers equal to 1 whose gradient is that of c_t, the probability
    of the decision at t (p_t where t ends a patch, 1 − p_t where not): straight-through."""
    c = torch.where(ends, p, 1 - p)
    return (1 + (c - c.detach()))[..., None]  # c - c is exactly 0: the value is exactly 1


# ----------------------------------------------------------------------------- training


def ratio_loss(p: torch.Tensor, ends: torch.Tensor, real: torch.Tensor, target: float):
    """H-Net's ratio loss toward `target` bytes per patch over the real bytes (scalar)."""
    n = real.sum().clamp(min=1)
    F = (ends & real).sum() / n  # no gradient: hard boundaries
    G = (p * real).sum() / n
    N = target
    return N / (N - 1) * ((N - 1) * F * G + (1 - F) * (1 - G))


def routing_stats(r: Routing, target: float, threshold: float) -> torch.Tensor:
    """(len(STATS),) on the device: the ratio loss (with its gradient), then detached
    metrics: the fraction of real bytes that end a patch, the mean p, the fraction the
    router itself fires on (p > threshold, BOS and a row's first byte excluded), and the
    fraction of bytes inside runs of one repeated byte (t, t−1, t−2 equal) that end a patch."""
    ids, p, ends = r.ids, r.p, r.ends
    real = ids != PAD
    loss = ratio_loss(p, ends, real, target) if target > 1 else p.new_zeros(())
    n = real.sum().clamp(min=1)
    inner = real.clone()
    inner[:, 0] = False
    inner &= ids != BOS
    same = torch.zeros_like(real)
    same[:, 2:] = (ids[:, 2:] == ids[:, 1:-1]) & (ids[:, 1:-1] == ids[:, :-2]) & real[:, 2:]
    pd = p.detach()
    return torch.stack(
        [
            loss,
            (ends & real).sum() / n,
            (pd * real).sum() / n,
            ((pd > threshold) & inner).sum() / inner.sum().clamp(min=1),
            (ends & same).sum() / same.sum().clamp(min=1),
        ]
    ).float()


def routing_warnings(
    stats: dict, target: float, max_patch_len: int, past_warmup: bool
) -> dict[str, str]:
    """Metrics named as in STATS (floats, averaged over some steps) -> {failure mode: warning}
    for the known failure modes of learned chunking ("collapse", "runs", "stuck"), {} when
    none applies. "stuck" is judged only `past_warmup`."""
    out, rate = {}, stats["boundary_rate"]
    bpp = 1 / max(rate, 1e-9)
    # nowhere: the router fires on under a tenth of the boundaries the target asks for (when
    # max_patch_len alone cannot give them)
    if stats["router_rate"] < (0.1 / target if target > 1 else 0.01) and target < max_patch_len:
        out["collapse"] = (
            f"learned boundaries collapsed: the router fires on {stats['router_rate']:.1%} of "
            f"bytes ({bpp:.2f} bytes/patch, cut at max_patch_len={max_patch_len} and EOS); "
            "raise patcher.ratio_loss_weight"
        )
    elif rate > 0.8 and (target <= 1 or target >= 2):
        out["collapse"] = (
            f"learned boundaries collapsed: {rate:.0%} of bytes end a patch ({bpp:.2f} "
            "bytes/patch); raise patcher.ratio_loss_weight"
        )
    if stats["run_boundary_rate"] > 0.5:
        out["runs"] = (
            f"the router ends a patch at {stats['run_boundary_rate']:.0%} of the bytes inside "
            "runs of one repeated byte (identical states should give p = 0): W_q and W_k "
            "disagree on identical states"
        )
    if target > 1 and past_warmup and not 2 / 3 < bpp / target < 3 / 2:
        out["stuck"] = (
            f"the boundary rate is stuck far from the target: {bpp:.2f} bytes/patch against "
            f"{target:g}; raise patcher.ratio_loss_weight"
        )
    return out


# ----------------------------------------------------------------------------- calibration


@torch.no_grad()
def calibrate(
    model,
    split,
    target: float,
    seq_len: int,
    batch_size: int = 8,
    max_bytes: int | None = CALIBRATION_BYTES,
    sample: int = 0,
):
    """Fit a learned ByteLM's threshold θ to `target` bytes per patch on its calibration sample.

    `split` is the *training* split, never the held-out one bpb is reported on (see
    `bytelm.patchers.entropy_rule`, "Where θ is calibrated"). p is computed over windows of
    `seq_len` spread over the split, `max_bytes` positions in all (`split.sample_batches`,
    sample 0 unless told), and θ is the exact quantile of p that, with the forced ends (BOS,
    EOS, max_patch_len), gives the target mean patch length on those positions
    (`calibrate_threshold`, global mode: the same rule as entropy patching, with p for H).
    Sets the router's threshold and returns (the model's PatcherConfig with threshold,
    measured_bytes_per_patch and the target set, Calibration)."""
    router = model.patcher
    assert getattr(router, "needs_states", False), "calibrate needs a ByteLM with a learned router"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids_all, p_all = [], []
    for ids in split.sample_batches(seq_len, batch_size, max_bytes, sample):
        ids = ids.to(device)
        p, _ = model.route(ids)
        real = ids != PAD
        ids_all.append(ids[real].cpu())
        p_all.append(p[real].cpu())
    model.train(was_training)
    cal: Calibration = calibrate_threshold(
        torch.cat(ids_all), torch.cat(p_all), target, "global", router.max_patch_len
    )
    if not 0 < cal.threshold < 1:
        raise ValueError(
            f"bytelm: no threshold in (0, 1) gives {target:g} bytes per patch on this data"
        )
    router.threshold = cal.threshold
    pc = dataclasses.replace(
        model.cfg.patcher,
        threshold=cal.threshold,
        measured_bytes_per_patch=cal.measured_bytes_per_patch,
        target_bytes_per_patch=target,
    )
    model.cfg = dataclasses.replace(model.cfg, patcher=pc)
    return pc, cal
