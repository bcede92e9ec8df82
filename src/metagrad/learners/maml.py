"""MAML (Finn et al. 2017) with the exact second-order meta-gradient, and first-order MAML.

Inner update (docs/math.md, eq. 1), per task i and step:  θ' = θ − α ∇θ L_i^train(θ)
Outer objective (eq. 2):                                  Σ_i L_i^test(θ'_i)
Its gradient (eq. 3): autograd through the inner steps gives
    ∇θ L_i^test(θ'_i) = Π_steps (I − α ∇² L_i^train) · ∇θ' L_i^test(θ'_i)
as Hessian-vector products, never materialising the Hessian. First-order MAML (eq. 4)
detaches the inner gradients, which drops the Hessian factors. The inner loop is the
functional base's (functional.py): any differentiable inner optimizer (``inner_optimizer``:
SGD, momentum, Adam) and the step-indexed hooks the variants (Meta-SGD, ANIL, MAML++) override.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..config import choice, nonnegative, positive
from ..errors import ConfigError
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name, task_loss, task_metric
from .executors import EXECUTORS, map_tasks, resolve_executor
from .functional import AdaptedModel, FunctionalLearner, Params, detached, query_step
from .inner_optim import InnerOptimizerConfig


@dataclass
class MAMLConfig(InnerOptimizerConfig):
    inner_lr: float = positive(0.01)  # alpha
    inner_steps: int = positive(1)  # inner steps during meta-training
    eval_steps: int = nonnegative(10)  # inner steps at test time; evaluation reports 0..eval_steps
    first_order: bool = False  # drop the Hessian term (FOMAML)
    executor: str = choice("auto", EXECUTORS)  # vmap | loop | auto (executors.resolve_executor)
    # recompute each inner step during the backward pass: the graph keeps the per-task parameters
    # after each step instead of every step's activations (memory of ~1 step for many steps)
    checkpoint_inner: bool = False

    def validate(self):
        super().validate()
        if self.checkpoint_inner and self.inner_optimizer != "sgd":
            raise ConfigError(f"learner.checkpoint_inner needs learner.inner_optimizer='sgd', got {self.inner_optimizer!r}")


class MAML(FunctionalLearner):
    """MAML / first-order MAML over any backbone; tasks vectorised with torch.func.vmap.
    Variants override the functional base's hooks, and ``first_order_now`` / ``query_loss_weights``."""

    def first_order_now(self) -> bool:
        """Whether this meta-step drops the Hessian terms."""
        return self.hp.first_order

    def query_loss_weights(self) -> Tensor | None:
        """Weights of the query loss after each of the inner_steps updates, or None: the final
        update's alone (MAML). MAML++'s multi-step loss returns a [inner_steps] tensor."""
        return None

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        params = self.meta_parameters()
        executor = resolve_executor(self.hp.executor, (batch.support_x, batch.query_x), (0, 0))
        steps, first_order, weights = self.hp.inner_steps, self.first_order_now(), self.query_loss_weights()
        if self.hp.checkpoint_inner:
            if weights is not None:
                raise ConfigError("learner.checkpoint_inner supports the final step's query loss only")
            return self._checkpointed_meta_loss(params, batch, executor)

        def one_task(sx, sy, qx, qy):
            kept, *_ = self.inner_loop(params, lambda t: (sx, sy), steps, first_order, keep=None if weights is not None else (steps,))
            if weights is None:
                pred = self.forward_task(kept[-1], qx, query_step(steps))
                return task_loss(self.kind, pred, qy), task_metric(self.kind, pred.detach(), qy)
            preds = [self.forward_task(p, qx, query_step(k)) for k, p in enumerate(kept) if k > 0]
            loss = sum(w * task_loss(self.kind, pred, qy) for w, pred in zip(weights, preds))
            return loss, task_metric(self.kind, preds[-1].detach(), qy)

        losses, metrics = map_tasks(one_task, executor, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), metric_name(self.kind): metrics.mean()}

    def _checkpointed_meta_loss(self, params: Params, batch: TaskBatch, executor: str) -> tuple[Tensor, dict[str, Tensor]]:
        """meta_loss with each inner step (over all tasks: [B, *shape] parameters in and out) run
        under torch.utils.checkpoint. Reentrant checkpointing, outside vmap: torch.func transforms
        refuse the saved-tensor hooks of the non-reentrant form. So the meta-gradient must be taken
        with ``.backward()`` (as ``accumulate_meta_grad`` does), not with torch.autograd.grad.
        The inner optimizer is SGD (MAMLConfig.validate), whose state is empty."""
        names = list(params)
        first_order = self.first_order_now()

        def step(t, sx, sy, *flat):
            def one(sx, sy, *p):
                p = dict(zip(names, p))
                kept, *_ = self.inner_loop(p, lambda _: (sx, sy), 1, first_order, keep=(1,), first_step=t)
                return tuple(kept[-1].values())

            return map_tasks(one, executor, sx, sy, *flat)

        flat = tuple(p.expand(len(batch), *p.shape) for p in params.values())
        for t in range(self.hp.inner_steps):
            flat = checkpoint(step, t, batch.support_x, batch.support_y, *flat, use_reentrant=True)

        def query(qx, qy, *p):
            pred = self.forward_task(dict(zip(names, p)), qx, query_step(self.hp.inner_steps))
            return task_loss(self.kind, pred, qy), task_metric(self.kind, pred.detach(), qy)

        losses, metrics = map_tasks(query, executor, batch.query_x, batch.query_y, *flat)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), metric_name(self.kind): metrics.mean()}

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> AdaptedModel:
        steps = self.hp.eval_steps if steps is None else steps
        executor = resolve_executor(self.hp.executor, (support_x,), (0,))
        (params,) = self.adapted(support_x, support_y, steps, keep=(steps,), executor=executor)
        return AdaptedModel(self, params, steps, executor)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions after 0, 1, ..., eval_steps inner steps (one trajectory per task)."""
        params = detached(self.meta_parameters())

        def one_task(sx, sy, qx):
            trajectory, *_ = self.inner_loop(params, lambda t: (sx, sy), self.hp.eval_steps, first_order=True)
            return [self.forward_task(p, qx, query_step(k)) for k, p in enumerate(trajectory)]

        preds = map_tasks(one_task, self.hp.executor, batch.support_x, batch.support_y, batch.query_x)
        return {self.step_label(k): p for k, p in enumerate(preds)}


@LEARNERS.register("maml", MAMLConfig)
def make_maml(hp: MAMLConfig, build_model, task) -> MAML:
    """MAML (second-order, or first-order with first_order=true), vectorised over tasks."""
    return MAML.for_task(hp, build_model, task)
