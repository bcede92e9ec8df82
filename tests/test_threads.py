"""The CPU thread policy (threads.py): usable CPUs from affinity, cgroup quota and torchrun's
local ranks; one thread for small work; the override."""

import os
import subprocess
import sys

import torch

from metagrad.config import load_config
from metagrad.threads import SMALL_WORK, cgroup_cpu_limit, choose_threads
from metagrad.train import train

BIG = 10 * SMALL_WORK


def test_the_choice(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3, 10, usable=1, load=9) == (3, "train.threads")
    assert choose_threads(0, 500, usable=8, load=0)[0] == 1  # small work: one thread
    assert choose_threads(0, BIG, usable=4, load=0.2) == (4, "4 usable CPUs, load 0.2")
    assert choose_threads(0, BIG, usable=4, load=1.2)[0] == 3  # others keep a core busy
    assert choose_threads(0, BIG, usable=2, load=3.5)[0] == 1  # a busy machine: never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(0, 500, usable=8, load=0) == (2, "OMP_NUM_THREADS")


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_a_process_pinned_to_one_cpu_uses_one_thread():
    probe = ("import os\nos.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
             "from metagrad.threads import choose_threads, usable_cpus\n"
             f"print(usable_cpus(), choose_threads(0, {BIG}, load=0)[0])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
    free = subprocess.run([sys.executable, "-c", probe.split("\n", 2)[2]],
                          capture_output=True, text=True, timeout=60, env={**env, "LOCAL_WORLD_SIZE": "1"})
    assert int(free.stdout.split()[0]) == len(os.sched_getaffinity(0))  # unpinned: every CPU it may use


def test_train_threads_overrides_and_the_run_says_so(tmp_path, monkeypatch):
    from metagrad.step import MetaStep

    before, during = torch.get_num_threads(), []
    real_step = MetaStep.__call__
    monkeypatch.setattr(MetaStep, "__call__", lambda self, *a: during.append(torch.get_num_threads()) or real_step(self, *a))
    lines = []
    train(load_config("sine-quick", ["train.iterations=2", "train.test_tasks=4", "train.threads=2"]), tmp_path / "r",
          progress=False, log=lines.append)
    assert "  CPU threads: 2 (train.threads)" in lines
    assert during == [2, 2]  # the meta-steps ran with the chosen threads
    assert torch.get_num_threads() == before  # restored when the run ends


def test_eval_applies_train_threads_too_and_restores_torch(tmp_path, monkeypatch, capsys):
    import metagrad.evaluation
    from metagrad.cli import main

    train(load_config("sine-quick", ["train.iterations=2", "train.test_tasks=4"]), tmp_path / "r", progress=False,
          log=lambda message: None)
    before, during = torch.get_num_threads(), []
    real_evaluate = metagrad.evaluation.evaluate
    monkeypatch.setattr(metagrad.evaluation, "evaluate",
                        lambda *a, **k: during.append(torch.get_num_threads()) or real_evaluate(*a, **k))
    assert main(["eval", str(tmp_path / "r"), "--episodes", "4", "--set", "train.threads=3", "--json"]) == 0
    out = capsys.readouterr()
    assert "  CPU threads: 3 (train.threads)" in out.err.splitlines()
    assert during == [3]  # the evaluation ran with the chosen threads
    assert torch.get_num_threads() == before  # restored afterwards
