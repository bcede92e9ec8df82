"""Command line: ``metagrad train | eval | adapt | presets | plot | bench``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from .errors import MetagradError

DEFAULT_PRESET = "sine-quick"


def _print_estimates(estimates: dict, headline: str, trained: str | None = None, out=print) -> None:
    """One line per setting; the headline and the setting that adapts as meta-training did are marked."""
    width = max(len(k) for k in estimates)
    for key, est in estimates.items():
        marks = [m for m, k in (("headline", headline), ("as meta-trained", trained)) if key == k]
        mark = f"  <- {', '.join(marks)}" if marks else ""
        out(f"  {key:<{width}}  {est['metric']} {_fmt(est)}  ({est['episodes']} tasks){mark}")


def _fmt(est: dict) -> str:
    if est["metric"] == "accuracy":
        return f"{100 * est['mean']:.2f}% ± {100 * est['ci95']:.2f}%"
    return f"{est['mean']:.4f} ± {est['ci95']:.4f}"


def _with_data_dir(cfg, args):
    """``cfg`` with --data-dir as its task's data folder, when given (config.with_data_dir)."""
    from .config import with_data_dir

    return with_data_dir(cfg, args.data_dir) if getattr(args, "data_dir", None) else cfg


def cmd_train(args) -> int:
    from .checkpoint import CHECKPOINT_NAME
    from .config import apply_overrides, changes_from_preset, load_config, resolve
    from .train import StopNow, saved_config, train

    out = Path(args.out) if args.out else None
    saved = saved_config(out) if out is not None and args.preset is None else None
    if saved is not None:  # resume: the run's own config, plus any --set overrides
        cfg = _with_data_dir(resolve(apply_overrides(saved, list(args.set or []))), args)
    else:
        sets = list(args.set or [])
        if args.data:
            if not args.data.startswith("folder:"):
                raise MetagradError(f"--data {args.data!r}: expected folder:PATH (a folder with one sub-folder of images per class)")
            sets = [f"task.path={json.dumps(args.data[len('folder:'):])}", *sets]
        preset = args.preset or (DEFAULT_PRESET if not args.data else "folder-quick")
        cfg = _with_data_dir(load_config(preset, sets), args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if out is None:
        out = Path("runs") / f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)  # under torchrun rank 0 reports
    say(f"metagrad train: {cfg.preset} — {cfg.description}", file=sys.stderr)
    changes = changes_from_preset(cfg)
    if changes:
        say(f"  changed from the preset: {', '.join(changes)}", file=sys.stderr)
    say(f"  run directory: {out}", file=sys.stderr)
    try:
        report = train(cfg, out, progress=not args.quiet, log=lambda m: say(m, file=sys.stderr))
    except KeyboardInterrupt as e:
        saved = "stopped without saving" if isinstance(e, StopNow) else "interrupted; checkpoint saved"
        if (Path(out) / CHECKPOINT_NAME).exists():
            say(f"\n{saved}. Resume with: metagrad train --out {out}", file=sys.stderr)
        else:
            say(f"\n{saved}; no checkpoint yet (the run starts afresh)", file=sys.stderr)
        return 130
    speed = f", {report['iterations_per_second']:.3g} it/s" if report["iterations_per_second"] else ""
    say(f"\ntrained {report['iterations']} iterations in {report['train_seconds']:.1f} s on {report['device']}{speed}"
        + (f" ({report['world_size']} processes)" if report["world_size"] > 1 else ""))
    say(f"held-out test tasks ({cfg.task.name}):")
    _print_estimates(report["test"], report["headline"], report.get("trained_setting"), out=say)
    for key, value in report["learner"].items():
        if not isinstance(value, dict):
            say(f"{key.replace('_', ' ')}: {', '.join(value) if isinstance(value, list) else value}")
    say(f"run directory: {out}")
    for p in report.get("plots", []):
        say(f"  plot: {p}")
    return 0


