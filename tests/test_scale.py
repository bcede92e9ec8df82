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
