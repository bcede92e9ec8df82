"""metagrad: meta-learning in PyTorch — exact, vectorised, reproducible."""

from . import learners, models, tasks  # noqa: F401  (registers every component)
from .build import build_learner, build_task
from .config import Config, load_config
from .evaluate import evaluate
from .learners import MAML, MAMLConfig, MetaLearner
from .tasks import Sinusoid, TaskBatch

__version__ = "0.1.0"

__all__ = [
    "Config",
    "load_config",
    "build_learner",
    "build_task",
    "evaluate",
    "MAML",
    "MAMLConfig",
    "MetaLearner",
    "Sinusoid",
    "TaskBatch",
]
