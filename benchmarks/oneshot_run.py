"""The start the one-shot benchmark scripts share: a trained run and its test episodes."""

import argparse
from collections.abc import Callable, Iterator, Sequence

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.train import load_run


def run_and_test_tasks(doc: str, episodes: int,
                       overrides: Sequence[str] | Callable[[argparse.Namespace], Sequence[str]] = (),
                       options: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse ``RUN --data-dir DATA [--episodes N]`` and whatever ``options`` adds; return (the
    arguments, the run's learner in eval mode with ``overrides`` set (a list, or a function of
    the arguments that gives one), its test task source)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--episodes", type=int, default=episodes)
    if options:
        options(p)
    args = p.parse_args()
    if args.episodes < 1:
        p.error(f"--episodes {args.episodes}: allowed: 1 or more")
    cfg, learner, _ = load_run(args.run, list(overrides(args) if callable(overrides) else overrides))
    return args, learner.eval(), build_task(with_data_dir(cfg, args.data_dir), "test")


def draws(episodes: int, per_draw: int) -> Iterator[int]:
    """How many episodes to draw at a time: ``per_draw`` until fewer are left, then the rest."""
    for start in range(0, episodes, per_draw):
        yield min(per_draw, episodes - start)
