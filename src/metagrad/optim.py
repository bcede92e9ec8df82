"""A trained learned optimizer as a ``torch.optim.Optimizer``, and its comparison with the
hand-designed ones on held-out optimizees.

    opt = LearnedOptimizer.from_run(model.parameters(), "runs/l2o")   # a metagrad train run
    for x, y in data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()  # p ← p + m(p.grad, h_p; φ)

Each parameter entry keeps its own LSTM state (``state[p]["h"]``, ``["c"]``: [layers,
entries, hidden]); ``state_dict()`` holds them and the network's weights, so a training loop
that saves and restores its optimizer resumes the learned one exactly.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from .errors import ConfigError
from .learners.lstm_optimizer import CoordinatewiseLSTM, LSTMOptimizer
from .tasks.batch import TaskBatch


class LearnedOptimizer(torch.optim.Optimizer):
    """p ← p + m(p.grad, h_p; φ) for every parameter with a gradient; ``net``: a trained
    :class:`CoordinatewiseLSTM` (copied; its weights are not trained further)."""

    def __init__(self, params: Iterable, net: CoordinatewiseLSTM):
        super().__init__(params, defaults={})
        self.net = copy.deepcopy(net).requires_grad_(False)

    @classmethod
    def from_run(cls, params: Iterable, run: str | Path) -> "LearnedOptimizer":
        """The optimizer trained in ``run`` (a run directory or checkpoint of the lstm-optimizer learner)."""
        from .train import load_run

        _, learner, _ = load_run(Path(run))
        if not isinstance(learner, LSTMOptimizer):
            raise ConfigError(f"{run} holds a {type(learner).__name__}, not a learned optimizer (learner lstm-optimizer)")
        return cls(params, learner.net)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                net = self.net.to(p.device, p.dtype)
                st = self.state[p]
                if not st:
                    h0 = net.init_state(p.numel(), p)
                    st["h"] = torch.stack([h for h, _ in h0])
                    st["c"] = torch.stack([c for _, c in h0])
                update, new = net(p.grad.reshape(-1), list(zip(st["h"].unbind(0), st["c"].unbind(0))))
                p.add_(update.view_as(p))
                st["h"] = torch.stack([h for h, _ in new])
                st["c"] = torch.stack([c for _, c in new])
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "net": self.net.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        net = state_dict.pop("net", None)
        if net is not None:
            self.net.load_state_dict(net)
        super().load_state_dict(state_dict)


def optimizee_curves(learner: LSTMOptimizer, batch: TaskBatch, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
                     steps: int, seed: int) -> Tensor:
    """Train every task's optimizee of ``batch`` (from the learner's random θ_0 and mini-batches)
    with a torch optimizer for ``steps`` steps. All tasks' parameters are one [B, ...] tensor
    per parameter and the loss is the sum over tasks, so for a per-entry optimizer (SGD,
    momentum, RMSprop, Adam, the learned one) each task is trained independently.
    -> f(θ_t) float64 [steps + 1, B] (inf from the first non-finite loss of a diverged task on)."""
    torch.manual_seed(seed)
    start, idx = learner.random_start(batch, steps)
    params = {k: v.requires_grad_() for k, v in start.items()}
    opt = make_optimizer(list(params.values()))
    losses = []
    for t in range(steps + 1):
        loss = learner.task_losses(params, *learner.examples(batch, idx, t))
        losses.append(loss.detach().double())
        if t == steps:
            break
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    curves = torch.stack(losses)
    bad = (~torch.isfinite(curves)).cumsum(0) > 0
    return curves.masked_fill(bad, math.inf)


BASELINES: dict[str, Callable[[list[Tensor], float], torch.optim.Optimizer]] = {
    "SGD": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),  # the paper's NAG
    "RMSprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "Adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
}
#: the learning rates tried for each baseline: 10^-4 .. 10^1, three per decade
LR_GRID = tuple(10 ** (k / 3) for k in range(-12, 4))


def tune_learning_rates(learner: LSTMOptimizer, batch: TaskBatch, steps: int, seed: int,
                        baselines: dict = BASELINES, grid: tuple[float, ...] = LR_GRID) -> dict[str, float]:
    """For each baseline, the learning rate of ``grid`` with the lowest mean loss f(θ_steps)
    over ``batch``'s tasks (a diverged task counts as inf)."""
    best = {}
    for name, make in baselines.items():
        finals = {lr: optimizee_curves(learner, batch, lambda p: make(p, lr), steps, seed)[-1].mean().item() for lr in grid}
        best[name] = min(finals, key=finals.get)
    return best


def compare_optimizers(learner: LSTMOptimizer, tune: TaskBatch, test: TaskBatch, steps: int, seed: int = 0,
                       baselines: dict = BASELINES, grid: tuple[float, ...] = LR_GRID) -> dict[str, dict]:
    """The learned optimizer against each baseline at its best learning rate of ``grid`` (tuned on
    ``tune``'s tasks at the learner's trained horizon T), all trained for ``steps`` steps on
    ``test``'s tasks from the same θ_0 and mini-batches.
    -> {name: {"lr": float | None, "curves": f(θ_t) float64 [steps + 1, tasks]}}."""
    lrs = tune_learning_rates(learner, tune, learner.hp.train_steps, seed, baselines, grid)
    out = {"learned (LSTM)": {"lr": None, "curves": optimizee_curves(learner, test, lambda p: LearnedOptimizer(p, learner.net), steps, seed)}}
    for name, make in baselines.items():
        out[name] = {"lr": lrs[name], "curves": optimizee_curves(learner, test, lambda p: make(p, lrs[name]), steps, seed)}
    return out
