"""Checkpoints: atomic writes, and loads that never execute code from the file."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp))


def find_checkpoint(path: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file; CheckpointError if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run directory or a .pt file written by metagrad train)")
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with ``torch.load(weights_only=True)``: tensors and plain containers only, no code."""
    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or hostile file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable metagrad checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "config" not in state:
        raise CheckpointError(f"{path} is not a metagrad checkpoint (format {FORMAT_VERSION} expected)")
    return state
