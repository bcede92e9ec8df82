"""MAML (Finn et al. 2017) with the exact second-order meta-gradient, and first-order MAML.

Inner update (docs/math.md, eq. 1), per task i and step:  θ' = θ − α ∇θ L_i^train(θ)
Outer objective (eq. 2):                                  Σ_i L_i^test(θ'_i)
Its gradient (eq. 3): autograd through the inner steps gives
    ∇θ L_i^test(θ'_i) = Π_steps (I − α ∇² L_i^train) · ∇θ' L_i^test(θ'_i)
as Hessian-vector products, never materialising the Hessian. First-order MAML (eq. 4)
detaches the inner gradients, which drops the Hessian factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..config import HParams, choice, nonnegative, positive
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import MetaLearner, metric_name, task_loss, task_metric
from .executors import EXECUTORS, map_tasks, resolve_executor

Params = dict[str, Tensor]


@dataclass
class MAMLConfig(HParams):
    inner_lr: float = positive(0.01)  # alpha
    inner_steps: int = positive(1)  # inner steps during meta-training
    eval_steps: int = nonnegative(10)  # inner steps at test time; evaluation reports 0..eval_steps
    first_order: bool = False  # drop the Hessian term (FOMAML)
    executor: str = choice("auto", EXECUTORS)  # vmap | loop | auto (executors.resolve_executor)
    # recompute each inner step during the backward pass: the graph keeps the per-task parameters
    # after each step instead of every step's activations (memory of ~1 step for many steps)
    checkpoint_inner: bool = False


class AdaptedModel:
    """A base learner: the backbone evaluated with per-task adapted parameters.
    params: each [B, *shape]; query_x [B, Q, ...] -> [B, Q, out]."""

    def __init__(self, model: nn.Module, params: Params, buffers: Params, executor: str):
        self.model, self.params, self.buffers, self.executor = model, params, buffers, executor

    def __call__(self, query_x: Tensor) -> Tensor:
        def one(p, x):
            return functional_call(self.model, (p, self.buffers), (x,))

        return map_tasks(one, self.executor, self.params, query_x)


class FunctionalLearner(MetaLearner):
    """A learner whose base learner is the backbone run with per-task parameters (MAML, Reptile);
    ``hp.eval_steps`` inner steps at test time give the headline setting."""

    def __init__(self, hp, model: nn.Module, kind: str):
        super().__init__(kind)
        self.hp = hp
        self.model = model
        self.headline = self.step_label(hp.eval_steps)

    @classmethod
    def for_task(cls, hp, build_model, task):
        """The learner over a backbone with one output per class (or target dim) of ``task``."""
        learner = cls(hp, build_model(task.n_outputs), task.kind)
        if task.kind == "classification":
            learner.fixed_ways = task.n_outputs  # the head has one output per class
        return learner

    @staticmethod
    def step_label(steps: int) -> str:
        return f"{steps} step" + ("" if steps == 1 else "s")

    def forward_task(self, params: Params, x: Tensor) -> Tensor:
        """One task's forward pass with explicit parameters. x [N, ...] -> [N, out]."""
        return functional_call(self.model, (params, dict(self.model.named_buffers())), (x,))


