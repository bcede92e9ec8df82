"""Reptile: the meta-gradient against independent per-task loops with torch.optim (float64),
vectorised == loop, evaluation modes, and short learning / CLI runs on real Omniglot."""

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metagrad.cli import main
from metagrad.config import load_config
from metagrad.learners.reptile import Reptile, ReptileConfig, minibatch_indices
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.train import train

from helpers import image_batch, sine_batch, tiny_model
from small_omniglot import SMALL_SETS, last_val


def meta_grad(learner, batch, seed=0) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    torch.manual_seed(seed)
    learner.accumulate_meta_grad(batch)
    learner.end_meta_step()  # as metagrad.step.MetaStep does after the optimizer step
    return {k: p.grad.clone() for k, p in learner.model.named_parameters()}


@pytest.mark.parametrize("optimizer,inner_batch", [("sgd", 4), ("adam", 4), ("adam", 0)])
def test_meta_gradient_is_theta_minus_mean_adapted_weights(optimizer, inner_batch):
    """θ − mean_i θ'_i, with θ'_i from torch.optim.SGD / Adam(β1=0.3) on the same mini-batches."""
    model = tiny_model(hidden=(8,))
    hp = ReptileConfig(inner_optimizer=optimizer, inner_lr=0.05, adam_beta1=0.3, inner_steps=4, inner_batch=inner_batch)
    learner = Reptile(hp, model, "regression")
    batch = sine_batch()
    got = meta_grad(learner, batch)

    torch.manual_seed(0)  # the same mini-batches as the learner draws
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    idx = minibatch_indices(len(batch), x.shape[1], 4, inner_batch)
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    adapted = []
    for i in range(len(batch)):
        params = {k: nn.Parameter(v.clone()) for k, v in theta.items()}
        opt = torch.optim.SGD(params.values(), lr=0.05) if optimizer == "sgd" else torch.optim.Adam(params.values(), lr=0.05, betas=(0.3, 0.999))
        for t in range(4):
            opt.zero_grad()
            pred = functional_call(model, params, (x[i, idx[i, t]],))
            ((pred - y[i, idx[i, t]]) ** 2).mean().backward()
            opt.step()
        adapted.append({k: p.detach() for k, p in params.items()})
    for k in theta:
        expected = theta[k] - torch.stack([a[k] for a in adapted]).mean(0)
        torch.testing.assert_close(got[k], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("executor", ["vmap", "loop"])
def test_carried_adam_state_continues_like_one_torch_adam(executor):
    """adam_state="carried": each task starts from the stored (m, v, steps), as a torch.optim.Adam
    loaded with that state would; the store becomes the tasks' mean final state, steps advance."""
    model = tiny_model(hidden=(8,))
    hp = ReptileConfig(inner_lr=0.05, adam_beta1=0.3, inner_steps=4, inner_batch=4, adam_state="carried", executor=executor)
    learner = Reptile(hp, model, "regression")
    meta_grad(learner, sine_batch(seed=1), seed=1)  # a first meta-batch fills the store
    carried = learner.start_state()
    assert carried["t"] == 4 and all(v.abs().sum() > 0 for v in carried["v"].values())
    start = {k: (carried["m"][k].clone(), carried["v"][k].clone()) for k in carried["m"]}
    batch = sine_batch()
    got = meta_grad(learner, batch)

    torch.manual_seed(0)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    idx = minibatch_indices(len(batch), x.shape[1], 4, 4)
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    adapted, final = [], []
    for i in range(len(batch)):
        params = {k: nn.Parameter(v.clone()) for k, v in theta.items()}
        opt = torch.optim.Adam(params.values(), lr=0.05, betas=(0.3, 0.999))
        for k, p in params.items():
            opt.state[p] = {"step": torch.tensor(4.0, dtype=torch.float64), "exp_avg": start[k][0].clone(), "exp_avg_sq": start[k][1].clone()}
        for t in range(4):
            opt.zero_grad()
            ((functional_call(model, params, (x[i, idx[i, t]],)) - y[i, idx[i, t]]) ** 2).mean().backward()
            opt.step()
        adapted.append({k: p.detach() for k, p in params.items()})
        final.append({k: (opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]) for k, p in params.items()})
    carried = learner.start_state()
    assert carried["t"] == 8
    stored = {k: (carried["m"][k], carried["v"][k]) for k in carried["m"]}
    for k in theta:
        torch.testing.assert_close(got[k], theta[k] - torch.stack([a[k] for a in adapted]).mean(0), rtol=1e-10, atol=1e-12)
        for j in (0, 1):
            torch.testing.assert_close(stored[k][j], torch.stack([f[k][j] for f in final]).mean(0), rtol=1e-10, atol=1e-14)


