"""Meta-learners, one file each, all behind the protocol of base.py. Importing registers them."""

from .base import MetaLearner
from .knn import KNN, KNNConfig
from .maml import MAML, MAMLConfig
from .matching import MatchingConfig, MatchingNet
from .protonet import ProtoNet, ProtoNetConfig
from .reptile import Reptile, ReptileConfig

__all__ = ["MetaLearner", "KNN", "KNNConfig", "MAML", "MAMLConfig", "MatchingConfig", "MatchingNet", "ProtoNet", "ProtoNetConfig", "Reptile", "ReptileConfig"]
