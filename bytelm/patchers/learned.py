"""`learned`: patch boundaries a ByteLM learns end to end (H-Net's dynamic chunking, made causal).

The router compares each byte's encoder state with the previous byte's (H-Net, Hwang et al.
2025, "Dynamic chunking for end-to-end hierarchical sequence modeling"):

    p_t = ½ (1 − cos(W_q h_t, W_k h_{t−1}))        W_q, W_k start as the identity

and byte t closes its patch when p_t > threshold.

**Which byte closes a patch, and why that is causal.** H-Net reads p_t as "a chunk starts
at t". In bytelm's convention (`ends[t]`: byte t is the last byte of its patch) that would
be ends[t−1] = [p_t > θ], which reads h_t, the state of a byte after t−1: the future. The
same p_t decides ends[t] instead: byte t, unlike byte t−1, closes the patch that holds it.
ends[t] then reads h_t and h_{t−1}, encoder states of bytes <= t (the encoder is causal),
and the causality rule of `bytelm.model.bytelm` holds unchanged: byte t reads the last
patch complete by t. The byte that breaks with its predecessor (a space after a word, as
in SpaceByte) ends the patch, so the byte after it, the first of the next patch and usually
the hardest, is predicted from a latent state that has seen the change.

Forced ends, as with every source: p = 1 at BOS and at a row's first byte (no previous
state: H-Net's first-token rule), so both close a patch and patches never straddle
documents; EOS closes its patch; a patch is cut at `max_patch_len` bytes.

**One protocol.** This source is an `nn.Module` (the router's two matrices), and a ByteLM
keeps it as `model.patcher`, a submodule: its weights train and are checkpointed with the
model. Its `ends` and `step` take the encoder states (`states=`), which only the model
has; `needs_states` tells ByteLM to call it after the encoder. In `step` the states start
with the previous byte's, which the model reads from its cache ring, so the patcher state
holds no vector (only the open patch's length and the last byte id, like a rule patcher's)
and a rollback replays the kept bytes from the ring. `route` and `route_step` also return
p, which the model needs for the gradient (`bytelm.model.chunking`). Made from a config
alone (`make_patcher`) the router has no weights until a ByteLM binds it to its encoder
width; without weights or states it refuses to label bytes, never falls back to a rule.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bytelm.config import MAX_PATCH_LEN
from bytelm.patchers.base import PatcherState
from bytelm.vocab import BOS, EOS, PAD

DEFAULT_THRESHOLD = 0.5  # H-Net's cut (p > 1 − p); `patcher.threshold = 0` means this one


class LearnedBoundaries(nn.Module):
    """The `learned` boundary source: a router over encoder states. See the module docstring."""

    name = "learned"
    causal = True
    needs_states = True  # ends/step read the model's encoder states
    functional_state = True  # `route_step` replaces the state's tensors, never edits them

    def __init__(
        self,
        dim: int | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        max_patch_len: int = MAX_PATCH_LEN,
    ):
        super().__init__()
        if max_patch_len < 1:
            raise ValueError(f"bytelm: max_patch_len must be >= 1, got {max_patch_len}")
        if not 0 < threshold < 1:
            raise ValueError(f"bytelm: the router's threshold must lie in (0, 1), got {threshold}")
        self.threshold, self.max_patch_len = float(threshold), max_patch_len
        self.dim: int | None = None
        if dim is not None:
            self.bind(dim)

    @classmethod
    def from_config(cls, cfg, dim: int | None = None) -> LearnedBoundaries:
        return cls(dim, cfg.threshold or DEFAULT_THRESHOLD, cfg.max_patch_len)

    def bind(self, dim: int) -> LearnedBoundaries:
        """Give the router its weights for encoder width `dim` (a ByteLM does, on adoption)."""
        if self.dim is None:
            self.dim = dim
            self.w_q = nn.Linear(dim, dim, bias=False)
            self.w_k = nn.Linear(dim, dim, bias=False)
            self.reset_parameters()
        elif self.dim != dim:
            raise ValueError(
                f"bytelm: this learned router reads states of width {self.dim}, not {dim}"
            )
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W_q = W_k = I (H-Net): p starts as ½(1 − cos) of the raw adjacent states."""
        self.w_q.weight.copy_(torch.eye(self.dim))
        self.w_k.weight.copy_(torch.eye(self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, threshold={self.threshold:g}, max_patch_len={self.max_patch_len}"

    # ---------------------------------------------------------------- the rule

    def probs(self, h: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """States h, h_prev (B, n, D) of bytes t and t−1 -> p_t (B, n), fp32.

        In fp32 whatever the autocast: a boundary is a threshold decision, and the cached
        decode must take the same decisions as the forward pass.
        """
        if self.dim is None:
            raise ValueError(
                "bytelm: this learned router has no weights yet; a ByteLM binds it to its "
                "encoder width (build the model and use model.patcher)"
            )
        with torch.autocast(h.device.type, enabled=False):
            q = F.normalize(self.w_q(h.float()), dim=-1)
            k = F.normalize(self.w_k(h_prev.float()), dim=-1)
            return ((1 - (q * k).sum(-1)) / 2).clamp(0.0, 1.0)

    def _ends(self, p, ids, patch_len, n_valid=None):
        """p, ids (B, n), the open patch's length before them (B,) -> ends (B, n), and the open
        patch's length after row r's first n_valid[r] bytes (B,). Vectorised: a forced cut
        falls every max_patch_len bytes after the last end, rule or EOS (cf. ends_from_fire)."""
        B, n = ids.shape
        i = torch.arange(n, device=ids.device).expand(B, n)
        take = i < (n if n_valid is None else n_valid[:, None])
        natural = ((p > self.threshold) | (ids == EOS)) & take
        before = (-1 - patch_len)[:, None]  # where the last end before these bytes was
        last = torch.where(natural, i, before).cummax(1).values  # last natural end at or before i
        prev_end = torch.cat([before, last[:, :-1]], 1)  # the last natural end before i
        ends = natural | (((i - prev_end) % self.max_patch_len == 0) & take)
        n_take = take.sum(1)
        return ends, n_take - 1 - torch.where(ends, i, before).amax(1)

    # ---------------------------------------------------------------- batched

    def route(self, ids: torch.Tensor, states: torch.Tensor):
        """ids (B, T), encoder states (B, T, D) -> (p (B, T), ends (B, T) bool). p carries the
        gradient; ends[t] reads states <= t."""
        h_prev = torch.cat([states[:, :1], states[:, :-1]], 1)  # row start: forced below
        p = self.probs(states, h_prev)
        first = torch.zeros_like(ids, dtype=torch.bool)
        first[:, 0] = True
        p = torch.where(first | (ids == BOS), 1.0, p)
        ends, _ = self._ends(p, ids, torch.zeros_like(ids[:, 0]))
        return p, ends

    def ends(self, byte_ids: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids and the model's encoder states (B, T, D) -> (B, T) bool ends."""
        return self.route(byte_ids, self._need(states))[1]

    # ---------------------------------------------------------------- incremental

    def start(self, batch: int, device: torch.device | None = None) -> PatcherState:
        return PatcherState(
            patch_len=torch.zeros(batch, dtype=torch.long, device=device),
            prev=torch.full((batch,), PAD, dtype=torch.long, device=device),
        )

    def route_step(
        self,
        state: PatcherState,
        new_ids: torch.Tensor,
        states: torch.Tensor,
        n_valid: torch.Tensor | None = None,
    ):
        """Feed new_ids (B, n) with states (B, 1 + n, D): the state of the byte before them
        (anything before a row's first byte), then theirs. Mutates `state`; row r takes only
        its first n_valid[r] bytes (their ends False beyond). -> (p (B, n), ends (B, n))."""
        B, n = new_ids.shape
        p = self.probs(states[:, 1:], states[:, :-1])
        first = torch.zeros_like(new_ids, dtype=torch.bool)
        first[:, 0] = state.prev == PAD  # nothing seen yet: the row's first byte
        p = torch.where(first | (new_ids == BOS), 1.0, p)
        ends, state.patch_len = self._ends(p, new_ids, state.patch_len, n_valid)
        k = n if n_valid is None else n_valid
        k = torch.as_tensor(k, device=new_ids.device).expand(B)
        last = new_ids.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]
        state.prev = torch.where(k > 0, last, state.prev)
        return p, ends

    def step(
        self,
        state: PatcherState,
        new_ids: torch.Tensor,
        n_valid: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The protocol's step: `route_step` without p."""
        return self.route_step(state, new_ids, self._need(states), n_valid)[1]

    @staticmethod
    def _need(states):
        if states is None:
            raise ValueError(
                "bytelm: the learned boundary source decides from a ByteLM's encoder states "
                "(states=); ask the model for its patches (ByteLM.route), not the source alone"
            )
        return states
