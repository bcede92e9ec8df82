"""CIFAR-FS, FC100 and CUB-200-2011 on small synthetic archives built here in each dataset's exact
on-disk layout: shipped splits, episodes, the cache, and every bad file as one clear line."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metagrad.cli import main
from metagrad.errors import DataError
from metagrad.registry import TASKS
from metagrad.tasks import cifar, cub, files, store
from metagrad.tasks.cifar import Cifar100Config, cifar_dataset
from metagrad.tasks.cub import CubConfig, cub_dataset
from test_data_layer import RunsCode, make_tar
from test_split_files import CIFAR100_SUPERCLASSES, FINE_TO_SUPER

FINE = sorted(FINE_TO_SUPER)  # CIFAR-100's fine_label_names are alphabetical
COARSE = sorted(CIFAR100_SUPERCLASSES)
PER_PART = {"train": 2, "test": 1}  # images per class in each batch (600 = 500 + 100 in the real archive)


# --------------------------------------------------------------------------- CIFAR-100 python archive


def cifar_batch(part: str, names: list[str]) -> bytes:
    """A CIFAR-100 batch pickled as Python 2 did (protocol 2, bytes keys). Pixel values say what
    each image is: channel 0 = its fine label, channel 1 = its number in the class, channel 2 = the part."""
    n = PER_PART[part]
    rows, fine = [], []
    for label in range(len(names)):
        for k in range(n):
            image = np.empty((3, 32, 32), np.uint8)
            image[0], image[1], image[2] = label, k, ("train", "test").index(part)
            rows.append(image.reshape(-1))
            fine.append(label)
    order = np.random.default_rng(0).permutation(len(rows))  # the real batches are not sorted by class
    return pickle.dumps({
        b"filenames": [f"img_{i}.png".encode() for i in order], b"batch_label": f"{part} batch".encode(),
        b"fine_labels": [fine[i] for i in order], b"coarse_labels": [COARSE.index(FINE_TO_SUPER.get(names[fine[i]], COARSE[0])) for i in order],
        b"data": np.stack([rows[i] for i in order]),
    }, protocol=2)


def make_cifar(data_dir: Path, names: list[str] = FINE, replace: dict[str, bytes] | None = None, extra=None) -> Path:
    """<data_dir>/cifar100/cifar-100-python.tar.gz with cifar-100-python/{train,test,meta}."""
    meta = pickle.dumps({b"fine_label_names": [n.encode() for n in names],
                         b"coarse_label_names": [c.encode() for c in COARSE]}, protocol=2)
    entries = {"cifar-100-python/file.txt~": b"", "cifar-100-python/meta": meta,
               "cifar-100-python/test": cifar_batch("test", names), "cifar-100-python/train": cifar_batch("train", names)}
    entries.update(replace or {})
    entries.update(extra or {})
    (data_dir / "cifar100").mkdir(parents=True, exist_ok=True)
    return make_tar(data_dir / "cifar100" / "cifar-100-python.tar.gz", entries)


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cifar-data")
    make_cifar(data)
    return data


def cifar_cfg(data: Path, cache: Path | None = None, **kw) -> Cifar100Config:
    kw = {"ways": 5, "shots": 1, "queries": 1, "download": False, **kw}
    return Cifar100Config(data_dir=str(data), cache_dir=str(cache) if cache else None, **kw)


def shipped(name: str) -> list[str]:
    return files.shipped_classes(name)


@pytest.mark.parametrize("benchmark,prefix,counts", [("cifar-fs", "cifarfs", (64, 16, 20)), ("fc100", "fc100", (60, 20, 20))])
def test_cifar_benchmarks_draw_episodes_of_their_shipped_classes(cifar_data, tmp_path, benchmark, prefix, counts):
    cfg = cifar_cfg(cifar_data, tmp_path / "cache")
    seen = []
    for split, n in zip(("train", "val", "test"), counts):
        data = cifar_dataset(cfg, benchmark, split)
        assert data.class_names == shipped(f"{prefix}_{split}") and data.n_classes == n
        assert data.images.shape == (3 * n, 3, 32, 32) and torch.equal(data.counts(), torch.full((n,), 3))
        # every image is one of its class's own: fine label in channel 0, train/test part in channel 2
        fine = torch.tensor([FINE.index(name) for name in data.class_names])
        assert torch.equal(data.images[:, 0, 0, 0].long(), fine[data.labels])
        assert sorted(data.images[:, 2, 0, 0].tolist()) == sorted([0, 0, 1] * n)
        batch = TASKS.get(benchmark).factory(cfg, split).sample(4, torch.Generator().manual_seed(0))
        assert batch.support_x.shape == (4, 5, 3, 32, 32) and batch.query_x.shape == (4, 5, 3, 32, 32)
        seen.append(set(data.class_names))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]) and set().union(*seen) == set(FINE)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(f"{benchmark}.{s}.32px.cache" for s in ("test", "train", "val"))


def test_cifar_episodes_hold_images_of_the_drawn_classes_only(cifar_data, tmp_path):
    sampler = cifar.make_cifar_fs(cifar_cfg(cifar_data, tmp_path / "cache"), "test")
    batch = sampler.sample(8, torch.Generator().manual_seed(3))
    test_labels = {FINE.index(c) for c in shipped("cifarfs_test")}
    fine = (batch.support_x[:, :, 0, 0, 0] * 255).round().long()  # [B, N*K]: the fine label of each image
    for b in range(8):
        assert set(fine[b].tolist()) <= test_labels and len(set(fine[b].tolist())) == 5
        for y in range(5):  # one label, one class
            assert len(set(fine[b][batch.support_y[b] == y].tolist())) == 1


def test_cifar_second_load_reads_the_cache_only(cifar_data, tmp_path, monkeypatch):
    cfg = cifar_cfg(cifar_data, tmp_path / "cache")
    first = cifar_dataset(cfg, "fc100", "val")

    def refuse(*a, **k):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(cifar, "load_data_pickle", refuse)
    monkeypatch.setattr(cifar, "archive_files", refuse)
    again = cifar_dataset(cfg, "fc100", "val")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.class_names == first.class_names
    with pytest.raises(AssertionError, match="read again"):  # another size is another cache file
        cifar_dataset(cifar_cfg(cifar_data, tmp_path / "cache", image_size=16), "fc100", "val")


def test_cifar_other_sizes_are_resized(cifar_data, tmp_path):
    data = cifar_dataset(cifar_cfg(cifar_data, tmp_path / "cache", image_size=20), "cifar-fs", "val")
    assert data.images.shape == (48, 3, 20, 20)
    fine = torch.tensor([FINE.index(name) for name in data.class_names])
    assert torch.equal(data.images[:, 0].amin(dim=(1, 2)).long(), fine[data.labels])  # a flat image stays flat
    assert torch.equal(data.images[:, 0].amax(dim=(1, 2)).long(), fine[data.labels])


def assert_one_line_and_nothing_cached(excinfo, cache: Path, *needles: str):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("case", ["code", "truncated", "zip-slip", "missing class", "not cifar", "bad batch"])
def test_bad_cifar_archives_are_one_line_and_cache_nothing(tmp_path, case, capfd):
    data, cache = tmp_path / "data", tmp_path / "cache"
    if case == "code":
        path = make_cifar(data, replace={"cifar-100-python/meta": pickle.dumps({b"fine_label_names": RunsCode()}, protocol=2)})
        needles = ("cifar-100-python/meta", "refusing to unpickle")
    elif case == "truncated":
        path = make_cifar(data)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        needles = (str(path), "corrupt")
    elif case == "zip-slip":
        path = make_cifar(data, extra={"cifar-100-python/../../evil": b"x"})
        needles = ("unsafe entry", "../../evil")
    elif case == "missing class":
        path = make_cifar(data, names=[("apricot" if n == "apple" else n) for n in FINE])
        needles = ("has no fine class apple",)
    elif case == "not cifar":
        (data / "cifar100").mkdir(parents=True)
        path = make_tar(data / "cifar100" / "cifar-100-python.tar.gz", {"cifar-10-batches-py/data_batch_1": b"x"})
        needles = ("not the CIFAR-100 python archive", "cifar-100-python/meta")
    else:
        bad = pickle.dumps({b"data": np.zeros((3, 10), np.uint8), b"fine_labels": [0, 1, 2]}, protocol=2)
        path = make_cifar(data, replace={"cifar-100-python/test": bad})
        needles = ("cifar-100-python/test is not a CIFAR-100 batch",)
    with pytest.raises(DataError) as excinfo:
        cifar_dataset(cifar_cfg(data, cache), "cifar-fs", "train")
    assert_one_line_and_nothing_cached(excinfo, cache, *needles)
    assert "pwned" not in capfd.readouterr().out
    assert sorted(p.name for p in path.parent.iterdir()) == ["cifar-100-python.tar.gz"]  # nothing extracted or left


def test_a_missing_cifar_archive_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "download", lambda *a: pytest.fail("download=false downloaded"))
    with pytest.raises(DataError) as excinfo:
        cifar_dataset(cifar_cfg(tmp_path), "fc100", "test")
    msg = str(excinfo.value)
    assert msg == (f"the CIFAR-100 python archive is missing: put cifar-100-python.tar.gz in {tmp_path / 'cifar100'} "
                   "(or set task.download=true to fetch it)")


def test_a_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    calls = []

    def bad_md5(url, dest, md5):
        calls.append((url, dest, md5))
        raise DataError(f"downloaded {dest.name} from {url} has md5 0, expected {md5}; nothing was saved")

    monkeypatch.setattr(files, "download", bad_md5)
    with pytest.raises(DataError) as excinfo:
        cifar_dataset(cifar_cfg(tmp_path, download=True), "fc100", "test")
    assert calls == [(cifar.URL, tmp_path / "cifar100" / cifar.ARCHIVE, "eb9058c3a382ffc7106e4002c42a8d85")]
    assert str(excinfo.value).endswith(f"nothing was saved; put cifar-100-python.tar.gz in {tmp_path / 'cifar100'} yourself")


# --------------------------------------------------------------------------- CUB-200-2011


CUB_SPLITS = {"train": shipped("cub_train")[:4], "val": shipped("cub_val")[:2], "test": shipped("cub_test")[:2]}
CUB_CLASSES = sorted(c for cs in CUB_SPLITS.values() for c in cs)
COLORS = {c: ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 100) % 256) for i, c in enumerate(CUB_CLASSES)}


def jpeg(color, size=(20, 14), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def cub_entries(classes=CUB_CLASSES, skip_images=(), corrupt=None, listed_only=()) -> dict[str, bytes]:
    """CUB_200_2011/... as the authors' archive: images/<class>/<file>.jpg (3 + class number % 3 per
    class, one grayscale), then classes.txt, images.txt, image_class_labels.txt (after the images)."""
    entries, images_txt, labels_txt = {"attributes.txt": b"1 has_bill_shape::curved\n"}, [], []
    all_classes = sorted(set(classes) | set(listed_only))
    for cid, name in enumerate(all_classes, 1):
        n = 3 + int(name[:3]) % 3
        for k in range(n):
            file = f"{name}/{name[4:]}_{k:04d}_{cid}.jpg"
            images_txt.append(file)
            labels_txt.append(cid)
            if name in classes and file not in skip_images:
                data = jpeg(COLORS.get(name, (0, 0, 0)), mode="L" if k == 1 else "RGB")
                entries[f"CUB_200_2011/images/{file}"] = (corrupt or {}).get(file, data)
    entries["CUB_200_2011/classes.txt"] = "".join(f"{i} {c}\n" for i, c in enumerate(all_classes, 1)).encode()
    entries["CUB_200_2011/images.txt"] = "".join(f"{i} {f}\n" for i, f in enumerate(images_txt, 1)).encode()
    entries["CUB_200_2011/image_class_labels.txt"] = "".join(f"{i} {c}\n" for i, c in enumerate(labels_txt, 1)).encode()
    entries["CUB_200_2011/README"] = b"CUB-200-2011\n"
    return entries


def make_cub(data_dir: Path, entries: dict[str, bytes] | None = None) -> Path:
    (data_dir / "cub").mkdir(parents=True, exist_ok=True)
    return make_tar(data_dir / "cub" / "CUB_200_2011.tgz", cub_entries() if entries is None else entries)


@pytest.fixture(autouse=True)
def small_cub_splits(monkeypatch):
    """The shipped CUB lists cut to a few classes each (the archive here holds only those)."""
    monkeypatch.setattr(cub, "split_classes", lambda split: CUB_SPLITS[split])


@pytest.fixture(scope="module")
def cub_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cub-data")
    make_cub(data)
    return data


def cub_cfg(data: Path, cache: Path | None = None, **kw) -> CubConfig:
    kw = {"ways": 2, "shots": 1, "queries": 2, "image_size": 12, "download": False, **kw}
    return CubConfig(data_dir=str(data), cache_dir=str(cache) if cache else None, **kw)


def image_count(name: str) -> int:
    return 3 + int(name[:3]) % 3


def test_cub_draws_episodes_of_the_split_classes_at_the_configured_size(cub_data, tmp_path):
    cfg = cub_cfg(cub_data, tmp_path / "cache")
    for split, classes in CUB_SPLITS.items():
        data = cub_dataset(cfg, split)
        assert data.class_names == classes and data.images.shape[1:] == (3, 12, 12)
        assert data.counts().tolist() == [image_count(c) for c in classes]  # the counts differ by class
        for c, name in enumerate(classes):  # each image is its own class's colour (JPEG: nearly)
            mean = data.images[data.labels == c].float().mean(dim=(2, 3))  # [n, 3]
            rgb = torch.tensor(COLORS[name], dtype=torch.float32)
            gray = rgb[0]  # the grayscale JPEG of the class (its second image) has the red value
            close = [(m - rgb).abs().max() < 4 or (m - gray).abs().max() < 4 for m in mean]
            assert all(close), (name, mean)
        batch = cub.make_cub(cfg, split).sample(3, torch.Generator().manual_seed(0))
        assert batch.support_x.shape == (3, 2, 3, 12, 12) and batch.query_x.shape == (3, 4, 3, 12, 12)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cub.test.12px.cache", "cub.train.12px.cache", "cub.val.12px.cache"]


def test_cub_reads_the_extracted_folder_alike(cub_data, tmp_path):
    folder = tmp_path / "data" / "cub"
    folder.mkdir(parents=True)
    with tarfile.open(cub_data / "cub" / "CUB_200_2011.tgz") as tf:
        tf.extractall(folder, filter="data")
    from_folder = cub_dataset(cub_cfg(tmp_path / "data", tmp_path / "c1"), "train")
    from_archive = cub_dataset(cub_cfg(cub_data, tmp_path / "c2"), "train")
    order = lambda d: torch.argsort(d.labels * 1000 + torch.arange(len(d.labels)))  # noqa: E731
    assert torch.equal(from_folder.images[order(from_folder)], from_archive.images[order(from_archive)])


def test_cub_second_load_decodes_nothing(cub_data, tmp_path, monkeypatch):
    cfg = cub_cfg(cub_data, tmp_path / "cache")
    first = cub_dataset(cfg, "val")
    monkeypatch.setattr(cub, "read_image", lambda *a, **k: pytest.fail("decoded again"))
    monkeypatch.setattr(cub, "archive_files", lambda *a, **k: pytest.fail("read the archive again"))
    again = cub_dataset(cfg, "val")
    assert torch.equal(again.images, first.images) and again.class_names == first.class_names


def test_a_read_only_data_folder_caches_in_the_user_cache(cub_data, cifar_data, tmp_path, monkeypatch):
    shared = {cub_data / "cub", cifar_data / "cifar100"}
    real_access = store.os.access
    monkeypatch.setattr(store.os, "access", lambda p, mode: False if Path(p) in shared else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    before = {f: sorted(p.name for p in f.iterdir()) for f in shared}
    cub_dataset(cub_cfg(cub_data), "test")
    cifar_dataset(cifar_cfg(cifar_data), "cifar-fs", "val")
    assert {f: sorted(p.name for p in f.iterdir()) for f in shared} == before
    made = sorted(p.name for p in (tmp_path / "user-cache" / "metagrad" / "preprocessed").glob("*/*.cache"))
    assert made == ["cifar-fs.val.32px.cache", "cub.test.12px.cache"]


def corrupted_entries():
    one, two = (f"{CUB_SPLITS['train'][0]}/{CUB_SPLITS['train'][0][4:]}_{k:04d}_1.jpg" for k in (0, 2))
    good = jpeg((10, 20, 30))
    return cub_entries(corrupt={one: b"not a jpeg at all", two: good[: len(good) // 2]}), one, two


@pytest.mark.parametrize("case", ["corrupt images", "missing and empty classes", "missing image", "truncated archive",
                                  "zip-slip", "no images.txt"])
def test_bad_cub_files_are_one_line_by_name_and_cache_nothing(tmp_path, case):
    data, cache = tmp_path / "data", tmp_path / "cache"
    first, second = CUB_SPLITS["train"][:2]
    if case == "corrupt images":
        entries, one, two = corrupted_entries()
        needles = ("2 corrupt or truncated images", one, two, "nothing was cached")
    elif case == "missing and empty classes":
        # `first` is in neither classes.txt nor images/; `second` is listed but has no images
        entries = cub_entries(classes=[c for c in CUB_CLASSES if c not in (first, second)], listed_only=[second])
        needles = (f"1 missing classes ({first})", f"1 empty classes ({second})")
    elif case == "missing image":
        gone = f"{second}/{second[4:]}_0001_{CUB_CLASSES.index(second) + 1}.jpg"
        entries = cub_entries(skip_images=[gone])
        needles = (f"1 listed images missing ({gone})",)
    elif case == "truncated archive":
        path = make_cub(data)
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        entries, needles = None, (str(path), "corrupt")
    elif case == "zip-slip":
        entries = {**cub_entries(), "CUB_200_2011/images/../../../evil.jpg": jpeg((1, 2, 3))}
        needles = ("unsafe entry", "evil.jpg", "refusing to read this archive")
    else:
        entries = {k: v for k, v in cub_entries().items() if not k.endswith("/images.txt")}
        needles = ("not CUB-200-2011: it has no CUB_200_2011/images.txt",)
    if entries is not None:
        make_cub(data, entries)
    with pytest.raises(DataError) as excinfo:
        cub_dataset(cub_cfg(data, cache), "train")
    assert_one_line_and_nothing_cached(excinfo, cache, *needles)
    assert sorted(p.name for p in (data / "cub").iterdir()) == ["CUB_200_2011.tgz"]


def test_a_missing_cub_archive_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "download", lambda *a: pytest.fail("download=false downloaded"))
    with pytest.raises(DataError) as excinfo:
        cub_dataset(cub_cfg(tmp_path), "train")
    folder = tmp_path / "cub"
    assert str(excinfo.value) == (f"the CUB-200-2011 archive (or its extracted folder {folder / 'CUB_200_2011'}) is missing: "
                                  f"put CUB_200_2011.tgz in {folder} (or set task.download=true to fetch it)")


def test_cub_downloads_the_authors_archive_with_its_md5(tmp_path, monkeypatch):
    def fake_download(url, dest, md5):
        assert (url, md5) == (cub.URL, "97eceeb196236b17998738112f37df78")
        dest.parent.mkdir(parents=True, exist_ok=True)
        make_tar(dest, cub_entries())
        return dest

    monkeypatch.setattr(files, "download", fake_download)
    data = cub_dataset(cub_cfg(tmp_path, tmp_path / "cache", download=True), "val")
    assert data.class_names == CUB_SPLITS["val"]


# --------------------------------------------------------------------------- command line


def test_cli_trains_the_cifarfs_preset_on_the_synthetic_archive(cifar_data, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code = main(["train", "--preset", "protonet-cifarfs-5w1s", "--data-dir", str(cifar_data), "--out", str(out_dir),
                 "--quiet", "--set", "train.iterations=2", "--set", "train.eval_every=2", "--set", "train.eval_tasks=2",
                 "--set", "train.test_tasks=2", "--set", "train.eval_batch=2", "--set", "task.queries=1",
                 "--set", "task.eval_queries=1", "--set", f"task.cache_dir={tmp_path / 'cache'}",
                 "--set", "model.channels=8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert (out_dir / "checkpoint.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"cifar-fs.{s}.32px.cache" for s in ("test", "train", "val")]
