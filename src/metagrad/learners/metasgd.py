"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

MAML whose inner step size is meta-learned, one entry per parameter entry:

    θ' = θ − α ∘ ∇θ L_train(θ)        α: one tensor of θ's shape per parameter (docs/math.md)

θ and α are meta-learned together by the outer optimizer; α starts at ``inner_lr`` everywhere.
For one step the meta-gradient is (I − H diag(α)) ∇L_test(θ') in θ (H = ∇²L_train(θ)) and
−∇L_train(θ) ∘ ∇L_test(θ') in α. Everything else (executors, first order, chunking,
evaluation) is MAML's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import LEARNERS
from .maml import MAML, MAMLConfig


def _key(name: str) -> str:
    return name.replace(".", "/")  # module attribute names cannot contain "."


class MetaSGD(MAML):
    """MAML with a learned per-entry inner step size α (``self.alpha``, keyed like the model's parameters)."""

    def __init__(self, hp: MAMLConfig, model: nn.Module, kind: str):
        super().__init__(hp, model, kind)
        self.alpha = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(p, hp.inner_lr)) for n, p in model.named_parameters()}
        )

    def step_size(self, name: str, step: int) -> Tensor:
        return self.alpha[_key(name)]


@LEARNERS.register("metasgd", MAMLConfig)
def make_metasgd(hp: MAMLConfig, build_model, task) -> MetaSGD:
    """Meta-SGD: MAML with learned per-parameter inner learning rates (initialised to inner_lr)."""
    return MetaSGD.for_task(hp, build_model, task)
