"""PNG figures of a run: the training curve, and for sinusoid runs the MAML paper's Figure 2."""

from __future__ import annotations

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


def plot_training_curve(run_dir: Path, path: Path | None = None) -> Path | None:
    """Meta-train loss and metric, and validation metric, against iteration -> training_curve.png."""
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    if not train:
        return None
    metric = "accuracy" if "accuracy" in train[0] else "mse"
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="meta-train query loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_metric.plot([r["iteration"] for r in train], [r[metric] for r in train], label=f"meta-train {metric}", alpha=0.7)
    if val:
        keys = [k for k in val[-1] if k not in ("iteration", "split")]
        for key in (keys[0], keys[-1]) if len(keys) > 1 else keys:
            ax_metric.plot([r["iteration"] for r in val], [r[key] for r in val], marker="o", label=f"validation, {key.replace('_', ' ')}")
    ax_metric.set_xlabel("iteration")
    ax_metric.set_ylabel(metric)
    if metric == "mse":
        ax_metric.set_yscale("log")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
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


def make_run_plots(run_dir: Path, learner, test_tasks, device="cpu", dtype=torch.float32) -> list[Path]:
    """Every figure that applies to this run; returns their paths."""
    paths = [plot_training_curve(run_dir)]
    if isinstance(test_tasks, Sinusoid):
        paths.append(plot_sine_fit(learner, test_tasks, Path(run_dir) / "sine_fit.png", device=device, dtype=dtype))
    return [p for p in paths if p is not None]
