"""Where tasks come from. Importing this package registers every task family."""

from .batch import TaskBatch, TaskSource
from .sinusoid import Sinusoid, SinusoidConfig

__all__ = ["TaskBatch", "TaskSource", "Sinusoid", "SinusoidConfig"]
