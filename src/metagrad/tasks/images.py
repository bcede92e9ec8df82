"""Class-indexed image datasets and the vectorised N-way K-shot episode sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import HParams, choice, nonnegative, positive
from ..errors import ConfigError, DataError
from .batch import TaskBatch


@dataclass
class ImageClassDataset:
    """Images held in memory, indexed by class.

    images: uint8 [N, C, H, W] (0..255)    labels: long [N] in 0..len(class_names)-1
    class_names: one name per class; paths: optional source file of each image.
    class_groups: optional group of each class (e.g. its alphabet), for episodes within a group.
    sources: optional long [N], who made each image (e.g. its drawer), for episodes whose
    support and query come from different sources.
    Classes may hold different numbers of images.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    paths: list[str] | None = None
    class_groups: list[str] | None = None
    sources: Tensor | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be [N={len(self.images)}], got {tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.class_names):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1}")
        if self.class_groups is not None and len(self.class_groups) != len(self.class_names):
            raise ValueError(f"class_groups must name one group per class ({len(self.class_names)}), got {len(self.class_groups)}")
        if self.sources is not None and self.sources.shape != self.labels.shape:
            raise ValueError(f"sources must be [N={len(self.images)}], got {tuple(self.sources.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> Tensor:
        """Images per class, long [n_classes]."""
        return torch.bincount(self.labels, minlength=self.n_classes)


def as_float(images: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1], same shape."""
    return images.to(torch.float32).mul_(1.0 / 255.0)


def opposite_polarity(background: float | None, images: Tensor) -> bool:
    """True when uint8 ``images`` are line drawings whose ground is the opposite of a training
    set's ``background`` (its median pixel in [0, 1]): both grounds plain (median within 0.1 of
    black or white) and on different sides. Photographs (a mid-grey median) are never flipped."""
    if not isinstance(background, (int, float)) or 0.1 < background < 0.9:  # None: not recorded
        return False
    ground = float(images.flatten().median()) / 255.0
    return (ground >= 0.9) if background <= 0.1 else (ground <= 0.1)


def random_subsets(rows: int, n: int, k: int, generator: torch.Generator) -> Tensor:
    """``rows`` independent uniformly random ordered k-subsets of 0..n-1, long [rows, k].

    Floyd's algorithm vectorised over rows (k small steps, O(rows·k²) work independent of n),
    then a random permutation of each subset. Runs on ``generator.device``.
    """
    dev = generator.device
    out = torch.empty(rows, k, dtype=torch.long, device=dev)
    for j, m in enumerate(range(n - k, n)):
        t = torch.randint(m + 1, (rows,), generator=generator, device=dev)
        out[:, j] = torch.where((out[:, :j] == t[:, None]).any(1), m, t)
    return out.gather(1, torch.rand(rows, k, generator=generator, device=dev).argsort(dim=1))


@dataclass
class EpisodeConfig(HParams):
    """The N-way K-shot shape of a class-indexed task family's episodes (a base of its config)."""

    ways: int = positive(5)
    shots: int = positive(1)
    queries: int = positive(1)  # query images per class
    # val/test episodes; 0 = as in training (a different eval_ways needs a learner without a fixed head)
    eval_ways: int = nonnegative(0)
    eval_shots: int = nonnegative(0)
    eval_queries: int = nonnegative(0)
    # training images distorted at random ("affine": Koch et al. 2015's small affine maps); never val/test
    augment: str = choice("none", ("none", "affine"))
    # val/test episodes: "shifts" gives each support image as 9 shots, moved by -1/0/+1 px each way;
    # "shifts_both" also scores each query in its 9 shifts (log-probabilities summed)
    eval_augment: str = choice("none", ("none", "shifts", "shifts_both"))

    def validate(self) -> None:
        for key in ("ways", "eval_ways"):
            if getattr(self, key) == 1:
                raise ConfigError(f"task.{key}=1: a 1-way task has only one answer (accuracy is always 100%); use 2 or more")


def episode_shape(cfg: EpisodeConfig, split: str) -> tuple[int, int, int]:
    """(ways, shots, queries) of ``split``: val/test take ``cfg.eval_ways/eval_shots/eval_queries``
    where those are set (> 0), e.g. ProtoNets train 60-way and test 5-way."""
    if split == "train":
        return cfg.ways, cfg.shots, cfg.queries
    return cfg.eval_ways or cfg.ways, cfg.eval_shots or cfg.shots, cfg.eval_queries or cfg.queries


def split_augment(cfg: EpisodeConfig, split: str) -> str:
    """The augmentation of ``split``: ``cfg.augment`` in training, ``cfg.eval_augment`` in val/test."""
    return cfg.augment if split == "train" else cfg.eval_augment


