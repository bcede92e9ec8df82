"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task i of the meta-batch, k steps of SGD or Adam from θ on mini-batches of the task's
examples give θ'_i; the meta-gradient written into ``.grad`` is

    g = θ − mean_i θ'_i,

so the shared loop's outer SGD with lr ε (``train.optimizer = "sgd"``, ``train.lr`` = the
meta step size) is the paper's update θ ← θ + ε (mean_i θ'_i − θ), and
``train.lr_schedule = "linear"`` anneals ε to 0 as the reference code does.

Reptile has no support/query split in meta-training: it trains on all of a task's labelled
examples (support and query together, so task.shots + task.queries is the reference code's
``--train-shots``). Inner mini-batches of ``inner_batch`` examples are consecutive chunks of
reshuffled passes over them (sampling without replacement, as the reference). The inner Adam
is functional, with β2 = 0.999, ε = 1e-8 and β1 = ``adam_beta1`` (the reference: 0). Its state
(m, v and the step count of the bias correction) either starts at zero for every task
(``adam_state = "per_task"``) or is carried (``"carried"``, as the reference code's single
Adam): every task starts from the learner's stored state, which meta-training then replaces by
the mean of the tasks' final states and advances by ``inner_steps``; evaluation starts from it
without changing it. The stored state is part of the learner's state_dict (checkpoints); under
torch.distributed each rank carries the mean over its own tasks.

Evaluation adapts on the support set for ``eval_steps`` steps of ``eval_inner_batch`` examples
and reports the query accuracy after 0, ``inner_steps`` and ``eval_steps`` steps. BatchNorm
always normalises with the statistics of the batch it is given: ``transductive = true`` predicts
each task's whole query set as one batch (statistics shared by the queries); otherwise each
query is predicted in a batch made of the support set plus that query alone, as the reference
code's non-transductive mode (vectorised over queries; Q·(S+1) images per task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import HParams, choice, nonnegative, positive
from ..errors import ConfigError
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name, task_loss, task_metric
from .executors import EXECUTORS, map_tasks
from .maml import FunctionalLearner, Params

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


@dataclass
class ReptileConfig(HParams):
    inner_optimizer: str = choice("adam", ("adam", "sgd"))
    inner_lr: float = positive(0.001)
    adam_beta1: float = nonnegative(0.0)
    inner_steps: int = positive(5)  # k, during meta-training
    inner_batch: int = nonnegative(10)  # examples per inner step; 0 = all of them every step
    eval_steps: int = nonnegative(50)  # inner steps at test time
    eval_inner_batch: int = nonnegative(5)  # support examples per test-time step; 0 = all
    transductive: bool = False
    adam_state: str = choice("per_task", ("per_task", "carried"))  # "carried": one state across tasks, as the reference
    executor: str = choice("auto", EXECUTORS)  # vmap | loop | auto (executors.resolve_executor)

    def validate(self):
        if self.adam_beta1 >= 1:
            raise ConfigError(f"learner.adam_beta1 must be < 1, got {self.adam_beta1}")


