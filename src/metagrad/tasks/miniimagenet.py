"""mini-ImageNet (Vinyals et al. 2016, Ravi & Larochelle's split) and tieredImageNet (Ren et al.
2018): N-way K-shot episodes of RGB images (84x84 by default) from the files a user has.

ImageNet cannot be downloaded for you, and the links to the preprocessed copies break every
year, so nothing is ever downloaded: each split is built from the first of these forms found.

mini-ImageNet (``<data_dir>/mini-imagenet/``):

a. **Ravi form**: ``images/`` holding ``<wnid>000000KK.jpg`` (the renamed 600 images per
   class) and the split CSVs ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``);
   without your own CSVs the shipped Ravi & Larochelle lists are used.
b. **pickle form**: ``mini-imagenet-cache-{train,val,test}.pkl`` (a dict with "image_data",
   uint8 [N, 84, 84, 3], and "class_dict", {wnid: [indices]}), as the learn2learn mirrors
   distribute them.

tieredImageNet (``<data_dir>/tiered-imagenet/``):

b. **pickle form**: ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded images) and
   ``{train,val,test}_labels.pkl`` (a dict with "label_specific", "label_general",
   "label_specific_str", "label_general_str"), as renmengye/few-shot-ssl-public distributes them.

Both, from your own ILSVRC-2012 training set (``task.imagenet_dir``, default
``<data_dir>/imagenet/``):

c. **ILSVRC form**: ``ILSVRC2012_img_train.tar`` (a tar of per-class tars ``<wnid>.tar`` of
   ``<wnid>_<N>.JPEG``; read once front to back, each class's tar in memory, nothing
   extracted) or its extracted folders ``train/<wnid>/*.JPEG`` (a symlink to them will do).
   tieredImageNet takes every image of each class in the shipped split lists. mini-ImageNet
   takes, for each row ``<wnid>0000KKKK.jpg`` of the split CSV, the K-th of the class's files
   sorted by the integer N (counted from 1): the mini-imagenet-tools convention
   (yaoyao-liu/mini-imagenet-tools, see metagrad/data/SPLITS.md); Ravi & Larochelle published
   no mapping, and the images it selects may differ from those of the distributed mini-ImageNet.

Pickles are read with :func:`files.load_data_pickle` (plain data only, never code; Python 2
pickles with byte-string keys included). Every image is decoded once with the shared decoder
(store.read_image: RGB, Pillow LANCZOS to ``image_size``) straight into a memory-mapped cache
file, one per (dataset, split, size, source form), ``<dataset>-<split>-<form>.<size>px.cache``
beside the source files (or in ``task.cache_dir``, or the user cache if that folder is
read-only); the cache records the sources' sizes and modification times and the split's list,
so it is rebuilt when they change. Missing classes, empty classes, missing selected images and
corrupt or truncated images are reported by name in one line, and nothing is cached then.

Classes are wnids. tieredImageNet records each class's high-level category as its group.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from ..registry import TASKS
from .files import archive_files, dataset_dir, load_data_pickle
from .images import EpisodeSampler, ImageClassDataset, episode_shape, split_augment
from .store import StoredImagesConfig, cache_file, cached_images, class_dataset, load_images, read_image, source_key

MINI, TIERED = "mini-imagenet", "tiered-imagenet"
TITLE = {MINI: "mini-ImageNet", TIERED: "tieredImageNet"}
CACHE_FORMAT = 1
ILSVRC_TAR = "ILSVRC2012_img_train.tar"
SHOWN = 8  # names listed in an error line before "and N more"


@dataclass
class ImageNetConfig(StoredImagesConfig):
    """Episodes of mini-ImageNet or tieredImageNet (``download`` is ignored: nothing can be fetched)."""

    imagenet_dir: str | None = None  # ILSVRC2012_img_train.tar or train/<wnid>/ here; None: <data_dir>/imagenet


# --------------------------------------------------------------------------- splits


def _read_csv(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if row]


def mini_split(split: str, folder: Path | None = None) -> list[tuple[str, str]]:
    """(filename, wnid) rows of mini-ImageNet's ``split``: ``<folder>/<split>.csv`` if present,
    else the shipped Ravi & Larochelle list."""
    own = Path(folder) / f"{split}.csv" if folder is not None else None
    text = own.read_text() if own is not None and own.is_file() else \
        (resources.files("metagrad") / "data" / f"miniimagenet_{split}.csv").read_text()
    rows = _read_csv(text)
    if rows and rows[0] == ["filename", "label"]:
        rows = rows[1:]
    return [(r[0], r[1]) for r in rows]


def tiered_split(split: str) -> list[tuple[str, str]]:
    """(class wnid, category wnid) rows of tieredImageNet's ``split`` (the shipped Ren et al. list)."""
    return [(r[0], r[1]) for r in _read_csv((resources.files("metagrad") / "data" / f"tieredimagenet_{split}.csv").read_text())]


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- problems and writing


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


