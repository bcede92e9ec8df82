"""Prototypical Networks (Snell et al. 2017).

Each class k of a task is represented by the mean embedding of its support points,

    c_k = 1/|S_k| Σ_{(x, y) ∈ S, y = k} f(x),

and a query x is classified by a softmax over negative squared Euclidean distances,

    logits_k(x) = −‖f(x) − c_k‖².

Meta-training minimises the query cross-entropy through f (the default ``meta_loss``). The
learner has no way-dependent parameters: a network trained on 60-way episodes classifies
5-way ones (``metagrad eval RUN --set task.ways=5``).

``distance = "local"`` compares images part by part instead (as DN4, Li et al. 2019, and an
image distortion model on features): each image is the grid of local descriptors f_p(x) of the
network's last feature map before its pooling (``feature_maps``, e.g. 4 x 4 at 32 px), and

    d(x, k) = 1/2 [ mean_p  min_{s in S_k, |p'-p| <= r} ||f_p(x) - f_p'(s)||²
                  + mean_{s in S_k} mean_p' min_{|p-p'| <= r} ||f_p(x) - f_p'(s)||² ],

each query descriptor matched to the nearest descriptor of the class's support images within
``radius`` r positions (Chebyshev; r at least the map's side: anywhere) and each support
descriptor to the nearest query descriptor; logits_k(x) = −d(x, k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import choice, nonnegative
from ..errors import ConfigError
from ..registry import LEARNERS
from .metric import MetricConfig, MetricLearner, n_ways, one_hot, require_classification


@dataclass
class ProtoNetConfig(MetricConfig):
    """The settings every metric learner has, and the distance."""

    # "euclidean": squared distance of pooled embeddings to class means; "local": part by part
    distance: str = choice("euclidean", ("euclidean", "local"))
    radius: int = nonnegative(1)  # "local": how many positions a descriptor may move to find its match


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


def local_distances(fs: Tensor, support_y: Tensor, fq: Tensor, radius: int) -> Tensor:
    """d(x, k) of the module docstring. fs [B, S, C, h, w], support_y [B, S], fq [B, Q, C, h, w] -> [B, Q, N].

    Squared distances by expansion (||a||² + ||b||² - 2 a.b, clamped at 0): the exact differences
    would hold C values for each of the B Q S (h w)² descriptor pairs."""
    h, w = fs.shape[-2:]
    s, q = fs.flatten(3).transpose(-1, -2), fq.flatten(3).transpose(-1, -2)  # [B, S|Q, P, C]
    d = (q.square().sum(-1)[:, :, None, :, None] + s.square().sum(-1)[:, None, :, None, :]
         - 2 * torch.einsum("bqpc,bsoc->bqspo", q, s)).clamp_min(0)  # [B, Q, S, P, P]
    yy, xx = torch.meshgrid(torch.arange(h, device=fs.device), torch.arange(w, device=fs.device), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1)
    d = d.masked_fill((pos[:, None] - pos[None]).abs().amax(-1) > radius, math.inf)
    onehot = one_hot(support_y, n_ways(support_y), fs.dtype)  # [B, S, N]
    not_class = (onehot == 0)[:, None, :, :, None]  # [B, 1, S, N, 1]
    query_to_class = d.amin(-1)[:, :, :, None].masked_fill(not_class, math.inf).amin(2).mean(-1)  # [B, Q, N]
    class_to_query = d.amin(-2).mean(-1) @ onehot / onehot.sum(1)[:, None]  # [B, Q, N]
    return (query_to_class + class_to_query) / 2


class ProtoNet(MetricLearner):
    """Prototypical Networks over any embedding network (Conv-4 without a head by default);
    with ``distance="local"`` over its feature maps (the network must have ``feature_maps``)."""

    def __init__(self, net: nn.Module, executor: str, transductive: bool = True, distance: str = "euclidean",
                 radius: int = 1):
        super().__init__(net, executor, transductive)
        self.distance, self.radius = distance, radius

    def encode(self, x: Tensor) -> Tensor:
        return self.net.feature_maps(x) if self.distance == "local" else self.net(x)

    def classify(self, zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        if self.distance == "local":
            return -local_distances(zs, support_y, zq, self.radius)
        return prototype_logits(zs, support_y, zq)


@LEARNERS.register("protonet", ProtoNetConfig)
def make_protonet(hp: ProtoNetConfig, build_model, task) -> ProtoNet:
    """Prototypical Networks: nearest class mean in a learned embedding (or part by part over its feature maps)."""
    require_classification("protonet", task)
    net = build_model(None)
    if hp.distance == "local" and not hasattr(net, "feature_maps"):
        raise ConfigError(f"learner.distance='local' compares feature maps; the model ({type(net).__name__}) "
                          "gives none (allowed: a model with feature maps, e.g. model.name='conv4')")
    return ProtoNet(net, hp.executor, hp.transductive, hp.distance, hp.radius)
