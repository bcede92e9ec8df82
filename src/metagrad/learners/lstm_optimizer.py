"""A learned optimizer (Andrychowicz et al. 2016, "Learning to learn by gradient descent by
gradient descent"): a coordinate-wise LSTM m(·; φ) maps each optimizee parameter's gradient to
its update,

    θ_{t+1} = θ_t + g_t,   [g_t, h_{t+1}] = m(∇f(θ_t), h_t; φ),

one LSTM state h per coordinate, φ shared by all coordinates. The meta-objective is the sum of
the optimizee's losses along the trajectory, L(φ) = E_f [Σ_{t=0..T} f(θ_t)] (weights w_t = 1),
minimised by Adam through the unrolled steps with truncated back-propagation: the graph is cut
every ``truncation`` steps (θ and h held constant there). As in the paper (and the authors'
``second_derivatives=False``), the gradient fed to the LSTM is treated as a constant,
∂∇f(θ_t)/∂φ = 0; ``second_order=true`` keeps that term (the exact meta-gradient).

Optimizees are the tasks of any regression or classification family: a fresh θ_0 ~ N(0,
init_std²) per task and per parameter entry (the authors' initialiser), trained on the task's
support set (a random mini-batch of ``batch_size`` examples for each evaluation of f, or the
whole set), and scored on its query set after the steps (the "quadratic" task's query is its
support, so its mse is f(θ_T)). ``preprocess="log_sign"`` feeds each gradient as the paper's
(log|∇|/p, sign ∇) for |∇| ≥ e^{−p}, else (−1, e^p ∇), p = ``preprocess_p``.

One difference from the authors' training, kept for the shared loop: a meta-iteration is one
whole T-step trajectory whose T/truncation truncated gradients are summed into one Adam step;
the authors take one Adam step per truncation (5 per 100-step trajectory).
``metagrad.LearnedOptimizer`` puts a trained m into any PyTorch training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config import HParams, choice, nonnegative, positive
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import MetaLearner, metric_name, task_loss, task_metric, with_head_ways
from .executors import EXECUTORS, map_tasks

Params = dict[str, Tensor]
#: per LSTM layer, (h, c), each [coordinates, hidden]
LSTMState = list[tuple[Tensor, Tensor]]


@dataclass
class LSTMOptimizerConfig(HParams):
    hidden: int = positive(20)  # LSTM width (the paper: 2 layers of 20)
    layers: int = positive(2)
    preprocess: str = choice("none", ("none", "log_sign"))
    preprocess_p: float = positive(10.0)
    output_scale: float = positive(1.0)  # the update is output_scale x the LSTM's linear output
    train_steps: int = positive(100)  # T: optimizee steps per meta-training trajectory
    truncation: int = nonnegative(20)  # cut the graph every N steps (0 or >= train_steps: back-propagate through all T)
    eval_steps: int = positive(200)  # steps at evaluation (the headline; beyond T tests generalisation)
    second_order: bool = False  # keep ∂∇f/∂φ (the paper drops it)
    init_std: float = positive(0.01)  # θ_0 ~ N(0, init_std²) per entry
    batch_size: int = nonnegative(0)  # support examples per evaluation of f; 0: all
    executor: str = choice("vmap", EXECUTORS)


def log_sign(g: Tensor, p: float) -> Tensor:
    """The paper's gradient preprocessing (Appendix A). g [N] -> [N, 2]:
    (log|g|/p, sign g) where |g| ≥ e^{−p}, else (−1, e^p g)."""
    big = g.abs() >= torch.exp(torch.tensor(-p, dtype=g.dtype))
    magnitude = torch.where(big, g.abs().clamp_min(torch.exp(torch.tensor(-p, dtype=g.dtype))).log() / p, -1.0)
    direction = torch.where(big, torch.sign(g), g * torch.exp(torch.tensor(p, dtype=g.dtype)))
    return torch.stack([magnitude, direction], -1)


class CoordinatewiseLSTM(nn.Module):
    """m(∇; φ): ``layers`` stacked LSTM cells and a linear output, applied to every coordinate
    independently (the coordinates are the batch). g [N] -> (update [N], next state)."""

    def __init__(self, hidden: int = 20, layers: int = 2, preprocess: str = "none", preprocess_p: float = 10.0,
                 output_scale: float = 1.0):
        super().__init__()
        self.preprocess, self.preprocess_p, self.output_scale = preprocess, preprocess_p, output_scale
        width = 2 if preprocess == "log_sign" else 1
        self.cells = nn.ModuleList(nn.LSTMCell(width if i == 0 else hidden, hidden) for i in range(layers))
        self.out = nn.Linear(hidden, 1)

    def init_state(self, n: int, like: Tensor) -> LSTMState:
        zeros = like.new_zeros(n, self.cells[0].hidden_size)
        return [(zeros, zeros) for _ in self.cells]

    def forward(self, g: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        x = log_sign(g, self.preprocess_p) if self.preprocess == "log_sign" else g[:, None]
        new = []
        for cell, hc in zip(self.cells, state):
            h, c = cell(x, hc)
            new.append((h, c))
            x = h
        return self.out(x).squeeze(-1) * self.output_scale, new


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vector[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


class LSTMOptimizer(MetaLearner):
    """The learned optimizer as a meta-learner: its meta-parameters are φ (``self.net``); the
    optimizee is ``model`` run with per-task parameters [B, *shape] from a fresh random start."""

    compile_break = "the optimizee's gradients are taken with torch.autograd.grad, which torch.compile does not trace"

    def __init__(self, hp: LSTMOptimizerConfig, model: nn.Module, kind: str):
        super().__init__(kind)
        self.hp = hp
        self.net = CoordinatewiseLSTM(hp.hidden, hp.layers, hp.preprocess, hp.preprocess_p, hp.output_scale)
        self.optimizee = [model]  # a template for functional_call, not a meta-parameter (kept out of state_dict)
        self.headline = self.step_label(hp.eval_steps)
        self.trained_setting = self.step_label(hp.train_steps)

    @staticmethod
    def step_label(steps: int) -> str:
        return f"{steps} step" + ("" if steps == 1 else "s")

    def random_start(self, batch: TaskBatch, steps: int) -> tuple[Params, Tensor | None]:
        """Every random number a trajectory of ``steps`` steps uses, drawn at once from torch's RNG
        as uniforms [B, ...] (so a batch drawn in chunks of tasks gets the same numbers):

        θ_0 ~ N(0, init_std²) {name: [B, *shape]} (by the inverse normal CDF), and the support
        examples of each evaluation of f, long [B, steps + 1, batch_size] (None: all of them)."""
        B, S = len(batch), batch.support_x.shape[1]
        m = self.hp.batch_size if 0 < self.hp.batch_size < S else 0
        shapes = {n: p.shape for n, p in self.optimizee[0].named_parameters()}
        P = sum(math.prod(s) for s in shapes.values())
        u = torch.rand(B, P + (steps + 1) * S * bool(m), dtype=torch.float64, device=batch.support_x.device)
        z = torch.special.ndtri(u[:, :P].clamp(1e-12, 1 - 1e-12)) * self.hp.init_std
        start = dict(zip(shapes, (t.reshape(B, *s) for t, s in zip(z.split([math.prod(s) for s in shapes.values()], 1), shapes.values()))))
        start = {n: t.to(batch.support_x.dtype) for n, t in start.items()}
        idx = u[:, P:].view(B, steps + 1, S).argsort(-1)[..., :m] if m else None
        return start, idx

    def forward_task(self, params: Params, x: Tensor) -> Tensor:
        """One task's optimizee. x [N, ...] -> [N, out]."""
        model = self.optimizee[0]
        return functional_call(model, (params, dict(model.named_buffers())), (x,))

    def task_losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """f of every task on (x, y) [B, M, ...]: -> [B]."""
        return map_tasks(lambda p, xi, yi: task_loss(self.kind, self.forward_task(p, xi), yi), self.hp.executor, params, x, y)

    @staticmethod
    def examples(batch: TaskBatch, idx: Tensor | None, t: int) -> tuple[Tensor, Tensor]:
        """The support examples the evaluation of f at step t sees: (x [B, m, ...], y [B, m, ...])."""
        if idx is None:
            return batch.support_x, batch.support_y
        i = idx[:, t]
        take = lambda v: v.gather(1, i.view(*i.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:]))  # noqa: E731
        return take(batch.support_x), take(batch.support_y)

    def trajectory(self, batch: TaskBatch, steps: int, meta: bool, keep: tuple[int, ...] = ()):
        """Train each task's optimizee for ``steps`` updates from a fresh θ_0.

        Returns (losses: f(θ_t) of each task, a list of steps + 1 tensors [B]; the parameters
        after k updates for each k in ``keep``). ``meta``: keep the graph to φ (cut every
        ``truncation`` steps) for the meta-gradient; else every step is detached."""
        hp = self.hp
        start, idx = self.random_start(batch, steps)
        params = {k: v.requires_grad_() for k, v in start.items()}
        names = list(params)
        state = self.net.init_state(sum(p.numel() for p in params.values()), batch.support_x)
        losses, kept = [], {}
        with torch.enable_grad():
            for t in range(steps + 1):
                if t in keep:
                    kept[t] = params
                loss = self.task_losses(params, *self.examples(batch, idx, t))
                losses.append(loss if meta else loss.detach())
                if t == steps:
                    break
                cut = not meta or (hp.truncation and t > 0 and t % hp.truncation == 0)
                second = meta and hp.second_order and not cut
                grads = torch.autograd.grad(loss.sum(), [params[k] for k in names], create_graph=second, retain_graph=meta)
                g = flat(grads) if second else flat(grads).detach()
                if cut:  # θ_t and h_t are constants from here on
                    params = {k: p.detach().requires_grad_() for k, p in params.items()}
                    state = [(h.detach(), c.detach()) for h, c in state]
                    g = g.detach()
                update, state = self.net(g, state)
                steps_ = unflat(update, [params[k] for k in names])
                params = {k: params[k] + d for k, d in zip(names, steps_)}
                if not meta:
                    params = {k: p.detach().requires_grad_() for k, p in params.items()}
                    state = [(h.detach(), c.detach()) for h, c in state]
        return losses, kept

    def predict(self, params: Params, query_x: Tensor) -> Tensor:
        """params {name: [B, *shape]}, query_x [B, Q, ...] -> [B, Q, out]."""
        return map_tasks(self.forward_task, self.hp.executor, {k: p.detach() for k, p in params.items()}, query_x)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean of f(θ_t) over t = 0..T and the tasks (its gradient: the truncated meta-gradient)."""
        T = self.hp.train_steps
        losses, kept = self.trajectory(batch, T, meta=True, keep=(T,))
        objective = torch.stack(losses).mean()
        with torch.no_grad():
            metric = task_metric(self.kind, self.predict(kept[T], batch.query_x), batch.query_y).mean()
        return objective, {"loss": objective.detach(), metric_name(self.kind): metric}

    def adapt(self, support_x: Tensor, support_y: Tensor):
        """The optimizee after ``eval_steps`` learned updates on the support set."""
        steps = self.hp.eval_steps
        batch = TaskBatch(support_x, support_y, support_x[:, :0], support_y[:, :0])
        _, kept = self.trajectory(batch, steps, meta=False, keep=(steps,))
        return lambda query_x: self.predict(kept[steps], query_x)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions after the trained horizon T and after ``eval_steps`` (one trajectory)."""
        marks = sorted({self.hp.train_steps, self.hp.eval_steps})
        _, kept = self.trajectory(batch, marks[-1], meta=False, keep=tuple(marks))
        return {self.step_label(k): self.predict(kept[k], batch.query_x) for k in marks}


@LEARNERS.register("lstm-optimizer", LSTMOptimizerConfig)
def make_lstm_optimizer(hp: LSTMOptimizerConfig, build_model, task) -> LSTMOptimizer:
    """A learned optimizer (Andrychowicz et al. 2016): a coordinate-wise LSTM trains each task's model from scratch."""
    return with_head_ways(LSTMOptimizer(hp, build_model(task.n_outputs), task.kind), task)
