"""Command line: ``metagrad train | eval | presets | plot``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import MetagradError

DEFAULT_PRESET = "sine-quick"


def _print_estimates(estimates: dict, headline: str, out=print) -> None:
    width = max(len(k) for k in estimates)
    for key, est in estimates.items():
        mark = "  <- headline" if key == headline else ""
        out(f"  {key:<{width}}  {est['metric']} {_fmt(est)}  ({est['episodes']} tasks){mark}")


def _fmt(est: dict) -> str:
    if est["metric"] == "accuracy":
        return f"{100 * est['mean']:.2f}% ± {100 * est['ci95']:.2f}%"
    return f"{est['mean']:.4f} ± {est['ci95']:.4f}"


def _overrides(args) -> list[str]:
    sets = list(args.set or [])
    if getattr(args, "data_dir", None):
        sets.append(f"task.data_dir={json.dumps(str(args.data_dir))}")
    return sets


def cmd_train(args) -> int:
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .config import apply_overrides, load_config, resolve
    from .train import train

    out = Path(args.out) if args.out else None
    if out is not None and (out / CHECKPOINT_NAME).exists() and args.preset is None:
        # resume: the run's own config, plus any --set overrides
        cfg = resolve(apply_overrides(load_checkpoint(out)["config"], _overrides(args)))
    else:
        sets = _overrides(args)
        if args.data:
            if not args.data.startswith("folder:"):
                raise MetagradError(f"--data {args.data!r}: expected folder:PATH (a folder with one sub-folder of images per class)")
            sets = [f"task.path={json.dumps(args.data[len('folder:'):])}", *sets]
        preset = args.preset or (DEFAULT_PRESET if not args.data else "folder-quick")
        cfg = load_config(preset, sets)
    if out is None:
        out = Path("runs") / f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"metagrad train: {cfg.preset} — {cfg.description}", file=sys.stderr)
    print(f"  run directory: {out}", file=sys.stderr)
    try:
        report = train(cfg, out, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    except KeyboardInterrupt:
        print(f"\ninterrupted; checkpoint saved. Resume with: metagrad train --out {out}", file=sys.stderr)
        return 130
    print(f"\ntrained {report['iterations']} iterations in {report['train_seconds']:.1f} s on {report['device']}")
    print(f"held-out test tasks ({cfg.task.name}):")
    _print_estimates(report["test"], report["headline"])
    print(f"run directory: {out}")
    for p in report.get("plots", []):
        print(f"  plot: {p}")
    return 0


def cmd_eval(args) -> int:
    from .build import build_task
    from .evaluate import evaluate
    from .train import TEST_SEED, load_run, resolve_device

    cfg, learner, state = load_run(args.run, _overrides(args))
    device = resolve_device(cfg.train.device)
    import torch

    dtype = getattr(torch, cfg.train.dtype)
    learner.to(device, dtype)
    tasks = build_task(cfg, args.split)
    est = evaluate(learner, tasks, args.episodes or cfg.train.test_tasks, TEST_SEED, cfg.train.eval_batch, device, dtype)
    result = {
        "checkpoint": str(args.run),
        "iteration": state["iteration"],
        "split": args.split,
        "headline": learner.headline,
        "results": [{"setting": k, **e.to_dict()} for k, e in est.items()],
    }
    head = est[learner.headline].to_dict()
    result.update({"metric": head["metric"], "mean": head["mean"], "ci95": head["ci95"], "episodes": head["episodes"]})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.run} (iteration {state['iteration']}), {args.split} split:")
        _print_estimates({k: e.to_dict() for k, e in est.items()}, learner.headline)
    return 0


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    names = preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {load_preset(name).get('description', '')}")
    return 0


def cmd_plot(args) -> int:
    from .build import build_task
    from .plots import make_run_plots
    from .train import load_run

    cfg, learner, _ = load_run(args.run)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    for p in make_run_plots(run_dir, learner, build_task(cfg, "test")):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metagrad", description="Meta-learning in PyTorch: train, evaluate and adapt meta-learners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help=f"meta-train a preset (default: {DEFAULT_PRESET}); resumes an existing --out")
    p.add_argument("--preset", help="preset name (see `metagrad presets`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set train.iterations=500 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/PRESET-TIME); an existing one is resumed")
    p.add_argument("--data-dir", help="where datasets are stored/downloaded (default: $METAGRAD_DATA or ~/.cache/metagrad)")
    p.add_argument("--data", help="folder:PATH — train on your own images, one sub-folder per class")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on held-out tasks (mean ± 95%% CI)")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--episodes", type=int, help="number of held-out tasks (default: the run's train.test_tasks, 600)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir", help="dataset directory, if it moved since training")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set learner.eval_steps=5")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("presets", help="list presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("plot", help="(re)draw a run's PNG figures")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "episodes", None) is not None and args.episodes <= 0:
        parser.error(f"--episodes must be > 0, got {args.episodes}")
    try:
        return args.func(args)
    except MetagradError as e:
        print(f"metagrad: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
