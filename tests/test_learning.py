"""Learning checks: a short meta-training run must actually learn."""

from metagrad.config import load_config
from metagrad.train import train


def sine_adaptation(tmp_path, learner_overrides: list[str], steps: int, iterations: int = 1200) -> tuple[float, float]:
    """(MSE before, MSE after ``steps`` inner steps) on 200 test tasks after a short sine-quick run."""
    cfg = load_config("sine-quick", [*learner_overrides, f"learner.eval_steps={steps}", f"train.iterations={iterations}",
                                     "train.eval_every=0", "train.test_tasks=200"])
    test = train(cfg, tmp_path / "run", progress=False)["test"]
    return test["0 steps"]["mean"], test[f"{steps} step" + ("" if steps == 1 else "s")]["mean"]


def test_maml_sine_learns_to_adapt(tmp_path):
    cfg = load_config("sine-quick", ["train.iterations=1500", "train.eval_every=0", "train.test_tasks=200", "learner.eval_steps=1"])
    report = train(cfg, tmp_path / "run", progress=False)
    pre, post = report["test"]["0 steps"]["mean"], report["test"]["1 step"]["mean"]
    # an untrained MLP's pre-adaptation MSE is ~3 (the variance of A sin); one step must clearly help
    assert post < 0.6 * pre, (pre, post)
    assert post < 1.5


def test_first_order_maml_sine_learns(tmp_path):
    cfg = load_config("fomaml-sine", ["train.iterations=1500", "train.eval_every=0", "train.test_tasks=200", "learner.eval_steps=1"])
    report = train(cfg, tmp_path / "run", progress=False)
    assert report["test"]["1 step"]["mean"] < 0.7 * report["test"]["0 steps"]["mean"]
