"""PNG figures of a run, drawn from what any task and learner expose (no names of either):

- training_curve.png: meta-train loss, validation results per evaluation setting;
- settings_curve.png: the test metric against the number in numbered settings ("1 step" ..
  "10 steps", "instance 1" .. "instance 10"), when a learner reports three or more;
- fit.png: for a task that offers ``curve_task(generator) -> (TaskBatch, title)`` (1-D
  regression, e.g. the MAML paper's Figure 2 for sinusoids), the support points, the true
  curve and the learner's predictions per setting.

A task config whose ``validation_trained_on`` is true (its "val" classes are trained on too)
gets its validation curves labelled so."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write  # noqa: E402
from .logger import read_metrics  # noqa: E402
from .tasks.batch import TaskBatch  # noqa: E402


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def validation_label(trained_on: bool) -> str:
    """"validation", flagged when the validation classes are trained on too (the MAML paper's
    Omniglot protocol trains on train + val): then the curve is not of held-out classes."""
    return "validation (classes also trained on)" if trained_on else "validation"


def shown_settings(keys: list[str], headline: str | None) -> list[str]:
    """The evaluation settings a curve shows: all of up to four, else the first two, the
    headline and the last (e.g. MAML's 0 / 1 / 10 steps; MANN's adapted / instance 1 / 10)."""
    if len(keys) <= 4:
        return keys
    return list(dict.fromkeys(k for k in (keys[0], keys[1], headline, keys[-1]) if k in keys))


def iteration_tick(x: float, _pos=None) -> str:
    """Short iteration labels that cannot run into each other: 500, 2.5k, 20k, 1.2M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.3g}{suffix}"
    return f"{x:.0f}"


def _log_if_wide(ax, values: list[float]) -> None:
    """A log y-axis when positive values span more than a factor of 10."""
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")


def plot_training_curve(run_dir: Path, path: Path | None = None, validation_trained_on: bool = False) -> Path | None:
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
        name = validation_label(validation_trained_on)
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
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(iteration_tick))
        ax.grid(alpha=0.3)
        if ax.lines:  # below the axes, where it covers no curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{Path(run_dir).name}: meta-training")
    return _save(fig, Path(path or Path(run_dir) / "training_curve.png"))


