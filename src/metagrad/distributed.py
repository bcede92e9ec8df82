"""Multi-process meta-training through torch.distributed (launched by torchrun).

The tasks of a meta-batch are split across ranks; each rank weights its tasks' meta-gradient
by (its tasks / all tasks) so that a SUM all-reduce yields the mean over the whole meta-batch,
and every rank then takes the identical optimizer step (identical start: every rank builds the
learner from the same seed, or receives rank 0's checkpoint). Only rank 0 touches the run
directory; evaluation episodes are split across ranks and gathered in episode order.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

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


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistContext, torch.device]]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR,
    ...): gloo on CPU, nccl on CUDA; leave it (destroy it, if joined here) on exit.

    Yields (context, this rank's device): an unnumbered CUDA device becomes cuda:LOCAL_RANK.
    Without WORLD_SIZE > 1 it yields a single-process context and ``device`` unchanged.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield DistContext(), device
        return
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size()), device
    finally:
        if owner:
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``tensor`` summed over ranks, in place."""
    if ctx.world > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx.world <= 1:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Sum ``.grad`` of ``params`` over ranks in one flat buffer (missing grads count as zero)."""
    if ctx.world <= 1 or not params:  # k-NN on pixels has no parameters
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum_([p.grad for p in params], ctx)


def all_reduce_sum_(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """Sum each of ``tensors`` over ranks, in place, in one flat buffer."""
    if ctx.world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if ctx.world <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
