"""What the metric learners (Prototypical Networks, Matching Networks, k-NN) share: embed each
task's support and query images with one network, then classify each query by comparing its
embedding with the labelled support embeddings. The meta-parameters are the network's weights.

BatchNorm here always uses the statistics of the batch it is given (models/norm.py), so the
batch is part of the model: each task's support and query images go through the network
together as one batch (per-task statistics, as the Prototypical Networks reference code in
training mode). With ``transductive = true`` (the default) those statistics are taken over the
support and the queries, so a query's prediction depends slightly on the task's other queries;
with ``transductive = false`` they are taken over the support images alone and every image is
normalised with them, so each query is classified by itself (one trial at a time, as in Lake
et al.'s one-shot protocol), in training and evaluation alike. With the "vmap" executor all
tasks still run as one vectorised call; their statistics stay separate, so a task's predictions
never depend on the other tasks it is evaluated with (evaluation batch size, distributed split).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import HParams, choice
from ..errors import ConfigError
from ..models.norm import statistics_from_first
from .base import BaseLearner, MetaLearner
from .executors import EXECUTORS, map_tasks


@dataclass
class MetricConfig(HParams):
    """What every metric learner's settings share."""

    executor: str = choice("vmap", EXECUTORS)
    transductive: bool = True  # BatchNorm statistics over support and queries; false: over the support alone


@torch.compiler.disable
def n_ways(support_y: Tensor) -> int:
    """Number of classes of a batch of tasks whose labels are 0..N-1. support_y [B, S] -> N.

    Read on the host outside torch.compile (a tensor's value cannot be a shape inside a graph);
    a compiled meta-step is specialised to each N it meets."""
    return int(support_y.max()) + 1


def one_hot(support_y: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """support_y [B, S] -> [B, S, n] of ``dtype``."""
    return torch.nn.functional.one_hot(support_y, n).to(dtype)


def require_classification(name: str, task) -> None:
    if task.kind != "classification":
        raise ConfigError(f"learner {name!r} classifies by comparing embeddings; it needs a classification task, got {task.kind}")


class MetricLearner(MetaLearner):
    """Base class. A subclass defines ``classify(zs [B, S, D], support_y [B, S], zq [B, Q, D])
    -> logits [B, Q, N]``; the default ``meta_loss`` (query cross-entropy) trains the network.

    net: [N, *input_shape] -> [N, D] embeddings (no parameters for raw pixels).
    """

    compile_break = "the number of classes is read from the support labels on the host (n_ways)"

    def __init__(self, net: nn.Module, executor: str, transductive: bool = True):
        super().__init__("classification")
        self.net, self.executor, self.transductive = net, executor, transductive

    def embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """support_x [B, S, ...], query_x [B, Q, ...] -> (zs [B, S, D], zq [B, Q, D]), one batch per
        task, normalised with its support's statistics alone unless ``transductive``."""
        s = support_x.shape[1]

        def one(sx, qx):
            with nullcontext() if self.transductive else statistics_from_first(s):
                z = self.encode(torch.cat([sx, qx]))
            return z[:s], z[s:]

        return map_tasks(one, self.executor, support_x, query_x)

    def encode(self, x: Tensor) -> Tensor:
        """One task's images [N, ...] -> what ``classify`` compares: embeddings [N, D] (a learner
        that compares feature maps overrides this)."""
        return self.net(x)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        """The base learner is the labelled support set itself: query_x [B, Q, ...] -> logits [B, Q, N]."""

        def base(query_x: Tensor) -> Tensor:
            zs, zq = self.embed(support_x, query_x)
            return self.classify(zs, support_y, zq)

        return base
