"""Model-based meta-learners: MANN (LRUA memory), SNAIL, Meta Networks — the memory arithmetic by
hand, causality of the sequence models, fast weights, short learning runs on real Omniglot and
the command line."""

import json
import math

import pytest
import torch
from small_omniglot import SMALL_SETS, last_val

from metagrad.cli import main
from metagrad.config import load_config
from metagrad.learners import MANN, SNAIL, MANNConfig, MetaNet, MetaNetConfig, SNAILConfig
from metagrad.models.conv4 import Conv4
from metagrad.models.embed import feature_dim
from metagrad.models.memory import MemoryState, least_used, lrua_step
from metagrad.models.mlp import MLPConfig, make_mlp
from metagrad.models.snail import SNAILNet
from metagrad.tasks.batch import TaskBatch
from metagrad.train import train

D_IN, N = 6, 3


@pytest.fixture(autouse=True)
def one_thread():
    """These models run long chains of small ops (MANN: ~100 per time step); on this shared 2-core
    machine every 2-thread OpenMP region waits for a busy core, which made MANN ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixels_encoder():
    """An encoder without batch statistics (raw inputs), so examples cannot influence each other."""
    return make_mlp(MLPConfig(hidden=[]), (D_IN,), None)


def episode(B=2, S=9, Q=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, S, D_IN, generator=g), torch.randint(0, N, (B, S), generator=g),
            torch.randn(B, Q, D_IN, generator=g))


# --------------------------------------------------------------------------- LRUA by hand


def tiny_state():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])  # [B=1, M=4, D=2]
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    w_read = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])  # [B, H=1, M]
    return MemoryState(memory, usage, w_read, least_used(usage, 1), torch.zeros(1, 1, 2))


def test_lrua_writes_the_least_used_slot_and_decays_usage():
    state = tiny_state()
    assert state.w_lu.tolist() == [[0.0, 1.0, 0.0, 0.0]]  # slot 1 has the smallest usage
    key, add = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 3.0]]])
    new = lrua_step(state, key, add, gate=torch.zeros(1, 1), decay=0.95)  # sigmoid(alpha) = 0: least used only
    # slot 1 was erased (its [0, 1] is gone), then written with a; the others are untouched
    assert new.memory[0].tolist() == [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0], [2.0, 0.0]]
    cos = torch.tensor([1.0, 0.0, 1 / math.sqrt(2), 1.0])  # cos([1, 0], slot) for each slot
    w_read = cos.exp() / cos.exp().sum()
    torch.testing.assert_close(new.w_read[0, 0], w_read)
    torch.testing.assert_close(new.reads[0, 0], w_read @ new.memory[0])
    expected_usage = 0.95 * torch.tensor([0.5, 0.1, 0.9, 0.3]) + w_read + torch.tensor([0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(new.usage[0], expected_usage)
    assert new.w_lu[0].tolist() == [0.0, 0.0, 0.0, 1.0]  # slot 3 is now the least used


def test_lrua_gate_writes_the_previously_read_slots():
    state = tiny_state()
    add = torch.tensor([[[0.0, 3.0]]])
    new = lrua_step(state, torch.tensor([[[1.0, 0.0]]]), add, gate=torch.ones(1, 1), decay=0.5)
    erased = state.memory.clone()
    erased[0, 1] = 0.0  # the least-used slot is still erased first
    torch.testing.assert_close(new.memory, erased + state.w_read.transpose(1, 2) @ add)
    torch.testing.assert_close(new.usage, 0.5 * state.usage + new.w_read.sum(1) + state.w_read.sum(1))


def test_least_used_marks_as_many_slots_as_reads():
    usage = torch.tensor([[0.3, 0.0, 0.7, 0.1, 0.9], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert least_used(usage, 2).tolist() == [[0, 1, 0, 1, 0], [0, 0, 0, 1, 1]]


def test_per_head_least_used_writes_put_each_head_in_its_own_slot():
    """write_slots="per_head": head i writes its a_i to the i-th least-used slot alone (by hand);
    "shared" (the paper) adds every head's a_i to all of those slots."""
    usage = torch.tensor([[0.3, 0.0, 0.7, 0.1, 0.9]])
    assert least_used(usage, 2, per_head=True).tolist() == [[[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]]
    memory = torch.arange(10.0).view(1, 5, 2)
    add = torch.tensor([[[1.0, 2.0], [10.0, 20.0]]])  # heads 0 and 1
    keys, gate = torch.ones(1, 2, 2), torch.zeros(1, 2)  # sigmoid(alpha) = 0: least-used writes only
    for per_head in (True, False):
        state = MemoryState(memory, usage, torch.zeros(1, 2, 5), least_used(usage, 2, per_head), torch.zeros(1, 2, 2))
        new = lrua_step(state, keys, add, gate, decay=1.0)
        expected = memory.clone()
        expected[0, 1] = 0.0  # the least-used slot is erased first
        if per_head:
            expected[0, 1] += add[0, 0]
            expected[0, 3] += add[0, 1]
        else:
            expected[0, 1] += add[0].sum(0)
            expected[0, 3] += add[0].sum(0)
        torch.testing.assert_close(new.memory, expected)
        assert new.w_lu.shape == ((1, 2, 5) if per_head else (1, 5))
    fresh = MemoryState.initial(2, 6, 3, 4, torch.zeros(1), per_head=True)
    assert fresh.w_lu[0].argmax(-1).tolist() == [0, 1, 2, 3] and fresh.w_lu.sum(-1).eq(1).all()


# --------------------------------------------------------------------------- causality


def mann():
    torch.manual_seed(0)
    return MANN(MANNConfig(controller=16, memory_slots=8, memory_width=5, heads=2), pixels_encoder(), (D_IN,), N)


def test_mann_predicts_each_label_before_it_is_revealed():
    learner, (sx, sy, _) = mann(), episode()
    base, _, _ = learner.run_support(sx, sy)
    t = 5
    sx2 = sx.clone()
    sx2[:, t] += 1.0
    changed_x, _, _ = learner.run_support(sx2, sy)
    torch.testing.assert_close(changed_x[:, :t], base[:, :t], rtol=0, atol=0)
    assert not torch.allclose(changed_x[:, t], base[:, t])
    sy2 = sy.clone()
    sy2[:, t] = (sy[:, t] + 1) % N
    changed_y, _, _ = learner.run_support(sx, sy2)
    torch.testing.assert_close(changed_y[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)  # y_t enters at step t+1
    assert not torch.allclose(changed_y[:, t + 1], base[:, t + 1])


def test_mann_queries_are_independent_continuations_of_the_support_sequence():
    learner, (sx, sy, qx) = mann(), episode()
    q = learner.adapt(sx, sy)(qx)
    for j in range(qx.shape[1]):
        seq, _, _ = learner.run_support(torch.cat([sx, qx[:, j : j + 1]], 1), torch.cat([sy, sy[:, :1]], 1))
        torch.testing.assert_close(q[:, j], seq[:, -1])


def test_mann_reports_accuracy_by_instance():
    learner = mann()
    sy = torch.tensor([[0, 1, 0, 2, 2, 1, 0, 1, 2], [2, 2, 2, 1, 1, 1, 0, 0, 0]])
    sx, _, qx = episode()
    batch = TaskBatch(sx, sy, qx, torch.zeros(2, 4, dtype=torch.long))
    out = learner.eval_predictions(batch)
    assert set(out) == {"adapted", "instance 1", "instance 2", "instance 3"}  # 4, 5, 10 exceed 3 shots
    seq, _, _ = learner.run_support(sx, sy)
    pred, target = out["instance 2"]
    assert target.tolist() == [[0, 2, 1], [2, 1, 0]]  # second presentations, in sequence order
    torch.testing.assert_close(pred[0], seq[0, [2, 4, 5]])
    torch.testing.assert_close(pred[1], seq[1, [1, 4, 7]])


def snail():
    torch.manual_seed(0)
    return SNAIL(SNAILConfig(keys=[4, 8], values=[3, 5], tc_layers=3, filters=4), pixels_encoder(), (D_IN,), N)


def test_snail_is_causal_along_the_support_sequence():
    learner, (sx, sy, qx) = snail(), episode()
    ctx, qry = learner.sequence_logits(sx, sy, qx)
    t = 4
    sx2, sy2 = sx.clone(), sy.clone()
    sx2[:, t] += 1.0
    sy2[:, t] = (sy[:, t] + 1) % N
    for ctx2, qry2 in (learner.sequence_logits(sx2, sy, qx), learner.sequence_logits(sx, sy2, qx)):
        torch.testing.assert_close(ctx2[:, :t], ctx[:, :t], rtol=0, atol=0)
        assert not torch.allclose(ctx2[:, t:], ctx[:, t:]) and not torch.allclose(qry2, qry)


def test_snail_queries_equal_separate_sequences_and_ignore_each_other():
    torch.manual_seed(0)
    net = SNAILNet(7, N, keys=[4, 8, 6], values=[3, 5, 2], tc_layers=3, filters=4)
    ctx, qry = torch.randn(2, 9, 7), torch.randn(2, 4, 7)
    _, out = net(ctx, qry)
    for j in range(4):
        seq, _ = net(torch.cat([ctx, qry[:, j : j + 1]], 1), qry[:, :0])
        torch.testing.assert_close(out[:, j], seq[:, -1])
    learner, (sx, sy, qx) = snail(), episode()
    qx2 = qx.clone()
    qx2[:, 0] += 1.0
    a, b = learner.adapt(sx, sy)(qx), learner.adapt(sx, sy)(qx2)
    torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=0)


def test_snail_loss_reads_only_the_query_positions():
    """The paper's (and its reimplementations') loss: cross-entropy at the query position only.
    The support positions' outputs, though computed, must not enter the loss or its gradient."""
    learner, (sx, sy, qx) = snail(), episode()
    qy = torch.randint(0, N, qx.shape[:2], generator=torch.Generator().manual_seed(1))
    loss, _ = learner.meta_loss(TaskBatch(sx, sy, qx, qy))
    ctx, qry = learner.sequence_logits(sx, sy, qx)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(qry.flatten(0, 1), qy.flatten()))
    with_support = torch.nn.functional.cross_entropy(torch.cat([ctx, qry], 1).flatten(0, 1), torch.cat([sy, qy], 1).flatten())
    assert not torch.allclose(loss, with_support)


