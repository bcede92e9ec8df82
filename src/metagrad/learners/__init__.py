"""Meta-learners, one file each, all behind the protocol of base.py. Importing registers them."""

from .base import MetaLearner
from .maml import MAML, MAMLConfig

__all__ = ["MetaLearner", "MAML", "MAMLConfig"]
