"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML").

MAML whose inner loop adapts only the network's last layer (the head): with M the 0/1 mask of
the head's entries, θ' = θ − α M ∇L_train(θ), and the meta-gradient, still exact and second
order through the head's steps, is (I − α H M) ∇L_test(θ') for one step (docs/math.md). The
body gets its meta-gradient through the query loss alone. Everything else is MAML's.
"""

from __future__ import annotations

from ..registry import LEARNERS
from .functional import Params
from .maml import MAML, MAMLConfig


class ANIL(MAML):
    """MAML adapting only the parameters of the last module that has any (Conv-4's ``head``,
    an MLP's last Linear)."""

    def adapted_names(self, params: Params) -> list[str]:
        head = list(params)[-1].rpartition(".")[0]
        return [k for k in params if k.rpartition(".")[0] == head]


@LEARNERS.register("anil", MAMLConfig)
def make_anil(hp: MAMLConfig, build_model, task) -> ANIL:
    """ANIL: MAML whose inner loop adapts the last layer only."""
    return ANIL.for_task(hp, build_model, task)