class Problems:
    """What is wrong with a dataset's files, by kind, reported in one line."""

    def __init__(self, what: str):
        self.what, self.found = what, {}

    def add(self, kind: str, name: str) -> None:
        self.found.setdefault(kind, []).append(name)

    def check(self) -> None:
        if self.found:
            found = "; ".join(f"{kind} ({len(v)}): {_names(v)}" for kind, v in self.found.items())
            raise DataError(f"{self.what}: {found}; nothing was cached")


class Writer:
    """Images decoded into a cache build's ``out`` (a memory map, or an appender when the count is
    found while reading), their labels and their problems; progress on a tqdm bar."""

    def __init__(self, out, image_size: int, problems: Problems, total: int | None, desc: str):
        self.out, self.size, self.problems, self.labels = out, image_size, problems, []
        self.bar = tqdm(total=total, unit="img", desc=desc, disable=None)  # None: no bar without a terminal

    def put(self, label: int, source, name: str) -> None:
        try:
            if isinstance(source, np.ndarray):  # decoded pixels [H, W, 3]: through the same decoder, losslessly
                buf = io.BytesIO()
                Image.fromarray(source).save(buf, "BMP")
                source = buf.getvalue()
            image = read_image(source, self.size, 3, name)
        except DataError:
            self.problems.add("corrupt or truncated images", name)
            image = np.zeros((3, self.size, self.size), np.uint8)
        if isinstance(self.out, np.ndarray):
            self.out[len(self.labels)] = image
        else:
            self.out.append(image)
        self.labels.append(label)
        self.bar.update()

    def meta(self, class_names: list[str], class_groups: list[str] | None = None) -> dict:
        self.bar.close()
        self.problems.check()
        meta = {"class_names": class_names, "labels": self.labels}
        return meta | ({"class_groups": class_groups} if class_groups is not None else {})


# --------------------------------------------------------------------------- ILSVRC-2012 training set


def _image_number(name: str) -> int | None:
    """N of ``<wnid>_<N>.JPEG``, None for other names."""
    stem, _, ext = name.rpartition(".")
    number = stem.rpartition("_")[2]
    return int(number) if ext.lower() in ("jpeg", "jpg") and number.isdigit() else None


