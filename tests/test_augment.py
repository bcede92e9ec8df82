"""Training-time affine augmentation (Koch et al. 2015): the warp against Pillow's, the maps'
ranges, and the sampler applying it to training episodes only, reproducibly; test-time shifted
support copies against per-pixel indexing, and the query views' votes against a loop."""

import json

import numpy as np
import torch
from PIL import Image

from metagrad.config import build_dataclass
from metagrad.errors import ConfigError
from metagrad.evaluation import evaluate, vote
from metagrad.learners.protonet import ProtoNet
from metagrad.models.conv4 import Conv4, Conv4Config
from metagrad.tasks.folder import FolderConfig, make_folder
from metagrad.tasks.images import SHIFTS, EpisodeSampler, ImageClassDataset, random_affine_maps, shifted_copies, warp

import pytest

from test_folder import make_classes


def test_warp_matches_pillows_affine_transform():
    """An independent resampler: Pillow's AFFINE transform (pixel-centre coordinates) with the
    map converted from affine_grid's [-1, 1] coordinates must give the same pixels."""
    W = 40
    theta = random_affine_maps(8, torch.Generator().manual_seed(0))
    images = torch.zeros(8, 1, W, W, dtype=torch.float64)
    images[:, :, 8:32, 8:32] = torch.rand(8, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    out = warp(images, theta)
    for i in range(8):
        (a, b, c), (d, e, f) = theta[i].tolist()
        data = (a, b, W / 2 * (c + 1 - a - b), d, e, W / 2 * (f + 1 - d - e))
        pil = Image.fromarray(images[i, 0].numpy().astype(np.float32), mode="F")
        expected = np.asarray(pil.transform((W, W), Image.AFFINE, data=data, resample=Image.BILINEAR))
        np.testing.assert_allclose(out[i, 0].numpy(), expected, atol=1e-6)
        assert (out[i] - images[i]).abs().max() > 0.05 or torch.allclose(theta[i], torch.eye(2, 3, dtype=theta.dtype))


def test_affine_maps_stay_in_koch_et_al_ranges():
    M = 20000
    theta = random_affine_maps(M, torch.Generator().manual_seed(0))
    shift = theta[:, :, 2]
    assert shift.abs().max() <= 4 / 105 + 1e-12  # ±2 px at 105 px in coordinates spanning 2
    assert 0.7 < (shift == 0).all(1).double().mean() / 0.25 < 1.3  # both translations off: p = 1/4
    identity = (theta == torch.eye(2, 3, dtype=theta.dtype)).flatten(1).all(1).double().mean()
    assert 0.5 < identity * 128 < 1.5  # all seven components off: p = 1/128
    det = torch.linalg.det(theta[:, :, :2])  # rotation 1, shear 1 - ρx ρy, scales sx sy
    assert det.min() >= 0.8**2 * (1 - 0.09) - 1e-9 and det.max() <= 1.2**2 * (1 + 0.09) + 1e-9


def toy_dataset(classes: int = 6, per_class: int = 4, size: int = 16) -> ImageClassDataset:
    g = torch.Generator().manual_seed(3)
    images = torch.zeros(classes * per_class, 1, size, size, dtype=torch.uint8)
    blocks = torch.randint(0, 256, (classes * per_class, 1, 4, 4), generator=g, dtype=torch.uint8)
    images[:, :, 4:12, 4:12] = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)  # 2x2-pixel cells
    return ImageClassDataset(images, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)])


def test_augmented_episodes_keep_their_images_and_labels_and_repeat():
    data = toy_dataset()
    plain = EpisodeSampler(data, 3, 1, 2).sample(50, torch.Generator().manual_seed(0))
    sampler = EpisodeSampler(data, 3, 1, 2, augment="affine")
    aug = sampler.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(aug.support_y, plain.support_y) and torch.equal(aug.query_y, plain.query_y)
    diff = (aug.query_x - plain.query_x).abs().flatten(1).amax(1)
    assert (diff > 0.02).double().mean() > 0.9  # almost every image is distorted ...
    other = EpisodeSampler(data, 3, 1, 2).sample(50, torch.Generator().manual_seed(1))  # other images
    assert (aug.query_x - plain.query_x).abs().mean() < 0.6 * (other.query_x - plain.query_x).abs().mean()  # a small map
    again = sampler.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(again.query_x, aug.query_x) and torch.equal(again.support_x, aug.support_x)
    with pytest.raises(ConfigError, match="augment='flip'"):
        EpisodeSampler(data, 3, 1, 2, augment="flip")


