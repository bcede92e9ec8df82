"""The functional learner base: the backbone run with explicit per-task parameters, adapted by a
step-indexed inner loop of a differentiable inner optimizer (inner_optim.py).

    θ'(0) = θ;   θ'(t+1) = opt.step(θ'(t), ∇ inner_loss(θ'(t), x_t, y_t, t), step_size(·, t))

Every hook sees the inner step t (0-based: the t-th update), so a variant is a few lines:

    adapted_names(params)        which parameters the inner loop updates (ANIL: the head)
    step_size(name, t)           α of a parameter at step t (Meta-SGD: learned per entry; MAML++: per layer and step)
    network_params(params, t)    the parameters the backbone runs with at step t (MAML++: per-step BatchNorm)
    inner_loss(params, x, y, t, start)   the loss minimised (iMAML: plus λ/2 ‖θ' − θ‖², θ = start)

The prediction after k updates runs with ``network_params(·, query_step(k))``: the parameters of
the last update's step, as MAML++'s reference code does.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import MetaLearner, task_loss, task_metric, with_head_ways
from .executors import map_tasks
from .inner_optim import make_inner_optimizer

Params = dict[str, Tensor]
#: step t -> the (x, y) that step t trains on
StepData = Callable[[int], tuple[Tensor, Tensor]]


def query_step(k: int) -> int:
    """The step index whose network parameters the prediction after k updates uses."""
    return max(k - 1, 0)


def detached(params: Params) -> Params:
    return {k: p.detach() for k, p in params.items()}


class FunctionalLearner(MetaLearner):
    """A learner whose base learner is ``model`` run with per-task parameters; ``hp.eval_steps``
    inner steps at test time give the headline setting; ``hp`` is an InnerOptimizerConfig (its
    inner optimizer takes the steps)."""

    def __init__(self, hp, model: nn.Module, kind: str):
        super().__init__(kind)
        self.hp = hp
        self.model = model
        self.headline = self.step_label(hp.eval_steps)
        self.trained_setting = self.step_label(hp.inner_steps)
        self.inner_optimizer = make_inner_optimizer(hp)

    @classmethod
    def for_task(cls, hp, build_model, task):
        """The learner over a backbone with one output per class (or target dim) of ``task``."""
        return with_head_ways(cls(hp, build_model(task.n_outputs), task.kind), task)

    @staticmethod
    def step_label(steps: int) -> str:
        return f"{steps} step" + ("" if steps == 1 else "s")

    def meta_parameters(self) -> Params:
        """θ: the backbone's parameters (a variant's own meta-parameters, such as step sizes, are not in it)."""
        return dict(self.model.named_parameters())

    def report(self) -> dict:
        """What the backbone says of itself through its own ``report()``, if it has one (a search network: its architecture)."""
        describe = getattr(self.model, "report", None)
        return describe() if describe is not None else {}

    # ------------------------------------------------------------------ hooks

    def adapted_names(self, params: Params) -> list[str]:
        """The parameters the inner loop updates (default: all of them)."""
        return list(params)

    def step_size(self, name: str, step: int) -> float | Tensor:
        """α of parameter ``name`` at inner step ``step``: a number or a tensor (default: hp.inner_lr)."""
        return self.hp.inner_lr

    def network_params(self, params: Params, step: int) -> Params:
        """The parameters the backbone runs with at inner step ``step`` (default: ``params``)."""
        return params

    def forward_task(self, params: Params, x: Tensor, step: int = 0) -> Tensor:
        """One task's forward pass with explicit parameters. x [N, ...] -> [N, out]."""
        return functional_call(self.model, (self.network_params(params, step), dict(self.model.named_buffers())), (x,))

    def inner_loss(self, params: Params, x: Tensor, y: Tensor, step: int, start: Params) -> tuple[Tensor, Tensor]:
        """(loss minimised at step ``step``, predictions [N, out]); ``start`` = θ'(0)."""
        pred = self.forward_task(params, x, step)
        return task_loss(self.kind, pred, y), pred

    # ------------------------------------------------------------------ the inner loop

    def inner_loop(self, params: Params, data: StepData, steps: int, first_order: bool,
                   state: dict | None = None, keep: tuple[int, ...] | None = None, first_step: int = 0):
        """Adapt one task for ``steps`` updates from ``params``: steps t = first_step, first_step + 1,
        ..., each training on ``data(t)``.

        Returns (the parameters after k updates for each k in ``keep`` (default: 0..steps),
        the loss before each update [steps], the metric before each update [steps], the inner
        optimizer's final state). ``first_order`` detaches the inner gradients (no Hessian
        terms); ``state``: the optimizer state to start from (default: a fresh one).
        """
        names = self.adapted_names(params)
        start = params
        opt = self.inner_optimizer
        state = opt.init({k: params[k] for k in names}) if state is None else state
        kept = [params] if keep is None or 0 in keep else []
        losses, metrics = [], []
        for k, t in enumerate(range(first_step, first_step + steps), start=1):
            x, y = data(t)

            def loss_fn(fast: Params, rest: Params) -> tuple[Tensor, Tensor]:
                loss, pred = self.inner_loss({**rest, **fast}, x, y, t, start)
                return loss, task_metric(self.kind, pred.detach(), y)

            fast = {k: params[k] for k in names}
            grads, (loss, metric) = torch.func.grad_and_value(loss_fn, has_aux=True)(fast, params)
            if first_order:
                grads = detached(grads)
            fast, state = opt.step(fast, grads, state, {k: self.step_size(k, t) for k in names})
            params = {**params, **fast}
            losses.append(loss.detach())
            metrics.append(metric)
            if keep is None or k in keep:
                kept.append(params)
        return kept, losses, metrics, state

    def adapted(self, support_x: Tensor, support_y: Tensor, steps: int, keep: tuple[int, ...] | None = None,
                executor: str = "vmap") -> list[Params]:
        """Per-task parameters ([B, *shape] each) after k support-set updates for each k in ``keep``
        (default 0..steps), without a graph to θ (evaluation)."""
        params = detached(self.meta_parameters())

        def one(sx, sy):
            return self.inner_loop(params, lambda t: (sx, sy), steps, first_order=True, keep=keep)[0]

        with torch.no_grad():
            return map_tasks(one, executor, support_x, support_y)



class AdaptedModel:
    """A base learner: the backbone run with per-task parameters adapted for ``steps`` updates.
    params: each [B, *shape]; query_x [B, Q, ...] -> [B, Q, out]."""

    def __init__(self, learner: FunctionalLearner, params: Params, steps: int, executor: str):
        self.learner, self.params, self.steps, self.executor = learner, params, steps, executor

    def __call__(self, query_x: Tensor) -> Tensor:
        step = query_step(self.steps)
        return map_tasks(lambda p, qx: self.learner.forward_task(p, qx, step), self.executor, self.params, query_x)
