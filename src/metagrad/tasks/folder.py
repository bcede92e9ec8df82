"""A user's own images: one sub-folder per class.

    PATH/<class name>/<image files>        e.g. PATH/cat/001.jpg, PATH/dog/a.png

Any file Pillow reads with one of :data:`IMAGE_EXTENSIONS` counts (hidden files and folders
are skipped, other files ignored). Each image is turned upright by its EXIF orientation,
flattened onto white if it has transparency, converted to ``channels`` (1 = grayscale,
3 = RGB) and resized to ``image_size`` x ``image_size`` with Pillow's LANCZOS filter — the
aspect ratio is not kept, so crop beforehand if that matters, or, for drawings and handwriting,
set ``crop="ink"`` to cut each image to the square around its strokes first
(store.crop_to_ink). The images of each split are decoded once into the image cache
(store.py), in ``task.cache_dir`` or else the user cache
(``~/.cache/metagrad/preprocessed/``, never inside your folder), and memory-mapped by later runs
until an image is changed, added or removed.

Splits for meta-training are class-disjoint, as few-shot evaluation requires: the sorted
class names are shuffled with a fixed seed (0), the first ``round(test_fraction * classes)``
go to "test", the next ``round(val_fraction * classes)`` to "val", the rest to "train".

The ``adapt`` command's helpers: :func:`load_support_folder`, :func:`load_query_folder`,
:func:`check_class_count`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import choice, nonnegative, positive
from ..errors import ConfigError, DataError
from ..registry import TASKS
from .images import EpisodeConfig, EpisodeSampler, ImageClassDataset, episode_shape, split_augment
from .store import CROPS, cached_images, read_image, user_cache_dir

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
SPLIT_SEED = 0
CACHE_FORMAT = 1


@dataclass
class FolderConfig(EpisodeConfig):
    path: str = ""  # folder with one sub-folder of images per class
    image_size: int = positive(28)
    channels: int = choice(1, (1, 3))
    crop: str = choice("none", CROPS)  # "ink": each image cut to the square around its strokes (drawings)
    val_fraction: float = nonnegative(0.2)  # share of the classes held out for "val"
    test_fraction: float = nonnegative(0.2)  # share of the classes held out for "test"
    cache_dir: str | None = None  # the decoded images; None: the user cache (~/.cache/metagrad), never inside path

    def validate(self):
        super().validate()
        if not self.path:
            raise ConfigError("task.path is empty; set it to a folder holding one sub-folder of images per class")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"task.val_fraction + task.test_fraction must be < 1 to leave training classes, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a folder")
    return path


def class_folders(root: str | Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name; DataError if there are none."""
    root = _existing_dir(root, "image folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{root} has no class sub-folders; expected one sub-folder of images per class")
    return dirs


def _read_all(files: list[Path], image_size: int, channels: int, desc: str, out: np.ndarray | None = None,
              crop: str = "none") -> torch.Tensor:
    """uint8 [len(files), C, S, S], decoded into ``out`` when given."""
    out = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8) if out is None else out
    for i, f in enumerate(tqdm(files, desc=desc, unit="img", disable=True if len(files) < 500 else None)):
        out[i] = read_image(f, image_size, channels, crop=crop)
    return torch.from_numpy(out)


def _files_key(files: list[Path], labels: list[int]) -> str:
    """A digest of the files' paths, sizes, modification times and labels: a changed, added,
    removed or moved image changes it."""
    digest = hashlib.sha256()
    for f, c in zip(files, labels):
        st = f.stat()
        digest.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{c}\n".encode())
    return digest.hexdigest()


