"""Run a single-task function over the task dimension: vectorised (torch.func.vmap) or as a loop.

Both executors take the same function ``fn(*per_task_args) -> pytree of tensors`` and return
the per-task outputs stacked along a new leading dim. The loop is the slow reference that
tests compare against; on this CPU it can also win for wide convnets (see docs/performance.md).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils import _pytree as pytree

EXECUTORS = ("vmap", "loop")


def map_tasks(fn: Callable, executor: str, *batched, in_dims=0):
    """Apply ``fn`` to each task's slice of ``batched`` ([B, ...] tensors, or None-dim'd args)."""
    if executor == "vmap":
        return torch.func.vmap(fn, in_dims=in_dims, randomness="different")(*batched)
    if executor != "loop":
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(batched)
    n = next(a.shape[0] for a, d in zip(batched, dims) if d is not None)
    outs = [fn(*(a if d is None else a[i] for a, d in zip(batched, dims))) for i in range(n)]
    flat, spec = zip(*(pytree.tree_flatten(o) for o in outs))
    return pytree.tree_unflatten([torch.stack(parts) for parts in zip(*flat)], spec[0])