class MAML(FunctionalLearner):
    """MAML / first-order MAML over any backbone; tasks vectorised with torch.func.vmap.
    Subclasses change which parameters the inner loop adapts (``adapted_names``: ANIL) and
    their step sizes (``step_size``: Meta-SGD)."""

    def adapted_names(self, params: Params) -> list[str]:
        """The parameters the inner loop updates (MAML: all of them)."""
        return list(params)

    def step_size(self, name: str) -> float | Tensor:
        """α of parameter ``name``: a number, or a tensor of the parameter's shape."""
        return self.hp.inner_lr

    def inner_loop(self, params: Params, sx: Tensor, sy: Tensor, steps: int, first_order: bool) -> list[Params]:
        """The trajectory θ, θ'(1), ..., θ'(steps) on one task's support set (eq. 1); parameters
        outside ``adapted_names`` stay θ."""
        names = self.adapted_names(params)

        def support_loss(fast: Params, p: Params) -> Tensor:
            return task_loss(self.kind, self.forward_task({**p, **fast}, sx), sy)

        trajectory = [params]
        for _ in range(steps):
            grads = torch.func.grad(support_loss)({k: params[k] for k in names}, params)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            params = {**params, **{k: params[k] - self.step_size(k) * grads[k] for k in names}}
            trajectory.append(params)
        return trajectory

    def meta_parameters(self) -> Params:
        return dict(self.model.named_parameters())

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        params = self.meta_parameters()
        executor = resolve_executor(self.hp.executor, (batch.support_x, batch.query_x), (0, 0))
        if self.hp.checkpoint_inner:
            return self._checkpointed_meta_loss(params, batch, executor)

        def one_task(sx, sy, qx, qy):
            adapted = self.inner_loop(params, sx, sy, self.hp.inner_steps, self.hp.first_order)[-1]
            pred = self.forward_task(adapted, qx)
            return task_loss(self.kind, pred, qy), task_metric(self.kind, pred.detach(), qy)

        losses, metrics = map_tasks(one_task, executor, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), metric_name(self.kind): metrics.mean()}

    def _checkpointed_meta_loss(self, params: Params, batch: TaskBatch, executor: str) -> tuple[Tensor, dict[str, Tensor]]:
        """meta_loss with each inner step (over all tasks: [B, *shape] parameters in and out) run
        under torch.utils.checkpoint. Reentrant checkpointing, outside vmap: torch.func transforms
        refuse the saved-tensor hooks of the non-reentrant form. So the meta-gradient must be taken
        with ``.backward()`` (as ``accumulate_meta_grad`` does), not with torch.autograd.grad."""
        names = list(params)

        def one_step(sx, sy, *p):
            return tuple(self.inner_loop(dict(zip(names, p)), sx, sy, 1, self.hp.first_order)[-1].values())

        def step(sx, sy, *flat):
            return map_tasks(one_step, executor, sx, sy, *flat)

        flat = tuple(p.expand(len(batch), *p.shape) for p in params.values())
        for _ in range(self.hp.inner_steps):
            flat = checkpoint(step, batch.support_x, batch.support_y, *flat, use_reentrant=True)

        def query(qx, qy, *p):
            pred = self.forward_task(dict(zip(names, p)), qx)
            return task_loss(self.kind, pred, qy), task_metric(self.kind, pred.detach(), qy)

        losses, metrics = map_tasks(query, executor, batch.query_x, batch.query_y, *flat)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), metric_name(self.kind): metrics.mean()}

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> AdaptedModel:
        steps = self.hp.eval_steps if steps is None else steps
        params = {k: p.detach() for k, p in self.meta_parameters().items()}

        def one_task(sx, sy):
            return self.inner_loop(params, sx, sy, steps, first_order=True)[-1]

        executor = resolve_executor(self.hp.executor, (support_x,), (0,))
        adapted = map_tasks(one_task, executor, support_x, support_y)
        return AdaptedModel(self.model, adapted, dict(self.model.named_buffers()), executor)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions after 0, 1, ..., eval_steps inner steps (one trajectory per task)."""
        params = {k: p.detach() for k, p in self.meta_parameters().items()}

        def one_task(sx, sy, qx):
            trajectory = self.inner_loop(params, sx, sy, self.hp.eval_steps, first_order=True)
            return [self.forward_task(p, qx) for p in trajectory]

        preds = map_tasks(one_task, self.hp.executor, batch.support_x, batch.support_y, batch.query_x)
        return {self.step_label(k): p for k, p in enumerate(preds)}


@LEARNERS.register("maml", MAMLConfig)
def make_maml(hp: MAMLConfig, build_model, task) -> MAML:
    """MAML (second-order, or first-order with first_order=true), vectorised over tasks."""
    return MAML.for_task(hp, build_model, task)
