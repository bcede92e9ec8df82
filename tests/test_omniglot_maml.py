"""MAML on real Omniglot (5-way 1-shot) learns, and `metagrad adapt` serves a user's folders."""

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from metagrad.cli import main

SMALL1 = "original/images_background_small1.zip"


@pytest.fixture(scope="module")
def trained_run(shared_data, tmp_path_factory) -> tuple[Path, dict]:
    """A few hundred MAML iterations on the small background set (Lake scheme: train = 4
    alphabets, val = Early_Aramaic), tested on the 20 held-out evaluation alphabets."""
    run = tmp_path_factory.mktemp("maml-omniglot") / "run"
    sets = [
        f"task.data_dir={shared_data}", f"task.cache_dir={tmp_path_factory.mktemp('cache')}", "task.download=false",
        "task.split_scheme=lake", f'task.background_archives=["{SMALL1}"]',
        "model.channels=32", "train.meta_batch=8", "train.iterations=300", "train.eval_every=0",
        "train.eval_tasks=50", "train.test_tasks=200", "train.checkpoint_every=300",
    ]
    argv = ["train", "--preset", "maml-omniglot-5w1s", "--out", str(run), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return run, json.loads((run / "report.json").read_text())


def test_maml_learns_omniglot_5way_1shot(trained_run):
    _, report = trained_run
    post = report["test"]["3 steps"]
    assert post["metric"] == "accuracy" and post["episodes"] == 200
    assert post["mean"] > 0.6, post  # chance is 20%
    assert post["mean"] > report["test"]["0 steps"]["mean"] + 0.3


def user_folders(shared_data: Path, root: Path, n_classes=5, support_per_class=2, query_per_class=3) -> tuple[Path, Path]:
    """Support and query folders of real Omniglot drawings (as a user would have them: PNG files,
    dark strokes on white, 105x105) from characters of the evaluation set."""
    support, query = root / "support", root / "query"
    with zipfile.ZipFile(shared_data / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png") and "/Keble/" in n)
        chars = sorted({n.rsplit("/", 1)[0] for n in names})[:n_classes]
        for c, char in enumerate(chars):
            files = [n for n in names if n.startswith(char + "/")]
            for i, name in enumerate(files[: support_per_class + query_per_class]):
                dest = (support if i < support_per_class else query) / f"char{c}"
                dest.mkdir(parents=True, exist_ok=True)
                Image.open(io.BytesIO(zf.read(name))).save(dest / f"{i}.png")
    return support, query


def test_adapt_predicts_a_users_query_folder(trained_run, shared_data, tmp_path, capsys):
    run, _ = trained_run
    support, query = user_folders(shared_data, tmp_path)
    out, sheet = tmp_path / "pred.csv", tmp_path / "sheet.png"
    # raw Omniglot PNGs are dark on white, the model was trained on light on dark: no flag needed
    code = main(["adapt", str(run), "--support", str(support), "--query", str(query), "--predictions", str(out), "--sheet", str(sheet)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0 and "inverting pixel values" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 15 and {r["true"] for r in rows} == {f"char{c}" for c in range(5)}
    accuracy = sum(r["predicted"] == r["true"] for r in rows) / len(rows)
    confidence = sum(float(r["probability"]) for r in rows) / len(rows)
    # 5-way, chance 20%: this run gets 14/15 at mean probability 0.76; after 1 iteration 8/15 at 0.44
    assert accuracy >= 0.8 and confidence > 0.6, rows
    assert f"{100 * accuracy:.1f}%" in printed
    assert sheet.read_bytes()[:4] == b"\x89PNG"
    code = main(["adapt", str(run), "--support", str(support), "--query", str(query), "--predictions", str(tmp_path / "p.json")])
    assert code == 0 and len(json.loads((tmp_path / "p.json").read_text())) == 15
    capsys.readouterr()
    # kept as they are, the same drawings are classified far worse: the automatic inversion is what helped
    code = main(["adapt", str(run), "--support", str(support), "--query", str(query), "--polarity", "keep",
                 "--predictions", str(tmp_path / "kept.csv")])
    kept = list(csv.DictReader((tmp_path / "kept.csv").open()))
    assert code == 0 and "inverting" not in capsys.readouterr().err
    assert sum(r["predicted"] == r["true"] for r in kept) / len(kept) < accuracy - 0.2, kept


def test_adapt_rejects_bad_folders(trained_run, shared_data, tmp_path, capsys):
    run, _ = trained_run
    support, query = user_folders(shared_data, tmp_path, n_classes=4)
    cases = []
    cases.append((["--support", str(support), "--query", str(query)], "has 4 classes but the model was meta-trained for 5-way"))
    support5, query5 = user_folders(shared_data, tmp_path / "five")
    cases.append((["--support", str(support5), "--query", str(query5), "--shots", "3"], "fewer than the 3 shots requested"))
    cases.append((["--support", str(tmp_path / "missing"), "--query", str(query5)], "missing"))
    (support5 / "char0" / "broken.png").write_bytes(b"not an image")
    cases.append((["--support", str(support5), "--query", str(query5)], "broken.png"))
    for argv, needle in cases:
        code = main(["adapt", str(run), *argv])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, (argv, err)


def test_adapt_refuses_a_regression_checkpoint(tmp_path, capsys, shared_data):
    run = tmp_path / "sine"
    assert main(["train", "--out", str(run), "--quiet", "--set", "train.iterations=5", "--set", "train.test_tasks=5", "--set", "train.eval_every=0"]) == 0
    capsys.readouterr()
    support, query = user_folders(shared_data, tmp_path)
    assert main(["adapt", str(run), "--support", str(support), "--query", str(query)]) == 2
    assert "adapt needs an image classifier" in capsys.readouterr().err
