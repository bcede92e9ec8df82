"""Run a single-task function over the task dimension: vectorised (torch.func.vmap) or as a loop.

Both executors take the same function ``fn(*per_task_args) -> pytree of tensors`` and return
the per-task outputs stacked along a new leading dim. The loop is the reference that tests
compare against; on a single CPU thread it also wins when the tasks hold many images: vmap
turns a convolution with per-task weights into one grouped convolution, and torch's CPU kernels
for grouped (and transposed grouped) convolutions are slower than B dense ones. With several
threads every one of the loop's B-times-more kernel calls pays a fork/join of the thread pool,
and vmap wins throughout. "auto" picks by the rule of :func:`resolve_executor`, fitted to the
measurements in docs/performance.md.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils import _pytree as pytree

EXECUTORS = ("vmap", "loop", "auto")
#: "auto" loops on one CPU thread when the batched image-like tensors hold more values than this
AUTO_LOOP_ABOVE = 500_000


@torch.compiler.assume_constant_result  # torch.compile: read once when tracing, no graph break
def _cpu_threads() -> int:
    return torch.get_num_threads()


def resolve_executor(executor: str, batched: tuple, dims: tuple) -> str:
    """"vmap" or "loop" for ``executor``. "auto": loop only on a CPU running torch on one thread
    when the batched tensors of >= 5 dims (images [B, N, C, H, W], per-task conv weights) hold
    more than AUTO_LOOP_ABOVE values in all; else vmap."""
    if executor != "auto":
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        return executor
    leaves = [t for a, d in zip(batched, dims) if d is not None for t in pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
    if any(t.device.type != "cpu" for t in leaves) or _cpu_threads() > 1:
        return "vmap"
    return "loop" if sum(t.numel() for t in leaves if t.dim() >= 5) > AUTO_LOOP_ABOVE else "vmap"


def map_tasks(fn: Callable, executor: str, *batched, in_dims=0):
    """Apply ``fn`` to each task's slice of ``batched`` (pytrees of [B, ...] tensors; an argument
    whose ``in_dims`` entry is None is passed whole to every task)."""
    dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(batched)
    if resolve_executor(executor, batched, dims) == "vmap":
        return torch.func.vmap(fn, in_dims=in_dims, randomness="different")(*batched)
    n = next(pytree.tree_leaves(a)[0].shape[0] for a, d in zip(batched, dims) if d is not None)
    outs = [fn(*(a if d is None else pytree.tree_map(lambda t: t[i], a) for a, d in zip(batched, dims))) for i in range(n)]
    flat, spec = zip(*(pytree.tree_flatten(o) for o in outs))
    return pytree.tree_unflatten([torch.stack(parts) for parts in zip(*flat)], spec[0])
