"""BatchNorm written from primitive ops.

On torch 2.13, torch.func.vmap over the fused F.batch_norm (training mode) yields wrong
second-order gradients; mean/var/rsqrt compose exactly. Like the MAML paper's models this
normalises with the current batch's statistics in training and evaluation alike (no
running averages), so the layer has no buffers and no hidden state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
        centered = x - x.mean(dim=dims, keepdim=True)
        scale = torch.rsqrt(centered.square().mean(dim=dims, keepdim=True) + self.eps) * self.weight.view(shape)
        return torch.addcmul(self.bias.view(shape), centered, scale)
