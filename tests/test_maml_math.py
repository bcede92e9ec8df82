"""MAML's meta-gradient against independent computations: an explicit Hessian, the
first-order formula, the per-task loop, and central finite differences (all float64).
METAGRAD_TEST_DEVICE=cuda runs them on a GPU (benchmarks/gpu_check.sh)."""


import pytest
import torch
from torch.func import functional_call

from metagrad.learners.maml import MAML, MAMLConfig
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.models.mlp import MLPConfig, make_mlp
from metagrad.models.norm import BatchNorm
from metagrad.models.resnet12 import ResNet12, ResNet12Config
from helpers import DEVICE, directional_fd, image_batch, sine_batch, tiny_model

ALPHA = 0.05


def maml(model, steps, first_order=False, executor="vmap", kind="regression"):
    return MAML(MAMLConfig(inner_lr=ALPHA, inner_steps=steps, first_order=first_order, executor=executor), model, kind)


def meta_grad(learner, batch) -> torch.Tensor:
    learner.zero_grad()
    learner.accumulate_meta_grad(batch)
    return torch.cat([p.grad.reshape(-1) for p in learner.parameters()])


def flat_losses(model):
    """L(theta_vector, x, y) for the model's parameters flattened into one vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(vec, x, y):
        params = {n: t.view(s) for n, t, s in zip(names, vec.split(sizes), shapes)}
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return theta, loss


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_explicit_hessian_formula(steps):
    model = tiny_model()
    batch = sine_batch()
    theta, loss = flat_losses(model)
    eye = torch.eye(theta.numel(), dtype=torch.float64, device=DEVICE)
    expected = []
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        factor, p = eye, theta
        for _ in range(steps):  # d theta_{k+1} / d theta_k = I - alpha * H_train(theta_k)
            hess = torch.func.hessian(loss)(p, sx, sy)
            factor = factor @ (eye - ALPHA * hess)
            p = p - ALPHA * torch.func.grad(loss)(p, sx, sy)
        expected.append(factor @ torch.func.grad(loss)(p, qx, qy))
    expected = torch.stack(expected).mean(0)
    got = meta_grad(maml(model, steps), batch)
    assert torch.linalg.norm(got - expected) / torch.linalg.norm(expected) <= 1e-8


def test_first_order_drops_the_hessian_term():
    model = tiny_model()
    batch = sine_batch()
    theta, loss = flat_losses(model)
    expected = []
    for i in range(len(batch)):
        adapted = theta - ALPHA * torch.func.grad(loss)(theta, batch.support_x[i], batch.support_y[i])
        expected.append(torch.func.grad(loss)(adapted, batch.query_x[i], batch.query_y[i]))
    expected = torch.stack(expected).mean(0)
    first = meta_grad(maml(model, 1, first_order=True), batch)
    second = meta_grad(maml(model, 1), batch)
    assert torch.linalg.norm(first - expected) / torch.linalg.norm(expected) <= 1e-10
    assert torch.linalg.norm(first - second) / torch.linalg.norm(second) > 1e-3


def bn_mlp():
    torch.manual_seed(1)
    return make_mlp(MLPConfig(hidden=[16, 16], batch_norm=True), (1,), 1).double().to(DEVICE)


def bn_conv():
    torch.manual_seed(2)
    return Conv4(Conv4Config(channels=8, blocks=2, downsample="max"), 1, 3).double().to(DEVICE)


def tiny_resnet12():
    torch.manual_seed(3)
    return ResNet12(ResNet12Config(widths=[3, 4, 4, 5]), 1, 3).double().to(DEVICE)


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize(
    "make_model,make_batch,kind",
    [(tiny_model, sine_batch, "regression"), (bn_mlp, sine_batch, "regression"), (bn_conv, image_batch, "classification"),
     (tiny_resnet12, lambda: image_batch(size=16), "classification")],
    ids=["mlp", "mlp-batchnorm", "conv-batchnorm", "resnet12"],
)
def test_vectorised_executor_equals_per_task_loop(steps, make_model, make_batch, kind):
    batch = make_batch()
    grads = {}
    for executor in ("vmap", "loop"):
        grads[executor] = meta_grad(maml(make_model(), steps, executor=executor, kind=kind), batch)
    rel = torch.linalg.norm(grads["vmap"] - grads["loop"]) / torch.linalg.norm(grads["loop"])
    assert rel <= 1e-10


def test_primitive_batchnorm_matches_torch_batch_statistics():
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    bn = BatchNorm(4).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert torch.allclose(bn(x), ref, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_central_finite_differences(first_order):
    model = tiny_model()
    batch = sine_batch()
    learner = maml(model, 2, first_order=first_order)
    grad = meta_grad(learner, batch)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = torch.randn(grad.numel(), generator=g, dtype=torch.float64).to(DEVICE)
        fd = directional_fd(lambda: learner.meta_loss(batch)[0].item(), list(learner.parameters()), direction)
        analytic = (grad @ direction).item()
        agrees = abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic))
        # FOMAML drops the Hessian term, so it is not the meta-loss's gradient in any direction
        assert agrees != first_order, (fd, analytic)


def test_resnet12_shapes_and_bad_input():
    from metagrad.errors import ConfigError
    from metagrad.registry import MODELS

    entry = MODELS.get("resnet12")
    net = entry.factory(ResNet12Config(), (3, 84, 84), None)  # RGB 84x84, MetaOptNet's widths
    assert net(torch.rand(2, 3, 84, 84)).shape == (2, 640)
    # by hand: 3x3 and 1x1 convolutions 12,414,848 + BatchNorm 9,472 (MetaOptNet: 12.4M)
    assert sum(p.numel() for p in net.parameters()) == 12_414_848 + 9_472
    assert entry.factory(ResNet12Config(widths=[2, 3, 4, 5]), (1, 16, 16), 7)(torch.rand(4, 1, 16, 16)).shape == (4, 7)
    with pytest.raises(ConfigError, match=r"needs \[C, H, W\] images of at least 16x16 .* got \[1, 8, 8\]"):
        entry.factory(ResNet12Config(), (1, 8, 8), 5)
    with pytest.raises(ConfigError, match=r"model.widths=\[64, 160\]: expected four widths"):
        ResNet12Config(widths=[64, 160])


def test_conv4_block_widths_shape_every_layer_and_bad_input():
    from metagrad.errors import ConfigError

    net = Conv4(Conv4Config(widths=[3, 4, 5, 6]), 1, None)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(3, 1, 3, 3), (4, 3, 3, 3), (5, 4, 3, 3), (6, 5, 3, 3)]
    assert [m.weight.shape[0] for m in net.features if isinstance(m, BatchNorm)] == [3, 4, 5, 6]
    assert net.out_features == 6 and net(torch.rand(2, 1, 28, 28)).shape == (2, 6)
    flat = Conv4(Conv4Config(widths=[3, 4, 5, 6], pool="flatten"), 1, 7, size=(32, 32))  # a 2x2 last map
    assert flat.out_features == 6 * 2 * 2 and flat(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    same = Conv4(Conv4Config(channels=5, widths=[5, 5, 5, 5]), 1, 3)  # [] and the same width in every block agree
    assert [p.shape for p in same.parameters()] == [p.shape for p in Conv4(Conv4Config(channels=5), 1, 3).parameters()]
    with pytest.raises(ConfigError, match=r"model.widths=\[64, 128\]: expected one width per block \(4\)"):
        Conv4Config(widths=[64, 128])
    with pytest.raises(ConfigError, match=r"must be > 0"):
        Conv4Config(widths=[64, 0, 64, 64])
