"""Checkpoints: atomic writes, and loads that never execute code from the file."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
#: what metagrad train writes into every checkpoint, and a resume needs
TRAINING_KEYS = ("iteration", "config", "learner", "optimizer", "scheduler", "task_spec")
#: what a trained model needs (eval, adapt, plot)
MODEL_KEYS = ("config", "learner", "task_spec")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically; if the
    write fails (a full disk), CheckpointError, and the file already at ``path`` is untouched."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        why = "the disk is full" if free is not None and free < 64 * 2**20 else _first_line(e)
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was saved"
        raise CheckpointError(f"could not write {path}: {why}; {kept}") from None


def find_checkpoint(path: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file; CheckpointError if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run directory or a .pt file written by metagrad train)")
    return path


def load_checkpoint(path: Path, map_location="cpu", require: tuple[str, ...] = ("config",)) -> dict:
    """Load with ``torch.load(weights_only=True)``: tensors and plain containers only, no code;
    CheckpointError (one line) if a key of ``require`` is missing."""
    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or hostile file
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
            raise CheckpointError(f"refused {path}: it holds Python objects that could run code when loaded; "
                                  "metagrad loads only tensors and plain data (this is not a checkpoint "
                                  "written by metagrad train, or it was altered)") from None
        raise CheckpointError(f"{path} is not a readable metagrad checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a metagrad checkpoint (format {FORMAT_VERSION} expected)")
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {', '.join(map(repr, missing))} "
                              "(every checkpoint written by metagrad train has them)")
    return state


def load_weights(module: torch.nn.Module, weights: dict, path: Path, what: str = "the configured model") -> None:
    """``module.load_state_dict(weights)``; CheckpointError (one line) if they do not fit."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"the weights in {path} do not fit {what}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