def ilsvrc_classes(root: Path, form: str, wanted: set[str], problems: Problems) -> Iterator[tuple[str, list[tuple[str, Callable[[], bytes]]]]]:
    """(wnid, [(file name, read)]) of each wanted class of the ILSVRC-2012 training set in
    ``root`` (``form`` "ilsvrc-tar": the archive, read once front to back, each class's tar in
    memory; "ilsvrc-folder": ``train/<wnid>/``), files sorted by their number N. Classes that
    are missing are reported (before anything is decoded), empty ones added to ``problems``."""
    def numbered(files):
        files = [(n, r) for n, r in files if _image_number(n) is not None]
        return sorted(files, key=lambda f: _image_number(f[0]))

    if form == "ilsvrc-folder":
        train = root / "train"
        missing = sorted(w for w in wanted if not (train / w).is_dir())
    else:
        tar = root / ILSVRC_TAR
        present = {parts[0][:-4] for parts, _ in archive_files(tar) if len(parts) == 1 and parts[0].endswith(".tar")}
        missing = sorted(wanted - present)
    if missing:
        problems.found[f"classes missing from {root / ('train' if form == 'ilsvrc-folder' else ILSVRC_TAR)}"] = missing
        problems.check()
    if form == "ilsvrc-folder":
        for wnid in sorted(wanted):
            paths = [p for p in (train / wnid).iterdir() if p.is_file() and not p.name.startswith(".")]
            yield wnid, numbered([(p.name, p.read_bytes) for p in paths])
        return
    for parts, read in archive_files(tar):
        wnid = parts[0][:-4]
        if len(parts) == 1 and parts[0].endswith(".tar") and wnid in wanted:
            inner = [(p[-1], r()) for p, r in archive_files(tar / parts[0], data=read())]
            yield wnid, numbered([(n, (lambda d=d: d)) for n, d in inner])


def _ilsvrc_fill(dataset: str, split: str, root: Path, form: str, image_size: int):
    """(shape, fill) building ``split`` of ``dataset`` from the ILSVRC-2012 training set."""
    what = f"{TITLE[dataset]} {split} from the ILSVRC-2012 training set in {root}"
    if dataset == MINI:
        rows = mini_split(split)
        classes = sorted({w for _, w in rows})
        selected = {w: [f for f, c in rows if c == w] for w in classes}
        shape, groups = (len(rows), 3, image_size, image_size), None
    else:
        rows = tiered_split(split)
        classes = [w for w, _ in sorted(rows)]
        groups = [c for _, c in sorted(rows)]
        shape = (None, 3, image_size, image_size)  # every image of each class: counted while reading
    index = {w: i for i, w in enumerate(classes)}

    def fill(out) -> dict:
        problems = Problems(what)
        writer = Writer(out, image_size, problems, shape[0], f"preprocessing {TITLE[dataset]} {split}")
        for wnid, files in ilsvrc_classes(root, form, set(classes), problems):
            if not files:
                problems.add("empty classes", wnid)
                continue
            if dataset == TIERED:
                chosen = [(f"{wnid}/{n}", r) for n, r in files]
            else:  # the K-th file by number N for <wnid>0000KKKK.jpg
                chosen = []
                for name in selected[wnid]:
                    k = int(name[len(wnid):].split(".")[0])
                    if not 1 <= k <= len(files):
                        problems.add("missing selected images", f"{name} (image {k} of {wnid}'s {len(files)})")
                        continue
                    chosen.append((f"{wnid}/{files[k - 1][0]} ({name})", files[k - 1][1]))
            for name, read in chosen:
                writer.put(index[wnid], read(), name)
        return writer.meta(classes, groups)

    return shape, fill


# --------------------------------------------------------------------------- preprocessed copies


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _dict(data, name: str, keys: tuple[str, ...]) -> dict:
    """A pickled dict with its keys as str (Python 2 pickles give bytes); DataError without ``keys``."""
    if not isinstance(data, dict):
        raise DataError(f"{name}: expected a dict with {', '.join(keys)}, got {type(data).__name__}")
    data = {_text(k): v for k, v in data.items()}
    absent = [k for k in keys if k not in data]
    if absent:
        raise DataError(f"{name}: not a {', '.join(keys)} dict (no {', '.join(absent)}; it has {', '.join(sorted(data)) or 'nothing'})")
    return data


def _mini_pickle_fill(path: Path, split: str, image_size: int):
    data = _dict(load_data_pickle(path.read_bytes(), str(path)), str(path), ("image_data", "class_dict"))
    images = data["image_data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: image_data must be uint8 [N, H, W, 3], got {getattr(images, 'dtype', type(images).__name__)} "
                        f"{list(getattr(images, 'shape', []))}")
    class_dict = {_text(k): [int(i) for i in v] for k, v in _dict(data["class_dict"], str(path), ()).items()}
    classes = sorted(class_dict)

    def fill(out) -> dict:
        writer = Writer(out, image_size, Problems(str(path)), len(out), f"preprocessing {path.name}")
        for c, wnid in enumerate(classes):
            for i in class_dict[wnid]:
                writer.put(c, images[i], f"{path.name}[{i}]")
        return writer.meta(classes)

    return (sum(map(len, class_dict.values())), 3, image_size, image_size), fill


