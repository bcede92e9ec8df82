"""What the metric learners (Prototypical Networks, Matching Networks, k-NN) share: embed each
task's support and query images with one network, then classify each query by comparing its
embedding with the labelled support embeddings. The meta-parameters are the network's weights.

BatchNorm here always uses the statistics of the batch it is given (models/norm.py), so the
batch is part of the model: each task's support and query images go through the network
together as one batch (per-task statistics, as the Prototypical Networks reference code in
training mode). With the "vmap" executor all tasks still run as one vectorised call; their
statistics stay separate, so a task's predictions never depend on the other tasks it is
evaluated with (evaluation batch size, distributed split).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import BaseLearner, MetaLearner
from .executors import map_tasks


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

    def __init__(self, net: nn.Module, executor: str):
        super().__init__("classification")
        self.net, self.executor = net, executor

    def embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """support_x [B, S, ...], query_x [B, Q, ...] -> (zs [B, S, D], zq [B, Q, D]), one batch per task."""
        s = support_x.shape[1]

        def one(sx, qx):
            z = self.net(torch.cat([sx, qx]))
            return z[:s], z[s:]

        return map_tasks(one, self.executor, support_x, query_x)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        """The base learner is the labelled support set itself: query_x [B, Q, ...] -> logits [B, Q, N]."""

        def base(query_x: Tensor) -> Tensor:
            zs, zq = self.embed(support_x, query_x)
            return self.classify(zs, support_y, zq)

        return base
