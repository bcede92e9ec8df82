"""metagrad: meta-learning in PyTorch — exact, vectorised, reproducible.

The public names below are imported on first use, so that ``metagrad --help`` and
``metagrad presets`` start without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "Config": "config",
    "load_config": "config",
    "build_learner": "build",
    "build_task": "build",
    "evaluate": "evaluation",
    "LearnedOptimizer": "optim",
    "LSTMOptimizer": "learners",
    "LSTMOptimizerConfig": "learners",
    "MAML": "learners",
    "MAMLConfig": "learners",
    "MetaLearner": "learners",
    "ProtoNet": "learners",
    "Quadratic": "tasks",
    "Sinusoid": "tasks",
    "TaskBatch": "tasks",
    "few_shot_splits": "tasks",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'metagrad' has no attribute {name!r}")
