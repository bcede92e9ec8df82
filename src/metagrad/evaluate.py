"""Held-out evaluation: episodes -> mean metric with a 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .learners.base import MetaLearner, metric_name, task_metric


@dataclass
class Estimate:
    """mean ± ci95 of a per-episode metric (ci95 = 1.96 · sample std / sqrt(episodes))."""

    metric: str
    mean: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci95(values: Tensor, metric: str) -> Estimate:
    """values: [n] per-episode metrics."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return Estimate(metric, v.mean().item(), 1.96 * std / math.sqrt(n), n)


def evaluate(
    learner: MetaLearner,
    source,
    episodes: int = 600,
    seed: int = 12345,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    episode_offset: int = 0,
    episode_stride: int = 1,
) -> dict[str, Estimate]:
    """Adapt to ``episodes`` held-out tasks drawn from a fixed-seed generator and score the queries.

    Returns one Estimate per key of ``learner.eval_predictions`` (e.g. "0 steps", "1 step", ...).
    With ``episode_stride`` > 1 (distributed evaluation), only episodes offset, offset+stride, ... are
    scored here; the tasks themselves do not depend on how the work is split.
    """
    generator = torch.Generator().manual_seed(seed)
    per_key: dict[str, list[Tensor]] = {}
    was_training = learner.training
    learner.eval()
    done = 0
    while done < episodes:
        n = min(batch_size, episodes - done)
        batch = source.sample(n, generator)
        keep = [i for i in range(n) if (done + i) % episode_stride == episode_offset]
        done += n
        if not keep:
            continue
        batch = batch[torch.tensor(keep)].to(device, dtype) if len(keep) < n else batch.to(device, dtype)
        for key, pred in learner.eval_predictions(batch).items():
            per_key.setdefault(key, []).append(task_metric(learner.kind, pred, batch.query_y).cpu())
    learner.train(was_training)
    name = metric_name(learner.kind)
    return {key: mean_ci95(torch.cat(vals), name) for key, vals in per_key.items()}
