"""Omniglot (Lake et al. 2015): archives, download, preprocessing cache, splits, episodes.

Files live in ``<data_dir>/omniglot/``, where ``data_dir`` is ``task.data_dir``, else the
environment variable ``METAGRAD_DATA``, else ``~/.cache/metagrad``. Missing canonical
archives (``images_background.zip``, ``images_evaluation.zip``) are downloaded from the
authors' repository (base URL overridable with ``METAGRAD_OMNIGLOT_URL``) and accepted only
with the canonical md5. Archives that are already there need not match it (re-packed copies
are common): they are checked structurally instead (``<top>/<alphabet>/<character>/*.png``,
20 images of 105x105 per character). PNGs are read straight from the zip; no entry is ever
extracted, and entry names that would point outside the archive's folder are refused.

Each archive is preprocessed once into the image cache (store.py),
``<cache_dir>/<archive stem>.<size>px.cache``: every drawing converted to grayscale, resized to
``image_size`` with Pillow's LANCZOS filter (as the MAML reference code), inverted so strokes
are bright (ink = 255, background = 0), stored as uint8 [characters, 20, size, size] and
memory-mapped by later runs. With ``crop="ink"`` each drawing is first cut to the square around
its strokes (store.crop_to_ink: position and size normalised, aspect kept; cache
``<archive stem>.<size>px.ink.cache``), so the character fills the image whatever its size on
the 105-pixel canvas. The cache records the archive's size and modification time, so a
replaced archive is preprocessed again. ``cache_dir`` defaults to the archive's folder when that
is writable, else (a shared, read-only dataset folder) to a folder per archive folder under the
user cache (``$XDG_CACHE_HOME/metagrad/preprocessed``, else ``~/.cache/metagrad/preprocessed``).

Splits (every split's classes are characters, times four rotations when ``rotate``):

* ``vinyals`` — Vinyals et al. 2016 as used by MAML and Prototypical Networks, pooling both
  archives: train 1028 / val 172 / test 423 characters (4112 / 688 / 1692 classes;
  train+val = 1200 characters, 4800 classes). The character lists ship with metagrad
  (``metagrad/data/vinyals_*.txt``, from jakesnell/prototypical-networks, MIT licence in
  ``vinyals_LICENSE.txt``; one line per character, every character takes all four rotations).
* ``random`` — the same counts (train 1028 / val 172 / test 423 characters) drawn at random
  from all 50 alphabets (``metagrad/data/omniglot_random_*.txt``: the 1623 characters sorted,
  shuffled by ``random.Random(1623)``, cut in that order), so the test characters are new but
  their alphabets are trained on. The MANN paper trains on "1200 original classes" and tests
  on "the rest of the 423" without naming them; this is that count without alphabet borders.
* ``lake`` — the original background/evaluation split: test = the evaluation archives; the
  background archives give val = the five alphabets the Vinyals split validates on
  (Armenian, Bengali, Early_Aramaic, Hebrew, Mkhedruli_(Georgian): 172 characters) and
  train = the other 25 (792 characters).

``train_on="trainval"`` trains on train+val (the MAML paper's 1200 characters); the "val"
split is then made of training classes, so its accuracy is optimistic.

Lake et al.'s original one-shot challenge (20-way 1-shot within one evaluation alphabet, the
support image and the query image by different people) is ``split_scheme="lake"``,
``within_alphabet="eval"``, ``same_drawers="eval"``, ``eval_rotate=false``, 20 ways, 1 shot,
1 query (``metagrad eval RUN --set task.within_alphabet=eval ...`` on any Lake-split run).
The drawer of a drawing is its number ``_KK`` in the archive (each character's 20 drawings are
by 20 different people); ``same_drawers`` takes every support image of an episode from one
drawing number and every query from another, as the challenge's 20 runs do.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import choice, positive
from ..errors import ConfigError, DataError
from ..registry import TASKS
from .files import dataset_dir, download, entry_parts, is_junk
from .images import EpisodeConfig, EpisodeSampler, ImageClassDataset, episode_shape, split_augment
from .store import CROPS, cached_images, crop_to_ink, default_cache_dir, load_images, source_key

DEFAULT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
DRAWINGS = 20  # drawings per character
ORIGINAL_SIZE = 105
ROTATIONS = (0, 90, 180, 270)  # degrees counter-clockwise, as Pillow's Image.rotate
LAKE_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
CACHE_FORMAT = 2
SPLITS = ("train", "val", "test")
WHEN = ("never", "eval", "always")  # which splits an episode option applies to


@dataclass
class OmniglotConfig(EpisodeConfig):
    split_scheme: str = choice("vinyals", ("vinyals", "random", "lake"))
    train_on: str = choice("train", ("train", "trainval"))  # "trainval": the MAML paper's 1200 characters
    rotate: bool = True  # each character x {0, 90, 180, 270} degrees is its own class
    eval_rotate: bool | None = None  # rotations in val/test; None: as rotate
    # "never", "eval" (val/test episodes only) or "always":
    within_alphabet: str = choice("never", WHEN)  # the N characters of an episode come from one alphabet (and rotation)
    same_drawers: str = choice("never", WHEN)  # all support images by the same K drawers, all queries by Q others
    image_size: int = positive(28)
    # "ink": each drawing cut to the square around its strokes before resizing (position and size normalised)
    crop: str = choice("none", CROPS)
    data_dir: str | None = None  # archives in <data_dir>/omniglot/; None: $METAGRAD_DATA or ~/.cache/metagrad
    cache_dir: str | None = None  # preprocessed tensors; None: beside the archives, or the user cache if read-only
    download: bool = True  # fetch missing canonical archives
    # archive files (relative to <data_dir>/omniglot/, or absolute) pooled into each set
    background_archives: list[str] = field(default_factory=lambda: ["images_background.zip"])
    evaluation_archives: list[str] = field(default_factory=lambda: ["images_evaluation.zip"])

    @property
    def validation_trained_on(self) -> bool:
        """True when the "val" split's classes are training classes too (train_on="trainval")."""
        return self.train_on == "trainval"

    def validate(self):
        super().validate()
        for prefix in ("", "eval_"):
            shots, queries = getattr(self, prefix + "shots") or self.shots, getattr(self, prefix + "queries") or self.queries
            if shots + queries > DRAWINGS:
                raise ConfigError(
                    f"task.{prefix}shots + task.{prefix}queries = {shots} + {queries} exceeds the {DRAWINGS} "
                    "drawings of each Omniglot character"
                )
        for key in ("background_archives", "evaluation_archives"):
            if not getattr(self, key):
                raise ConfigError(f"task.{key} is empty; name at least one archive file")


# --------------------------------------------------------------------------- files


def omniglot_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the Omniglot archives: ``<data_dir>/omniglot``."""
    return dataset_dir("omniglot", data_dir)


def download_archive(name: str, root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download canonical archive ``name`` into ``root``, verify its md5, return its path.

    ``url`` is the base URL (default ``$METAGRAD_OMNIGLOT_URL``, else the authors' repository);
    ``md5`` defaults to ``MD5[name]``. The file appears only when complete and verified.
    """
    base = url or os.environ.get("METAGRAD_OMNIGLOT_URL") or DEFAULT_URL
    return download(base.rstrip("/") + "/" + name, Path(root) / name, md5 or MD5[name])


def _archive_path(name: str, root: Path, download: bool) -> Path:
    path = root / name
    if path.is_file():
        return path
    if name not in MD5:
        raise DataError(f"Omniglot archive {path} is missing (only {', '.join(MD5)} can be downloaded)")
    if not download:
        raise DataError(f"Omniglot archive {path} is missing; set task.download=true or place it there")
    return download_archive(name, root)


# --------------------------------------------------------------------------- archive -> tensors


def index_archive(zf: zipfile.ZipFile, path: Path) -> dict[str, list[zipfile.ZipInfo]]:
    """The PNG entries of an Omniglot zip by character ("Alphabet/characterNN"), each sorted by
    name; refuses unsafe entry names and archives of another structure."""
    chars: dict[str, list[zipfile.ZipInfo]] = {}
    for info in zf.infolist():
        parts = entry_parts(info.filename, path)
        if info.is_dir() or is_junk(parts) or not parts[-1].endswith(".png"):
            continue
        if len(parts) != 4:
            raise DataError(
                f"{path}: not an Omniglot archive: expected <top>/<alphabet>/<character>/<image>.png, "
                f"got {info.filename!r}"
            )
        chars.setdefault(f"{parts[1]}/{parts[2]}", []).append(info)
    if not chars:
        raise DataError(f"{path}: not an Omniglot archive: it holds no PNG images")
    for name, infos in chars.items():
        if len(infos) != DRAWINGS:
            raise DataError(f"{path}: not an Omniglot archive: {name} has {len(infos)} PNGs, expected {DRAWINGS}")
        infos.sort(key=lambda i: i.filename)
    return chars


def decode_archive(zf: zipfile.ZipFile, chars: dict[str, list[zipfile.ZipInfo]], path: Path, out: np.ndarray,
                   crop: str = "none") -> dict:
    """Decode the characters of :func:`index_archive` in sorted order into ``out``, uint8
    [chars, 20, S, S]: grayscale, cut to the ink (``crop="ink"``, :func:`crop_to_ink`), resized
    with Pillow LANCZOS, inverted (ink = 255). Returns {"characters": their names}."""
    size = out.shape[-1]
    with tqdm(total=len(chars) * DRAWINGS, unit="img", desc=f"preprocessing {path.name}",
              disable=None) as bar:  # None: no bar when stderr is not a terminal (log files)
        for c, name in enumerate(sorted(chars)):
            for d, info in enumerate(chars[name]):
                try:
                    with Image.open(io.BytesIO(zf.read(info))) as im:
                        if im.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
                            raise DataError(
                                f"{path}: not an Omniglot archive: {info.filename} is {im.size[0]}x{im.size[1]}, "
                                f"expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}"
                            )
                        gray = im.convert("L")
                        if crop == "ink":
                            gray = crop_to_ink(gray)
                        small = gray.resize((size, size), Image.Resampling.LANCZOS)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                    raise DataError(f"{path}: corrupt archive, entry {info.filename}: {e}") from None
                out[c, d] = 255 - np.asarray(small)
                bar.update()
    return {"characters": sorted(chars)}


def load_archive(path: Path, image_size: int, cache_dir: Path | None = None,
                 crop: str = "none") -> tuple[list[str], torch.Tensor]:
    """An Omniglot archive's (character names "Alphabet/characterNN", uint8 [chars, 20, S, S]),
    decoded once into the image cache (store.py) and memory-mapped from it afterwards; the
    cache is rebuilt when the archive changes."""
    key = {"format": CACHE_FORMAT, **source_key(path), "image_size": image_size, "filter": "lanczos"}
    suffix = ""
    if crop != "none":  # uncropped caches keep their key and name, so they stay valid
        key["crop"], suffix = crop, f".{crop}"
    cache = (cache_dir or default_cache_dir(path.parent)) / f"{path.stem}.{image_size}px{suffix}.cache"
    found = load_images(cache, key)
    if found is None:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path}: not a readable zip archive ({e}); delete it and fetch it again") from None
        with zf:
            chars = index_archive(zf, path)
            shape = (len(chars), DRAWINGS, image_size, image_size)
            found = cached_images(cache, key, shape, lambda out: decode_archive(zf, chars, path, out, crop), what="Omniglot")
    images, meta = found
    return meta["characters"], images


# --------------------------------------------------------------------------- splits


SPLIT_FILES = {"vinyals": "vinyals", "random": "omniglot_random"}  # scheme -> metagrad/data/<stem>_<split>.txt
SPLIT_TITLES = {"vinyals": "Vinyals", "random": "random"}


def listed_characters(split: str, scheme: str = "vinyals") -> list[str]:
    """Characters ("Alphabet/characterNN") of the shipped split ``scheme`` ("vinyals" or
    "random"), part "train", "val", "test" or "trainval"."""
    if split == "trainval":
        return listed_characters("train", scheme) + listed_characters("val", scheme)
    text = (resources.files("metagrad") / "data" / f"{SPLIT_FILES[scheme]}_{split}.txt").read_text()
    return text.split()


def _pool(cfg: OmniglotConfig, archives: list[str], root: Path) -> dict[str, torch.Tensor]:
    """Character name -> uint8 [20, S, S] over the given archives."""
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    pool: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name in archives:
        path = _archive_path(name, root, cfg.download)
        names, images = load_archive(path, cfg.image_size, cache_dir, cfg.crop)
        for ch, im in zip(names, images):
            if ch in pool:
                raise DataError(f"character {ch} is in both {origin[ch]} and {name}; pool archives without overlap")
            pool[ch], origin[ch] = im, name
    return pool


def split_characters(cfg: OmniglotConfig, split: str) -> dict[str, torch.Tensor]:
    """Character name -> uint8 [20, S, S] of ``split`` ("train", "val" or "test") under ``cfg``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    parts = ["train", "val"] if split == "train" and cfg.train_on == "trainval" else [split]
    root = omniglot_dir(cfg.data_dir)
    if cfg.split_scheme in SPLIT_FILES:
        pool = _pool(cfg, cfg.background_archives + cfg.evaluation_archives, root)
        wanted = [c for p in parts for c in listed_characters(p, cfg.split_scheme)]
        missing = [c for c in wanted if c not in pool]
        if missing:
            raise DataError(
                f"the {SPLIT_TITLES[cfg.split_scheme]} {split} split needs {len(missing)} characters missing from the archives "
                f"(e.g. {missing[0]}); it needs the full images_background.zip and images_evaluation.zip"
            )
        return {c: pool[c] for c in wanted}
    if split == "test":
        return _pool(cfg, cfg.evaluation_archives, root)
    pool = _pool(cfg, cfg.background_archives, root)
    return {c: im for c, im in pool.items() if ("val" if c.split("/")[0] in LAKE_VAL_ALPHABETS else "train") in parts}


def omniglot_dataset(cfg: OmniglotConfig, split: str) -> ImageClassDataset:
    """The classes of ``split`` as an :class:`ImageClassDataset`, images uint8 [classes*20, 1, S, S].

    Classes are sorted by character name; with ``cfg.rotate`` each character gives four
    classes "<character>/rot000" .. "/rot270" (counter-clockwise rotations).
    """
    chars = split_characters(cfg, split)
    if not chars:
        raise DataError(f"the Omniglot {cfg.split_scheme} {split} split has no characters in the given archives")
    names = sorted(chars)
    images = torch.stack([chars[n] for n in names])
    rotate = cfg.rotate if split == "train" or cfg.eval_rotate is None else cfg.eval_rotate
    rotations = ROTATIONS if rotate else (0,)
    # [chars, R, 20, S, S]: counter-clockwise rotations, each its own class
    images = torch.stack([torch.rot90(images, r // 90, dims=(-2, -1)) for r in rotations], dim=1)
    suffixes = [f"/rot{r:03d}" if rotate else "" for r in rotations]
    class_names = [n + x for n in names for x in suffixes]
    n_classes = len(class_names)
    return ImageClassDataset(
        images.reshape(n_classes * DRAWINGS, 1, cfg.image_size, cfg.image_size),
        torch.arange(n_classes).repeat_interleave(DRAWINGS),
        class_names,
        class_groups=[n.split("/")[0] + x for n in names for x in suffixes],  # a rotated alphabet is its own group
        sources=torch.arange(DRAWINGS).repeat(n_classes),  # drawing number _01.._20: the drawer
    )


@TASKS.register("omniglot", OmniglotConfig)
def make_omniglot(cfg: OmniglotConfig, split: str) -> EpisodeSampler:
    """Omniglot N-way K-shot character classification (Vinyals or Lake split, 28x28, rotations)."""
    data = omniglot_dataset(cfg, split)
    return EpisodeSampler(data, *episode_shape(cfg, split), name=f"the Omniglot {cfg.split_scheme} {split} split",
                          within_group=applies(cfg.within_alphabet, split), shared_sources=applies(cfg.same_drawers, split),
                          augment=split_augment(cfg, split))


def applies(when: str, split: str) -> bool:
    """Whether an option set to ``when`` ("never", "eval", "always") applies to ``split``."""
    return when == "always" or (when == "eval" and split != "train")
