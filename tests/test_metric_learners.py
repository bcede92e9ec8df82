"""Prototypical Networks, Matching Networks and k-NN: the formulas on tiny hand-made examples,
per-task BatchNorm statistics, vectorised == loop, and short learning / CLI runs on real Omniglot."""

import json

import pytest
import torch
from torch import nn

from metagrad.cli import main
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.learners.knn import KNN, KNNConfig
from metagrad.learners.matching import MatchingConfig, MatchingNet
from metagrad.learners.protonet import ProtoNet, ProtoNetConfig, local_distances, make_protonet, prototype_logits
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.tasks import TaskBatch
from metagrad.build import build_task
from metagrad.evaluation import evaluate
from metagrad.train import TEST_SEED, load_run, train

from small_omniglot import SMALL_SETS, last_val


def conv_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return Conv4(Conv4Config(channels=8, blocks=2), 1, None).double()


def episodes(tasks=3, ways=4, shots=2, queries=3, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = lambda k: torch.stack([torch.randperm(ways * k, generator=g) % ways for _ in range(tasks)])  # noqa: E731
    x = lambda n: torch.rand(tasks, n, 1, 12, 12, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(ways * shots), y(shots), x(ways * queries), y(queries))


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    zs = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])  # class 0: (0,0), (2,0); class 1: (0,3)
    ys = torch.tensor([[0, 0, 1]])
    zq = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    learner = ProtoNet(nn.Identity(), "vmap")
    # prototypes (1, 0) and (0, 3)
    expected = -torch.tensor([[[0.0 + 1.0, 1.0 + 4.0], [1.0 + 4.0, 0.0 + 1.0]]])
    torch.testing.assert_close(learner.classify(zs, ys, zq), expected)


def test_protonet_through_the_network_matches_a_hand_computation():
    net, batch = conv_net(), episodes()
    learner = ProtoNet(net, "vmap")
    pred = learner.adapt(batch.support_x, batch.support_y)(batch.query_x)
    for b in range(len(batch)):
        z = net(torch.cat([batch.support_x[b], batch.query_x[b]]))  # one batch per task
        zs, zq = z[: batch.support_x.shape[1]], z[batch.support_x.shape[1] :]
        protos = torch.stack([zs[batch.support_y[b] == k].mean(0) for k in range(4)])
        expected = -torch.stack([((zq - c) ** 2).sum(-1) for c in protos], -1)
        torch.testing.assert_close(pred[b], expected)


def test_one_shot_protonet_is_nearest_neighbour_in_embedding_space():
    net, batch = conv_net(), episodes(shots=1, queries=5)
    proto = ProtoNet(net, "vmap").adapt(batch.support_x, batch.support_y)(batch.query_x)
    knn = KNN(KNNConfig(k=1, embedding="learned"), net).adapt(batch.support_x, batch.support_y)(batch.query_x)
    assert torch.equal(proto.argmax(-1), knn.argmax(-1))
    zs, zq = ProtoNet(net, "vmap").embed(batch.support_x, batch.query_x)
    nearest = torch.cdist(zq, zs).argmin(-1)
    assert torch.equal(proto.argmax(-1), batch.support_y.gather(1, nearest))


def local_by_loops(fs, support_y, fq, radius):
    """The local distance written out descriptor by descriptor: d(x, k) of learners/protonet.py."""
    B, S, C, h, w = fs.shape
    Q, N = fq.shape[1], int(support_y.max()) + 1
    cells = [(i, j) for i in range(h) for j in range(w)]

    def nearest(a, b, at):  # squared distance from a's descriptor at ``at`` to b's nearest within radius
        return min(float(((a[:, at[0], at[1]] - b[:, i, j]) ** 2).sum()) for i, j in cells
                   if max(abs(i - at[0]), abs(j - at[1])) <= radius)

    out = torch.zeros(B, Q, N, dtype=fs.dtype)
    for b in range(B):
        for qi in range(Q):
            for k in range(N):
                shots = [fs[b, si] for si in range(S) if support_y[b, si] == k]
                q = fq[b, qi]
                to_class = sum(min(nearest(q, s, at) for s in shots) for at in cells) / len(cells)
                from_class = sum(sum(nearest(s, q, at) for at in cells) / len(cells) for s in shots) / len(shots)
                out[b, qi, k] = (to_class + from_class) / 2
    return out


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_local_distance_matches_the_descriptor_by_descriptor_definition(radius):
    g = torch.Generator().manual_seed(radius)
    fs = torch.randn(2, 6, 3, 3, 3, generator=g, dtype=torch.double)  # 3 classes x 2 shots of 3x3 maps
    fq = torch.randn(2, 4, 3, 3, 3, generator=g, dtype=torch.double)
    support_y = torch.stack([torch.randperm(6, generator=g) % 3 for _ in range(2)])
    torch.testing.assert_close(local_distances(fs, support_y, fq, radius), local_by_loops(fs, support_y, fq, radius))
    if radius == 3:  # a radius as large as the map: anywhere, so the order of a map's positions does not matter
        shuffled = fq.flatten(3)[..., torch.randperm(9, generator=g)].view_as(fq)
        torch.testing.assert_close(local_distances(fs, support_y, shuffled, radius),
                                   local_distances(fs, support_y, fq, radius))