def test_a_task_augments_its_training_split_only(tmp_path):
    root = make_classes(tmp_path / "classes", {f"class{c:02d}": 4 for c in range(10)})
    cfg = build_dataclass(FolderConfig, {"path": str(root), "ways": 2, "shots": 1, "queries": 1, "augment": "affine"}, "task")
    assert [make_folder(cfg, s).augment for s in ("train", "val", "test")] == ["affine", "none", "none"]
    cfg = build_dataclass(FolderConfig, {"path": str(root), "ways": 2, "shots": 1, "queries": 1, "eval_augment": "shifts"}, "task")
    assert [make_folder(cfg, s).augment for s in ("train", "val", "test")] == ["none", "shifts", "shifts"]
    with pytest.raises(ConfigError, match="augment"):
        build_dataclass(FolderConfig, {"path": str(root), "augment": "rotate"}, "task")


def test_shifted_copies_move_every_pixel_by_one_in_each_direction():
    """Against per-pixel indexing: copy (dy, dx) at (i, j) is the image at (i - dy, j - dx),
    clamped to the border; labels follow their images."""
    x = torch.rand(2, 3, 1, 5, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[0, 1, 2], [2, 0, 1]])
    out_x, out_y = shifted_copies(x, y)
    assert out_x.shape == (2, 27, 1, 5, 6) and len(set(SHIFTS)) == 9 and SHIFTS[0] == (0, 0)
    for c, (dy, dx) in enumerate(SHIFTS):
        rows = (torch.arange(5) - dy).clamp(0, 4)
        cols = (torch.arange(6) - dx).clamp(0, 5)
        torch.testing.assert_close(out_x[:, 3 * c : 3 * c + 3], x[..., rows, :][..., cols], rtol=0, atol=0)
        assert torch.equal(out_y[:, 3 * c : 3 * c + 3], y)


def test_shifted_support_keeps_the_tasks_and_their_queries():
    data = toy_dataset()
    plain = EpisodeSampler(data, 3, 2, 2).sample(20, torch.Generator().manual_seed(0))
    shifted = EpisodeSampler(data, 3, 2, 2, augment="shifts").sample(20, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.query_x, plain.query_x) and torch.equal(shifted.query_y, plain.query_y)
    assert shifted.support_x.shape[1] == 9 * plain.support_x.shape[1]
    assert torch.equal(shifted.support_x[:, :6], plain.support_x) and torch.equal(shifted.support_y, plain.support_y.repeat(1, 9))
    assert (shifted.support_x[:, 6:12] - plain.support_x).abs().amax() > 0.1  # a moved copy differs


def test_shifts_both_also_gives_every_query_in_its_nine_shifts():
    data = toy_dataset()
    plain = EpisodeSampler(data, 3, 2, 2).sample(20, torch.Generator().manual_seed(0))
    sampler = EpisodeSampler(data, 3, 2, 2, augment="shifts_both")
    both = sampler.sample(20, torch.Generator().manual_seed(0))
    assert sampler.query_views == 9 and EpisodeSampler(data, 3, 2, 2, augment="shifts").query_views == 1
    expected_support, expected_query = shifted_copies(plain.support_x, plain.support_y), shifted_copies(plain.query_x, plain.query_y)
    assert torch.equal(both.support_x, expected_support[0]) and torch.equal(both.support_y, expected_support[1])
    assert torch.equal(both.query_x, expected_query[0]) and torch.equal(both.query_y, expected_query[1])


