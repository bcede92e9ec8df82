"""Where tasks come from. Importing this package registers every task family."""

from .batch import TaskBatch, TaskSource
from .quadratic import Quadratic, QuadraticConfig
from .sinusoid import Sinusoid, SinusoidConfig
from .wrapped import few_shot_splits
from . import folder, omniglot  # noqa: F401,E402  (registers "omniglot" and "folder")

__all__ = ["TaskBatch", "TaskSource", "Quadratic", "QuadraticConfig", "Sinusoid", "SinusoidConfig", "few_shot_splits"]
