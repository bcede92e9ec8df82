"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task i of the meta-batch, k steps of an inner optimizer (SGD, momentum or Adam:
inner_optim.py) from θ on mini-batches of the task's examples give θ'_i; the meta-gradient is

    g = θ − mean_i θ'_i,

delivered through the one contract every learner shares: ``meta_loss`` returns the objective
½ ‖θ − sg(mean_i θ'_i)‖² (sg: no gradient), whose gradient is exactly g. The shared loop's outer
SGD with lr ε (``train.optimizer = "sgd"``, ``train.lr`` = the meta step size) is then the
paper's update θ ← θ + ε (mean_i θ'_i − θ), and ``train.lr_schedule = "linear"`` anneals ε to 0
as the reference code does.

Reptile has no support/query split in meta-training: it trains on all of a task's labelled
examples (support and query together, so task.shots + task.queries is the reference code's
``--train-shots``). Inner mini-batches of ``inner_batch`` examples are consecutive chunks of
reshuffled passes over them (sampling without replacement, as the reference; torch's global
RNG, which the training loop seeds per iteration). The inner Adam has β2 = 0.999, ε = 1e-8 and
β1 = ``adam_beta1`` (the reference: 0). The inner optimizer's state (Adam: m, v and the step
count of the bias correction) either starts afresh for every task (``adam_state =
"per_task"``) or is carried (``"carried"``, as the reference code's single Adam): every task
starts from the learner's stored state, which each meta-step replaces by the mean of the
tasks' final states (summed over task chunks and torch.distributed ranks like the gradients,
then divided by the number of tasks: ``task_sums`` / ``end_meta_step``) and advances by
``inner_steps``; evaluation starts from it without changing it. The stored state is part of the
learner's state_dict (checkpoints).

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

from ..config import choice, nonnegative, positive
from ..registry import LEARNERS
from ..tasks.batch import TaskBatch
from .base import metric_name
from .executors import EXECUTORS, map_tasks
from .functional import FunctionalLearner, Params, detached
from .inner_optim import INNER_OPTIMIZERS, InnerOptimizerConfig


@dataclass
class ReptileConfig(InnerOptimizerConfig):
    inner_optimizer: str = choice("adam", INNER_OPTIMIZERS)
    inner_lr: float = positive(0.001)
    adam_beta1: float = nonnegative(0.0)  # the reference code's Adam(beta1=0)
    inner_steps: int = positive(5)  # k, during meta-training
    inner_batch: int = nonnegative(10)  # examples per inner step; 0 = all of them every step
    eval_steps: int = nonnegative(50)  # inner steps at test time
    eval_inner_batch: int = nonnegative(5)  # support examples per test-time step; 0 = all
    transductive: bool = False
    # "carried": one inner optimizer state across tasks, as the reference (SGD has none to carry)
    adam_state: str = choice("per_task", ("per_task", "carried"))
    executor: str = choice("auto", EXECUTORS)  # vmap | loop | auto (executors.resolve_executor)


