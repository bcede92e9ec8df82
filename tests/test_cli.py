"""The command line as a user runs it: happy paths, every bad input, interruption and resume."""

import importlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from metagrad import MAML, MAMLConfig, Sinusoid, evaluate, evaluation
from metagrad.checkpoint import load_checkpoint
from metagrad.cli import main
from metagrad.config import load_config, preset_names
from metagrad.logger import MetricLogger, read_metrics
from metagrad.train import train

FAST = ["--set", "train.iterations=60", "--set", "train.test_tasks=20", "--set", "train.eval_tasks=10", "--set", "train.eval_every=30", "--set", "train.checkpoint_every=20", "--set", "train.log_every=10", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_presets_lists_names_with_descriptions_wrapped_to_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    rows = out.rstrip().splitlines()
    assert max(map(len, rows)) <= 100
    indent = rows[0].index(rows[0].split()[1])  # where descriptions start
    described, name = {}, None
    for row in rows:  # a continuation line is indented to the description column
        if not row[:indent].strip():
            described[name] += " " + row.strip()
        else:
            name, text = row.split(None, 1)
            described[name] = text
    for name in ("maml-sine", "fomaml-sine", "sine-quick"):
        assert name in described and len(described[name]) > 20
    assert described["sine-quick"].startswith("MAML on sinusoid regression, quick: the default of `metagrad train`")
    assert set(described) == set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_resolves_to_a_valid_config(name):
    sets = ['task.path="my_images"'] if name.startswith("folder") else []  # set by --data folder:PATH
    cfg = load_config(name, sets)  # unknown keys or out-of-range values raise ConfigError
    assert cfg.preset == name and len(cfg.description) > 20


def test_train_writes_a_complete_run_directory_and_eval_reads_it(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--out", str(out_dir), *FAST)
    assert code == 0, err
    assert "mse" in out and str(out_dir) in out
    # the report marks the headline and the setting that adapts as meta-training did (1 step)
    assert re.search(r"^  1 step +mse .*  <- as meta-trained$", out, re.M) and re.search(r"^  10 steps +mse .*  <- headline$", out, re.M)
    assert json.loads((out_dir / "report.json").read_text())["trained_setting"] == "1 step"
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "report.json", "training_curve.png", "fit.png"):
        assert (out_dir / name).is_file(), name
    assert any((out_dir / "tb").glob("events.out.tfevents.*"))
    assert json.loads((out_dir / "config.json").read_text())["learner"]["name"] == "maml"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert (out_dir / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = run_cli(capsys, "eval", str(out_dir), "--episodes", "30", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["metric"] == "mse" and result["episodes"] == 30 and result["ci95"] > 0
    assert result["headline"] == "10 steps" and result["trained_setting"] == "1 step"
    assert {r["setting"] for r in result["results"]} >= {"0 steps", "1 step", "10 steps"}
    code, out, _ = run_cli(capsys, "eval", str(out_dir / "checkpoint.pt"), "--episodes", "10")
    assert code == 0 and "10 steps" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--data-dir", "/tmp"], "--data-dir: the sinusoid task reads no data folder"),
        (["train", "--preset", "nope"], "unknown preset 'nope'; allowed: anil-miniimagenet-5w1s, "),
        (["train", "--preset", "maml-omniglot-5w1"], "unknown preset 'maml-omniglot-5w1'; did you mean one of fomaml-omniglot-5w1s, imaml-omniglot-5w1s, maml-omniglot-5w1s? (see"),
        (["train", "--preset", "metanet-quik"], "unknown preset 'metanet-quik'; did you mean metanet-quick? (see"),
        (["train", "--preset", "reptile-omniglot"], "did you mean one of reptile-omniglot-20w1s, reptile-omniglot-20w5s, "),
        (["train", "--set", "learner.inner_lrr=0.1"], "unknown key learner.inner_lrr"),
        (["train", "--set", "train.iterations=ten"], "train.iterations: expected int, got 'ten'"),
        (["train", "--set", "learner.inner_lr=0"], "learner.inner_lr must be > 0"),
        (["train", "--set", "learner.inner_lr=-0.5"], "learner.inner_lr must be > 0"),
        (["train", "--set", "learner.inner_steps=0"], "learner.inner_steps must be > 0"),
        (["train", "--set", "train.meta_batch=0"], "train.meta_batch must be > 0"),
        (["train", "--set", "train.lr=-1"], "train.lr must be > 0"),
        (["train", "--set", "learner.executor=gpu"], "allowed: vmap, loop"),
        (["train", "--set", "iterations=5"], "expected section.key"),
        (["train", "--set", "learner.name=nope"], "unknown learner 'nope'"),
        (["train", "--preset", "omniglot-quick", "--set", "task.ways=1"], "task.ways=1: a 1-way task has only one answer"),
        (["train", "--set", "train.lr=nan"], "train.lr must be a finite number, got nan"),
        (["train", "--set", "learner.inner_lr=inf"], "learner.inner_lr must be a finite number, got inf"),
    ],
)
def test_bad_config_input_is_one_line_with_status_2(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "r"))
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_asking_for_a_missing_gpu_names_the_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without one
    code, _, err = run_cli(capsys, "train", "--set", "train.device=cuda", "--out", str(tmp_path / "r"))
    assert code == 2 and "Traceback" not in err
    assert "train.device='cuda' but no CUDA GPU is available; add --set train.device=cpu" in err


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "nowhere"))
    assert code == 2 and "no checkpoint at" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    code, _, err = run_cli(capsys, "eval", str(bad))
    assert code == 2 and "not a readable metagrad checkpoint" in err and "Traceback" not in err
    torch.save({"weights": torch.zeros(2)}, bad)
    code, _, err = run_cli(capsys, "eval", str(bad))
    assert code == 2 and "not a metagrad checkpoint" in err


