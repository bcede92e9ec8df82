"""Where tasks come from. Importing this package registers every task family."""

from .batch import TaskBatch, TaskSource
from .quadratic import Quadratic, QuadraticConfig
from .sinusoid import Sinusoid, SinusoidConfig
from .wrapped import few_shot_splits
from . import cifar, cub, folder, miniimagenet, omniglot  # noqa: F401,E402  (registers "cifar-fs", "fc100", "cub", "omniglot", "folder", "mini-imagenet", "tiered-imagenet")

__all__ = ["TaskBatch", "TaskSource", "Quadratic", "QuadraticConfig", "Sinusoid", "SinusoidConfig", "few_shot_splits"]
