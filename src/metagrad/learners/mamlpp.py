"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML").

MAML (maml.py) with the paper's fixes, each a hook of the step-indexed functional base:

- LSLR, learned per-layer per-step inner learning rates: α[name][t], one number per parameter
  tensor and inner step t, meta-learned, initialised to ``inner_lr``:
      θ'(t+1) = θ'(t) − α[·][t] ∇ L_support(θ'(t))
- BNWB, per-step normalisation weights and biases (``per_step_norm``): the network at inner step
  t runs with its own copy γ_t, β_t of every normalisation layer's affine parameters (step 0:
  the backbone's own); they are meta-learned and not updated by the inner loop. The query
  prediction after k updates uses step k − 1's copy. (Normalisation always uses the batch's own
  statistics here, as the reference code's always-training BatchNorm; so BNRS, its per-step
  running statistics, never enters a prediction and is not needed.)
- MSL, the multi-step loss: the meta-objective is Σ_k w_k(e) L_query(θ'(k)) over the inner
  steps k = 1..n, with the reference code's importance weights at epoch e: every non-final
  weight starts at 1/n and falls by e/(n·E) to a floor of 0.03/n, the final weight grows to
  keep the sum 1; from epoch E = ``msl_epochs`` on, only the final step's loss counts.
- DA, derivative-order annealing: first order for the first ``first_order_epochs`` epochs, then
  second order.
- CA, cosine annealing of the meta learning rate: ``train.lr_schedule = "cosine"`` (to
  ``train.lr_min``).

An epoch is ``iterations_per_epoch`` meta-steps; the learner counts its meta-steps in a buffer
(``meta_steps``, saved in checkpoints) so that a resumed run continues its schedule exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import nonnegative, positive
from ..models.norm import BatchNorm
from ..registry import LEARNERS
from .functional import Params
from .maml import MAML, MAMLConfig

NORM_LAYERS = (BatchNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass
class MAMLPPConfig(MAMLConfig):
    inner_lr: float = positive(0.1)  # the initial value of every learned step size
    inner_steps: int = positive(5)
    eval_steps: int = nonnegative(5)
    learn_step_sizes: bool = True  # LSLR (false: inner_lr fixed, as MAML)
    per_step_norm: bool = True  # BNWB (false: normalisation parameters adapted like the others, as MAML)
    multi_step_loss: bool = True  # MSL
    msl_epochs: int = nonnegative(20)  # epochs with the multi-step loss; then the final step's only
    first_order_epochs: int = nonnegative(0)  # DA: first order for this many epochs
    iterations_per_epoch: int = positive(500)


def msl_weights(steps: int, epoch: Tensor, msl_epochs: int) -> Tensor:
    """The multi-step loss weights [steps] at ``epoch`` (a float tensor): see the module doc."""
    uniform = torch.full((steps,), 1.0 / steps, dtype=torch.float64, device=epoch.device)
    decay = 1.0 / steps / max(msl_epochs, 1)
    floor = 0.03 / steps
    non_final = torch.clamp(uniform[:-1] - epoch * decay, min=floor)
    final = torch.clamp(uniform[-1:] + epoch * (steps - 1) * decay, max=1.0 - (steps - 1) * floor)
    weights = torch.cat([non_final, final])
    last_only = torch.zeros_like(weights).index_fill_(0, torch.tensor([steps - 1], device=epoch.device), 1.0)
    return torch.where(epoch < msl_epochs, weights, last_only)


def _key(name: str) -> str:
    return name.replace(".", "/")  # module attribute names cannot contain "."


class MAMLPlusPlus(MAML):
    """MAML with LSLR, BNWB, MSL and DA (module doc) over any backbone."""

    def __init__(self, hp: MAMLPPConfig, model: nn.Module, kind: str):
        super().__init__(hp, model, kind)
        self.norm_names = [f"{m_name}.{p_name}" if m_name else p_name
                           for m_name, m in model.named_modules() if isinstance(m, NORM_LAYERS)
                           for p_name, _ in m.named_parameters(recurse=False)] if hp.per_step_norm else []
        steps = hp.inner_steps
        params = dict(model.named_parameters())
        self.step_sizes = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full((steps,), hp.inner_lr, dtype=p.dtype), requires_grad=hp.learn_step_sizes)
            for n, p in params.items() if n not in self.norm_names})
        self.norm_steps = nn.ParameterDict({_key(n): nn.Parameter(params[n].detach().clone().expand(steps - 1, *params[n].shape).clone())
                                            for n in self.norm_names} if steps > 1 else {})
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))

    def epoch(self) -> Tensor:
        return torch.div(self.meta_steps, self.hp.iterations_per_epoch, rounding_mode="floor").to(torch.float64)

    def _step(self, step: int) -> int:
        return min(step, self.hp.inner_steps - 1)  # evaluation beyond inner_steps reuses the last step's

    def adapted_names(self, params: Params) -> list[str]:
        return [n for n in params if n not in self.norm_names]

    def step_size(self, name: str, step: int) -> Tensor:
        return self.step_sizes[_key(name)][self._step(step)]

    def network_params(self, params: Params, step: int) -> Params:
        t = self._step(step)
        if t == 0 or not self.norm_names:
            return params
        return {**params, **{n: self.norm_steps[_key(n)][t - 1] for n in self.norm_names}}

    def first_order_now(self) -> bool:
        if self.hp.first_order:
            return True
        return bool(self.hp.first_order_epochs) and int(self.meta_steps) < self.hp.first_order_epochs * self.hp.iterations_per_epoch

    def query_loss_weights(self) -> Tensor | None:
        if not self.hp.multi_step_loss:
            return None
        dtype = next(self.model.parameters()).dtype
        return msl_weights(self.hp.inner_steps, self.epoch(), self.hp.msl_epochs).to(dtype)

    @torch.no_grad()
    def end_meta_step(self) -> None:
        self.meta_steps.add_(1)


@LEARNERS.register("mamlpp", MAMLPPConfig)
def make_mamlpp(hp: MAMLPPConfig, build_model, task) -> MAMLPlusPlus:
    """MAML++: learned per-layer per-step step sizes, per-step norm parameters, multi-step loss."""
    return MAMLPlusPlus.for_task(hp, build_model, task)
