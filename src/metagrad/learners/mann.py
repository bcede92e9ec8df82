"""MANN: Memory-Augmented Neural Network (Santoro et al. 2016) with an LSTM controller and an
LRUA external memory (models/memory.py).

The support set is a sequence; at step t the controller sees (x_t, one-hot y_{t-1}) and the
previous step's read vectors, writes/reads the memory, and predicts y_t before it is revealed:

    h_t   = LSTM([e(x_t); y_{t-1}; r_{t-1}], h_{t-1})            e = build_model(None), e.g. raw pixels
    k_t, a_t = tanh(W_k h_t), tanh(W_a h_t);  σ(α_t) = sigmoid(W_α h_t)      per head
    r_t   = LRUA(M, k_t, a_t, σ(α_t))                            write a_t, then read with key k_t
    ŷ_t   = W_o [h_t; r_t]                                       logits over the N labels

Each query is an independent continuation of the final support state with input
(x_q, y_S) — the last support label is revealed with it — so no query sees another query.

The paper's protocol (episodes of N classes x 10 instances, shuffled; accuracy by instance
number) is the support sequence of a ``shots=10`` task: ``sequence_loss`` trains on every
step's prediction as the paper did, and evaluation reports the accuracy at the k-th
presentation of a class for each k in ``instances`` (keys "instance k"), next to the
queries' accuracy ("adapted"). The k-th-instance accuracies also reward a content-free
strategy (every class appears equally often, so the label seen least so far is a good guess
late in the episode); the queries, which come after all support steps, do not.

Differences from the paper: the heads write an add vector a_t (as the NTM does) rather than
their read key k_t — written and then read with the same key, a step mostly reads back what
it has just written, and in our runs that variant learnt several times more slowly. The read
may be sharpened, softmax(β · cos) with ``read_sharpness`` β (1 = the paper, kept by the paper
presets): with 128 slots an unsharpened read is close to the mean of the memory. On Omniglot
(400 iterations of 8 episodes, Adam 2e-3) β = 5 reached 40-44 % held-out query accuracy in each
of three seeds, while β = 1 (seed 0) was still at chance. Labels are one-hot for every N (the paper coded
15-class labels as 5-character strings); images are augmented only by the task's 90° rotation
classes (the paper also translated them); the outer optimiser is Adam (the paper: RMSprop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HParams, choice, positive
from ..errors import ConfigError
from ..models.embed import embed_sets, feature_dim
from ..models.memory import MemoryState, lrua_step
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import BaseLearner, MetaLearner


@dataclass
class MANNConfig(HParams):
    controller: int = positive(200)  # LSTM units
    memory_slots: int = positive(128)
    memory_width: int = positive(40)
    heads: int = positive(4)  # each head reads with its key k_t and writes its add vector a_t
    usage_decay: float = positive(0.95)  # gamma, in (0, 1]
    read_sharpness: float = positive(1.0)  # beta of softmax(beta * cos); 1 = the paper
    sequence_loss: bool = True  # also train on each support label's prediction (the paper's objective)
    instances: list[int] = positive([1, 2, 3, 4, 5, 10])  # evaluation: accuracy at these presentations
    # "shared": every head writes to all `heads` least-used slots (the paper's w_lu); "per_head":
    # head i to the i-th least-used slot only (Santoro et al.'s reimplementations)
    write_slots: str = choice("shared", ("shared", "per_head"))

    def validate(self):
        if self.usage_decay > 1:
            raise ConfigError(f"learner.usage_decay must be in (0, 1], got {self.usage_decay}")
        if self.heads > self.memory_slots:
            raise ConfigError(f"learner.heads={self.heads} exceeds learner.memory_slots={self.memory_slots}")


def instance_numbers(y: Tensor, n_ways: int) -> Tensor:
    """y [B, S] labels -> [B, S]: k where y_t is the k-th presentation of its class (1-based)."""
    counts = F.one_hot(y, n_ways).cumsum(1)
    return counts.gather(2, y.unsqueeze(-1)).squeeze(-1)


class MANN(MetaLearner):
    """LSTM controller + LRUA memory (module docstring); the memory starts empty for every task."""

    def __init__(self, hp: MANNConfig, encoder: nn.Module, input_shape: tuple[int, ...], n_ways: int):
        super().__init__("classification")
        self.hp, self.encoder = hp, encoder
        self.n_ways = self.fixed_ways = n_ways  # one-hot label inputs and one output per class
        reads = hp.heads * hp.memory_width
        self.cell = nn.LSTMCell(feature_dim(encoder, input_shape) + n_ways + reads, hp.controller)
        self.interface = nn.Linear(hp.controller, hp.heads * (2 * hp.memory_width + 1))
        self.out = nn.Linear(hp.controller + reads, n_ways)

    def step(self, state, x: Tensor, y_prev: Tensor):
        """One time step. state = (h, c, MemoryState); x [n, E]; y_prev [n, N] -> (logits [n, N], state)."""
        h, c, mem = state
        h, c = self.cell(torch.cat([x, y_prev, mem.reads.flatten(1)], -1), (h, c))
        W = self.hp.memory_width
        iface = self.interface(h).view(len(h), self.hp.heads, 2 * W + 1)
        keys, add, gate = torch.tanh(iface[..., :W]), torch.tanh(iface[..., W:-1]), torch.sigmoid(iface[..., -1])
        mem = lrua_step(mem, keys, add, gate, self.hp.usage_decay, self.hp.read_sharpness)
        return self.out(torch.cat([h, mem.reads.flatten(1)], -1)), (h, c, mem)

    def run_support(self, support_x: Tensor, support_y: Tensor):
        """support_x [B, S, ...], support_y [B, S] -> (logits [B, S, N] of each y_t before it is
        revealed, final state, last label one-hot [B, N] (zeros when S = 0))."""
        e = embed_sets(self.encoder, support_x)
        B, S = support_y.shape
        y = F.one_hot(support_y, self.n_ways).to(e.dtype)
        prev = torch.cat([y.new_zeros(B, 1, self.n_ways), y], 1)  # [B, S+1, N]: y_{t-1}
        h = e.new_zeros(B, self.hp.controller)
        state = (h, h, MemoryState.initial(B, self.hp.memory_slots, self.hp.memory_width, self.hp.heads, e,
                                                  per_head=self.hp.write_slots == "per_head"))
        logits = []
        for t in range(S):
            out, state = self.step(state, e[:, t], prev[:, t])
            logits.append(out)
        return torch.stack(logits, 1) if S else e.new_zeros(B, 0, self.n_ways), state, prev[:, S]

    def run_queries(self, state, last_label: Tensor, query_x: Tensor) -> Tensor:
        """Every query as its own continuation of ``state``. query_x [B, Q, ...] -> logits [B, Q, N]."""
        e = embed_sets(self.encoder, query_x)
        B, Q = e.shape[:2]
        h, c, mem = state
        rep = (h.repeat_interleave(Q, 0), c.repeat_interleave(Q, 0), mem.repeat_interleave(Q))
        logits, _ = self.step(rep, e.flatten(0, 1), last_label.repeat_interleave(Q, 0))
        return logits.view(B, Q, self.n_ways)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        _, state, last = self.run_support(support_x, support_y)
        return lambda query_x: self.run_queries(state, last, query_x)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        seq, state, last = self.run_support(batch.support_x, batch.support_y)
        pred = self.run_queries(state, last, batch.query_x)
        if self.hp.sequence_loss:
            loss = self.loss(torch.cat([seq, pred], 1), torch.cat([batch.support_y, batch.query_y], 1))
        else:
            loss = self.loss(pred, batch.query_y)
        acc = (pred.detach().argmax(-1) == batch.query_y).to(pred.dtype).mean()
        return loss, {"loss": loss.detach(), "accuracy": acc}

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        """"adapted": query logits [B, Q, N]; "instance k": (logits [B, N', N], labels [B, N']) of the
        support steps that present a class for the k-th time (reported when every task has N' > 0 of them)."""
        seq, state, last = self.run_support(batch.support_x, batch.support_y)
        out: dict[str, Tensor | tuple[Tensor, Tensor]] = {self.headline: self.run_queries(state, last, batch.query_x)}
        inst = instance_numbers(batch.support_y, self.n_ways)
        B = len(batch)
        for k in self.hp.instances:
            mask = inst == k
            per_task = mask.sum(1)
            if per_task.min() > 0 and per_task.min() == per_task.max():
                out[f"instance {k}"] = (seq[mask].view(B, -1, self.n_ways), batch.support_y[mask].view(B, -1))
        return out


@LEARNERS.register("mann", MANNConfig)
def make_mann(hp: MANNConfig, build_model, task) -> MANN:
    """MANN (Santoro et al. 2016): LSTM controller + LRUA memory over the labelled support sequence."""
    if task.kind != "classification":
        raise ConfigError("learner mann needs a classification task (labels are fed back as one-hot inputs)")
    return MANN(hp, build_model(None), tuple(task.input_shape), task.n_outputs)
