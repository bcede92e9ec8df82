"""The learned optimizer (Andrychowicz et al. 2016): its meta-gradient through the unrolled steps
against finite differences of an independently written objective (exact, first-order, truncated),
learning on quadratics, and the exported torch.optim optimizer."""

import pytest
import torch
from torch.func import functional_call

from metagrad import LearnedOptimizer
from metagrad.errors import ConfigError
from metagrad.learners.lstm_optimizer import LSTMOptimizer, LSTMOptimizerConfig, log_sign
from metagrad.models.mlp import MLPConfig, make_mlp
from metagrad.optim import BASELINES, optimizee_curves, tune_learning_rates
from metagrad.tasks.quadratic import Quadratic, QuadraticConfig

D, B, T = 3, 2, 4


def tiny_learner(preprocess="none", **kw) -> LSTMOptimizer:
    torch.manual_seed(0)
    hp = LSTMOptimizerConfig(hidden=3, layers=2, preprocess=preprocess, output_scale=1.0, train_steps=T, eval_steps=T, **kw)
    return LSTMOptimizer(hp, make_mlp(MLPConfig(hidden=[], bias=False), (D,), 1), "regression").double()


def quadratic_batch(dims=D, tasks=B, seed=0):
    return Quadratic(QuadraticConfig(dims=dims)).sample(tasks, torch.Generator().manual_seed(seed)).to(dtype=torch.float64)


def f_and_grad(theta, w, y):
    """f(θ) = mean_i (W_i·θ − y_i)² and its gradient, by hand. θ [B, 1, D], W [B, D, D], y [B, D, 1]."""
    r = w @ theta.transpose(1, 2) - y  # [B, D, 1]
    return r.square().mean((1, 2)), 2 / w.shape[1] * (r.transpose(1, 2) @ w)


def reference_objective(learner, phi, batch, frozen=None, cuts=None, record=None):
    """J(φ) = mean over t = 0..T and tasks of f(θ_t), θ_{t+1} = θ_t + m(g_t, h_t; φ), written
    without autograd for f's gradient. ``frozen``: use these g_t (constants); ``cuts``: at step
    t, after f(θ_t) is counted, continue from these constant (θ_t, h_t); ``record``: a dict
    filled with each step's (g_t, θ_t, h_t)."""
    torch.manual_seed(0)
    start, _ = learner.random_start(batch, T)
    theta = start["0.weight"]
    state = learner.net.init_state(theta.numel(), theta)
    total = []
    for t in range(T + 1):
        f, g = f_and_grad(theta, batch.support_x, batch.support_y)
        total.append(f)
        if t == T:
            break
        if cuts is not None and t in cuts:
            theta, state = cuts[t]
            g = f_and_grad(theta, batch.support_x, batch.support_y)[1]
        if frozen is not None:
            g = frozen[t]
        if record is not None:
            record[t] = (g.detach(), theta.detach(), [(h.detach(), c.detach()) for h, c in state])
        update, state = functional_call(learner.net, phi, (g.reshape(-1), state))
        theta = theta + update.view_as(theta)
    return torch.stack(total).mean()


def finite_differences(fn, phi, eps=1e-6):
    grads = {}
    for name, p in phi.items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            def at(delta):
                q = p.clone().view(-1)
                q[i] += delta
                return fn({**phi, name: q.view_as(p)}).item()
            g.view(-1)[i] = (at(eps) - at(-eps)) / (2 * eps)
        grads[name] = g
    return grads


def meta_gradient(learner, batch):
    learner.zero_grad()
    torch.manual_seed(0)
    objective, _ = learner.meta_loss(batch)
    objective.backward()
    return {n: p.grad.clone() for n, p in learner.net.named_parameters()}


def phi_of(learner):
    return {n: p.detach().clone() for n, p in learner.net.named_parameters()}