def test_checkpoint_with_code_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "x": Evil()}, path)
    code, _, err = run_cli(capsys, "eval", str(path))
    assert code == 2 and not (tmp_path / "pwned").exists()


def test_bad_episodes_flag(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path), "--episodes", "0"])
    assert e.value.code == 2
    assert "--episodes must be > 0" in capsys.readouterr().err


def test_resumed_run_equals_uninterrupted_run(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--set", "train.test_tasks=10", "--set", "train.eval_every=0", "--set", "train.checkpoint_every=25", "--quiet"]
    assert run_cli(capsys, "train", "--out", str(straight), "--set", "train.iterations=50", *common)[0] == 0
    assert run_cli(capsys, "train", "--out", str(split), "--set", "train.iterations=25", *common)[0] == 0
    first_seconds = load_checkpoint(split)["train_seconds"]
    code, out, err = run_cli(capsys, "train", "--out", str(split), "--set", "train.iterations=50")
    assert code == 0 and "resuming" in err and "from iteration 25" in err and " it/s" in out
    changed = next(line for line in err.splitlines() if "changed from the preset:" in line)  # the saved settings too
    assert {"train.iterations=50", "train.test_tasks=10", "train.eval_every=0", "train.checkpoint_every=25"} == set(
        changed.split(": ", 1)[1].split(", "))
    report = json.loads((split / "report.json").read_text())
    assert report["resumed_from"] == 25 and report["iterations_per_second"] > 0
    assert report["train_seconds"] > first_seconds > 0  # training time adds up over the two segments
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert b["iteration"] == 50
    for k in a["learner"]:
        assert torch.equal(a["learner"][k], b["learner"][k]), k
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iteration"] for r in rows if r["split"] == "train"]
    assert iters == sorted(iters) and len(iters) == len(set(iters))


def test_resume_with_a_different_preset_is_refused(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out_dir), *FAST)[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--preset", "fomaml-sine")
    assert code == 2 and "different learner config" in err
    # tasks per evaluation pass only bound memory; tasks per draw choose which tasks are tested
    assert run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.eval_chunk=3")[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--set", "train.eval_batch=3")
    assert code == 2 and "different train config" in err


