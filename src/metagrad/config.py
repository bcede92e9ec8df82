"""Run configuration: presets (plain TOML files), `--set key=value` overrides, validation.

A config has four sections. ``task``, ``model`` and ``learner`` name a registered component
and carry its hyper-parameters (the component's own dataclass); ``train`` holds the
meta-training loop's settings (:class:`TrainConfig`). Every value is checked on the way in,
so a typo fails with a one-line :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import LEARNERS, MODELS, TASKS, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _field(default, metadata: dict):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(default):
    """A dataclass field that must be > 0 (each element, for a list)."""
    return _field(default, {"check": "positive"})


def nonnegative(default):
    """A dataclass field that must be >= 0."""
    return _field(default, {"check": "nonnegative"})


def choice(default, options: tuple):
    """A dataclass field whose value must be one of ``options``."""
    return _field(default, {"check": "choice", "options": options})


class HParams:
    """Base of every hyper-parameter dataclass: each value is type-checked (ints become floats
    where a float is declared), checked against its field's rule (``positive``, ``choice``, ...)
    and then against the class's own ``validate()`` when the object is built, from a preset or
    directly in Python: ``MAMLConfig(inner_lr=-1)`` raises ConfigError."""

    def __post_init__(self):
        fields = {f.name: f for f in dataclasses.fields(self)}
        hints = typing.get_type_hints(type(self))
        prefix = type(self).__name__
        for name, f in fields.items():
            key = f"{prefix}.{name}"
            value = _coerce(key, getattr(self, name), hints[name])
            _check(key, value, f.metadata)
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Rules that relate several fields; raise ConfigError. Default: none."""


@dataclass
class TrainConfig(HParams):
    """Settings of the shared meta-training loop (train.py)."""

    iterations: int = positive(2000)
    meta_batch: int = positive(25)
    optimizer: str = choice("adam", ("adam", "sgd"))  # outer optimizer
    lr: float = positive(1e-3)  # outer (meta) learning rate beta
    # linear: lr -> 0 at the end; cosine: lr -> lr_min along half a cosine over the run
    lr_schedule: str = choice("constant", ("constant", "step", "linear", "cosine"))
    lr_step: int = positive(2000)  # "step": multiply lr by lr_gamma every lr_step iterations
    lr_gamma: float = positive(0.5)
    lr_min: float = nonnegative(0.0)  # "cosine": the final lr
    grad_clip: float = nonnegative(0.0)  # 0 = off
    eval_every: int = nonnegative(500)  # validation every N iterations; 0 = only at the end
    eval_tasks: int = positive(100)  # validation tasks per evaluation
    test_tasks: int = positive(600)  # held-out tasks of the final report
    eval_batch: int = positive(50)  # tasks drawn at a time in evaluation (another value draws other tasks)
    eval_chunk: int = nonnegative(0)  # tasks per evaluation forward pass; 0 = a whole eval_batch (lower: less memory, same tasks)
    checkpoint_every: int = positive(500)
    log_every: int = positive(50)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = nonnegative(0)  # torch CPU threads; 0: chosen from the usable CPUs and the work (threads.py)
    dtype: str = choice("float32", ("float32", "float64"))
    task_chunk: int = nonnegative(0)  # tasks per backward pass; 0 = the whole meta-batch at once
    # torch.compile the learner's meta_loss with this mode; "reduce-overhead" adds CUDA graphs (performance.md)
    compile: str = choice("off", ("off", "default", "reduce-overhead"))


SECTIONS: dict[str, Registry] = {"task": TASKS, "model": MODELS, "learner": LEARNERS}


@dataclass
class Component:
    """A registered component chosen by name, with its validated hyper-parameters."""

    name: str
    hp: Any

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self.hp)}


@dataclass
class Config:
    task: Component
    model: Component
    learner: Component
    train: TrainConfig
    description: str = ""
    preset: str = ""

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "description": self.description,
            "task": self.task.to_dict(),
            "model": self.model.to_dict(),
            "learner": self.learner.to_dict(),
            "train": dataclasses.asdict(self.train),
        }

    def save(self, path: Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# --------------------------------------------------------------------------- values


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, X | None, list[X])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list like [40, 40], got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a component declared an unsupported type
        raise TypeError(f"unsupported config type {tp} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _parse_literal(text: str) -> Any:
    """Parse a --set value as a TOML literal (1e-3, true, [40, 40], "x"); else keep the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check(key: str, value: Any, meta) -> None:
    kind = meta.get("check")
    values = value if isinstance(value, list) else [value]
    if kind == "positive" and any(v <= 0 for v in values):
        raise ConfigError(f"{key} must be > 0, got {value!r}")
    if kind == "nonnegative" and any(v < 0 for v in values):
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if kind == "choice" and value not in meta["options"]:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, meta['options']))}")


def build_dataclass(cls: type, values: dict, prefix: str):
    """Instantiate ``cls`` from ``values``, type-checking each key; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        allowed = ", ".join(fields) or "(none)"
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; allowed keys of {prefix}: {allowed}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}"
        kwargs[name] = _coerce(key, value, hints[name])
        _check(key, kwargs[name], fields[name].metadata)
    return cls(**kwargs)  # HParams.__post_init__ runs the class's own validate()


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    root = resources.files("metagrad") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_preset(name: str) -> dict:
    path = resources.files("metagrad") / "presets" / f"{name}.toml"
    if not path.is_file():
        names = preset_names()
        close = [n for n in names if len(name) >= 3 and name in n]
        if not 1 <= len(close) <= 8:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.75) or close
        if len(close) == 1:
            listed = f"did you mean {close[0]}?"
        elif 1 < len(close) <= 8:
            listed = f"did you mean one of {', '.join(close)}?"
        else:
            listed = f"allowed: {', '.join(names)}"
        raise ConfigError(f"unknown preset {name!r}; {listed} (see `metagrad presets`)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {name!r} is not valid TOML: {e}") from None


