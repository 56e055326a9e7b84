"""What changes when accelerate shards the model (FSDP): state dicts are collectives, and only
the wrapped model's forward sees whole parameters.

Under FSDP each rank holds a shard of every parameter (and of its optimizer state). A
checkpoint needs the full tensors: `full_state` gathers the model's state dict through
accelerate (`Accelerator.get_state_dict`) and the optimizer's through torch's
distributed-checkpoint API. Both are collectives, so every rank calls `full_state`; the main
process then holds the full tensors and writes them (the others may hold nothing). For
resume every rank reads the checkpoint and keeps its shard (`ShardedLoad`,
`load_optimizer_state`). `WrappedForward` runs an evaluation that reads the model's attributes (its patcher,
its config) through the wrapped model's forward, which gathers the shards. Without FSDP
(one process, DDP) each of these is the plain call.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType


def is_fsdp(acc) -> bool:
    return acc.distributed_type == DistributedType.FSDP


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(acc, model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict), full: call it on every rank. Under FSDP the
    optimizer state is keyed by parameter name (torch's full optimizer state dict)."""
    weights = acc.get_state_dict(model)  # FSDP: a collective; the tensors land on the main rank
    optim = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> torch's
    if not is_fsdp(acc):
        return weights, optim.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return weights, get_optimizer_state_dict(model, optim, options=_options(cpu_offload=True))


def load_optimizer_state(acc, model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load an optimizer state dict as `full_state` makes it, on every rank."""
    optim = getattr(optimizer, "optimizer", optimizer)
    if not is_fsdp(acc):
        optim.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optim, state, options=_options())


class ShardedLoad:
    """Where `checkpoint.load_weights` loads a checkpoint under FSDP: it checks the full
    tensors against the sharded model's state dict (global shapes), and every rank keeps
    its shard of them (torch's `set_model_state_dict`)."""

    def __init__(self, acc, model: torch.nn.Module):
        self.acc, self.model = acc, model

    def state_dict(self) -> dict:
        return self.acc.unwrap_model(self.model).state_dict()

    def load_state_dict(self, state: dict, strict: bool = True):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        return set_model_state_dict(self.model, state, options=_options(strict=strict))


class FullWeights:
    """A gathered state dict where `checkpoint.save_*` expect a model (they read only
    `state_dict()`)."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


class WrappedForward:
    """The unwrapped model's attributes with the wrapped model's forward (and train/eval)."""

    def __init__(self, wrapped: torch.nn.Module, raw: torch.nn.Module):
        self._wrapped, self._raw = wrapped, raw

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def train(self, mode: bool = True):
        self._wrapped.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __getattr__(self, name):
        return getattr(self._raw, name)
