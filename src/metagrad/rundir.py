"""A run directory in use: the lock that keeps a second ``metagrad train`` out of it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not locked
    fcntl = None

LOCK_NAME = ".lock"


def writable_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` if needed; RunDirError (one line) if it cannot be created or written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write the run directory {run_dir}: {e.strerror or e}; choose another --out") from None
    return run_dir


@contextmanager
def locked(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` (a ``flock`` on ``run_dir/.lock``, which records the
    holder's pid) for the body; RunDirError at once if another process holds it. The operating
    system drops the lock when its process ends, however it ends (kill -9 included), so a killed
    run never leaves its directory locked."""
    writable_dir(run_dir)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise RunDirError(f"{run_dir} is in use by another metagrad train (pid {holder}); "
                                  "wait for it to finish, or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock
