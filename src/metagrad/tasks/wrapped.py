"""Any labelled images as N-way K-shot tasks: a ``torch.utils.data.Dataset`` of (image, label)
pairs, or a tensor of images with a tensor of labels, split by class into train / val / test
and drawn by the shared seeded, vectorised :class:`~metagrad.tasks.images.EpisodeSampler`.

    train, val, test = few_shot_splits(my_dataset, ways=5, shots=1, queries=15)
    batch = train.sample(4, torch.Generator().manual_seed(0))  # a TaskBatch of 4 tasks
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .images import EpisodeSampler, ImageClassDataset

SPLIT_NAMES = ("train", "val", "test")


def _as_uint8(image, index: int) -> Tensor:
    """One image (PIL image, numpy array or tensor [C, H, W] / [H, W]) -> uint8 [C, H, W]."""
    if not isinstance(image, Tensor):
        array = np.asarray(image)
        if array.ndim == 3:  # PIL and numpy images are [H, W, C]
            array = array.transpose(2, 0, 1)
        image = torch.from_numpy(array.copy())
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3:
        raise DataError(f"item {index}: an image must be [C, H, W] or [H, W], got shape {list(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.bool:
        return image.to(torch.uint8) * 255
    if image.is_floating_point():
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 1:
            raise DataError(f"item {index}: float pixel values must lie in [0, 1], got {lo:.3g}..{hi:.3g}")
        return image.mul(255).round().to(torch.uint8)
    raise DataError(f"item {index}: pixels must be uint8 (0..255) or float in [0, 1], got {image.dtype}")


def _read(data, labels, transform) -> tuple[Tensor, list]:
    """(uint8 images [N, C, H, W], the N raw labels) from a Dataset or from tensors."""
    if isinstance(data, Tensor):
        if labels is None:
            raise ConfigError("images given as a tensor need their labels: few_shot_splits(images, labels, ...)")
        if len(labels) != len(data):
            raise ConfigError(f"{len(data)} images but {len(labels)} labels")
        items = zip(data, labels.tolist() if isinstance(labels, Tensor) else list(labels))
    else:
        if labels is not None:
            raise ConfigError("labels are given only with a tensor of images; a Dataset's items carry their labels")
        items = (data[i] for i in range(len(data)))
    images, raw = [], []
    for i, item in enumerate(items):
        try:
            image, label = item
        except (TypeError, ValueError):
            raise DataError(f"item {i} is not an (image, label) pair") from None
        image = _as_uint8(transform(image) if transform else image, i)
        if images and image.shape != images[0].shape:
            raise DataError(f"item {i} has shape {list(image.shape)}, item 0 {list(images[0].shape)}; "
                            "all images must have one shape (resize them with transform=...)")
        images.append(image)
        raw.append(label.item() if isinstance(label, Tensor) else label)
    if not images:
        raise DataError("the dataset is empty")
    return torch.stack(images), raw


def few_shot_splits(
    data,
    labels=None,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 1,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    split_seed: int = 0,
    transform=None,
) -> tuple[EpisodeSampler | None, EpisodeSampler | None, EpisodeSampler | None]:
    """Train, val and test task sources over disjoint classes of labelled images.

    data: a Dataset whose items are (image, label) — the image a PIL image, a numpy array or a
    tensor [C, H, W] (uint8 0..255 or float in [0, 1]), the label any hashable value — or a
    tensor of images [N, C, H, W] with ``labels`` [N]. ``transform`` maps each image once, as
    it is read (e.g. a resize to one size). The classes (sorted labels) are shuffled with
    ``split_seed`` and cut by ``fractions`` (train, val, test): no class is in two splits. A
    split with fraction 0 is None. Every split draws ``ways``-way ``shots``-shot tasks with
    ``queries`` queries per class; ``EpisodeSampler(test.dataset, 20, 1, 15)`` gives another shape.
    Class names are the Dataset's ``classes[label]`` where it has them (torchvision's datasets),
    else str(label).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"fractions={tuple(fractions)}: expected three non-negative numbers (train, val, test) summing to 1")
    images, raw = _read(data, labels, transform)
    try:
        values = sorted(set(raw))
    except TypeError:
        raise DataError("labels must be of one sortable kind (all ints or all strings)") from None
    index = {v: i for i, v in enumerate(values)}
    y = torch.tensor([index[v] for v in raw])
    known = getattr(data, "classes", None)
    if known is not None and all(isinstance(v, int) and 0 <= v < len(known) for v in values):
        names = [str(known[v]) for v in values]
    else:
        names = [str(v) for v in values]
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(split_seed))
    sizes = [round(f * len(values)) for f in fractions[:2]]
    cuts = [0, sizes[0], min(sizes[0] + sizes[1], len(values)), len(values)]
    out = []
    for s, name in enumerate(SPLIT_NAMES):
        if fractions[s] == 0:
            out.append(None)
            continue
        chosen = order[cuts[s] : cuts[s + 1]].sort().values
        if not len(chosen):
            raise ConfigError(f"fractions={tuple(fractions)} of {len(values)} classes leave the {name} split no class")
        new_label = torch.full((len(values),), -1)
        new_label[chosen] = torch.arange(len(chosen))
        keep = new_label[y] >= 0
        split = ImageClassDataset(images[keep], new_label[y[keep]], [names[int(c)] for c in chosen])
        out.append(EpisodeSampler(split, ways, shots, queries, name=f"the {name} split ({len(chosen)} of {len(values)} classes)"))
    return tuple(out)
