"""`metagrad eval RUN RUN2 ...`: several classifiers scored as an ensemble of summed log-probabilities."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from metagrad.build import build_task
from metagrad.cli import main
from metagrad.ensemble import Ensemble, SameEpisodes, check_members, eval_chunk
from metagrad.errors import ConfigError, DataError
from metagrad.evaluation import evaluate
from metagrad.tasks import TaskBatch
from metagrad.train import TEST_SEED, load_run

from small_omniglot import SMALL_SETS


class Fixed(nn.Module):
    """A stand-in classifier whose headline logits are given."""

    kind, headline = "classification", "adapted"

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def eval_predictions(self, batch):
        return {self.headline: self.logits}


def test_the_ensemble_sums_each_members_log_probabilities():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 4, generator=g) * 3, torch.randn(2, 6, 4, generator=g) + 100  # b: far from normalised
    out = Ensemble(["a", "b"], [Fixed(a), Fixed(b)]).eval_predictions(None)
    assert torch.equal(out["a"], a) and torch.equal(out["b"], b)
    expected = torch.log(torch.softmax(a.double(), -1) * torch.softmax(b.double(), -1))  # log of the product of probabilities
    assert torch.allclose(out["ensemble"].double(), expected, atol=1e-5)
    assert set(out) == {"a", "b", "ensemble"}  # two members: no partial ensembles

    c = torch.randn(2, 6, 4, generator=g) - 7
    out = Ensemble(["a", "b", "c"], [Fixed(a), Fixed(b), Fixed(c)]).eval_predictions(None)
    assert list(out) == ["a", "b", "c", "ensemble of the first 2", "ensemble"]
    assert torch.allclose(out["ensemble of the first 2"].double(), expected, atol=1e-5)
    expected = torch.log(torch.softmax(a.double(), -1) * torch.softmax(b.double(), -1) * torch.softmax(c.double(), -1))
    assert torch.allclose(out["ensemble"].double(), expected, atol=1e-5)


def test_evaluate_scores_the_members_and_the_ensemble_on_the_same_queries():
    # 1 task, 4 queries, 3 classes. a is sure and right on query 0, b on query 1; both are unsure
    # elsewhere, a right on query 3 only: a 2/4, b 1/4, the ensemble 3/4
    a = torch.tensor([[[9.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 2]]])
    b = torch.tensor([[[0.0, 1, 0], [0, 9, 0], [0, 1.5, 0], [0, 1, 0]]])
    y = torch.tensor([[0, 1, 2, 2]])
    source = SimpleNamespace(sample=lambda n, gen: TaskBatch(torch.zeros(n, 3, 1), y[:, :3].expand(n, 3), torch.zeros(n, 4, 1), y.expand(n, 4)))
    est = evaluate(Ensemble(["a", "b"], [Fixed(a), Fixed(b)]), source, episodes=1)
    assert (est["a"].mean, est["b"].mean, est["ensemble"].mean) == pytest.approx((2 / 4, 1 / 4, 3 / 4))


def test_members_must_be_distinct_classifiers_on_the_same_task_settings():
    def cfg(**task):
        return SimpleNamespace(to_dict=lambda: {"task": {"name": "omniglot", "image_size": 28, "data_dir": "/a", **task}})

    clf = SimpleNamespace(kind="classification")
    check_members(["r1", "r2"], [cfg(), cfg(data_dir="/elsewhere", cache_dir="/c")], [clf, clf])  # storage may differ
    check_members(["r1", "r2"], [cfg(), cfg(image_size=56, crop="ink")], [clf, clf])  # so may how images are drawn
    with pytest.raises(ConfigError, match=r"r2 has task.ways=20 but r1 has None; .*\(--set task.ways=VALUE applies to every run\)"):
        check_members(["r1", "r2"], [cfg(), cfg(ways=20)], [clf, clf])
    with pytest.raises(ConfigError, match="r1 is given twice"):
        check_members(["r1", "r1"], [cfg(), cfg()], [clf, clf])
    with pytest.raises(ConfigError, match="write ./ensemble"):
        check_members(["r1", "ensemble"], [cfg(), cfg()], [clf, clf])
    with pytest.raises(ConfigError, match="'ensemble of the first 2' would share its name with an ensemble's row"):
        check_members(["r1", "ensemble of the first 2", "r3"], [cfg(), cfg(), cfg()], [clf, clf, clf])
    check_members(["r1", "ensemble of the first 2"], [cfg(), cfg()], [clf, clf])  # two runs have no such row
    with pytest.raises(ConfigError, match="r2 is a regression run; only classifiers"):
        check_members(["r1", "r2"], [cfg(), cfg()], [clf, SimpleNamespace(kind="regression")])


def test_cli_evaluates_runs_alone_and_as_an_ensemble(tmp_path, shared_data, omniglot_cache, capsys):
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=3", "train.eval_tasks=4", "train.test_tasks=4",
            "model.channels=8", "model.blocks=3", "task.image_size=14"]
    runs = []
    for seed in (0, 1):
        runs.append(str(tmp_path / f"run{seed}"))
        argv = ["train", "--preset", "protonet-quick", "--out", runs[-1], "--quiet", "--set", f"train.seed={seed}"]
        assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()

    assert main(["eval", *runs, "--episodes", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == runs and result["iteration"] == [3, 3] and result["headline"] == "ensemble"
    scores = {r["setting"]: r["mean"] for r in result["results"]}
    assert result["mean"] == scores["ensemble"]
    for run in runs:  # each member's row is its own evaluation
        assert main(["eval", run, "--episodes", "20", "--json"]) == 0
        assert scores[run] == pytest.approx(json.loads(capsys.readouterr().out)["mean"], abs=1e-12)
    # the ensemble's row, computed here: the argmax of the summed log-probabilities on the test tasks
    members = [load_run(run) for run in runs]
    batch = build_task(members[0][0], "test").sample(20, torch.Generator().manual_seed(TEST_SEED))
    with torch.no_grad():
        logits = [learner.eval().eval_predictions(batch)[learner.headline] for _, learner, _ in members]
    summed = sum(x.log_softmax(-1) for x in logits)
    accuracy = (summed.argmax(-1) == batch.query_y).double().mean().item()
    assert scores["ensemble"] == pytest.approx(accuracy, abs=1e-6)  # float32 per-task accuracies
    assert len({scores[runs[0]], scores[runs[1]], scores["ensemble"]}) == 3  # the three rows do differ here

    out = main(["eval", *runs, "--episodes", "4"])
    text = capsys.readouterr().out
    assert out == 0 and text.startswith(f"ensemble of {runs[0]} (iteration 3), {runs[1]} (iteration 3), test split:")
    assert re.search(r"^  ensemble +accuracy .*  <- headline$", text, re.M)

    other = str(tmp_path / "other")  # trained on other episodes: its tasks are not the first run's
    assert main(["train", "--preset", "protonet-quick", "--out", other, "--quiet", "--set", "task.queries=2",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["eval", runs[0], other, "--episodes", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{other} has task.queries=2" in err and err.count("\n") == 1


def test_runs_trained_at_other_image_sizes_are_scored_on_the_same_tasks(tmp_path, shared_data, omniglot_cache, capsys):
    sets = [*SMALL_SETS(shared_data, omniglot_cache), "train.iterations=3", "train.eval_tasks=4", "train.test_tasks=4",
            "model.channels=8", "model.blocks=3"]
    names = [str(tmp_path / f"run{i}") for i in range(3)]
    for run, size, crop, seed in zip(names, (14, 16, 14), ("none", "ink", "none"), range(3)):
        argv = ["train", "--preset", "protonet-quick", "--out", run, "--quiet", "--set", f"task.image_size={size}",
                "--set", f"task.crop={crop}", "--set", f"train.seed={seed}"]
        assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    capsys.readouterr()

    assert main(["eval", *names, "--episodes", "20", "--json"]) == 0
    scores = {r["setting"]: r["mean"] for r in json.loads(capsys.readouterr().out)["results"]}
    for run in names:  # each member, 14 or 16 px, scores exactly as in its own evaluation: the same tasks, its own images
        assert main(["eval", run, "--episodes", "20", "--json"]) == 0
        assert scores[run] == pytest.approx(json.loads(capsys.readouterr().out)["mean"], abs=1e-12)
    members = [load_run(run) for run in names]
    batches = [build_task(cfg, "test").sample(20, torch.Generator().manual_seed(TEST_SEED)) for cfg, _, _ in members]
    assert batches[0].support_x.shape[-1] == 14 and batches[1].support_x.shape[-1] == 16
    assert torch.equal(batches[0].query_y, batches[1].query_y)
    with torch.no_grad():
        logits = [learner.eval().eval_predictions(b)[learner.headline] for (_, learner, _), b in zip(members, batches)]
    summed = sum(x.log_softmax(-1) for x in logits)
    accuracy = (summed.argmax(-1) == batches[0].query_y).double().mean().item()
    assert scores["ensemble"] == pytest.approx(accuracy, abs=1e-6)
    with torch.no_grad():  # so the rows above show which images each member read: the 16 px one scores 14 px images otherwise
        assert not torch.allclose(members[1][1].eval_predictions(batches[0])[members[1][1].headline], logits[1])


def test_sources_that_draw_other_tasks_are_refused():
    def source(offset):
        def sample(n, generator):
            y = (torch.randint(3, (n, 3), generator=generator) + offset) % 3
            return TaskBatch(torch.zeros(n, 3, 1), y, torch.zeros(n, 3, 1), y)
        return SimpleNamespace(sample=sample, query_views=1)

    drawn = SameEpisodes([source(0), source(0)]).sample(4, torch.Generator().manual_seed(1))
    assert len(drawn) == 4 and torch.equal(drawn.parts[0].query_y, drawn.parts[1].query_y)
    assert torch.equal(drawn[1:3].to(dtype=torch.float64).query_y, drawn.parts[0].query_y[1:3])
    with pytest.raises(DataError, match="do not draw the same tasks"):
        SameEpisodes([source(0), source(1)]).sample(4, torch.Generator().manual_seed(1))
    with pytest.raises(ConfigError, match=r"\[1, 9\] views"):
        SameEpisodes([source(0), SimpleNamespace(sample=None, query_views=9)])


def test_an_ensemble_is_scored_in_its_members_smallest_chunks():
    def cfg(chunk):
        return SimpleNamespace(train=SimpleNamespace(eval_chunk=chunk))

    assert eval_chunk([cfg(10), cfg(2), cfg(0)]) == 2  # the 64 px member's 2, wherever it stands
    assert eval_chunk([cfg(0), cfg(5)]) == 5 and eval_chunk([cfg(0), cfg(0)]) == 0  # 0: the whole draw
