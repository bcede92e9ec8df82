"""metagrad: meta-learning in PyTorch — exact, vectorised, reproducible."""

from . import learners, models, tasks  # noqa: F401  (registers every component)
from .build import build_learner, build_task
from .config import Config, load_config
from .learners import MAML, MetaLearner
from .tasks import Sinusoid, TaskBatch

__version__ = "0.1.0"

__all__ = ["Config", "load_config", "build_learner", "build_task", "MAML", "MetaLearner", "Sinusoid", "TaskBatch"]
