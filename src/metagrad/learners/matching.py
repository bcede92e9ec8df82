"""Matching Networks (Vinyals et al. 2016).

A query x̂ attends over the embedded support set with a softmax of cosine similarities,

    a(x̂, x_i) = exp(c(f(x̂), g(x_i)) / τ) / Σ_j exp(c(f(x̂), g(x_j)) / τ),

and predicts the attention-weighted one-hot labels, P(y = k | x̂, S) = Σ_{i: y_i = k} a(x̂, x_i).
The logits are these log-probabilities, computed as a log-sum-exp over each class's supports
(exact, never log 0). τ = 1 is the paper's plain cosine.

Full-context embeddings (``fce = true``, the paper's appendix): g(x_i, S) = g'(x_i) + the
forward and backward states of a bidirectional LSTM over the support sequence; f(x̂, S) is an
attention LSTM unrolled ``fce_steps`` times over the support embeddings g:

    h_k, c_k = LSTM(f'(x̂), h_{k−1} + r_{k−1}, c_{k−1}) ;  h_k ← h_k + f'(x̂)
    r_k = Σ_i softmax_i(h_k · g_i) g_i

with h_0 = f'(x̂), r_0 = 0 and f = h_K (the paper concatenates h and r; adding them keeps the
LSTM state D-wide). Without FCE, f = g = the backbone embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import positive
from ..registry import LEARNERS
from .metric import MetricConfig, MetricLearner, n_ways, one_hot, require_classification


@dataclass
class MatchingConfig(MetricConfig):
    temperature: float = positive(1.0)  # tau: cosine similarities are divided by it
    fce: bool = False  # full-context embeddings
    fce_steps: int = positive(5)  # unrolled steps of the attention LSTM (K)


class FullContext(nn.Module):
    """g: bidirectional LSTM over the support set; f: attention LSTM over g.
    zs [B, S, D], zq [B, Q, D] -> (g [B, S, D], f [B, Q, D])."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(dim, dim)
        self.steps = steps

    def forward(self, zs: Tensor, zq: Tensor) -> tuple[Tensor, Tensor]:
        d = zs.shape[-1]
        out, _ = self.support_lstm(zs)
        g = zs + out[..., :d] + out[..., d:]
        b, q, _ = zq.shape
        x = zq.reshape(b * q, d)
        h, c, r = x, torch.zeros_like(x), torch.zeros_like(x)
        for _ in range(self.steps):
            h, c = self.query_cell(x, (h + r, c))
            h = h + x
            attn = torch.softmax(h.view(b, q, d) @ g.transpose(1, 2), dim=-1)  # [B, Q, S]
            r = (attn @ g).reshape(b * q, d)
        return g, h.view(b, q, d)


class MatchingNet(MetricLearner):
    """Cosine attention over the support set (optionally with full-context embeddings)."""

    def __init__(self, hp: MatchingConfig, net: nn.Module, dim: int):
        """dim: the embedding width D (used by FCE only)."""
        super().__init__(net, hp.executor, hp.transductive)
        self.hp = hp
        self.context = FullContext(dim, hp.fce_steps) if hp.fce else None

    def similarities(self, zs: Tensor, zq: Tensor) -> Tensor:
        """Cosine similarities / τ after the optional context embedding. -> [B, Q, S]."""
        if self.context is not None:
            zs, zq = self.context(zs, zq)
        return F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).transpose(1, 2) / self.hp.temperature

    def attention(self, zs: Tensor, zq: Tensor) -> Tensor:
        """a(x̂, x_i): [B, Q, S], each row sums to one."""
        return self.similarities(zs, zq).softmax(-1)

    def classify(self, zs: Tensor, support_y: Tensor, zq: Tensor) -> Tensor:
        """log Σ_{i: y_i = k} a(x̂, x_i) -> [B, Q, N]."""
        sim = self.similarities(zs, zq)
        mask = one_hot(support_y, n_ways(support_y), sim.dtype).transpose(1, 2).log()  # [B, N, S]: 0 or -inf
        return torch.logsumexp(sim[:, :, None] + mask[:, None], -1) - torch.logsumexp(sim, -1, keepdim=True)


@LEARNERS.register("matching", MatchingConfig)
def make_matching(hp: MatchingConfig, build_model, task) -> MatchingNet:
    """Matching Networks: softmax attention over the support set with cosine similarity (optional FCE)."""
    require_classification("matching", task)
    net = build_model(None)
    if not hp.fce:
        return MatchingNet(hp, net, 0)
    with torch.no_grad():
        dim = net(torch.zeros(2, *task.input_shape)).shape[-1]  # the embedding width
    return MatchingNet(hp, net, dim)
