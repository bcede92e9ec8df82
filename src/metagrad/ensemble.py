"""Ensembles: several trained classifiers scored together on the same held-out tasks.

``metagrad eval RUN RUN2 [...]`` evaluates each run and their ensemble, which sums the members'
log-probabilities, log softmax(logits_m) [B, Q, N], over the members m (with several views of a
query, ``evaluate`` then sums over the views too). With three runs or more it also scores the
ensembles of the first 2, 3, ... runs on the same queries, so one evaluation shows what each added
member buys. The test tasks come from the first run's config;
every member must have been trained on the same task settings (only where the data are stored
may differ), so that all of them read the images as they were trained to.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import ConfigError

#: task settings that say where the data are kept, not what a task is: they may differ between members
LOCATION_KEYS = ("data_dir", "cache_dir", "download")


def check_members(names: list[str], cfgs: list, learners: list) -> None:
    """ConfigError unless the runs can be ensembled: distinct, classifiers, on the same task settings."""
    if len(set(names)) < len(names):
        raise ConfigError(f"{next(n for n in names if names.count(n) > 1)} is given twice; an ensemble needs distinct runs")
    for name in names:
        if name in Ensemble.row_names(len(names)):
            raise ConfigError(f"a run given as {name!r} would share its name with an ensemble's row; write ./{name}")
    for name, learner in zip(names, learners):
        if learner.kind != "classification":
            raise ConfigError(f"{name} is a {learner.kind} run; only classifiers can be ensembled (their log-probabilities are summed)")
    first = task_settings(cfgs[0])
    for name, cfg in zip(names[1:], cfgs[1:]):
        other = task_settings(cfg)
        for key in sorted(first.keys() | other.keys()):
            if first.get(key) != other.get(key):
                raise ConfigError(f"{name} has task.{key}={other.get(key)!r} but {names[0]} has {first.get(key)!r}; an ensemble's "
                                  f"runs must share their task settings (--set task.{key}=VALUE applies to every run)")


def task_settings(cfg) -> dict:
    """The task section of a run's config that fixes what its tasks are (LOCATION_KEYS left out)."""
    return {key: value for key, value in cfg.to_dict()["task"].items() if key not in LOCATION_KEYS}


class Ensemble(nn.Module):
    """What ``evaluation.evaluate`` scores for several classifiers: each member's headline logits
    [B, V*Q, N] under its name, under "ensemble of the first k" the sum of the first k members' log-softmaxes
    (2 <= k < M), and under "ensemble" (the headline) the sum over all M members."""

    kind = "classification"
    headline = "ensemble"
    trained_setting = None

    def __init__(self, names: list[str], learners: list):
        super().__init__()
        self.names, self.members = list(names), nn.ModuleList(learners)

    @classmethod
    def row_names(cls, members: int) -> list[str]:
        """The rows an ensemble of ``members`` runs adds to theirs: "ensemble of the first 2", ..., "ensemble"."""
        return [*(f"{cls.headline} of the first {k}" for k in range(2, members)), cls.headline]

    def eval_predictions(self, batch) -> dict[str, Tensor]:
        out = {}
        for name, member in zip(self.names, self.members):
            logits = member.eval_predictions(batch)[member.headline]
            if isinstance(logits, tuple):  # scored against its own targets: nothing to sum
                raise ConfigError(f"{name}: its learner scores queries against its own targets, so it cannot be ensembled")
            out[name] = logits
        logp = [logits.log_softmax(-1) for logits in out.values()]
        summed, rows = logp[0], {}
        for name, member in zip(self.row_names(len(logp)), logp[1:]):  # after 2, 3, ..., M members
            summed = summed + member
            rows[name] = summed
        return {**out, **rows}
