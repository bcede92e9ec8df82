"""Conv-4: the four-block convnet of Matching Networks, MAML and Prototypical Networks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from ..config import HParams, choice, nonnegative, positive
from ..errors import ConfigError
from ..registry import MODELS
from .norm import BatchNorm
from .pool import MaxPool2


@dataclass
class Conv4Config(HParams):
    channels: int = positive(64)
    blocks: int = positive(4)
    # "stride": 3x3 convs with stride 2 (MAML's Omniglot model); "max": stride 1 + 2x2 max-pool.
    downsample: str = choice("max", ("max", "stride"))
    # what the last feature map becomes: "mean" over its positions (channels features), or
    # "flatten" (channels x H x W: MAML's and ProtoNets' mini-ImageNet models, 32x5x5 = 800 / 64x5x5 = 1600 at 84 px)
    pool: str = choice("mean", ("mean", "flatten"))
    # one width per block (e.g. [64, 64, 128, 256]: wider where the map is small and a filter cheap);
    # empty: ``channels`` in every block
    widths: list[int] = positive([])
    leak: float = nonnegative(0.0)  # negative slope of the activation: 0 is ReLU; SNAIL's embedding uses a leaky ReLU
    project: int = nonnegative(0)  # a linear layer from the pooled features to this many (SNAIL's 64-d); 0: none

    def validate(self) -> None:
        if self.widths and len(self.widths) != self.blocks:
            raise ConfigError(f"model.widths={self.widths}: expected one width per block ({self.blocks}), "
                              f"or [] for model.channels={self.channels} in every block")

    def block_widths(self) -> list[int]:
        """Output channels of each block."""
        return list(self.widths) or [self.channels] * self.blocks


class Conv4(nn.Module):
    """blocks x [3x3 conv, BatchNorm (batch statistics), ReLU (leaky when ``leak`` > 0), 2x2
    down-sampling] (``channels`` filters each, or ``widths[i]`` in block i),
    then the mean over the remaining spatial positions (``pool="mean"``) or all of them in a row
    (``pool="flatten"``, which needs the input's ``size`` (H, W)), an optional linear layer to
    ``project`` features, and an optional linear head.

    x: [N, C, H, W] -> [N, n_outputs], or [N, features] embeddings when n_outputs is None
    (features = ``project``, else the last block's width, or that x H' x W' flattened).
    """

    def __init__(self, cfg: Conv4Config, in_channels: int, n_outputs: int | None, size: tuple[int, int] | None = None):
        super().__init__()
        self.flatten = cfg.pool == "flatten"
        if self.flatten and size is None:
            raise ValueError("Conv4 with pool='flatten' needs the input size (H, W)")
        layers: list[nn.Module] = []
        c_in = in_channels
        stride = 2 if cfg.downsample == "stride" else 1
        for width in cfg.block_widths():
            activation = nn.LeakyReLU(cfg.leak) if cfg.leak else nn.ReLU()
            layers += [nn.Conv2d(c_in, width, 3, stride=stride, padding=1), BatchNorm(width), activation]
            if cfg.downsample == "max":
                layers.append(MaxPool2())
            c_in = width
        self.features = nn.Sequential(*layers)
        pooled = c_in * (math.prod(feature_map_size(cfg, size)) if self.flatten else 1)
        self.project = nn.Linear(pooled, cfg.project) if cfg.project else None
        self.out_features = cfg.project or pooled
        self.head = nn.Linear(self.out_features, n_outputs) if n_outputs is not None else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = h.flatten(1) if self.flatten else h.mean(dim=(2, 3))
        if self.project is not None:
            h = self.project(h)
        return self.head(h) if self.head is not None else h

    def feature_maps(self, x: Tensor) -> Tensor:
        """The local descriptors a part-by-part distance compares: x [N, C, H, W] -> [N, C', h, w],
        the last block's map before its 2x2 max-pool (4 x 4 for 32 x 32 images, 3 x 3 for 28 x 28),
        or with ``downsample="stride"`` the last block's output. The projection and the head, which
        act on pooled features, are not used."""
        last_pool = isinstance(self.features[-1], MaxPool2)
        return self.features[:-1](x) if last_pool else self.features(x)


def feature_map_size(cfg: Conv4Config, size: tuple[int, int]) -> tuple[int, int]:
    """(H', W') of the last feature map for (H, W) inputs: each block halves a side, rounding
    down after a 2x2 max-pool, up after a stride-2 3x3 convolution with padding 1."""
    h, w = size
    for _ in range(cfg.blocks):
        h, w = ((h + 1) // 2, (w + 1) // 2) if cfg.downsample == "stride" else (h // 2, w // 2)
    if not h or not w:
        raise ValueError(f"{size[0]}x{size[1]} images are too small for {cfg.blocks} down-sampling blocks")
    return h, w


@MODELS.register("conv4", Conv4Config)
def make_conv4(cfg: Conv4Config, input_shape: tuple[int, ...], n_outputs: int | None) -> Conv4:
    """Conv-4 (64 filters, BatchNorm, ReLU, 2x2 down-sampling) for [C, H, W] images."""
    return Conv4(cfg, input_shape[0], n_outputs, size=tuple(input_shape[1:3]) if len(input_shape) >= 3 else None)
