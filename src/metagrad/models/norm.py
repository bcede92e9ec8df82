"""BatchNorm written from primitive ops.

On torch 2.13, torch.func.vmap over the fused F.batch_norm (training mode) yields wrong
second-order gradients; mean/var/rsqrt compose exactly. Like the MAML paper's models this
normalises with the current batch's statistics in training and evaluation alike (no
running averages), so the layer has no buffers. Within :func:`statistics_from_first` the
statistics come from the batch's leading rows only (a task's support set), and every row is
normalised with them, so each remaining row's output depends on nothing else it is batched with.
That setting is a plain module global, not a ContextVar: torch.compile traces a global read (and
guards on its value) but breaks the graph at ``ContextVar.get``, which put a graph break into
every compiled learner with BatchNorm (tests/test_conformance.py now asks for whole graphs).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

_statistics_rows: int | None = None  # set only by statistics_from_first


@contextmanager
def statistics_from_first(rows: int):
    """Within this block every BatchNorm takes its mean and variance from the first ``rows`` rows
    of the batch it is given (dim 0; inside torch.func.vmap, of each task's batch) and normalises
    all rows with them."""
    global _statistics_rows
    previous, _statistics_rows = _statistics_rows, rows
    try:
        yield
    finally:
        _statistics_rows = previous


class BatchNorm(nn.Module):
    """Normalise over every dim except the channel dim 1. x: [N, C] or [N, C, H, W] -> same."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        # x - mean is formed once and the affine weight folded into the per-channel scale: three
        # full-size ops instead of six, which the second-order backward multiplies (performance.md)
        dims = (0, *range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        rows = _statistics_rows
        # compiled on the CPU, inductor's fused float32 kernel for these statistics loses digits on
        # line drawings' feature maps (1e-5 relative instead of 3e-7; meta-gradients 0.3-2 % off):
        # accumulating them in float64 there costs no measurable time (docs/performance.md)
        acc = torch.float64 if torch.compiler.is_compiling() and x.is_cpu and x.dtype == torch.float32 else None
        centered = x - (x if rows is None else x[:rows]).mean(dim=dims, keepdim=True, dtype=acc).to(x.dtype)
        spread = centered if rows is None else centered[:rows]
        var = spread.square().mean(dim=dims, keepdim=True, dtype=acc).to(x.dtype)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(shape)
        return torch.addcmul(self.bias.view(shape), centered, scale)
