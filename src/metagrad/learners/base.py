"""The meta-learner protocol every learner shares (see docs/architecture.md).

    base = learner.adapt(support_x, support_y)   # inner level: [B, S, ...] -> a base learner
    pred = base(query_x)                         # [B, Q, ...] -> [B, Q, n_outputs]
    objective, stats = learner.meta_loss(batch)  # outer level: the one meta-gradient contract

``meta_loss`` is the one way a learner delivers its meta-gradient: the gradient of ``objective``
with respect to the meta-parameters is the meta-gradient of the batch (the mean over its tasks).
For most learners the objective is the mean query loss; for Reptile it is ½ ‖θ − sg(mean θ')‖²
and for iMAML Σ θ · sg(mean g) (sg: no gradient), whose gradients are θ − mean θ' and mean g. The training loop, ``metagrad bench``, torch.distributed and
``train.compile`` all run it through ``step.MetaStep`` (backward of the objective per task
chunk, all-reduce, optimizer step), so no learner has a second path that could fall off the
compiled one. A learner that keeps state across meta-steps adds each task's contribution into ``task_sums()``
inside ``meta_loss`` (Reptile's carried inner Adam); the step sums them over chunks and ranks like
gradients, then calls ``end_meta_step()`` (which also advances MAML++'s epoch count). Evaluation uses
``eval_predictions`` and ``headline``; nothing outside learners/ knows which learner runs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.batch import TaskBatch

BaseLearner = Callable[[Tensor], Tensor]


def task_loss(kind: str, pred: Tensor, y: Tensor) -> Tensor:
    """Loss of one task's predictions. pred [N, out]; y [N] labels or [N, D] targets -> scalar."""
    if kind == "classification":
        return F.cross_entropy(pred, y)
    return F.mse_loss(pred, y)


def task_metric(kind: str, pred: Tensor, y: Tensor) -> Tensor:
    """Accuracy (classification) or mean squared error (regression), per task.
    pred [..., N, out]; y [..., N] or [..., N, D] -> [...]."""
    if kind == "classification":
        return (pred.argmax(-1) == y).to(pred.dtype).mean(-1)
    return (pred - y).square().mean(dim=(-2, -1))


def metric_name(kind: str) -> str:
    return "accuracy" if kind == "classification" else "mse"


def with_head_ways(learner: "MetaLearner", task) -> "MetaLearner":
    """Mark a learner whose model ends in one output per class of ``task`` as serving only tasks
    with that many classes (``fixed_ways``); regression learners are returned unchanged."""
    if task.kind == "classification":
        learner.fixed_ways = task.n_outputs
    return learner


class MetaLearner(nn.Module):
    """Base class. Subclasses implement ``adapt``; the default ``meta_loss`` is the mean query loss
    of the adapted base learner, differentiated by autograd."""

    #: key of ``eval_predictions`` that summaries report first
    headline: str = "adapted"
    #: key of ``eval_predictions`` that adapts as meta-training did (e.g. MAML's inner_steps), if any
    trained_setting: str | None = None
    #: the number of classes a fixed classifier head requires of every task (None: any)
    fixed_ways: int | None = None
    #: why ``meta_loss`` cannot be one torch.compile graph ("": it is one; tests/test_conformance.py
    #: holds every learner to its word, so a new graph break cannot slip in unnoticed)
    compile_break: str = ""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
        self.kind = kind

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """Mean loss over tasks and queries. pred [B, Q, out]; y [B, Q] or [B, Q, D] -> scalar."""
        return task_loss(self.kind, pred.flatten(0, 1), y.flatten(0, 1))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> BaseLearner:
        raise NotImplementedError("abstract: each learner defines adapt")

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """(objective, stats): a scalar whose gradient in the meta-parameters is the batch's
        meta-gradient, and detached scalar statistics ("loss" and the metric). Default: the mean
        query loss over the batch."""
        pred = self.adapt(batch.support_x, batch.support_y)(batch.query_x)
        loss = self.loss(pred, batch.query_y)
        return loss, {"loss": loss.detach(), metric_name(self.kind): task_metric(self.kind, pred.detach(), batch.query_y).mean()}

    def accumulate_meta_grad(self, batch: TaskBatch, weight: float = 1.0, objective=None) -> dict[str, Tensor]:
        """Add ``weight`` x the meta-gradient of ``batch`` to each meta-parameter's ``.grad``:
        backward of ``objective(batch)`` (default ``meta_loss``; step.MetaStep passes its compiled
        form). A learner without meta-parameters (k-NN on pixels) only computes the stats."""
        loss, stats = (objective or self.meta_loss)(batch)
        if loss.requires_grad:
            (loss * weight).backward()
        return stats

    def report(self) -> dict:
        """JSON-able facts about the trained learner that report.json records under "learner" and
        ``metagrad train`` prints (values that are not dicts), e.g. a searched architecture. Default: none."""
        return {}

    def task_sums(self) -> list[Tensor]:
        """Tensors ``meta_loss`` adds per-task contributions into, summed over ranks by the step
        before ``end_meta_step`` (default: none)."""
        return []

    def end_meta_step(self) -> None:
        """Called once after each optimizer step (after ``task_sums`` are summed over ranks)."""

    @torch.no_grad()
    def eval_predictions(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query predictions [B, Q, out] under each evaluation setting, keyed by a label.

        A value may instead be a pair (predictions [B, M, out], targets [B, M]) scored against
        its own targets, e.g. a sequence model's predictions within the support sequence."""
        return {self.headline: self.adapt(batch.support_x, batch.support_y)(batch.query_x)}
