"""Small builders the math tests share: float64 models and task batches, flat vectors.

Every batch is float64 on ``device``; support and query labels are class-blocked
(0,0,1,1,2,2 for 3 ways x 2 shots).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from metagrad.tasks import Sinusoid, TaskBatch
from metagrad.tasks.sinusoid import SinusoidConfig

DEVICE = torch.device(os.environ.get("METAGRAD_TEST_DEVICE", "cpu"))  # cuda: benchmarks/gpu_check.sh


def tiny_model(hidden=(5, 4), seed=0, device=DEVICE) -> nn.Sequential:
    """A float64 tanh MLP 1 -> hidden... -> 1 with seeded weights."""
    torch.manual_seed(seed)
    sizes, layers = (1, *hidden), []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 1)).double().to(device)


def sine_batch(tasks=3, seed=0, device=DEVICE, **task) -> TaskBatch:
    """``tasks`` sinusoid tasks (SinusoidConfig(**task), e.g. shots=6, queries=4)."""
    return Sinusoid(SinusoidConfig(**task)).sample(tasks, torch.Generator().manual_seed(seed)).to(device, torch.float64)


def image_batch(tasks=3, ways=3, shots=2, queries=None, size=8, seed=0, device=DEVICE) -> TaskBatch:
    """Uniform-noise 1 x size x size images: support [tasks, ways*shots], query [tasks, ways*queries]
    (queries defaults to shots)."""
    queries = shots if queries is None else queries
    g = torch.Generator().manual_seed(seed)
    s, q = ways * shots, ways * queries
    x = torch.rand(tasks, s + q, 1, size, size, generator=g, dtype=torch.float64)
    label = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(x[:, :s], label(shots), x[:, s:], label(queries)).to(device)


def flat(tensors) -> torch.Tensor:
    """The tensors concatenated into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def flat_grad(module: nn.Module) -> torch.Tensor:
    """The .grad of every parameter, as one vector."""
    return flat(p.grad for p in module.parameters())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error |a - b| / |b|."""
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


@torch.no_grad()
def directional_fd(loss, params: list[torch.Tensor], direction: torch.Tensor, eps: float = 1e-6) -> float:
    """Central finite difference of ``loss()`` (a float) along ``direction`` (one vector over
    ``params``): (L(θ + εd) − L(θ − εd)) / 2ε. The parameters are restored afterwards."""

    def shift(scale: float) -> None:
        offset = 0
        for p in params:
            p.add_(scale * direction[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    shift(eps)
    plus = loss()
    shift(-2 * eps)
    minus = loss()
    shift(eps)
    return (plus - minus) / (2 * eps)
