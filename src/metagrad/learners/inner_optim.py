"""Differentiable functional inner-loop optimizers: SGD, SGD with momentum, Adam.

Each is a pure function of parameter dicts, so an inner loop written with it can be
differentiated through (second order: MAML with any inner optimizer, as ``higher`` is used
for), vectorised over tasks with torch.func.vmap and compiled:

    state = opt.init(params)                              # {name: Tensor} -> optimizer state
    params, state = opt.step(params, grads, state, lr)    # lr: {name: float | Tensor}

The updates are torch.optim's, for one parameter group without weight decay:

    SGD        p ← p − lr g
    momentum   b ← μ b + g (b starts at 0, so b₁ = g₁ as in torch.optim.SGD);  p ← p − lr b
    Adam       m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²;  t ← t + 1
               p ← p − lr (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)

The Adam step count t may be a tensor (a state carried across tasks). Adam's √v is taken so
that its derivative is finite where v = 0 (the forward value is the same): differentiating
√v at 0 would give inf · 0 = nan in the second-order meta-gradient of a weight whose
gradient is exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import HParams, choice, nonnegative, positive
from ..errors import ConfigError

Params = dict[str, Tensor]
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass
class InnerOptimizerConfig(HParams):
    """The inner optimizer's settings, shared by the configs of the learners that take one."""

    inner_optimizer: str = choice("sgd", INNER_OPTIMIZERS)
    inner_momentum: float = nonnegative(0.9)  # μ of "momentum"
    adam_beta1: float = nonnegative(0.9)
    adam_beta2: float = nonnegative(0.999)
    adam_eps: float = positive(1e-8)

    def validate(self):
        for key in ("inner_momentum", "adam_beta1", "adam_beta2"):
            if getattr(self, key) >= 1:
                raise ConfigError(f"learner.{key} must be < 1, got {getattr(self, key)}")


class SGD:
    def init(self, params: Params) -> dict[str, Any]:
        return {}

    def step(self, params: Params, grads: Params, state: dict, lr: dict) -> tuple[Params, dict]:
        return {k: p - lr[k] * grads[k] for k, p in params.items()}, state


@dataclass(frozen=True)
class Momentum:
    momentum: float = 0.9

    def init(self, params: Params) -> dict[str, Any]:
        return {"buf": {k: torch.zeros_like(p) for k, p in params.items()}}

    def step(self, params: Params, grads: Params, state: dict, lr: dict) -> tuple[Params, dict]:
        buf = {k: self.momentum * state["buf"][k] + grads[k] for k in params}
        return {k: p - lr[k] * buf[k] for k, p in params.items()}, {"buf": buf}


def safe_sqrt(v: Tensor) -> Tensor:
    """√v, with derivative 0 (not inf) where v = 0."""
    positive_ = v > 0
    return torch.where(positive_, torch.where(positive_, v, 1.0).sqrt(), 0.0)


@dataclass(frozen=True)
class Adam:
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init(self, params: Params, step: int | Tensor = 0) -> dict[str, Any]:
        """Zero moments; ``step`` steps taken before (the bias correction counts from it)."""
        return {"m": {k: torch.zeros_like(p) for k, p in params.items()},
                "v": {k: torch.zeros_like(p) for k, p in params.items()}, "t": step}

    def step(self, params: Params, grads: Params, state: dict, lr: dict) -> tuple[Params, dict]:
        b1, b2, t = self.beta1, self.beta2, state["t"] + 1
        m = {k: b1 * state["m"][k] + (1 - b1) * grads[k] for k in params}
        v = {k: b2 * state["v"][k] + (1 - b2) * grads[k].square() for k in params}
        tt = t.to(next(iter(params.values())).dtype) if isinstance(t, Tensor) else t  # a carried count: long
        c1, c2 = 1 - b1**tt, 1 - b2**tt
        new = {k: p - lr[k] * (m[k] / c1) / (safe_sqrt(v[k] / c2) + self.eps) for k, p in params.items()}
        return new, {"m": m, "v": v, "t": t}


def make_inner_optimizer(hp: InnerOptimizerConfig) -> SGD | Momentum | Adam:
    if hp.inner_optimizer == "momentum":
        return Momentum(hp.inner_momentum)
    if hp.inner_optimizer == "adam":
        return Adam(hp.adam_beta1, hp.adam_beta2, hp.adam_eps)
    return SGD()
