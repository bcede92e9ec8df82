"""Conv-4: the four-block convnet of Matching Networks, MAML and Prototypical Networks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..config import HParams, choice, positive
from ..registry import MODELS
from .norm import BatchNorm


@dataclass
class Conv4Config(HParams):
    channels: int = positive(64)
    blocks: int = positive(4)
    # "stride": 3x3 convs with stride 2 (MAML's Omniglot model); "max": stride 1 + 2x2 max-pool.
    downsample: str = choice("max", ("max", "stride"))


class Conv4(nn.Module):
    """blocks x [3x3 conv, BatchNorm (batch statistics), ReLU, 2x2 down-sampling],
    then the mean over the remaining spatial positions and an optional linear head.

    x: [N, C, H, W] -> [N, n_outputs], or [N, channels] embeddings when n_outputs is None.
    """

    def __init__(self, cfg: Conv4Config, in_channels: int, n_outputs: int | None):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        stride = 2 if cfg.downsample == "stride" else 1
        for _ in range(cfg.blocks):
            layers += [nn.Conv2d(c_in, cfg.channels, 3, stride=stride, padding=1), BatchNorm(cfg.channels), nn.ReLU()]
            if cfg.downsample == "max":
                layers.append(nn.MaxPool2d(2, ceil_mode=False))
            c_in = cfg.channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.channels, n_outputs) if n_outputs is not None else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).mean(dim=(2, 3))
        return self.head(h) if self.head is not None else h


@MODELS.register("conv4", Conv4Config)
def make_conv4(cfg: Conv4Config, input_shape: tuple[int, ...], n_outputs: int | None) -> Conv4:
    """Conv-4 (64 filters, BatchNorm, ReLU, 2x2 down-sampling) for [C, H, W] images."""
    return Conv4(cfg, input_shape[0], n_outputs)