def assert_close(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-8, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("truncation,preprocess", [(0, "none"), (0, "log_sign"), (2, "none")])
def test_exact_meta_gradient_matches_finite_differences(truncation, preprocess):
    learner, batch = tiny_learner(preprocess, second_order=True, truncation=truncation), quadratic_batch()
    phi, cuts = phi_of(learner), None
    if truncation:  # the cut at t = 2: θ_2 and h_2 are held at their values under φ
        record = {}
        reference_objective(learner, phi, batch, record=record)
        cuts = {2: (record[2][1], record[2][2])}
    expected = finite_differences(lambda q: reference_objective(learner, q, batch, cuts=cuts), phi)
    got = meta_gradient(learner, batch)
    assert_close(got, expected)
    if truncation:  # and the cut matters: back-propagating through it gives another gradient
        uncut = finite_differences(lambda q: reference_objective(learner, q, batch), phi)
        assert sum((got[k] - uncut[k]).norm() for k in got) / sum(uncut[k].norm() for k in got) > 1e-3


@pytest.mark.parametrize("truncation", [0, 2])
def test_first_order_meta_gradient_treats_the_gradients_as_constants(truncation):
    """The paper's ∂∇f/∂φ = 0: the derivative of J with every g_t frozen at its value under φ."""
    learner, batch = tiny_learner(second_order=False, truncation=truncation), quadratic_batch()
    phi, record = phi_of(learner), {}
    reference_objective(learner, phi, batch, record=record)
    frozen = {t: g for t, (g, _, _) in record.items()}
    cuts = {2: (record[2][1], record[2][2])} if truncation else None
    expected = finite_differences(lambda q: reference_objective(learner, q, batch, frozen=frozen, cuts=cuts), phi)
    got = meta_gradient(learner, batch)
    assert_close(got, expected)
    exact = finite_differences(lambda q: reference_objective(learner, q, batch, cuts=cuts), phi)
    gap = sum((got[k] - exact[k]).norm() for k in got) / sum(exact[k].norm() for k in got)
    assert gap > 1e-3  # 1000x the tolerance: the two meta-gradients are told apart


def test_log_sign_preprocessing_is_the_papers():
    p = 10.0
    g = torch.tensor([3.0, -1e-3, 1e-5, -2e-5, 0.0], dtype=torch.float64)
    big = torch.tensor([True, True, False, False, False])  # |g| >= e^-10 = 4.54e-5
    expected = torch.where(big[:, None], torch.stack([g.abs().clamp_min(1e-30).log() / p, g.sign()], -1),
                           torch.stack([-torch.ones_like(g), g * torch.exp(torch.tensor(p))], -1))
    torch.testing.assert_close(log_sign(g, p), expected)


def test_learns_to_optimize_quadratics():
    """From an untrained LSTM (whose updates diverge) to within 1.5x of SGD at its best learning
    rate, on held-out quadratics at the trained horizon, in 120 meta-iterations."""
    task = Quadratic()
    torch.manual_seed(0)
    hp = LSTMOptimizerConfig(train_steps=20, truncation=0, eval_steps=20, hidden=10)
    learner = LSTMOptimizer(hp, make_mlp(MLPConfig(hidden=[], bias=False), (10,), 1), "regression")
    test = task.sample(64, torch.Generator().manual_seed(99))

    def final_loss(make):
        return optimizee_curves(learner, test, make, 20, seed=0)[-1].mean().item()

    before = final_loss(lambda p: LearnedOptimizer(p, learner.net))
    opt = torch.optim.Adam(learner.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for it in range(120):
        torch.manual_seed(it)
        objective, _ = learner.meta_loss(task.sample(32, g))
        opt.zero_grad()
        objective.backward()
        opt.step()
    after = final_loss(lambda p: LearnedOptimizer(p, learner.net))
    lr = tune_learning_rates(learner, task.sample(64, torch.Generator().manual_seed(98)), 20, 0, {"SGD": BASELINES["SGD"]})["SGD"]
    sgd = final_loss(lambda p: BASELINES["SGD"](p, lr))
    assert after < before / 100 and after < 1.5 * sgd, (before, after, sgd)


def test_exported_optimizer_in_a_plain_loop_follows_the_learner_and_resumes(tmp_path):
    torch.manual_seed(0)
    hp = LSTMOptimizerConfig(hidden=6, preprocess="log_sign", output_scale=0.05, train_steps=8, eval_steps=8)
    learner = LSTMOptimizer(hp, make_mlp(MLPConfig(hidden=[5], activation="sigmoid"), (4,), 1), "regression")
    x, y = torch.randn(1, 12, 4), torch.randn(1, 12, 1)
    from metagrad.tasks.batch import TaskBatch

    batch = TaskBatch(x, y, x, y)
    torch.manual_seed(3)
    losses, _ = learner.trajectory(batch, 8, meta=False)

    torch.manual_seed(3)  # the same θ_0, in an nn.Module trained by an ordinary loop
    start, _ = learner.random_start(batch, 8)
    model = make_mlp(MLPConfig(hidden=[5], activation="sigmoid"), (4,), 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n][0])
    opt = LearnedOptimizer(model.parameters(), learner.net)
    plain = []
    for t in range(9):
        loss = torch.nn.functional.mse_loss(model(x[0]), y[0])
        plain.append(loss.item())
        if t == 4:  # save the loop's state mid-way, as a training script would
            saved_model = {k: v.clone() for k, v in model.state_dict().items()}
            torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
        if t < 8:
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(torch.tensor(plain), torch.stack(losses).view(-1), rtol=1e-5, atol=1e-6)

    other = LSTMOptimizer(hp, make_mlp(MLPConfig(hidden=[5]), (4,), 1), "regression")  # different weights
    resumed_model = make_mlp(MLPConfig(hidden=[5], activation="sigmoid"), (4,), 1)
    resumed_model.load_state_dict(saved_model)
    resumed = LearnedOptimizer(resumed_model.parameters(), other.net)
    resumed.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))  # no code runs on load
    again = []
    for t in range(4, 9):
        loss = torch.nn.functional.mse_loss(resumed_model(x[0]), y[0])
        again.append(loss.item())
        if t < 8:
            resumed.zero_grad()
            loss.backward()
            resumed.step()
    torch.testing.assert_close(torch.tensor(again), torch.tensor(plain[4:]), rtol=1e-6, atol=1e-7)


