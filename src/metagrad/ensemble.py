"""Ensembles: several trained classifiers scored together on the same held-out tasks.

``metagrad eval RUN RUN2 [...]`` evaluates each run and their ensemble, which sums the members'
log-probabilities, log softmax(logits_m) [B, Q, N], over the members m (with several views of a
query, ``evaluate`` then sums over the views too). With three runs or more it also scores the
ensembles of the first 2, 3, ... runs on the same queries, so one evaluation shows what each added
member buys. The test tasks come from the first run's config;
every member must have been trained on the same task settings, except where the data are stored
and how each image is drawn (``DRAWING_KEYS``: e.g. a 32 px and a 64 px network). Members that
differ in those read the same tasks drawn their own way (:class:`SameEpisodes`), so every member
sees the images as it was trained to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError, DataError
from .tasks.batch import TaskBatch

#: task settings that say where the data are kept, not what a task is: they may differ between members
LOCATION_KEYS = ("data_dir", "cache_dir", "download")
#: task settings that decide only how each image is drawn in pixels, not which images a task holds
DRAWING_KEYS = ("image_size", "crop")


def check_members(names: list[str], cfgs: list, learners: list) -> None:
    """ConfigError unless the runs can be ensembled: distinct, classifiers, on the same task settings."""
    if len(set(names)) < len(names):
        raise ConfigError(f"{next(n for n in names if names.count(n) > 1)} is given twice; an ensemble needs distinct runs")
    for name in names:
        if name in Ensemble.row_names(len(names)):
            raise ConfigError(f"a run given as {name!r} would share its name with an ensemble's row; write ./{name}")
    for name, learner in zip(names, learners):
        if learner.kind != "classification":
            raise ConfigError(f"{name} is a {learner.kind} run; only classifiers can be ensembled (their log-probabilities are summed)")
    first = task_settings(cfgs[0])
    for name, cfg in zip(names[1:], cfgs[1:]):
        other = task_settings(cfg)
        for key in sorted(first.keys() | other.keys()):
            if first.get(key) != other.get(key):
                raise ConfigError(f"{name} has task.{key}={other.get(key)!r} but {names[0]} has {first.get(key)!r}; an ensemble's "
                                  f"runs must share their task settings (--set task.{key}=VALUE applies to every run)")


def task_settings(cfg) -> dict:
    """The task section of a run's config that fixes what its tasks are (LOCATION_KEYS and DRAWING_KEYS left out)."""
    return {key: value for key, value in cfg.to_dict()["task"].items() if key not in LOCATION_KEYS + DRAWING_KEYS}


def drawing_groups(cfgs: list) -> list[int]:
    """For each run, the index of its drawing (its ``DRAWING_KEYS`` values) among the distinct
    drawings in order of first appearance: [0, 0, 1] for two 32 px runs and a 64 px one."""
    seen: dict[tuple, int] = {}
    drawing = [tuple(cfg.to_dict()["task"].get(key) for key in DRAWING_KEYS) for cfg in cfgs]
    return [seen.setdefault(d, len(seen)) for d in drawing]


def eval_chunk(cfgs: list) -> int:
    """The ``train.eval_chunk`` an ensemble is scored with: the smallest of its runs' (0, a whole draw,
    counts as the largest), so a member that needs small chunks to fit in memory gets them."""
    return min((cfg.train.eval_chunk for cfg in cfgs), key=lambda c: c or math.inf)


@dataclass
class Drawings:
    """The same B tasks drawn in several ways (e.g. image sizes): ``parts[d]`` is a TaskBatch.
    Indexing, ``to`` and the labels behave as a TaskBatch's, so ``evaluation.evaluate`` scores it as one."""

    parts: list[TaskBatch]

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index) -> "Drawings":
        return Drawings([p[index] for p in self.parts])

    def to(self, device=None, dtype=None) -> "Drawings":
        return Drawings([p.to(device, dtype) for p in self.parts])

    @property
    def query_y(self) -> Tensor:
        return self.parts[0].query_y


class SameEpisodes:
    """A task source made of several sources that differ only in how they draw images: each
    ``sample`` lets every source draw from the same generator state and returns their batches
    as one :class:`Drawings`. It raises DataError unless all of them drew the same labels and
    used the same random numbers (so the same tasks)."""

    def __init__(self, sources: list):
        views = {getattr(s, "query_views", 1) for s in sources}
        if len(views) > 1:
            raise ConfigError(f"the runs give each query in {sorted(views)} views; an ensemble needs one number of views")
        self.sources, self.query_views = sources, views.pop()

    def sample(self, batch_size: int, generator: torch.Generator) -> Drawings:
        start, parts, ends = generator.get_state(), [], []
        for source in self.sources:
            generator.set_state(start)
            parts.append(source.sample(batch_size, generator))
            ends.append(generator.get_state())
        first = parts[0]
        for part, end in zip(parts[1:], ends[1:]):
            if not (torch.equal(end, ends[0]) and torch.equal(part.support_y, first.support_y)
                    and torch.equal(part.query_y, first.query_y)):
                raise DataError("the runs' task sources do not draw the same tasks from one seed, so they cannot be ensembled")
        return Drawings(parts)


class Ensemble(nn.Module):
    """What ``evaluation.evaluate`` scores for several classifiers: each member's headline logits
    [B, V*Q, N] under its name, under "ensemble of the first k" the sum of the first k members' log-softmaxes
    (2 <= k < M), and under "ensemble" (the headline) the sum over all M members."""

    kind = "classification"
    headline = "ensemble"
    trained_setting = None

    def __init__(self, names: list[str], learners: list, drawing: list[int] | None = None):
        """``drawing[m]``: which part of a :class:`Drawings` batch member m reads (default: a plain
        TaskBatch that every member reads)."""
        super().__init__()
        self.names, self.members = list(names), nn.ModuleList(learners)
        self.drawing = list(drawing) if drawing is not None else [0] * len(self.names)

    @classmethod
    def row_names(cls, members: int) -> list[str]:
        """The rows an ensemble of ``members`` runs adds to theirs: "ensemble of the first 2", ..., "ensemble"."""
        return [*(f"{cls.headline} of the first {k}" for k in range(2, members)), cls.headline]

    def eval_predictions(self, batch) -> dict[str, Tensor]:
        out = {}
        for name, member, d in zip(self.names, self.members, self.drawing):
            logits = member.eval_predictions(batch.parts[d] if isinstance(batch, Drawings) else batch)[member.headline]
            if isinstance(logits, tuple):  # scored against its own targets: nothing to sum
                raise ConfigError(f"{name}: its learner scores queries against its own targets, so it cannot be ensembled")
            out[name] = logits
        logp = [logits.log_softmax(-1) for logits in out.values()]
        summed, rows = logp[0], {}
        for name, member in zip(self.row_names(len(logp)), logp[1:]):  # after 2, 3, ..., M members
            summed = summed + member
            rows[name] = summed
        return {**out, **rows}
