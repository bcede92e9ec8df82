"""Prototypical Networks (Snell et al. 2017).

Each class k of a task is represented by the mean embedding of its support points,

    c_k = 1/|S_k| Σ_{(x, y) ∈ S, y = k} f(x),

and a query x is classified by a softmax over negative squared Euclidean distances,

    logits_k(x) = −‖f(x) − c_k‖².

Meta-training minimises the query cross-entropy through f (the default ``meta_loss``). The
learner has no way-dependent parameters: a network trained on 60-way episodes classifies
5-way ones (``metagrad eval RUN --set task.ways=5``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import LEARNERS
from .metric import MetricConfig, MetricLearner, n_ways, one_hot, require_classification


@dataclass
class ProtoNetConfig(MetricConfig):
    """Prototypical Networks have only the settings every metric learner has."""


def prototypes(zs: Tensor, support_y: Tensor) -> Tensor:
    """Class means of the support embeddings. zs [B, S, D], support_y [B, S] -> [B, N, D]."""
    onehot = one_hot(support_y, n_ways(support_y), zs.dtype)  # [B, S, N]
    return onehot.transpose(1, 2) @ zs / onehot.sum(1)[..., None]


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """a [B, Q, D], b [B, N, D] -> ‖a_q − b_n‖² [B, Q, N] (exact differences, no expansion)."""
    return (a[:, :, None] - b[:, None]).square().sum(-1)


def prototype_logits(zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
    """−‖zq − c_k‖². zs [B, S, D], support_y [B, S], zq [B, Q, D] -> [B, Q, N]."""
    return -squared_distances(zq, prototypes(zs, support_y))


class ProtoNet(MetricLearner):
    """Prototypical Networks over any embedding network (Conv-4 without a head by default)."""

    def classify(self, zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        return prototype_logits(zs, support_y, zq)


@LEARNERS.register("protonet", ProtoNetConfig)
def make_protonet(hp: ProtoNetConfig, build_model, task) -> ProtoNet:
    """Prototypical Networks: nearest class mean in a learned embedding (squared Euclidean)."""
    require_classification("protonet", task)
    return ProtoNet(build_model(None), hp.executor, hp.transductive)
