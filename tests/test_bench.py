"""`metagrad bench` runs, writes its JSON, and names what it could not time."""

import json

from metagrad.bench import speedups
from metagrad.cli import main


def test_bench_times_both_executors_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--groups", "sine", "--only", "sine-so-1step", "--iters", "2", "--warmup", "1", "--threads", "1", "--results", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["name"] for r in rows} == {"sine-so-1step-vmap", "sine-so-1step-loop"}
    assert all(r["its_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert "sine-so-1step vs loop" in capsys.readouterr().out


def test_speedups_pair_vmap_with_loop_and_incumbents():
    rows = [{"name": "x-vmap", "its_per_s": 10.0}, {"name": "x-loop", "its_per_s": 2.0}, {"name": "x-higher", "its_per_s": 4.0},
            {"name": "x-vmap-chunk4", "its_per_s": 1.0}]
    assert dict(speedups(rows)) == {"x vs loop": 5.0, "x vs higher": 2.5}


def test_bench_rejects_an_unknown_group(capsys):
    assert main(["bench", "--groups", "nope"]) == 2
    assert "unknown group 'nope'" in capsys.readouterr().err