def test_carried_adam_state_is_in_the_state_dict_and_evaluation_leaves_it_alone():
    hp = ReptileConfig(inner_lr=0.05, inner_steps=3, inner_batch=4, eval_steps=5, adam_state="carried")
    learner = Reptile(hp, tiny_model(hidden=(8,)), "regression")
    meta_grad(learner, sine_batch())
    saved = {k: v.clone() for k, v in learner.state_dict().items()}
    assert saved["inner_adam_steps"] == 3 and any(k.startswith("inner_adam_v:") for k in saved)
    learner.eval_predictions(sine_batch(seed=2))
    learner.adapt(sine_batch(seed=3).support_x, sine_batch(seed=3).support_y)
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in saved.items())
    fresh = Reptile(hp, tiny_model(hidden=(8,)), "regression")
    fresh.load_state_dict(saved)
    assert fresh.start_state()["t"] == 3
    assert "inner_adam_steps" not in Reptile(ReptileConfig(), tiny_model(hidden=(8,)), "regression").state_dict()  # per task: no state


def test_weighted_chunks_add_up_to_the_whole_meta_batch():
    learner = Reptile(ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_steps=2, inner_batch=0), tiny_model(hidden=(8,)), "regression")
    batch = sine_batch(tasks=4)
    whole = meta_grad(learner, batch)
    learner.zero_grad()
    for chunk in batch.chunks(3):
        learner.accumulate_meta_grad(chunk, weight=len(chunk) / len(batch))
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(p.grad, whole[k], rtol=1e-10, atol=1e-12)


def test_outer_sgd_step_interpolates_toward_the_adapted_weights():
    """With train.optimizer = sgd and lr ε the loop's update is θ + ε (mean θ' − θ)."""
    learner = Reptile(ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_steps=3, inner_batch=0), tiny_model(hidden=(8,)), "regression")
    theta = {k: p.detach().clone() for k, p in learner.model.named_parameters()}
    grads = meta_grad(learner, sine_batch())
    torch.optim.SGD(learner.parameters(), lr=0.25).step()
    for k, p in learner.model.named_parameters():
        mean_adapted = theta[k] - grads[k]
        torch.testing.assert_close(p.detach(), theta[k] + 0.25 * (mean_adapted - theta[k]))


@pytest.mark.parametrize("transductive", [False, True])
def test_vectorised_equals_loop(transductive):
    batch = image_batch()
    out = {}
    for executor in ("vmap", "loop"):
        torch.manual_seed(1)
        model = Conv4(Conv4Config(channels=6, blocks=2, downsample="stride"), 1, 3).double()
        hp = ReptileConfig(inner_steps=3, inner_batch=4, eval_steps=4, eval_inner_batch=3, transductive=transductive, executor=executor)
        learner = Reptile(hp, model, "classification")
        grads = meta_grad(learner, batch, seed=3)
        torch.manual_seed(4)
        out[executor] = (grads, learner.eval_predictions(batch))
    (g_v, p_v), (g_l, p_l) = out["vmap"], out["loop"]
    assert list(p_v) == ["0 steps", "3 steps", "4 steps"]
    for k in g_v:
        torch.testing.assert_close(g_v[k], g_l[k], rtol=1e-9, atol=1e-10)  # conv biases before BatchNorm: ~0
    for k in p_v:
        torch.testing.assert_close(p_v[k], p_l[k], rtol=1e-9, atol=1e-12)


def test_non_transductive_prediction_sees_support_plus_one_query():
    """Each query is predicted in a batch of the support set plus that query alone, so its
    prediction does not depend on the other queries; transductive predictions do."""
    torch.manual_seed(0)
    model = Conv4(Conv4Config(channels=6, blocks=2, downsample="stride"), 1, 3).double()
    batch = image_batch(tasks=2)
    learner = Reptile(ReptileConfig(eval_steps=0), model, "classification")
    params = {k: p.detach().expand(2, *p.shape) for k, p in model.named_parameters()}
    pred = learner.predict(params, batch.support_x, batch.query_x)
    for b in range(2):
        for q in range(batch.query_x.shape[1]):
            alone = torch.cat([batch.support_x[b], batch.query_x[b, q : q + 1]])
            torch.testing.assert_close(pred[b, q], model(alone)[-1])
    learner.hp.transductive = True
    torch.testing.assert_close(learner.predict(params, batch.support_x, batch.query_x), torch.stack([model(batch.query_x[b]) for b in range(2)]))