def minibatch_indices(tasks: int, n: int, steps: int, batch: int, device=None) -> Tensor:
    """Example indices of each inner step, long [tasks, steps, batch or n]: consecutive chunks of
    independently reshuffled passes over 0..n-1 (torch's global RNG); batch = 0: all n in order."""
    if batch == 0:
        return torch.arange(n, device=device).expand(tasks, steps, n)
    passes = -(-steps * batch // n)
    order = torch.rand(tasks, passes, n, device=device).argsort(-1).reshape(tasks, -1)
    return order[:, : steps * batch].reshape(tasks, steps, batch)


def _moment_key(moment: str, name: str) -> str:
    """Buffer name of the carried Adam moment ("m" or "v") of parameter ``name``."""
    return f"inner_adam_{moment}:{name.replace('.', ':')}"


class Reptile(FunctionalLearner):
    """Reptile over any backbone with a head; tasks vectorised with torch.func.vmap."""

    def __init__(self, hp, model, kind: str):
        super().__init__(hp, model, kind)
        if hp.inner_optimizer == "adam" and hp.adam_state == "carried":
            for name, p in model.named_parameters():
                for moment in ("m", "v"):
                    self.register_buffer(_moment_key(moment, name), torch.zeros_like(p.detach()))
            self.register_buffer("inner_adam_steps", torch.zeros((), dtype=torch.long))

    def carried_adam(self) -> tuple[dict[str, tuple[Tensor, Tensor]] | None, int]:
        """The stored inner Adam state ({name: (m, v)}, steps taken), or (None, 0) when per task."""
        if not hasattr(self, "inner_adam_steps"):
            return None, 0
        names = [k for k, _ in self.model.named_parameters()]
        state = {k: (getattr(self, _moment_key("m", k)), getattr(self, _moment_key("v", k))) for k in names}
        return state, int(self.inner_adam_steps)

    def inner_loop(self, params: Params, x: Tensor, y: Tensor, idx: Tensor, keep: tuple[int, ...],
                   start: tuple[dict[str, tuple[Tensor, Tensor]] | None, int] = (None, 0)):
        """Train on one task: step t uses examples idx[t] of x [N, ...], y [N].

        idx: long [steps, b]; start: the Adam state to begin from (see ``carried_adam``).
        Returns (the parameters after each step count in ``keep``, the mini-batch loss [steps]
        and metric [steps] before each step, the final Adam moments {name: (m, v)}).
        """
        lr, b1 = self.hp.inner_lr, self.hp.adam_beta1

        def batch_loss(p, xb, yb):
            pred = self.forward_task(p, xb)
            return task_loss(self.kind, pred, yb), task_metric(self.kind, pred.detach(), yb)

        carried, t0 = start
        moments = dict(carried) if carried else {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
        kept = [params] if 0 in keep else []
        losses, metrics = [], []
        for t in range(1, idx.shape[0] + 1):
            xb, yb = x[idx[t - 1]], y[idx[t - 1]]
            grads, (loss, metric) = torch.func.grad_and_value(batch_loss, has_aux=True)(params, xb, yb)
            losses.append(loss.detach())
            metrics.append(metric)
            if self.hp.inner_optimizer == "sgd":
                params = {k: p - lr * grads[k] for k, p in params.items()}
            else:
                new = {}
                for k, p in params.items():
                    m, v = moments[k]
                    m, v = b1 * m + (1 - b1) * grads[k], ADAM_BETA2 * v + (1 - ADAM_BETA2) * grads[k].square()
                    moments[k] = (m, v)
                    denom = (v / (1 - ADAM_BETA2 ** (t0 + t))).sqrt() + ADAM_EPS
                    new[k] = p - lr * (m / (1 - b1 ** (t0 + t))) / denom
                params = new
            if t in keep:
                kept.append(params)
        return kept, losses, metrics, moments

    def meta_parameters(self) -> Params:
        return dict(self.model.named_parameters())

    def adapted_parameters(self, x: Tensor, y: Tensor, steps: int, batch: int, keep: tuple[int, ...]):
        """Per-task parameters ([B, *shape] each) after each step count in ``keep``, the mean
        inner loss and metric per task [B], and each task's final Adam moments ({name: (m, v)},
        [B, *shape] each). x [B, N, ...], y [B, N]."""
        params = {k: p.detach() for k, p in self.meta_parameters().items()}
        idx = minibatch_indices(x.shape[0], x.shape[1], steps, batch, x.device)
        start = self.carried_adam()

        def one(xt, yt, it):
            kept, losses, metrics, moments = self.inner_loop(params, xt, yt, it, keep, start)
            stats = (torch.stack(losses).mean(), torch.stack(metrics).mean()) if losses else ()
            return kept, stats, moments

        return map_tasks(one, self.hp.executor, x, y, idx)

    def accumulate_meta_grad(self, batch: TaskBatch, weight: float = 1.0) -> dict[str, Tensor]:
        """Add weight · (θ − mean_i θ'_i) to ``.grad``; stats: inner mini-batch loss and metric."""
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        steps = self.hp.inner_steps
        (adapted,), (loss, metric), moments = self.adapted_parameters(x, y, steps, self.hp.inner_batch, (steps,))
        with torch.no_grad():
            for k, p in self.meta_parameters().items():
                g = weight * (p - adapted[k].mean(0))
                p.grad = g if p.grad is None else p.grad + g
            if hasattr(self, "inner_adam_steps"):  # carried state: the mean of the tasks' final states
                for k, (m, v) in moments.items():
                    getattr(self, _moment_key("m", k)).copy_(m.mean(0))
                    getattr(self, _moment_key("v", k)).copy_(v.mean(0))
                self.inner_adam_steps += steps
        return {"loss": loss.mean(), metric_name(self.kind): metric.mean()}

    def predict(self, params: Params, support_x: Tensor, query_x: Tensor) -> Tensor:
        """Query predictions [B, Q, out] with per-task params ([B, *shape] each)."""

        names = list(params)

        def one(sx, qx, *values):
            p = dict(zip(names, values))
            if self.hp.transductive:
                return self.forward_task(p, qx)
            alone = torch.cat([sx.expand(qx.shape[0], *sx.shape), qx[:, None]], 1)  # [Q, S+1, ...]
            return torch.func.vmap(lambda b: self.forward_task(p, b)[-1])(alone)

        return map_tasks(one, self.hp.executor, support_x, query_x, *params.values())

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None):
        """``steps`` (default eval_steps) inner steps on the support set -> query_x [B, Q, ...] -> [B, Q, out]."""
        steps = self.hp.eval_steps if steps is None else steps
        with torch.no_grad():
            (params,), _, _ = self.adapted_parameters(support_x, support_y, steps, self.hp.eval_inner_batch, (steps,))
        return lambda query_x: self.predict(params, support_x, query_x)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions after 0, inner_steps and eval_steps inner steps (one run per task)."""
        counts = tuple(sorted({0, min(self.hp.inner_steps, self.hp.eval_steps), self.hp.eval_steps}))
        kept, _, _ = self.adapted_parameters(batch.support_x, batch.support_y, counts[-1], self.hp.eval_inner_batch, counts)
        return {self.step_label(c): self.predict(p, batch.support_x, batch.query_x) for c, p in zip(counts, kept)}


@LEARNERS.register("reptile", ReptileConfig)
def make_reptile(hp: ReptileConfig, build_model, task) -> Reptile:
    """Reptile: move the initialisation toward task-adapted weights (SGD or Adam inner loop)."""
    return Reptile.for_task(hp, build_model, task)
