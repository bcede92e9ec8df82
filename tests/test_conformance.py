"""Every registered learner through the one shared contract (in the spirit of scikit-learn's
``check_estimator``), on a tiny task of the kind its presets train on:

- the meta-gradient step fills every meta-parameter's grad, finite, not all zero;
- chunked accumulation with weights equals the whole batch (torch's CPU generator draws the
  same numbers in chunks as at once, so learners that sample inside the step agree too);
- the state_dict round-trips through a checkpoint file (a fresh learner then predicts the same);
- ``eval_predictions`` contains the learner's headline, shaped for the queries;
- the compiled meta-step (torch.compile, the quick ``aot_eager`` backend) runs compiled code in
  the loop's MetaStep, as one whole graph unless the learner names its ``compile_break``, and
  gives the eager step's parameters.

A learner is found by name in the registry and configured by its own preset (the "quick" one
where there is one), so a newly registered learner is checked with no change here.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from metagrad.build import build_learner
from metagrad.checkpoint import load_checkpoint, save_checkpoint
from metagrad.errors import ConfigError
from metagrad.config import load_config, load_preset, preset_names
from metagrad.registry import LEARNERS
from metagrad.step import MetaStep
from metagrad.tasks.batch import TaskBatch
from metagrad.tasks.images import EpisodeConfig, EpisodeSampler, ImageClassDataset, episode_shape
from metagrad.build import build_task


def presets_of(learner: str) -> list[str]:
    """A learner's presets, quickest first (regression, then "quick", then 5-way, then smaller images)."""
    names = [n for n in preset_names() if load_preset(n)["learner"]["name"] == learner]
    return sorted(names, key=lambda n: ("sine" not in n, "quick" not in n, "20w" in n, image_size(n), n))


def image_size(preset: str) -> float:
    """The side of a preset's images (0: not images; inf: the preset needs the user's --set)."""
    try:
        return getattr(load_config(preset).task.hp, "image_size", 0)
    except ConfigError:  # folder-quick: task.path
        return math.inf


def tiny_task(cfg, seed: int):
    """The preset's task if it needs no files (not image episodes), else random images in its episode
    shape: 8 classes of 6 images."""
    if not isinstance(cfg.task.hp, EpisodeConfig):  # sinusoids, quadratics: no files
        return build_task(cfg, "train")
    ways, shots, _ = episode_shape(cfg.task.hp, "train")
    size = getattr(cfg.task.hp, "image_size", 28)
    g = torch.Generator().manual_seed(seed)
    n_classes, per_class = max(ways, 8), 6
    images = torch.randint(0, 256, (n_classes * per_class, 1, size, size), generator=g, dtype=torch.uint8)
    data = ImageClassDataset(images, torch.arange(n_classes).repeat_interleave(per_class), [f"c{i}" for i in range(n_classes)])
    return EpisodeSampler(data, ways, shots, min(2, per_class - shots))


def tiny_setup(learner_name: str, seed: int = 0):
    """(config, task source, learner) for the quickest preset of a learner that has
    meta-parameters, made small where the fields exist: model.channels=8, 2 cells, at most 2 inner steps."""
    for preset in presets_of(learner_name):
        try:
            cfg = load_config(preset)
        except ConfigError:  # a preset that needs the user's --set (folder-quick: task.path)
            continue
        model_fields = {f.name for f in dataclasses.fields(cfg.model.hp)}
        learner_fields = {f.name for f in dataclasses.fields(cfg.learner.hp)}
        narrow = ["model.channels=8"] if "channels" in model_fields else []
        narrow += ["model.cells=2"] if "cells" in model_fields else []
        narrow += [f"learner.{k}={min(getattr(cfg.learner.hp, k), 2)}" for k in ("inner_steps", "eval_steps") if k in learner_fields]
        cfg = load_config(preset, narrow + [f"train.seed={seed}"])
        task = tiny_task(cfg, seed)
        learner = build_learner(cfg, task)
        if trainable(learner):
            return cfg, task, learner
    raise AssertionError(f"no preset of learner {learner_name!r} has meta-parameters to check")


def sample(task, tasks: int = 4, seed: int = 0) -> TaskBatch:
    return task.sample(tasks, torch.Generator().manual_seed(seed))


def trainable(learner) -> dict[str, torch.Tensor]:
    return {k: p for k, p in learner.named_parameters() if p.requires_grad}