@torch.no_grad()
def plot_fit(learner, batch: TaskBatch, title: str, path: Path, device="cpu", dtype=torch.float32) -> Path:
    """A 1-D regression task (B = 1; query = a sorted grid): its support points, the true curve
    and the learner's prediction per evaluation setting (those of :func:`shown_settings`)."""
    batch = batch.to(device, dtype)
    preds = learner.eval_predictions(batch)
    keys = list(preds)
    shown = shown_settings(keys, getattr(learner, "headline", None))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = batch.query_x.view(-1).float().cpu().numpy()
    ax.plot(x, batch.query_y.view(-1).float().cpu().numpy(), color="red", lw=2, label="ground truth")
    styles = [":", "-.", "--", "-"]
    for key, style in zip(shown, styles[-len(shown):]):
        mse = (preds[key] - batch.query_y).square().mean().item()
        ax.plot(x, preds[key].view(-1).float().cpu().numpy(), style, color="green", label=f"{key} (MSE {mse:.3f})")
    ax.scatter(batch.support_x.view(-1).float().cpu().numpy(), batch.support_y.view(-1).float().cpu().numpy(),
               marker="^", s=60, color="purple", zorder=3, label=f"{batch.support_x.shape[1]} support points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def numbered_settings(test: dict) -> tuple[str, list[tuple[int, dict]]] | None:
    """The largest family of three or more settings that differ only in a number ("1 step",
    "2 steps", ...; "instance 1", ...), as (its name, [(number, estimate)] sorted); else None."""
    families: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for key, est in test.items():
        if m := re.fullmatch(r"(\D*?)\s*(\d+)\s*(\D*)", key):
            families.setdefault((m.group(1), m.group(3).rstrip("s")), []).append((int(m.group(2)), est))
    if not families:
        return None
    (prefix, suffix), points = max(families.items(), key=lambda kv: len(kv[1]))
    if len(points) < 3:
        return None
    return (prefix or suffix + "s").strip(), sorted(points, key=lambda p: p[0])


def plot_settings_curve(run_dir: Path, path: Path | None = None) -> Path | None:
    """The test metric (± 95% CI) against the number of :func:`numbered_settings` in the run's
    report.json -> settings_curve.png; None when the report has no such family."""
    report = Path(run_dir) / "report.json"
    if not report.is_file():
        return None
    found = numbered_settings(json.loads(report.read_text())["test"])
    if found is None:
        return None
    name, points = found
    metric = points[0][1]["metric"]
    scale = 100 if metric == "accuracy" else 1
    ks = [k for k, _ in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ks, [scale * e["mean"] for _, e in points], yerr=[scale * e["ci95"] for _, e in points], marker="o", capsize=3)
    for k, e in points:
        ax.annotate(f"{scale * e['mean']:.3g}", (k, scale * e["mean"]), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    ax.set_xticks(ks)
    ax.set_xlabel(name)
    ax.set_ylabel("accuracy (%)" if metric == "accuracy" else metric)
    if metric == "accuracy":
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(run_dir).name}: test {metric} by {name} ({points[0][1]['episodes']} tasks)")
    return _save(fig, Path(path or Path(run_dir) / "settings_curve.png"))


def make_run_plots(run_dir: Path, learner, test_tasks, device="cpu", dtype=torch.float32, task_config=None,
                   seed: int = 7) -> list[Path]:
    """Every figure that applies to this run (module doc), ``task_config`` its task's
    hyper-parameters; returns the figures' paths."""
    trained_on = getattr(task_config, "validation_trained_on", False)
    paths = [plot_training_curve(run_dir, validation_trained_on=trained_on), plot_settings_curve(run_dir)]
    if hasattr(test_tasks, "curve_task"):
        batch, title = test_tasks.curve_task(torch.Generator().manual_seed(seed))
        paths.append(plot_fit(learner, batch, title, Path(run_dir) / "fit.png", device, dtype))
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


def plot_loss_curves(curves: dict[str, torch.Tensor], path: Path, title: str, horizon: int | None = None) -> Path:
    """Mean training loss against step, ± a 95 % confidence interval of the mean over tasks, one
    line per optimizer (curves: name -> [steps + 1, tasks]; a diverged task's inf entries are left
    out of the mean and counted in the legend); a dotted line at ``horizon`` (the trained length)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lowest = math.inf
    for name, c in curves.items():
        c = c.double()
        finite = torch.isfinite(c)
        n = finite.sum(1).clamp_min(1)
        mean = torch.where(finite.any(1), torch.where(finite, c, 0.0).sum(1) / n, torch.nan)  # nan: every task diverged
        var = torch.where(finite, (c - mean[:, None]).square(), 0.0).sum(1) / (n - 1).clamp_min(1)
        half = 1.96 * (var / n).sqrt()
        steps = torch.arange(len(c))
        diverged = int((~finite[-1]).sum())
        label = name + (f" ({diverged} of {c.shape[1]} diverged)" if diverged else "")
        (line,) = ax.plot(steps, mean, label=label, lw=1.5)
        ax.fill_between(steps, (mean - half).clamp_min(1e-12), mean + half, color=line.get_color(), alpha=0.2, lw=0)
        lowest = min(lowest, mean.nan_to_num(math.inf).min().item())
    if horizon is not None:
        ax.axvline(horizon, color="gray", ls=":", lw=1)
        ax.text(horizon, 0.98, " trained horizon", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="gray")
    ax.set_yscale("log")
    if 0 < lowest < math.inf:  # a band whose mean - CI is below 0 would stretch the log axis down to 1e-12
        ax.set_ylim(bottom=lowest / 4)
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("training loss (mean over tasks, 95 % CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
