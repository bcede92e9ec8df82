"""Speed and memory options leave the mathematics alone: task chunks, recomputed inner loops,
torch.compile and the "auto" executor give the second-order MAML meta-gradient of one plain
vectorised pass (float64). METAGRAD_TEST_DEVICE=cuda runs them on a GPU (benchmarks/gpu_check.sh);
METAGRAD_TEST_COMPILE_BACKEND picks the torch.compile backend (default aot_eager: the same
graph capture and autograd as inductor, without minutes of C++ compilation on a small CPU)."""

import os

import pytest
import torch

from metagrad.learners.executors import AUTO_LOOP_ABOVE, resolve_executor
from metagrad.learners.maml import MAML, MAMLConfig
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.models.mlp import MLPConfig, make_mlp
from metagrad.tasks import Sinusoid
from metagrad.step import MetaStep
from helpers import DEVICE, flat_grad, image_batch, rel



def conv_learner(**hp) -> MAML:
    torch.manual_seed(2)
    model = Conv4(Conv4Config(channels=8, blocks=2, downsample="stride"), 1, 3)
    return MAML(MAMLConfig(inner_lr=0.1, **hp), model, "classification").to(DEVICE, torch.float64)


@pytest.mark.parametrize("executor", ["vmap", "loop"])
def test_chunked_meta_gradient_equals_one_pass(executor):
    batch = image_batch(8)
    grads, stats = [], []
    for chunk in (0, 3):  # 8 tasks as one pass, and as chunks of 3 + 3 + 2
        learner = conv_learner(inner_steps=2, executor=executor)
        optimizer = torch.optim.SGD(learner.parameters(), lr=0.0)
        stats.append(MetaStep(learner, optimizer, task_chunk=chunk)(batch, total_tasks=8))
        grads.append(flat_grad(learner))
    assert rel(grads[1], grads[0]) <= 1e-10
    for key in stats[0]:
        assert torch.allclose(stats[1][key], stats[0][key], rtol=1e-12, atol=0), key


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("executor", ["vmap", "loop"])
def test_recomputed_inner_loop_gives_the_same_meta_gradient(executor, first_order):
    batch = image_batch(4)
    grads, losses = [], []
    for recompute in (False, True):
        learner = conv_learner(inner_steps=3, executor=executor, first_order=first_order, checkpoint_inner=recompute)
        losses.append(learner.accumulate_meta_grad(batch)["loss"])
        grads.append(flat_grad(learner))
    assert rel(grads[1], grads[0]) <= 1e-10
    assert torch.allclose(losses[1], losses[0], rtol=1e-12, atol=0)


def test_compiled_meta_loss_gives_the_same_meta_gradient():
    torch.manual_seed(0)
    learner = MAML(MAMLConfig(inner_lr=0.05, inner_steps=2, executor="vmap"), make_mlp(MLPConfig(), (1,), 1), "regression")
    learner = learner.to(DEVICE, torch.float64)
    batch = Sinusoid().sample(5, torch.Generator().manual_seed(0)).to(DEVICE, torch.float64)
    learner.accumulate_meta_grad(batch)
    plain = flat_grad(learner)
    learner.zero_grad()
    backend = os.environ.get("METAGRAD_TEST_COMPILE_BACKEND", "aot_eager")
    step = MetaStep(learner, torch.optim.SGD(learner.parameters(), lr=0.0), compile="default", backend=backend)
    step(batch, len(batch))  # as train.compile does
    assert rel(flat_grad(learner), plain) <= 1e-10


def test_auto_executor_rule():
    sine = Sinusoid().sample(25, torch.Generator().manual_seed(0))
    side = int((AUTO_LOOP_ABOVE / 2 / 32 / 10) ** 0.5) + 1  # 32 tasks x 10 images of side x side: just above
    big = torch.zeros(32, 10, 1, side, side)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert resolve_executor("auto", (sine.support_x, sine.query_x), (0, 0)) == "vmap"
        assert resolve_executor("auto", (big, big), (0, 0)) == "loop"
        assert resolve_executor("auto", (big, big), (0, None)) == "vmap"  # only batched arguments count
        assert resolve_executor("auto", (big[:, :4], big[:, :4]), (0, 0)) == "vmap"
        if torch.cuda.is_available():
            assert resolve_executor("auto", (big.cuda(), big.cuda()), (0, 0)) == "vmap"
        torch.set_num_threads(2)
        assert resolve_executor("auto", (big, big), (0, 0)) == "vmap"
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="executor must be one of"):
        resolve_executor("gpu", (big,), (0,))


def test_compiled_float32_batchnorm_keeps_eager_precision_on_line_drawings():
    """Inductor's fused float32 kernel for the BatchNorm statistics lost digits on the feature maps
    of sparse line drawings (6e-6 relative against 2e-7 eager at this size; 0.3-2 % in a learner's
    meta-gradient); models/norm.py accumulates them in float64 when compiled on the CPU. Real
    inductor here, the one compiler that showed it (a BatchNorm alone: seconds of C++)."""
    from metagrad.models.norm import BatchNorm

    g = torch.Generator().manual_seed(0)
    lines = (torch.rand(120, 1, 28, 28, generator=g) > 0.8).double()  # Omniglot-like: mostly background
    x64 = torch.nn.functional.conv2d(lines, torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64),
                                     torch.randn(8, generator=g, dtype=torch.float64), padding=1)
    weights = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    bn = BatchNorm(8).double()

    def out_and_grad(f, x):
        x = x.clone().requires_grad_()
        y = f(x)
        return y, torch.autograd.grad((y * weights.to(x.dtype)).sum(), x)[0]

    y64, g64 = out_and_grad(bn, x64)
    torch._dynamo.reset()
    y32, g32 = out_and_grad(torch.compile(bn.float(), backend="inductor"), x64.float())
    assert rel(y32.double(), y64) < 1e-6 and rel(g32.double(), g64) < 1e-6
