"""Meta Networks (Munkhdalai & Yu 2017), compact: slow weights learned across tasks, fast weights
generated from each support example's loss gradient, read back for a query by attention.

    e(x)      = backbone features (``build_model(None)``, Conv-4 -> 64-d), slow weights only
    b(x; W, W*)                                   base learner with layer augmentation:
        h     = ReLU(W1 e + b1) + ReLU(W1* e + b1*)           slow and fast branch, summed after ReLU
        logit = (W2 h + b2) + (W2* h + b2*)                   output layer: summed logits
    ∇_i       = ∇_W CE(b(x'_i; W, 0), y'_i)                   per support example i (meta information)
    W*_i      = m_l(pre(∇_i))  for each weight tensor l       m_l: an MLP applied to each coordinate
    memory    = {(e(x'_i), W*_i)}_i                           keys and values, per task
    W*_q      = Σ_i softmax_i(s · cos(e(x_q), e(x'_i))) W*_i   attention read for query q
    prediction = b(x_q; W, W*_q)

pre(·) is the gradient preprocessing of Andrychowicz et al. (2016) that the paper uses:
g -> (log|g| / p, sign g) if |g| >= e^-p, else (-1, e^p g). The meta-parameters are the
backbone, the slow weights W, the meta learners m_l and the attention scale s; the query
cross-entropy trains them all, with the gradients ∇_i treated as inputs (not differentiated
through), as in the paper. With an empty support set the memory is empty, W*_q = 0 and the
fast branches output ReLU(0) = 0: b is its slow weights alone.

Simplified from the paper: (1) the embedding function u and the base learner share one
backbone, which has slow weights only, and the base learner's fast weights are in its two
fully-connected layers on top of it (the paper gives u and b separate convnets, every layer
augmented); (2) u has no task-level fast weights (the paper also generates them, from the
gradients of a contrastive representation loss on the support set); (3) the attention over the
memory has a learned inverse temperature s (the paper uses the raw cosine similarities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HParams, positive
from ..errors import ConfigError
from ..models.embed import embed_sets, feature_dim
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import BaseLearner, MetaLearner

Weights = dict[str, Tensor]


@dataclass
class MetaNetConfig(HParams):
    hidden: int = positive(64)  # width of the base learner's hidden layer
    meta_hidden: int = positive(20)  # hidden units of each (3-layer) meta learner m_l
    grad_p: float = positive(10.0)  # p of the gradient preprocessing
    attention_scale: float = positive(10.0)  # initial inverse temperature s of the memory read


def preprocess_gradient(g: Tensor, p: float) -> Tensor:
    """Andrychowicz et al. (2016): g [...] -> [..., 2]."""
    big = g.abs() >= math.exp(-p)
    log_part = torch.where(big, g.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(g))
    sign_part = torch.where(big, g.sign(), g * math.exp(p))
    return torch.stack([log_part, sign_part], -1)


def augmented_logits(slow: Weights, e: Tensor, fast: Weights | None = None) -> Tensor:
    """The base learner. e [..., D]; slow weights w1 [H, D], b1 [H], w2 [N, H], b2 [N]; fast weights,
    if any, the same with the leading dims of e (one set per example) -> logits [..., N]."""
    h = F.relu(e @ slow["w1"].T + slow["b1"])
    if fast is not None:
        h = h + F.relu((fast["w1"] @ e.unsqueeze(-1)).squeeze(-1) + fast["b1"])
    out = h @ slow["w2"].T + slow["b2"]
    if fast is not None:
        out = out + (fast["w2"] @ h.unsqueeze(-1)).squeeze(-1) + fast["b2"]
    return out


class MetaNet(MetaLearner):
    """Backbone, slow weights W, per-tensor meta learners m_l and attention scale s (module docstring)."""

    def __init__(self, hp: MetaNetConfig, encoder: nn.Module, input_shape: tuple[int, ...], n_ways: int):
        super().__init__("classification")
        self.hp, self.encoder = hp, encoder
        self.fixed_ways = n_ways  # the output layer has one unit per class
        d, h = feature_dim(encoder, input_shape), hp.hidden
        first, second = nn.Linear(d, h), nn.Linear(h, n_ways)  # initialise the slow weights like nn.Linear
        self.slow = nn.ParameterDict({"w1": first.weight, "b1": first.bias, "w2": second.weight, "b2": second.bias})
        mh = hp.meta_hidden
        self.meta = nn.ModuleDict(
            {k: nn.Sequential(nn.Linear(2, mh), nn.ReLU(), nn.Linear(mh, mh), nn.ReLU(), nn.Linear(mh, 1)) for k in self.slow}
        )
        with torch.no_grad():  # small initial fast weights: the learner starts close to its slow weights
            for m in self.meta.values():
                m[-1].weight.mul_(0.01)
                m[-1].bias.zero_()
        self.log_scale = nn.Parameter(torch.tensor(math.log(hp.attention_scale)))

    def slow_weights(self) -> Weights:
        return dict(self.slow.items())

    def support_gradients(self, e: Tensor, y: Tensor) -> Weights:
        """Per-example loss gradients w.r.t. the slow weights (constants). e [B, S, D], y [B, S] ->
        each [B, S, *shape]."""

        def loss(w: Weights, ei: Tensor, yi: Tensor) -> Tensor:
            return F.cross_entropy(augmented_logits(w, ei), yi)

        per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
        with torch.no_grad():
            w = {k: v.detach() for k, v in self.slow_weights().items()}
            return torch.func.vmap(per_example, in_dims=(None, 0, 0))(w, e.detach(), y)

    def fast_memory(self, support_x: Tensor, support_y: Tensor) -> tuple[Tensor, Weights]:
        """Keys e(x'_i) [B, S, D] and fast weights W*_i (each [B, S, *shape]) of the support set."""
        keys = embed_sets(self.encoder, support_x)
        grads = self.support_gradients(keys, support_y)
        fast = {k: self.meta[k](preprocess_gradient(g, self.hp.grad_p)).squeeze(-1) for k, g in grads.items()}
        return keys, fast

    def read(self, keys: Tensor, fast: Weights, e: Tensor) -> Weights:
        """Attention read. keys [B, S, D], e [B, Q, D] -> each query's fast weights [B, Q, *shape]."""
        att = (self.log_scale.exp() * F.normalize(e, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)).softmax(-1)
        return {k: (att @ w.flatten(2)).view(*e.shape[:2], *w.shape[2:]) for k, w in fast.items()}

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        """support_x [B, S, ...], support_y [B, S] -> (query_x [B, Q, ...] -> logits [B, Q, N])."""
        keys, fast = self.fast_memory(support_x, support_y)

        def base(query_x: Tensor) -> Tensor:
            e = embed_sets(self.encoder, query_x)
            return augmented_logits(self.slow_weights(), e, self.read(keys, fast, e))

        return base

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """"adapted": slow + fast weights; "slow weights only": the base learner without fast weights."""
        slow_only = augmented_logits(self.slow_weights(), embed_sets(self.encoder, batch.query_x))
        return {self.headline: self.adapt(batch.support_x, batch.support_y)(batch.query_x), "slow weights only": slow_only}


@LEARNERS.register("metanet", MetaNetConfig)
def make_metanet(hp: MetaNetConfig, build_model, task) -> MetaNet:
    """Meta Networks (Munkhdalai & Yu 2017): fast weights from support-loss gradients, read by attention."""
    if task.kind != "classification":
        raise ConfigError("learner metanet needs a classification task")
    return MetaNet(hp, build_model(None), tuple(task.input_shape), task.n_outputs)
