"""TaskBatch — the one tensor layout every learner consumes — and the task-source protocol."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """B tasks of identical shape, stacked along a leading task dimension.

    support_x: [B, S, *input_shape]    support_y: [B, S] class labels (long) or [B, S, D] targets
    query_x:   [B, Q, *input_shape]    query_y:   [B, Q] or [B, Q, D]
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device=None, dtype=None) -> "TaskBatch":
        """Move to ``device``; cast floating-point tensors to ``dtype`` (labels keep theirs)."""

        def move(t: Tensor) -> Tensor:
            t = t.to(device, non_blocking=True)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return TaskBatch(*(move(getattr(self, f.name)) for f in fields(self)))

    def __getitem__(self, index) -> "TaskBatch":
        """Select tasks: ``batch[2:5]`` is a TaskBatch of 3 tasks."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TaskBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def chunks(self, size: int) -> list["TaskBatch"]:
        """Split into consecutive TaskBatches of at most ``size`` tasks."""
        return [self[i : i + size] for i in range(0, len(self), size)]

    @staticmethod
    def cat(batches: list["TaskBatch"]) -> "TaskBatch":
        return TaskBatch(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TaskBatch)))


@dataclass(frozen=True)
class TaskSpec:
    """What a model must know about a task family; saved in checkpoints so that a trained
    learner can be rebuilt without its training data."""

    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int
    background: float | None = None  # median training pixel in [0, 1] (image sources only)

    @staticmethod
    def of(source) -> "TaskSpec":
        background = getattr(source, "background", None)
        return TaskSpec(source.kind, tuple(source.input_shape), int(source.n_outputs),
                        None if background is None else float(background))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "input_shape": list(self.input_shape), "n_outputs": self.n_outputs,
                "background": self.background}


class TaskSource(Protocol):
    """Where tasks come from.

    ``kind`` is "regression" or "classification"; ``input_shape`` the shape of one example;
    ``n_outputs`` the model's output width (D for regression, N ways for classification).

    ``sample`` draws every random number from ``generator`` and creates its tensors on
    ``generator.device``. A source may also offer ``to(device)`` (optional): it moves its data
    there and returns itself; from then on a generator on ``device`` makes ``sample`` draw the
    whole batch on ``device``, with no host<->device copy and no host synchronisation (no
    ``.item()``, ``.tolist()``, ``int``/``bool`` of a tensor, nor branching on a tensor's value).
    The same code runs on every device; a CPU generator gives the same tasks as ever. The
    training loop calls :func:`place_source`.
    """

    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """Draw ``batch_size`` tasks; the same generator state always gives the same tasks."""
        ...


def place_source(source, device: torch.device):
    """(source, the device its tasks are drawn on): a source offering ``to`` moves to ``device``
    and draws there; one without stays on the CPU, drawing with a CPU generator, and its batches
    are copied to ``device`` as they come."""
    if callable(getattr(source, "to", None)):
        return source.to(device), torch.device(device)
    return source, torch.device("cpu")