@pytest.mark.parametrize("preset", ["snail-omniglot-5w1s", "snail-omniglot-20w1s", "snail-omniglot-5w5s", "snail-omniglot-20w5s"])
def test_snail_paper_presets_embed_as_the_paper(preset):
    """App. B: Conv-4 with leaky ReLUs, then a linear layer to a 64-d embedding."""
    cfg = load_config(preset, [])
    assert (cfg.model.hp.leak, cfg.model.hp.project, cfg.model.hp.channels) == (0.1, 64, 64)
    assert feature_dim(Conv4(cfg.model.hp, 1, None), (1, 28, 28)) == 64


def test_snail_quick_keeps_the_recipe_its_rows_were_measured_with():
    quick = load_config("snail-quick", []).model.hp  # ReLU and the mean of the last map (docs/results.md)
    assert (quick.leak, quick.project) == (0.0, 0)


# --------------------------------------------------------------------------- Meta Networks


def test_metanet_fast_weights_change_the_output_and_vanish_without_support():
    torch.manual_seed(0)
    learner = MetaNet(MetaNetConfig(hidden=8, meta_hidden=5), pixels_encoder(), (D_IN,), N)
    sx, sy, qx = episode()
    batch = TaskBatch(sx, sy, qx, torch.zeros(2, 4, dtype=torch.long))
    out = learner.eval_predictions(batch)
    assert (out["adapted"] - out["slow weights only"]).abs().max() > 1e-3
    empty = learner.adapt(sx[:, :0], sy[:, :0])(qx)
    torch.testing.assert_close(empty, out["slow weights only"], rtol=0, atol=0)
    keys, fast = learner.fast_memory(sx, sy)
    assert keys.shape == (2, 9, D_IN) and fast["w1"].shape == (2, 9, 8, D_IN) and fast["b2"].shape == (2, 9, N)


