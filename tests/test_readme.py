"""The README's Python example runs as written and learns."""

import contextlib
import io
import re
from pathlib import Path


def test_readme_example_runs_as_written():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 4  # the loop shows progress while it runs
    mse = {line.rsplit(" ", 3)[0]: float(line.rsplit(" ", 3)[1]) for line in lines if not line.startswith("step ")}
    assert set(mse) == {"0 steps", "1 step"} | {f"{k} steps" for k in range(2, 11)}
    assert mse["1 step"] < 0.5 * mse["0 steps"]