def _tiered_pickle_fill(images_path: Path, labels_path: Path, image_size: int):
    keys = ("label_specific", "label_general", "label_specific_str", "label_general_str")
    labels = _dict(load_data_pickle(labels_path.read_bytes(), str(labels_path)), str(labels_path), keys)
    images = load_data_pickle(images_path.read_bytes(), str(images_path))
    if isinstance(images, dict):  # some copies wrap the list: {"images": [...]}
        images = _dict(images, str(images_path), ("images",))["images"]
    specific = [int(x) for x in labels["label_specific"]]
    general = [int(x) for x in labels["label_general"]]
    names = [_text(x) for x in labels["label_specific_str"]]
    categories = [_text(x) for x in labels["label_general_str"]]
    if len(images) != len(specific) or len(general) != len(specific):
        raise DataError(f"{images_path}: {len(images)} images but {labels_path} labels {len(specific)}")
    if specific and (min(specific) < 0 or max(specific) >= len(names)):
        raise DataError(f"{labels_path}: label_specific runs outside the {len(names)} names of label_specific_str")
    group = {s: g for s, g in zip(specific, general)}
    groups = [categories[group[c]] if c in group and group[c] < len(categories) else "" for c in range(len(names))]

    def fill(out) -> dict:
        writer = Writer(out, image_size, Problems(str(images_path)), len(out), f"preprocessing {images_path.name}")
        for i, (png, label) in enumerate(zip(images, specific)):
            writer.put(label, bytes(png) if not isinstance(png, bytes) else png, f"{images_path.name}[{i}]")
        return writer.meta(names, groups)

    return (len(specific), 3, image_size, image_size), fill


# --------------------------------------------------------------------------- finding the files


def imagenet_root(cfg: ImageNetConfig) -> Path:
    """Where the ILSVRC-2012 training set is looked for: ``task.imagenet_dir``, else ``<data_dir>/imagenet``."""
    return Path(cfg.imagenet_dir).expanduser() if cfg.imagenet_dir else dataset_dir("imagenet", cfg.data_dir)


def find_source(dataset: str, cfg: ImageNetConfig, split: str) -> tuple[str, list[Path]]:
    """(form, its files) of ``split``: the first of the forms the module lists that is present;
    a one-line DataError saying which files to put where when none is."""
    folder, root = dataset_dir(dataset, cfg.data_dir), imagenet_root(cfg)
    if dataset == MINI:
        if (folder / "images").is_dir():
            return "ravi", [folder / "images"] + [p for p in [folder / f"{split}.csv"] if p.is_file()]
        if (folder / f"mini-imagenet-cache-{split}.pkl").is_file():
            return "pickle", [folder / f"mini-imagenet-cache-{split}.pkl"]
    else:
        pair = [folder / f"{split}_images_png.pkl", folder / f"{split}_labels.pkl"]
        if all(p.is_file() for p in pair):
            return "pickle", pair
    if (root / ILSVRC_TAR).is_file():
        return "ilsvrc-tar", [root / ILSVRC_TAR]
    if (root / "train").is_dir():
        return "ilsvrc-folder", [root / "train"]
    own = (f"put its images/ folder (<wnid>000000KK.jpg; with your train.csv/val.csv/test.csv beside it, or the "
           f"shipped Ravi & Larochelle lists are used) or mini-imagenet-cache-{split}.pkl in {folder}/" if dataset == MINI
           else f"put {split}_images_png.pkl and {split}_labels.pkl in {folder}/")
    raise DataError(f"{TITLE[dataset]} {split} split not found: {own}, or your ILSVRC-2012 training set "
                    f"({ILSVRC_TAR}, or its extracted train/<wnid>/*.JPEG folders) in {root}/ "
                    "(ImageNet cannot be downloaded for you; set task.imagenet_dir if it lives elsewhere)")