def meta_grads(learner, batch: TaskBatch, chunk: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weighted, chunked meta-gradient as MetaStep accumulates it (no optimizer step)."""
    learner.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    for part in batch.chunks(chunk) if chunk else [batch]:
        learner.accumulate_meta_grad(part, len(part) / len(batch))
    return {k: p.grad for k, p in trainable(learner).items()}


def check_meta_gradient(learner, batch: TaskBatch) -> None:
    grads = meta_grads(learner, batch)
    missing = [k for k, g in grads.items() if g is None]
    assert not missing, f"{type(learner).__name__}: no meta-gradient for {missing}"
    bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{type(learner).__name__}: non-finite meta-gradient in {bad}"
    assert any(g.abs().sum() > 0 for g in grads.values()), f"{type(learner).__name__}: all-zero meta-gradient"


LEARNER_NAMES = LEARNERS.names()


def test_every_learner_has_a_preset_and_is_checked_here():
    assert len(LEARNER_NAMES) >= 10
    for name in LEARNER_NAMES:
        assert presets_of(name), f"learner {name!r} has no preset"


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_meta_gradient_fills_every_meta_parameter(name):
    _, task, learner = tiny_setup(name)
    check_meta_gradient(learner, sample(task))


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_weighted_chunks_equal_the_whole_batch(name):
    _, task, learner = tiny_setup(name)
    learner.double()
    batch = sample(task, tasks=5).to(dtype=torch.float64)
    whole = {k: g.clone() for k, g in meta_grads(learner, batch).items()}
    for k, g in meta_grads(learner, batch, chunk=2).items():
        torch.testing.assert_close(g, whole[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_state_dict_round_trips_through_a_checkpoint(name, tmp_path):
    cfg, task, learner = tiny_setup(name)
    batch = sample(task)
    meta_grads(learner, batch)
    torch.optim.SGD(learner.parameters(), lr=0.1).step()
    learner.end_meta_step()
    save_checkpoint(tmp_path / "c.pt", {"config": cfg.to_dict(), "learner": learner.state_dict()})
    _, _, fresh = tiny_setup(name, seed=1)  # other initial weights
    fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    learner.eval(), fresh.eval()
    torch.manual_seed(5)
    want = learner.eval_predictions(batch)
    torch.manual_seed(5)
    got = fresh.eval_predictions(batch)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_eval_predictions_hold_the_headline(name):
    _, task, learner = tiny_setup(name)
    batch = sample(task)
    out = learner.eval_predictions(batch)
    assert learner.headline in out
    pred = out[learner.headline]
    pred = pred[0] if isinstance(pred, tuple) else pred
    assert pred.shape[:2] == batch.query_y.shape[:2] and torch.isfinite(pred).all()


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_compiled_meta_step_equals_the_eager_one(name):
    import torch._dynamo

    results, logs = {}, []
    for compiled in (False, True):
        torch._dynamo.reset()
        _, task, learner = tiny_setup(name)
        # float64: compiled float32 rounds BatchNorm's statistics differently on purpose
        # (models/norm.py), and float64 once lost a 0-d buffer's update under compile (Reptile)
        learner.double()
        opt = torch.optim.SGD(learner.parameters(), lr=0.05)
        step = MetaStep(learner, opt, backend="aot_eager" if compiled else None, log=logs.append)
        for it in range(2):
            torch.manual_seed(it)
            step(sample(task, seed=it).to(dtype=torch.float64), 4)
        if compiled:
            assert step.objective.frames == 2, f"{name}: the loop did not run the compiled objective"
            want = "with graph breaks" if learner.compile_break else "whole graph"
            assert step.objective.state == want, f"{name}: compiled {step.objective.state}, expected {want}: {logs}"
        results[compiled] = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    for k, v in results[False].items():
        torch.testing.assert_close(results[True][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {k}: {m}")


class SkipsAParameter(torch.nn.Module):
    """A test double: a learner whose meta-objective silently leaves one meta-parameter out."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def accumulate_meta_grad(self, batch, weight=1.0, objective=None):
        stats = self.inner.accumulate_meta_grad(batch, weight)
        next(p for p in self.inner.parameters() if p.requires_grad).grad = None
        return stats


def test_the_check_catches_a_skipped_meta_parameter():
    _, task, learner = tiny_setup("maml")
    with pytest.raises(AssertionError, match="no meta-gradient"):
        check_meta_gradient(SkipsAParameter(learner), sample(task))
