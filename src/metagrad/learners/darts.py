"""DARTS (Liu, Simonyan & Yang 2019, "Differentiable Architecture Search") as a few-shot learner:
the architecture α of a searchable backbone (models/search.py, ``search-cnn``) is meta-learned
over tasks together with the weights' initialisation w (the MetaNAS idea, Elsken et al. 2020),
with DARTS' bilevel split inside each task: the support set is the training split, the query
set the validation split.

Per task i, the inner loop adapts the weights only (α is one architecture for every task):

    w'_i = w − ξ ∇_w L_i^s(w, α)                                      ξ = learner.inner_lr

and α descends the query loss at w'_i, whose gradient has the structure of MAML's meta-gradient:

    ∇_α L_i^q(w'_i, α) = ∂_α L_i^q(w'_i, α) − ξ ∇²_{α,w} L_i^s(w, α) · v,    v = ∇_{w'} L_i^q(w'_i, α)

``arch_grad`` chooses how it is computed:

    exact              autograd through the inner steps (any number; Hessian-vector products)
    finite_difference  DARTS' eq. 8 (one SGD step): ∇²_{α,w} L^s(w, α) · v ≈
                       [∇_α L^s(w⁺, α) − ∇_α L^s(w⁻, α)] / 2ε,  w^± = w ± ε v,  ε = fd_scale / ‖v‖
                       (two more support passes and no second-order graph through α)
    first_order        ∂_α L^q(w'_i, α) alone (DARTS' first-order approximation)

The weights get MAML's meta-gradient (second order unless ``first_order``). Through the one
contract, the finite-difference term is a surrogate whose α-gradient is that term:

    objective = mean_i [ L_i^q(w'_i, α) − ξ (L_i^s(sg(w⁺), α) − L_i^s(sg(w⁻), α)) / 2ε ]

After the search, report.json records the discrete ``architecture`` (the largest α in each
cell); ``--set model.name=cnn --set 'model.ops=[...]'`` trains it under any learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import choice, positive
from ..errors import ConfigError
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name, task_loss, task_metric
from .executors import map_tasks, resolve_executor
from .functional import Params, detached, query_step
from .maml import MAML, MAMLConfig

ARCH = "alpha"  # the name of a searchable backbone's architecture parameters
ARCH_GRADS = ("exact", "finite_difference", "first_order")


@dataclass
class DARTSConfig(MAMLConfig):
    arch_grad: str = choice("finite_difference", ARCH_GRADS)
    fd_scale: float = positive(0.01)  # ε ‖v‖ of the finite difference (DARTS: 0.01)

    def validate(self):
        super().validate()
        if self.arch_grad == "finite_difference" and (self.inner_steps != 1 or self.inner_optimizer != "sgd"):
            raise ConfigError("learner.arch_grad='finite_difference' is DARTS' formula for one SGD step: it needs "
                              f"learner.inner_steps=1 and learner.inner_optimizer='sgd' (got {self.inner_steps} and "
                              f"{self.inner_optimizer!r}); arch_grad='exact' takes any inner loop")
        if self.checkpoint_inner:
            raise ConfigError("learner.checkpoint_inner does not apply to darts")


class DARTS(MAML):
    """MAML over a searchable backbone whose inner loop adapts the weights and not α (module doc)."""

    def __init__(self, hp: DARTSConfig, model: nn.Module, kind: str):
        if ARCH not in dict(model.named_parameters()):
            raise ConfigError(f"learner darts searches an architecture: it needs a model with parameters {ARCH!r} "
                              f"(model.name='search-cnn'), not {type(model).__name__}")
        super().__init__(hp, model, kind)

    def adapted_names(self, params: Params) -> list[str]:
        return [k for k in params if k != ARCH]

    def inner_loss(self, params: Params, x: Tensor, y: Tensor, step: int, start: Params) -> tuple[Tensor, Tensor]:
        """The support loss; α enters the inner gradients' graph only for ``arch_grad = exact``."""
        if self.hp.arch_grad != "exact":
            params = {**params, ARCH: params[ARCH].detach()}
        return super().inner_loss(params, x, y, step, start)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.hp.arch_grad != "finite_difference":
            return super().meta_loss(batch)
        params = self.meta_parameters()
        names = self.adapted_names(params)
        executor = resolve_executor(self.hp.executor, (batch.support_x, batch.query_x), (0, 0))
        xi, first_order = self.hp.inner_lr, self.first_order_now()

        def support_loss(p: Params, sx: Tensor, sy: Tensor) -> Tensor:
            return task_loss(self.kind, self.forward_task(p, sx, 0), sy)

        def one_task(sx, sy, qx, qy):
            (adapted,), *_ = self.inner_loop(params, lambda t: (sx, sy), 1, first_order, keep=(1,))
            pred = self.forward_task(adapted, qx, query_step(1))
            loss = task_loss(self.kind, pred, qy)
            fixed = detached(adapted)
            v = torch.func.grad(lambda f: task_loss(self.kind, self.forward_task({**fixed, **f}, qx, query_step(1)), qy))(
                {k: fixed[k] for k in names})
            norm = torch.sqrt(sum(g.square().sum() for g in v.values()))
            eps = self.hp.fd_scale / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            w = {k: params[k].detach() for k in names}
            plus = support_loss({**params, **{k: w[k] + eps * v[k] for k in names}}, sx, sy)
            minus = support_loss({**params, **{k: w[k] - eps * v[k] for k in names}}, sx, sy)
            return loss - xi * (plus - minus) / (2 * eps), loss.detach(), task_metric(self.kind, pred.detach(), qy)

        objectives, losses, metrics = map_tasks(one_task, executor, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return objectives.mean(), {"loss": losses.mean(), metric_name(self.kind): metrics.mean()}


@LEARNERS.register("darts", DARTSConfig)
def make_darts(hp: DARTSConfig, build_model, task) -> DARTS:
    """DARTS over tasks: a searchable backbone's architecture and initialisation meta-learned (MetaNAS)."""
    return DARTS.for_task(hp, build_model, task)
