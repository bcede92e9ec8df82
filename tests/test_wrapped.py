"""Any labelled Dataset (or tensors) as few-shot tasks: class-disjoint splits, image
conversion, one-line errors, and a ProtoNet that learns from a wrapped Dataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from metagrad import evaluate, few_shot_splits
from metagrad.errors import ConfigError, DataError
from metagrad.learners.protonet import ProtoNet
from metagrad.models.conv4 import Conv4, Conv4Config


class Glyphs(torch.utils.data.Dataset):
    """``classes`` random 8x8 glyphs; each drawing is its glyph at a random place of a 16x16
    canvas plus noise, so raw pixels are a poor metric and an embedding must be learned."""

    def __init__(self, classes=40, per_class=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        glyphs = (torch.rand(classes, 8, 8, generator=g) < 0.4).float()
        self.items = []
        for c in range(classes):
            for _ in range(per_class):
                dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
                image = torch.zeros(1, 16, 16)
                image[0, dy:dy + 8, dx:dx + 8] = glyphs[c]
                self.items.append(((image + 0.3 * torch.randn(image.shape, generator=g)).clamp(0, 1), c))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_a_protonet_learns_from_a_wrapped_dataset():
    train, val, test = few_shot_splits(Glyphs(), ways=5, shots=1, queries=5)
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(Conv4Config(channels=16, blocks=2), 1, None), "vmap")
    before = evaluate(learner, test, episodes=300)["adapted"].mean
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        opt.zero_grad()
        loss, _ = learner.meta_loss(train.sample(4, gen))
        loss.backward()
        opt.step()
    after = evaluate(learner, test, episodes=300)["adapted"].mean
    # measured: 27.5 % untrained (chance 20 %), 51.5 % after 200 meta-batches on classes it never saw
    assert after > 0.42 and after > before + 0.15, (before, after)


def test_splits_are_class_disjoint_and_convert_every_image_kind():
    data = Glyphs(classes=20, per_class=6)
    train, val, test = few_shot_splits(data, ways=3, shots=2, queries=2, fractions=(0.5, 0.25, 0.25))
    names = [set(s.dataset.class_names) for s in (train, val, test)]
    assert [len(n) for n in names] == [10, 5, 5] and set.union(*names) == {str(c) for c in range(20)}
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for split in (train, val, test):  # every image of a class, and only its images, in uint8
        assert len(split.dataset) == 6 * split.dataset.n_classes and split.dataset.images.dtype == torch.uint8
        for c, name in enumerate(split.dataset.class_names):
            mine = split.dataset.images[split.dataset.labels == c].float() / 255
            theirs = torch.stack([x for x, y in data.items if str(y) == name])
            assert torch.allclose(mine, theirs, atol=0.5 / 255)
    again = few_shot_splits(data, ways=3, shots=2, queries=2, fractions=(0.5, 0.25, 0.25))
    other = few_shot_splits(data, ways=3, shots=2, queries=2, fractions=(0.5, 0.25, 0.25), split_seed=1)
    assert again[2].dataset.class_names == test.dataset.class_names != other[2].dataset.class_names

    # tensors with labels; PIL images of string labels with a transform; names from .classes
    images = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8)
    tr, _, te = few_shot_splits(images, torch.arange(12) % 4, ways=2, fractions=(0.5, 0, 0.5))
    assert tr.input_shape == (3, 4, 4) and te.dataset.n_classes == 2
    pil = [(Image.fromarray(np.full((5, 7), 40 * i, np.uint8)), "ab"[i % 2]) for i in range(6)]
    tr, _, _ = few_shot_splits(pil, ways=2, fractions=(1, 0, 0), transform=lambda im: im.resize((4, 4)))
    assert tr.input_shape == (1, 4, 4) and tr.dataset.class_names == ["a", "b"]
    data.classes = [f"glyph{c}" for c in range(20)]
    assert set(few_shot_splits(data, ways=3, fractions=(1, 0, 0))[0].dataset.class_names) == set(data.classes)


@pytest.mark.parametrize("make, error, message", [
    (lambda: few_shot_splits([(torch.full((1, 2, 2), 2.0), 0)]), DataError, r"item 0: float pixel values must lie in \[0, 1\], got 2..2"),
    (lambda: few_shot_splits([(torch.zeros(1, 2, 2), 0), (torch.zeros(1, 3, 3), 1)]), DataError, r"item 1 has shape \[1, 3, 3\], item 0 \[1, 2, 2\]"),
    (lambda: few_shot_splits([torch.zeros(1, 2, 2)]), DataError, "item 0 is not an \\(image, label\\) pair"),
    (lambda: few_shot_splits(torch.zeros(4, 1, 2, 2)), ConfigError, "need their labels"),
    (lambda: few_shot_splits(Glyphs(4, 2), fractions=(0.5, 0.6, 0)), ConfigError, r"fractions=\(0.5, 0.6, 0\): expected three"),
    (lambda: few_shot_splits(Glyphs(4, 2), ways=2, fractions=(0.9, 0.1, 0)), ConfigError, "leave the val split no class"),
    (lambda: few_shot_splits(Glyphs(10, 2), ways=5), ConfigError, r"5-way tasks need 5 classes but the val split \(2 of 10 classes\) has 2"),
    (lambda: few_shot_splits([]), DataError, "the dataset is empty"),
])
def test_bad_input_is_one_line(make, error, message):
    with pytest.raises(error, match=message):
        make()
