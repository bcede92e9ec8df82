"""The preprocessed image cache: a dataset decoded once, then memory-mapped by every later run.

One cache file holds uint8 images [N, ...] and a JSON header (the key it was built for and
small metadata such as class names), so loading it never executes code and never reads the
images into memory: they are mapped from disk read-only, pages come in as episodes touch them,
and a dataset larger than RAM still samples. A file whose key differs from the wanted one (the
source changed, another image size) or that cannot be read is rebuilt. Files are written to a
temporary name and renamed, so an interrupted build leaves nothing.

Layout: ``MAGIC`` (16 bytes), the header's length (8 bytes, little endian), zero padding to
byte 64, the raw images, then the header (UTF-8 JSON with "key", "shape", "meta") at the end,
so that what a build learns while decoding (labels, names) can go into it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from ..config import positive
from ..errors import DataError
from ..io import atomic_write
from .images import EpisodeConfig, ImageClassDataset

MAGIC = b"METAGRAD-IMAGES1"
DATA_OFFSET = 64  # the images start here (aligned)


@dataclass
class StoredImagesConfig(EpisodeConfig):
    """Episodes of an image dataset kept in files: the N-way K-shot shape, the image size, and
    where the files and their preprocessed cache live (a base of such tasks' configs)."""

    image_size: int = positive(84)  # images are resized to image_size x image_size
    data_dir: str | None = None  # files in <data_dir>/<dataset>/; None: $METAGRAD_DATA or ~/.cache/metagrad
    cache_dir: str | None = None  # preprocessed images; None: beside the files, or the user cache if read-only
    download: bool = True  # fetch missing files that their authors publish (checksummed)


CROPS = ("none", "ink")  # how an image is cut before resizing: as it is, or around its strokes (crop_to_ink)


def crop_to_ink(im: Image.Image, margin: float = 0.1) -> Image.Image:
    """The square of ``im`` (mode "L" or "RGB") centred on the bounding box of its ink, with
    sides 1 + 2 * ``margin`` times the box's longer side, padded with the background; ``im``
    itself when it has no ink. The background is the median colour of the image's border, and
    ink every pixel whose gray level differs from the border's median by more than 64 of 255, so
    dark-on-light and light-on-dark drawings are cut alike. The drawing's position and size are
    normalised away; its aspect ratio is kept."""
    def border(a: np.ndarray) -> np.ndarray:  # the pixels of the image's four edges
        return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])

    gray = np.asarray(im.convert("L"), dtype=np.int16)
    ink = np.abs(gray - np.median(border(gray))) > 64
    if not ink.any():
        return im
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    side = round(max(rows[-1] - rows[0], cols[-1] - cols[0]) * (1 + 2 * margin)) + 1
    top = round((rows[0] + rows[-1] + 1 - side) / 2)
    left = round((cols[0] + cols[-1] + 1 - side) / 2)
    fill = tuple(int(v) for v in np.median(border(np.asarray(im).reshape(*gray.shape, -1)), axis=0))
    canvas = Image.new(im.mode, (side, side), fill[0] if im.mode == "L" else fill)
    canvas.paste(im, (-left, -top))
    return canvas


def fit_image(im: Image.Image, image_size: int, channels: int, crop: str = "none") -> np.ndarray:
    """A Pillow image as uint8 [channels, image_size, image_size]: flattened onto white if
    transparent, converted to grayscale (1 channel) or RGB (3), cut around its strokes if
    ``crop="ink"`` (:func:`crop_to_ink`), resized with Pillow's LANCZOS filter (the aspect ratio
    is not kept; an image already of that size is left as it is)."""
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    im = im.convert("L" if channels == 1 else "RGB")
    if crop == "ink":
        im = crop_to_ink(im)
    im = im.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def read_image(source: Path | bytes, image_size: int, channels: int, name: str | None = None,
               crop: str = "none") -> np.ndarray:
    """An image file (a path, or its bytes named ``name``) as uint8 [channels, image_size,
    image_size]: turned upright by its EXIF orientation, then :func:`fit_image`. DataError
    naming the file if it cannot be decoded (corrupt or truncated)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return fit_image(ImageOps.exif_transpose(im), image_size, channels, crop)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        raise DataError(f"cannot read image {name or source}: {e}") from None


def default_cache_dir(folder: Path) -> Path:
    """Where the preprocessed images of a dataset in ``folder`` go by default: ``folder`` itself
    if writable, else ``<user cache>/metagrad/preprocessed/<hash of folder>`` (a shared,
    read-only dataset folder), the user cache being ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    folder = Path(folder)
    return folder if os.access(folder, os.W_OK) else user_cache_dir(folder)


