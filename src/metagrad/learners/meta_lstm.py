"""The Meta-Learner LSTM (Ravi & Larochelle 2017, "Optimization as a model for few-shot
learning"): an LSTM whose cell state is the learner's parameters. For each task, from the
meta-learned initial parameters c_0 = θ_0, ``inner_steps`` updates on the support set:

    ∇_t, L_t = gradient and loss of the learner at c_{t−1} on the support set
    h_t = LSTM([log_sign(∇_t), log_sign(L_t)], h_{t−1})                     (one state per coordinate)
    f_t = σ(W_F · [h_t, c_{t−1}, f_{t−1}] + b_F)                             forget gate (≈ 1: keep θ)
    i_t = σ(W_I · [h_t, c_{t−1}, i_{t−1}] + b_I)                             input gate (a learning rate)
    c_t = f_t ⊙ c_{t−1} − i_t ⊙ ∇_t

then the query loss of the learner at c_T is the meta-loss. Every learner parameter entry is a
coordinate sharing (LSTM, W_F, b_F, W_I, b_I); as in the paper, ∇_t and L_t are inputs without a
graph (no second derivatives), while c_{t−1} and the gates keep theirs. Initialisation as the
authors' code: W_F, W_I ~ U(−0.01, 0.01), b_F ~ U(4, 6) (f ≈ 1), b_I ~ U(−5, −4) (i ≈ 0.01), the
LSTM with torch's default. The learner's BatchNorm uses each task's batch statistics, at test
time too, as the paper does. Every update sees the whole support set as one batch; the backbone
is any registered model (Conv-4 with 32 channels in the presets, as the paper's learner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config import HParams, choice, positive
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import MetaLearner, metric_name, task_loss, task_metric, with_head_ways
from .executors import EXECUTORS, map_tasks
from .lstm_optimizer import flat, log_sign, unflat

Params = dict[str, Tensor]


@dataclass
class MetaLSTMConfig(HParams):
    inner_steps: int = positive(8)  # updates of the learner per task (the authors' code: 8 "epochs" over the support set)
    eval_steps: int = positive(8)
    hidden: int = positive(20)  # width of the first LSTM layer
    preprocess_p: float = positive(10.0)
    executor: str = choice("vmap", EXECUTORS)


class MetaLSTMCell(nn.Module):
    """The second layer: cell state = the learner's parameters. One row per coordinate."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_f = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.w_i = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.b_f = nn.Parameter(torch.empty(1).uniform_(4, 6))
        self.b_i = nn.Parameter(torch.empty(1).uniform_(-5, -4))

    def forward(self, h: Tensor, c: Tensor, grad: Tensor, f: Tensor, i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h [N, hidden], c, grad, f, i [N] -> (c_t, f_t, i_t), each [N]."""
        f = torch.sigmoid(torch.cat([h, c[:, None], f[:, None]], 1) @ self.w_f + self.b_f)
        i = torch.sigmoid(torch.cat([h, c[:, None], i[:, None]], 1) @ self.w_i + self.b_i)
        return f * c - i * grad, f, i


class MetaLSTM(MetaLearner):
    """The learner ``model`` (its parameters are c_0, meta-learned) updated by a two-layer
    meta-learner LSTM; every task's parameter entries are the coordinates."""

    compile_break = "the learner's gradients are taken with torch.autograd.grad, which torch.compile does not trace"

    def __init__(self, hp: MetaLSTMConfig, model: nn.Module, kind: str):
        super().__init__(kind)
        self.hp = hp
        self.model = model
        self.lstm = nn.LSTMCell(4, hp.hidden)
        self.cell = MetaLSTMCell(hp.hidden)
        self.headline = self.step_label(hp.eval_steps)
        self.trained_setting = self.step_label(hp.inner_steps)

    @staticmethod
    def step_label(steps: int) -> str:
        return f"{steps} step" + ("" if steps == 1 else "s")

    def forward_task(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, (params, dict(self.model.named_buffers())), (x,))

    def losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """Per-task losses [B] of the learner with per-task ``params`` on (x, y) [B, M, ...]."""
        return map_tasks(lambda p, xi, yi: task_loss(self.kind, self.forward_task(p, xi), yi), self.hp.executor, params, x, y)

    def adapted(self, support_x: Tensor, support_y: Tensor, steps: int, meta: bool) -> Params:
        """Per-task parameters {name: [B, *shape]} after ``steps`` meta-learner updates; ``meta``:
        keep the graph to the meta-parameters (through c and the gates, not through ∇ and L)."""
        B = support_x.shape[0]
        names = [n for n, _ in self.model.named_parameters()]
        params = {n: p.expand(B, *p.shape) for n, p in self.model.named_parameters()}
        N = sum(p.numel() for p in params.values())
        zeros = support_x.new_zeros(N)
        hc = (support_x.new_zeros(N, self.hp.hidden), support_x.new_zeros(N, self.hp.hidden))
        f, i = zeros, zeros
        with torch.enable_grad():
            for _ in range(steps):
                leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
                loss = self.losses(leaves, support_x, support_y)  # [B]
                grads = torch.autograd.grad(loss.sum(), [leaves[n] for n in names])
                g = flat(grads)
                per_coord_loss = torch.cat([loss.detach()[:, None].expand(B, p[0].numel()).reshape(-1) for p in grads])
                x = torch.cat([log_sign(g, self.hp.preprocess_p), log_sign(per_coord_loss, self.hp.preprocess_p)], 1)
                hc = self.lstm(x, hc)
                c, f, i = self.cell(hc[0], flat([params[n] for n in names]), g, f, i)
                params = dict(zip(names, unflat(c, [params[n] for n in names])))
                if not meta:
                    params = {n: p.detach() for n, p in params.items()}
                    hc, f, i = (hc[0].detach(), hc[1].detach()), f.detach(), i.detach()
        return params

    def predict(self, params: Params, query_x: Tensor) -> Tensor:
        return map_tasks(self.forward_task, self.hp.executor, params, query_x)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        params = self.adapted(batch.support_x, batch.support_y, self.hp.inner_steps, meta=True)
        pred = self.predict(params, batch.query_x)
        loss = self.loss(pred, batch.query_y)
        return loss, {"loss": loss.detach(), metric_name(self.kind): task_metric(self.kind, pred.detach(), batch.query_y).mean()}

    def adapt(self, support_x: Tensor, support_y: Tensor):
        params = self.adapted(support_x, support_y, self.hp.eval_steps, meta=False)
        return lambda query_x: self.predict(params, query_x)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions before any update and after ``eval_steps`` updates."""
        before = {n: p.expand(len(batch), *p.shape) for n, p in self.model.named_parameters()}
        return {self.step_label(0): self.predict(before, batch.query_x),
                self.headline: self.adapt(batch.support_x, batch.support_y)(batch.query_x)}


@LEARNERS.register("meta-lstm", MetaLSTMConfig)
def make_meta_lstm(hp: MetaLSTMConfig, build_model, task) -> MetaLSTM:
    """Meta-Learner LSTM (Ravi & Larochelle 2017): an LSTM whose cell state is the learner's parameters."""
    return with_head_ways(MetaLSTM(hp, build_model(task.n_outputs), task.kind), task)
