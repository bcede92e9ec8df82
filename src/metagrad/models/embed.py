"""Embedding the example sets of a batch of tasks with any backbone (model-based learners)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def embed_sets(encoder: nn.Module, x: Tensor) -> Tensor:
    """x [B, N, *input_shape] -> [B, N, D], one task at a time (torch.func.vmap).

    A batch-statistics BatchNorm in the encoder thus normalises over one task's set, never
    across the tasks of a meta-batch (as in MAML's inner loop).
    """

    def encode(task_x: Tensor) -> Tensor:  # vmap names a bare module by repr(), which torch.compile cannot trace
        return encoder(task_x)

    return torch.func.vmap(encode)(x)


@torch.no_grad()
def feature_dim(encoder: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width D of ``encoder``'s output for one example of shape ``input_shape``."""
    p = next(encoder.parameters(), None)
    x = torch.zeros(2, *input_shape) if p is None else torch.zeros(2, *input_shape, dtype=p.dtype, device=p.device)
    return int(encoder(x).shape[-1])
