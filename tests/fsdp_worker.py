"""One rank of tests/test_fsdp.py: `python -m tests.fsdp_worker RANK WORLD PORT DIR`.

Trains a tiny ByteLM a few steps with the Trainer under FSDP (FSDP2, `fully_shard`) over
gloo on CPU, saves, evaluates, resumes, and writes what rank 0 checks to DIR/rank0.json.

accelerate turns FSDP on only for accelerator devices (on CPU it runs DDP); torch's FSDP
itself runs on CPU over gloo. So the accelerator's state is set to FSDP by hand before
`prepare`, and accelerate's own FSDP code (wrapping, `get_state_dict`) then runs as it
would on GPUs. The worker checks that the parameters really are shards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    import torch

    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.tensor import DTensor

    from bytelm import config as C
    from bytelm.checkpoint import load_model
    from bytelm.evals.bpb import evaluate_bpb
    from bytelm.train import Trainer

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    acc = Accelerator(cpu=True, fsdp_plugin=plugin)
    PartialState().distributed_type = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    cfg = C.override(
        C.load_preset("tiny"),
        {"data.sources": str(out / "docs"), "data.heldout_fraction": "0.3",
         "data.cache_dir": str(out / "cache"), "train.steps": "3", "train.save_every": "3",
         "train.eval_every": "3", "train.eval_bytes": "2048", "train.out_dir": str(out / "run"),
         "train.prefetch": "false"},
    )  # fmt: skip
    trainer = Trainer(cfg, accelerator=acc)
    assert trainer.fsdp and acc.is_fsdp2
    params = list(trainer.model.parameters())
    sharded = all(isinstance(p, DTensor) for p in params)
    local = sum(p.to_local().numel() for p in params)  # this rank's shard
    last = trainer.fit()
    # the weights as the sharded model holds them, gathered (a collective)
    full = acc.get_state_dict(trainer.model)
    # resume into a fresh sharded model: its weights and optimizer come back
    again = Trainer(cfg, accelerator=acc)
    resumed = again.resume()
    full_again = acc.get_state_dict(again.model)
    if rank == 0:
        plain, _ = load_model(out / "run" / "checkpoint")
        saved = plain.state_dict()
        same = sorted(saved) == sorted(full) and all(torch.equal(saved[k], full[k]) for k in full)
        same_again = all(torch.equal(saved[k], full_again[k]) for k in full_again)
        bpb = evaluate_bpb(plain, trainer.corpus["heldout"], cfg.data.seq_len,
                           cfg.data.batch_size, max_bytes=cfg.train.eval_bytes)["bpb"]  # fmt: skip
        result = {
            "sharded": sharded,
            "local_numel": local,
            "full_numel": sum(v.numel() for v in full.values()),
            "same_weights": same,
            "resumed": resumed and again.step == 3,
            "same_after_resume": same_again,
            "bpb_trainer": last["bpb"],
            "bpb_plain": bpb,
            "optimizer_steps": [
                int(s["step"]) for s in again.optimizer.optimizer.state.values() if "step" in s
            ][:1],
        }
        (out / "rank0.json").write_text(json.dumps(result))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