def test_local_distance_of_1x1_maps_and_one_shot_is_the_prototype_distance():
    g = torch.Generator().manual_seed(0)
    zs, zq = torch.randn(2, 5, 4, generator=g, dtype=torch.double), torch.randn(2, 3, 4, generator=g, dtype=torch.double)
    support_y = torch.stack([torch.randperm(5, generator=g) for _ in range(2)])
    torch.testing.assert_close(-local_distances(zs[..., None, None], support_y, zq[..., None, None], 0),
                               prototype_logits(zs, support_y, zq))


def test_local_distance_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(1, 4, 2, 3, 3, generator=g, dtype=torch.double, requires_grad=True)
    fq = torch.randn(1, 3, 2, 3, 3, generator=g, dtype=torch.double, requires_grad=True)
    support_y = torch.tensor([[0, 1, 0, 1]])
    assert torch.autograd.gradcheck(lambda a, b: local_distances(a, support_y, b, 1), (fs, fq))


def test_local_protonet_compares_the_maps_before_the_last_pool():
    net, batch = conv_net(), episodes()  # 12 px, two blocks: 6x6 maps before the last pool
    learner = ProtoNet(net, "vmap", distance="local", radius=1)
    zs, zq = learner.embed(batch.support_x, batch.query_x)
    assert zs.shape == (3, 8, 8, 6, 6) and zq.shape == (3, 12, 8, 6, 6)
    pred = learner.adapt(batch.support_x, batch.support_y)(batch.query_x)
    torch.testing.assert_close(pred, -local_distances(zs, batch.support_y, zq, 1))
    b = 1
    maps = net.feature_maps(torch.cat([batch.support_x[b], batch.query_x[b]]))  # one batch per task
    torch.testing.assert_close(zs[b], maps[:8])


def test_local_distance_needs_a_model_with_feature_maps():
    from metagrad.tasks import Sinusoid

    omniglot_like = type("Task", (), {"kind": "classification"})()
    with pytest.raises(ConfigError, match="learner.distance='local' compares feature maps; the model \\(Flatten\\)"):
        make_protonet(ProtoNetConfig(distance="local"), lambda n_outputs: nn.Flatten(), omniglot_like)
    with pytest.raises(ConfigError, match="needs a classification task"):
        make_protonet(ProtoNetConfig(distance="local"), lambda n_outputs: nn.Flatten(), Sinusoid())


def test_knn_majority_vote_and_tie_break():
    zs = torch.tensor([[[0.0], [1.0], [1.1], [5.0], [5.2]]])
    ys = torch.tensor([[0, 1, 1, 2, 2]])
    zq = torch.tensor([[[0.2], [4.0], [0.7]]])
    pred = KNN(KNNConfig(k=3), nn.Identity()).classify(zs, ys, zq)
    # q=0.2: neighbours 0(0), 1(1), 1.1(1) -> class 1 by majority; q=4: 5, 5.2 (2) and 1.1 (1) -> 2
    assert pred.argmax(-1).tolist() == [[1, 2, 1]]
    tie = KNN(KNNConfig(k=2), nn.Identity()).classify(zs, ys, torch.tensor([[[0.4]]]))  # 0 (class 0) and 1 (class 1)
    assert tie.argmax(-1).item() == 0  # the nearer neighbour's class wins the tie
    assert KNN(KNNConfig(k=1), nn.Identity()).classify(zs, ys, zq).argmax(-1).tolist() == [[0, 2, 1]]


