"""Omniglot on the real archives (the `shared_data` fixture: ../shared/data or a download):
splits and counts, episodes, determinism, download, cache, unsafe and corrupt archives."""

import functools
import hashlib
import http.server
import io
import random
import re
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metagrad.config import build_dataclass
from metagrad.errors import ConfigError, DataError
from metagrad.registry import TASKS
from metagrad.tasks import omniglot, store
from metagrad.tasks.images import EpisodeSampler, ImageClassDataset
from metagrad.tasks.omniglot import OmniglotConfig, make_omniglot, listed_characters, omniglot_dataset

SMALL1 = "original/images_background_small1.zip"  # Balinese, Early_Aramaic, Greek, Korean, Latin: 136 characters


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory) -> Path:
    """One cache of the full preprocessed set, shared by this module's tests."""
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot-small-cache")


def small_cfg(shared_data, cache, **kw) -> OmniglotConfig:
    """Lake scheme over the small background archive: train = 4 alphabets (114 characters)."""
    kw = {"split_scheme": "lake", "background_archives": [SMALL1], "data_dir": str(shared_data),
          "cache_dir": str(cache), "download": False, **kw}
    return OmniglotConfig(**kw)


def png_bytes(size=105, value=0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 255 - value).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path: Path, n_chars=6, drawings=20, size=105, extra: dict | None = None) -> Path:
    """A small Omniglot-like zip: images_background/Alpha/characterNN/<id>_<kk>.png (+ extra entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for c in range(n_chars):
            data = png_bytes(size, value=255 * (c % 2))
            for d in range(drawings):
                zf.writestr(f"images_background/Alpha/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------- splits and counts


# sha256 of the sorted lines of jakesnell/prototypical-networks' data/splits/vinyals/<split>.txt
# (checked against ../shared/data's copies of those files, which the test also compares when present)
VINYALS_REFERENCE_SHA256 = {
    "train": "2c896cd81ce6e265cb77cf6b6639f5413bb98cf6396cfb69e79bf3ae783f2e26",
    "val": "aa90019d0f1878f34cd74856b44f307944e08b7408d636baebccd94ba852d517",
    "test": "871120bc00230686b507e366092d9f804988354e61d5405c4008e002223f2bcc",
    "trainval": "62d34cdcc485031005c531bd2a8f0dd8fcd177974311773eab1b29614501583c",
}


def test_shipped_vinyals_split_matches_the_reference_files(shared_data):
    counts = {s: len(listed_characters(s)) for s in ("train", "val", "test", "trainval")}
    assert counts == {"train": 1028, "val": 172, "test": 423, "trainval": 1200}
    sets = {s: set(listed_characters(s)) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] | sets["val"]) & sets["test"]
    reference = shared_data / "omniglot" / "splits" / "vinyals"
    for s in ("train", "val", "test", "trainval"):
        ours = sorted(f"{c}/{r}" for c in listed_characters(s) for r in ("rot000", "rot090", "rot180", "rot270"))
        assert hashlib.sha256("\n".join(ours).encode()).hexdigest() == VINYALS_REFERENCE_SHA256[s]
        if reference.is_dir():  # ../shared/data has the files themselves
            assert ours == sorted((reference / f"{s}.txt").read_text().split())


def test_random_split_is_the_documented_shuffle_with_alphabets_on_both_sides():
    """The shipped random split is the 1623 characters, sorted, shuffled by random.Random(1623)
    and cut 1028 / 172 / 423, and (unlike the Vinyals split) its test alphabets are trained on."""
    every = sorted(c for s in ("train", "val", "test") for c in listed_characters(s))
    assert len(every) == len(set(every)) == 1623
    random.Random(1623).shuffle(every)
    expected = {"train": every[:1028], "val": every[1028:1200], "test": every[1200:]}
    for part, names in expected.items():
        assert listed_characters(part, "random") == sorted(names)
    random_test = {c.split("/")[0] for c in listed_characters("test", "random")}
    random_trained = {c.split("/")[0] for c in listed_characters("trainval", "random")}
    vinyals_test = {c.split("/")[0] for c in listed_characters("test")}
    vinyals_trained = {c.split("/")[0] for c in listed_characters("trainval")}
    assert len(random_test) == 50 and random_test <= random_trained
    assert vinyals_test & vinyals_trained == {"Gurmukhi"}  # the one alphabet the Vinyals cut splits


def test_random_split_on_the_full_archives(shared_data, full_cache):
    cfg = OmniglotConfig(split_scheme="random", train_on="trainval", data_dir=str(shared_data),
                         cache_dir=str(full_cache), download=False)
    train, test = (make_omniglot(cfg, s).dataset for s in ("train", "test"))
    assert (train.n_classes, test.n_classes) == (4800, 1692)
    train_chars, test_chars = ({n.rsplit("/", 1)[0] for n in d.class_names} for d in (train, test))
    assert not train_chars & test_chars and len(train_chars | test_chars) == 1623


def test_vinyals_counts_on_the_full_archives(shared_data, full_cache):
    cfg = OmniglotConfig(data_dir=str(shared_data), cache_dir=str(full_cache), download=False)
    classes = {s: make_omniglot(cfg, s).dataset.n_classes for s in ("train", "val", "test")}
    assert classes == {"train": 4112, "val": 688, "test": 1692}
    cfg.train_on = "trainval"
    train = make_omniglot(cfg, "train")
    assert train.dataset.n_classes == 4800 and len(train.dataset) == 4800 * 20
    assert train.input_shape == (1, 28, 28) and train.kind == "classification" and train.n_outputs == 5
    assert sorted(p.name for p in full_cache.iterdir()) == ["images_background.28px.cache", "images_evaluation.28px.cache"]


def test_lake_counts_on_the_full_archives(shared_data, full_cache):
    cfg = OmniglotConfig(split_scheme="lake", data_dir=str(shared_data), cache_dir=str(full_cache), download=False)
    classes = {s: make_omniglot(cfg, s).dataset.n_classes for s in ("train", "val", "test")}
    assert classes == {"train": 792 * 4, "val": 172 * 4, "test": 659 * 4}
    cfg.train_on, cfg.rotate = "trainval", False
    assert make_omniglot(cfg, "train").dataset.n_classes == 964


def test_rotations_are_separate_classes(shared_data, small_cache):
    data = omniglot_dataset(small_cfg(shared_data, small_cache), "train")
    assert data.n_classes == 114 * 4
    assert data.class_names[:4] == [f"Balinese/character01/rot{r:03d}" for r in (0, 90, 180, 270)]
    imgs = data.images.view(-1, 4, 20, 28, 28)  # classes are character-major, 20 drawings each
    for k in range(4):
        assert torch.equal(imgs[:, k], torch.rot90(imgs[:, 0], k, dims=(-2, -1)))
    # strokes are bright on a dark background, like the MAML / ProtoNets preprocessing
    assert imgs.float().mean() < 60 and imgs.max() == 255
    plain = omniglot_dataset(small_cfg(shared_data, small_cache, rotate=False), "train")
    assert plain.n_classes == 114 and torch.equal(plain.images.view(-1, 20, 28, 28), imgs[:, 0])


def test_crop_ink_cuts_each_drawing_around_its_strokes(shared_data, small_cache):
    """task.crop=ink: every drawing is the square around its strokes, resized and inverted, from a
    cache of its own; the character then spans the image, which the uncut drawings rarely do."""
    from metagrad.tasks.store import crop_to_ink

    cfg = small_cfg(shared_data, small_cache, rotate=False, crop="ink")
    cut = omniglot_dataset(cfg, "train").images.view(-1, 20, 28, 28)
    whole = omniglot_dataset(small_cfg(shared_data, small_cache, rotate=False), "train").images.view(-1, 20, 28, 28)
    assert {p.name for p in small_cache.iterdir()} >= {"images_background_small1.28px.cache",
                                                        "images_background_small1.28px.ink.cache"}
    with zipfile.ZipFile(shared_data / "omniglot" / SMALL1) as zf:
        png = sorted(n for n in zf.namelist() if "/Balinese/character01/" in n and n.endswith(".png"))[0]
        raw = Image.open(io.BytesIO(zf.read(png))).convert("L")
    want = 255 - np.asarray(crop_to_ink(raw).resize((28, 28), Image.Resampling.LANCZOS))
    assert np.array_equal(cut[0, 0].numpy(), want)

    def span(images):  # the longer side of each image's ink bounding box, in pixels
        ink = images.flatten(0, 1) >= 128  # [n, 28, 28]
        extent = lambda m: m.shape[-1] - m.int().argmax(-1) - m.flip(-1).int().argmax(-1)  # m: [n, 28]
        return torch.maximum(extent(ink.any(-1)), extent(ink.any(-2)))

    assert span(cut).float().min() >= 20 and span(whole).float().median() < 20


def test_cache_is_reused_and_rebuilt_when_the_archive_changes(tmp_path, monkeypatch):
    root = tmp_path / "data" / "omniglot"
    make_archive(root / "images_background.zip", n_chars=6)
    cfg = OmniglotConfig(split_scheme="lake", ways=2, data_dir=str(tmp_path / "data"), download=False)
    assert make_omniglot(cfg, "train").dataset.n_classes == 24
    cache = root / "images_background.28px.cache"
    assert cache.is_file()
    real_read = omniglot.decode_archive
    monkeypatch.setattr(omniglot, "decode_archive", lambda *a: pytest.fail("cache not used"))
    assert make_omniglot(cfg, "train").dataset.n_classes == 24
    make_archive(root / "images_background.zip", n_chars=7)  # replaced archive -> rebuilt
    monkeypatch.setattr(omniglot, "decode_archive", real_read)
    assert make_omniglot(cfg, "train").dataset.n_classes == 28
    cache.write_bytes(b"garbage")  # an unreadable cache is rebuilt too
    assert make_omniglot(cfg, "train").dataset.n_classes == 28
    cfg.image_size = 14
    assert make_omniglot(cfg, "train").input_shape == (1, 14, 14)
    assert sorted(p.name for p in root.iterdir()) == [
        "images_background.14px.cache", "images_background.28px.cache", "images_background.zip"]


def test_read_only_data_dir_caches_in_the_user_cache(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared" / "omniglot"  # a dataset folder this user cannot write
    make_archive(shared / "images_background.zip", n_chars=6)
    real_access = store.os.access
    monkeypatch.setattr(store.os, "access", lambda p, mode: False if Path(p) == shared else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    cfg = OmniglotConfig(split_scheme="lake", ways=2, data_dir=str(tmp_path / "shared"), download=False)
    assert make_omniglot(cfg, "train").dataset.n_classes == 24
    assert sorted(p.name for p in shared.iterdir()) == ["images_background.zip"]
    [cache] = (tmp_path / "user-cache" / "metagrad" / "preprocessed").glob("*/images_background.28px.cache")
    monkeypatch.setattr(omniglot, "decode_archive", lambda *a: pytest.fail("cache not used"))
    assert make_omniglot(cfg, "train").dataset.n_classes == 24
    assert capsys.readouterr().err == ""


def test_unwritable_cache_is_one_line_and_the_data_still_loads(tmp_path, monkeypatch, capsys):
    make_archive(tmp_path / "data" / "omniglot" / "images_background.zip", n_chars=6)

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store, "atomic_write", refuse)
    cfg = OmniglotConfig(split_scheme="lake", ways=2, data_dir=str(tmp_path / "data"), download=False)
    assert make_omniglot(cfg, "train").dataset.n_classes == 24
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("warning: could not write the Omniglot cache") and "task.cache_dir" in err

# --------------------------------------------------------------------------- episodes


def test_episode_shapes_labels_and_disjoint_support_query(shared_data, small_cache):
    src = make_omniglot(small_cfg(shared_data, small_cache, ways=5, shots=2, queries=3), "train")
    b = src.sample(16, torch.Generator().manual_seed(0))
    assert b.support_x.shape == (16, 10, 1, 28, 28) and b.query_x.shape == (16, 15, 1, 28, 28)
    assert b.support_y.shape == (16, 10) and b.query_y.shape == (16, 15)
    assert b.support_x.dtype == torch.float32 and b.support_y.dtype == torch.long
    assert 0 <= b.support_x.min() and b.support_x.max() <= 1
    for t in range(16):
        assert b.support_y[t].sort().values.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert b.query_y[t].sort().values.tolist() == [i for i in range(5) for _ in range(3)]

    s_ids, s_y, q_ids, q_y = src.sample_indices(200, torch.Generator().manual_seed(1))
    true = src.dataset.labels
    tasks = set()
    for t in range(200):
        assert not set(s_ids[t].tolist()) & set(q_ids[t].tolist())  # no image in both sets
        assert len(set(s_ids[t].tolist())) == 10 and len(set(q_ids[t].tolist())) == 15
        label_to_class = {int(y): int(true[i]) for i, y in zip(s_ids[t], s_y[t])}
        assert len(set(label_to_class.values())) == 5  # 5 distinct classes, one per label
        assert all(label_to_class[int(y)] == int(true[i]) for i, y in zip(q_ids[t], q_y[t]))
        tasks.add(tuple(label_to_class[k] for k in range(5)))
    assert len(tasks) == 200  # other classes or another label order in every task
    in_class_order = sum(list(t) == sorted(t) for t in tasks)
    assert in_class_order < 10  # labels are permuted (1 task in 120 by chance), not given in class order

    # sample() gathers exactly the images of sample_indices() for the same generator state
    b = src.sample(4, torch.Generator().manual_seed(2))
    s_ids, s_y, q_ids, q_y = src.sample_indices(4, torch.Generator().manual_seed(2))
    assert torch.equal(b.support_x, src.dataset.images[s_ids].float() * (1 / 255)) and torch.equal(b.support_y, s_y)
    assert torch.equal(b.query_x, src.dataset.images[q_ids].float() * (1 / 255)) and torch.equal(b.query_y, q_y)


def test_same_seed_same_tasks_different_seed_different(shared_data, small_cache):
    src = make_omniglot(small_cfg(shared_data, small_cache, ways=5, shots=1, queries=2), "train")
    a, b, c = (src.sample(8, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x)
    g = torch.Generator().manual_seed(7)
    first, second = src.sample(8, g), src.sample(8, g)  # the generator advances
    assert torch.equal(first.support_x, a.support_x) and not torch.equal(second.support_x, a.support_x)


def test_sampler_is_uniform_over_classes_images_and_labels():
    n_classes, per_class = 10, 6
    data = ImageClassDataset(
        torch.arange(n_classes * per_class, dtype=torch.uint8).view(-1, 1, 1, 1),
        torch.arange(n_classes).repeat_interleave(per_class),
        [f"c{i}" for i in range(n_classes)],
    )
    src = EpisodeSampler(data, ways=5, shots=1, queries=1)
    s_ids, s_y, q_ids, _ = src.sample_indices(4000, torch.Generator().manual_seed(0))
    class_freq = torch.bincount(data.labels[s_ids].flatten(), minlength=n_classes).float()
    assert torch.allclose(class_freq / class_freq.mean(), torch.ones(n_classes), atol=0.06)
    label0 = data.labels[s_ids][s_y == 0]  # which class got label 0
    freq0 = torch.bincount(label0, minlength=n_classes).float()
    assert torch.allclose(freq0 / freq0.mean(), torch.ones(n_classes), atol=0.2)
    image_freq = torch.bincount(torch.cat([s_ids.flatten(), q_ids.flatten()]), minlength=len(data)).float()
    assert torch.allclose(image_freq / image_freq.mean(), torch.ones(len(data)), atol=0.25)


def test_bad_ways_shots_and_splits(shared_data, small_cache, full_cache):
    with pytest.raises(ConfigError, match=r"500-way tasks need 500 classes but .* has 456 classes; allowed: 2..456"):
        make_omniglot(small_cfg(shared_data, small_cache, ways=500), "train")
    with pytest.raises(ConfigError, match="exceeds the 20 drawings"):
        build_dataclass(OmniglotConfig, {"shots": 15, "queries": 10}, "task")
    with pytest.raises(ConfigError, match="split_scheme: 'foo' is not allowed; allowed: vinyals, random, lake"):
        build_dataclass(OmniglotConfig, {"split_scheme": "foo"}, "task")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        make_omniglot(small_cfg(shared_data, small_cache), "dev")
    with pytest.raises(DataError, match="Vinyals train split needs 678 characters missing"):
        make_omniglot(small_cfg(shared_data, full_cache, split_scheme="vinyals"), "train")
    assert TASKS.get("omniglot").factory is make_omniglot and TASKS.get("omniglot").hparams is OmniglotConfig


def test_missing_archive_without_download(tmp_path):
    cfg = OmniglotConfig(split_scheme="lake", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"images_background.zip is missing; set task.download=true"):
        make_omniglot(cfg, "train")


def test_data_dir_defaults_to_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("METAGRAD_DATA", str(tmp_path))
    assert omniglot.omniglot_dir() == tmp_path / "omniglot"
    monkeypatch.delenv("METAGRAD_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert omniglot.omniglot_dir() == tmp_path / "home" / ".cache" / "metagrad" / "omniglot"
    assert omniglot.omniglot_dir("~/x") == tmp_path / "home" / "x" / "omniglot"


# --------------------------------------------------------------------------- download


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1; METAGRAD_OMNIGLOT_URL points at it."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("METAGRAD_OMNIGLOT_URL", f"http://127.0.0.1:{server.server_address[1]}/python/")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    (root / "python").mkdir()
    yield root / "python"
    server.shutdown()
    thread.join()


def test_download_verifies_checksum_then_loads(shared_data, http_dir, tmp_path, monkeypatch):
    served = http_dir / "images_background.zip"
    shutil.copy(shared_data / "omniglot" / SMALL1, served)
    monkeypatch.setitem(omniglot.MD5, "images_background.zip", md5(served))
    cfg = OmniglotConfig(split_scheme="lake", ways=5, data_dir=str(tmp_path / "data"))
    src = make_omniglot(cfg, "train")
    root = tmp_path / "data" / "omniglot"
    assert sorted(p.name for p in root.iterdir()) == ["images_background.28px.cache", "images_background.zip"]
    assert md5(root / "images_background.zip") == md5(served)
    assert src.dataset.n_classes == 114 * 4 and src.sample(2, torch.Generator().manual_seed(0)).query_x.shape == (
        2, 5, 1, 28, 28)


def test_download_with_wrong_checksum_leaves_nothing(shared_data, http_dir, tmp_path):
    shutil.copy(shared_data / "omniglot" / SMALL1, http_dir / "images_background.zip")
    cfg = OmniglotConfig(split_scheme="lake", data_dir=str(tmp_path / "data"))
    got = md5(http_dir / "images_background.zip")
    canonical = "68d2efa1b9178cc56df9314c21c6e718"
    with pytest.raises(DataError, match=rf"images_background.zip .* md5 {got}, expected {canonical}"):
        make_omniglot(cfg, "train")
    assert list((tmp_path / "data" / "omniglot").iterdir()) == []


def test_download_failure_names_the_url_and_both_ways_to_supply_the_file(http_dir, tmp_path):
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:\d+/python/images_evaluation.zip") as excinfo:
        omniglot.download_archive("images_evaluation.zip", tmp_path / "data" / "omniglot")
    assert str(excinfo.value).endswith(f"place images_evaluation.zip in {tmp_path / 'data' / 'omniglot'} yourself, "
                                       "or give --data-dir (task.data_dir) a folder D that has D/omniglot/images_evaluation.zip")
    assert list((tmp_path / "data" / "omniglot").iterdir()) == []


# --------------------------------------------------------------------------- unsafe, corrupt, wrong archives


def lake_on(tmp_path: Path, archive: Path) -> OmniglotConfig:
    return OmniglotConfig(split_scheme="lake", ways=2, background_archives=[str(archive)],
                          cache_dir=str(tmp_path / "cache"), download=False)


@pytest.mark.parametrize("entry", ["images_background/../../evil.png", "/tmp/evil.png", "..\\evil.png"])
def test_path_traversal_entry_is_refused(tmp_path, entry):
    archive = make_archive(tmp_path / "bad.zip", extra={entry: png_bytes()})
    with pytest.raises(DataError, match=re.escape(f"bad.zip: unsafe entry {entry!r}")):
        make_omniglot(lake_on(tmp_path, archive), "train")
    assert not (tmp_path / "cache").exists()


def test_truncated_archive_is_named_and_nothing_cached(shared_data, tmp_path):
    archive = tmp_path / "images_background.zip"
    data = (shared_data / "omniglot" / SMALL1).read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{archive}: not a readable zip archive"):
        make_omniglot(lake_on(tmp_path, archive), "train")
    assert not (tmp_path / "cache").exists()


def test_corrupt_archive_entry_is_named_and_nothing_cached(shared_data, tmp_path):
    archive = tmp_path / "images_background.zip"
    data = bytearray((shared_data / "omniglot" / SMALL1).read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = [i for i in zf.infolist() if i.filename.endswith(".png")][100]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the entry's compressed bytes
    data[start : start + 40] = bytes(40)
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{archive}: corrupt archive, entry {info.filename}"):
        make_omniglot(lake_on(tmp_path, archive), "train")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drawings": 19}, "Alpha/character01 has 19 PNGs, expected 20"),
        ({"size": 64}, "images_background/Alpha/character01/0001_01.png is 64x64, expected 105x105"),
        ({"n_chars": 0}, "it holds no PNG images"),
        ({"extra": {"flat.png": b""}}, "expected <top>/<alphabet>/<character>/<image>.png, got 'flat.png'"),
    ],
)
def test_structurally_wrong_archive_is_refused(tmp_path, kwargs, message):
    archive = make_archive(tmp_path / "x.zip", **kwargs)
    with pytest.raises(DataError, match=f"not an Omniglot archive: {message}"):
        make_omniglot(lake_on(tmp_path, archive), "train")


def test_overlapping_archives_are_refused(shared_data, small_cache):
    cfg = small_cfg(shared_data, small_cache, background_archives=[SMALL1, "original/images_background_small2.zip"])
    with pytest.raises(DataError, match="character Greek/character01 is in both"):
        make_omniglot(cfg, "train")


# --------------------------------------------------------------------------- Lake's one-shot challenge


def lake_cfg(shared_data, cache, **kw) -> OmniglotConfig:
    """The challenge's test episodes: 20-way 1-shot within one evaluation alphabet, two drawers."""
    kw = {"split_scheme": "lake", "data_dir": str(shared_data), "cache_dir": str(cache), "download": False,
          "ways": 20, "shots": 1, "queries": 1, "within_alphabet": "eval", "same_drawers": "eval",
          "eval_rotate": False, **kw}
    return OmniglotConfig(**kw)


