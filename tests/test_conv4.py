"""Conv-4's activation and projection options (SNAIL's embedding: leaky ReLU, a linear layer to
64-d), checked against the same network written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.models.embed import feature_dim
from metagrad.models.norm import BatchNorm


def by_hand(net: Conv4, x: torch.Tensor, leak: float) -> torch.Tensor:
    """conv -> batch-statistics BatchNorm -> (leaky) ReLU -> 2x2 max-pool per block, the spatial
    mean, then the projection if there is one."""
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, BatchNorm)]
    h = x
    for conv, norm in zip(convs, norms):
        h = conv(h)
        h = F.batch_norm(h, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
        h = F.max_pool2d(F.leaky_relu(h, leak), 2)
    h = h.mean(dim=(2, 3))
    return net.project(h) if net.project is not None else h


@pytest.mark.parametrize("leak,project", [(0.0, 0), (0.1, 0), (0.2, 16)])
def test_conv4_activation_and_projection_match_the_network_written_out(leak, project):
    torch.manual_seed(0)
    net = Conv4(Conv4Config(channels=6, blocks=3, leak=leak, project=project), in_channels=1, n_outputs=None).double()
    x = torch.randn(7, 1, 12, 12, dtype=torch.double)
    out = net(x)
    assert out.shape == (7, project or 6) and net.out_features == (project or 6)
    torch.testing.assert_close(out, by_hand(net, x, leak))
    if leak:  # the slope is used: a plain ReLU gives another embedding
        assert not torch.allclose(out, by_hand(net, x, 0.0))


def test_learners_see_the_projected_width():
    cfg = Conv4Config(channels=8, blocks=2, project=64)
    assert feature_dim(Conv4(cfg, 1, None), (1, 12, 12)) == 64  # what a metric or model-based learner sizes itself by
    classifier = Conv4(cfg, 1, n_outputs=5)
    assert classifier(torch.randn(3, 1, 12, 12)).shape == (3, 5) and classifier.head.in_features == 64


def test_a_negative_leak_or_projection_is_a_one_line_error():
    with pytest.raises(ConfigError, match="model.leak must be >= 0, got -0.1"):
        load_config("snail-quick", ["model.leak=-0.1"])
    with pytest.raises(ConfigError, match="model.project must be >= 0, got -64"):
        load_config("snail-quick", ["model.project=-64"])


@pytest.mark.parametrize("downsample,size,side", [("max", 32, 4), ("max", 28, 3), ("stride", 28, 2)])
def test_feature_maps_are_the_last_map_before_its_pool(downsample, size, side):
    """With max-pooling, forward() is the mean of the 2x2-max-pooled feature maps (the network
    written out by hand above agrees with forward); with stride, their mean."""
    torch.manual_seed(0)
    net = Conv4(Conv4Config(channels=5, blocks=4, downsample=downsample), in_channels=1, n_outputs=None).double()
    x = torch.randn(6, 1, size, size, dtype=torch.double)
    maps = net.feature_maps(x)
    assert maps.shape == (6, 5, side, side)
    pooled = F.max_pool2d(maps, 2) if downsample == "max" else maps
    torch.testing.assert_close(pooled.mean(dim=(2, 3)), net(x))
