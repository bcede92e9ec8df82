"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit Gradients").

Each task's adapted parameters approximately solve a proximal problem around θ,

    φ*(θ) = argmin_φ  L_support(φ) + λ/2 ‖φ − θ‖²,

found by ``inner_steps`` steps of the inner optimizer on that regularised loss (the functional
base's ``inner_loss`` hook; no graph is kept through them). By the implicit function theorem
dφ*/dθ = (I + H/λ)⁻¹ with H = ∇²L_support(φ*), so the task's meta-gradient is

    g = (I + H/λ)⁻¹ ∇L_query(φ*),

solved by ``cg_steps`` steps of conjugate gradient on Hessian-vector products (H never formed;
a fixed number of steps, so it vectorises over tasks). Memory is that of one inner step, not of
the unrolled loop. ``first_order = true`` (or ``cg_steps = 0``) uses g = ∇L_query(φ*).

The authors' code (aravindr93/imaml_dev) departs from this in two ways, both available here
and both taken by the Omniglot presets, because the exact form does not learn there (docs/results.md):

* ``inner_prox = false``: the inner steps minimise L_support alone (from θ), then one gradient
  step on the proximal term pulls φ back towards θ, φ ← θ + (1 − α λ)(φ − θ); evaluation adapts
  without the proximal term (the reference's test protocol, λ = 0). With λ = 2 in every step,
  16 steps of α = 0.1 are unstable once H's largest eigenvalue passes 2/α − λ = 18, which it
  does on Omniglot.
* damping: the CG matrix is (1 + ``cg_damping``) I + H / (λ + ``lam_damping``) (reference:
  1 and 10), positive definite where H is mildly indefinite; both 0 give the exact (I + H/λ).

The meta-gradient is delivered through the one contract: ``meta_loss`` returns the surrogate
Σ θ · sg(mean_i g_i), whose gradient in θ is mean_i g_i. Evaluation (MAML's) adapts with the
same regularised inner loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import nonnegative, positive
from ..errors import ConfigError
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name, task_loss, task_metric
from .executors import map_tasks, resolve_executor
from .functional import Params, detached, query_step
from .maml import MAML, MAMLConfig


@dataclass
class IMAMLConfig(MAMLConfig):
    inner_lr: float = positive(0.1)
    inner_steps: int = positive(16)
    eval_steps: int = nonnegative(16)
    lam: float = positive(2.0)  # λ, the proximal regularisation strength
    cg_steps: int = nonnegative(5)  # conjugate-gradient steps per task; 0: first order
    inner_prox: bool = True  # λ/2‖φ − θ‖² in every inner step; false: the reference's pull-back step (module doc)
    cg_damping: float = nonnegative(0.0)  # CG matrix (1 + cg_damping) I + H / (λ + lam_damping)
    lam_damping: float = nonnegative(0.0)

    def validate(self):
        super().validate()
        if self.checkpoint_inner:
            raise ConfigError("learner.checkpoint_inner does not apply to imaml (its inner loop keeps no graph)")


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def conjugate_gradient(matvec, b: Params, steps: int) -> Params:
    """x ≈ A⁻¹ b for a symmetric positive-definite A given as ``matvec``, from x = 0, in ``steps``
    CG steps (exact after dim(b) steps in exact arithmetic); a zero residual stays put."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r, p = dict(b), dict(b)
    rr = _dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / torch.where(pap > 0, pap, 1.0), 0.0)
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        p = {k: r[k] + beta * p[k] for k in r}
        rr = rr_new
    return x


class IMAML(MAML):
    """iMAML over any backbone (module doc); tasks vectorised with torch.func.vmap."""

    def inner_loss(self, params: Params, x: Tensor, y: Tensor, step: int, start: Params) -> tuple[Tensor, Tensor]:
        loss, pred = super().inner_loss(params, x, y, step, start)
        if not self.hp.inner_prox:
            return loss, pred
        prox = sum((params[k] - start[k]).square().sum() for k in self.adapted_names(params))
        return loss + 0.5 * self.hp.lam * prox, pred

    def pulled_back(self, phi: Params, theta: Params) -> Params:
        """φ after one step of lr α on λ/2‖φ − θ‖²: θ + (1 − α λ)(φ − θ) (``inner_prox = false``)."""
        keep = 1 - self.hp.inner_lr * self.hp.lam
        return {k: theta[k] + keep * (v - theta[k]) if k in self.adapted_names(phi) else v for k, v in phi.items()}

    def implicit_gradient(self, theta: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
        """One task: (query loss, query metric, g = ((1 + cg_damping) I + H/(λ + lam_damping))⁻¹ ∇L_query(φ*)), g keyed like θ."""
        steps = self.hp.inner_steps
        (phi,), *_ = self.inner_loop(theta, lambda t: (sx, sy), steps, first_order=True, keep=(steps,))
        if not self.hp.inner_prox:
            phi = self.pulled_back(phi, theta)
        names = self.adapted_names(phi)
        rest = {k: v for k, v in phi.items() if k not in names}
        q_step = query_step(steps)

        def query_loss(fast: Params):
            pred = self.forward_task({**rest, **fast}, qx, q_step)
            return task_loss(self.kind, pred, qy), pred

        fast = {k: phi[k] for k in names}
        g, (loss, pred) = torch.func.grad_and_value(query_loss, has_aux=True)(fast)
        if not self.hp.first_order and self.hp.cg_steps:
            support_grad = torch.func.grad(lambda f: task_loss(self.kind, self.forward_task({**rest, **f}, sx, 0), sy))

            _, hvp = torch.func.vjp(support_grad, fast)  # H is symmetric: vᵀH = (Hv)ᵀ

            shift, scale = 1 + self.hp.cg_damping, 1 / (self.hp.lam + self.hp.lam_damping)

            def matvec(v: Params) -> Params:
                (hv,) = hvp(v)
                return {k: shift * v[k] + scale * hv[k] for k in v}

            g = conjugate_gradient(matvec, g, self.hp.cg_steps)
        full = {k: g[k] if k in g else torch.zeros_like(v) for k, v in theta.items()}
        return loss.detach(), task_metric(self.kind, pred.detach(), qy), full

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Σ θ · sg(mean_i g_i) (its gradient is the mean implicit meta-gradient); stats: query loss and metric."""
        theta = self.meta_parameters()
        executor = resolve_executor(self.hp.executor, (batch.support_x, batch.query_x), (0, 0))
        fixed = detached(theta)
        losses, metrics, grads = map_tasks(lambda *t: self.implicit_gradient(fixed, *t), executor,
                                           batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        surrogate = sum((p * grads[k].mean(0).detach()).sum() for k, p in theta.items())
        return surrogate, {"loss": losses.mean(), metric_name(self.kind): metrics.mean()}


@LEARNERS.register("imaml", IMAMLConfig)
def make_imaml(hp: IMAMLConfig, build_model, task) -> IMAML:
    """iMAML: implicit meta-gradients through a proximal inner loop (conjugate gradient on Hessian-vector products)."""
    return IMAML.for_task(hp, build_model, task)
