"""Held-out evaluation: episodes -> mean metric with a 95% confidence interval."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from .distributed import DistContext, all_gather_object
from .learners.base import MetaLearner, metric_name, task_metric

#: off a terminal, an evaluation shorter than this many seconds prints no progress lines
QUIET_S = 5.0


@dataclass
class Estimate:
    """mean ± ci95 of a per-episode metric (ci95 = 1.96 · sample std / sqrt(episodes))."""

    metric: str
    mean: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci95(values: Tensor, metric: str) -> Estimate:
    """values: [n] per-episode metrics."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return Estimate(metric, v.mean().item(), 1.96 * std / math.sqrt(n), n)


def vote(logits: Tensor, views: int) -> Tensor:
    """logits [B, V*Q, N] (V views of Q queries, view-major) -> log-probabilities summed over the views [B, Q, N]."""
    return logits if views == 1 else logits.unflatten(1, (views, -1)).log_softmax(-1).sum(1)


def evaluate(
    learner: MetaLearner,
    source,
    episodes: int = 600,
    seed: int = 12345,
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    ctx: DistContext = DistContext(),
    progress: bool = False,
    chunk: int = 0,
) -> dict[str, Estimate]:
    """Adapt to ``episodes`` held-out tasks drawn from a fixed-seed generator and score the queries.

    Returns one Estimate per key of ``learner.eval_predictions`` (e.g. "0 steps", "1 step", ...);
    a value that is a (predictions, targets) pair is scored against its own targets.
    A source with ``query_views = V > 1`` (e.g. ``task.eval_augment="shifts_both"``) gives every
    query in V views, [B, V*Q] laid out view by view; each query's log-probabilities are summed
    over its views (:func:`vote`) and scored once.
    Tasks are drawn ``batch_size`` at a time and scored ``chunk`` at a time (0: a whole draw), so
    ``chunk`` bounds memory without changing which tasks are drawn.
    Under torch.distributed (``ctx``: W ranks) rank r scores episodes r, r+W, r+2W, ... (every rank
    draws the same tasks) and the per-episode metrics are gathered back into episode order, so
    every rank returns the estimates a single process would. ``progress`` (rank 0 only): a bar on
    stderr when it is a terminal; elsewhere (a log file) a line at every tenth of the episodes once
    the evaluation has run ``QUIET_S`` seconds, so a quick one leaves no lines.
    """
    views = getattr(source, "query_views", 1)
    generator = torch.Generator().manual_seed(seed)
    per_key: dict[str, list[Tensor]] = {}
    was_training = learner.training
    learner.eval()
    done = 0
    bar = tqdm(total=episodes, unit="task", desc="evaluating", leave=False,
               disable=None if progress and ctx.is_main else True)  # None: off when not a terminal
    lines_every = math.ceil(episodes / 10) if progress and ctx.is_main and bar.disable else 0
    t0 = time.time()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        while done < episodes:
            n = min(batch_size, episodes - done)
            batch = source.sample(n, generator)
            keep = [i for i in range(n) if (done + i) % ctx.world == ctx.rank]
            torch.manual_seed(seed * 1_000_003 + done)  # a learner's own randomness (Reptile's mini-batches): fixed too
            step = chunk or len(keep) or 1
            for part in (keep[i : i + step] for i in range(0, len(keep), step)):
                tasks = batch[torch.tensor(part)].to(device, dtype) if len(part) < n else batch.to(device, dtype)
                for key, out in learner.eval_predictions(tasks).items():
                    pred, target = out if isinstance(out, tuple) else (vote(out, views), tasks.query_y[:, : tasks.query_y.shape[1] // views])
                    per_key.setdefault(key, []).append(task_metric(learner.kind, pred, target).cpu())
            done += n
            bar.update(n)
            if lines_every and (done // lines_every > (done - n) // lines_every or done == episodes):
                elapsed = time.time() - t0
                if elapsed >= QUIET_S:
                    print(f"  evaluating: {done}/{episodes} tasks ({elapsed:.0f} s)", file=sys.stderr, flush=True)
    bar.close()
    learner.train(was_training)
    name = metric_name(learner.kind)
    local = {key: torch.cat(vals) for key, vals in per_key.items()}
    parts = all_gather_object(local, ctx)
    merged = {}
    for key in parts[0]:
        merged[key] = torch.empty(episodes, dtype=parts[0][key].dtype)
        for rank, part in enumerate(parts):
            merged[key][rank :: ctx.world] = part[key]
    return {key: mean_ci95(values, name) for key, values in merged.items()}
