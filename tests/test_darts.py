"""DARTS over few-shot tasks (learners/darts.py, models/search.py): the architecture gradient
against finite differences of the one-step unrolled objective written out independently
(float64), DARTS' finite-difference approximation against the exact one, and a search on
real Omniglot whose architecture is reported and then trained as a discrete network."""

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from metagrad.cli import main
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.learners.darts import DARTS, DARTSConfig
from metagrad.learners.functional import FunctionalLearner
from metagrad.models.search import CNNConfig, SearchCNNConfig, make_cnn, make_search_cnn

from helpers import flat, image_batch, rel
from small_omniglot import SMALL_SETS, last_val

XI = 0.3
CANDIDATES = ["conv3x3", "sep3x3", "dil3x3", "maxpool3x3", "skip"]


def tiny_darts(arch_grad: str, first_order: bool = False, fd_scale: float = 0.01) -> DARTS:
    torch.manual_seed(0)
    model = make_search_cnn(SearchCNNConfig(channels=2, cells=2, candidates=CANDIDATES), (1, 6, 6), 3).double()
    with torch.no_grad():
        model.alpha.normal_()  # away from the uniform start, so each candidate's weight differs
    hp = DARTSConfig(inner_lr=XI, inner_steps=1, arch_grad=arch_grad, first_order=first_order,
                     fd_scale=fd_scale, executor="vmap")
    return DARTS(hp, model, "classification")


def meta_grads(learner: DARTS, batch) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.accumulate_meta_grad(batch)
    return {k: p.grad.clone() for k, p in learner.named_parameters()}


def unrolled_objective(model, params: dict, batch) -> torch.Tensor:
    """mean_i L_i^q(w − ξ ∇_w L_i^s(w, α), α), by hand: one task at a time, torch.autograd.grad."""
    losses = []
    for i in range(len(batch)):
        def loss(p, x, y):
            return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

        weights = {k: v for k, v in params.items() if k != "alpha"}
        grads = torch.autograd.grad(loss(params, batch.support_x[i], batch.support_y[i]), list(weights.values()))
        adapted = {**params, **{k: v - XI * g for (k, v), g in zip(weights.items(), grads)}}
        losses.append(loss(adapted, batch.query_x[i], batch.query_y[i]))
    return torch.stack(losses).mean()


def central_differences(model, batch, name: str, h: float = 1e-6) -> torch.Tensor:
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = torch.zeros_like(params[name])
    for j in range(out.numel()):
        values = []
        for sign in (1, -1):
            shifted = params[name].clone()
            shifted.view(-1)[j] += sign * h
            with torch.enable_grad():
                p = {k: (shifted if k == name else v).requires_grad_() for k, v in params.items()}
                values.append(unrolled_objective(model, p, batch).item())
        out.view(-1)[j] = (values[0] - values[1]) / (2 * h)
    return out


def test_exact_architecture_gradient_is_the_unrolled_objectives():
    learner = tiny_darts("exact")
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=6)
    got = meta_grads(learner, batch)
    fd = central_differences(learner.model, batch, "alpha")
    assert rel(got["model.alpha"], fd) < 1e-6
    # the weights' meta-gradient is MAML's exact one (the stem's bias is followed by BatchNorm: check the head)
    assert rel(got["model.head.weight"], central_differences(learner.model, batch, "head.weight")) < 1e-6


def test_finite_difference_architecture_gradient_approximates_the_exact_one():
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=6)
    exact, first = (meta_grads(tiny_darts(g), batch) for g in ("exact", "first_order"))
    correction = (exact["model.alpha"] - first["model.alpha"]).norm()
    assert correction > 0.1 * exact["model.alpha"].norm()  # the second-order term matters here
    # DARTS' eq. 8 recovers that term up to a central difference's O(ε²) error (on this tiny
    # net, DARTS' ε = 0.01/‖v‖ crosses ReLU and max-pool kinks; smaller ones show the order)
    errors = []
    for scale in (1e-3, 1e-4):
        fd = meta_grads(tiny_darts("finite_difference", fd_scale=scale), batch)
        errors.append((fd["model.alpha"] - exact["model.alpha"]).norm() / correction)
        for k in exact:  # the weights' meta-gradient does not depend on how α's is computed
            if k != "model.alpha":
                torch.testing.assert_close(fd[k], exact[k], rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(first[k], exact[k], rtol=1e-10, atol=1e-12)
    assert errors[0] < 1e-4 and errors[1] < errors[0] / 30, errors


def test_the_inner_loop_adapts_weights_not_the_architecture():
    learner = tiny_darts("finite_difference")
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=6)
    (before, after) = learner.adapted(batch.support_x, batch.support_y, 1, keep=(0, 1))
    assert torch.equal(after["alpha"], before["alpha"])
    assert not torch.equal(after["stem.0.weight"], before["stem.0.weight"])


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="inner_steps=1"):
        DARTSConfig(inner_steps=2, arch_grad="finite_difference")
    DARTSConfig(inner_steps=2, arch_grad="exact")  # autograd takes any inner loop
    with pytest.raises(ConfigError, match="search-cnn"):
        DARTS(DARTSConfig(), make_cnn(CNNConfig(), (1, 28, 28), 3), "classification")
    with pytest.raises(ConfigError, match="images need at least 16 px, got 8"):
        make_cnn(CNNConfig(), (1, 8, 8), 3)
    with pytest.raises(ConfigError, match="unknown operation 'conv7x7'"):
        SearchCNNConfig(candidates=["conv3x3", "conv7x7"])