def alphabets_in(archive: Path) -> set[str]:
    """The alphabets of an archive, read from its entry names (independently of the loader)."""
    with zipfile.ZipFile(archive) as zf:
        return {n.split("/")[1] for n in zf.namelist() if n.endswith(".png")}


def test_challenge_episodes_are_within_one_alphabet_and_two_drawers(shared_data, full_cache):
    src = make_omniglot(lake_cfg(shared_data, full_cache), "test")
    data = src.dataset
    assert data.n_classes == 659 and not any("rot" in n for n in data.class_names)  # no rotations at test time
    s_ids, s_y, q_ids, q_y = src.sample_indices(400, torch.Generator().manual_seed(0))
    seen, drawer_pairs = set(), set()
    for t in range(400):
        support, query = data.labels[s_ids[t]], data.labels[q_ids[t]]
        assert len(set(support.tolist())) == 20 and set(query.tolist()) == set(support.tolist())
        label_of = dict(zip(support.tolist(), s_y[t].tolist()))
        assert [label_of[c] for c in query.tolist()] == q_y[t].tolist()  # a query's label is its support's
        alphabets = {data.class_names[c].split("/")[0] for c in support.tolist()}
        assert len(alphabets) == 1  # 20 characters of one alphabet
        seen |= alphabets
        s_drawers, q_drawers = set(data.sources[s_ids[t]].tolist()), set(data.sources[q_ids[t]].tolist())
        assert len(s_drawers) == 1 and len(q_drawers) == 1 and s_drawers != q_drawers  # one drawer each, different
        drawer_pairs.add((*s_drawers, *q_drawers))
    assert seen == alphabets_in(shared_data / "omniglot" / "images_evaluation.zip")  # every alphabet is reached
    assert len(drawer_pairs) > 150  # of the 380 ordered pairs of drawers

    # a source is the drawing number _KK of the archive: compare a sampled image with its PNG
    i = int(s_ids[0, 0])
    char, kk = data.class_names[int(data.labels[i])], int(data.sources[i]) + 1
    with zipfile.ZipFile(shared_data / "omniglot" / "images_evaluation.zip") as zf:
        (entry,) = [n for n in zf.namelist() if n.startswith(f"images_evaluation/{char}/") and n.endswith(f"_{kk:02d}.png")]
        png = Image.open(io.BytesIO(zf.read(entry))).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    assert torch.equal(data.images[i, 0], 255 - torch.from_numpy(numpy_of(png)))

    # training episodes stay random under "eval", and are drawn within an alphabet (and rotation) under "always"
    def alphabets_per_episode(when: str) -> list[int]:
        train = make_omniglot(lake_cfg(shared_data, full_cache, within_alphabet=when, queries=5), "train")
        ids = train.sample_indices(50, torch.Generator().manual_seed(1))[0]
        names = train.dataset.class_names
        return [len({names[c].split("/")[0] + names[c][-7:] for c in train.dataset.labels[row].tolist()}) for row in ids]

    assert min(alphabets_per_episode("eval")) > 5
    assert set(alphabets_per_episode("always")) == {1}


