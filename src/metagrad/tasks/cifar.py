"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018) from the CIFAR-100 python archive.

Both benchmarks are CIFAR-100 (Krizhevsky 2009) split by class: every class's 600 images (its
500 training and 100 test images pooled) belong to one split, and the splits are the class
lists shipped with metagrad (``metagrad/data/cifarfs_*.txt``: 64 / 16 / 20 fine classes;
``fc100_*.txt``: 60 / 20 / 20 fine classes = 12 / 4 / 4 whole superclasses; see SPLITS.md).

The archive ``cifar-100-python.tar.gz`` lives in ``<data_dir>/cifar100/`` and is downloaded
from the authors' page (md5-checked) when missing and ``task.download`` is true. It is read in
place: its pickles ``cifar-100-python/{train,test,meta}`` are unpickled without executing code
(files.load_data_pickle). Images are RGB, 32x32 as published (``image_size`` other than 32
resizes them with Pillow's LANCZOS filter, as every image task does). Each (benchmark, split,
size) is built once into the image cache (store.py), ``<cache_dir>/<benchmark>.<split>.<S>px.cache``,
and memory-mapped afterwards; the cache is rebuilt when the archive or the class list changes.
Classes are named by their CIFAR-100 fine label names, in the shipped lists' order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import positive
from ..errors import ConfigError, DataError
from ..registry import TASKS
from .files import archive_files, dataset_dir, load_data_pickle, shipped_classes, source_file
from .images import EpisodeSampler, ImageClassDataset, episode_shape, split_augment
from .store import ImageAppender, StoredImagesConfig, cached_class_dataset, fit_image, source_key

ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
TOP = "cifar-100-python"
ORIGINAL_SIZE = 32
CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")
BENCHMARKS = {"cifar-fs": ("cifarfs", "CIFAR-FS"), "fc100": ("fc100", "FC100")}  # task -> (split files, name)


@dataclass
class Cifar100Config(StoredImagesConfig):
    """CIFAR-FS / FC100 episodes: files in <data_dir>/cifar100/cifar-100-python.tar.gz."""

    image_size: int = positive(ORIGINAL_SIZE)  # 32: the images as published; other sizes are resized (LANCZOS)


def split_classes(benchmark: str, split: str) -> list[str]:
    """The CIFAR-100 fine class names of ``split`` of ``benchmark`` ("cifar-fs" or "fc100")."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return shipped_classes(f"{BENCHMARKS[benchmark][0]}_{split}")


def read_archive(path, image_size: int, classes: list[str], out: ImageAppender) -> dict:
    """Append the images of ``classes`` from the CIFAR-100 python archive ``path`` to ``out``
    (class by class in list order; each class's training images, then its test images) as uint8
    [3, S, S]. Returns {"class_names", "labels"}; DataError naming the archive if it is not the
    CIFAR-100 python archive or lacks a class."""
    wanted = {"train", "test", "meta"}
    found = {parts[1]: read() for parts, read in archive_files(path)
             if len(parts) == 2 and parts[0] == TOP and parts[1] in wanted}
    if missing := sorted(wanted - set(found)):
        raise DataError(f"{path}: not the CIFAR-100 python archive: it lacks {', '.join(f'{TOP}/{m}' for m in missing)}")
    meta = load_data_pickle(found.pop("meta"), f"{path}:{TOP}/meta")
    names = _field(meta, b"fine_label_names", path, "meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if absent := [c for c in classes if c not in names]:
        raise DataError(f"{path}: CIFAR-100 has no fine class {', '.join(absent)} (its meta lists {len(names)} classes)")
    index = {c: names.index(c) for c in classes}
    parts = []
    for part in ("train", "test"):
        batch = load_data_pickle(found.pop(part), f"{path}:{TOP}/{part}")
        data, labels = _field(batch, b"data", path, part), np.asarray(_field(batch, b"fine_labels", path, part))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * ORIGINAL_SIZE**2 and labels.shape == (len(data),)):
            raise DataError(f"{path}: {TOP}/{part} is not a CIFAR-100 batch (data must be uint8 [N, 3072] "
                            "with one fine label per row)")
        parts.append((data.reshape(-1, 3, ORIGINAL_SIZE, ORIGINAL_SIZE), labels))
    labels_out = []
    for c, name in enumerate(classes):
        images = np.concatenate([data[labels == index[name]] for data, labels in parts])
        if not len(images):
            raise DataError(f"{path}: CIFAR-100 class {name} has no images")
        if image_size != ORIGINAL_SIZE:
            images = np.stack([fit_image(Image.fromarray(im.transpose(1, 2, 0)), image_size, 3) for im in images])
        out.extend(images)
        labels_out += [c] * len(images)
    return {"class_names": list(classes), "labels": labels_out}


def _field(batch: object, key: bytes, path, part: str):
    """``batch[key]`` of a CIFAR pickle (Python 2 pickles have bytes keys; str keys accepted too)."""
    if isinstance(batch, dict):
        for k in (key, key.decode()):
            if k in batch:
                return batch[k]
    raise DataError(f"{path}: {TOP}/{part} is not a CIFAR-100 pickle: it has no {key.decode()!r}")


def cifar_dataset(cfg: Cifar100Config, benchmark: str, split: str) -> ImageClassDataset:
    """The classes of ``split`` of ``benchmark`` as an :class:`ImageClassDataset`, images uint8
    [N, 3, S, S] (600 per class in the real archive), through the image cache."""
    classes = split_classes(benchmark, split)
    folder = dataset_dir("cifar100", cfg.data_dir)
    path = source_file(folder / ARCHIVE, URL, MD5, cfg.download, "the CIFAR-100 python archive")
    size = cfg.image_size
    key = {"format": CACHE_FORMAT, "archive": ARCHIVE, **source_key(path), "image_size": size, "filter": "lanczos",
           "classes": hashlib.sha256("\n".join(classes).encode()).hexdigest()}
    return cached_class_dataset(cfg, folder, f"{benchmark}.{split}.{size}px.cache", key, (None, 3, size, size),
                                lambda out: read_archive(path, size, classes, out), what=BENCHMARKS[benchmark][1])


def make_cifar_task(cfg: Cifar100Config, split: str, benchmark: str) -> EpisodeSampler:
    data = cifar_dataset(cfg, benchmark, split)
    return EpisodeSampler(data, *episode_shape(cfg, split), name=f"the {BENCHMARKS[benchmark][1]} {split} split",
                          augment=split_augment(cfg, split))


@TASKS.register("cifar-fs", Cifar100Config)
def make_cifar_fs(cfg: Cifar100Config, split: str) -> EpisodeSampler:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100, 64/16/20 classes, 32x32 RGB, N-way K-shot."""
    return make_cifar_task(cfg, split, "cifar-fs")


@TASKS.register("fc100", Cifar100Config)
def make_fc100(cfg: Cifar100Config, split: str) -> EpisodeSampler:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60/20/20 classes, 32x32 RGB."""
    return make_cifar_task(cfg, split, "fc100")
