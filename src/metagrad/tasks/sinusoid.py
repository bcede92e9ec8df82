"""The MAML paper's sinusoid regression tasks (Finn et al. 2017, Sec. 5.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import HParams, positive
from ..errors import ConfigError
from ..registry import TASKS
from .batch import TaskBatch


@dataclass
class SinusoidConfig(HParams):
    shots: int = positive(10)  # K support points per task
    queries: int = positive(10)  # query points per task
    amplitude_min: float = positive(0.1)
    amplitude_max: float = positive(5.0)
    phase_min: float = 0.0
    phase_max: float = math.pi
    x_min: float = -5.0
    x_max: float = 5.0

    def validate(self):
        for lo, hi in (("amplitude_min", "amplitude_max"), ("phase_min", "phase_max"), ("x_min", "x_max")):
            if getattr(self, lo) >= getattr(self, hi):
                raise ConfigError(f"task.{lo} must be < task.{hi}, got {getattr(self, lo)} >= {getattr(self, hi)}")


class Sinusoid:
    """Sinusoid regression: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5].

    Tasks are drawn on the generator's device (a CUDA generator: on the GPU, with no host copy
    or synchronisation); the source holds no data, so :meth:`to` has nothing to move.
    """

    kind = "regression"
    input_shape = (1,)
    n_outputs = 1

    def __init__(self, cfg: SinusoidConfig = SinusoidConfig()):
        self.cfg = cfg

    def to(self, device) -> "Sinusoid":
        """Nothing to move: :meth:`sample` draws on its generator's device."""
        return self

    def sample_params(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases, each [B]."""
        c = self.cfg
        u = torch.rand(2, batch_size, generator=generator, dtype=torch.float64, device=generator.device)
        amp = c.amplitude_min + (c.amplitude_max - c.amplitude_min) * u[0]
        phase = c.phase_min + (c.phase_max - c.phase_min) * u[1]
        return amp, phase

    @staticmethod
    def target(x: torch.Tensor, amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """y = A sin(x - phase); x [B, N, 1], amp/phase [B] -> [B, N, 1]."""
        return amp[:, None, None] * torch.sin(x - phase[:, None, None])

    def curve_task(self, generator: torch.Generator, points: int = 300) -> tuple[TaskBatch, str]:
        """One task for a figure of the fitted curve: K random support points; as the query,
        ``points`` inputs evenly over [x_min, x_max] with their true values (float64, B = 1);
        and the task's description for the title."""
        c = self.cfg
        amp, phase = self.sample_params(1, generator)
        dev = generator.device
        sx = c.x_min + (c.x_max - c.x_min) * torch.rand(1, c.shots, 1, generator=generator, dtype=torch.float64, device=dev)
        grid = torch.linspace(c.x_min, c.x_max, points, dtype=torch.float64, device=dev).view(1, -1, 1)
        batch = TaskBatch(sx, self.target(sx, amp, phase), grid, self.target(grid, amp, phase))
        return batch, f"held-out sine: A={amp.item():.2f}, phase={phase.item():.2f}"

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        c = self.cfg
        amp, phase = self.sample_params(batch_size, generator)
        n = c.shots + c.queries
        x = c.x_min + (c.x_max - c.x_min) * torch.rand(batch_size, n, 1, generator=generator, dtype=torch.float64,
                                                       device=generator.device)
        y = self.target(x, amp, phase)
        x, y = x.float(), y.float()
        return TaskBatch(x[:, : c.shots], y[:, : c.shots], x[:, c.shots :], y[:, c.shots :])


@TASKS.register("sinusoid", SinusoidConfig)
def make_sinusoid(cfg: SinusoidConfig, split: str) -> Sinusoid:
    """Sinusoid regression (MAML paper): A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]."""
    return Sinusoid(cfg)
