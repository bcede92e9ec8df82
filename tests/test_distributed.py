"""Distributed meta-training through torch.distributed, launched as users launch it
(``python -m torch.distributed.run --standalone --nproc_per_node=2``), gloo on the CPU.
With METAGRAD_TEST_DEVICE=cuda the equality test runs with nccl on two GPUs (skipped on one)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from metagrad.checkpoint import load_checkpoint
from metagrad.evaluation import evaluate
from metagrad.tasks import Sinusoid
from metagrad.step import MetaStep
from helpers import flat, rel

DEVICE = torch.device(os.environ.get("METAGRAD_TEST_DEVICE", "cpu"))
TASKS = 7  # split 4 + 3 over two ranks: the weighting of uneven shares is part of the test

SETUP = """
import torch
from torch import nn
from metagrad.learners.maml import MAML, MAMLConfig
from metagrad.tasks import Sinusoid


def setup(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    learner = MAML(MAMLConfig(inner_lr=0.05, inner_steps=2, executor="vmap"), model, "regression")
    learner = learner.to(device, torch.float64)
    batch = Sinusoid().sample({tasks}, torch.Generator().manual_seed(1)).to(device, torch.float64)
    return learner, torch.optim.SGD(learner.parameters(), lr=0.1), batch
"""

WORKER = """
import os, sys
import torch
from metagrad.distributed import DistContext, process_group
from metagrad.evaluation import evaluate
from metagrad.tasks import Sinusoid
from metagrad.step import MetaStep

with process_group(torch.device(os.environ.get("METAGRAD_TEST_DEVICE", "cpu"))) as (ctx, device):
    learner, optimizer, batch = setup(device)
    first = sum(DistContext(r, ctx.world).local_tasks(len(batch)) for r in range(ctx.rank))
    local = batch[first : first + ctx.local_tasks(len(batch))]
    MetaStep(learner, optimizer, task_chunk=2, ctx=ctx)(local, len(batch))
    est = evaluate(learner, Sinusoid(), 9, 5, 4, device, torch.float64, ctx)
    torch.save({
        "grads": [p.grad.cpu() for p in learner.parameters()],
        "params": [p.detach().cpu() for p in learner.parameters()],
        "tasks": len(local),
        "estimates": {k: e.to_dict() for k, e in est.items()},
    }, os.path.join(sys.argv[1], f"rank{ctx.rank}.pt"))
"""


def torchrun(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_two_ranks_take_the_step_of_one_process_with_the_whole_meta_batch(tmp_path):
    if DEVICE.type == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("nccl needs two GPUs")
    setup_code = SETUP.format(tasks=TASKS)
    (tmp_path / "worker.py").write_text(setup_code + WORKER)
    done = torchrun(str(tmp_path / "worker.py"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["tasks"] for r in ranks] == [4, 3]

    scope: dict = {}
    exec(setup_code, scope)
    learner, optimizer, batch = scope["setup"](DEVICE)
    MetaStep(learner, optimizer)(batch, TASKS)
    grad = flat(p.grad.cpu() for p in learner.parameters())
    params = flat(p.detach().cpu() for p in learner.parameters())
    est = evaluate(learner, Sinusoid(), 9, 5, 4, DEVICE, torch.float64)
    for r in ranks:
        assert rel(flat(r["grads"]), grad) <= 1e-10
        assert rel(flat(r["params"]), params) <= 1e-10
        for key, e in est.items():
            assert r["estimates"][key]["episodes"] == 9
            assert abs(r["estimates"][key]["mean"] - e.mean) <= 1e-10 * abs(e.mean)
            assert abs(r["estimates"][key]["ci95"] - e.ci95) <= 1e-8 * e.ci95
    assert torch.equal(flat(ranks[0]["params"]), flat(ranks[1]["params"]))


def test_two_process_cli_training_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["-m", "metagrad", "train", "--out", str(out), "--quiet", "--set", "train.device=cpu"]
    first = torchrun(*common, "--set", "train.iterations=20", "--set", "train.checkpoint_every=10",
                     "--set", "train.eval_every=10", "--set", "train.eval_tasks=10", "--set", "train.test_tasks=20",
                     "--set", "train.log_every=5")
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(out)["iteration"] == 20
    assert first.stderr.count("run directory:") == 1 and first.stdout.count("trained 20 iterations") == 1
    assert "(2 processes)" in first.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["test"]["10 steps"]["episodes"] == 20

    second = torchrun(*common, "--set", "train.iterations=30")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count(f"resuming {out} from iteration 20") == 1
    assert load_checkpoint(out)["iteration"] == 30
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["split"] == "train"] == [5, 10, 15, 20, 25, 30]
