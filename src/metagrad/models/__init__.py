"""Backbones: plain nn.Modules, usable functionally (torch.func.functional_call)."""

from .conv4 import Conv4, Conv4Config
from .mlp import MLPConfig
from .norm import BatchNorm
from .resnet12 import ResNet12, ResNet12Config
from .search import CellNet, CNNConfig, SearchCNNConfig

__all__ = ["BatchNorm", "Conv4", "Conv4Config", "MLPConfig", "ResNet12", "ResNet12Config", "CellNet", "CNNConfig", "SearchCNNConfig"]
