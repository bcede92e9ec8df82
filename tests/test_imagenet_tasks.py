"""mini-ImageNet and tieredImageNet from each form of their files, on small synthetic trees and
archives in the exact on-disk layouts (the shipped split lists narrowed to a few classes)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metagrad.errors import DataError
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.tasks import miniimagenet as mi
from metagrad.tasks import store
from metagrad.tasks.miniimagenet import ImageNetConfig, imagenet_dataset, make_mini_imagenet, make_tiered_imagenet

SPLITS = ("train", "val", "test")
MINI_CLASSES = {"train": ["n01000001", "n01000002", "n01000003"], "val": ["n02000001", "n02000002"], "test": ["n03000001", "n03000002"]}
TIERED = {"train": [("n04000001", "n09000001"), ("n04000002", "n09000001"), ("n04000003", "n09000002")],
          "val": [("n05000001", "n09000003"), ("n05000002", "n09000003")], "test": [("n06000001", "n09000004"), ("n06000002", "n09000004")]}
NUMBERS = [10, 102, 1004, 7, 55]  # the ILSVRC file numbers N of every class: sorted as integers 7, 10, 55, 102, 1004
PICK = [1, 3, 5]  # mini-ImageNet rows select the 1st, 3rd and 5th file by N: _7, _55, _1004


def jpeg(value: int, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def value_of(wnid: str, n: int) -> int:
    return (int(wnid[-3:]) * 37 + n * 11) % 200 + 20


def mini_rows(split):
    return [(f"{w}{k:08d}.jpg", w) for w in MINI_CLASSES[split] for k in PICK]


@pytest.fixture(autouse=True)
def small_splits(monkeypatch):
    monkeypatch.setattr(mi, "tiered_split", lambda split: TIERED[split])
    real = mi.mini_split
    monkeypatch.setattr(mi, "mini_split", lambda split, folder=None: real(split, folder) if folder is not None and (Path(folder) / f"{split}.csv").is_file() else mini_rows(split))


def cfg(tmp_path, **kw) -> ImageNetConfig:
    kw = {"ways": 2, "shots": 1, "queries": 1, "data_dir": str(tmp_path / "data"), **kw}
    return ImageNetConfig(**kw)


def all_wnids():
    return sorted({w for c in MINI_CLASSES.values() for w in c} | {w for rows in TIERED.values() for w, _ in rows})


def class_files(wnid):
    return {f"{wnid}_{n}.JPEG": jpeg(value_of(wnid, n)) for n in NUMBERS}


def make_tar(path: Path, entries: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tar_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_ilsvrc_tar(root: Path, wnids=None, inner=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    wnids = all_wnids() if wnids is None else wnids
    return make_tar(root / "ILSVRC2012_img_train.tar", {f"{w}.tar": tar_bytes((inner or class_files)(w)) for w in wnids})


def make_ilsvrc_folder(root: Path, wnids=None) -> Path:
    for w in all_wnids() if wnids is None else wnids:
        (root / "train" / w).mkdir(parents=True)
        for name, data in class_files(w).items():
            (root / "train" / w / name).write_bytes(data)
    return root


def cache_files(tmp_path):
    return sorted(p.name for p in tmp_path.rglob("*.cache*"))


# --------------------------------------------------------------------------- each form


def test_missing_dataset_names_the_files_and_folders(tmp_path):
    with pytest.raises(DataError) as e:
        imagenet_dataset(mi.MINI, cfg(tmp_path), "train")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("images/", "mini-imagenet-cache-train.pkl", str(tmp_path / "data" / "mini-imagenet"),
                   "ILSVRC2012_img_train.tar", "train/<wnid>/*.JPEG", str(tmp_path / "data" / "imagenet"), "cannot be downloaded"):
        assert needle in msg, needle
    with pytest.raises(DataError, match=r"val_images_png.pkl and val_labels.pkl in .*tiered-imagenet"):
        imagenet_dataset(mi.TIERED, cfg(tmp_path), "val")


def test_ravi_form_with_the_shipped_and_with_own_csvs(tmp_path):
    folder = tmp_path / "data" / "mini-imagenet"
    (folder / "images").mkdir(parents=True)
    for split in SPLITS:
        for name, w in mini_rows(split):
            (folder / "images" / name).write_bytes(jpeg(value_of(w, int(name[-8:-4]))))
    c = cfg(tmp_path)
    for split in SPLITS:
        data = imagenet_dataset(mi.MINI, c, split)
        assert data.class_names == MINI_CLASSES[split] and tuple(data.images.shape) == (len(mini_rows(split)), 3, 84, 84)
        assert data.counts().tolist() == [len(PICK)] * len(MINI_CLASSES[split])
    batch = make_mini_imagenet(c, "train").sample(3, torch.Generator().manual_seed(0))
    assert tuple(batch.support_x.shape) == (3, 2, 3, 84, 84) and batch.query_y.max() <= 1
    # the user's own CSV wins over the shipped list
    (folder / "val.csv").write_text("filename,label\n" + "".join(f"{f},{w}\n" for f, w in mini_rows("val")[:3]))
    assert imagenet_dataset(mi.MINI, c, "val").class_names == ["n02000001"]


def test_ravi_form_missing_images_are_named(tmp_path):
    (tmp_path / "data" / "mini-imagenet" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"^mini-ImageNet train: images missing from .* \(9\): n0100000100000001.jpg, .*nothing was cached$"):
        imagenet_dataset(mi.MINI, cfg(tmp_path), "train")
    assert cache_files(tmp_path) == []


def mini_pickle(split, bytes_keys=False, protocol=4):
    rows = mini_rows(split)
    image_data = np.stack([np.full((84, 84, 3), value_of(w, i), np.uint8) for i, (_, w) in enumerate(rows)])
    class_dict = {}
    for i, (_, w) in enumerate(rows):
        class_dict.setdefault(w.encode() if bytes_keys else w, []).append(i)
    data = {"image_data": image_data, "class_dict": class_dict}
    if bytes_keys:
        data = {k.encode(): v for k, v in data.items()}
    return pickle.dumps(data, protocol=protocol)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_mini_pickle_form(tmp_path, bytes_keys):
    folder = tmp_path / "data" / "mini-imagenet"
    folder.mkdir(parents=True)
    for split in SPLITS:
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(mini_pickle(split, bytes_keys, protocol=2 if bytes_keys else 4))
    for split in SPLITS:
        data = imagenet_dataset(mi.MINI, cfg(tmp_path), split)
        assert data.class_names == MINI_CLASSES[split] and data.counts().tolist() == [3] * len(MINI_CLASSES[split])
        assert int(data.images[0, 0, 40, 40]) == value_of(MINI_CLASSES[split][0], 0)
    assert cache_files(tmp_path) == [f"mini-imagenet-{s}-pickle.84px.cache" for s in sorted(SPLITS)]


def tiered_pickles(folder: Path, split: str, png_as_arrays=False, bytes_keys=False):
    rows = TIERED[split]
    cats = sorted({c for _, c in rows})
    pngs, specific, general = [], [], []
    for c, (w, cat) in enumerate(rows):
        for j in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (84, 84), (value_of(w, j),) * 3).save(buf, "PNG")
            pngs.append(np.frombuffer(buf.getvalue(), np.uint8) if png_as_arrays else buf.getvalue())
            specific.append(c)
            general.append(cats.index(cat))
    labels = {"label_specific": np.array(specific), "label_general": np.array(general),
              "label_specific_str": [w for w, _ in rows], "label_general_str": cats}
    if bytes_keys:
        labels = {k.encode(): v for k, v in labels.items()}
    (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
    (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))


@pytest.mark.parametrize("variant", [{}, {"png_as_arrays": True, "bytes_keys": True}])
def test_tiered_pickle_form_records_categories(tmp_path, variant):
    folder = tmp_path / "data" / "tiered-imagenet"
    folder.mkdir(parents=True)
    for split in SPLITS:
        tiered_pickles(folder, split, **variant)
    c = cfg(tmp_path)
    for split in SPLITS:
        data = imagenet_dataset(mi.TIERED, c, split)
        assert data.class_names == [w for w, _ in TIERED[split]] and data.class_groups == [g for _, g in TIERED[split]]
        assert data.counts().tolist() == [3] * len(TIERED[split])
    assert tuple(make_tiered_imagenet(c, "test").sample(2, torch.Generator()).query_x.shape) == (2, 2, 3, 84, 84)


@pytest.mark.parametrize("form", ["tar", "folder"])
def test_ilsvrc_forms_build_both_datasets(tmp_path, form):
    root = tmp_path / "data" / "imagenet"
    make_ilsvrc_tar(root) if form == "tar" else make_ilsvrc_folder(root)
    c = cfg(tmp_path)
    for split in SPLITS:
        mini = imagenet_dataset(mi.MINI, c, split)
        assert mini.class_names == MINI_CLASSES[split] and mini.counts().tolist() == [3] * len(MINI_CLASSES[split])
        tiered = imagenet_dataset(mi.TIERED, c, split)
        assert tiered.class_names == sorted(w for w, _ in TIERED[split]) and tiered.counts().tolist() == [5] * len(TIERED[split])
        assert tiered.class_groups == [g for _, g in sorted(TIERED[split])]
    assert {p.parent for p in tmp_path.rglob("*.cache")} == {root}


def test_ilsvrc_tar_and_folder_give_the_same_images(tmp_path):
    make_ilsvrc_tar(tmp_path / "a" / "imagenet")
    make_ilsvrc_folder(tmp_path / "b" / "imagenet")
    for dataset in (mi.MINI, mi.TIERED):
        a = imagenet_dataset(dataset, cfg(tmp_path, data_dir=str(tmp_path / "a")), "train")
        b = imagenet_dataset(dataset, cfg(tmp_path, data_dir=str(tmp_path / "b")), "train")
        order_a, order_b = torch.argsort(a.labels, stable=True), torch.argsort(b.labels, stable=True)
        assert torch.equal(a.images[order_a], b.images[order_b]) and a.class_names == b.class_names


def test_mini_selection_takes_the_kth_file_by_integer_number(tmp_path):
    make_ilsvrc_folder(tmp_path / "data" / "imagenet")
    data = imagenet_dataset(mi.MINI, cfg(tmp_path), "train")
    wnid = MINI_CLASSES["train"][0]
    got = data.images[data.labels == 0][:, 0, 8, 8].tolist()
    # PICK 1, 3, 5 of the numeric order 7, 10, 55, 102, 1004 (a string sort would give 10, 1004, 102, 55, 7)
    want = [int(store.read_image(jpeg(value_of(wnid, n)), 84, 3)[0, 8, 8]) for n in (7, 55, 1004)]
    assert got == want


def test_a_second_load_decodes_nothing(tmp_path, monkeypatch):
    make_ilsvrc_tar(tmp_path / "data" / "imagenet")
    first = imagenet_dataset(mi.TIERED, cfg(tmp_path), "val")

    def fail(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(mi, "read_image", fail)
    monkeypatch.setattr(mi, "archive_files", fail)
    again = imagenet_dataset(mi.TIERED, cfg(tmp_path), "val")
    assert torch.equal(first.images, again.images) and again.class_groups == first.class_groups


# --------------------------------------------------------------------------- broken files: one line, nothing cached


def one_line_and_nothing_cached(tmp_path, fn, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        fn()
    assert "\n" not in str(e.value)
    assert cache_files(tmp_path) == [], cache_files(tmp_path)


def test_a_corrupt_jpeg_is_named(tmp_path):
    bad = "n04000002"

    def inner(w):
        files = class_files(w)
        if w == bad:
            files[f"{w}_102.JPEG"] = files[f"{w}_102.JPEG"][:60]  # truncated JPEG
            files[f"{w}_7.JPEG"] = b"not a jpeg at all"
        return files

    make_ilsvrc_tar(tmp_path / "data" / "imagenet", inner=inner)
    one_line_and_nothing_cached(tmp_path, lambda: imagenet_dataset(mi.TIERED, cfg(tmp_path), "train"),
                                r"corrupt or truncated images \(2\): n04000002/n04000002_7.JPEG, n04000002/n04000002_102.JPEG; nothing was cached$")


@pytest.mark.parametrize("form", ["tar", "folder"])
def test_missing_and_empty_classes_and_missing_selected_images_are_named(tmp_path, form):
    root = tmp_path / "data" / "imagenet"
    wnids = [w for w in all_wnids() if w != "n01000002"]
    make_ilsvrc_tar(root, wnids) if form == "tar" else make_ilsvrc_folder(root, wnids)
    one_line_and_nothing_cached(tmp_path, lambda: imagenet_dataset(mi.MINI, cfg(tmp_path), "train"),
                                r"classes missing from .* \(1\): n01000002; nothing was cached$")
    root2 = tmp_path / "x" / "imagenet"
    few = lambda w: {k: v for k, v in class_files(w).items() if w != "n01000001" or k.endswith("_7.JPEG")}  # noqa: E731
    empty = lambda w: {} if w == "n01000003" else few(w)  # noqa: E731
    make_ilsvrc_tar(root2, inner=empty)
    one_line_and_nothing_cached(
        tmp_path, lambda: imagenet_dataset(mi.MINI, cfg(tmp_path, data_dir=str(tmp_path / "x")), "train"),
        r"missing selected images \(2\): n0100000100000003.jpg \(image 3 of n01000001's 1\), n0100000100000005.jpg .*; "
        r"empty classes \(1\): n01000003; nothing was cached$")


def test_a_truncated_tar_is_named(tmp_path):
    tar = make_ilsvrc_tar(tmp_path / "data" / "imagenet")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size * 2 // 3])
    one_line_and_nothing_cached(tmp_path, lambda: imagenet_dataset(mi.TIERED, cfg(tmp_path), "train"),
                                rf"{tar}.*(corrupt|truncated)")


def test_a_zip_slip_entry_is_refused(tmp_path):
    slip = lambda w: {"../../evil.JPEG": jpeg(1), **class_files(w)} if w == "n04000002" else class_files(w)  # noqa: E731
    make_ilsvrc_tar(tmp_path / "data" / "imagenet", inner=slip)
    one_line_and_nothing_cached(tmp_path, lambda: imagenet_dataset(mi.TIERED, cfg(tmp_path), "train"),
                                r"unsafe entry '\.\./\.\./evil\.JPEG'.*refusing to read this archive")
    assert not (tmp_path / "evil.JPEG").exists()


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capfd):
    folder = tmp_path / "data" / "mini-imagenet"
    folder.mkdir(parents=True)
    (folder / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": RunsCode(), "class_dict": {}}))
    one_line_and_nothing_cached(tmp_path, lambda: imagenet_dataset(mi.MINI, cfg(tmp_path), "train"),
                                r"mini-imagenet-cache-train.pkl: refusing to unpickle: it wants to run builtins.print")
    assert "pwned" not in capfd.readouterr().out


# --------------------------------------------------------------------------- Conv-4 flatten


def test_conv4_flatten_gives_channels_x_h_x_w_features():
    x = torch.rand(2, 3, 84, 84)
    maml = Conv4(Conv4Config(channels=32, pool="flatten"), 3, 5, size=(84, 84))
    assert maml.head.in_features == 800 and tuple(maml(x).shape) == (2, 5)
    proto = Conv4(Conv4Config(channels=64, pool="flatten"), 3, None, size=(84, 84))
    assert tuple(proto(x).shape) == (2, 1600)
    mean = Conv4(Conv4Config(channels=64), 3, None)
    assert tuple(mean(x).shape) == (2, 64)
    stride = Conv4(Conv4Config(channels=8, pool="flatten", downsample="stride"), 1, None, size=(28, 28))
    assert tuple(stride(torch.rand(2, 1, 28, 28)).shape) == (2, 8 * 2 * 2)


def test_conv4_flatten_under_vmap_equals_the_loop():
    from torch.func import functional_call, vmap

    net = Conv4(Conv4Config(channels=4, pool="flatten"), 3, 5, size=(20, 20)).double()
    params = {k: v.detach().clone().unsqueeze(0).repeat(3, *[1] * v.dim()) + 0.01 * torch.randn(3, *v.shape, dtype=torch.float64)
              for k, v in net.named_parameters()}
    x = torch.rand(3, 4, 3, 20, 20, dtype=torch.float64)
    batched = vmap(lambda p, xi: functional_call(net, p, (xi,)))(params, x)
    looped = torch.stack([functional_call(net, {k: v[i] for k, v in params.items()}, (x[i],)) for i in range(3)])
    assert torch.allclose(batched, looped)


# --------------------------------------------------------------------------- the command line


def test_cli_trains_protonet_on_a_synthetic_mini_imagenet(tmp_path, capsys):
    from metagrad.cli import main

    folder = tmp_path / "data" / "mini-imagenet"
    folder.mkdir(parents=True)
    for split in SPLITS:
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(mini_pickle(split))
    small = ["task.ways=2", "task.shots=1", "task.queries=1", "task.eval_ways=2", "task.eval_queries=1",
             "model.channels=4", "train.iterations=2", "train.eval_every=2", "train.eval_tasks=2", "train.test_tasks=2",
             "train.eval_batch=2", "train.checkpoint_every=2", "train.log_every=1", "task.image_size=20"]
    argv = ["train", "--preset", "protonet-miniimagenet-5w1s", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet"]
    code = main(argv + [a for s in small for a in ("--set", s)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (tmp_path / "run" / "report.json").is_file()
