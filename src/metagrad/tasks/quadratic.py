"""Random quadratic functions, the learned optimizer's first optimizee family (Andrychowicz et
al. 2016, Sec. 3.1): f(θ) = ‖Wθ − y‖², W [D, D] and y [D] with i.i.d. entries.

As a regression task, f is the squared error of a linear map θ on D examples: example i is W's
row i, its target y_i. Rows and targets are scaled by √D, so the task's mean squared error
(1/D) Σ_i (√D W_i·θ − √D y_i)² is exactly ‖Wθ − y‖². The support and the query set are the same
D examples: a query's mse after training is the optimizee's final loss f(θ_T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import HParams, choice, positive
from ..registry import TASKS
from .batch import TaskBatch


@dataclass
class QuadraticConfig(HParams):
    dims: int = positive(10)  # D: θ, y ∈ R^D, W ∈ R^{D×D}
    # the entries' distribution: "uniform" U[0, 1) as the authors' code, "normal" N(0, 1)
    entries: str = choice("uniform", ("uniform", "normal"))


class Quadratic:
    """f(θ) = ‖Wθ − y‖² as D regression examples (rows of √D·W, targets √D·y).

    support_x = query_x float32 [B, D, D]; support_y = query_y [B, D, 1], drawn on the
    generator's device (the source holds no data: :meth:`to` has nothing to move)."""

    kind = "regression"
    n_outputs = 1

    def __init__(self, cfg: QuadraticConfig = QuadraticConfig()):
        self.cfg = cfg
        self.input_shape = (cfg.dims,)

    def to(self, device) -> "Quadratic":
        """Nothing to move: :meth:`sample` draws on its generator's device."""
        return self

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        D = self.cfg.dims
        draw = torch.rand if self.cfg.entries == "uniform" else torch.randn
        w = draw(batch_size, D, D, generator=generator, dtype=torch.float64, device=generator.device)
        y = draw(batch_size, D, 1, generator=generator, dtype=torch.float64, device=generator.device)
        x, y = (math.sqrt(D) * w).float(), (math.sqrt(D) * y).float()
        return TaskBatch(x, y, x, y)


@TASKS.register("quadratic", QuadraticConfig)
def make_quadratic(cfg: QuadraticConfig, split: str) -> Quadratic:
    """Random quadratics f(θ) = ‖Wθ − y‖² (learned-optimizer optimizees; Andrychowicz et al. 2016)."""
    return Quadratic(cfg)
