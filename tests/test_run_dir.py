"""A run directory is safe: locked while in use, resumed only as the run it holds, and every
failure around it is one line (exit status 2), never a traceback."""

import json
import os
import pathlib
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from metagrad.checkpoint import load_checkpoint, save_checkpoint
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.logger import read_metrics

TINY = ["--quiet", "--set", "train.test_tasks=10", "--set", "train.eval_every=0", "--set", "train.log_every=10"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("metagrad: error: "), err
    return line


def test_a_run_directory_in_use_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    out_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from metagrad.rundir import locked\n"
         "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)", str(out_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=20", *TINY)
        assert code == 2
        assert f"{out_dir} is in use by another metagrad train (pid {holder.pid})" in one_line(err)
        assert not (out_dir / "config.json").exists() and not (out_dir / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=20", *TINY)
    assert code == 0, err
    assert load_checkpoint(out_dir)["iteration"] == 20


def test_a_run_stopped_before_its_first_checkpoint_resumes_its_own_config(tmp_path, capsys):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    load_config("fomaml-sine", ["train.iterations=20", "train.test_tasks=10", "train.eval_every=0", "train.log_every=10"]).save(out_dir / "config.json")
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--preset", "maml-sine", *TINY)
    assert code == 2 and "different learner config" in one_line(err)
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--quiet")  # no preset: the run's own
    assert code == 0, err
    saved = load_checkpoint(out_dir)["config"]
    assert saved["preset"] == "fomaml-sine" and saved["learner"]["first_order"] is True
    assert json.loads((out_dir / "config.json").read_text()) == saved


def test_resuming_with_another_number_of_processes_or_task_device_says_so(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=20", *TINY)[0] == 0
    state = load_checkpoint(out_dir)
    assert state["world_size"] == 1
    save_checkpoint(out_dir / "checkpoint.pt", {**state, "world_size": 2})  # as if trained by torchrun with 2
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=30", *TINY)
    assert code == 0, err
    assert "warning: this run was trained with 2 processes and resumes with 1" in err
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=40", *TINY)
    assert code == 0 and "warning" not in err  # the checkpoint now records 1
    save_checkpoint(out_dir / "checkpoint.pt", {**load_checkpoint(out_dir), "task_device": "cuda"})
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=50", *TINY)
    assert code == 0, err
    assert "warning: this run drew its tasks on the cuda and now draws them on the cpu" in err
    assert "resuming" in err and load_checkpoint(out_dir)["iteration"] == 50


def test_the_first_log_window_after_a_resume_averages_only_its_own_iterations(tmp_path, capsys):
    every = tmp_path / "every"  # one row per iteration: the ground truth
    common = ["--quiet", "--set", "train.test_tasks=10", "--set", "train.eval_every=0"]
    assert run_cli(capsys, "train", "--out", str(every), "--set", "train.iterations=30", "--set", "train.log_every=1", *common)[0] == 0
    split = tmp_path / "split"
    tens = [*common, "--set", "train.log_every=10", "--set", "train.checkpoint_every=25"]
    assert run_cli(capsys, "train", "--out", str(split), "--set", "train.iterations=25", *tens)[0] == 0
    assert run_cli(capsys, "train", "--out", str(split), "--set", "train.iterations=30")[0] == 0
    truth = {r["iteration"]: r["loss"] for r in read_metrics(every) if r["split"] == "train"}
    row = next(r for r in read_metrics(split) if r["split"] == "train" and r["iteration"] == 30)
    assert row["loss"] == pytest.approx(sum(truth[i] for i in range(26, 31)) / 5, rel=1e-5)


def test_an_unwritable_run_directory_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "train", "--out", str(blocker / "run"), "--set", "train.iterations=5", *TINY)
    assert code == 2 and f"cannot write the run directory {blocker / 'run'}" in one_line(err)

    def read_only(self, *a, **k):  # the tests run as root, whom chmod does not stop
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "touch", read_only)
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "ro"), "--set", "train.iterations=5", *TINY)
    assert code == 2 and "cannot write the run directory" in one_line(err) and "Permission denied" in err


def test_a_full_disk_keeps_the_previous_checkpoint_and_is_one_line(tmp_path, capsys, monkeypatch):
    import metagrad.checkpoint as ckpt

    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *a, **k)
        pathlib.Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt.torch, "save", save_until_the_disk_fills)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=40",
                           "--set", "train.checkpoint_every=20", *TINY)
    assert code == 2
    assert f"could not write {out_dir / 'checkpoint.pt'}: the disk is full; the previous checkpoint is kept" in one_line(err)
    monkeypatch.undo()
    assert load_checkpoint(out_dir)["iteration"] == 20
    assert [p.name for p in out_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_damaged_foreign_and_hostile_checkpoints_are_one_line(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=20", *TINY)[0] == 0
    state = load_checkpoint(out_dir)

    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {k: v for k, v in state.items() if k != "task_spec"})
    code, _, err = run_cli(capsys, "eval", str(partial))
    assert code == 2 and "lacks 'task_spec'" in one_line(err)

    name = next(iter(state["learner"]))
    foreign = {**state, "learner": {**state["learner"], name: torch.zeros(3, 3, 3)}}
    save_checkpoint(out_dir / "checkpoint.pt", foreign)
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=30", *TINY)
    assert code == 2 and "do not fit the configured model" in one_line(err)
    code, _, err = run_cli(capsys, "eval", str(out_dir))
    assert code == 2 and "do not fit the configured model" in one_line(err)
    save_checkpoint(out_dir / "checkpoint.pt", {**state, "optimizer": {"state": {}, "param_groups": []}})
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.iterations=30", *TINY)
    assert code == 2 and "do not fit the optimizer" in one_line(err)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({**state, "learner": Evil()}, out_dir / "checkpoint.pt")
    for argv in (["eval", str(out_dir)], ["train", "--out", str(out_dir)]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "it holds Python objects that could run code when loaded" in one_line(err)
        assert "weights_only" not in err and not (tmp_path / "pwned").exists()


def test_adapt_names_the_file_types_it_writes(tmp_path, capsys):
    code, _, err = run_cli(capsys, "adapt", str(tmp_path), "--support", str(tmp_path), "--query", str(tmp_path),
                           "--predictions", str(tmp_path / "pred.txt"))
    assert code == 2 and "expected a file name ending in .csv or .json" in one_line(err)
