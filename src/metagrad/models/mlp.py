"""Multi-layer perceptron (the MAML paper's 1-40-40-1 sinusoid regressor)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..config import HParams, positive
from ..registry import MODELS
from .norm import BatchNorm


@dataclass
class MLPConfig(HParams):
    hidden: list[int] = positive([40, 40])
    batch_norm: bool = False


@MODELS.register("mlp", MLPConfig)
def make_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], n_outputs: int | None) -> nn.Sequential:
    """MLP with ReLU (optional batch-statistics BatchNorm); x [N, *input_shape] -> [N, n_outputs]."""
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = math.prod(input_shape)
    for h in cfg.hidden:
        layers += [nn.Linear(width, h)] + ([BatchNorm(h)] if cfg.batch_norm else []) + [nn.ReLU()]
        width = h
    if n_outputs is not None:
        layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
