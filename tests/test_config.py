"""Configs: hyper-parameter rules hold however a config object is built, and presets inherit."""

import json
import math

import pytest

from metagrad.cli import main
from metagrad.config import load_config, load_preset, merge, preset_names
from metagrad.errors import ConfigError
from metagrad.learners import MAMLConfig, ReptileConfig
from metagrad.tasks import SinusoidConfig


@pytest.mark.parametrize("kwargs,needle", [
    (dict(inner_lr=-1), "MAMLConfig.inner_lr must be > 0"),
    (dict(inner_lr=math.nan), "MAMLConfig.inner_lr must be a finite number"),
    (dict(inner_lr=math.inf), "MAMLConfig.inner_lr must be a finite number"),
    (dict(executor="gpu"), "allowed: vmap, loop, auto"),
    (dict(inner_steps=1.5), "MAMLConfig.inner_steps: expected int"),
])
def test_python_constructed_hyper_parameters_are_checked(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        MAMLConfig(**kwargs)


def test_values_are_coerced_and_class_rules_run_in_python_too():
    assert MAMLConfig(inner_lr=1).inner_lr == 1.0 and isinstance(MAMLConfig(inner_lr=1).inner_lr, float)
    with pytest.raises(ConfigError, match="adam_beta1 must be < 1"):
        ReptileConfig(adam_beta1=1.0)
    with pytest.raises(ConfigError, match="amplitude_min must be < task.amplitude_max"):
        SinusoidConfig(amplitude_min=3.0, amplitude_max=2.0)


@pytest.mark.parametrize("setting", ["train.lr=nan", "train.lr=inf", "learner.inner_lr=nan", "learner.inner_lr=inf",
                                     "train.grad_clip=nan", "task.amplitude_max=inf", "task.x_min=-inf"])
def test_non_finite_values_are_refused_at_parse_time(setting):
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config("sine-quick", [setting])


def test_a_preset_states_only_what_differs_from_its_base():
    raw = load_preset("fomaml-omniglot-5w1s")
    base = load_preset("maml-omniglot-5w1s")
    assert raw["learner"] == {**base["learner"], "first_order": True}
    assert raw["task"] == base["task"] and raw["train"] == base["train"]
    assert "base" not in raw and raw["preset"] == "fomaml-omniglot-5w1s"
    # two levels: 20w5s <- 20w1s <- 5w1s
    cfg = load_config("maml-omniglot-20w5s")
    assert (cfg.task.hp.ways, cfg.task.hp.shots, cfg.learner.hp.inner_steps, cfg.train.meta_batch) == (20, 5, 5, 16)


def test_merge_is_per_section_and_does_not_touch_the_base():
    base = {"description": "a", "task": {"name": "x", "ways": 5}, "train": {"lr": 1.0}}
    child = {"description": "b", "task": {"ways": 20}}
    assert merge(base, child) == {"description": "b", "task": {"name": "x", "ways": 20}, "train": {"lr": 1.0}}
    assert base["task"]["ways"] == 5


def test_inheritance_cycles_are_refused(monkeypatch):
    import metagrad.config as config

    files = {"a": {"base": "b", "description": "a"}, "b": {"base": "a", "description": "b"}}
    monkeypatch.setattr(config, "_read_preset", lambda name: json.loads(json.dumps(files[name])))
    with pytest.raises(ConfigError, match="inherits from itself: a -> b -> a"):
        config.load_preset("a")


def test_every_preset_has_its_own_description():
    descriptions = [load_preset(n)["description"] for n in preset_names()]
    assert len(set(descriptions)) == len(descriptions)


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "fomaml-sine", "--set", "train.iterations=7", "--out", str(out), "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["learner"]["first_order"] is True and cfg["train"]["iterations"] == 7 and cfg["preset"] == "fomaml-sine"
    assert not out.exists()


def test_a_new_component_name_drops_the_keys_only_the_old_one_knew():
    """--set model.name=cnn on a Conv-4 preset keeps channels (cnn has it) and drops downsample
    (conv4's alone); a key the user sets is still checked, and so is any key while the name stays."""
    cfg = load_config("omniglot-quick", ["model.name=cnn", 'model.ops=["sep3x3", "skip"]'])
    assert cfg.model.name == "cnn" and cfg.model.hp.channels == 32 and cfg.model.hp.ops == ["sep3x3", "skip"]
    with pytest.raises(ConfigError, match="unknown key model.downsample"):
        load_config("omniglot-quick", ["model.name=cnn", "model.downsample=max"])
    with pytest.raises(ConfigError, match="unknown key model.ops"):
        load_config("omniglot-quick", ['model.ops=["skip"]'])
    # the same rule when a preset renames its base's component (darts over maml's conv4 preset)
    assert "downsample" in load_preset("maml-omniglot-5w1s")["model"]
    cfg = load_config("darts-omniglot-5w1s")
    assert cfg.model.name == "search-cnn" and cfg.learner.hp.inner_lr == 0.4  # maml's, kept
    assert "downsample" not in cfg.to_dict()["model"]


def test_changes_from_preset_name_each_setting_that_differs_from_the_shipped_preset():
    from metagrad.config import changes_from_preset

    assert changes_from_preset(load_config("oneshot-omniglot-lake-28")) == []
    cfg = load_config("oneshot-omniglot-lake-28", ["task.image_size=32", "task.cache_dir=/tmp/c", "model.widths=[64,64,128,256]",
                                                   "train.iterations=16000"])  # the preset's own length: no change
    assert changes_from_preset(cfg) == ["task.image_size=32", "task.cache_dir=/tmp/c", "model.widths=[64,64,128,256]"]
    # another model: its own defaults are no change
    assert changes_from_preset(load_config("oneshot-omniglot-lake-28", ["model.name=resnet12"])) == ["model.name=resnet12"]
    # a preset that is incomplete by design (the user's folder is a required setting)
    assert changes_from_preset(load_config("folder-quick", ["task.path=/data/mine"])) == ["task.path=/data/mine"]
    for name in preset_names():  # every other preset is itself
        if name != "folder-quick":
            assert changes_from_preset(load_config(name)) == [], name
    cfg.preset = "no-such-preset"  # nothing to compare with
    assert changes_from_preset(cfg) == []
