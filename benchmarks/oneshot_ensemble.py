"""Ensembles on Lake's one-shot challenge: do several trained networks beat one?

Loads runs trained with the same task settings, draws test episodes from the first run's
config (with ``--set`` overrides, e.g. ``task.eval_augment=shifts_both``) and scores each run
alone and their ensemble, which sums the members' log-probabilities view by view (``evaluate``
then sums each query's views, as ``metagrad eval`` does). Every number is over the same episodes, the ones
``metagrad eval RUN --episodes E`` draws (so each member's row repeats its own evaluation).

    OMP_NUM_THREADS=1 python benchmarks/oneshot_ensemble.py RUN RUN2 [...] --data-dir DATA \
        [--episodes 1000] [--set task.eval_augment=shifts_both]
"""

import argparse

import torch
from torch import nn

from metagrad.build import build_task
from metagrad.config import with_data_dir
from metagrad.evaluation import evaluate
from metagrad.train import TEST_SEED, load_run

SAME = ("image_size", "crop", "split_scheme")  # task settings the members must share, with the task's name


def shared(cfg) -> dict:
    """The task settings of a run that its ensemble's other members must match."""
    return {"name": cfg.task.name, **{key: getattr(cfg.task.hp, key, None) for key in SAME}}


class Ensemble(nn.Module):
    """What ``evaluate`` scores: each member's headline logits [B, V*Q, N] under its run's name,
    and under "ensemble" their log-softmaxes summed (``evaluate`` then sums each query's views)."""

    def __init__(self, names: list[str], learners: list):
        super().__init__()
        self.names, self.members, self.kind = names, nn.ModuleList(learners), learners[0].kind

    def eval_predictions(self, batch) -> dict:
        out = {n: m.eval_predictions(batch)[m.headline] for n, m in zip(self.names, self.members)}
        return {**out, "ensemble": sum(logits.log_softmax(-1) for logits in out.values())}


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
    ensemble = Ensemble(args.runs, [learner for _, learner, _ in members])
    with torch.no_grad():
        estimates = evaluate(ensemble, tasks, args.episodes, TEST_SEED, cfg.train.eval_batch, progress=True)
    for name, est in estimates.items():
        print(f"{name:<40} error {100 * (1 - est.mean):.2f} ± {100 * est.ci95:.2f} %  ({est.episodes} episodes)")


if __name__ == "__main__":
    main()