def image_model(preset: str) -> bool:
    """Whether ``preset`` (complete without the user's --set) runs a convolutional backbone."""
    try:
        return load_config(preset).model.name in ("conv4", "resnet12", "search-cnn")
    except ConfigError:  # folder-quick needs task.path
        return False


def test_the_discrete_network_serves_every_functional_learner():
    """The architecture a search finds is a registered model ("cnn"): every learner whose base
    learner is a network run with explicit parameters trains it (one meta-step fills every grad)."""
    from metagrad.build import build_learner
    from metagrad.registry import LEARNERS
    from test_conformance import presets_of, sample, tiny_task

    trained = []
    for name in LEARNERS.names():
        preset = next((p for p in presets_of(name) if image_model(p)), None)
        if preset is None:
            continue
        cfg = load_config(preset, ["model.name=cnn", "model.channels=4", 'model.ops=["sep3x3", "skip", "dil3x3"]'])
        task = tiny_task(cfg, 0)
        try:
            learner = build_learner(cfg, task)
        except ConfigError as e:  # darts needs the search network itself
            assert name == "darts", e
            continue
        if not isinstance(learner, FunctionalLearner):
            continue
        trained.append(name)
        learner.accumulate_meta_grad(sample(task))
        for k, p in learner.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, k)
    assert {"maml", "anil", "mamlpp", "imaml", "reptile"} <= set(trained), trained


def test_search_on_omniglot_reports_an_architecture_that_trains(tmp_path, shared_data, omniglot_cache, capsys):
    small = [f"--set={s}" for s in SMALL_SETS(shared_data, omniglot_cache)]
    run = tmp_path / "search"
    assert main(["train", "--preset", "darts-quick", "--quiet", "--out", str(run), *small,
                 "--set", "train.iterations=60", "--set", "train.meta_batch=8", "--set", "model.channels=8",
                 "--set", "train.eval_every=60", "--set", "train.eval_tasks=60", "--set", "train.test_tasks=10"]) == 0
    assert last_val(run, "3_steps") > 0.4  # unseen alphabet, chance 0.2
    out = capsys.readouterr().out
    found = json.loads((run / "report.json").read_text())["learner"]
    assert len(found["architecture"]) == 4 and set(found["architecture"]) <= set(load_config("darts-quick").model.hp.candidates)
    weights = torch.tensor(list(found["architecture_weights"].values()))  # [candidates, cells]
    torch.testing.assert_close(weights.sum(0), torch.ones(4), atol=1e-3, rtol=0)
    # α moved in every cell: its start (1e-3 · N(0, 1)) spreads the weights by ~4e-4, 60 Adam steps by more
    assert ((weights.max(0).values - weights.min(0).values) > 2e-3).all(), weights
    line = next(ln for ln in out.splitlines() if ln.startswith("train it with: "))
    sets = [s.strip("'") for s in line.removeprefix("train it with: ").split(" --set ")]
    sets[0] = sets[0].removeprefix("--set ")
    assert main(["train", "--preset", "omniglot-quick", "--quiet", "--out", str(tmp_path / "found"), *small,
                 *[f"--set={s}" for s in sets], "--set", "train.iterations=10", "--set", "train.eval_every=0",
                 "--set", "train.test_tasks=10"]) == 0
    assert json.loads((tmp_path / "found" / "report.json").read_text())["learner"]["architecture"] == found["architecture"]
