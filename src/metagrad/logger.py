"""Run logs: metrics as JSON lines (metrics.jsonl) and, when tensorboard is installed, TensorBoard event files (tb/)."""

from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write_text

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return rows


class MetricLogger:
    """Appends ``{"iteration", "split", ...values}`` rows; on resume drops rows past ``start``."""

    def __init__(self, run_dir: Path, start: int = 0, tensorboard: bool = True, log=print):
        self.path = Path(run_dir) / METRICS_NAME
        kept = [r for r in read_metrics(run_dir) if r["iteration"] <= start]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an extra: pip install 'metagrad[tensorboard]'
                log("  TensorBoard logs: off (pip install 'metagrad[tensorboard]' to write tb/); "
                    f"every value is in {METRICS_NAME}")
            else:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start if start else None)

    def log(self, iteration: int, split: str, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"iteration": iteration, "split": split, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{split}/{key}", value, iteration)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