def numpy_of(image):
    import numpy as np

    return np.asarray(image).copy()


@pytest.mark.parametrize("preset", ["oneshot-omniglot-lake-28", "oneshot-omniglot-lake-32", "oneshot-omniglot-lake-64"])
def test_challenge_recipes_keep_what_was_measured_to_help(preset):
    """The one-shot recipes (docs/results.md): drawings cut around their strokes, training episodes
    within one alphabet with affine distortions, test episodes in 9 shifts, the measured training
    lengths, input sizes and distances; the protocol itself (Lake split, 20-way 1-shot within an alphabet by two drawers, no
    rotations) from their base."""
    from metagrad.config import load_config

    cfg = load_config(preset, [])
    task = cfg.task.hp
    assert (task.crop, task.within_alphabet, task.augment, task.eval_augment) == ("ink", "always", "affine", "shifts_both")
    assert (task.split_scheme, task.train_on, task.eval_ways, task.eval_shots, task.same_drawers, task.eval_rotate) == (
        "lake", "trainval", 20, 1, "eval", False)
    lengths = {"oneshot-omniglot-lake-28": (16000, 4000), "oneshot-omniglot-lake-32": (16000, 4000),
               "oneshot-omniglot-lake-64": (20000, 5000)}
    assert (cfg.train.iterations, cfg.train.lr_step) == lengths[preset]
    inputs = {"oneshot-omniglot-lake-28": (28, 4, []), "oneshot-omniglot-lake-32": (32, 4, [64, 64, 128, 256]),
              "oneshot-omniglot-lake-64": (64, 5, [64, 64, 64, 128, 256])}  # image size, Conv blocks, their widths ([]: 64 in each)
    assert (task.image_size, cfg.model.hp.blocks, list(cfg.model.hp.widths)) == inputs[preset]
    distance = {"oneshot-omniglot-lake-28": "euclidean", "oneshot-omniglot-lake-32": "euclidean",
                "oneshot-omniglot-lake-64": "local"}  # the GPU recipe: local gained 1.2-1.6 points at 32 and 64 px
    assert (cfg.learner.hp.distance, cfg.learner.hp.radius) == (distance[preset], 1)


