"""Meta-SGD and ANIL: their meta-gradients against explicit-Hessian formulas (float64), their
relation to MAML, and short learning / CLI runs."""

import json

import pytest
import torch

from metagrad.cli import main
from metagrad.config import load_config
from metagrad.learners.anil import ANIL
from metagrad.learners.maml import MAMLConfig
from metagrad.learners.metasgd import MetaSGD
from metagrad.train import train

from helpers import flat, sine_batch, tiny_model
from test_maml_math import ALPHA, flat_losses, maml, meta_grad


def config(steps=1, first_order=False):
    return MAMLConfig(inner_lr=ALPHA, inner_steps=steps, first_order=first_order, executor="vmap")


def per_task_terms(loss, theta, batch, step):
    """For each task: (H_train(θ), ∇L_train(θ), ∇L_test(θ')) with θ' = step(θ, ∇L_train(θ))."""
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        g = torch.func.grad(loss)(theta, sx, sy)
        yield torch.func.hessian(loss)(theta, sx, sy), g, torch.func.grad(loss)(step(theta, g), qx, qy)


@pytest.mark.parametrize("steps", [1, 3])
def test_metasgd_with_every_alpha_at_inner_lr_is_maml(steps):
    batch = sine_batch()
    sgd, ref = MetaSGD(config(steps), tiny_model(), "regression"), maml(tiny_model(), steps)
    assert torch.allclose(sgd.meta_loss(batch)[0], ref.meta_loss(batch)[0], rtol=0, atol=1e-12)
    sgd.zero_grad()
    sgd.accumulate_meta_grad(batch)
    theta_grad = flat(p.grad for p in sgd.model.parameters())
    assert torch.allclose(theta_grad, meta_grad(ref, batch), rtol=0, atol=1e-12)


def test_metasgd_meta_gradient_in_theta_and_alpha_matches_the_hessian_formula():
    model = tiny_model()
    batch = sine_batch()
    learner = MetaSGD(config(), model, "regression")
    torch.manual_seed(1)
    with torch.no_grad():  # a generic α, different for every entry
        for a in learner.alpha.values():
            a.uniform_(0.005, 0.1)
    theta, loss = flat_losses(model)
    alpha = flat(learner.step_size(n, 0).detach() for n, _ in model.named_parameters())
    want_theta, want_alpha = [], []
    for hess, g, g_test in per_task_terms(loss, theta, batch, lambda t, g: t - alpha * g):
        want_theta.append(g_test - hess @ (alpha * g_test))  # (I − H diag(α)) ∇L_test(θ')
        want_alpha.append(-g * g_test)
    learner.zero_grad()
    learner.accumulate_meta_grad(batch)
    got_theta = flat(p.grad for p in model.parameters())
    got_alpha = flat(learner.step_size(n, 0).grad for n, _ in model.named_parameters())
    for got, want in ((got_theta, torch.stack(want_theta).mean(0)), (got_alpha, torch.stack(want_alpha).mean(0))):
        assert torch.linalg.norm(got - want) / torch.linalg.norm(want) <= 1e-8


def test_anil_meta_gradient_matches_the_masked_hessian_formula():
    model = tiny_model()
    batch = sine_batch()
    theta, loss = flat_losses(model)
    names = [n for n, _ in model.named_parameters()]
    mask = flat(torch.full_like(p, float(n.startswith("4."))) for n, p in model.named_parameters())  # the last Linear
    assert 0 < mask.sum() < mask.numel()
    want = [g_test - ALPHA * hess @ (mask * g_test)  # (I − α H M) ∇L_test(θ')
            for hess, g, g_test in per_task_terms(loss, theta, batch, lambda t, g: t - ALPHA * mask * g)]
    learner = ANIL(config(), model, "regression")
    assert learner.adapted_names(dict(model.named_parameters())) == ["4.weight", "4.bias"] and len(names) == 6
    got = meta_grad(learner, batch)
    want = torch.stack(want).mean(0)
    assert torch.linalg.norm(got - want) / torch.linalg.norm(want) <= 1e-8
    assert torch.linalg.norm(got - meta_grad(maml(tiny_model(), 1), batch)) > 1e-3 * torch.linalg.norm(want)


def test_anil_adapts_the_head_and_leaves_the_body_alone():
    model = tiny_model()
    batch = sine_batch()
    adapted = ANIL(config(steps=2), model, "regression").adapt(batch.support_x, batch.support_y).params
    for name, p in model.named_parameters():
        moved = (adapted[name] - p.detach()).abs().amax()
        assert (moved > 0) if name.startswith("4.") else (moved == 0), name


@pytest.mark.parametrize("learner", ["metasgd", "anil"])
def test_variants_learn_sine(learner, tmp_path):
    sets = [f"learner.name={learner}", "train.iterations=1500", "train.eval_every=0", "train.test_tasks=200", "learner.eval_steps=1"]
    report = train(load_config("sine-quick", sets), tmp_path / "run", progress=False)
    pre, post = report["test"]["0 steps"]["mean"], report["test"]["1 step"]["mean"]
    assert post < 0.7 * pre, (pre, post)


def test_metasgd_cli_train_checkpoints_alpha_and_eval_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["train.iterations=40", "train.eval_every=0", "train.test_tasks=20", "train.checkpoint_every=20"]
    assert main(["train", "--preset", "metasgd-sine", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    alphas = [v for k, v in state["learner"].items() if k.startswith("alpha.")]
    assert len(alphas) == 6 and any((a != 0.01).any() for a in alphas)  # α was meta-learned
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 20