def cmd_eval(args) -> int:
    from .build import build_task
    from .evaluation import evaluate
    from .train import TEST_SEED, load_run, resolve_device

    runs = [load_run(run, list(args.set or [])) for run in args.run]
    cfgs = [_with_data_dir(c, args) for c, _, _ in runs]
    from .ensemble import Ensemble, SameEpisodes, check_members, drawing_groups, eval_chunk

    cfg, learner = cfgs[0], runs[0][1]
    drawing, chunk = drawing_groups(cfgs), eval_chunk(cfgs)  # one run: [0] and its own chunk
    if len(runs) > 1:  # an ensemble: the tasks of the first run, every member scored on them
        check_members(args.run, cfgs, [m for _, m, _ in runs])
        learner = Ensemble(args.run, [m for _, m, _ in runs], drawing)
    # one source per way of drawing the images (e.g. 32 and 64 px members): the same tasks, each drawn as its member was trained
    sources = [build_task(cfgs[drawing.index(d)], args.split) for d in range(max(drawing) + 1)]
    tasks = sources[0] if len(sources) == 1 else SameEpisodes(sources)
    probe = max(sources, key=lambda s: math.prod(s.input_shape))  # the largest images decide the threads
    device = resolve_device(cfg.train.device)
    import torch

    dtype = getattr(torch, cfg.train.dtype)
    learner.to(device, dtype)
    with ExitStack() as threads_set:
        if device.type == "cpu":
            from .threads import use_threads

            threads, why = threads_set.enter_context(use_threads(cfg.train.threads, probe, cfg.train.eval_batch))
            print(f"  CPU threads: {threads} ({why})", file=sys.stderr)
        est = evaluate(learner, tasks, args.episodes or cfg.train.test_tasks, TEST_SEED, cfg.train.eval_batch, device,
                       dtype, progress=True, chunk=chunk)
    iterations = [s["iteration"] for _, _, s in runs]
    result = {
        "checkpoint": args.run[0] if len(runs) == 1 else args.run,
        "iteration": iterations[0] if len(runs) == 1 else iterations,
        "split": args.split,
        "headline": learner.headline,
        "trained_setting": learner.trained_setting,
        "results": [{"setting": k, **e.to_dict()} for k, e in est.items()],
    }
    head = est[learner.headline].to_dict()
    result.update({"metric": head["metric"], "mean": head["mean"], "ci95": head["ci95"], "episodes": head["episodes"]})
    if args.json:
        print(json.dumps(result))
    else:
        names = ", ".join(f"{run} (iteration {it})" for run, it in zip(args.run, iterations))
        print(f"{'ensemble of ' if len(runs) > 1 else ''}{names}, {args.split} split:")
        _print_estimates({k: e.to_dict() for k, e in est.items()}, learner.headline, learner.trained_setting)
    return 0


def cmd_adapt(args) -> int:
    import csv
    import io

    import torch

    from .io import atomic_write_text
    from .tasks.batch import TaskSpec
    from .tasks.folder import check_class_count, load_query_folder, load_support_folder
    from .evaluation import vote
    from .tasks.images import as_float, episode_views, opposite_polarity, query_views
    from .train import load_run

    if args.predictions and Path(args.predictions).suffix.lower() not in (".csv", ".json"):
        raise MetagradError(f"--predictions {args.predictions}: expected a file name ending in .csv or .json")
    cfg, learner, state = load_run(args.checkpoint)
    spec = TaskSpec(**state["task_spec"])
    if spec.kind != "classification" or len(spec.input_shape) != 3:
        raise MetagradError(f"{args.checkpoint} was trained on {spec.kind} tasks of shape {list(spec.input_shape)}; adapt needs an image classifier")
    channels, size = spec.input_shape[0], spec.input_shape[1]
    # new images are cut as the run's training images were (task.crop, e.g. around the strokes)
    crop = getattr(cfg.task.hp, "crop", "none")
    support = load_support_folder(args.support, size, channels, shots=args.shots or 1, crop=crop)
    if learner.fixed_ways is not None:
        check_class_count(support.n_classes, learner.fixed_ways)
    query = load_query_folder(args.query, size, channels, crop=crop)

    invert = args.polarity == "invert" or (args.polarity == "auto" and opposite_polarity(spec.background, support.images))
    if invert and args.polarity == "auto":
        print(f"inverting pixel values: {args.support} is dark on light, the model was trained light on dark"
              if spec.background < 0.5 else
              f"inverting pixel values: {args.support} is light on dark, the model was trained dark on light",
              file=sys.stderr)

    def pixels(images):
        x = as_float(images)
        return 1.0 - x if invert else x

    # the run's test-time views (task.eval_augment, e.g. shifts) apply here as in its evaluation
    augment = getattr(cfg.task.hp, "eval_augment", "none")
    sx, sy, qx, _ = episode_views(augment, pixels(support.images)[None], support.labels[None],
                                  pixels(query.images)[None], torch.zeros(1, len(query.paths), dtype=torch.long))
    learner.eval()
    with torch.no_grad():
        logits = vote(learner.adapt(sx, sy)(qx), query_views(augment))[0]
    probs = torch.softmax(logits.float(), dim=-1)
    conf, pred = probs.max(dim=-1)
    rows = [
        {"file": f, "predicted": support.class_names[int(p)], "probability": round(float(c), 4), "true": t or ""}
        for f, p, c, t in zip(query.paths, pred, conf, query.classes)
    ]
    if args.predictions:
        out = Path(args.predictions)
        if out.suffix.lower() == ".json":
            atomic_write_text(out, json.dumps(rows, indent=2) + "\n")
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(out, buf.getvalue())
        print(f"wrote {len(rows)} predictions to {out}")
    else:
        for r in rows:
            print(f"{r['file']}\t{r['predicted']}\t{r['probability']:.3f}")
    labelled = [r for r in rows if r["true"]]
    if labelled:
        acc = sum(r["predicted"] == r["true"] for r in labelled) / len(labelled)
        print(f"accuracy on the {len(labelled)} query images in class sub-folders: {100 * acc:.1f}%")
    if args.sheet:
        from .plots import plot_contact_sheet

        sheet = plot_contact_sheet(query.images, [r["predicted"] for r in rows], [r["probability"] for r in rows],
                                   [r["true"] or None for r in rows], Path(args.sheet))
        print(f"contact sheet: {sheet}")
    return 0


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    import shutil
    import textwrap

    names = preset_names()
    width = max(map(len, names)) + 2
    columns = max(shutil.get_terminal_size((100, 24)).columns, width + 40)
    for name in names:  # descriptions wrapped to the terminal, continued under their column
        lines = textwrap.wrap(load_preset(name).get("description", ""), columns - width) or [""]
        print(f"{name:<{width}}{lines[0]}")
        for line in lines[1:]:
            print(" " * width + line)
    return 0