def test_metanet_meta_gradient_reaches_every_meta_parameter():
    torch.manual_seed(0)
    learner = MetaNet(MetaNetConfig(hidden=8, meta_hidden=5), pixels_encoder(), (D_IN,), N)
    sx, sy, qx = episode()
    learner.accumulate_meta_grad(TaskBatch(sx, sy, qx, torch.randint(0, N, (2, 4))))
    missing = [k for k, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --------------------------------------------------------------------------- learning on Omniglot

LEARN = [
    ("metanet-quick", ["train.iterations=50"], "adapted", 0.7),
    ("snail-quick", ["train.iterations=200"], "adapted", 0.4),
    ("mann-quick", ["train.iterations=700"], "adapted", 0.33),  # per-head writes (the preset) leave chance late: 0.32 at 500
]


@pytest.mark.parametrize("preset,extra,key,threshold", LEARN, ids=[p for p, *_ in LEARN])
def test_learns_omniglot(preset, extra, key, threshold, tmp_path, shared_data, omniglot_cache):
    sets = ["train.eval_every=0", "train.eval_tasks=200", "train.test_tasks=10", "train.log_every=50"]
    cfg = load_config(preset, [*SMALL_SETS(shared_data, omniglot_cache), *sets, *extra])
    train(cfg, tmp_path / "run", progress=False)
    assert last_val(tmp_path / "run", key) > threshold  # 5-way queries on an unseen alphabet; chance 0.2


@pytest.mark.parametrize("preset", ["mann-quick", "snail-quick", "metanet-quick"])
def test_cli_train_then_eval(preset, tmp_path, shared_data, omniglot_cache, capsys):
    out = tmp_path / "run"
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=3", "train.eval_every=0", "train.eval_tasks=4",
            "train.test_tasks=10", "train.eval_batch=5", "train.checkpoint_every=3"]
    argv = ["train", "--preset", preset, "--out", str(out), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(out), "--json", "--episodes", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    settings = {r["setting"] for r in result["results"]}
    assert result["metric"] == "accuracy" and result["episodes"] == 10 and result["headline"] == "adapted"
    if preset == "mann-quick":
        assert settings == {"adapted", *(f"instance {k}" for k in (1, 2, 3, 4, 5, 10))}
        assert (out / "settings_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # accuracy by instance
    else:
        assert not (out / "settings_curve.png").exists()
    if preset == "metanet-quick":
        assert settings == {"adapted", "slow weights only"}