#: in a raw section: the keys that came with a component the section has since renamed; resolve()
#: drops those the new component does not know (so reading presets imports no component)
FORMER_KEYS = "__keys_of_the_replaced_component__"


def _renamed(section: str, values: dict, before: dict, explicit) -> dict:
    """A section's ``values`` after its component may have been renamed from ``before``'s: when the
    name changed, the keys that are neither the name nor in ``explicit`` (set together with the
    new name) are marked as the old component's (FORMER_KEYS). So ``--set model.name=cnn`` on a
    Conv-4 preset keeps ``channels`` and drops ``downsample`` when the config is resolved."""
    if section not in SECTIONS or "name" not in values or values["name"] == before.get("name"):
        return values
    former = set(values.get(FORMER_KEYS, [])) | (set(values) - {"name", FORMER_KEYS})
    return {**values, FORMER_KEYS: sorted(former - set(explicit))}


def merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: sections are merged key by key (a section whose component the child
    renames keeps only the base's keys that the new component knows), other values replaced."""
    out = json.loads(json.dumps(base))  # deep copy
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _renamed(key, {**out[key], **value}, out[key], value)
        else:
            out[key] = value
    return out


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset as a raw config dict. A preset may name a ``base`` preset: it then states only
    what differs, and its sections are merged over the base's key by key (:func:`merge`)."""
    if name in _seen:
        raise ConfigError(f"preset {name!r} inherits from itself: {' -> '.join((*_seen, name))}")
    data = _read_preset(name)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"preset {name!r}: base must be a preset name, got {base!r}")
        data = merge(load_preset(base, (*_seen, name)), data)
    data["preset"] = name
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw (unvalidated) config dict; a new component name
    drops the keys of the old one that the new one does not know (:func:`_renamed`)."""
    before = raw
    raw = json.loads(json.dumps(raw))  # deep copy
    explicit: dict[str, set[str]] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.iterations=500")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in (*SECTIONS, "train"):
            raise ConfigError(
                f"--set {key!r}: expected section.key with section one of task, model, learner, train"
            )
        section, name = parts
        raw.setdefault(section, {})[name] = _parse_literal(value.strip())
        explicit.setdefault(section, set()).add(name)
    for section, keys in explicit.items():
        raw[section] = _renamed(section, raw[section], before.get(section, {}), keys)
    return raw


def resolve(raw: dict) -> Config:
    """Validate a raw config dict (from a preset, overrides or a saved run) into a :class:`Config`."""
    unknown = sorted(set(raw) - {"task", "model", "learner", "train", "description", "preset"})
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed: task, model, learner, train")
    parts = {}
    for section, registry in SECTIONS.items():
        values = dict(raw.get(section, {}))
        if "name" not in values:
            raise ConfigError(f"{section}.name is missing; allowed: {', '.join(registry.names())}")
        name = str(values.pop("name"))
        entry = registry.get(name)
        known = {f.name for f in dataclasses.fields(entry.hparams)}
        for key in values.pop(FORMER_KEYS, []):
            if key not in known:
                values.pop(key, None)
        parts[section] = Component(name, build_dataclass(entry.hparams, values, section))
    train = build_dataclass(TrainConfig, dict(raw.get("train", {})), "train")
    return Config(
        train=train, description=str(raw.get("description", "")), preset=str(raw.get("preset", "")), **parts
    )


def reads_data_dir(cfg: Config) -> bool:
    """Whether ``cfg``'s task reads files under a data folder (its config has ``data_dir``)."""
    return "data_dir" in {f.name for f in dataclasses.fields(cfg.task.hp)}


def with_data_dir(cfg: Config, data_dir: str) -> Config:
    """``cfg`` with its task's ``data_dir`` set (ConfigError for a task without one)."""
    if not reads_data_dir(cfg):
        raise ConfigError(f"--data-dir: the {cfg.task.name} task reads no data folder (it has no task.data_dir)")
    raw = cfg.to_dict()
    raw["task"]["data_dir"] = str(data_dir)
    return resolve(raw)


def load_config(preset: str, overrides: list[str] = ()) -> Config:
    return resolve(apply_overrides(load_preset(preset), list(overrides)))


def changes_from_preset(cfg: Config) -> list[str]:
    """``section.key=value`` for every setting of ``cfg`` that differs from its preset as shipped
    ([] when ``cfg`` names no known preset), e.g. ``["task.image_size=32"]``. A setting the preset
    leaves out is compared with its default (the preset need not be complete: folder-quick has no
    task.path)."""
    if cfg.preset not in preset_names():
        return []
    shipped, ours, changes = load_preset(cfg.preset), cfg.to_dict(), []
    for section in ("task", "model", "learner", "train"):
        hp = cfg.train if section == "train" else getattr(cfg, section).hp
        defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for f in dataclasses.fields(hp)}
        for key, value in ours[section].items():
            before = shipped.get(section, {}).get(key, defaults.get(key))
            if json.loads(json.dumps(before)) != json.loads(json.dumps(value)):  # tuples as lists, as the TOML gives them
                changes.append(f"{section}.{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}")
    return changes
