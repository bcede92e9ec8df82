"""Meta-learners, one file each, all behind the protocol of base.py. Importing registers them."""

from .anil import ANIL
from .base import MetaLearner
from .darts import DARTS, DARTSConfig
from .imaml import IMAML, IMAMLConfig
from .knn import KNN, KNNConfig
from .lstm_optimizer import LSTMOptimizer, LSTMOptimizerConfig
from .maml import MAML, MAMLConfig
from .mamlpp import MAMLPlusPlus, MAMLPPConfig
from .mann import MANN, MANNConfig
from .matching import MatchingConfig, MatchingNet
from .meta_lstm import MetaLSTM, MetaLSTMConfig
from .metanet import MetaNet, MetaNetConfig
from .metasgd import MetaSGD
from .protonet import ProtoNet, ProtoNetConfig
from .reptile import Reptile, ReptileConfig
from .snail import SNAIL, SNAILConfig

__all__ = ["ANIL", "MetaLearner", "DARTS", "DARTSConfig", "IMAML", "IMAMLConfig", "KNN", "KNNConfig", "LSTMOptimizer", "LSTMOptimizerConfig", "MAML", "MAMLConfig", "MAMLPlusPlus", "MAMLPPConfig", "MANN", "MANNConfig", "MatchingConfig", "MatchingNet", "MetaLSTM", "MetaLSTMConfig", "MetaNet", "MetaNetConfig", "MetaSGD", "ProtoNet", "ProtoNetConfig", "Reptile", "ReptileConfig", "SNAIL", "SNAILConfig"]