#: the offsets (dy, dx) of ``augment="shifts"``, the unshifted image first
SHIFTS = [(0, 0)] + [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shifted_copies(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, S, C, H, W], y [B, S] -> [B, 9S, ...], [B, 9S]: every image also moved by one pixel
    in each of the 8 directions (the edge row or column repeated into the vacated one)."""
    H, W = x.shape[-2:]
    padded = F.pad(x.flatten(0, 1), (1, 1, 1, 1), mode="replicate").view(*x.shape[:-2], H + 2, W + 2)
    copies = [padded[..., 1 - dy : 1 - dy + H, 1 - dx : 1 - dx + W] for dy, dx in SHIFTS]
    return torch.cat(copies, 1), y.repeat(1, len(SHIFTS))


def episode_views(augment: str, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor):
    """An episode [B, S | Q, ...] as ``augment`` presents it at test time: "shifts" gives the
    support as its :func:`shifted_copies` (9S shots), "shifts_both" the queries too ([B, 9Q], shift
    by shift, to be scored by ``evaluation.vote``); otherwise unchanged. Returns the four tensors."""
    if augment in ("shifts", "shifts_both"):
        support_x, support_y = shifted_copies(support_x, support_y)
    if augment == "shifts_both":
        query_x, query_y = shifted_copies(query_x, query_y)
    return support_x, support_y, query_x, query_y


def query_views(augment: str) -> int:
    """How many views of each query :func:`episode_views` gives."""
    return len(SHIFTS) if augment == "shifts_both" else 1


#: Koch, Zemel & Salakhutdinov (2015), Sec. 4.2: each component applies with probability 1/2
AFFINE_RANGES = {"rotation_deg": 10.0, "shear": 0.3, "scale": 0.2, "translate_px_at_105": 2.0}


def random_affine_maps(M: int, generator: torch.Generator) -> Tensor:
    """M random affine maps of Koch et al. (2015), as ``F.affine_grid``'s theta float64 [M, 2, 3]
    (output -> input, coordinates -1..1 across the image): rotation in ±10°, shears ρx, ρy in
    ±0.3, scales sx, sy in 1 ± 0.2, translations in ±2 px at 105 px (±1.9 % of the side), each of
    the seven components present with probability 1/2. Drawn on ``generator.device``."""
    dev = generator.device
    u = torch.rand(M, 7, generator=generator, dtype=torch.float64, device=dev) * 2 - 1  # [-1, 1]
    u = u * (torch.rand(M, 7, generator=generator, dtype=torch.float64, device=dev) < 0.5)
    r = AFFINE_RANGES
    angle = u[:, 0] * math.radians(r["rotation_deg"])
    one = torch.ones(M, dtype=torch.float64, device=dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([one, u[:, 1] * r["shear"]], -1), torch.stack([u[:, 2] * r["shear"], one], -1)], -2)
    scale = torch.diag_embed(1 + u[:, 3:5] * r["scale"])
    shift = u[:, 5:] * (2 * r["translate_px_at_105"] / 105)  # the coordinates span 2 per side
    return torch.cat([rot @ shear @ scale, shift[..., None]], -1)


def warp(images: Tensor, theta: Tensor) -> Tensor:
    """images float [M, C, H, W] resampled bilinearly through ``theta`` [M, 2, 3] (output ->
    input coordinates, as ``F.affine_grid``), edge pixels extended -> [M, C, H, W]."""
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class EpisodeSampler:
    """N-way K-shot classification tasks drawn from an :class:`ImageClassDataset`.

    Each task picks ``ways`` distinct classes uniformly at random and gives them the labels
    0..N-1 in random order; from each class it draws ``shots + queries`` distinct images
    (support and query never share an image), then shuffles the order of the examples in the
    support and in the query set. :meth:`sample` returns

        support_x float32 [B, N*K, C, H, W] in [0, 1]    support_y long [B, N*K] in 0..N-1
        query_x   float32 [B, N*Q, C, H, W] in [0, 1]    query_y   long [B, N*Q]

    ``within_group``: the N classes of a task are drawn from one group of
    ``dataset.class_groups`` (e.g. one alphabet), the group uniformly among those with at least
    N classes. ``shared_sources``: every class's support comes from the same K sources and its
    queries from Q other sources (``dataset.sources``, e.g. drawers; each class must have
    exactly one image per source) — Lake et al.'s one-shot runs, with K = Q = 1.
    ``augment="affine"``: every support and query image is warped by its own
    :func:`random_affine_maps` distortion, drawn from the same generator after the indices.
    ``augment="shifts"`` (for test episodes): the support set becomes :func:`shifted_copies`
    of itself, N*K*9 examples, so a learner that takes any number of shots sees each support
    image in 9 positions; the tasks drawn are the same as without it. ``augment="shifts_both"``
    also gives the queries as shifted copies, [B, 9Q] laid out shift by shift, and sets
    ``query_views = 9``: evaluation then sums each query's log-probabilities over its 9 views.

    All randomness comes from the generator passed to :meth:`sample` and the whole batch is
    drawn with a handful of tensor ops (no Python loop over tasks or images); the cost grows
    with B·N·(largest class size) for the choice of images within each class (B·classes
    within a group).

    The indices are drawn on the generator's device (its lookup tables are copied there once)
    and the images gathered on the images' device. After :meth:`to` a GPU, a generator on that
    GPU draws the whole batch there with no host<->device copy and no host synchronisation; a
    CPU generator gives the same tasks as ever (one code path, bit for bit).
    """

    kind = "classification"

    def __init__(self, dataset: ImageClassDataset, ways: int, shots: int, queries: int, name: str = "dataset",
                 within_group: bool = False, shared_sources: bool = False, augment: str = "none"):
        if augment not in ("none", "affine", "shifts", "shifts_both"):
            raise ConfigError(f"augment={augment!r} is not allowed; allowed: none, affine, shifts, shifts_both")
        if ways > dataset.n_classes:
            n = dataset.n_classes
            allowed = f"allowed: 2..{n}" if n >= 2 else "episodes need at least 2 classes"
            raise ConfigError(f"{ways}-way tasks need {ways} classes but {name} has {n} class{'' if n == 1 else 'es'}; {allowed}")
        counts = dataset.counts()
        need = shots + queries
        short = torch.nonzero(counts < need).flatten()
        if len(short):
            c = int(short[0])
            raise DataError(
                f"class {dataset.class_names[c]!r} of {name} has {int(counts[c])} image{'' if int(counts[c]) == 1 else 's'}, "
                f"fewer than "
                f"task.shots + task.queries = {shots} + {queries}; {len(short)} class(es) are that small"
            )
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.input_shape = tuple(dataset.images.shape[1:])
        self.n_outputs = ways
        self._max_count = int(counts.max())
        self.within_group, self.shared_sources, self.augment = within_group, shared_sources, augment
        self.query_views = query_views(augment)  # see evaluation.evaluate
        tables = {
            "counts": counts,  # images per class
            "order": torch.argsort(dataset.labels, stable=True),  # image ids grouped by class
            "starts": torch.cumsum(counts, 0) - counts,  # first position of each class in "order"
        }
        self.notes: list[str] = []  # facts about what this source draws that a user might not expect
        if within_group:
            tables["group_of"], tables["groups"] = self._group_ids(dataset, ways, name)
            self.notes += self._small_groups(dataset, tables["group_of"], tables["groups"], ways, name)
        if shared_sources:
            tables["by_source"] = self._source_table(dataset, name)  # K+Q <= images per class = sources
        self._tables = {torch.device("cpu"): tables}  # device -> the lookup tables on it

    def _lookup(self, device: torch.device) -> dict[str, Tensor]:
        """The lookup tables :meth:`sample_indices` reads, on ``device`` (copied there once)."""
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables[torch.device("cpu")].items()}
        return self._tables[device]

    @staticmethod
    def _group_ids(dataset: ImageClassDataset, ways: int, name: str) -> tuple[Tensor, Tensor]:
        """(group id of each class [n_classes], ids of the groups with >= ``ways`` classes)."""
        if dataset.class_groups is None:
            raise ConfigError(f"{name} has no class groups, so its episodes cannot be drawn within one group")
        names = sorted(set(dataset.class_groups))
        index = {g: i for i, g in enumerate(names)}
        group_of = torch.tensor([index[g] for g in dataset.class_groups])
        sizes = torch.bincount(group_of, minlength=len(names))
        eligible = torch.nonzero(sizes >= ways).flatten()
        if not len(eligible):
            big = int(sizes.argmax())
            raise ConfigError(f"{ways}-way tasks within one group need a group of {ways} classes, but the largest "
                              f"group of {name} ({names[big]}) has {int(sizes[big])}")
        return group_of, eligible

    @staticmethod
    def _small_groups(dataset: ImageClassDataset, group_of: Tensor, eligible: Tensor, ways: int, name: str) -> list[str]:
        """A note naming the groups too small for ``ways``-way tasks, whose classes are never drawn."""
        names = sorted(set(dataset.class_groups))
        small = sorted(set(range(len(names))) - set(eligible.tolist()))
        if not small:
            return []
        unused = int(torch.isin(group_of, torch.tensor(small)).sum())
        shown = ", ".join(names[g] for g in small[:2]) + (", ..." if len(small) > 2 else "")
        return [f"{name}: {len(small)} of {len(names)} class groups have fewer than {ways} classes ({shown}), "
                f"so their {unused} of {dataset.n_classes} classes are never in a {ways}-way task"]

    @staticmethod
    def _source_table(dataset: ImageClassDataset, name: str) -> Tensor:
        """Image id of each (class, source), long [n_classes, n_sources]."""
        if dataset.sources is None:
            raise ConfigError(f"{name} does not record who made each image, so support and query cannot be drawn from different sources")
        n_sources = int(dataset.sources.max()) + 1
        cell = dataset.labels * n_sources + dataset.sources
        if not bool((torch.bincount(cell, minlength=dataset.n_classes * n_sources) == 1).all()):
            raise DataError(f"{name}: every class needs exactly one image from each of its {n_sources} sources")
        table = torch.empty(dataset.n_classes * n_sources, dtype=torch.long)
        table[cell] = torch.arange(len(cell))
        return table.view(dataset.n_classes, n_sources)

    @property
    def background(self) -> float:
        """The median pixel value in [0, 1] over (a sample of) the images: near 0 for light
        strokes on a dark ground, near 1 for dark ink on white, in between for photographs."""
        images = self.dataset.images
        sample = images[:: max(1, len(images) // 512)]
        return float(sample.flatten().median()) / 255.0

    def to(self, device) -> "EpisodeSampler":
        """Keep the images, and the lookup tables, on ``device`` (e.g. a GPU): with a generator
        on ``device``, :meth:`sample` then draws and gathers whole batches there. The dataset
        object given to the constructor is left where it was (it may be shared)."""
        self.dataset = replace(self.dataset, images=self.dataset.images.to(device))
        self._lookup(self.dataset.images.device)
        return self

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Image ids and labels of a batch: support ids/labels [B, N*K], query ids/labels [B, N*Q],
        all on ``generator.device`` (no host synchronisation: nothing here reads a tensor's value)."""
        B, N, K, Q = batch_size, self.ways, self.shots, self.queries
        dev = generator.device
        t = self._lookup(dev)
        n_classes = len(t["counts"])
        # A random ordered subset of N classes per task; label j is the class in column j.
        if self.within_group:  # one eligible group per task, then N of its classes in random order
            group = t["groups"][torch.randint(len(t["groups"]), (B,), generator=generator, device=dev)]
            scores = torch.rand(B, n_classes, generator=generator, dtype=torch.float64, device=dev)
            scores.masked_fill_(t["group_of"] != group[:, None], -1.0)
            classes = scores.argsort(dim=1, descending=True)[:, :N]
        else:
            classes = random_subsets(B, n_classes, N, generator)
        if self.shared_sources:  # K+Q distinct sources per task, the same for all its classes
            sources = random_subsets(B, t["by_source"].shape[1], K + Q, generator)
            ids = t["by_source"][classes[..., None], sources[:, None, :]]  # [B, N, K+Q]
        else:  # K+Q distinct positions inside each chosen class (padding beyond a class's size never wins)
            scores = torch.rand(B, N, self._max_count, generator=generator, dtype=torch.float64, device=dev)
            scores.masked_fill_(torch.arange(self._max_count, device=dev) >= t["counts"][classes][..., None], -1.0)
            pos = scores.argsort(dim=-1, descending=True)[..., : K + Q]  # [B, N, K+Q]
            ids = t["order"][t["starts"][classes][..., None] + pos]
        labels = torch.arange(N, device=dev).view(1, N, 1).expand(B, N, K + Q)

        def shuffled(i: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            i, y = i.reshape(B, -1), y.reshape(B, -1)
            perm = torch.rand(i.shape, generator=generator, device=dev).argsort(dim=1)
            return i.gather(1, perm), y.gather(1, perm)

        return (*shuffled(ids[..., :K], labels[..., :K]), *shuffled(ids[..., K:], labels[..., K:]))

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """Draw ``batch_size`` tasks; the same generator state always gives the same tasks. The
        batch lies on the images' device (indices drawn elsewhere are copied there)."""
        s_ids, s_y, q_ids, q_y = self.sample_indices(batch_size, generator)
        images = self.dataset.images
        dev = images.device

        def gather(ids: Tensor) -> Tensor:  # index_select is much faster than images[ids] on CPU
            x = as_float(images.index_select(0, ids.flatten().to(dev)))
            if self.augment == "affine":
                x = warp(x, random_affine_maps(len(x), generator))
            return x.view(*ids.shape, *self.input_shape)

        return TaskBatch(*episode_views(self.augment, gather(s_ids), s_y.to(dev), gather(q_ids), q_y.to(dev)))
