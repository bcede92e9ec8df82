"""The functional inner optimizers (learners/inner_optim.py): each step equals torch.optim's on
the same gradient sequence, and MAML's second-order meta-gradient through k steps of SGD with
momentum or Adam matches central finite differences of the meta-loss (float64)."""

import pytest
import torch

from helpers import DEVICE, directional_fd, flat_grad, sine_batch, tiny_model
from metagrad.learners.inner_optim import SGD, Adam, Momentum
from metagrad.learners.maml import MAML, MAMLConfig

TORCH = {
    "sgd": (SGD(), lambda p: torch.optim.SGD(p, lr=0.1)),
    "momentum": (Momentum(0.8), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8)),
    "adam": (Adam(0.85, 0.99, 1e-8), lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.85, 0.99), eps=1e-8)),
}


@pytest.mark.parametrize("name", list(TORCH))
def test_steps_equal_torch_optim(name):
    ours, make_theirs = TORCH[name]
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 2, generator=g, dtype=torch.float64), "b": torch.randn(2, generator=g, dtype=torch.float64)}
    theirs = {k: v.clone().requires_grad_() for k, v in start.items()}
    opt = make_theirs(list(theirs.values()))
    params, state = dict(start), ours.init(start)
    for _ in range(5):
        grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
        params, state = ours.step(params, grads, state, {k: 0.1 for k in params})
        for k, p in theirs.items():
            p.grad = grads[k].clone()
        opt.step()
    for k in params:
        assert torch.allclose(params[k], theirs[k].detach(), rtol=0, atol=1e-12), k


@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_second_order_meta_gradient_through_the_inner_optimizer_matches_finite_differences(inner):
    learner = MAML(MAMLConfig(inner_lr=0.03, inner_steps=3, inner_optimizer=inner, inner_momentum=0.7), tiny_model(),
                   "regression")
    batch = sine_batch()
    learner.zero_grad()
    learner.accumulate_meta_grad(batch)
    grad = flat_grad(learner)
    sgd = MAML(MAMLConfig(inner_lr=0.03, inner_steps=3), tiny_model(), "regression")  # the same θ, plain SGD inside
    sgd.accumulate_meta_grad(batch)
    assert (flat_grad(sgd) - grad).norm() > 1e-3 * grad.norm()  # the optimizer changes the meta-gradient
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        direction = torch.randn(grad.numel(), generator=g, dtype=torch.float64).to(DEVICE)
        fd = directional_fd(lambda: learner.meta_loss(batch)[0].item(), list(learner.parameters()), direction)
        analytic = (grad @ direction).item()
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (fd, analytic)