def test_killed_training_process_resumes_from_its_checkpoint(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "metagrad", "train", "--out", str(out_dir), "--quiet",
           "--set", "train.iterations=100000", "--set", "train.checkpoint_every=50", "--set", "train.eval_every=0",
           "--set", "train.test_tasks=20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out_dir / "checkpoint.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "no checkpoint was written"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    reached = load_checkpoint(out_dir)["iteration"]
    assert reached >= 50
    finish = subprocess.run(
        [sys.executable, "-m", "metagrad", "train", "--out", str(out_dir), "--quiet", "--set", f"train.iterations={reached + 50}"],
        capture_output=True, text=True, timeout=120,
    )
    assert finish.returncode == 0, finish.stderr
    assert f"from iteration {reached}" in finish.stderr
    assert load_checkpoint(out_dir)["iteration"] == reached + 50


def test_sigterm_lets_the_iteration_and_its_log_finish_before_stopping(tmp_path, monkeypatch):
    """SIGTERM arriving inside a log write must not cut it short (the old handler raised right there)."""
    original = MetricLogger.log

    def log_then_sigterm_midway(self, iteration, split, values):
        if iteration == 20:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at once, in the middle of this call
        original(self, iteration, split, values)

    monkeypatch.setattr(MetricLogger, "log", log_then_sigterm_midway)
    cfg = load_config("sine-quick", ["train.iterations=100", "train.log_every=10", "train.eval_every=0"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert load_checkpoint(tmp_path / "run")["iteration"] == 20
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [10, 20] and rows[-1].keys() == rows[0].keys()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "metagrad", "train", "--out", str(out_dir), "--quiet",
           "--set", "train.iterations=100000", "--set", "train.checkpoint_every=100000", "--set", "train.eval_every=0",
           "--set", "train.log_every=10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out_dir / "metrics.jsonl").exists() or not (out_dir / "metrics.jsonl").read_text():
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-4000:]
    assert "Resume with: metagrad train --out" in err
    assert load_checkpoint(out_dir)["iteration"] > 0


def test_the_curve_flags_validation_classes_that_were_also_trained_on():
    from metagrad.plots import validation_label

    assert load_config("maml-omniglot-5w1s").task.hp.validation_trained_on  # the paper's protocol: train + val
    assert not load_config("maml-omniglot-5w1s", ["task.train_on=train"]).task.hp.validation_trained_on
    assert not hasattr(load_config("sine-quick").task.hp, "validation_trained_on")  # no classes: never flagged
    assert validation_label(True) == "validation (classes also trained on)" and validation_label(False) == "validation"


@pytest.mark.parametrize("override", ["train.lr=1e6", "learner.inner_lr=1e6"])
def test_a_diverging_run_stops_in_one_line_and_saves_nothing_non_finite(tmp_path, capsys, override):
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(out_dir), "--quiet", "--set", override,
                           "--set", "train.iterations=200", "--set", "train.log_every=10", "--set", "train.checkpoint_every=5")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("metagrad: error: training diverged by iteration") and "Traceback" not in err, err
    if (out_dir / "checkpoint.pt").exists():  # whatever was saved is a finite state
        state = load_checkpoint(out_dir)
        assert f"keeps iteration {state['iteration']}" in line
        assert all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point())
    assert not (out_dir / "report.json").exists()


def test_sigint_stops_at_the_iteration_end_and_resumes_exactly(tmp_path):
    """Ctrl-C mid-run saves the state after a whole iteration; resuming gives the uninterrupted weights."""
    common = ["--quiet", "--set", "train.iterations=200", "--set", "train.checkpoint_every=100000",
              "--set", "train.eval_every=0", "--set", "train.log_every=10", "--set", "train.test_tasks=20"]
    out_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "metagrad", "train", "--out", str(out_dir), *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out_dir / "metrics.jsonl").exists() or not (out_dir / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; checkpoint saved" in err, err[-3000:]
    reached = load_checkpoint(out_dir)["iteration"]
    assert 0 < reached < 200
    finish = subprocess.run([sys.executable, "-m", "metagrad", "train", "--out", str(out_dir), *common],
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-3000:]
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "metagrad", "train", "--out", str(whole), *common], check=True, capture_output=True, timeout=300)
    a, b = load_checkpoint(out_dir), load_checkpoint(whole)
    for k in b["learner"]:
        assert torch.equal(a["learner"][k], b["learner"][k]), k


def test_sigint_inside_the_optimizer_step_saves_the_whole_step(tmp_path, monkeypatch):
    """Ctrl-C between the meta-gradient and the optimizer step (once raised there: a checkpoint
    labelled k holding half-applied or k+1 weights) finishes the iteration, then saves it."""
    from metagrad.step import MetaStep

    original = MetaStep.__call__
    calls = []

    def step_with_sigint_midway(self, batch, total):
        calls.append(1)
        if len(calls) == 21:
            original_step = self.optimizer.step

            def interrupted_step(*a, **k):
                os.kill(os.getpid(), signal.SIGINT)  # delivered at once, inside the step
                return original_step(*a, **k)

            self.optimizer.step = interrupted_step
            try:
                return original(self, batch, total)
            finally:
                self.optimizer.step = original_step
        return original(self, batch, total)

    overrides = ["train.iterations=60", "train.log_every=10", "train.eval_every=0", "train.checkpoint_every=1000", "train.test_tasks=20"]
    monkeypatch.setattr(MetaStep, "__call__", step_with_sigint_midway)
    with pytest.raises(KeyboardInterrupt):
        train(load_config("sine-quick", overrides), tmp_path / "run", progress=False, log=lambda m: None)
    monkeypatch.setattr(MetaStep, "__call__", original)
    saved = load_checkpoint(tmp_path / "run")
    assert saved["iteration"] == 21
    train(load_config("sine-quick", overrides[:1] and ["train.iterations=21", *overrides[1:]]), tmp_path / "ref", progress=False, log=lambda m: None)
    ref = load_checkpoint(tmp_path / "ref")
    for k in ref["learner"]:
        assert torch.equal(saved["learner"][k], ref["learner"][k]), k
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is removed again


