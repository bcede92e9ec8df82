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

``prototype_attention = true`` adapts a task's prototypes to each other before the queries are
compared with them (FEAT's set-to-set function, Ye et al. 2020; support images only, so each
query is still classified by itself): with C = [c_1 .. c_N] [N, D],

    C' = C + g · softmax(C W_q (C W_k)ᵀ / √D) C W_v W_o,

one attention head over the task's N prototypes and a learned gate g that starts at 0, so that a
fresh learner is exactly a Prototypical Network (FEAT adds a LayerNorm instead of the gate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import choice, nonnegative
from ..errors import ConfigError
from ..models.embed import feature_dim
from ..registry import LEARNERS
from .metric import MetricConfig, MetricLearner, n_ways, one_hot, require_classification


@dataclass
class ProtoNetConfig(MetricConfig):
    """The settings every metric learner has, and the distance."""

    # "euclidean": squared distance of pooled embeddings to class means; "local": part by part
    distance: str = choice("euclidean", ("euclidean", "local"))
    radius: int = nonnegative(1)  # "local": how many positions a descriptor may move to find its match
    prototype_attention: bool = False  # adapt the task's prototypes to each other (FEAT); "euclidean" only


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


class PrototypeAttention(nn.Module):
    """C' = C + g · Attn(C): one attention head over a task's prototypes, gate g = 0 at first.
    prototypes [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, c: Tensor) -> Tensor:
        q, k, v = self.qkv(c).chunk(3, -1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c.shape[-1]), -1)  # [B, N, N]
        return c + self.gate * self.out(attn @ v)


class ProtoNet(MetricLearner):
    """Prototypical Networks over any embedding network (Conv-4 without a head by default);
    with ``distance="local"`` over its feature maps (the network must have ``feature_maps``)."""

    def __init__(self, net: nn.Module, executor: str, transductive: bool = True, distance: str = "euclidean",
                 radius: int = 1, attention_dim: int = 0):
        """attention_dim: the embedding width D, to adapt the prototypes by ``PrototypeAttention``
        (0: no adaptation)."""
        super().__init__(net, executor, transductive)
        self.distance, self.radius = distance, radius
        self.attention = PrototypeAttention(attention_dim) if attention_dim else None

    def encode(self, x: Tensor) -> Tensor:
        return self.net.feature_maps(x) if self.distance == "local" else self.net(x)

    def classify(self, zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        if self.distance == "local":
            return -local_distances(zs, support_y, zq, self.radius)
        c = prototypes(zs, support_y)
        return -squared_distances(zq, c if self.attention is None else self.attention(c))


@LEARNERS.register("protonet", ProtoNetConfig)
def make_protonet(hp: ProtoNetConfig, build_model, task) -> ProtoNet:
    """Prototypical Networks: nearest class mean in a learned embedding (or part by part over its feature maps)."""
    require_classification("protonet", task)
    net = build_model(None)
    if hp.distance == "local" and not hasattr(net, "feature_maps"):
        raise ConfigError(f"learner.distance='local' compares feature maps; the model ({type(net).__name__}) "
                          "gives none (allowed: a model with feature maps, e.g. model.name='conv4')")
    if hp.prototype_attention and hp.distance != "euclidean":
        raise ConfigError(f"learner.prototype_attention adapts pooled prototypes; learner.distance={hp.distance!r} "
                          "has none (allowed with it: learner.distance='euclidean')")
    dim = feature_dim(net, task.input_shape) if hp.prototype_attention else 0
    return ProtoNet(net, hp.executor, hp.transductive, hp.distance, hp.radius, dim)
