"""Turn a validated Config into live objects: task sources and a meta-learner."""

from __future__ import annotations

import torch

from .config import Config
from .learners.base import MetaLearner
from .registry import LEARNERS, MODELS, TASKS


def build_task(cfg: Config, split: str):
    """The task source of ``split`` ("train", "val" or "test")."""
    return TASKS.get(cfg.task.name).factory(cfg.task.hp, split=split)


def build_learner(cfg: Config, task) -> MetaLearner:
    """The configured learner over the configured backbone, shaped for ``task``; seeded by train.seed."""
    torch.manual_seed(cfg.train.seed)
    model_entry = MODELS.get(cfg.model.name)

    def build_model(n_outputs: int | None):
        return model_entry.factory(cfg.model.hp, tuple(task.input_shape), n_outputs)

    return LEARNERS.get(cfg.learner.name).factory(cfg.learner.hp, build_model, task)
