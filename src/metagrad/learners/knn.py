"""k-nearest-neighbour baselines: on raw pixels, or on a learned embedding.

A query takes the majority label of its k nearest support points (squared Euclidean distance,
or cosine). The logits are the vote counts plus a tie-breaker below one vote: the j-th nearest
neighbour (j = 0..k-1) votes 1 + (k − j) / (k² + 1), so a tie between classes goes to the one
with the nearer neighbours (k = 1 is plain nearest neighbour).

``embedding = "pixels"``: the flattened images; the learner has no parameters and meta-training
only records statistics. ``embedding = "learned"``: the configured backbone without a head,
meta-trained with the Prototypical Networks loss (votes have no useful gradient), then used
for k-NN. With k = 1 and 1 shot this is exactly a Prototypical Network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import choice, positive
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name, task_metric
from .metric import MetricConfig, MetricLearner, n_ways, one_hot, require_classification
from .protonet import prototype_logits, squared_distances


@dataclass
class KNNConfig(MetricConfig):
    k: int = positive(1)
    embedding: str = choice("pixels", ("pixels", "learned"))
    distance: str = choice("euclidean", ("euclidean", "cosine"))


def knn_votes(zs: Tensor, support_y: Tensor, zq: Tensor, k: int, distance: str) -> Tensor:
    """zs [B, S, D], support_y [B, S], zq [B, Q, D] -> tie-broken votes [B, Q, N] (see module doc)."""
    if distance == "cosine":
        d = -F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).transpose(1, 2)
    else:
        d = squared_distances(zq, zs)  # [B, Q, S]
    k = min(k, zs.shape[1])
    nearest = d.topk(k, dim=-1, largest=False).indices  # [B, Q, k], nearest first
    weight = 1 + torch.arange(k, 0, -1, dtype=zs.dtype, device=zs.device) / (k * k + 1)
    labels = support_y[:, None].expand(-1, zq.shape[1], -1).gather(-1, nearest)
    return (one_hot(labels, n_ways(support_y), zs.dtype) * weight[:, None]).sum(-2)


class KNN(MetricLearner):
    """k-NN over raw pixels or a ProtoNet-trained embedding."""

    def __init__(self, hp: KNNConfig, net: nn.Module):
        super().__init__(net, hp.executor, hp.transductive)
        self.hp = hp

    def classify(self, zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        return knn_votes(zs, support_y, zq, self.hp.k, self.hp.distance)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Query cross-entropy of the prototype logits (learned) or of the votes (pixels)."""
        zs, zq = self.embed(batch.support_x, batch.query_x)
        score = prototype_logits if self.hp.embedding == "learned" else self.classify
        pred = score(zs, batch.support_y, zq)
        loss = self.loss(pred, batch.query_y)
        return loss, {"loss": loss.detach(), metric_name(self.kind): task_metric(self.kind, pred.detach(), batch.query_y).mean()}


@LEARNERS.register("knn", KNNConfig)
def make_knn(hp: KNNConfig, build_model, task) -> KNN:
    """k-nearest neighbours on raw pixels or on a ProtoNet-trained embedding (a baseline)."""
    require_classification("knn", task)
    return KNN(hp, build_model(None) if hp.embedding == "learned" else nn.Flatten())
