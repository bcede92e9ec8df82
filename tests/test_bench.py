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


def test_bench_times_every_registered_learner_end_to_end(tmp_path, capsys, shared_data):
    from metagrad.registry import LEARNERS

    out = tmp_path / "learners.json"
    code = main(["bench", "--learners", "all", "--iters", "1", "--warmup", "0", "--same-process", "--set",
                 "train.meta_batch=1", "--data-dir", str(shared_data), "--results", str(out)])
    assert code == 0, capsys.readouterr().out[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert sorted(r["name"].split(":")[0] for r in rows) == sorted(LEARNERS.names())  # a row per learner
    assert all(r["group"] == "learners" and r["its_per_s"] > 0 and 0 <= r["sample_ms_per_it"] <= r["ms_per_it"]
               and r["meta_batch"] == 1 for r in rows)


def test_bench_names_an_unknown_learner(capsys):
    assert main(["bench", "--learners", "maml,nope"]) == 2
    assert "--learners: unknown learner 'nope'; allowed: all, " in capsys.readouterr().err