def _ravi_fill(folder: Path, split: str, image_size: int):
    rows = mini_split(split, folder)
    classes = sorted({w for _, w in rows})
    index = {w: i for i, w in enumerate(classes)}
    images = folder / "images"
    missing = [f for f, _ in rows if not (images / f).is_file()]
    if missing:
        raise DataError(f"mini-ImageNet {split}: images missing from {images} ({len(missing)}): {_names(missing)}; nothing was cached")

    def fill(out) -> dict:
        writer = Writer(out, image_size, Problems(f"mini-ImageNet {split} in {images}"), len(out), f"preprocessing mini-ImageNet {split}")
        for name, wnid in sorted(rows, key=lambda r: index[r[1]]):
            writer.put(index[wnid], images / name, name)
        return writer.meta(classes)

    return (len(rows), 3, image_size, image_size), fill


def imagenet_dataset(dataset: str, cfg: ImageNetConfig, split: str) -> ImageClassDataset:
    """``split`` ("train", "val", "test") of ``dataset`` (MINI or TIERED) as an
    :class:`ImageClassDataset` of uint8 [N, 3, S, S] images, through the cache."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; allowed: train, val, test")
    form, sources = find_source(dataset, cfg, split)
    size = cfg.image_size
    split_rows = mini_split(split, sources[0].parent) if form == "ravi" else \
        mini_split(split) if dataset == MINI and form.startswith("ilsvrc") else \
        tiered_split(split) if form.startswith("ilsvrc") else None
    if form == "ilsvrc-folder":  # each class folder's version (the train/ folder's own changes rarely)
        srcs = {w: source_key(sources[0] / w) for w in sorted({r[1] if dataset == MINI else r[0] for r in split_rows})
                if (sources[0] / w).is_dir()}
    else:
        srcs = {p.name: source_key(p) for p in sources}
    key = {"format": CACHE_FORMAT, "dataset": dataset, "split": split, "form": form, "image_size": size,
           "filter": "lanczos", "sources": srcs, "rows": _digest(split_rows) if split_rows is not None else None}
    home = sources[0].parent
    cache = cache_file(cfg, home, f"{dataset}-{split}-{form}.{size}px.cache")
    found = load_images(cache, key)  # a built cache is mapped without reading the sources
    if found is None:
        if form == "ravi":
            shape, fill = _ravi_fill(home, split, size)
        elif form == "pickle":
            shape, fill = _mini_pickle_fill(sources[0], split, size) if dataset == MINI else _tiered_pickle_fill(*sources, size)
        else:
            shape, fill = _ilsvrc_fill(dataset, split, home, form, size)
        found = cached_images(cache, key, shape, fill, what=TITLE[dataset])
    return class_dataset(*found)


def _sampler(dataset: str, cfg: ImageNetConfig, split: str) -> EpisodeSampler:
    return EpisodeSampler(imagenet_dataset(dataset, cfg, split), *episode_shape(cfg, split),
                          name=f"the {TITLE[dataset]} {split} split", augment=split_augment(cfg, split))


@TASKS.register(MINI, ImageNetConfig)
def make_mini_imagenet(cfg: ImageNetConfig, split: str) -> EpisodeSampler:
    """mini-ImageNet N-way K-shot (Ravi & Larochelle split, RGB 84x84) from its images, pickles or ILSVRC-2012."""
    return _sampler(MINI, cfg, split)


@TASKS.register(TIERED, ImageNetConfig)
def make_tiered_imagenet(cfg: ImageNetConfig, split: str) -> EpisodeSampler:
    """tieredImageNet N-way K-shot (Ren et al. category split, RGB 84x84) from its pickles or ILSVRC-2012."""
    return _sampler(TIERED, cfg, split)
