"""Ctrl-C at random moments (the probe of issue 13, sized for CI): whatever a SIGINT
interrupts (an inner loop under vmap, an optimizer step, a log write, validation, a checkpoint
write, set-up), the checkpoint left behind is the uninterrupted run's exact state at the
iteration it is labelled with, and resuming it ends bit for bit where the uninterrupted run does."""

import copy
import os
import random
import signal
import sys

import torch

from metagrad import train as train_module
from metagrad.build import build_learner, build_task
from metagrad.checkpoint import load_checkpoint
from metagrad.config import load_config
from metagrad.step import MetaStep

SETS = ["train.iterations=24", "train.meta_batch=4", "train.log_every=5", "train.eval_every=10", "train.eval_tasks=8",
        "train.test_tasks=8", "train.checkpoint_every=7"]
STATE_KEYS = ("learner", "optimizer", "scheduler")
TRIALS = 16


def run(run_dir, sets=SETS, interrupt_at=None, steps=None):
    """train() on sine-quick; with ``interrupt_at=n`` a SIGINT is sent to this process at the
    n-th Python function call inside it. Returns (calls counted, whether it was interrupted);
    ``steps`` collects the call count at which each meta-step starts."""
    calls = [0]
    real_step = MetaStep.__call__

    def step(self, *args):
        if steps is not None:
            steps.append(calls[0])
        return real_step(self, *args)

    def count(frame, event, arg):
        if event == "call":
            calls[0] += 1
            if calls[0] == interrupt_at:
                sys.setprofile(None)
                os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, wherever that is

    sys.setprofile(count)
    MetaStep.__call__ = step
    try:
        train_module.train(load_config("sine-quick", sets), run_dir, progress=False, log=lambda m: None)
        return calls[0], False
    except KeyboardInterrupt:
        return calls[0], True
    finally:
        sys.setprofile(None)
        MetaStep.__call__ = real_step


def equal(a, b) -> bool:
    """Nested dicts/lists of tensors and numbers, exactly equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def test_sigint_at_random_moments_leaves_only_true_states_and_resumes_exactly(tmp_path, monkeypatch):
    # the uninterrupted run, with its state recorded after every iteration
    states = {}
    real_save = train_module.save_checkpoint

    def record(path, state):
        states[state["iteration"]] = copy.deepcopy({k: state[k] for k in STATE_KEYS})
        real_save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", record)
    _, interrupted = run(tmp_path / "every", [*SETS, "train.checkpoint_every=1"])
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert not interrupted and sorted(states) == list(range(1, 25))
    steps = []
    total, interrupted = run(tmp_path / "whole", steps=steps)  # the trials' run: how many calls it makes, when
    assert not interrupted and len(steps) == 24
    cfg = load_config("sine-quick", SETS)
    states[0] = {"learner": build_learner(cfg, build_task(cfg, "train")).state_dict()}  # before the first step
    final = load_checkpoint(tmp_path / "whole")

    rng = random.Random(0)
    seen = set()
    for trial in range(TRIALS):
        # most calls are set-up and the final test: 3 in 4 moments fall in the training loop
        moment = rng.randrange(1, total) if trial % 4 == 3 else rng.randrange(steps[0], steps[-1] + (steps[-1] - steps[-2]))
        run_dir = tmp_path / f"t{trial}"
        _, interrupted = run(run_dir, interrupt_at=moment)
        assert interrupted, moment
        if not (run_dir / "checkpoint.pt").exists():  # stopped during set-up, before the loop: nothing saved
            seen.add("nothing")
            continue
        saved = load_checkpoint(run_dir)
        k = saved["iteration"]
        seen.add(k)
        for key in states[k]:
            assert equal(saved[key], states[k][key]), (moment, k, key)
        if trial % 4 == 0:  # resume without interruption: the uninterrupted end, bit for bit
            _, again = run(run_dir)
            assert not again and equal(load_checkpoint(run_dir)["learner"], final["learner"]), (moment, k)
    assert len(seen) >= TRIALS // 2, seen  # the moments spread over the run