def load_class_folders(
    dirs: list[Path], image_size: int = 28, channels: int = 1, min_images: int = 1, need: str = "",
    cache_dir: Path | None = None, crop: str = "none",
) -> ImageClassDataset:
    """Images of the given class folders (class name = folder name), images uint8 [N, C, S, S],
    each cut as ``crop`` says (store.fit_image).

    Every folder must hold at least ``min_images`` images; ``need`` says why in the error. With
    ``cache_dir`` the images are decoded once into the image cache there (store.py) and
    memory-mapped by later calls until a file changes.
    """
    files, labels = [], []
    for c, d in enumerate(dirs):
        found = image_files(d)
        if len(found) < min_images:
            raise DataError(
                f"class folder {d} has {len(found)} image{'' if len(found) == 1 else 's'}, fewer than {need or min_images}; "
                f"image files end in {', '.join(IMAGE_EXTENSIONS)}"
            )
        files += found
        labels += [c] * len(found)
    desc = f"reading {dirs[0].parent}"
    if cache_dir is None:
        images = _read_all(files, image_size, channels, desc, crop=crop)
    else:
        key = {"format": CACHE_FORMAT, "image_size": image_size, "channels": channels, "filter": "lanczos",
               "crop": crop, "files": _files_key(files, labels)}
        name = hashlib.sha256("\n".join(str(d.resolve()) for d in dirs).encode()).hexdigest()[:12]
        suffix = "" if crop == "none" else f".{crop}"

        def fill(out: np.ndarray) -> dict:
            _read_all(files, image_size, channels, desc, out, crop)
            return {}

        images, _ = cached_images(Path(cache_dir) / f"folder-{name}.{image_size}px{suffix}.cache", key,
                                  (len(files), channels, image_size, image_size), fill, what="image folder")
    return ImageClassDataset(
        images, torch.tensor(labels, dtype=torch.long), [d.name for d in dirs], [str(f) for f in files]
    )


def load_support_folder(path: str | Path, image_size: int = 28, channels: int = 1, shots: int = 1,
                        crop: str = "none") -> ImageClassDataset:
    """A labelled support set: ``path/<class>/<images>`` -> images uint8 [N, C, S, S], labels long [N].

    Labels follow the sorted class-folder names (``class_names``); each class needs at least
    ``shots`` images.
    """
    return load_class_folders(class_folders(path), image_size, channels, shots, need=f"the {shots} shots requested",
                              crop=crop)


@dataclass
class QueryImages:
    """Unlabelled images to predict: images uint8 [M, C, S, S], their files, and the class
    sub-folder each came from (None for an image directly in the query folder)."""

    images: torch.Tensor
    paths: list[str]
    classes: list[str | None]


def load_query_folder(path: str | Path, image_size: int = 28, channels: int = 1, crop: str = "none") -> QueryImages:
    """Images directly in ``path`` and in its class sub-folders (one level), loose files first."""
    root = _existing_dir(path, "query folder")
    files: list[Path] = image_files(root)
    classes: list[str | None] = [None] * len(files)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = image_files(d)
        files += found
        classes += [d.name] * len(found)
    if not files:
        raise DataError(f"query folder {root} holds no images (files ending in {', '.join(IMAGE_EXTENSIONS)})")
    return QueryImages(_read_all(files, image_size, channels, f"reading {root}", crop=crop), [str(f) for f in files],
                       classes)


def check_class_count(n_classes: int, n_outputs: int, what: str = "the support folder") -> None:
    """DataError unless ``n_classes`` matches a classifier head with ``n_outputs`` outputs."""
    if n_classes != n_outputs:
        raise DataError(
            f"{what} has {n_classes} classes but the model was meta-trained for {n_outputs}-way tasks; "
            f"give it exactly {n_outputs} class sub-folders"
        )


def split_class_folders(dirs: list[Path], val_fraction: float, test_fraction: float) -> dict[str, list[Path]]:
    """Class-disjoint "train"/"val"/"test" folders (fixed-seed shuffle of the sorted folders)."""
    perm = torch.randperm(len(dirs), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    shuffled = [dirs[i] for i in perm]
    n_test, n_val = round(test_fraction * len(dirs)), round(val_fraction * len(dirs))
    parts = {"test": shuffled[:n_test], "val": shuffled[n_test : n_test + n_val], "train": shuffled[n_test + n_val :]}
    return {k: sorted(v) for k, v in parts.items()}


@TASKS.register("folder", FolderConfig)
def make_folder(cfg: FolderConfig, split: str) -> EpisodeSampler:
    """N-way K-shot tasks over your own images: PATH/<class>/<images>, class-disjoint splits."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split {split!r}; allowed: train, val, test")
    dirs = split_class_folders(class_folders(cfg.path), cfg.val_fraction, cfg.test_fraction)[split]
    if not dirs:
        raise DataError(
            f"the {split} split of {cfg.path} has no classes; add class folders or raise task.{split}_fraction"
            if split != "train"
            else f"{cfg.path}: no classes left for training; lower task.val_fraction / task.test_fraction"
        )
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else user_cache_dir(Path(cfg.path).expanduser())
    data = load_class_folders(dirs, cfg.image_size, cfg.channels, cache_dir=cache, crop=cfg.crop)
    return EpisodeSampler(data, *episode_shape(cfg, split), name=f"the {split} split of {cfg.path}",
                          augment=split_augment(cfg, split))
