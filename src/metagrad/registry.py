"""Name -> (factory, hyper-parameter dataclass) tables for tasks, models and learners.

A component registers itself with a decorator in its own module; configs refer to it by name.
The component packages are imported when a table is first read, not before (start-up time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    hparams: type
    summary: str


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, hparams: type):
        def deco(factory):
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, hparams, doc[0] if doc else "")
            return factory

        return deco

    def get(self, name: str) -> Entry:
        _import_components()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        _import_components()
        return sorted(self._entries)


def _import_components() -> None:
    """Import the packages whose modules register every shipped component."""
    from . import learners, models, tasks  # noqa: F401


TASKS = Registry("task")
MODELS = Registry("model")
LEARNERS = Registry("learner")
