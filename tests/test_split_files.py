"""The shipped few-shot benchmark splits (``metagrad/data``, see ``SPLITS.md`` there) have the
published shapes: class counts, disjoint splits, 600 images a mini-ImageNet class, whole CIFAR-100
superclasses for FC100, and the Chen et al. index rule for CUB."""

import csv
import io
import re
from importlib import resources

import pytest

SPLITS = ("train", "val", "test")

# CIFAR-100 superclass -> its five fine classes, with the names of the dataset's ``meta`` file
# (``coarse_label_names`` / ``fine_label_names``), 20 x 5.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
FINE_TO_SUPER = {f: s for s, fs in CIFAR100_SUPERCLASSES.items() for f in fs}

WNID = re.compile(r"n\d{8}")


def _text(name: str) -> str:
    return (resources.files("metagrad") / "data" / name).read_text(encoding="utf-8")


def _lines(name: str) -> list[str]:
    return _text(name).splitlines()


def _rows(name: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(_text(name), newline="")))


def _assert_disjoint(sets: dict[str, set]) -> None:
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not sets[a] & sets[b], (a, b, sorted(sets[a] & sets[b])[:5])


def test_cifar100_table_is_twenty_superclasses_of_five():
    assert len(CIFAR100_SUPERCLASSES) == 20
    assert all(len(fs) == 5 for fs in CIFAR100_SUPERCLASSES.values())
    assert len(FINE_TO_SUPER) == 100


# --- mini-ImageNet -------------------------------------------------------------------------------

MINI_COUNTS = {"train": 64, "val": 16, "test": 20}


def _mini(split: str) -> dict[str, list[str]]:
    rows = _rows(f"miniimagenet_{split}.csv")
    assert rows[0] == ["filename", "label"]
    by_class: dict[str, list[str]] = {}
    for filename, label in rows[1:]:
        by_class.setdefault(label, []).append(filename)
    return by_class


@pytest.mark.parametrize("split", SPLITS)
def test_mini_imagenet_counts_and_600_images_per_class(split):
    by_class = _mini(split)
    assert len(by_class) == MINI_COUNTS[split]
    assert sum(len(v) for v in by_class.values()) == 600 * MINI_COUNTS[split]
    for wnid, files in by_class.items():
        assert WNID.fullmatch(wnid)
        assert len(files) == len(set(files)) == 600, wnid
        for f in files:
            # <wnid><8-digit 1-based index>.jpg (see SPLITS.md for the ILSVRC mapping)
            assert re.fullmatch(wnid + r"\d{8}\.jpg", f), f
            assert 1 <= int(f[9:17]) <= 1300, f


def test_mini_imagenet_splits_are_class_disjoint():
    _assert_disjoint({s: set(_mini(s)) for s in SPLITS})


# --- tieredImageNet ------------------------------------------------------------------------------

TIERED_COUNTS = {"train": (351, 20), "val": (97, 6), "test": (160, 8)}


@pytest.mark.parametrize("split", SPLITS)
def test_tiered_imagenet_counts(split):
    rows = _rows(f"tieredimagenet_{split}.csv")
    assert all(len(r) == 2 and WNID.fullmatch(r[0]) and WNID.fullmatch(r[1]) for r in rows)
    classes = [r[0] for r in rows]
    categories = {r[1] for r in rows}
    assert (len(classes), len(categories)) == TIERED_COUNTS[split]
    assert len(set(classes)) == len(classes)


def test_tiered_imagenet_classes_and_categories_are_disjoint():
    rows = {s: _rows(f"tieredimagenet_{s}.csv") for s in SPLITS}
    _assert_disjoint({s: {r[0] for r in rows[s]} for s in SPLITS})
    _assert_disjoint({s: {r[1] for r in rows[s]} for s in SPLITS})
    assert len({r[0] for s in SPLITS for r in rows[s]}) == 608
    assert len({r[1] for s in SPLITS for r in rows[s]}) == 34


# --- CIFAR-FS and FC100 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bench, counts",
    [("cifarfs", {"train": 64, "val": 16, "test": 20}), ("fc100", {"train": 60, "val": 20, "test": 20})],
)
def test_cifar_benchmarks_partition_the_100_fine_classes(bench, counts):
    lists = {s: _lines(f"{bench}_{s}.txt") for s in SPLITS}
    assert {s: len(v) for s, v in lists.items()} == counts
    sets = {s: set(v) for s, v in lists.items()}
    assert all(len(sets[s]) == counts[s] for s in SPLITS)
    _assert_disjoint(sets)
    assert set().union(*sets.values()) == set(FINE_TO_SUPER)


def test_fc100_splits_are_unions_of_whole_superclasses():
    supers = {}
    for s in SPLITS:
        fine = set(_lines(f"fc100_{s}.txt"))
        supers[s] = {FINE_TO_SUPER[f] for f in fine}
        assert fine == {f for sup in supers[s] for f in CIFAR100_SUPERCLASSES[sup]}, s
    assert {s: len(v) for s, v in supers.items()} == {"train": 12, "val": 4, "test": 4}
    assert supers["val"] == {"large_carnivores", "large_omnivores_and_herbivores",
                             "non-insect_invertebrates", "small_mammals"}
    assert supers["test"] == {"aquatic_mammals", "insects", "medium_mammals", "people"}


# --- CUB-200-2011 --------------------------------------------------------------------------------


def test_cub_names_counts_and_index_rule():
    lists = {s: _lines(f"cub_{s}.txt") for s in SPLITS}
    assert {s: len(v) for s, v in lists.items()} == {"train": 100, "val": 50, "test": 50}
    _assert_disjoint({s: set(v) for s, v in lists.items()})
    every = sorted(n for v in lists.values() for n in v)
    assert [int(n[:3]) for n in every] == list(range(1, 201))
    for s, names in lists.items():
        for name in names:
            assert re.fullmatch(r"\d{3}\.[A-Za-z][A-Za-z_]*", name), name
            i = int(name[:3]) - 1  # 0-based position in the sorted folder list
            expected = "train" if i % 2 == 0 else "val" if i % 4 == 1 else "test"
            assert s == expected, name
