"""A searchable backbone (DARTS, Liu et al. 2019) and the networks it finds.

Both are a stem and a chain of cells, then the mean over positions and a linear head:

    stem:    x ← BN(conv3x3(x))                                   in_channels -> C
    cell b:  x ← MaxPool2(ReLU(BN(Σ_o w_{b,o} · o(x))))            C -> C, half the side

``search-cnn`` mixes every candidate operation o in every cell with w_b = softmax(α_b); the
architecture parameters α [cells, candidates] are the model's parameter ``alpha``, so a learner
meta-learns them like any weight (plain MAML or Reptile on this model also adapts them per task:
the MetaNAS variant, Elsken et al. 2020), and learner ``darts`` gives them DARTS' hypergradient.
``architecture()`` discretises it: the candidate of largest α in each cell. ``cnn`` is such a
discrete network, one operation per cell (w = 1), trainable by every learner.

The candidates keep C channels and the side: convolutions (3x3, 5x5, 1x1), separable
convolutions (depthwise k x k, then 1x1), a dilated 3x3 (dilation 2: a 5x5 field), 3x3 max and
average pooling, and the identity. BatchNorm is metagrad's primitive-op one (exact second order
under vmap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HParams, positive
from ..errors import ConfigError
from ..registry import MODELS
from .norm import BatchNorm
from .pool import max_pool2


def _separable(c: int, k: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=c), nn.Conv2d(c, c, 1))


#: name -> builder of a C -> C operation that keeps the side
OPERATIONS = {
    "conv3x3": lambda c: nn.Conv2d(c, c, 3, padding=1),
    "conv5x5": lambda c: nn.Conv2d(c, c, 5, padding=2),
    "conv1x1": lambda c: nn.Conv2d(c, c, 1),
    "sep3x3": lambda c: _separable(c, 3),
    "sep5x5": lambda c: _separable(c, 5),
    "dil3x3": lambda c: nn.Conv2d(c, c, 3, padding=2, dilation=2),
    "maxpool3x3": lambda c: nn.MaxPool2d(3, stride=1, padding=1),
    "avgpool3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "skip": lambda c: nn.Identity(),
}


def check_operations(key: str, names: list[str]) -> None:
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise ConfigError(f"{key}: unknown operation {unknown[0]!r}; allowed: {', '.join(OPERATIONS)}")


@dataclass
class SearchCNNConfig(HParams):
    channels: int = positive(32)
    cells: int = positive(4)
    candidates: list[str] = field(default_factory=lambda: ["conv3x3", "conv5x5", "sep3x3", "sep5x5", "dil3x3", "maxpool3x3", "skip"])

    def validate(self):
        check_operations("model.candidates", self.candidates)
        if len(set(self.candidates)) != len(self.candidates) or len(self.candidates) < 2:
            raise ConfigError(f"model.candidates needs at least 2 distinct operations, got {self.candidates}")


@dataclass
class CNNConfig(HParams):
    channels: int = positive(32)
    ops: list[str] = field(default_factory=lambda: ["conv3x3"] * 4)  # one per cell

    def validate(self):
        check_operations("model.ops", self.ops)
        if not self.ops:
            raise ConfigError("model.ops needs at least one operation (one per cell)")


class Cell(nn.Module):
    """[N, C, H, W] -> [N, C, H // 2, W // 2]: MaxPool2(ReLU(BN(Σ_o w_o · o(x)))); one operation: w = 1."""

    def __init__(self, channels: int, ops: list[str]):
        super().__init__()
        self.ops = nn.ModuleList(OPERATIONS[o](channels) for o in ops)
        self.norm = BatchNorm(channels)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        mixed = self.ops[0](x) if weights is None else sum(w * op(x) for w, op in zip(weights, self.ops))
        return max_pool2(F.relu(self.norm(mixed)))


class CellNet(nn.Module):
    """Stem, cells, mean over positions, optional head (module docstring). ``cell_ops`` lists each
    cell's operations; ``search`` mixes them by softmax(alpha) [cells, len(cell_ops[0])], else
    every cell has one. x [N, C, H, W] -> [N, n_outputs], or [N, channels] when n_outputs is None."""

    def __init__(self, in_channels: int, channels: int, cell_ops: list[list[str]], n_outputs: int | None, search: bool):
        super().__init__()
        self.channels, self.cell_ops, self.candidates = channels, cell_ops, cell_ops[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), BatchNorm(channels))
        self.cells = nn.ModuleList(Cell(channels, ops) for ops in cell_ops)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(cell_ops), len(self.candidates))) if search else None
        self.head = nn.Linear(channels, n_outputs) if n_outputs is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        weights = self.alpha.softmax(-1) if self.alpha is not None else [None] * len(self.cells)
        for cell, w in zip(self.cells, weights):
            x = cell(x, w)
        h = x.mean(dim=(2, 3))
        return self.head(h) if self.head is not None else h

    def architecture(self) -> list[str]:
        """The discrete network: each cell's operation (for a search network, that of largest α)."""
        if self.alpha is None:
            return [ops[0] for ops in self.cell_ops]
        return [self.candidates[i] for i in self.alpha.argmax(-1).tolist()]

    def report(self) -> dict:
        """What a run's report.json records: the architecture and, when searching, softmax(α) per
        candidate (one value per cell)."""
        out: dict = {"architecture": self.architecture()}
        if self.alpha is not None:
            weights = self.alpha.detach().softmax(-1).T.tolist()
            out["architecture_weights"] = {o: [round(v, 4) for v in w] for o, w in zip(self.candidates, weights)}
            out["train_it_with"] = f"--set model.name=cnn --set model.channels={self.channels} --set 'model.ops={json.dumps(out['architecture'])}'"
        return out


def _check_side(input_shape: tuple[int, ...], cells: int) -> None:
    side = min(input_shape[1:])
    if side < 2**cells:
        raise ConfigError(f"{cells} cells halve the image side {cells} times: images need at least {2**cells} px, got {side}")


@MODELS.register("search-cnn", SearchCNNConfig)
def make_search_cnn(cfg: SearchCNNConfig, input_shape: tuple[int, ...], n_outputs: int | None) -> CellNet:
    """DARTS' search network: every candidate operation in every cell, mixed by softmax(alpha)."""
    _check_side(input_shape, cfg.cells)
    return CellNet(input_shape[0], cfg.channels, [list(cfg.candidates)] * cfg.cells, n_outputs, search=True)


@MODELS.register("cnn", CNNConfig)
def make_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], n_outputs: int | None) -> CellNet:
    """A discrete cell network, one operation per cell (e.g. the architecture a search found)."""
    _check_side(input_shape, len(cfg.ops))
    return CellNet(input_shape[0], cfg.channels, [[o] for o in cfg.ops], n_outputs, search=False)