def test_challenge_training_and_validation_never_see_the_evaluation_alphabets(shared_data, full_cache):
    root = shared_data / "omniglot"
    evaluation, background = alphabets_in(root / "images_evaluation.zip"), alphabets_in(root / "images_background.zip")
    assert len(evaluation) == 20 and len(background) == 30
    test_images = make_omniglot(lake_cfg(shared_data, full_cache, eval_rotate=None), "test").dataset.images
    test_pixels = {x.numpy().tobytes() for x in test_images}  # every rotation of every evaluation drawing
    for train_on in ("train", "trainval"):
        for split in ("train", "val"):
            data = make_omniglot(lake_cfg(shared_data, full_cache, train_on=train_on, within_alphabet="always"), split).dataset
            alphabets = {n.split("/")[0] for n in data.class_names}
            assert alphabets <= background and not alphabets & evaluation, (train_on, split)
            assert {g.split("/")[0] for g in data.class_groups} == alphabets
            assert not any(x.numpy().tobytes() in test_pixels for x in data.images), (train_on, split)
            expected = {"train": background - set(omniglot.LAKE_VAL_ALPHABETS), "val": set(omniglot.LAKE_VAL_ALPHABETS)}
            assert alphabets == (background if (train_on, split) == ("trainval", "train") else expected[split])


