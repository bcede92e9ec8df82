"""What the figures show: which series, which labels, where the legend goes."""

import json

import pytest
import torch

from metagrad import plots


def write_run(run, kind):
    """A run directory with metrics.jsonl and report.json as the loop writes them."""
    run.mkdir()
    metric = "mse" if kind == "regression" else "accuracy"
    settings = ["0_steps", "1_step", "10_steps"] if kind == "regression" else ["adapted", *[f"instance_{k}" for k in (1, 2, 3, 5, 10)]]
    rows = []
    for it in (50, 100, 150):
        loss = 3.0 / it
        rows.append({"iteration": it, "split": "train", "loss": loss, metric: loss if kind == "regression" else 0.5})
        rows.append({"iteration": it, "split": "val", **{s: 1.0 / it for s in settings}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    headline = "10 steps" if kind == "regression" else "adapted"
    (run / "report.json").write_text(json.dumps({"headline": headline, "test": {}}))


@pytest.fixture
def figures(monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or path)
    return saved


def labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def test_regression_curve_plots_the_loss_once_and_every_setting(tmp_path, figures):
    write_run(tmp_path / "sine", "regression")
    plots.plot_training_curve(tmp_path / "sine")
    left, right = figures[0].axes
    assert labels(left) == ["meta-train query loss"]
    # no meta-train mse (it is the loss); the 1-step setting of the MAML paper's comparison is there
    assert labels(right) == ["validation, 0 steps", "validation, 1 step", "validation, 10 steps"]
    for ax in (left, right):  # the legend sits below the axes, over no curve
        legend = ax.get_legend()
        assert legend.get_bbox_to_anchor().y1 < ax.get_window_extent().y0 + 1e-9


def test_classification_curve_keeps_the_train_metric_and_picks_settings(tmp_path, figures):
    write_run(tmp_path / "mann", "classification")
    plots.plot_training_curve(tmp_path / "mann")
    right = figures[0].axes[1]
    assert labels(right) == ["meta-train accuracy", "validation, adapted", "validation, instance 1", "validation, instance 10"]


def test_contact_sheet_titles_name_the_true_class_of_mistakes(tmp_path, figures):
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    plots.plot_contact_sheet(images, ["a", "b", "a"], [0.9, 0.6, 0.5], ["a", "a", None], tmp_path / "s.png")
    fig = figures[0]
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes[:3]]
    assert titles == [("a 0.90", "green"), ("b 0.60\ntrue: a", "red"), ("a 0.50", "black")]
    assert "1/2 right" in fig._suptitle.get_text() and "red: wrong" in fig._suptitle.get_text()


def test_numbered_settings_are_found_by_shape_not_by_learner():
    est = lambda m: {"metric": "mse", "mean": m, "ci95": 0.1, "episodes": 5}  # noqa: E731
    steps = {"0 steps": est(3), "1 step": est(2), "10 steps": est(1), "adapted": est(1)}
    name, points = plots.numbered_settings(steps)
    assert name == "steps" and [k for k, _ in points] == [0, 1, 10]
    name, points = plots.numbered_settings({"adapted": est(1), **{f"instance {k}": est(k) for k in (10, 1, 2)}})
    assert name == "instance" and [k for k, _ in points] == [1, 2, 10]
    assert plots.numbered_settings({"adapted": est(1), "slow weights only": est(2)}) is None
    assert plots.numbered_settings({"0 steps": est(1), "5 steps": est(2)}) is None  # two are not a curve


def test_any_task_offering_a_curve_gets_a_fit_figure(tmp_path, figures):
    from metagrad.tasks import TaskBatch

    class Line:  # not a sinusoid: y = 2x
        def curve_task(self, generator):
            x = torch.linspace(-1, 1, 20, dtype=torch.float64).view(1, -1, 1)
            return TaskBatch(x[:, ::5], 2 * x[:, ::5], x, 2 * x), "a line"

    class Zero:
        def eval_predictions(self, batch):
            return {"0 steps": torch.zeros_like(batch.query_y), "1 step": batch.query_y}

    write_run(tmp_path / "line", "regression")
    paths = plots.make_run_plots(tmp_path / "line", Zero(), Line(), dtype=torch.float64)
    assert [p.name for p in paths] == ["training_curve.png", "fit.png"]  # the report has no numbered settings
    ax = figures[-1].axes[0]
    assert ax.get_title() == "a line" and labels(ax)[:3] == ["ground truth", "0 steps (MSE 1.474)", "1 step (MSE 0.000)"]


def test_long_runs_get_iteration_ticks_that_do_not_run_into_each_other(tmp_path, figures):
    run = tmp_path / "long"
    run.mkdir()
    rows = [{"iteration": it, "split": "train", "loss": 1.0 / it, "accuracy": 0.5} for it in range(100, 200_001, 100)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plots.plot_training_curve(run)
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        shown = [t for t in ax.get_xticklabels() if t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
        assert len(boxes) >= 3 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in shown]
    assert [plots.iteration_tick(x) for x in (0, 500, 2500, 20000, 1_250_000)] == ["0", "500", "2.5k", "20k", "1.25M"]