def test_help_and_presets_start_without_importing_torch():
    """Start-up cost (docs/performance.md): the commands that need no tensors import no torch."""
    probe = ("import sys\nfrom metagrad.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "main(['presets'])\nassert 'torch' not in sys.modules, 'torch was imported'\n"
             "import metagrad\nassert metagrad.MAML.__name__ == 'MAML' and 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "maml-sine" in done.stdout


def test_without_tensorboard_a_run_says_so_once_and_still_logs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    said = []
    logger = MetricLogger(tmp_path, log=said.append)
    logger.log(1, "train", {"loss": 0.5})
    logger.close()
    assert len(said) == 1 and "pip install 'metagrad[tensorboard]'" in said[0]
    assert read_metrics(tmp_path) == [{"iteration": 1, "split": "train", "loss": 0.5}]
    assert not (tmp_path / "tb").exists()


def test_off_a_terminal_progress_is_one_line_per_log_interval(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), "--set", "train.iterations=40",
                           "--set", "train.log_every=10", "--set", "train.eval_every=20", "--set", "train.test_tasks=10",
                           "--set", "train.eval_tasks=10")
    assert code == 0, err
    rows = [line for line in err.splitlines() if line.startswith("  iteration ")]
    assert [r.split(":")[0] for r in rows] == ["  iteration 10/40", "  iteration 20/40", "  iteration 20",
                                               "  iteration 30/40", "  iteration 40/40", "  iteration 40"]
    assert "validation 10 steps: mse" in rows[2] and "\r" not in err
    assert "mse" not in rows[0]  # a regression's mse is its loss: shown once
    # the final test of 10 tasks takes under QUIET_S seconds, so it leaves no progress lines either
    assert "  evaluating: " not in err


def test_off_a_terminal_each_row_gives_its_interval_speed_and_the_time_left(tmp_path, capsys, monkeypatch):
    # perf_counter is read before and after each meta-step: the first takes 30 s (as a compiled
    readings, t = [], 0.0  # step does), every other one 0.5 s
    for seconds in [30.0] + [0.5] * 39:
        readings += [t, t + seconds]
        t += seconds
    clock = itertools.chain(readings, itertools.count(t))
    train_module = importlib.import_module("metagrad.train")
    monkeypatch.setattr(train_module, "time", SimpleNamespace(time=time.time, perf_counter=lambda: next(clock)))
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), "--set", "train.iterations=40",
                           "--set", "train.log_every=10", "--set", "train.eval_every=0", "--set", "train.test_tasks=10")
    assert code == 0, err
    rows = [line for line in err.splitlines() if line.startswith("  iteration ")]
    # 10 steps in 34.5 s, then 10 in 5 s: the rate of each interval, not of the run so far (20 / 39.5 s)
    assert rows[0].endswith("(0.29 it/s, about 2 min left)"), rows[0]
    assert rows[1].endswith("(2 it/s, about 10 s left)"), rows[1]
    assert rows[3].endswith("(2 it/s)"), rows[3]  # done: no time left to give


def test_off_a_terminal_an_evaluation_says_how_far_it_got_once_it_runs_for_seconds(monkeypatch, capsys):
    clock = iter(range(0, 1000, 2))  # every reading of the clock 2 s after the one before
    monkeypatch.setattr(evaluation, "time", SimpleNamespace(time=lambda: next(clock)))
    learner = MAML(MAMLConfig(inner_lr=0.01, inner_steps=1), nn.Linear(1, 1), kind="regression")
    evaluate(learner, Sinusoid(), episodes=20, batch_size=2, progress=True)  # capsys: stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  evaluating: ")]
    # t0 = 0 s; the tenths at 2, 4, 6 ... tasks read 2, 4, 6 ... s: quiet until QUIET_S (5 s)
    assert lines == [f"  evaluating: {done}/20 tasks ({done} s)" for done in range(6, 21, 2)]


def test_plot_redraws_a_run_and_takes_overrides(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", str(out_dir), *FAST)[0] == 0
    for name in ("training_curve.png", "fit.png"):
        (out_dir / name).unlink()
    code, out, err = run_cli(capsys, "plot", str(out_dir), "--set", "learner.eval_steps=3")
    assert code == 0, err
    for name in ("training_curve.png", "fit.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in out
    code, _, err = run_cli(capsys, "plot", str(out_dir), "--set", "learner.eval_steps=-1")
    assert code == 2 and "learner.eval_steps must be >= 0" in err


def test_output_into_a_reader_that_stops_early_is_not_an_error():
    for reader in ("head -n 1", "true"):  # stops after a line; reads nothing at all
        done = subprocess.run(f"'{sys.executable}' -m metagrad presets | {reader}", shell=True, capture_output=True,
                              text=True, timeout=120)
        assert done.stderr == "" and done.stdout.count("\n") == (reader != "true"), done.stderr


def test_data_dir_sets_the_data_folder_of_a_task_that_has_one(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--preset", "maml-omniglot-5w1s", "--data-dir", str(tmp_path), "--print-config")
    assert code == 0, err
    assert json.loads(out)["task"]["data_dir"] == str(tmp_path)