def test_matching_attention_sums_to_one_and_supports_classify_themselves():
    for fce in (False, True):
        torch.manual_seed(0)
        learner = MatchingNet(MatchingConfig(fce=fce, temperature=0.1), conv_net(), 8).double()
        batch = episodes()
        zs, zq = learner.embed(batch.support_x, batch.query_x)
        attn = learner.attention(zs, zq)
        assert attn.shape == (3, 12, 8) and (attn >= 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 12, dtype=torch.float64))
        logp = learner.classify(zs, batch.support_y, zq)
        onehot = torch.nn.functional.one_hot(batch.support_y, 4).double()
        torch.testing.assert_close(logp.exp(), attn @ onehot)  # attention-weighted labels
    learner = MatchingNet(MatchingConfig(), conv_net(), 0).double()
    batch = episodes(shots=1)  # cosine 1 with itself, < 1 with the other classes' single supports
    own = learner.adapt(batch.support_x, batch.support_y)(batch.support_x)  # each support point as a query
    assert torch.equal(own.argmax(-1), batch.support_y)


@pytest.mark.parametrize("preset", ["matching-omniglot-5w1s", "matching-omniglot-5w1s-fast", "matching-omniglot-5w5s",
                                    "matching-omniglot-20w1s", "matching-omniglot-20w5s"])
def test_matching_omniglot_presets_use_the_measured_temperature(preset):
    """0.05 beat 0.1 in all four Omniglot cells on the same schedule (docs/results.md, Matching diagnosis)."""
    assert load_config(preset, []).learner.hp.temperature == 0.05


@pytest.mark.parametrize("make", [lambda net, ex: ProtoNet(net, ex),
                                  lambda net, ex: ProtoNet(net, ex, distance="local"),
                                  lambda net, ex: MatchingNet(MatchingConfig(executor=ex), net, 0),
                                  lambda net, ex: KNN(KNNConfig(k=3, embedding="learned", executor=ex), net)])
def test_vectorised_equals_loop_and_tasks_do_not_see_each_other(make):
    batch = episodes()
    preds, grads = {}, {}
    for ex in ("vmap", "loop"):
        learner = make(conv_net(), ex)
        learner.zero_grad()
        learner.accumulate_meta_grad(batch)
        grads[ex] = [p.grad for p in learner.parameters()]
        preds[ex] = learner.eval_predictions(batch)["adapted"]
    torch.testing.assert_close(preds["vmap"], preds["loop"])
    for a, b in zip(grads["vmap"], grads["loop"]):
        torch.testing.assert_close(a, b)
    alone = make(conv_net(), "vmap").eval_predictions(batch[1])["adapted"]
    torch.testing.assert_close(alone[0], preds["vmap"][1])  # BatchNorm statistics are per task


@pytest.mark.parametrize("make", [lambda net, ex, t: ProtoNet(net, ex, t),
                                  lambda net, ex, t: ProtoNet(net, ex, t, distance="local"),
                                  lambda net, ex, t: MatchingNet(MatchingConfig(executor=ex, transductive=t), net, 0),
                                  lambda net, ex, t: KNN(KNNConfig(k=3, embedding="learned", executor=ex, transductive=t), net)])
def test_non_transductive_classifies_each_query_by_itself_with_the_support_statistics(make):
    batch = episodes()
    q = batch.query_x.shape[1]

    def alone(learner, b, i):  # query i of task b as the only query of its task
        one = TaskBatch(batch.support_x[b : b + 1], batch.support_y[b : b + 1],
                        batch.query_x[b : b + 1, i : i + 1], batch.query_y[b : b + 1, i : i + 1])
        return learner.eval_predictions(one)["adapted"][0, 0]

    for ex in ("vmap", "loop"):
        learner = make(conv_net(), ex, False)
        pred = learner.eval_predictions(batch)["adapted"]
        zs, _ = learner.embed(batch.support_x, batch.query_x)
        for b in range(len(batch)):
            torch.testing.assert_close(zs[b], learner.encode(batch.support_x[b]))  # the support set's own statistics
            for i in range(q):
                torch.testing.assert_close(alone(learner, b, i), pred[b, i])
    transductive = make(conv_net(), "vmap", True)  # the default: the other queries move the statistics
    pred = transductive.eval_predictions(batch)["adapted"]
    assert not torch.allclose(alone(transductive, 0, 0), pred[0, 0])


def test_compiled_objective_follows_the_statistics_setting():
    """One compiled objective, the support-only BatchNorm setting switched between calls (a module
    global that torch.compile guards on): each call gives that setting's eager meta-gradient."""
    import torch._dynamo

    batch = episodes()
    torch._dynamo.reset()
    learner = ProtoNet(conv_net(), "vmap")
    compiled = torch.compile(learner.meta_loss, backend="aot_eager")

    def meta_grad(objective):
        learner.zero_grad()
        objective(batch)[0].backward()
        return torch.cat([p.grad.flatten() for p in learner.parameters()])

    grads = {}
    for transductive in (True, False, True, False):
        learner.transductive = transductive
        grads[transductive] = meta_grad(learner.meta_loss)
        torch.testing.assert_close(meta_grad(compiled), grads[transductive])
    assert not torch.allclose(grads[False], grads[True])


