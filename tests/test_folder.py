"""A user's own image folders: loading, splits, episodes, the adapt helpers and bad input."""

import random
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metagrad.config import build_dataclass
from metagrad.errors import ConfigError, DataError
from metagrad.registry import TASKS
from metagrad.tasks.folder import (
    FolderConfig,
    check_class_count,
    load_query_folder,
    load_support_folder,
    make_folder,
    read_image,
    split_class_folders,
)
from metagrad.tasks.images import EpisodeSampler, ImageClassDataset

MODES = ("L", "RGB", "RGBA", "P", "1")


def save_image(path: Path, size: tuple[int, int], mode: str, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.new("RGB", size, (value, 255 - value, value // 2))
    (rgb.convert(mode) if mode != "RGBA" else rgb.convert("RGBA")).save(path)
    return path


def make_classes(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of PNG and JPEG images in assorted sizes and modes."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            size = (20 + 7 * i, 31 + 3 * c)
            if i % 3 == 2:
                save_image(root / name / f"img{i}.jpg", size, "RGB", 20 * c)
            else:
                save_image(root / name / f"img{i}.png", size, MODES[(i + c) % len(MODES)], 20 * c)
    return root


@pytest.fixture
def classes(tmp_path) -> Path:
    return make_classes(tmp_path / "classes", {f"class{c:02d}": 4 + c % 3 for c in range(10)})


def test_support_folder_loads_every_class_sorted(classes):
    (classes / "notes.txt").write_text("ignored")
    (classes / "class00" / "README.md").write_text("ignored")
    (classes / ".hidden").mkdir()
    data = load_support_folder(classes, image_size=16, channels=3, shots=4)
    assert data.class_names == [f"class{c:02d}" for c in range(10)]
    assert data.images.shape == (sum(4 + c % 3 for c in range(10)), 3, 16, 16) and data.images.dtype == torch.uint8
    assert torch.equal(data.counts(), torch.tensor([4 + c % 3 for c in range(10)]))
    assert all(Path(p).parent.name == data.class_names[y] for p, y in zip(data.paths, data.labels))
    gray = load_support_folder(classes, image_size=8, channels=1)
    assert gray.images.shape[1:] == (1, 8, 8)


def test_folder_task_splits_are_class_disjoint_and_sample(classes):
    cfg = build_dataclass(FolderConfig, {"path": str(classes), "ways": 2, "shots": 2, "queries": 2}, "task")
    sources = {s: make_folder(cfg, s) for s in ("train", "val", "test")}
    names = {s: set(src.dataset.class_names) for s, src in sources.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert names["train"] | names["val"] | names["test"] == {f"class{c:02d}" for c in range(10)}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    src = sources["train"]
    assert (src.kind, src.input_shape, src.n_outputs) == ("classification", (1, 28, 28), 2)
    b = src.sample(3, torch.Generator().manual_seed(0))
    assert b.support_x.shape == (3, 4, 1, 28, 28) and b.query_x.shape == (3, 4, 1, 28, 28)
    assert torch.equal(b.support_y.sort(dim=1).values, torch.tensor([[0, 0, 1, 1]] * 3))
    again = make_folder(cfg, "train").sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(again.query_x, b.query_x)  # same folder, same seed -> same tasks
    assert TASKS.get("folder").factory is make_folder and TASKS.get("folder").hparams is FolderConfig


def test_folder_images_are_decoded_once_into_the_user_cache_until_a_file_changes(classes, monkeypatch):
    from metagrad.tasks import folder
    from metagrad.tasks.store import user_cache_dir

    cfg = build_dataclass(FolderConfig, {"path": str(classes), "ways": 2}, "task")
    listing = sorted(p for p in classes.rglob("*"))
    first = make_folder(cfg, "train")
    assert sorted(p for p in classes.rglob("*")) == listing  # nothing written into the user's folder
    [cache] = user_cache_dir(classes).glob("folder-*.28px.cache")  # the train split's
    assert cache.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))
    real = folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda *a: pytest.fail("decoded again"))
    again = make_folder(cfg, "train")
    assert torch.equal(again.dataset.images, first.dataset.images) and again.dataset.paths == first.dataset.paths
    changed = Path(first.dataset.paths[0])
    save_image(changed, (9, 9), "L", 255)  # a replaced image is decoded again
    monkeypatch.setattr(folder, "read_image", real)
    rebuilt = make_folder(cfg, "train")
    assert not torch.equal(rebuilt.dataset.images[0], first.dataset.images[0])
    assert torch.equal(rebuilt.dataset.images[1:], first.dataset.images[1:])
    assert cache.is_file()


def test_split_rule(tmp_path):
    dirs = [tmp_path / f"c{i}" for i in range(20)]
    parts = split_class_folders(dirs, 0.1, 0.25)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [13, 2, 5]
    assert parts == split_class_folders(dirs, 0.1, 0.25)  # deterministic
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(dirs)


def test_unequal_class_sizes_sample_within_each_class():
    counts = [2, 3, 50, 7]
    labels = torch.arange(4).repeat_interleave(torch.tensor(counts))
    data = ImageClassDataset(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels[torch.randperm(len(labels))],
                             ["a", "b", "c", "d"])
    src = EpisodeSampler(data, ways=4, shots=1, queries=1)
    s_ids, s_y, q_ids, q_y = src.sample_indices(500, torch.Generator().manual_seed(0))
    for ids, y in ((s_ids, s_y), (q_ids, q_y)):
        per_task_class = data.labels[ids]
        for t in range(500):  # each label is one class throughout the task
            assert len({(int(a), int(b)) for a, b in zip(y[t], per_task_class[t])}) == 4
    used = torch.cat([s_ids.flatten(), q_ids.flatten()]).unique()
    assert len(used) == len(labels)  # every image of the big class is reachable, padding never is
    message = r"class 'a' of dataset has 2 images, fewer than task.shots \+ task.queries = 2 \+ 1"
    with pytest.raises(DataError, match=message):
        EpisodeSampler(data, ways=2, shots=2, queries=1)


def test_transparent_png_is_flattened_on_white(tmp_path):
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.putpixel((5, 5), (0, 0, 0, 255))
    im.save(tmp_path / "t.png")
    arr = read_image(tmp_path / "t.png", 10, 1)
    assert arr.shape == (1, 10, 10) and arr[0, 0, 0] == 255 and arr[0, 5, 5] < 128


def drawing(size=(100, 60), box=(10, 19, 70, 89), ground=255, ink=0) -> Image.Image:
    """A plain ``ground`` gray image with a filled ``ink`` rectangle over rows/cols box = (r0, r1, c0, c1)."""
    arr = np.full((size[1], size[0]), ground, np.uint8)
    arr[box[0] : box[1] + 1, box[2] : box[3] + 1] = ink
    return Image.fromarray(arr)


@pytest.mark.parametrize("ground, ink", [(255, 0), (0, 255)])  # dark on light and light on dark
def test_crop_to_ink_centres_the_strokes_in_a_square_with_a_margin(ground, ink):
    from metagrad.tasks.store import crop_to_ink

    # a 10 x 20 box: longer side 19 + 1 px -> side round(19 * 1.2) + 1 = 24, the box at rows 7..16, cols 2..21
    out = np.asarray(crop_to_ink(drawing(ground=ground, ink=ink)))
    want = np.full((24, 24), ground, np.uint8)
    want[7:17, 2:22] = ink
    assert np.array_equal(out, want)
    # at the image's corner the square reaches outside it and is padded with the background
    out = np.asarray(crop_to_ink(drawing(box=(0, 9, 0, 19), ground=ground, ink=ink)))
    assert np.array_equal(out, want)
    blank = drawing(box=(0, -1, 0, -1), ground=ground)  # no ink: the image as it is
    assert crop_to_ink(blank) is blank


def test_crop_to_ink_pads_colour_images_with_their_background_colour():
    from metagrad.tasks.store import crop_to_ink, fit_image

    im = Image.new("RGB", (100, 60), (200, 120, 40))
    im.paste((0, 0, 90), (0, 0, 20, 10))  # ink in the corner: rows 0..9, cols 0..19
    out = np.asarray(crop_to_ink(im))
    assert out.shape == (24, 24, 3)
    assert (out[:7] == (200, 120, 40)).all() and (out[7:17, 2:22] == (0, 0, 90)).all()
    # fit_image(crop="ink") resizes the cut image; without it the whole canvas is squeezed
    cut, whole = fit_image(im, 24, 3, crop="ink"), fit_image(im, 24, 3)
    assert np.array_equal(cut, out.transpose(2, 0, 1)) and not np.array_equal(whole, cut)


def test_folder_task_and_adapt_cut_images_around_their_ink(tmp_path, capsys):
    """task.crop=ink: the folder task's images are the cut ones (cached apart from the uncut), and
    `metagrad adapt` on that run cuts the support and query images as the run's training was cut."""
    import json

    from metagrad.cli import main
    from metagrad.tasks.images import as_float
    from metagrad.tasks.store import crop_to_ink, fit_image, user_cache_dir
    from metagrad.train import load_run

    root = tmp_path / "drawings"
    for c in range(10):
        for i in range(3):  # each class a box of its own aspect, drawn at assorted places and sizes
            r, k = 5 + 9 * i, 1 + i
            im = drawing(size=(64, 64), box=(r, r + k * (2 + c) - 1, 3 * i, 3 * i + 8 * k - 1))
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            im.save(root / f"class{c}" / f"{i}.png")
    cfg = build_dataclass(FolderConfig, {"path": str(root), "ways": 2, "crop": "ink", "image_size": 16}, "task")
    data = make_folder(cfg, "train").dataset
    for path, image in zip(data.paths, data.images):
        assert np.array_equal(image.numpy(), fit_image(crop_to_ink(Image.open(path).convert("L")), 16, 1))
    assert len(list(user_cache_dir(root).glob("folder-*.16px.ink.cache"))) == 1

    run = tmp_path / "run"
    sets = ["task.ways=2", "task.queries=1", "task.image_size=16", "task.crop=ink", "task.channels=1",
            "model.channels=8", "model.blocks=2", "train.iterations=2", "train.eval_every=0", "train.test_tasks=2",
            "train.eval_tasks=2"]
    assert main(["train", "--data", f"folder:{root}", "--out", str(run), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    out = tmp_path / "pred.json"
    assert main(["adapt", str(run), "--support", str(root), "--query", str(root), "--shots", "3", "--polarity", "keep",
                 "--predictions", str(out)]) == 0
    rows = json.loads(out.read_text())
    _, learner, _ = load_run(run)
    support, query = load_support_folder(root, 16, 1, 3, crop="ink"), load_query_folder(root, 16, 1, crop="ink")
    learner.eval()
    with torch.no_grad():
        probs = learner.adapt(as_float(support.images)[None], support.labels[None])(as_float(query.images)[None])[0].softmax(-1)
    uncut = load_query_folder(root, 16, 1)
    assert not torch.equal(uncut.images, query.images)
    assert [r["probability"] for r in rows] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-4)
    assert [r["predicted"] for r in rows] == [support.class_names[int(i)] for i in probs.argmax(-1)]


def test_query_folder_flat_and_in_class_folders(tmp_path):
    save_image(tmp_path / "q" / "b.png", (30, 30), "L", 10)
    save_image(tmp_path / "q" / "a.jpg", (50, 20), "RGB", 200)
    save_image(tmp_path / "q" / "cat" / "c.png", (12, 12), "RGBA", 100)
    q = load_query_folder(tmp_path / "q", image_size=20, channels=3)
    assert q.images.shape == (3, 3, 20, 20) and q.images.dtype == torch.uint8
    assert [Path(p).name for p in q.paths] == ["a.jpg", "b.png", "c.png"] and q.classes == [None, None, "cat"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"query folder .*empty holds no images"):
        load_query_folder(tmp_path / "empty")


def test_fewer_images_than_shots(classes):
    with pytest.raises(DataError, match=r"class folder .*class00 has 4 images, fewer than the 5 shots requested"):
        load_support_folder(classes, shots=5)
    cfg = FolderConfig(path=str(classes), ways=2, shots=4, queries=2, val_fraction=0, test_fraction=0)
    with pytest.raises(DataError, match=r"class 'class00' of the train split .* has 4 images, fewer than"):
        make_folder(cfg, "train")


def test_unreadable_image_is_named(classes):
    bad = classes / "class03" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        load_support_folder(classes)
    truncated = classes / "class04" / "cut.jpg"
    data = (classes / "class04" / "img2.jpg").read_bytes()
    bad.unlink()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cannot read image {truncated}"):
        load_support_folder(classes)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=rf"image folder {tmp_path / 'nope'} does not exist"):
        load_support_folder(tmp_path / "nope")
    with pytest.raises(DataError, match=rf"query folder {tmp_path / 'nope'} does not exist"):
        load_query_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    save_image(tmp_path / "flat" / "a.png", (5, 5), "L", 0)
    with pytest.raises(DataError, match="has no class sub-folders"):
        load_support_folder(tmp_path / "flat")
    with pytest.raises(DataError, match="does not exist"):
        make_folder(FolderConfig(path=str(tmp_path / "nope")), "train")


def test_class_count_and_config_errors(classes):
    check_class_count(5, 5)
    with pytest.raises(DataError, match="the support folder has 3 classes but the model was meta-trained for 5-way"):
        check_class_count(3, 5)
    with pytest.raises(ConfigError, match="task.path is empty"):
        build_dataclass(FolderConfig, {}, "task")
    with pytest.raises(ConfigError, match="task.val_fraction \\+ task.test_fraction must be < 1"):
        build_dataclass(FolderConfig, {"path": "x", "val_fraction": 0.5, "test_fraction": 0.5}, "task")
    with pytest.raises(ConfigError, match="task.channels: 2 is not allowed; allowed: 1, 3"):
        build_dataclass(FolderConfig, {"path": "x", "channels": 2}, "task")
    with pytest.raises(ConfigError, match=r"3-way tasks need 3 classes but the val split .* has 2 classes; allowed: 2..2$"):
        make_folder(FolderConfig(path=str(classes), ways=3), "val")
    with pytest.raises(ConfigError, match=r"has 1 class; episodes need at least 2 classes$"):
        make_folder(FolderConfig(path=str(classes), ways=2, val_fraction=0.1), "val")
    with pytest.raises(DataError, match="the val split of .* has no classes"):
        make_folder(FolderConfig(path=str(classes), val_fraction=0), "val")
    # decoded images keep their content: a uniform image stays uniform after resizing
    arr = read_image(next((classes / "class05").glob("*.png")), 7, 1)
    assert np.ptp(arr) <= 1


SHAPES = ("box", "hbar", "vbar", "cross", "ring", "diag")


def draw_shape(path: Path, shape: str, scale: float, rng: random.Random) -> None:
    """A 32x32 RGB image of ``shape`` at ``scale``, in a random colour at a random offset."""
    colour = tuple(rng.randrange(60, 256) for _ in range(3))
    img = Image.new("RGB", (32, 32), "black")
    d, x, y, n = ImageDraw.Draw(img), rng.randrange(8), rng.randrange(8), 20 * scale
    square = (x + 2, y + 2, x + 2 + n, y + 2 + n)
    if shape == "box":
        d.rectangle(square, fill=colour)
    if shape == "ring":
        d.ellipse(square, outline=colour, width=3)
    if shape in ("hbar", "cross"):
        d.rectangle((x + 2, y + 10, x + 2 + n, y + 14), fill=colour)
    if shape in ("vbar", "cross"):
        d.rectangle((x + 10, y + 2, x + 14, y + 2 + n), fill=colour)
    if shape == "diag":
        d.line((x + 2, y + 2, x + 2 + n, y + 2 + n), fill=colour, width=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_cli_trains_on_a_users_folders_and_adapts(tmp_path, capsys):
    """`metagrad train --data folder:PATH` meta-trains on class folders (12 classes: 6 shapes x
    2 sizes, colour and position random, so the embedding must learn to ignore colour), and
    `adapt` classifies new drawings of them. An untrained embedding gets 32/60 (chance 5/60)."""
    import json

    from metagrad.cli import main

    rng = random.Random(0)
    root, query = tmp_path / "images", tmp_path / "query"
    for shape in SHAPES:
        for scale in (1, 0.5):
            for i in range(8):
                draw_shape(root / f"{shape}-{scale}" / f"{i}.png", shape, scale, rng)
            for i in range(5):  # new drawings, not support images
                draw_shape(query / f"{shape}-{scale}" / f"{i}.png", shape, scale, rng)
    run = tmp_path / "run"
    code = main(["train", "--data", f"folder:{root}", "--out", str(run), "--quiet",
                 "--set", "train.iterations=100", "--set", "train.eval_every=0", "--set", "train.test_tasks=10",
                 "--set", "task.ways=2", "--set", "task.queries=3"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"]["name"] == "folder" and cfg["task"]["path"] == str(root)
    capsys.readouterr()
    assert main(["adapt", str(run), "--support", str(root), "--query", str(query)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line]
    correct = sum(Path(image).parent.name == predicted for image, predicted, _ in rows)
    assert len(rows) == 60 and correct >= 45, correct  # 100 iterations: 56/60 (50: 51, untrained: 32)


def test_cli_data_flag_errors(tmp_path, capsys):
    from metagrad.cli import main

    assert main(["train", "--data", "images:/x", "--out", str(tmp_path / "r")]) == 2
    assert "expected folder:PATH" in capsys.readouterr().err
    assert main(["train", "--data", f"folder:{tmp_path / 'none'}", "--out", str(tmp_path / "r")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
