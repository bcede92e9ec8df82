"""PNG figures of a run: the training curve; for sinusoid runs the MAML paper's Figure 2; for
learners that report accuracy by presentation ("instance k" keys, e.g. MANN) that curve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write  # noqa: E402
from .logger import read_metrics  # noqa: E402
from .tasks.batch import TaskBatch  # noqa: E402
from .tasks.sinusoid import Sinusoid  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def validation_label(run_dir: Path) -> str:
    """"validation", flagged when the run's config trains on its validation classes too
    (task.train_on = "trainval", the MAML paper's Omniglot protocol): then it is not held out."""
    try:
        task = json.loads((Path(run_dir) / "config.json").read_text())["task"]
    except (OSError, ValueError, KeyError):
        return "validation"
    return "validation (classes also trained on)" if task.get("train_on") == "trainval" else "validation"


def shown_settings(keys: list[str], headline: str | None) -> list[str]:
    """The evaluation settings a curve shows: all of up to four, else the first two, the
    headline and the last (e.g. MAML's 0 / 1 / 10 steps; MANN's adapted / instance 1 / 10)."""
    if len(keys) <= 4:
        return keys
    return list(dict.fromkeys(k for k in (keys[0], keys[1], headline, keys[-1]) if k in keys))


def _log_if_wide(ax, values: list[float]) -> None:
    """A log y-axis when positive values span more than a factor of 10."""
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")


def plot_training_curve(run_dir: Path, path: Path | None = None) -> Path | None:
    """Meta-train loss (left); validation results per setting, and the meta-train metric when it
    is not the loss itself (classification), against iteration (right) -> training_curve.png."""
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    if not train:
        return None
    report = Path(run_dir) / "report.json"
    headline = json.loads(report.read_text()).get("headline") if report.is_file() else None
    metric = "accuracy" if "accuracy" in train[0] else "mse"
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    its, losses = [r["iteration"] for r in train], [r["loss"] for r in train]
    ax_loss.plot(its, losses, label="meta-train query loss")
    ax_loss.set_ylabel("loss")
    _log_if_wide(ax_loss, losses)
    values = []
    if any(r[metric] != r["loss"] for r in train):  # regression: the metric is the loss, plotted once
        ax_metric.plot(its, [r[metric] for r in train], label=f"meta-train {metric}", alpha=0.7)
        values += [r[metric] for r in train]
    if val:
        name = validation_label(run_dir)
        keys = [k for k in val[-1] if k not in ("iteration", "split")]
        for key in shown_settings(keys, headline and headline.replace(" ", "_")):
            ys = [r[key] for r in val if key in r]
            ax_metric.plot([r["iteration"] for r in val if key in r], ys, marker="o", label=f"{name}, {key.replace('_', ' ')}")
            values += ys
    ax_metric.set_ylabel(metric)
    if metric == "mse":
        _log_if_wide(ax_metric, values)
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:  # below the axes, where it covers no curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{Path(run_dir).name}: meta-training")
    return _save(fig, Path(path or Path(run_dir) / "training_curve.png"))


@torch.no_grad()
def plot_sine_fit(learner, task: Sinusoid, path: Path, seed: int = 7, device="cpu", dtype=torch.float32) -> Path:
    """A held-out sine task: its K support points, the true curve, and the learner's prediction
    before adaptation and after each evaluation setting (for MAML: 0, 1 and eval_steps steps)."""
    g = torch.Generator().manual_seed(seed)
    amp, phase = task.sample_params(1, g)
    c = task.cfg
    sx = c.x_min + (c.x_max - c.x_min) * torch.rand(1, c.shots, 1, generator=g, dtype=torch.float64)
    grid = torch.linspace(c.x_min, c.x_max, 300, dtype=torch.float64).view(1, -1, 1)
    batch = TaskBatch(sx, task.target(sx, amp, phase), grid, task.target(grid, amp, phase)).to(device, dtype)
    preds = learner.eval_predictions(batch)
    keys = list(preds)
    shown = [keys[0], keys[1], keys[-1]] if len(keys) > 2 else keys
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = grid.view(-1).numpy()
    ax.plot(x, batch.query_y.view(-1).cpu().numpy(), color="red", lw=2, label="ground truth")
    styles = [":", "--", "-"]
    for key, style in zip(shown, styles[-len(shown):]):
        mse = (preds[key] - batch.query_y).square().mean().item()
        ax.plot(x, preds[key].view(-1).float().cpu().numpy(), style, color="green", label=f"{key} (MSE {mse:.3f})")
    ax.scatter(sx.view(-1).numpy(), batch.support_y.view(-1).cpu().numpy(), marker="^", s=60, color="purple", zorder=3, label=f"{c.shots} support points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"held-out task: A={amp.item():.2f}, phase={phase.item():.2f}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_instance_curve(run_dir: Path, path: Path | None = None) -> Path | None:
    """Test accuracy (± 95% CI) against the instance number k of the "instance k" keys of the run's
    report.json -> instance_accuracy.png; None when the report has no such keys."""
    report = Path(run_dir) / "report.json"
    if not report.is_file():
        return None
    test = json.loads(report.read_text())["test"]
    points = sorted((int(m.group(1)), est) for key, est in test.items() if (m := re.fullmatch(r"instance (\d+)", key)))
    if not points:
        return None
    ks = [k for k, _ in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ks, [100 * e["mean"] for _, e in points], yerr=[100 * e["ci95"] for _, e in points], marker="o", capsize=3)
    for k, e in points:
        ax.annotate(f"{100 * e['mean']:.1f}", (k, 100 * e["mean"]), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xticks(ks)
    ax.set_xlabel("instance (k-th presentation of a class in the episode)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(run_dir).name}: accuracy by instance ({points[0][1]['episodes']} test episodes)")
    return _save(fig, Path(path or Path(run_dir) / "instance_accuracy.png"))


def make_run_plots(run_dir: Path, learner, test_tasks, device="cpu", dtype=torch.float32) -> list[Path]:
    """Every figure that applies to this run; returns their paths."""
    paths = [plot_training_curve(run_dir), plot_instance_curve(run_dir)]
    if isinstance(test_tasks, Sinusoid):
        paths.append(plot_sine_fit(learner, test_tasks, Path(run_dir) / "sine_fit.png", device=device, dtype=dtype))
    return [p for p in paths if p is not None]


def plot_contact_sheet(images: torch.Tensor, predicted: list[str], probability: list[float], true: list[str | None],
                       path: Path, columns: int = 8) -> Path:
    """A grid of query images (uint8 [M, C, H, W]), each titled with its predicted class and
    probability: green when it matches the true class, red with the true class beneath when it
    does not, black when the true class is unknown. A line above the grid explains the colours."""
    m = len(images)
    rows = (m + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 2.0 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, pred, prob, truth in zip(axes.flat, images, predicted, probability, true):
        pixels = img.permute(1, 2, 0).numpy()
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
        title, colour = f"{pred} {prob:.2f}", "black"
        if truth is not None:
            colour = "green" if pred == truth else "red"
            title += "" if pred == truth else f"\ntrue: {truth}"
        ax.set_title(title, fontsize=7, color=colour)
    known = [t for t in true if t is not None]
    right = sum(p == t for p, t in zip(predicted, true) if t is not None)
    legend = "predicted class and its probability"
    if known:
        legend += f"; green: right, red: wrong (true class beneath); {right}/{len(known)} right"
    fig.suptitle(legend, fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))