def cmd_plot(args) -> int:
    from .build import build_task
    from .plots import make_run_plots
    from .train import load_run

    cfg, learner, _ = load_run(args.run, list(args.set or []))
    cfg = _with_data_dir(cfg, args)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    for p in make_run_plots(run_dir, learner, build_task(cfg, "test"), task_config=cfg.task.hp):
        print(p)
    return 0


def cmd_bench(args) -> int:
    from .bench import run

    return run(args)


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
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit without training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on held-out tasks (mean ± 95%% CI)")
    p.add_argument("run", nargs="+", help="run directory or checkpoint file; several classification runs are also "
                                          "scored as an ensemble (their log-probabilities summed, on the first run's tasks, each run's "
                                          "images at its own task.image_size and task.crop; with three or more, also the "
                                          "ensembles of the first 2, 3, ...)")
    p.add_argument("--episodes", type=int, help="number of held-out tasks (default: the run's train.test_tasks, 600)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir", help="dataset directory, if it moved since training")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set learner.eval_steps=5")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("adapt", help="adapt a trained image classifier to your support folder and predict your query images "
                                     "(images cut and shifted as the run's were: task.crop, task.eval_augment)")
    p.add_argument("checkpoint", help="run directory or checkpoint file of a classification run")
    p.add_argument("--support", required=True, help="folder with one sub-folder of labelled images per class")
    p.add_argument("--query", required=True, help="folder of images to classify (loose, or in class sub-folders to score accuracy)")
    p.add_argument("--shots", type=int, help="require at least this many images per support class (default 1)")
    p.add_argument("--predictions", metavar="FILE", help="write predictions to FILE.csv or FILE.json (default: print them)")
    p.add_argument("--sheet", metavar="FILE", help="also draw the query images with their predicted labels to this PNG")
    p.add_argument("--polarity", choices=("auto", "keep", "invert"), default="auto",
                   help="auto (default): invert pixel values when the support images are line drawings of the "
                        "opposite polarity to the training images (dark ink on white for an Omniglot model); "
                        "keep: never; invert: always")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("presets", help="list presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("plot", help="(re)draw a run's PNG figures")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-dir", help="dataset directory, if it moved since training")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set learner.eval_steps=5")
    p.set_defaults(func=cmd_plot)

    from .bench import add_arguments

    p = sub.add_parser("bench", help="iterations per second and peak memory of MAML and every learner (docs/performance.md)",
                       description="Time MAML's meta-step (one training iteration on a synthetic batch) per "
                                   "configuration, or with --learners each learner's whole training iteration on "
                                   "its preset: iterations per second and peak memory, eager and compiled, on the "
                                   "CPU or a GPU (docs/performance.md).")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("episodes", "shots"):
        if getattr(args, flag, None) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be > 0, got {getattr(args, flag)}")
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except MetagradError as e:
        print(f"metagrad: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped (`metagrad presets | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as e:  # a file the user named cannot be read or written (permissions, full disk)
        where = f"{e.filename}: " if e.filename else ""
        print(f"metagrad: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
