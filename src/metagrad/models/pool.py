"""2x2 max-pooling (stride 2, an odd last row or column dropped, as ``F.max_pool2d(x, 2)``).

Where a gradient may be taken this is ``F.max_pool2d``. Without one (evaluation runs under
``torch.no_grad``) it is the elementwise maximum of the four strided sub-grids, which gives the
same values bit for bit and, on CPU, where torch's max-pool kernel for the NCHW layout is slow,
takes a one-shot evaluation to 0.91x its CPU time (docs/performance.md, with the command); it
also works inside torch.func.vmap, which the faster channels-last layout does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def max_pool2(x: Tensor) -> Tensor:
    """x [N, C, H, W] or [C, H, W] -> [..., H // 2, W // 2], each value the maximum of its 2x2 window."""
    if torch.is_grad_enabled():
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return torch.maximum(torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
                         torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


class MaxPool2(nn.Module):
    """:func:`max_pool2` as a layer."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2(x)