def test_group_and_source_options_need_the_data_for_them():
    n_classes, per_class = 10, 6
    plain = ImageClassDataset(torch.zeros(n_classes * per_class, 1, 2, 2, dtype=torch.uint8),
                              torch.arange(n_classes).repeat_interleave(per_class), [f"c{i}" for i in range(n_classes)])
    with pytest.raises(ConfigError, match="has no class groups"):
        EpisodeSampler(plain, 5, 1, 1, within_group=True)
    with pytest.raises(ConfigError, match="does not record who made each image"):
        EpisodeSampler(plain, 5, 1, 1, shared_sources=True)
    grouped = ImageClassDataset(plain.images, plain.labels, plain.class_names, class_groups=["a"] * 4 + ["b"] * 6,
                                sources=torch.arange(per_class).repeat(n_classes))
    with pytest.raises(ConfigError, match=r"7-way tasks within one group need a group of 7 classes, but the largest group of dataset \(b\) has 6"):
        EpisodeSampler(grouped, 7, 1, 1, within_group=True)
    src = EpisodeSampler(grouped, 5, 2, 1, within_group=True, shared_sources=True)
    s_ids, _, q_ids, _ = src.sample_indices(300, torch.Generator().manual_seed(0))
    assert set(grouped.labels[s_ids].flatten().tolist()) == set(range(4, 10))  # only group b has 5 classes
    assert src.notes == ["dataset: 1 of 2 class groups have fewer than 5 classes (a), so their 4 of 10 classes "
                         "are never in a 5-way task"]
    assert EpisodeSampler(grouped, 4, 1, 1, within_group=True).notes == []  # every group is drawn
    for s, q in zip(grouped.sources[s_ids], grouped.sources[q_ids]):
        assert len(set(s.tolist())) == 2 and len(set(q.tolist())) == 1 and not set(s.tolist()) & set(q.tolist())
    again = EpisodeSampler(grouped, 5, 2, 1, within_group=True, shared_sources=True)
    assert all(map(torch.equal, again.sample_indices(300, torch.Generator().manual_seed(0)),
                   src.sample_indices(300, torch.Generator().manual_seed(0))))  # the same seed, the same tasks
    twice = ImageClassDataset(plain.images, plain.labels, plain.class_names, sources=torch.arange(per_class).repeat(n_classes) // 2)
    with pytest.raises(DataError, match="every class needs exactly one image from each of its 3 sources"):
        EpisodeSampler(twice, 5, 1, 1, shared_sources=True)


def test_training_says_which_alphabets_are_too_small_for_its_episodes(shared_data, full_cache, tmp_path, capsys):
    from metagrad.cli import main

    sets = [f"task.data_dir={shared_data}", f"task.cache_dir={full_cache}", "task.download=false",
            f'task.background_archives=["{SMALL1}"]', "task.within_alphabet=always", "task.ways=25",
            "task.eval_ways=5", "model.channels=8", "train.iterations=1", "train.eval_every=0",
            "train.eval_tasks=2", "train.test_tasks=2"]
    assert main(["train", "--preset", "oneshot-omniglot-lake", "--out", str(tmp_path / "run"),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    # the small archive's five alphabets (trainval): Balinese and Greek (24 characters) and Early_Aramaic (22) are
    # too small for 25 ways, Korean (40) and Latin (26) are not; each in 4 rotations
    assert ("note: the Omniglot lake train split: 12 of 20 class groups have fewer than 25 classes (Balinese/rot000, "
            "Balinese/rot090, ...), so their 280 of 544 classes are never in a 25-way task") in "".join(capsys.readouterr())


def test_polarity_is_flipped_only_for_line_drawings_on_the_other_ground(shared_data, full_cache):
    from metagrad.tasks.images import opposite_polarity

    assert make_omniglot(lake_cfg(shared_data, full_cache), "test").background == 0.0  # light strokes on black
    paper = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    paper[:, :, 10:14] = 0  # dark strokes on white
    photos = torch.randint(40, 200, (4, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert opposite_polarity(0.0, paper) and opposite_polarity(1.0, 255 - paper)
    assert not opposite_polarity(0.0, 255 - paper) and not opposite_polarity(1.0, paper)
    assert not opposite_polarity(0.0, photos) and not opposite_polarity(0.45, paper) and not opposite_polarity(None, paper)
