"""The 2x2 max-pool of the Conv-4, ResNet-12 and DARTS cells (models/pool.py): without a gradient,
the same values as torch's max-pool bit for bit; with one, torch's max-pool itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.models.pool import max_pool2


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (5, 2, 3, 6)])
def test_max_pool2_without_gradient_equals_torch_max_pool_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, *shape), generator=g).float()  # small integers: many ties within a window
    ref = torch.stack([F.max_pool2d(t, 2) for t in x])
    with torch.no_grad():
        assert torch.equal(max_pool2(x[0]), ref[0])
        assert torch.equal(torch.func.vmap(max_pool2)(x), ref)  # [tasks, N, C, H, W], as the learners batch it
    assert torch.equal(max_pool2(x[0]), ref[0])  # with a gradient possible: torch's own kernel


def test_conv4_embeds_the_same_without_a_gradient_as_with_one():
    torch.manual_seed(0)
    net = Conv4(Conv4Config(channels=6, blocks=3), in_channels=1, n_outputs=None)
    x = torch.rand(10, 1, 13, 13)  # odd sides: the pools drop a row and a column
    with torch.no_grad():
        fast = net(x)
    assert torch.equal(fast, net(x))
