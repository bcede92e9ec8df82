"""Multi-layer perceptron (the MAML paper's 1-40-40-1 sinusoid regressor; the learned optimizer's
optimizees: a linear map, or the 20-unit sigmoid classifier of Andrychowicz et al. 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..config import HParams, choice, positive
from ..registry import MODELS
from .norm import BatchNorm

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@dataclass
class MLPConfig(HParams):
    hidden: list[int] = positive([40, 40])  # [] = one linear map
    batch_norm: bool = False
    activation: str = choice("relu", tuple(ACTIVATIONS))
    bias: bool = True


@MODELS.register("mlp", MLPConfig)
def make_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], n_outputs: int | None) -> nn.Sequential:
    """MLP (ReLU by default; optional batch-statistics BatchNorm); x [N, *input_shape] -> [N, n_outputs]."""
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = math.prod(input_shape)
    for h in cfg.hidden:
        layers += [nn.Linear(width, h, bias=cfg.bias)] + ([BatchNorm(h)] if cfg.batch_norm else []) + [ACTIVATIONS[cfg.activation]()]
        width = h
    if n_outputs is not None:
        layers.append(nn.Linear(width, n_outputs, bias=cfg.bias))
    return nn.Sequential(*layers)