def test_vote_sums_each_querys_log_probabilities_over_its_views():
    """Against a loop over tasks and queries: view v of query q sits at position v * Q + q."""
    V, Q, N = 9, 4, 5
    logits = torch.randn(2, V * Q, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    summed = vote(logits, V)
    assert summed.shape == (2, Q, N)
    for b in range(2):
        for q in range(Q):
            expected = sum(torch.log_softmax(logits[b, v * Q + q], -1) for v in range(V))
            torch.testing.assert_close(summed[b, q], expected)
    assert vote(logits, 1) is logits


def test_evaluation_scores_each_query_once_from_its_summed_views():
    """A ProtoNet on a toy dataset: evaluate() with shifts_both against the same votes computed by hand."""
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(Conv4Config(channels=8, blocks=2), 1, None), "vmap")
    sampler = EpisodeSampler(toy_dataset(), 3, 1, 2, augment="shifts_both")
    est = evaluate(learner, sampler, 30, seed=5, batch_size=10)["adapted"]
    correct, per_view, generator = [], [], torch.Generator().manual_seed(5)
    learner.eval()
    with torch.no_grad():
        for _ in range(3):
            b = sampler.sample(10, generator)
            logits = learner.eval_predictions(b)["adapted"]  # [B, 9Q, N]
            summed = sum(logits[:, v * 6 : (v + 1) * 6].log_softmax(-1) for v in range(9))
            correct.append((summed.argmax(-1) == b.query_y[:, :6]).double().mean(1))
            per_view.append((logits.argmax(-1) == b.query_y).double().mean(1))
    assert est.episodes == 30
    assert est.mean == pytest.approx(torch.cat(correct).mean().item(), abs=1e-6)
    assert abs(est.mean - torch.cat(per_view).mean().item()) > 0.01  # scoring the 9Q views one by one differs


def test_evaluation_in_chunks_scores_the_same_tasks_in_smaller_calls():
    """chunk bounds the tasks per forward pass (memory) without changing which tasks are drawn."""
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(Conv4Config(channels=8, blocks=2), 1, None), "vmap")
    sampler = EpisodeSampler(toy_dataset(), 3, 1, 2, augment="shifts_both")
    whole = evaluate(learner, sampler, 25, seed=5, batch_size=10)["adapted"]
    sizes, predict = [], learner.eval_predictions
    learner.eval_predictions = lambda batch: sizes.append(len(batch.support_x)) or predict(batch)
    chunked = evaluate(learner, sampler, 25, seed=5, batch_size=10, chunk=3)["adapted"]
    assert sizes == [3, 3, 3, 1, 3, 3, 3, 1, 3, 2]
    assert chunked.episodes == 25 and chunked.mean == pytest.approx(whole.mean, abs=1e-9)
    assert chunked.ci95 == pytest.approx(whole.ci95, abs=1e-9)


def test_adapt_uses_the_runs_test_time_views(tmp_path, capsys):
    """`metagrad adapt` on a run trained with eval_augment=shifts_both: its probabilities are the
    softmax of the query log-probabilities summed over 9 shifts, with the support given in 9 shifts."""
    from metagrad.cli import main
    from metagrad.tasks.folder import load_query_folder, load_support_folder
    from metagrad.tasks.images import as_float
    from metagrad.train import load_run

    root = make_classes(tmp_path / "classes", {f"class{c}": 4 for c in range(10)})
    run = tmp_path / "run"
    sets = ["task.ways=2", "task.queries=2", "task.image_size=14", "task.eval_augment=shifts_both", "model.channels=8",
            "model.blocks=2", "train.iterations=3", "train.eval_every=0", "train.test_tasks=4", "train.eval_tasks=4"]
    assert main(["train", "--data", f"folder:{root}", "--out", str(run), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    out = tmp_path / "pred.json"
    assert main(["adapt", str(run), "--support", str(root), "--query", str(root), "--polarity", "keep", "--predictions", str(out)]) == 0
    rows = json.loads(out.read_text())
    _, learner, _ = load_run(run)
    support, query = load_support_folder(root, 14, 3), load_query_folder(root, 14, 3)  # folder-quick: RGB
    sx, sy = shifted_copies(as_float(support.images)[None], support.labels[None])
    qx = shifted_copies(as_float(query.images)[None], torch.zeros(1, len(query.paths), dtype=torch.long))[0]
    learner.eval()
    with torch.no_grad():
        logits = learner.adapt(sx, sy)(qx)[0]  # [9Q, N]
    n = len(query.paths)
    probs = sum(logits[v * n : (v + 1) * n].log_softmax(-1) for v in range(9)).softmax(-1)
    assert len(rows) == n == 40
    for row, p in zip(rows, probs):
        assert row["predicted"] == support.class_names[int(p.argmax())]
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-4)
