"""The Meta-Learner LSTM (Ravi & Larochelle 2017): its meta-gradient against finite differences of
an independently written objective (the learner's gradients and losses as constant inputs, as the
paper), and learning Omniglot 5-way 1-shot on the small background sets."""

from pathlib import Path

import torch
from torch.func import functional_call

from metagrad.config import load_config
from metagrad.learners.lstm_optimizer import log_sign
from metagrad.learners.meta_lstm import MetaLSTM, MetaLSTMConfig
from metagrad.models.mlp import MLPConfig, make_mlp
from metagrad.tasks.batch import TaskBatch
from metagrad.train import train

from small_omniglot import SMALL_SETS, last_val

B, D, S, Q, STEPS = 2, 2, 5, 4, 2


def tiny():
    torch.manual_seed(0)
    learner = MetaLSTM(MetaLSTMConfig(inner_steps=STEPS, eval_steps=STEPS, hidden=3),
                       make_mlp(MLPConfig(hidden=[]), (D,), 1), "regression").double()
    g = torch.Generator().manual_seed(1)
    x = lambda n: torch.randn(B, n, D, generator=g, dtype=torch.float64)  # noqa: E731
    sx, qx = x(S), x(Q)
    w = torch.randn(B, D, 1, generator=g, dtype=torch.float64)
    return learner, TaskBatch(sx, sx @ w, qx, qx @ w)


def reference_objective(learner, phi, batch, frozen=None, record=None):
    """Query mse after STEPS updates c ← f⊙c − i⊙∇, written out by hand for a linear learner:
    ∇ and L of each task by the closed form of linear least squares, used as given constants
    (``frozen``: per step (∇, L) over the coordinates) once recorded (``record``)."""
    w0, b0 = phi["model.0.weight"], phi["model.0.bias"]  # [1, D], [1]
    c = torch.cat([w0.expand(B, 1, D).reshape(-1), b0.expand(B, 1).reshape(-1)])  # coordinates: weights, then biases
    n = c.numel()
    h = (torch.zeros(n, 3, dtype=c.dtype), torch.zeros(n, 3, dtype=c.dtype))
    f = i = torch.zeros(n, dtype=c.dtype)
    lstm = {k[len("lstm."):]: v for k, v in phi.items() if k.startswith("lstm.")}
    for t in range(STEPS):
        w, b = c[: B * D].view(B, 1, D), c[B * D :].view(B, 1)
        r = batch.support_x @ w.transpose(1, 2) + b[:, None] - batch.support_y  # [B, S, 1]
        loss = r.square().mean((1, 2))
        grad = torch.cat([(2 / S * r.transpose(1, 2) @ batch.support_x).reshape(-1), (2 / S * r.sum((1, 2))).reshape(-1)])
        per_coord = torch.cat([loss[:, None].expand(B, D).reshape(-1), loss])
        if record is not None:
            record[t] = (grad.detach(), per_coord.detach())
        if frozen is not None:
            grad, per_coord = frozen[t]
        x = torch.cat([log_sign(grad, 10.0), log_sign(per_coord, 10.0)], 1)
        h = functional_call(learner.lstm, lstm, (x, h))
        f = torch.sigmoid(torch.cat([h[0], c[:, None], f[:, None]], 1) @ phi["cell.w_f"] + phi["cell.b_f"])
        i = torch.sigmoid(torch.cat([h[0], c[:, None], i[:, None]], 1) @ phi["cell.w_i"] + phi["cell.b_i"])
        c = f * c - i * grad
    w, b = c[: B * D].view(B, 1, D), c[B * D :].view(B, 1)
    return (batch.query_x @ w.transpose(1, 2) + b[:, None] - batch.query_y).square().mean()


def test_meta_gradient_matches_finite_differences_with_gradient_inputs_held_constant():
    learner, batch = tiny()
    phi = {k: p.detach().clone() for k, p in learner.named_parameters()}
    record = {}
    objective = reference_objective(learner, phi, batch, record=record)
    loss, _ = learner.meta_loss(batch)
    torch.testing.assert_close(loss, objective)  # the same forward computation
    loss.backward()
    eps = 1e-6
    for name, p in phi.items():
        for k in range(p.numel()):
            def at(delta):
                q = p.clone().view(-1)
                q[k] += delta
                return reference_objective(learner, {**phi, name: q.view_as(p)}, batch, frozen=record).item()
            fd = (at(eps) - at(-eps)) / (2 * eps)
            got = dict(learner.named_parameters())[name].grad.view(-1)[k].item()
            assert abs(got - fd) <= 1e-6 + 1e-5 * abs(fd), (name, k, got, fd)


def test_meta_lstm_learns_omniglot_5way_1shot(tmp_path, shared_data, omniglot_cache):
    cfg = load_config("meta-lstm-omniglot-5w1s", [*SMALL_SETS(shared_data, omniglot_cache), "task.image_size=14",
                                                  "model.channels=16", "model.blocks=3", "learner.inner_steps=3",
                                                  "learner.eval_steps=3", "train.iterations=100", "train.meta_batch=4",
                                                  "train.eval_every=0", "train.eval_tasks=60", "train.test_tasks=10"])
    train(cfg, Path(tmp_path / "run"), progress=False)
    assert last_val(tmp_path / "run", "3_steps") > 0.45  # unseen alphabet, chance 0.2
    assert last_val(tmp_path / "run", "0_steps") < 0.3  # the learning is in the updates
