"""CUB-200-2011 (Wah et al. 2011) few-shot episodes, Chen et al. 2019's class split.

The authors' archive ``CUB_200_2011.tgz`` lives in ``<data_dir>/cub/`` and is downloaded from
CaltechDATA (md5-checked) when missing and ``task.download`` is true; an extracted copy,
``<data_dir>/cub/CUB_200_2011/``, is read instead when there is no archive. The split is the
class lists shipped with metagrad (``metagrad/data/cub_*.txt``: 100 / 50 / 50 class folders,
Hilliard et al. 2018 / Chen et al. 2019; see SPLITS.md).

The archive is read once, front to back, without extracting anything: every JPEG in
``CUB_200_2011/images/<class folder>/`` of a wanted class is decoded (RGB, resized to
``image_size`` with Pillow's LANCZOS filter, the aspect ratio not kept; 84 by default) straight
into the image cache (store.py), ``<cache_dir>/cub.<split>.<S>px.cache``, memory-mapped by later
runs. ``CUB_200_2011/classes.txt`` and ``images.txt`` are checked against what was found: a
class missing from the dataset, a class without images, a listed image that is absent, and
corrupt or truncated images are reported together, by name, in one line, and nothing is
cached. Classes hold different numbers of images (41 to 60 in the real dataset).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..registry import TASKS
from .files import archive_files, dataset_dir, folder_files, shipped_classes, source_file
from .images import EpisodeSampler, ImageClassDataset, episode_shape, split_augment
from .store import ImageAppender, StoredImagesConfig, cached_class_dataset, read_image, source_key

ARCHIVE = "CUB_200_2011.tgz"
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
TOP = "CUB_200_2011"
CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")
SHOWN = 10  # names shown per kind of problem


@dataclass
class CubConfig(StoredImagesConfig):
    """CUB-200-2011 episodes: <data_dir>/cub/CUB_200_2011.tgz, or the extracted CUB_200_2011/ folder there."""


def split_classes(split: str) -> list[str]:
    """The CUB class folders ("001.Black_footed_Albatross", ...) of ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return shipped_classes(f"cub_{split}")


def cub_source(cfg: CubConfig) -> tuple[Path, dict]:
    """(the archive or extracted folder to read, its cache key part): the archive if present,
    else the extracted folder, else the archive downloaded (or an error saying where to put it)."""
    folder = dataset_dir("cub", cfg.data_dir)
    extracted = folder / TOP
    if not (folder / ARCHIVE).is_file() and (extracted / "images.txt").is_file():
        images = extracted / "images"  # its mtime changes when a class folder is added or removed
        return extracted, {"folder": str(extracted.resolve()), **source_key(extracted / "images.txt"),
                           "images_mtime_ns": source_key(images)["mtime_ns"] if images.is_dir() else 0}
    path = source_file(folder / ARCHIVE, URL, MD5, cfg.download,
                       f"the CUB-200-2011 archive (or its extracted folder {extracted})")
    return path, {"archive": ARCHIVE, **source_key(path)}


def _listing(data: bytes) -> list[str]:
    """The second field of each "<id> <value>" line of classes.txt / images.txt."""
    return [line.split(maxsplit=1)[1].strip() for line in data.decode("utf-8").splitlines() if len(line.split(maxsplit=1)) == 2]


def _named(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
    return f"{len(names)} {kind} ({shown})"


def read_cub(source: Path, image_size: int, classes: list[str], out: ImageAppender) -> dict:
    """Append the images of ``classes`` from the CUB archive or extracted folder ``source`` to
    ``out`` in one pass (archive order), as uint8 [3, S, S]. Returns {"class_names", "labels",
    "files"}; every problem found is reported in one DataError line naming the files."""
    index = {c: i for i, c in enumerate(classes)}
    files = archive_files(source) if source.is_file() else folder_files(source)
    labels, decoded, corrupt = [], [], []
    listed_classes = listed_images = None
    with tqdm(unit="img", desc=f"preprocessing {source.name}", disable=None) as bar:
        for parts, read in files:
            if parts[:1] != (TOP,):
                continue
            if parts[1:] == ("classes.txt",):
                listed_classes = _listing(read())
            elif parts[1:] == ("images.txt",):
                listed_images = _listing(read())
            elif len(parts) == 4 and parts[1] == "images" and parts[2] in index and parts[3].lower().endswith((".jpg", ".jpeg")):
                name = f"{parts[2]}/{parts[3]}"
                try:
                    out.append(read_image(read(), image_size, 3, name=name))
                except DataError:  # corrupt or truncated JPEG: gathered, reported at the end
                    corrupt.append(name)
                    continue
                labels.append(index[parts[2]])
                decoded.append(name)
                bar.update()
    where = f"{source}" if source.is_file() else f"{source}/"
    for listing, file in ((listed_classes, "classes.txt"), (listed_images, "images.txt")):
        if listing is None:
            raise DataError(f"{where}: not CUB-200-2011: it has no {TOP}/{file}")
    counts = {c: 0 for c in classes}
    for label in labels:
        counts[classes[label]] += 1
    known = set(listed_classes)
    found = set(decoded) | set(corrupt)
    problems = [
        _named("missing classes", [c for c in classes if c not in known and not counts[c]]),
        _named("empty classes", [c for c in classes if c in known and not counts[c]]),
        _named("listed images missing", [f for f in listed_images if f.split("/")[0] in index and f not in found]),
        _named("corrupt or truncated images", corrupt),
    ]
    problems = [p for p in problems if not p.startswith("0 ")]
    if problems:
        raise DataError(f"{where}: {'; '.join(problems)}; nothing was cached")
    return {"class_names": list(classes), "labels": labels, "files": decoded}


def cub_dataset(cfg: CubConfig, split: str) -> ImageClassDataset:
    """The classes of ``split`` as an :class:`ImageClassDataset`, images uint8 [N, 3, S, S], through the image cache."""
    classes = split_classes(split)
    source, source_id = cub_source(cfg)
    size = cfg.image_size
    key = {"format": CACHE_FORMAT, **source_id, "image_size": size, "filter": "lanczos",
           "classes": hashlib.sha256("\n".join(classes).encode()).hexdigest()}
    return cached_class_dataset(cfg, dataset_dir("cub", cfg.data_dir), f"cub.{split}.{size}px.cache", key,
                                (None, 3, size, size), lambda out: read_cub(source, size, classes, out), what="CUB")


@TASKS.register("cub", CubConfig)
def make_cub(cfg: CubConfig, split: str) -> EpisodeSampler:
    """CUB-200-2011 birds (Chen et al. 2019 split: 100/50/50 classes), RGB at image_size (84), N-way K-shot."""
    return EpisodeSampler(cub_dataset(cfg, split), *episode_shape(cfg, split), name=f"the CUB {split} split",
                          augment=split_augment(cfg, split))
