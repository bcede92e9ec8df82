"""Ensembles on Lake's one-shot challenge: do several trained networks beat one?

Loads runs trained with the same task settings, draws test episodes from the first run's
config (with ``--set`` overrides, e.g. ``task.eval_augment=shifts_both``) and scores each run
alone and their ensemble, which sums the members' log-probabilities (after summing each
query's views, as ``metagrad eval`` does). Every number is over the same episodes, the ones
``metagrad eval RUN --episodes E`` draws (so each member's row repeats its own evaluation).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_ensemble.py RUN RUN2 [...] --data-dir DATA \
        [--episodes 1000] [--set task.eval_augment=shifts_both]
"""

import argparse

import torch

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.evaluation import mean_ci95, vote
from metagrad.train import TEST_SEED, load_run

SAME = ("image_size", "crop", "split_scheme")  # task settings the members must share, with the task's name


def shared(cfg) -> dict:
    """The task settings of a run that its ensemble's other members must match."""
    return {"name": cfg.task.name, **{key: getattr(cfg.task.hp, key, None) for key in SAME}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    members = [load_run(r, args.overrides) for r in args.runs]
    cfg = members[0][0]
    first = shared(cfg)
    for run, (other, _, _) in zip(args.runs, members):
        for key, value in shared(other).items():
            if value != first[key]:
                raise SystemExit(f"error: {run} has task {key}={value!r}, the first run {first[key]!r}: "
                                 "the members must share it")
    tasks = build_task(with_data_dir(cfg, args.data_dir), "test")
    views = getattr(tasks, "query_views", 1)
    gen = torch.Generator().manual_seed(TEST_SEED)
    correct = {name: [] for name in [*args.runs, "ensemble"]}
    with torch.no_grad():
        for learner in (m[1] for m in members):
            learner.eval()
        step = cfg.train.eval_batch  # the batches metagrad eval draws
        for done in range(0, args.episodes, step):
            b = tasks.sample(min(step, args.episodes - done), gen)
            target = b.query_y[:, : b.query_y.shape[1] // views]
            total = 0
            for run, (_, learner, _) in zip(args.runs, members):
                logp = vote(learner.eval_predictions(b)[learner.headline], views).log_softmax(-1)
                correct[run].append((logp.argmax(-1) == target).float().mean(1))
                total = total + logp
            correct["ensemble"].append((total.argmax(-1) == target).float().mean(1))
            print(f"{done + len(b.query_y)} episodes", flush=True)
    for name, per_episode in correct.items():
        est = mean_ci95(1 - torch.cat(per_episode), "error")
        print(f"{name:<40} error {100 * est.mean:.2f} ± {100 * est.ci95:.2f} %  ({est.episodes} episodes)")


if __name__ == "__main__":
    main()
