"""Helpers of the learners' short runs on real Omniglot: the small official background sets.

Lake scheme: train = the 4 non-validation alphabets of images_background_small1 (114
characters x 4 rotations), val = its Early_Aramaic (22 characters, disjoint from train),
test = images_background_small2 (which shares Greek and Latin with train, so the assertions
use the final validation score).
"""

import json
from pathlib import Path


def SMALL_SETS(shared_data: Path, cache: Path) -> list[str]:  # noqa: N802 - a constant-like recipe
    """--set overrides that point an Omniglot preset at the small archives."""
    return [
        f"task.data_dir={shared_data}",
        f"task.cache_dir={cache}",
        "task.download=false",
        "task.split_scheme=lake",
        "task.train_on=train",
        'task.background_archives=["original/images_background_small1.zip"]',
        'task.evaluation_archives=["original/images_background_small2.zip"]',
    ]


def last_val(run_dir: Path, key: str) -> float:
    """The run's final validation score under ``key`` (spaces as underscores)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"][-1][key]