def user_cache_dir(folder: Path) -> Path:
    """``<user cache>/metagrad/preprocessed/<hash of folder>``: the cache of a folder's images
    kept outside it, the user cache being ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]
    return user_cache / "metagrad" / "preprocessed" / digest


def source_key(path: Path) -> dict:
    """What identifies a source file's version: its size and modification time."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_images(path: Path, key: dict) -> tuple[torch.Tensor, dict] | None:
    """(read-only memory-mapped uint8 images, meta) of the cache file ``path`` if it was built for
    ``key``; None if it is missing, stale or unreadable."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            size = int.from_bytes(f.read(8), "little")
            f.seek(-size, os.SEEK_END)
            header = json.loads(f.read(size).decode("utf-8"))
        if header.get("key") != json.loads(json.dumps(key)):
            return None
        shape = tuple(int(s) for s in header["shape"])
        if Path(path).stat().st_size != DATA_OFFSET + math.prod(shape) + size:
            return None
        if not all(shape):  # np.memmap cannot map zero bytes
            return torch.empty(shape, dtype=torch.uint8), header["meta"]
        array = np.memmap(path, dtype=np.uint8, mode="r", offset=DATA_OFFSET, shape=shape)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    with warnings.catch_warnings():  # read-only by design: the images are never written in place
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array), header["meta"]


class ImageAppender:
    """Where a build whose image count is known only at its end (one pass over a tar archive)
    writes its images: uint8 arrays of ``image_shape``, appended in order to ``file``."""

    def __init__(self, file, image_shape: tuple[int, ...]):
        self._file, self.image_shape, self.count = file, tuple(image_shape), 0

    def extend(self, images: np.ndarray) -> None:
        """Append uint8 images [n, *image_shape]."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"expected uint8 images [n, {', '.join(map(str, self.image_shape))}], "
                             f"got {images.dtype} {list(images.shape)}")
        self._file.write(np.ascontiguousarray(images).tobytes())
        self.count += len(images)

    def append(self, image: np.ndarray) -> None:
        """Append one uint8 image of ``image_shape``."""
        self.extend(np.asarray(image)[None])


def cached_images(path: Path, key: dict, shape: tuple[int | None, ...], fill: Callable[[np.ndarray], dict],
                  what: str = "dataset") -> tuple[torch.Tensor, dict]:
    """(uint8 images ``shape``, meta) of the cache file ``path`` for ``key``, built first if needed.

    ``fill(out)`` writes the images into ``out``, uint8 ``shape`` (a memory map of the new file,
    so a build never holds the whole dataset in memory), and returns the meta to keep beside
    them (JSON: names, labels...). With ``shape[0]`` None the count is found while building:
    ``out`` is then an :class:`ImageAppender` that ``fill`` appends images of ``shape[1:]`` to.
    If the cache cannot be written (a read-only folder), one warning line says so and the
    images are built in memory instead.
    """
    found = load_images(path, key)
    if found is not None:
        return found

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC + bytes(DATA_OFFSET - len(MAGIC)))
            if shape[0] is None:  # appended while decoding
                appender = ImageAppender(f, shape[1:])
                meta = fill(appender)
                built = (appender.count, *shape[1:])
            else:
                f.truncate(DATA_OFFSET + math.prod(shape))
                built, meta = shape, {}
        if shape[0] is not None and all(shape):
            out = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=DATA_OFFSET, shape=shape)
            meta = fill(out)
            out.flush()
            del out
        header = json.dumps({"key": key, "shape": list(built), "meta": meta}).encode("utf-8")
        with open(tmp, "r+b") as f:
            f.seek(len(MAGIC))
            f.write(len(header).to_bytes(8, "little"))
            f.seek(0, os.SEEK_END)
            f.write(header)

    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # folders this build creates
    try:
        atomic_write(path, build)
    except BaseException as e:
        for folder in made:  # a failed build leaves no trace, not even empty folders
            try:
                folder.rmdir()
            except OSError:
                break
        if not isinstance(e, OSError):
            raise
        print(f"warning: could not write the {what} cache {path} ({e.strerror or e}); every run will "
              "preprocess it again; set task.cache_dir to a writable folder", file=sys.stderr)
        if shape[0] is None:
            buffer = io.BytesIO()
            appender = ImageAppender(buffer, shape[1:])
            meta = fill(appender)
            out = np.frombuffer(bytearray(buffer.getvalue()), dtype=np.uint8).reshape(appender.count, *shape[1:])
        else:
            out = np.empty(shape, dtype=np.uint8)
            meta = fill(out)
        return torch.from_numpy(out), json.loads(json.dumps(meta))
    loaded = load_images(path, key)
    if loaded is None:
        raise OSError(f"the {what} cache {path} was written but cannot be read back")
    return loaded


def cached_class_dataset(cfg: StoredImagesConfig, folder: Path, name: str, key: dict, shape: tuple[int | None, ...],
                         fill: Callable[[np.ndarray], dict], what: str) -> ImageClassDataset:
    """An :class:`ImageClassDataset` through the cache file ``name`` in ``cfg.cache_dir`` (default:
    :func:`default_cache_dir` of ``folder``, the dataset's files). ``fill(out)`` decodes the images
    into ``out`` (uint8 ``shape`` = [N, C, S, S], or an :class:`ImageAppender` when N is None)
    and returns {"class_names": [...], "labels": [N ints]}; ``key`` says what the images were
    built from (sources, size, format)."""
    images, meta = cached_images(cache_file(cfg, folder, name), key, shape, fill, what=what)
    return class_dataset(images, meta)


def cache_file(cfg: StoredImagesConfig, folder: Path, name: str) -> Path:
    """The cache file ``name`` of a dataset whose files are in ``folder``: in ``cfg.cache_dir``,
    else :func:`default_cache_dir` of ``folder``."""
    return (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(folder)) / name


def class_dataset(images: torch.Tensor, meta: dict) -> ImageClassDataset:
    """An :class:`ImageClassDataset` of cached images and their meta ("labels", "class_names",
    optionally "class_groups")."""
    return ImageClassDataset(images, torch.tensor(meta["labels"], dtype=torch.long), meta["class_names"],
                             class_groups=meta.get("class_groups"))
