"""Where tasks come from. Importing this package registers every task family."""

from .batch import TaskBatch, TaskSource
from .sinusoid import Sinusoid, SinusoidConfig
from .wrapped import few_shot_splits
from . import folder, omniglot, quadratic  # noqa: F401,E402  (registers "omniglot", "folder", "quadratic")

__all__ = ["TaskBatch", "TaskSource", "Sinusoid", "SinusoidConfig", "few_shot_splits"]
