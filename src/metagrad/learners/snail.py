"""SNAIL: Simple Neural AttentIve meta-Learner (Mishra et al. 2018), for N-way K-shot classification.

Each example is embedded by the configured backbone (``build_model(None)``, Conv-4 -> 64-d for
Omniglot) and concatenated with its one-hot label; a query gets a zero label. The sequence

    [e(x_1); y_1], ..., [e(x_S); y_S], [e(x_q); 0]          S = N·K support steps, then the query

goes through interleaved causal attention and temporal-convolution blocks (models/snail.py), and
the output at the query's position is its logits over the N labels. Every query is its own
continuation of the support sequence (computed in parallel), so queries never see each other;
the loss is the queries' cross-entropy, as in the paper.

With a batch-statistics BatchNorm backbone (Conv-4 here), the support images are normalised with
their own statistics and the queries with theirs (per task); the paper's embedding used running
averages at test time. Its embedding had leaky ReLUs and ended with a linear layer to 64-d, which
the paper presets give Conv-4 through ``model.leak`` and ``model.project``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HParams, positive
from ..errors import ConfigError
from ..models.embed import embed_sets, feature_dim
from ..models.snail import SNAILNet
from ..registry import LEARNERS
from .base import BaseLearner, MetaLearner


@dataclass
class SNAILConfig(HParams):
    keys: list[int] = positive([64, 256, 512])  # key sizes of the attention blocks
    values: list[int] = positive([32, 128, 256])  # their value sizes; a TC block sits between two attention blocks
    tc_layers: int = positive(3)  # dense blocks per TC block: ⌈log2 T⌉, T = N·K + 1 (5-way 1-shot: 3)
    filters: int = positive(128)  # D of each dense block

    def validate(self):
        if len(self.keys) != len(self.values):
            raise ConfigError(f"learner.keys and learner.values need the same length, got {len(self.keys)} and {len(self.values)}")


class SNAIL(MetaLearner):
    """Embedding + SNAILNet over [embedding; one-hot label] sequences (module docstring)."""

    def __init__(self, hp: SNAILConfig, encoder: nn.Module, input_shape: tuple[int, ...], n_ways: int):
        super().__init__("classification")
        self.hp, self.encoder = hp, encoder
        self.n_ways = self.fixed_ways = n_ways  # one-hot label inputs and one output per class
        self.net = SNAILNet(feature_dim(encoder, input_shape) + n_ways, n_ways, hp.keys, hp.values, hp.tc_layers, hp.filters)

    def sequence_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs at every support position [B, S, N] and at each query [B, Q, N]."""
        ctx = embed_sets(self.encoder, support_x)
        qry = embed_sets(self.encoder, query_x)
        ctx = torch.cat([ctx, F.one_hot(support_y, self.n_ways).to(ctx.dtype)], -1)
        qry = torch.cat([qry, qry.new_zeros(*qry.shape[:2], self.n_ways)], -1)
        return self.net(ctx, qry)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        """The base learner: support_x [B, S, ...], support_y [B, S] -> (query_x [B, Q, ...] -> [B, Q, N])."""
        return lambda query_x: self.sequence_logits(support_x, support_y, query_x)[1]


@LEARNERS.register("snail", SNAILConfig)
def make_snail(hp: SNAILConfig, build_model, task) -> SNAIL:
    """SNAIL (Mishra et al. 2018): temporal convolutions + causal attention over the labelled support sequence."""
    if task.kind != "classification":
        raise ConfigError("learner snail needs a classification task (labels are fed in as one-hot inputs)")
    return SNAIL(hp, build_model(None), tuple(task.input_shape), task.n_outputs)