def test_from_run_loads_a_trained_optimizer_and_refuses_other_learners(tmp_path):
    from metagrad.config import load_config
    from metagrad.train import train

    small = ["train.iterations=2", "train.meta_batch=4", "train.eval_every=0", "train.eval_tasks=4", "train.test_tasks=4",
             "learner.train_steps=4", "learner.truncation=2", "learner.eval_steps=4", "train.device=cpu"]
    train(load_config("lstm-optimizer-quadratic", small), tmp_path / "l2o", progress=False)
    model = torch.nn.Linear(10, 1, bias=False)
    opt = LearnedOptimizer.from_run(model.parameters(), tmp_path / "l2o")
    model(torch.ones(3, 10)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.weight, before)
    train(load_config("maml-sine", ["train.iterations=1", "train.eval_every=0", "train.test_tasks=2", "train.device=cpu"]),
          tmp_path / "maml", progress=False)
    with pytest.raises(ConfigError, match="not a learned optimizer"):
        LearnedOptimizer.from_run(model.parameters(), tmp_path / "maml")



def test_compare_optimizers_tunes_each_baseline_and_plots(tmp_path):
    from metagrad.optim import compare_optimizers
    from metagrad.plots import plot_loss_curves

    learner = tiny_learner()
    tune, test = quadratic_batch(tasks=8, seed=1), quadratic_batch(tasks=8, seed=2)
    grid = (1e-3, 1e-2, 1e-1, 1e3)  # 1e3 diverges on every task
    result = compare_optimizers(learner, tune, test, steps=2 * T, grid=grid)
    assert list(result) == ["learned (LSTM)", "SGD", "momentum", "RMSprop", "Adam"]
    for name, r in result.items():
        assert r["curves"].shape == (2 * T + 1, 8)
        if name != "learned (LSTM)":
            assert r["lr"] in grid[:3]  # never the diverging rate
            final = {lr: optimizee_curves(learner, tune, lambda p: BASELINES[name](p, lr), T, 0)[-1].mean() for lr in grid}
            assert final[r["lr"]] == min(final.values())
    sgd = optimizee_curves(learner, test, lambda p: BASELINES["SGD"](p, 1e3), 60, 0)
    assert torch.isinf(sgd[-1]).all()  # diverged tasks read as inf from then on
    path = plot_loss_curves({k: r["curves"] for k, r in result.items()} | {"SGD at 1e3": sgd}, tmp_path / "c.png", "t", T)
    assert path.stat().st_size > 10_000
