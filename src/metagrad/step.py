"""One meta-training step — the one function the training loop, `metagrad bench` and
torch.distributed runs call, for every learner:

    optimizer.zero_grad()
    for each chunk of task_chunk tasks:  backward(weight · objective(chunk))    objective = learner.meta_loss,
    all-reduce the grads and learner.task_sums() over ranks                        or its torch.compile'd form
    clip, optimizer.step(), learner.end_meta_step()

``compile`` ("default" | "reduce-overhead") wraps exactly ``learner.meta_loss`` — what the
step runs — with torch.compile, for every learner. It first asks for one whole graph
(``fullgraph=True``); a learner whose objective has a graph break is compiled around it and
says so in one line, and one that cannot be compiled at all runs eagerly and says so in one
line: never silently.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .distributed import DistContext, all_reduce_grads, all_reduce_sum_
from .learners.base import MetaLearner
from .tasks.batch import TaskBatch

Objective = Callable[[TaskBatch], tuple[Tensor, dict[str, Tensor]]]
COMPILE_MODES = ("off", "default", "reduce-overhead")


class CompiledObjective:
    """``learner.meta_loss`` under torch.compile, falling back with one printed line (see module doc).

    ``frames`` counts the calls that ran compiled code (a test checks the loop calls this)."""

    def __init__(self, learner: MetaLearner, mode: str, backend=None, log: Callable[[str], None] = print):
        self.learner, self.mode, self.backend, self.log = learner, mode, backend, log
        self.name = type(learner).__name__
        self.fn = self._compile(fullgraph=True)
        self.state = "whole graph"  # -> "with graph breaks" -> "eager"
        self.frames = 0

    def _compile(self, fullgraph: bool):
        kwargs = {"backend": self.backend} if self.backend is not None else {"mode": None if self.mode == "default" else self.mode}
        return torch.compile(self.learner.meta_loss, fullgraph=fullgraph, **kwargs)

    def __call__(self, batch: TaskBatch):
        from torch._dynamo import exc

        if self.state == "eager":
            return self.learner.meta_loss(batch)
        try:
            out = self.fn(batch)
            self.frames += 1
            return out
        except exc.Unsupported as e:
            if self.state != "whole graph":
                raise
            self.log(f"train.compile: {self.name}.meta_loss has a graph break ({_first_line(e)}); compiled around it")
            self.fn, self.state = self._compile(fullgraph=False), "with graph breaks"
        except exc.TorchDynamoException as e:
            self.log(f"train.compile: {self.name}.meta_loss could not be compiled ({_first_line(e)}); running it eagerly")
            self.state = "eager"
        return self(batch)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class MetaStep:
    """One outer step on this rank's ``batch`` (a share of ``total_tasks`` over all ranks).

    Each chunk of ``task_chunk`` tasks is back-propagated and freed before the next, so peak
    memory scales with the chunk, not the meta-batch. Calling it returns this rank's mean stats
    (tensors; nothing here waits for the device)."""

    def __init__(self, learner: MetaLearner, optimizer: torch.optim.Optimizer, task_chunk: int = 0,
                 grad_clip: float = 0.0, ctx: DistContext = DistContext(), compile: str = "off",
                 backend=None, log: Callable[[str], None] = print):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.learner, self.optimizer = learner, optimizer
        self.task_chunk, self.grad_clip, self.ctx = task_chunk, grad_clip, ctx
        self.objective: Objective = learner.meta_loss if compile == "off" and backend is None else \
            CompiledObjective(learner, compile, backend, log)
        self.params = [p for p in learner.parameters() if p.requires_grad]

    def __call__(self, batch: TaskBatch, total_tasks: int) -> dict[str, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        chunks = batch.chunks(self.task_chunk) if self.task_chunk else [batch]
        stats: dict[str, Tensor] = {}
        for chunk in chunks:
            part = self.learner.accumulate_meta_grad(chunk, len(chunk) / total_tasks, self.objective)
            for k, v in part.items():
                stats[k] = stats.get(k, 0.0) + v * (len(chunk) / len(batch))
        all_reduce_grads(self.params, self.ctx)
        all_reduce_sum_(self.learner.task_sums(), self.ctx)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.learner.end_meta_step()
        return stats
