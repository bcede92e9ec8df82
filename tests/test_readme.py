"""The README's Python example runs as written and learns."""

import contextlib
import io
import re
from pathlib import Path


def run_example(number: int) -> list[str]:
    """Run the README's ``number``-th Python block as written; its printed lines."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[number]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    return out.getvalue().splitlines()


def test_readme_example_runs_as_written():
    lines = run_example(0)
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 4  # the loop shows progress while it runs
    mse = {line.rsplit(" ", 3)[0]: float(line.rsplit(" ", 3)[1]) for line in lines if not line.startswith("step ")}
    assert set(mse) == {"0 steps", "1 step"} | {f"{k} steps" for k in range(2, 11)}
    assert mse["1 step"] < 0.5 * mse["0 steps"]


def test_readme_own_data_example_runs_as_written():
    (line,) = run_example(1)
    assert re.fullmatch(r"\d+\.\d+% ± \d+\.\d+%", line), line  # accuracy ± 95% CI


def test_readme_learned_optimizer_example_runs_as_written():
    lines = run_example(2)
    first, last = (float(line.rsplit(" ", 1)[1]) for line in lines)
    assert last < 0.5 * first, lines  # the meta-trained LSTM optimises a new quadratic