@pytest.mark.parametrize("eval_steps", [0, 1, 7])
def test_evaluation_adapts_for_the_configured_test_steps(eval_steps):
    """adapt() and the "N steps" report take exactly ``eval_steps`` full-batch SGD steps at test
    time (the reference's --eval-iters), checked against torch.optim.SGD on a copy of the model."""
    torch.manual_seed(0)
    model = tiny_model(hidden=(8,))
    hp = ReptileConfig(inner_optimizer="sgd", inner_lr=0.1, inner_steps=2, inner_batch=4, eval_steps=eval_steps, eval_inner_batch=0)
    learner = Reptile(hp, model, "regression")
    batch = sine_batch(tasks=2)
    adapted = learner.adapt(batch.support_x, batch.support_y)(batch.query_x)
    reported = learner.eval_predictions(batch)[Reptile.step_label(eval_steps)]
    for b in range(2):
        copy = tiny_model(hidden=(8,))
        copy.load_state_dict(model.state_dict())
        sgd = torch.optim.SGD(copy.parameters(), lr=0.1)
        for _ in range(eval_steps):
            sgd.zero_grad()
            nn.functional.mse_loss(copy(batch.support_x[b]), batch.support_y[b]).backward()
            sgd.step()
        expected = copy(batch.query_x[b]).detach()
        torch.testing.assert_close(adapted[b], expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(reported[b], expected, rtol=1e-9, atol=1e-12)


# supervised-reptile's archived README (commit 5d5589cc), flag for flag:
# train-shots, inner-batch, inner-iters, learning-rate, meta-batch, meta-iters, eval-batch, eval-iters
ARCHIVED_README = {
    "reptile-omniglot-5w1s": (5, 1, 10, 10, 5, 0.001, 5, 100000, 5, 50),
    "reptile-omniglot-5w1s-transductive": (5, 1, 10, 10, 5, 0.001, 5, 100000, 5, 50),
    "reptile-omniglot-5w5s": (5, 5, 10, 10, 5, 0.001, 5, 100000, 5, 50),
    "reptile-omniglot-20w1s": (20, 1, 10, 20, 10, 0.0005, 5, 200000, 10, 50),
    "reptile-omniglot-20w5s": (20, 5, 10, 20, 10, 0.0005, 5, 200000, 10, 50),
    "reptile-miniimagenet-5w1s": (5, 1, 15, 10, 8, 0.001, 5, 100000, 5, 50),
}


@pytest.mark.parametrize("preset", sorted(ARCHIVED_README))
def test_presets_are_the_reference_commands(preset):
    cfg = load_config(preset)
    t, h, tr = cfg.task.hp, cfg.learner.hp, cfg.train
    ours = (t.ways, t.shots, t.shots + t.queries, h.inner_batch, h.inner_steps, h.inner_lr, tr.meta_batch, tr.iterations,
            h.eval_inner_batch, h.eval_steps)
    assert ours == ARCHIVED_README[preset]
    assert (h.inner_optimizer, h.adam_beta1, h.adam_state, tr.optimizer, tr.lr, tr.lr_schedule) == ("adam", 0.0, "carried", "sgd", 1.0, "linear")
    assert h.transductive == (preset.endswith("transductive") or "miniimagenet" in preset)


def test_minibatches_are_reshuffled_passes_without_replacement():
    idx = minibatch_indices(tasks=2, n=6, steps=5, batch=4)  # 20 draws = 3 full passes + 2
    assert idx.shape == (2, 5, 4)
    flat = idx.reshape(2, -1)
    for t in range(2):
        for p in range(3):
            assert sorted(flat[t, 6 * p : 6 * p + 6].tolist()) == list(range(6))
    assert minibatch_indices(2, 6, 3, 0).shape == (2, 3, 6)


def test_bad_beta1_is_a_config_error():
    from metagrad.errors import ConfigError

    with pytest.raises(ConfigError, match="adam_beta1 must be < 1"):
        load_config("reptile-omniglot-5w5s", ["learner.adam_beta1=1"])


def test_reptile_learns_omniglot(shared_data, tmp_path, omniglot_cache):
    """5-way 1-shot at 14x14 pixels with a small Conv-3 and inner SGD, to fit in seconds."""
    cfg = load_config("reptile-omniglot-5w5s", [*SMALL_SETS(shared_data, omniglot_cache), "task.shots=1", "task.queries=4", "task.image_size=14",
                                                  "model.channels=16", "model.blocks=3", "learner.inner_optimizer=sgd", "learner.inner_lr=0.5",
                                                  "learner.inner_batch=0", "learner.inner_steps=5", "learner.eval_steps=10", "learner.eval_inner_batch=0",
                                                  "learner.transductive=true", "train.iterations=150", "train.meta_batch=4", "train.lr=1.0",
                                                  "train.lr_schedule=constant", "train.eval_every=0", "train.eval_tasks=100", "train.test_tasks=10"])
    train(cfg, tmp_path / "run", progress=False)
    assert last_val(tmp_path / "run", "10_steps") > 0.45  # chance: 0.2 (about 0.55 here)


def test_cli_train_and_eval(shared_data, tmp_path, omniglot_cache, capsys):
    out = tmp_path / "run"
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=3", "train.eval_tasks=4", "train.test_tasks=4",
            "train.eval_batch=2", "learner.eval_steps=2", "model.channels=8", "task.image_size=14"]
    assert main(["train", "--preset", "reptile-omniglot-5w1s", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert main(["eval", str(out), "--episodes", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["headline"] == "2 steps" and {r["setting"] for r in result["results"]} == {"0 steps", "2 steps"}
    from metagrad.train import load_run

    assert load_run(out)[1].fixed_ways == 5  # a 5-output head: `metagrad adapt` needs 5 classes