def minibatch_indices(tasks: int, n: int, steps: int, batch: int, device=None) -> Tensor:
    """Example indices of each inner step, long [tasks, steps, batch or n]: consecutive chunks of
    independently reshuffled passes over 0..n-1 (torch's global RNG); batch = 0: all n in order."""
    if batch == 0:
        return torch.arange(n, device=device).expand(tasks, steps, n)
    passes = -(-steps * batch // n)
    order = torch.rand(tasks, passes, n, device=device).argsort(-1).reshape(tasks, -1)
    return order[:, : steps * batch].reshape(tasks, steps, batch)


def _state_key(optimizer: str, part: str, name: str) -> str:
    """Buffer name of one tensor of the carried inner-optimizer state (e.g. Adam's "m" of ``name``)."""
    return f"inner_{optimizer}_{part}:{name.replace('.', ':')}"


class Reptile(FunctionalLearner):
    """Reptile over any backbone with a head; tasks vectorised with torch.func.vmap."""

    def __init__(self, hp, model, kind: str):
        super().__init__(hp, model, kind)
        self.carries_state = hp.adam_state == "carried"
        if self.carries_state:
            template = self.inner_optimizer.init(detached(self.meta_parameters()))
            self._parts = [(part, name) for part, sub in template.items() if isinstance(sub, dict) for name in sub]
            for part, name in self._parts:
                self.register_buffer(_state_key(hp.inner_optimizer, part, name), torch.zeros_like(template[part][name]))
                self.register_buffer("sum_" + _state_key(hp.inner_optimizer, part, name),
                                     torch.zeros_like(template[part][name]), persistent=False)
            self.register_buffer(f"inner_{hp.inner_optimizer}_steps", torch.zeros((), dtype=torch.long))
            self.register_buffer("sum_tasks", torch.zeros((), dtype=torch.long), persistent=False)

    def _buffer(self, part: str, name: str, prefix: str = "") -> Tensor:
        return getattr(self, prefix + _state_key(self.hp.inner_optimizer, part, name))

    def start_state(self) -> dict | None:
        """The inner optimizer state every task starts from: the carried one, or None (fresh per task)."""
        if not self.carries_state:
            return None
        state: dict = {}
        for part, name in self._parts:
            state.setdefault(part, {})[name] = self._buffer(part, name)
        if self.hp.inner_optimizer == "adam":
            state["t"] = getattr(self, "inner_adam_steps")
        return state

    def run_tasks(self, x: Tensor, y: Tensor, steps: int, batch: int, keep: tuple[int, ...]):
        """Per-task parameters ([B, *shape] each) after each step count in ``keep``, the mean
        inner loss and metric per task [B], and each task's final optimizer state tensors
        ({part: {name: [B, *shape]}}). x [B, N, ...], y [B, N]; no graph to θ."""
        params = detached(self.meta_parameters())
        idx = minibatch_indices(x.shape[0], x.shape[1], steps, batch, x.device)
        start = self.start_state()

        def one(xt, yt, it):
            kept, losses, metrics, state = self.inner_loop(params, lambda t: (xt[it[t]], yt[it[t]]), steps, True, start, keep)
            stats = (torch.stack(losses).mean(), torch.stack(metrics).mean()) if losses else ()
            return kept, stats, {part: sub for part, sub in state.items() if isinstance(sub, dict)}

        with torch.no_grad():
            return map_tasks(one, self.hp.executor, x, y, idx)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """½ ‖θ − sg(mean_i θ'_i)‖², whose gradient is θ − mean_i θ'_i; stats: inner mini-batch loss and metric."""
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        steps = self.hp.inner_steps
        (adapted,), (loss, metric), final = self.run_tasks(x, y, steps, self.hp.inner_batch, (steps,))
        if self.carries_state:
            with torch.no_grad():
                for part, name in self._parts:
                    self._buffer(part, name, "sum_").add_(final[part][name].sum(0))
                self.sum_tasks.add_(len(batch))
        objective = sum(0.5 * (p - adapted[k].mean(0)).square().sum() for k, p in self.meta_parameters().items())
        return objective, {"loss": loss.mean(), metric_name(self.kind): metric.mean()}

    def task_sums(self) -> list[Tensor]:
        if not self.carries_state:
            return []
        return [self._buffer(part, name, "sum_") for part, name in self._parts] + [self.sum_tasks]

    @torch.no_grad()
    def end_meta_step(self) -> None:
        """The carried state becomes the mean of the meta-step's tasks' final states."""
        if not self.carries_state or self.sum_tasks <= 0:
            return
        for part, name in self._parts:
            total = self._buffer(part, name, "sum_")
            self._buffer(part, name).copy_(total / self.sum_tasks)
            total.zero_()
        self.sum_tasks.zero_()
        getattr(self, f"inner_{self.hp.inner_optimizer}_steps").add_(self.hp.inner_steps)

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
        (params,), _, _ = self.run_tasks(support_x, support_y, steps, self.hp.eval_inner_batch, (steps,))
        return lambda query_x: self.predict(params, support_x, query_x)

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions after 0, inner_steps and eval_steps inner steps (one run per task)."""
        counts = tuple(sorted({0, min(self.hp.inner_steps, self.hp.eval_steps), self.hp.eval_steps}))
        kept, _, _ = self.run_tasks(batch.support_x, batch.support_y, counts[-1], self.hp.eval_inner_batch, counts)
        return {self.step_label(c): self.predict(p, batch.support_x, batch.query_x) for c, p in zip(counts, kept)}


@LEARNERS.register("reptile", ReptileConfig)
def make_reptile(hp: ReptileConfig, build_model, task) -> Reptile:
    """Reptile: move the initialisation toward task-adapted weights (SGD, momentum or Adam inner loop)."""
    return Reptile.for_task(hp, build_model, task)
