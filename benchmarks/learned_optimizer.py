"""The learned optimizer of a run against SGD, NAG (momentum 0.9), RMSprop and Adam, each at its
best learning rate (10^-4 .. 10^1, three per decade, chosen on validation tasks at the trained
horizon), on held-out test tasks for more steps than it was trained for.

    OMP_NUM_THREADS=1 python benchmarks/learned_optimizer.py RUN [--tasks 64] [--steps 200] [--data-dir DATA]

Writes RUN/optimizers.json (learning rates; mean loss ± 95 % CI at the horizon and at the end;
the share of tasks on which the learned optimizer ends lower, paired on the same tasks, starts
and mini-batches; the mean curve of each optimizer) and RUN/optimizers.png.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.io import atomic_write_text
from metagrad.optim import compare_optimizers
from metagrad.plots import plot_loss_curves
from metagrad.train import TEST_SEED, VAL_SEED, load_run


def summary(c: torch.Tensor) -> dict:
    """Mean and 95 % CI over tasks of one step's losses (inf if any task diverged)."""
    n = len(c)
    return {"mean": c.mean().item(), "ci95": (1.96 * c.std() / n**0.5).item() if torch.isfinite(c).all() else None,
            "diverged": int((~torch.isfinite(c)).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--tasks", type=int, default=64, help="optimizees for tuning and for the test (each)")
    p.add_argument("--steps", type=int, default=0, help="test steps (default: the learner's eval_steps)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    cfg, learner, state = load_run(Path(args.run))
    if args.data_dir:
        cfg = with_data_dir(cfg, args.data_dir)
    steps = args.steps or learner.hp.eval_steps
    tune = build_task(cfg, "val").sample(args.tasks, torch.Generator().manual_seed(VAL_SEED))
    test = build_task(cfg, "test").sample(args.tasks, torch.Generator().manual_seed(TEST_SEED))
    t0 = time.time()
    result = compare_optimizers(learner, tune, test, steps)
    horizon = learner.hp.train_steps
    report = {"run": args.run, "iteration": state["iteration"], "tasks": args.tasks, "horizon": horizon, "steps": steps,
              "seconds": round(time.time() - t0, 1), "optimizers": {}}
    for name, r in result.items():
        c = r["curves"]
        learned = result["learned (LSTM)"]["curves"]
        report["optimizers"][name] = {"lr": r["lr"], "at_horizon": summary(c[horizon]), "at_end": summary(c[-1]),
                                      # paired: the same tasks, starts and mini-batches
                                      "tasks_learned_lower_at_horizon": (learned[horizon] < c[horizon]).double().mean().item(),
                                      "tasks_learned_lower_at_end": (learned[-1] < c[-1]).double().mean().item(),
                                      "mean_curve": [round(v, 6) for v in c.mean(1).tolist()]}
        lr = f"{r['lr']:.3g}" if r["lr"] else "-"
        print(f"{name:16s} lr {lr:8s} loss at step {horizon}: {c[horizon].mean():.4g}   at step {steps}: {c[-1].mean():.4g}")
    atomic_write_text(Path(args.run) / "optimizers.json", json.dumps(report, indent=1) + "\n")
    title = f"{cfg.preset or cfg.task.name}: {args.tasks} held-out tasks, iteration {state['iteration']}"
    print(plot_loss_curves({k: r["curves"] for k, r in result.items()}, Path(args.run) / "optimizers.png", title, horizon))


if __name__ == "__main__":
    main()
