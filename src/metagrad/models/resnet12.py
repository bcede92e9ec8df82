"""ResNet-12: the backbone of TADAM, MetaOptNet and most few-shot work since (Lee et al. 2019).

Four residual blocks, each three 3x3 convolutions (BatchNorm, leaky ReLU) plus a 1x1
convolution shortcut, then 2x2 max-pooling; widths 64-160-320-640 by default. MetaOptNet's
DropBlock regularisation is left out. BatchNorm is metagrad's own (batch statistics, exact
second order under vmap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HParams, positive
from ..errors import ConfigError
from ..registry import MODELS
from .norm import BatchNorm
from .pool import max_pool2


@dataclass
class ResNet12Config(HParams):
    widths: list[int] = positive([64, 160, 320, 640])  # of the four blocks
    leak: float = positive(0.1)  # negative slope of the leaky ReLU

    def validate(self) -> None:
        if len(self.widths) != 4:
            raise ConfigError(f"model.widths={self.widths}: expected four widths, one per block, e.g. [64, 160, 320, 640]")


class ResidualBlock(nn.Module):
    """x: [N, c_in, H, W] -> [N, c_out, H // 2, W // 2]."""

    def __init__(self, c_in: int, c_out: int, leak: float):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c_out, 3, padding=1, bias=False) for c in (c_in, c_out, c_out))
        self.norms = nn.ModuleList(BatchNorm(c_out) for _ in range(3))
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.shortcut_norm = BatchNorm(c_out)
        self.leak = leak

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h))
            if i < 2:
                h = F.leaky_relu(h, self.leak)
        h = F.leaky_relu(h + self.shortcut_norm(self.shortcut(x)), self.leak)
        return max_pool2(h)


class ResNet12(nn.Module):
    """x: [N, C, H, W] (H, W >= 16) -> [N, n_outputs], or [N, widths[-1]] embeddings
    (the mean over the remaining positions) when n_outputs is None."""

    def __init__(self, cfg: ResNet12Config, in_channels: int, n_outputs: int | None):
        super().__init__()
        widths = [in_channels, *cfg.widths]
        self.blocks = nn.Sequential(*(ResidualBlock(a, b, cfg.leak) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], n_outputs) if n_outputs is not None else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x).mean(dim=(2, 3))
        return self.head(h) if self.head is not None else h


@MODELS.register("resnet12", ResNet12Config)
def make_resnet12(cfg: ResNet12Config, input_shape: tuple[int, ...], n_outputs: int | None) -> ResNet12:
    """ResNet-12 (four residual blocks, 64-160-320-640 wide) for [C, H, W] images of 16 px or more."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 16:
        raise ConfigError(f"model resnet12 needs [C, H, W] images of at least 16x16 (it halves them four times), got {list(input_shape)}")
    return ResNet12(cfg, input_shape[0], n_outputs)