def test_pixel_knn_has_no_parameters_and_trains_as_a_no_op(tmp_path, shared_data, omniglot_cache):
    cfg = load_config("knn-pixels-omniglot-5w1s", [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=2",
                                                     "train.eval_tasks=50", "train.test_tasks=50"])
    report = train(cfg, tmp_path / "run", progress=False)
    assert 0.3 < report["test"]["adapted"]["mean"] < 0.9  # raw-pixel 1-NN: clearly above chance (0.2)


def test_metric_learners_need_classification_tasks():
    from metagrad.learners.protonet import ProtoNetConfig, make_protonet
    from metagrad.tasks import Sinusoid

    with pytest.raises(ConfigError, match="needs a classification task"):
        make_protonet(ProtoNetConfig(), lambda n_outputs: nn.Identity(), Sinusoid())


LEARN = ["task.image_size=14", "model.channels=32", "model.blocks=3", "train.iterations=100", "train.eval_every=0",
         "train.eval_tasks=100", "train.test_tasks=10", "train.log_every=50"]


@pytest.mark.parametrize("preset,extra", [
    ("protonet-omniglot-5w1s", ["task.ways=20"]),  # trains on 20-way episodes, tests 5-way
    ("protonet-omniglot-5w1s", ["task.ways=20", "learner.distance=local"]),  # part by part, 3x3 maps at 14 px
    ("matching-omniglot-5w1s", []),
    ("knn-protonet-omniglot-5w1s", ["task.ways=20", "task.shots=2", "task.eval_shots=2", "learner.k=3"]),  # k-NN, not prototypes
])
def test_metric_learners_learn_omniglot(preset, extra, tmp_path, shared_data, omniglot_cache):
    cfg = load_config(preset, [*SMALL_SETS(shared_data, omniglot_cache), *LEARN, *extra])
    train(cfg, tmp_path / "run", progress=False)
    assert last_val(tmp_path / "run", "adapted") > 0.6  # 5-way on unseen alphabets; chance 0.2


@pytest.mark.parametrize("preset", ["protonet-omniglot-20w5s", "matching-omniglot-5w5s", "knn-pixels-omniglot-20w1s", "protonet-quick"])
def test_cli_train_and_eval(preset, tmp_path, shared_data, omniglot_cache, capsys):
    out = tmp_path / "run"
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=2", "train.eval_tasks=4", "train.test_tasks=4",
            "model.channels=8", "model.blocks=3", "task.image_size=14"]
    assert main(["train", "--preset", preset, "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    assert "adapted" in capsys.readouterr().out
    assert main(["eval", str(out), "--episodes", "4", "--json", "--set", "task.ways=3"]) == 0  # any way count
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "accuracy" and result["episodes"] == 4
    # the same 3-way evaluation done here, from the checkpoint, with the test seed
    cfg, learner, _ = load_run(out, ["task.ways=3"])
    est = evaluate(learner, build_task(cfg, "test"), 4, TEST_SEED, cfg.train.eval_batch, torch.device("cpu"), torch.float32)
    assert cfg.task.hp.ways == 3 and result["mean"] == pytest.approx(est[learner.headline].mean, abs=1e-6)


def test_a_protonet_run_evaluates_as_knn_on_its_embedding(tmp_path, shared_data, omniglot_cache, capsys):
    """`metagrad eval RUN --set learner.name=knn --set learner.embedding=learned` reuses a ProtoNet's
    embedding (docs/results.md); with 1 shot, 1-NN is the prototype rule, so the accuracies agree."""
    out = tmp_path / "run"
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=3", "train.eval_tasks=4", "train.test_tasks=4",
            "model.channels=8", "model.blocks=3", "task.image_size=14"]
    assert main(["train", "--preset", "protonet-quick", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()

    def accuracy(*overrides):
        assert main(["eval", str(out), "--episodes", "20", "--json", *[a for s in overrides for a in ("--set", s)]]) == 0
        return json.loads(capsys.readouterr().out)["mean"]

    knn = ("learner.name=knn", "learner.embedding=learned")
    assert accuracy(*knn) == pytest.approx(accuracy(), abs=1e-9)
    # and the override does take effect: with 3 shots, nearest neighbour and nearest prototype differ
    assert accuracy(*knn, "task.eval_shots=3") != pytest.approx(accuracy("task.eval_shots=3"), abs=1e-9)
