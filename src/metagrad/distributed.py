"""Multi-process meta-training through torch.distributed (launched by torchrun).

The tasks of a meta-batch are split across ranks; each rank weights its tasks' meta-gradient
by (its tasks / all tasks) so that a SUM all-reduce yields the mean over the whole meta-batch,
and every rank then takes the identical optimizer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_tasks(self, meta_batch: int) -> int:
        """How many of ``meta_batch`` tasks this rank runs (the first ranks take the remainder)."""
        return meta_batch // self.world + (1 if self.rank < meta_batch % self.world else 0)


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def all_reduce_grads(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Sum ``.grad`` of ``params`` over ranks in one flat buffer (missing grads count as zero)."""
    if ctx.world <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if ctx.world <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
